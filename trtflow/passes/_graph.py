"""Small graph utilities shared by the passes: names, renames, dtypes, boundary value infos.

Everything here works on ``onnx.GraphProto`` in place and never touches external weight data, so the
passes stay cheap on models whose weights live in side files.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import ModelError
from trtflow.plan.model import TensorPlan
from trtflow.plan.onnxmeta import DTYPE_TO_ONNX, ONNX_DTYPES

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})

DimValue = int | str | None


def onnx_type(dtype: str) -> int:
    """ONNX element type of a plan dtype name (``float32`` -> 1)."""
    try:
        return DTYPE_TO_ONNX[dtype]
    except KeyError:
        raise ModelError(f"dtype {dtype!r} has no ONNX element type trtflow handles") from None


def dtype_name(elem_type: int) -> str:
    """Plan dtype name of an ONNX element type, or ``onnx:<n>`` for types trtflow does not map."""
    return ONNX_DTYPES.get(elem_type, f"onnx:{elem_type}")


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX element type (bfloat16 comes from ml_dtypes, which onnx depends on)."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def accepts(op_type: str, opset: int, elem_type: int) -> bool:
    """Whether ONNX ``op_type`` at ``opset`` takes its main input ``T`` as ``elem_type`` (e.g. TopK
    takes bfloat16 only from opset 24)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    type_str = f"tensor({helper.tensor_dtype_to_string(elem_type).removeprefix('TensorProto.').lower()})"
    first = schema.inputs[0].type_str
    allowed = next((c.allowed_type_strs for c in schema.type_constraints if c.type_param_str == first), [first])
    return type_str in allowed


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """Graphs held in a node's attributes (If/Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name used in ``graph`` and its subgraphs (for collision-free new names)."""
    names: set[str] = set()
    for vi in (*graph.input, *graph.output, *graph.value_info):
        names.add(vi.name)
    names.update(i.name for i in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for g in subgraphs(node):
            names |= all_names(g)
    names.discard("")
    return names


class NameGen:
    """Hands out names not used anywhere in a graph, remembering what it handed out."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = all_names(graph)

    def __call__(self, base: str) -> str:
        name, n = base, 2
        while name in self.used:
            name, n = f"{base}_{n}", n + 1
        self.used.add(name)
        return name


def _declares(graph: onnx.GraphProto, name: str) -> bool:
    """True when a subgraph defines ``name`` itself, shadowing the outer tensor."""
    return (any(v.name == name for v in graph.input) or any(i.name == name for i in graph.initializer)
            or any(name in n.output for n in graph.node))


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename every node reference and value_info of tensor ``old`` to ``new``.

    Graph inputs and outputs are left alone: the I/O passes replace those entries themselves, which
    is the point of renaming (the boundary keeps the recipe's name, the internal tensor moves aside).
    Subgraphs that capture ``old`` from the outer scope are renamed too, unless they shadow it.
    """
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new
        for i, x in enumerate(node.output):
            if x == old:
                node.output[i] = new
        for g in subgraphs(node):
            if not _declares(g, old):
                rename_tensor(g, old, new)
                for vi in g.output:
                    if vi.name == old:
                        vi.name = new
    for vi in graph.value_info:
        if vi.name == old:
            vi.name = new


def claim_names(graph: onnx.GraphProto, boundary: Sequence[str], names: NameGen) -> None:
    """Reserve the plan's boundary names; an internal tensor already called e.g. ``logits_values`` is
    renamed aside so the new graph output can take the name."""
    io = {vi.name for vi in (*graph.input, *graph.output)}
    for name in boundary:
        if name in names.used and name not in io:
            rename_tensor(graph, name, names(f"{name}__internal"))
    names.used.update(boundary)


def value_info_dims(vi: onnx.ValueInfoProto) -> list[DimValue]:
    """Dims of a value info: int, symbolic name, or None when unknown. [] when the shape is unknown."""
    dims: list[DimValue] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return dims


def boundary_value_info(t: TensorPlan, model_dims: Sequence[DimValue]) -> onnx.ValueInfoProto:
    """The graph input/output for plan tensor ``t``: its dtype, static dims where ``min == max``.

    A dynamic dim keeps the model's symbolic name when it has one (so an input's ``batch`` and the
    output's ``batch`` stay visibly the same symbol), else gets ``d<i>_<ident>``. ``model_dims`` is in
    the caller's axis order.
    """
    dims: list[int | str] = []
    for i, (lo, hi) in enumerate(zip(t.min_shape, t.max_shape)):
        if lo == hi:
            dims.append(int(lo))
            continue
        md = model_dims[i] if i < len(model_dims) else None
        dims.append(md if isinstance(md, str) else f"d{i}_{t.ident}")
    return helper.make_tensor_value_info(t.name, onnx_type(t.dtype), dims)


def find_io(entries: Sequence[onnx.ValueInfoProto], name: str, role: str) -> onnx.ValueInfoProto:
    for vi in entries:
        if vi.name == name:
            return vi
    raise ModelError(f"the model has no graph {role} named {name!r} (the plan expects one)",
                     hint="the model changed since planning: re-run `trtflow plan`")


def const(name: str, array: np.ndarray) -> TensorProto:
    """An initializer holding ``array``."""
    return numpy_helper.from_array(np.asarray(array, order="C"), name)  # ascontiguousarray makes 0-d 1-d


def cast_node(src: str, dst: str, to: int, name: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [src], [dst], name=name, to=to)


def io_elem_type(vi: onnx.ValueInfoProto) -> int:
    return int(vi.type.tensor_type.elem_type)


class PassNote(UserWarning):
    """Something a pass wants in the build report (``lower`` records these per pass).

    ``data``: structured details merged into the pass record's ``details`` (e.g. ``mixed_precision``).
    """

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


def note(message: str, **data: Any) -> None:
    """Report ``message`` (and structured ``data``) from inside a pass without widening the
    ``(model, plan) -> model`` signature."""
    warnings.warn(PassNote(message, data), stacklevel=2)
