"""The numerics policy: what decides each output of ``trtflow validate`` when the recipe does not say.

* Float outputs are judged by a tolerance. Its default follows BOTH the precision the engine computes in
  and the dtype of the output itself: ``max(PRECISION_TOL[precision], DTYPE_TOL[dtype])`` for atol and
  rtol alike. An fp16 output of an fp32 build is rounded to fp16 once (relative error up to 2^-11), so
  it gets 1e-3, not fp32's 1e-4. ``validate.default`` (all float outputs) and ``validate.tolerances``
  (one output) override it; a field they leave out (``{atol: 0.01}``) keeps the policy's value.
* Integer and bool outputs (argmax masks, class ids, indices) are judged by the task metric that decides
  them: ``agreement`` (fraction of equal elements) for masks and ids, ``topk_overlap`` for top-k
  indices; a max abs error of 16 between two class ids says nothing. ``validate.metrics`` overrides.

* Probabilities in reduced precision (tf32, fp16, bf16 builds): an output the graph makes with a Sigmoid
  or a Softmax (:func:`trtflow.plan.onnxmeta.probabilities`) is gated by its decision and by its mean
  error, not by its worst element. Where the sigmoid is steepest (the class boundary) one fp16 rounding
  step of the logit moves p by up to a quarter of the logit's error, so a few boundary elements exceed
  any atol that still means something on [0, 1] (PP-OCRv4 det, fp16: 0.1 % of pixels beyond 1e-2, max
  0.043, mean 3e-5) while every decision stays. The decision: ``iou`` of both maps binarized at 0.5 (a
  sigmoid's boundary) or ``agreement`` of the argmax along the softmax axis, at least
  ``DECISION_MIN[precision]``; the values: ``statistic: mean`` within the precision's tolerance (a box
  score is a mean of the map). The fp16 lowering without its range rules (the detector's BatchNorm
  clamped) fails both: iou 0.45-0.74, mean abs 0.012-0.13. docs/numerics.md has the numbers.
  ``validate.tolerances.<output>``, ``validate.metrics.<output>`` or a ``validate.statistic`` other than
  max replace the rule (its tolerance part, its metric part) for that output.

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
# Probability outputs of reduced-precision builds: the least share of the decision (the binarized map's
# IoU, the argmax's agreement) that may not change: the integer outputs' agreement, for the same reason.
DECISION_MIN = AGREEMENT_MIN
SIGMOID_THRESHOLD = 0.5   # a sigmoid's decision boundary; the recipe names the model's own (DB text: 0.3)
REDUCED = frozenset({"tf32", "fp16", "bf16"})


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


def probability_metrics(precision: str, kind: str, axis: int | None) -> list[dict[str, Any]]:
    """The decision a probability output of a reduced-precision build must keep (``kind``: sigmoid/softmax)."""
    least = DECISION_MIN.get(precision, DECISION_MIN["fp32"])
    if kind == "sigmoid":
        return [{"kind": "iou", "min": least, "threshold": SIGMOID_THRESHOLD}]
    return [{"kind": "agreement", "min": least, "axis": axis}]


def _metric(m: dict[str, Any], rank: int) -> MetricCheck:
    axis = m.get("axis")
    if axis is not None and axis >= 0:  # the recipe counts the output's dims; the plan from the last one
        axis -= rank
    return MetricCheck(kind=m["kind"], min=float(m["min"]), threshold=m.get("threshold"), axis=axis)


def resolve(validate: dict[str, Any], precision: str, outputs: Any,
            probabilities: dict[str, tuple[str, int | None]] | None = None) -> dict[str, OutputCheck]:
    """Per output name: the tolerance (or None), the metrics, whether the tolerance gates it, and why.

    ``validate``: the recipe's ``validate`` section as a dict; ``outputs``: the plan's output tensors
    (``name``, ``source``, ``dtype``, ``reduce``, ``shape``); ``probabilities``: the model's probability
    outputs by source name (:attr:`ModelInfo.probabilities`). The planner calls it once; the result is
    ``plan.validate.per_output``, which is all ``trtflow validate`` reads.
    """
    probabilities = probabilities or {}
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
        prob = probabilities.get(t.source) if floaty and t.reduce is None and precision in REDUCED else None
        statistic = None  # the recipe's: a statistic it chose (not max, the default) or its own tolerance win
        if prob is not None and why != "validate.tolerances" and validate.get("statistic", "max") == "max":
            statistic = "mean"
            why = f"{why}; mean error: a {prob[0]} output of a {precision} build is gated by its decision"
        mets = metrics.get(t.name) or metrics.get(t.source)
        mets_why: str | None = "validate.metrics" if mets else None
        if not mets and prob is not None:
            mets = probability_metrics(precision, *prob)
            mets_why = f"default for a {prob[0]} output of a {precision} build (its decision)"
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
            metrics=tuple(_metric(m, len(t.shape)) for m in mets),
            metrics_from=mets_why,
            statistic=statistic,
        )
    return out
