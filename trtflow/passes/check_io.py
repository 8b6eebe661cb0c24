"""Pass ``check_io``: the lowered model must match the plan exactly, and pass onnx's full check.

Backends build from this model and the generated runner allocates from the plan; if the two
disagreed on a name, an order, a dtype or a dim, bytes would land in the wrong buffer. So this is an
error here, with the mismatch named, not a surprise at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from trtflow.errors import ModelError
from trtflow.passes._graph import dtype_name, io_elem_type, value_info_dims
from trtflow.plan.model import Plan, TensorPlan


def mismatches(entries: Sequence[onnx.ValueInfoProto], tensors: Sequence[TensorPlan], role: str) -> list[str]:
    """Every way the graph's ``role`` list differs from the plan's tensors, as readable lines."""
    have, want = [vi.name for vi in entries], [t.name for t in tensors]
    if have != want:
        return [f"graph {role}s are {have}, the plan has {want}"]
    problems = []
    for vi, t in zip(entries, tensors):
        dtype = dtype_name(io_elem_type(vi))
        if dtype != t.dtype:
            problems.append(f"{role} {t.name!r}: dtype {dtype}, the plan has {t.dtype}")
        dims = value_info_dims(vi)
        if len(dims) != len(t.shape):
            problems.append(f"{role} {t.name!r}: rank {len(dims)} ({dims}), the plan has rank {len(t.shape)}")
            continue
        for i, (d, lo, hi) in enumerate(zip(dims, t.min_shape, t.max_shape)):
            if lo == hi and d != lo:
                problems.append(f"{role} {t.name!r} dim {i}: {d!r}, the plan fixes it to {lo}")
            elif lo != hi and not isinstance(d, str):
                problems.append(f"{role} {t.name!r} dim {i}: {d!r}, the plan has a dynamic range {lo}..{hi} "
                                "(needs a symbolic dim)")
    return problems


def check_io(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Raise ModelError naming every I/O mismatch with the plan, or what onnx's checker rejects."""
    problems = mismatches(model.graph.input, plan.inputs, "input") + \
        mismatches(model.graph.output, plan.outputs, "output")
    if problems:
        raise ModelError("the lowered model does not match the plan:\n  " + "\n  ".join(problems),
                         hint="this is a trtflow bug in a graph pass; please report it with the recipe")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"the lowered model fails onnx.checker: {exc}",
                         hint="a graph pass produced an invalid model; the pass records name the passes that ran") from None
    return model
