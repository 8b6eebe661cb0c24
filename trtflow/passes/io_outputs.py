"""Pass ``io_outputs``: the output half of the I/O contract.

A reducer runs on the GPU before the copy back, so the host receives a uint8 class map instead of
``C`` float planes, or ``k`` scores instead of 1000:

* ``argmax {axis, dtype}``  -> ``ArgMax(keepdims=0)`` + ``Cast(dtype)``
* ``threshold {value, dtype}`` -> ``Greater(x, value)`` (+ ``Cast(uint8)``; bool stays bool); with
  ``pack: bits`` 8 mask values per byte along the last axis (:func:`pack_bits`), 8x fewer D2H bytes
* ``topk {k, axis}``        -> ``TopK`` into ``<name>_values`` (float) and ``<name>_indices`` (int32)
* ``softmax {axis}`` / ``sigmoid``
* then dtype narrowing: a float output whose plan dtype differs from the graph's gets a ``Cast``.

Outputs keep their original names (topk's two are new names); the model's tensor is renamed to
``<name>__model``. The graph dtype is read after the precision pass, so an fp16 graph hands fp16 to
the reducer and only casts when the plan wants another float type back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from trtflow.errors import ModelError
from trtflow.passes._graph import (
    FLOAT_TYPES,
    DimValue,
    NameGen,
    accepts,
    boundary_value_info,
    cast_node,
    claim_names,
    const,
    find_io,
    io_elem_type,
    np_dtype,
    onnx_type,
    opset_of,
    rename_tensor,
    value_info_dims,
)
from trtflow.plan.model import Plan, TensorPlan


class _Builder:
    """Appends the nodes of one output's contract, naming intermediates after the output."""

    def __init__(self, names: NameGen, stem: str) -> None:
        self.names, self.stem = names, stem
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.names(f"{self.stem}__{op.lower()}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.names(f"{self.stem}__{op}"), **attrs))
        return out

    def const(self, tag: str, value: np.ndarray) -> str:
        c = const(self.names(f"{self.stem}__{tag}"), value)
        self.inits.append(c)
        return c.name

    def cast(self, src: str, to: int, out: str | None = None) -> str:
        out = out or self.names(f"{self.stem}__cast")
        self.nodes.append(cast_node(src, out, to, self.names(f"{self.stem}__Cast")))
        return out


ONNX_OP = {"argmax": "ArgMax", "threshold": "Greater", "topk": "TopK", "softmax": "Softmax", "sigmoid": "Sigmoid"}


def positive_axis(axis: int, rank: int) -> int:
    """Opsets before 11 take no negative axes; the plan already checked the range."""
    return axis + rank if axis < 0 else axis


def softmax(b: _Builder, x: str, axis: int, rank: int, opset: int) -> str:
    """Softmax over one axis. Before opset 13 Softmax flattens the trailing dims, so any axis but the
    last is moved last and back."""
    if opset >= 13 or axis == rank - 1:
        return b.node("Softmax", [x], axis=axis)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]  # a swap is its own inverse
    y = b.node("Softmax", [b.node("Transpose", [x], perm=perm)], axis=rank - 1)
    return b.node("Transpose", [y], perm=perm)


def narrow(b: _Builder, x: str, have: int, t: TensorPlan, out: str) -> str:
    """Cast ``x`` (dtype ``have``) to ``t.dtype`` into ``out``; ``x`` itself when the dtype is right
    (the caller renames it, rather than adding an Identity)."""
    return b.cast(x, onnx_type(t.dtype), out) if onnx_type(t.dtype) != have else x


def contract(b: _Builder, x: str, graph_type: int, tensors: Sequence[TensorPlan], rank: int,
             opset: int) -> dict[str, str]:
    """Emit the reducer + narrowing for one model output; returns plan name -> tensor holding it."""
    t = tensors[0]
    red = t.reduce or {}
    op = red.get("op")
    if op in ONNX_OP and not accepts(ONNX_OP[op], opset, graph_type):
        x, graph_type = b.cast(x, TensorProto.FLOAT), TensorProto.FLOAT  # e.g. bf16 TopK before opset 24
    if op == "argmax":
        idx = b.node("ArgMax", [x], axis=positive_axis(int(red["axis"]), rank), keepdims=0)
        return {t.name: narrow(b, idx, TensorProto.INT64, t, t.name)}
    if op == "threshold":
        value = np.array(red["value"], dtype=np_dtype(graph_type))
        mask = b.node("Greater", [x, b.const("threshold", value)])
        if red.get("pack") == "bits":
            return {t.name: pack_bits(b, mask, rank, int(t.model_shape[-1]), t.name, opset)}
        return {t.name: narrow(b, mask, TensorProto.BOOL, t, t.name)}
    if op == "topk":
        values_t, indices_t = _topk_pair(tensors)
        k = b.const("k", np.array([int(red["k"])], dtype=np.int64))
        vals, idx = b.names(f"{b.stem}__topk_values"), b.names(f"{b.stem}__topk_indices")
        b.nodes.append(helper.make_node("TopK", [x, k], [vals, idx], name=b.names(f"{b.stem}__TopK"),
                                        axis=positive_axis(int(red["axis"]), rank), largest=1, sorted=1))
        return {values_t.name: narrow(b, vals, graph_type, values_t, values_t.name),
                indices_t.name: narrow(b, idx, TensorProto.INT64, indices_t, indices_t.name)}
    if op == "softmax":
        x = softmax(b, x, positive_axis(int(red["axis"]), rank), rank, opset)
    elif op == "sigmoid":
        x = b.node("Sigmoid", [x])
    elif op is not None:
        raise ModelError(f"output {t.name!r}: unknown reducer {op!r}")
    return {t.name: narrow(b, x, graph_type, t, t.name)}


BIT_WEIGHTS = np.array([128, 64, 32, 16, 8, 4, 2, 1], dtype=np.float32)  # MSB first, as numpy.packbits


def pack_bits(b: _Builder, mask: str, rank: int, width: int, out: str, opset: int) -> str:
    """Pack a boolean mask 8 values per byte along its last axis (``width`` wide, padded with zeros to a
    multiple of 8): ``Cast(float) -> [Pad] -> Reshape[..., W/8, 8] -> MatMul(weights) -> Cast(uint8)``.

    The sums are exact integers <= 255 in float32; MatMul with a vector is an op every backend has
    (TensorRT does arithmetic on uint8 only through Cast, so the bytes are assembled in float).
    """
    x = b.cast(mask, TensorProto.FLOAT)
    pad = (-width) % 8
    if pad:
        pads = np.zeros(2 * rank, dtype=np.int64)
        pads[2 * rank - 1] = pad  # end of the last axis
        if opset >= 11:
            x = b.node("Pad", [x, b.const("pack_pads", pads)], mode="constant")
        else:  # pads were an attribute before opset 11
            x = b.node("Pad", [x], mode="constant", pads=[int(p) for p in pads])
    split = np.array([0] * (rank - 1) + [-1, 8], dtype=np.int64)  # 0: keep that dim (dynamic N, H...)
    groups = b.node("Reshape", [x, b.const("pack_shape", split)])
    byte = b.node("MatMul", [groups, b.const("bit_weights", BIT_WEIGHTS)])
    return b.cast(byte, TensorProto.UINT8, out)


def _topk_pair(tensors: Sequence[TensorPlan]) -> tuple[TensorPlan, TensorPlan]:
    by_suffix = {t.name[len(t.source):]: t for t in tensors}
    if set(by_suffix) != {"_values", "_indices"}:
        raise ModelError(f"topk on {tensors[0].source!r} needs plan outputs '<name>_values' and "
                         f"'<name>_indices', got {[t.name for t in tensors]}")
    return by_suffix["_values"], by_suffix["_indices"]


def reduced_dims(t: TensorPlan, dims: Sequence[DimValue], rank: int) -> list[DimValue]:
    """The model output's dims after ``t``'s reducer: argmax drops its axis, topk sets it to k."""
    dims = list(dims) if len(dims) == rank else [None] * rank
    red = t.reduce or {}
    if red.get("op") == "argmax":
        ax = positive_axis(int(red["axis"]), rank)
        return dims[:ax] + dims[ax + 1:]
    if red.get("op") == "topk":
        ax = positive_axis(int(red["axis"]), rank)
        return dims[:ax] + [int(red["k"])] + dims[ax + 1:]
    if red.get("pack") == "bits":
        return dims[:-1] + [int(t.shape[-1])]
    return dims


def lower_output(graph: onnx.GraphProto, tensors: Sequence[TensorPlan], names: NameGen,
                 opset: int) -> list[onnx.ValueInfoProto]:
    """Apply the contract of one model output; returns the graph outputs that replace it."""
    source = tensors[0].source
    vi = find_io(graph.output, source, "output")
    graph_type, dims = io_elem_type(vi), value_info_dims(vi)
    rank = len(tensors[0].model_shape)
    if tensors[0].reduce and graph_type not in FLOAT_TYPES:
        raise ModelError(f"output {source!r}: reducers need a float output, the graph gives {np_dtype(graph_type)}")
    internal = names(f"{source}__model")
    b = _Builder(names, source)
    produced = contract(b, internal, graph_type, tensors, rank, opset)
    if b.nodes:  # else the output already is what the plan wants: only its value info changes
        for name, tensor in produced.items():
            if tensor != name:
                _rename_in(b.nodes, tensor, name)
        rename_tensor(graph, source, internal)
        graph.node.extend(b.nodes)
        graph.initializer.extend(b.inits)
    return [boundary_value_info(t, reduced_dims(t, dims, rank)) for t in tensors]


def _rename_in(nodes: Sequence[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for field in (node.input, node.output):
            for i, x in enumerate(field):
                if x == old:
                    field[i] = new


def io_outputs(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Graph outputs become exactly ``plan.outputs`` (names, order, dtypes, dims), reducers at the end."""
    graph = model.graph
    names = NameGen(graph)
    claim_names(graph, [t.name for t in plan.tensors], names)
    groups: dict[str, list[TensorPlan]] = {}
    for t in plan.outputs:
        groups.setdefault(t.source, []).append(t)
    opset = opset_of(model)
    boundary: dict[str, onnx.ValueInfoProto] = {}
    for tensors in groups.values():
        for vi in lower_output(graph, tensors, names, opset):
            boundary[vi.name] = vi
    del graph.output[:]
    graph.output.extend(boundary[t.name] for t in plan.outputs)
    return model
