"""Output comparison: one named formula, error statistics, and task metrics for reduced outputs.

Formulas (the recipe picks one; the report names it):

* ``elemwise`` (Polygraphy's default): an element fails only if ``|a-b| > atol`` AND ``|a-b|/|b| > rtol``
  (passing either tolerance is enough; ``|b| = 0`` uses a tiny epsilon).
* ``allclose`` (numpy, trtexec's l0 metric): an element fails if ``|a-b| > atol + rtol*|b|``.

``statistic: max`` gates element-wise (no element may fail). ``mean``/``median``/``p99`` gate that
statistic of the error instead (elemwise: stat(abs) <= atol or stat(rel) <= rtol), as Polygraphy's
``--check-error-stat`` does.

A metric compares the values, or the decision its check names (a map binarized at a threshold, an
argmax along an axis: :func:`decision`).

NaN or Inf in the candidate where the reference is finite always fails. ``a`` is the candidate, ``b``
the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from trtflow.plan.model import MetricCheck

EPS = 1e-12

FORMULA_TEXT = {
    "elemwise": "fail where |a-b| > atol AND |a-b|/|b| > rtol (Polygraphy elemwise)",
    "allclose": "fail where |a-b| > atol + rtol*|b| (numpy allclose)",
}


@dataclass
class MetricResult:
    kind: str
    value: float
    min: float
    on: str = ""                       # what it compared: "" (the values), ">= 0.5" or "argmax axis -1"

    @property
    def passed(self) -> bool:
        return self.value >= self.min

    @property
    def label(self) -> str:
        """``iou (>= 0.5)``: the metric and the decision it compared."""
        return f"{self.kind} ({self.on})" if self.on else self.kind


@dataclass
class OutputComparison:
    name: str
    dtype: str
    shape: tuple[int, ...]
    formula: str
    statistic: str
    atol: float
    rtol: float
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    failing: int
    total: int
    nonfinite: int
    numeric_gate: bool                 # whether the tolerance gates this output (False for masks/indices)
    statistic_ok: bool                 # the chosen statistic of the error is within tolerance
    metrics: list[MetricResult] = field(default_factory=list)
    case: str = "opt"                  # the input shape set (or data) these samples ran at

    @property
    def decided_by(self) -> str:
        """What decides pass/fail, with its value: ``elemwise atol 0.01 rtol 0.01`` or ``agreement 0.9993 >= 0.99``."""
        stat = "" if self.statistic == "max" else f" {self.statistic}"
        parts = [f"{self.formula}{stat} atol {self.atol:g} rtol {self.rtol:g}"] if self.numeric_gate else []
        parts += [f"{m.label} {m.value:.4f} >= {m.min:g}" for m in self.metrics]
        return "; ".join(parts) or "-"

    @property
    def numeric_passed(self) -> bool:
        return self.statistic_ok and self.nonfinite == 0

    @property
    def passed(self) -> bool:
        return (not self.numeric_gate or self.numeric_passed) and all(m.passed for m in self.metrics)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["decided_by"] = self.decided_by
        return d


def _stat(x: np.ndarray, statistic: str) -> float:
    if x.size == 0:
        return 0.0
    if statistic == "max":
        return float(np.max(x))
    if statistic == "mean":
        return float(np.mean(x))
    if statistic == "median":
        return float(np.median(x))
    return float(np.percentile(x, 99))


def failing_mask(a: np.ndarray, b: np.ndarray, *, atol: float, rtol: float, formula: str) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    absdiff = np.abs(a64 - b64)
    if formula == "elemwise":
        rel = absdiff / np.maximum(np.abs(b64), EPS)
        bad = (absdiff > atol) & (rel > rtol)
    elif formula == "allclose":
        bad = absdiff > atol + rtol * np.abs(b64)
    else:
        raise ValueError(f"unknown formula {formula!r}")
    return bad | (~np.isfinite(a64) & np.isfinite(b64))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of elements equal (masks, argmax classes)."""
    return float(np.mean(a == b)) if a.size else 1.0


def mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU over the classes present in either mask."""
    classes = np.union1d(np.unique(a), np.unique(b))
    ious = []
    for c in classes:
        pa, pb = a == c, b == c
        union = np.logical_or(pa, pb).sum()
        if union:
            ious.append(np.logical_and(pa, pb).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def topk_overlap(a: np.ndarray, b: np.ndarray, axis: int = -1) -> float:
    """Mean fraction of shared indices between two top-k index sets along ``axis``."""
    a2 = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])
    b2 = np.moveaxis(b, axis, -1).reshape(-1, b.shape[axis])
    k = a2.shape[1]
    shared = [len(np.intersect1d(x, y)) / k for x, y in zip(a2, b2)]
    return float(np.mean(shared)) if shared else 1.0


METRICS = {"agreement": agreement, "iou": mean_iou, "topk_overlap": topk_overlap}


def decision(x: np.ndarray, m: MetricCheck) -> tuple[np.ndarray, str]:
    """What metric ``m`` compares of output ``x``: the map binarized at ``m.threshold``, the argmax along
    ``m.axis`` (counted from the last dim, so samples stacked in front do not move it), else ``x`` itself."""
    if m.threshold is not None:
        return x >= m.threshold, f">= {m.threshold:g}"
    if m.axis is not None:
        return np.argmax(x, axis=m.axis), f"argmax axis {m.axis}"
    return x, ""


def metric(m: MetricCheck, a: np.ndarray, b: np.ndarray) -> MetricResult:
    (da, on), (db, _) = decision(a, m), decision(b, m)
    return MetricResult(m.kind, METRICS[m.kind](da, db), m.min, on)


def compare(name: str, a: np.ndarray, b: np.ndarray, *, atol: float, rtol: float, formula: str = "elemwise",
            statistic: str = "max", metrics: Sequence[MetricCheck] = (),
            numeric_gate: bool = True, case: str = "opt") -> OutputComparison:
    """Compare candidate ``a`` with reference ``b``; shapes must match exactly.

    With ``numeric_gate=False`` (integer outputs) the tolerance is reported but only ``metrics`` decide.
    """
    if a.shape != b.shape:
        raise ValueError(f"output {name!r}: candidate shape {a.shape} != reference shape {b.shape}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    absdiff = np.abs(a64 - b64)[finite]
    rel = absdiff / np.maximum(np.abs(b64[finite]), EPS)
    bad = failing_mask(a, b, atol=atol, rtol=rtol, formula=formula)
    if statistic == "max":  # element-wise: every element must pass the formula
        statistic_ok = not bool(bad.any())
    elif formula == "elemwise":  # Polygraphy: the statistic of abs OR rel error within its tolerance
        statistic_ok = _stat(absdiff, statistic) <= atol or _stat(rel, statistic) <= rtol
    else:
        statistic_ok = _stat(absdiff - rtol * np.abs(b64[finite]), statistic) <= atol
    results = [metric(m, a, b) for m in metrics]
    return OutputComparison(
        name=name, dtype=str(a.dtype), shape=tuple(a.shape), formula=formula, statistic=statistic,
        atol=atol, rtol=rtol,
        max_abs=_stat(absdiff, "max"), mean_abs=_stat(absdiff, "mean"), p99_abs=_stat(absdiff, "p99"),
        max_rel=_stat(rel, "max"), mean_rel=_stat(rel, "mean"), p99_rel=_stat(rel, "p99"),
        failing=int(bad.sum()), total=int(a.size), nonfinite=int((~np.isfinite(a64)).sum()),
        numeric_gate=numeric_gate, statistic_ok=statistic_ok, metrics=results, case=case)
