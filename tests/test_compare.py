"""Comparison formulas, statistics and task metrics."""

from __future__ import annotations

import numpy as np

from trtflow.plan.model import MetricCheck
from trtflow.validate.compare import agreement, compare, failing_mask, mean_iou, topk_overlap


def test_elemwise_passes_if_either_tolerance_passes() -> None:
    b = np.array([1000.0, 0.001])
    a = np.array([1000.5, 0.0015])  # abs 0.5 (> atol) but rel 5e-4; abs 5e-4 (< atol) but rel 0.5
    assert not failing_mask(a, b, atol=1e-3, rtol=1e-3, formula="elemwise").any()
    assert failing_mask(a, b, atol=1e-3, rtol=1e-3, formula="allclose").tolist() == [False, False]
    assert failing_mask(np.array([1000.5]), np.array([1000.0]), atol=1e-3, rtol=1e-4, formula="allclose").all()


def test_nan_always_fails() -> None:
    r = compare("o", np.array([np.nan, 1.0]), np.array([1.0, 1.0]), atol=1e9, rtol=1e9)
    assert not r.passed and r.nonfinite == 1


def test_statistics_reported() -> None:
    b = np.linspace(1, 2, 1000)
    a = b + 1e-3
    r = compare("o", a, b, atol=1e-2, rtol=1e-2)
    assert r.passed and abs(r.max_abs - 1e-3) < 1e-9 and r.failing == 0
    r = compare("o", a, b, atol=1e-4, rtol=1e-4)
    assert not r.passed and r.failing == 1000


def test_mean_statistic_gates_the_statistic() -> None:
    b = np.ones(100)
    a = b.copy()
    a[0] = 2.0  # one outlier: max fails, mean abs error 0.01 passes atol 0.02
    assert not compare("o", a, b, atol=0.02, rtol=0.0, statistic="max").passed
    assert compare("o", a, b, atol=0.02, rtol=0.0, statistic="mean").passed


def test_task_metrics() -> None:
    m = np.array([[0, 1], [2, 2]])
    assert agreement(m, m) == 1.0 and agreement(m, np.zeros_like(m)) == 0.25
    assert mean_iou(m, m) == 1.0
    assert topk_overlap(np.array([[1, 2, 3]]), np.array([[3, 2, 9]])) == 2 / 3
    r = compare("mask", m, np.array([[0, 1], [2, 1]]), atol=0, rtol=0, numeric_gate=False,
                metrics=[MetricCheck("agreement", 0.7)])
    assert r.passed and r.metrics[0].value == 0.75
    r = compare("mask", m, np.array([[0, 1], [2, 1]]), atol=0, rtol=0, numeric_gate=False,
                metrics=[MetricCheck("agreement", 0.9)])
    assert not r.passed
