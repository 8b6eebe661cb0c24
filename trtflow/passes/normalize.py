"""Pass ``normalize``: make every model look the same before the real rewrites.

* Constant nodes become initializers. Paddle exports keep all weights in Constant nodes; onnx2torch
  and the fp16 converter's initializer handling only see initializers.
* Unused initializers are dropped, and initializers listed as graph inputs (IR < 4 style) are
  removed from the inputs: they are weights, not things the caller hands over.
* ONNX shape inference fills ``value_info`` so later passes know each tensor's dtype.

The opset is kept. External weights are never loaded: tensors keep their external references.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from trtflow.passes._graph import const, note, subgraphs
from trtflow.plan.model import Plan

# Constant attributes other than `value`, with the numpy dtype ONNX gives them.
_SCALAR_ATTRS = {"value_float": np.float32, "value_floats": np.float32,
                 "value_int": np.int64, "value_ints": np.int64}


def constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node produces, named as its output; None for sparse values."""
    for attr in node.attribute:
        name = node.output[0]
        if attr.name == "value":
            t = TensorProto()
            t.CopyFrom(attr.t)  # keeps raw/external data as is: nothing is decoded
            t.name = name
            return t
        if attr.name in _SCALAR_ATTRS:
            return const(name, np.array(helper.get_attribute_value(attr), dtype=_SCALAR_ATTRS[attr.name]))
        if attr.name in ("value_string", "value_strings"):
            value = helper.get_attribute_value(attr)
            return helper.make_tensor(name, TensorProto.STRING, [] if attr.name == "value_string" else [len(value)],
                                      [value] if attr.name == "value_string" else list(value))
    return None


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Move top-level Constant nodes into initializers; returns how many moved.

    Constants that are graph outputs stay nodes (an output cannot be an initializer in every runtime).
    """
    outputs = {o.name for o in graph.output}
    keep, moved = [], 0
    for node in graph.node:
        tensor = constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None or node.output[0] in outputs:
            keep.append(node)
            continue
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Tensor names read by any node (subgraphs included: they may read outer initializers) or output."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for g in subgraphs(node):
            used |= used_names(g)
    return used


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    used = used_names(graph)
    keep = [i for i in graph.initializer if i.name in used]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Remove graph inputs that are initializers (IR < 4 listed every weight as an input)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    keep = [vi for vi in graph.input if vi.name not in inits]
    dropped = len(graph.input) - len(keep)
    if dropped:
        del graph.input[:]
        graph.input.extend(keep)
        if model.ir_version < 4:  # IR 3 requires initializers to be inputs; IR 4 does not
            model.ir_version = 4
            note("raised ir_version to 4 so initializers need not be graph inputs")
    return dropped


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, tolerant: a model it cannot fully infer is still usable."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is an aid here; the final check is strict
        note(f"shape inference failed, value_info left as it was: {type(exc).__name__}: {exc}")
        return model


def normalize(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Constants -> initializers, drop unused/listed-as-input initializers, infer shapes."""
    del plan  # the same for every plan
    moved = constants_to_initializers(model.graph)
    listed = drop_initializer_inputs(model)  # first: a dropped weight must not linger as an input
    unused = drop_unused_initializers(model.graph)
    if moved or unused or listed:
        note(f"constants moved to initializers: {moved}; unused initializers dropped: {unused}; "
             f"initializers removed from graph inputs: {listed}")
    return infer_shapes(model)
