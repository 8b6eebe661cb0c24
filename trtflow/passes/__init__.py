"""Graph passes: ordered ONNX rewrites that turn the exported model into the one the engine is built from.

``lower(model, plan)`` runs :data:`PASSES` in order. Each pass is a plain function
``(model, plan) -> model`` in its own module, testable alone; it may modify ``model`` in place and
returns the model to hand on (``lower`` works on a copy, so the caller's model is never touched).

Order, and why:

0. ``fix_inputs``  inputs the recipe fixes to a value (``inputs.<name>.value``) -> initializers, so
                   ``fold_shapes`` folds what branches on them (one If branch is built, not both).
1. ``normalize``   Constants -> initializers, drop stray initializers, infer shapes: every later pass
                   sees the same, typed graph whatever the exporter did.
2. ``fold_shapes`` ``Shape`` of statically shaped tensors -> constants, then constant folding of what
                   depends only on initializers (exporters' Shape->Slice->Concat chains feeding
                   Resize/Reshape): engines that read such inputs on the host (onnx2torch) stay
                   sync-free and CUDA-graph capturable; an If whose condition folded is replaced by
                   the branch taken. Before ``precision`` so folded int64/float
                   constants are typed once, and the fp16 converter sees fewer ops.
3. ``precision``   fp16/bf16 lowering of the whole graph, boundaries included. Running it before the
                   I/O contract means the contract adds exactly one boundary Cast per tensor from the
                   compute dtype (uint8 -> fp16, fp16 -> fp32), and reducers read fp16 directly,
                   instead of stacking the converter's casts on top of the contract's.
4. ``io_inputs``   Cast -> NHWC transpose -> folded normalization in front of each input.
5. ``io_outputs``  reducers (argmax, threshold, topk, softmax, sigmoid) and dtype narrowing at the end.
6. ``check_io``    graph I/O == plan tensors exactly, and ``onnx.checker`` full check; else ModelError.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx

from trtflow.passes._graph import PassNote, dtype_name, io_elem_type, opset_of, value_info_dims
from trtflow.passes.check_io import check_io
from trtflow.passes.fix_inputs import fix_inputs
from trtflow.passes.fold import fold_shapes
from trtflow.passes.io_inputs import io_inputs
from trtflow.passes.io_outputs import io_outputs
from trtflow.passes.normalize import normalize
from trtflow.passes.precision import precision
from trtflow.plan.model import Plan

PassFn = Callable[[onnx.ModelProto, Plan], onnx.ModelProto]


@dataclass(frozen=True)
class Pass:
    name: str
    run: PassFn


PASSES: tuple[Pass, ...] = (
    Pass("fix_inputs", fix_inputs),
    Pass("normalize", normalize),
    Pass("fold_shapes", fold_shapes),
    Pass("precision", precision),
    Pass("io_inputs", io_inputs),
    Pass("io_outputs", io_outputs),
    Pass("check_io", check_io),
)


def lower(model: onnx.ModelProto, plan: Plan, *,
          passes: tuple[Pass, ...] = PASSES) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Run ``passes`` on a copy of ``model``; return the lowered model and one record per pass.

    A record says what the pass changed: node counts by op type added/removed, initializer and I/O
    changes, notes the pass reported (e.g. weights clamped to fp16's range) and seconds taken.
    """
    current = onnx.ModelProto()
    current.CopyFrom(model)
    records = []
    for p in passes:
        before = _summary(current)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            current = p.run(current, plan)
        seconds = time.perf_counter() - start
        notes = [str(w.message) for w in caught if issubclass(w.category, PassNote)]
        details: dict[str, Any] = {}
        for w in caught:  # library warnings are not ours to swallow
            if not issubclass(w.category, PassNote):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            elif isinstance(w.message, PassNote):
                details.update(w.message.data)
        records.append(_record(p.name, before, _summary(current), seconds, notes, details))
    return current, records


def pass_detail(records: list[dict[str, Any]], key: str) -> Any:
    """The structured detail ``key`` some pass reported (e.g. ``mixed_precision``), or None."""
    return next((r["details"][key] for r in records if key in (r.get("details") or {})), None)


def _summary(model: onnx.ModelProto) -> dict[str, Any]:
    g = model.graph
    return {
        "ops": Counter(n.op_type for n in g.node),
        "initializers": len(g.initializer),
        "inputs": [_io(vi) for vi in g.input],
        "outputs": [_io(vi) for vi in g.output],
        "opset": opset_of(model),
    }


def _io(vi: onnx.ValueInfoProto) -> str:
    """``name:dtype[dims]``, e.g. ``image:uint8[batch,520,520,3]``."""
    dims = ",".join("?" if d is None else str(d) for d in value_info_dims(vi))
    return f"{vi.name}:{dtype_name(io_elem_type(vi))}[{dims}]"


def _record(name: str, before: dict[str, Any], after: dict[str, Any], seconds: float,
            notes: list[str], details: dict[str, Any]) -> dict[str, Any]:
    added = after["ops"] - before["ops"]
    removed = before["ops"] - after["ops"]
    rec: dict[str, Any] = {
        "name": name,
        "seconds": round(seconds, 4),
        "nodes_before": sum(before["ops"].values()),
        "nodes_after": sum(after["ops"].values()),
        "nodes_added": dict(sorted(added.items())),
        "nodes_removed": dict(sorted(removed.items())),
        "initializers_delta": after["initializers"] - before["initializers"],
        "notes": notes,
    }
    if details:
        rec["details"] = details
    for key in ("inputs", "outputs", "opset"):
        if before[key] != after[key]:
            rec[key] = {"before": before[key], "after": after[key]}
    return rec


__all__ = ["PASSES", "Pass", "PassNote", "check_io", "fix_inputs", "fold_shapes", "io_inputs", "io_outputs", "lower",
           "normalize", "pass_detail", "precision"]
