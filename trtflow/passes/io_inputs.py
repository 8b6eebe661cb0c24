"""Pass ``io_inputs``: the input half of the I/O contract ("I/O contracts that move fewer bytes").

The caller hands over what the plan says (e.g. uint8 NHWC, 1 byte per value instead of 4); the engine
does the rest on the GPU, in this order:

1. ``Cast`` to the graph's dtype: first, because TensorRT runs uint8 only through Cast, and so the
   arithmetic after it is float;
2. ``Transpose(perm=[0,3,1,2])`` when the caller's layout is NHWC;
3. ``Resize`` to the model's H x W when the recipe asks (``resize``): the engine input then takes any
   size within ``resize.min..max`` (e.g. a decoded photo) and no resized copy is made anywhere else.
   Bilinear is ``mode=linear, coordinate_transformation_mode=half_pixel`` (OpenCV INTER_LINEAR, torch
   ``interpolate(align_corners=False)``); nearest is ``asymmetric`` + ``floor`` (OpenCV INTER_NEAREST).
   Before normalization: both are linear per channel, so they commute, and the resize then reads the
   cast pixel values;
4. normalization ``y = (x*scale - mean)/std`` folded into one ``Mul`` by ``scale/std`` and one ``Add`` of
   ``-mean/std``, constants shaped ``[1,C,1,1]``: the form TensorRT folds into the first convolution.

The boundary keeps the input's original name (the engine's input name is what the recipe named); the
model's own tensor is renamed to ``<name>__model``. The graph dtype read here is the one after the
precision pass, so an fp16 graph gets ``Cast(uint8 -> fp16)`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from trtflow.errors import ModelError
from trtflow.passes._graph import (
    FLOAT_TYPES,
    DimValue,
    NameGen,
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

NHWC_TO_NCHW = (0, 3, 1, 2)


def normalization_constants(pre: dict[str, Any], channels: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` with ``(x*scale - mean)/std == x*a + b``, each shaped ``[1, C or 1, 1, ...]`` (float64)."""
    scale = float(pre.get("scale", 1.0))
    mean = np.asarray(pre.get("mean") or [0.0], dtype=np.float64)
    std = np.asarray(pre.get("std") or [1.0], dtype=np.float64)
    a = np.broadcast_to(scale / std, np.broadcast_shapes(mean.shape, std.shape))
    b = -mean / std
    n = max(a.size, b.size)
    if n not in (1, channels):
        raise ModelError(f"preprocess has {n} values for {channels} channels")
    shape = (1, n) + (1,) * (rank - 2)
    return np.broadcast_to(a, (n,)).reshape(shape), np.broadcast_to(b, (n,)).reshape(shape)


def contract_nodes(t: TensorPlan, graph_type: int, rank: int, src: str, dst: str,
                   names: NameGen) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and constants) turning the caller's tensor ``src`` into the model's tensor ``dst``.

    Empty lists when the caller hands over exactly what the model takes.
    """
    steps: list[tuple[str, list[str], dict[str, Any]]] = []  # (op, extra inputs, attributes)
    inits: list[onnx.TensorProto] = []
    if onnx_type(t.dtype) != graph_type:
        steps.append(("Cast", [], {"to": graph_type}))
    if t.layout == "NHWC":
        steps.append(("Transpose", [], {"perm": list(NHWC_TO_NCHW)}))
    resize_nodes: list[onnx.NodeProto] = []
    if t.resize:
        sizes, resize_nodes, resize_inits = resize_sizes(t, src, names)
        inits += resize_inits
        steps.append(("Resize", ["", "", sizes], resize_attributes(t.resize["mode"])))
    if t.preprocess:
        channels = t.model_shape[1] if len(t.model_shape) > 1 else 1
        a, b = normalization_constants(t.preprocess, channels, rank)
        for op, value, neutral in (("Mul", a, 1.0), ("Add", b, 0.0)):
            if np.all(value == neutral):
                continue  # e.g. scale only: no Add
            c = const(names(f"{t.name}__{op.lower()}"), value.astype(np_dtype(graph_type)))
            inits.append(c)
            steps.append((op, [c.name], {}))
    nodes: list[onnx.NodeProto] = list(resize_nodes)
    cur = src
    for i, (op, extra, attrs) in enumerate(steps):
        out = dst if i == len(steps) - 1 else names(f"{t.name}__{op.lower()}_out")
        if op == "Cast":
            nodes.append(cast_node(cur, out, attrs["to"], names(f"{t.name}__cast")))
        else:
            nodes.append(helper.make_node(op, [cur, *extra], [out], name=names(f"{t.name}__{op.lower()}"), **attrs))
        cur = out
    return nodes, inits


def resize_attributes(mode: str) -> dict[str, Any]:
    if mode == "nearest":
        return {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}


def resize_sizes(t: TensorPlan, src: str, names: NameGen
                 ) -> tuple[str, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The ``sizes`` input of the Resize (NCHW order): a constant when N and C are static, else N and C
    taken from the input's shape at run time (``Shape -> Slice -> Concat`` with the fixed H, W)."""
    n, c = t.model_shape[0], t.model_shape[1]
    h, w = (int(v) for v in t.resize["to"])  # type: ignore[index]
    if t.min_shape[0] == t.max_shape[0]:
        sizes = const(names(f"{t.name}__resize_sizes"), np.array([n, c, h, w], dtype=np.int64))
        return sizes.name, [], [sizes]
    # N varies: take it (and C) from the caller's tensor; C sits last in NHWC
    nc_axes = [0, 3] if t.layout == "NHWC" else [0, 1]
    shape = names(f"{t.name}__shape")
    idx = const(names(f"{t.name}__nc_axes"), np.array(nc_axes, dtype=np.int64))
    hw = const(names(f"{t.name}__resize_hw"), np.array([h, w], dtype=np.int64))
    nc, sizes_out = names(f"{t.name}__nc"), names(f"{t.name}__resize_sizes")
    nodes = [helper.make_node("Shape", [src], [shape], name=names(f"{t.name}__Shape")),
             helper.make_node("Gather", [shape, idx.name], [nc], name=names(f"{t.name}__Gather"), axis=0),
             helper.make_node("Concat", [nc, hw.name], [sizes_out], name=names(f"{t.name}__Concat"), axis=0)]
    return sizes_out, nodes, [idx, hw]


def caller_dims(t: TensorPlan, model_dims: Sequence[DimValue]) -> list[DimValue]:
    """The model's dims in the caller's axis order (NHWC moves C last)."""
    if t.layout == "NHWC" and len(model_dims) == 4:
        return [model_dims[0], model_dims[2], model_dims[3], model_dims[1]]
    return list(model_dims)


def lower_input(graph: onnx.GraphProto, t: TensorPlan, names: NameGen) -> onnx.ValueInfoProto:
    """Apply ``t``'s contract; returns the new graph input (the caller replaces the old entry)."""
    vi = find_io(graph.input, t.source, "input")
    graph_type, model_dims = io_elem_type(vi), value_info_dims(vi)
    rank = len(t.model_shape)
    if t.preprocess and graph_type not in FLOAT_TYPES:
        raise ModelError(f"input {t.name!r}: preprocessing needs a float model input, the graph takes "
                         f"{np_dtype(graph_type)}")
    internal = names(f"{t.source}__model")
    nodes, inits = contract_nodes(t, graph_type, rank, t.name, internal, names)
    if nodes:
        rename_tensor(graph, t.source, internal)
        graph.initializer.extend(inits)
        for node in reversed(nodes):  # in front: the graph stays topologically sorted
            graph.node.insert(0, node)
    return boundary_value_info(t, caller_dims(t, model_dims))


def io_inputs(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Graph inputs become exactly ``plan.inputs`` (names, order, dtypes, dims), contract nodes in front."""
    graph = model.graph
    names = NameGen(graph)
    claim_names(graph, [t.name for t in plan.tensors], names)
    planned = {t.source for t in plan.inputs}
    extra = [vi.name for vi in graph.input if vi.name not in planned]
    if extra:
        raise ModelError(f"graph inputs {extra} are not in the plan", hint="re-run `trtflow plan` on this model")
    if any(t.resize for t in plan.inputs) and opset_of(model) < 11:
        raise ModelError(f"resize needs ONNX opset >= 11 (Resize with sizes), the model has opset {opset_of(model)}",
                         hint="re-export the model with opset 11 or later, or resize before the runner")
    new_inputs = [lower_input(graph, t, names) for t in plan.inputs]
    del graph.input[:]
    graph.input.extend(new_inputs)
    return model
