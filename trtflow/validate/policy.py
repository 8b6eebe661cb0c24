"""The numerics policy: what decides each output of ``trtflow validate`` when the recipe does not say.

* Float outputs are judged by a tolerance. Its default follows BOTH the precision the engine computes in
  and the dtype of the output itself: ``max(PRECISION_TOL[precision], DTYPE_TOL[dtype])`` for atol and
  rtol alike. An fp16 output of an fp32 build is rounded to fp16 once (relative error up to 2^-11), so
  it gets 1e-3, not fp32's 1e-4. ``validate.default`` (all float outputs) and ``validate.tolerances``
  (one output) override it; a field they leave out (``{atol: 0.01}``) keeps the policy's value.
* Integer and bool outputs (argmax masks, class ids, indices) are judged by the task metric that decides
  them: ``agreement`` (fraction of equal elements) for masks and ids, ``topk_overlap`` for top-k
  indices; a max abs error of 16 between two class ids says nothing. ``validate.metrics`` overrides.

The formula is Polygraphy's ``elemwise`` unless the recipe picks ``allclose``
(:mod:`trtflow.validate.compare`). This module imports nothing heavy: ``trtflow init`` and the planner
call it.
"""

from __future__ import annotations

from typing import Any

from trtflow.plan.model import MetricCheck, OutputCheck

# Compute precision -> tolerance. fp32: 1e-4, ten times Polygraphy's 1e-5, which fails two fp32 graphs of
# one model on ONE library (init's mobilenet_v3_small, lowered vs original on onnxruntime CPU: max abs 1.3e-4
# on logits of magnitude ~10 at batch 4, summation order; elemwise needs both abs and rel beyond it, so a
# real error still fails); tf32: 10-bit mantissa products; fp16:
# what Polygraphy's maintainers call normal for fp16 (1e-2); bf16: 8-bit mantissa, ~8x fp16's rounding.
PRECISION_TOL: dict[str, float] = {"fp32": 1e-4, "tf32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}
# Output dtype -> the least tolerance its own rounding needs (2^-11 for fp16, 2^-8 for bf16, with margin).
DTYPE_TOL: dict[str, float] = {"float32": 0.0, "float16": 1e-3, "bfloat16": 1e-2}
FLOAT_DTYPES = frozenset(DTYPE_TOL)
# Integer outputs: the least fraction of equal elements. An fp32 engine may still flip a near tie.
AGREEMENT_MIN: dict[str, float] = {"fp32": 0.999, "tf32": 0.99, "fp16": 0.99, "bf16": 0.98}
TOPK_OVERLAP_MIN = 0.9


def default_tolerance(precision: str, dtype: str) -> dict[str, float] | None:
    """``{"atol", "rtol"}`` for a float output of a ``precision`` build; None for integer/bool outputs."""
    if dtype not in FLOAT_DTYPES:
        return None
    tol = max(PRECISION_TOL.get(precision, PRECISION_TOL["fp32"]), DTYPE_TOL[dtype])
    return {"atol": tol, "rtol": tol}


def default_metrics(precision: str, dtype: str, reduce: dict[str, Any] | None = None,
                    name: str = "") -> list[dict[str, Any]]:
    """Task metrics an output gets without ``validate.metrics``: none for floats, agreement for masks and
    ids, top-k overlap for the indices of a ``topk`` reducer."""
    if dtype in FLOAT_DTYPES:
        return []
    if (reduce or {}).get("op") == "topk" and name.endswith("_indices"):
        return [{"kind": "topk_overlap", "min": TOPK_OVERLAP_MIN}]
    return [{"kind": "agreement", "min": AGREEMENT_MIN.get(precision, AGREEMENT_MIN["fp32"])}]


def resolve(validate: dict[str, Any], precision: str, outputs: Any) -> dict[str, OutputCheck]:
    """Per output name: the tolerance (or None), the metrics, whether the tolerance gates it, and why.

    ``validate``: the recipe's ``validate`` section as a dict; ``outputs``: the plan's output tensors
    (``name``, ``source``, ``dtype``, ``reduce``). The planner calls it once; the result is
    ``plan.validate.per_output``, which is all ``trtflow validate`` reads.
    """
    explicit = validate.get("tolerances") or {}
    metrics = validate.get("metrics") or {}
    user_default = validate.get("default")
    out: dict[str, OutputCheck] = {}
    for t in outputs:
        floaty = t.dtype in FLOAT_DTYPES
        tol = explicit.get(t.name) or explicit.get(t.source)
        why: str | None
        if tol is not None:
            why = "validate.tolerances"
        elif floaty and user_default is not None:
            tol, why = user_default, "validate.default"
        else:
            tol = default_tolerance(precision, t.dtype)
            why = f"default for a {t.dtype} output of a {precision} build" if floaty else None
        mets = metrics.get(t.name) or metrics.get(t.source)
        mets_why: str | None = "validate.metrics" if mets else None
        if not mets:
            mets = default_metrics(precision, t.dtype, t.reduce, t.name)
            mets_why = f"default for a {t.dtype} output" if mets else None
        if tol is not None:  # a field the recipe left out keeps the policy's value for this output
            base = default_tolerance(precision, t.dtype) or default_tolerance(precision, "float32") or {}
            tol = {k: base[k] if tol.get(k) is None else tol[k] for k in ("atol", "rtol")}
        out[t.name] = OutputCheck(
            gate="tolerance" if floaty or t.name in explicit or t.source in explicit else "metrics",
            atol=None if tol is None else float(tol["atol"]),
            rtol=None if tol is None else float(tol["rtol"]),
            tolerance_from=why,
            metrics=tuple(MetricCheck(kind=m["kind"], min=float(m["min"])) for m in mets),
            metrics_from=mets_why,
        )
    return out
