"""``reference.py``: the numpy side of the contract, checked against onnxruntime's own ops (ties included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.passes import conv_net, make_project, run_ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from trtflow.errors import InputError
from trtflow.passes.reference import reference_input, reference_outputs, sigmoid, softmax, topk


def single_op(op: str, x_shape: list[int], out_types: list[int], extra: dict | None = None,  # type: ignore[type-arg]
              **attrs: object) -> onnx.ModelProto:
    """A one-node model ``op(x, *extra)`` to run onnxruntime's kernel on its own."""
    extra = extra or {}
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in extra.items()]
    outs = [f"y{i}" for i in range(len(out_types))]
    graph = helper.make_graph(
        [helper.make_node(op, ["x", *extra], outs, **attrs)], op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, out_types)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=12, max_size=12), st.integers(1, 6))
def test_topk_and_argmax_break_ties_like_onnxruntime(values: list[int], k: int) -> None:
    """Small integers make ties common: both sides must pick the lower index first."""
    x = np.array(values, dtype=np.float32).reshape(2, 6)
    model = single_op("TopK", [2, 6], [TensorProto.FLOAT, TensorProto.INT64],
                      extra={"k": np.array([k], np.int64)}, axis=1)
    got_v, got_i = run_ort(model, {"x": x}).values()
    ref_v, ref_i = topk(x, k, axis=1)
    np.testing.assert_array_equal(ref_v, got_v)
    np.testing.assert_array_equal(ref_i, got_i)
    am = run_ort(single_op("ArgMax", [2, 6], [TensorProto.INT64], axis=1, keepdims=0), {"x": x})["y0"]
    np.testing.assert_array_equal(np.argmax(x, axis=1), am)


def test_softmax_and_sigmoid_match_onnxruntime_and_do_not_overflow() -> None:
    x = np.random.default_rng(0).normal(0, 30, (2, 5, 3)).astype(np.float32)
    x[0, 0, 0] = 1e4  # exp would overflow float32 without the max shift / tanh form
    ort_sm = run_ort(single_op("Softmax", [2, 5, 3], [TensorProto.FLOAT], axis=1), {"x": x})["y0"]
    ort_sg = run_ort(single_op("Sigmoid", [2, 5, 3], [TensorProto.FLOAT]), {"x": x})["y0"]
    np.testing.assert_allclose(softmax(x, 1), ort_sm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sigmoid(x), ort_sg, rtol=1e-5, atol=1e-7)
    assert np.isfinite(softmax(x, 1)).all() and np.isfinite(sigmoid(-x)).all()


@pytest.fixture
def plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_project(tmp_path, conv_net(classes=10, head="cls"), """
inputs:
  image: {shape: [2, 3, 16, 16], dtype: uint8, layout: NHWC, preprocess: {scale: 0.5, mean: [1, 2, 3], std: [2]}}
outputs:
  logits: {reduce: {op: topk, k: 2}}
""")


def test_reference_input_casts_transposes_and_normalizes(plan) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(2 * 16 * 16 * 3, dtype=np.int64).reshape(2, 16, 16, 3).astype(np.uint8)
    y = reference_input(plan.inputs[0], x)
    assert y.dtype == np.float32 and y.shape == (2, 3, 16, 16)
    expected = (x.transpose(0, 3, 1, 2).astype(np.float64) * 0.5 - np.array([1, 2, 3]).reshape(1, 3, 1, 1)) / 2
    np.testing.assert_allclose(y, expected, rtol=1e-7)


@pytest.mark.parametrize("bad,message", [(np.zeros((2, 16, 16, 3), np.float32), "expected uint8"),
                                         (np.zeros((2, 3, 16, 16), np.uint8), "outside")])
def test_reference_input_refuses_what_the_engine_would(plan, bad: np.ndarray, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=message):
        reference_input(plan.inputs[0], bad)


def test_reference_outputs_topk_names_and_dtypes(plan) -> None:  # type: ignore[no-untyped-def]
    logits = np.array([[0.1, 3.0, 2.0, 3.0, -1, 0, 0, 0, 0, 0]] * 2, dtype=np.float32)
    out = reference_outputs(plan, "logits", logits)
    assert list(out) == ["logits_values", "logits_indices"]
    assert out["logits_indices"].dtype == np.int32 and out["logits_indices"][0].tolist() == [1, 3]
    assert out["logits_values"].dtype == np.float32 and out["logits_values"][0].tolist() == [3.0, 3.0]
    with pytest.raises(KeyError):
        reference_outputs(plan, "nope", logits)


@pytest.mark.parametrize("reduce,dtype,expected", [
    ("{op: argmax, axis: 1, dtype: uint8}", np.uint8, [[1, 0]]),
    ("{op: threshold, value: 0.5, dtype: uint8}", np.uint8, [[[0, 1], [1, 0]]]),
    ("{op: threshold, value: 0.5, dtype: bool}", np.bool_, [[[False, True], [True, False]]]),
])
def test_reference_outputs_masks(tmp_path: Path, reduce: str, dtype: type, expected: list) -> None:  # type: ignore[type-arg]
    plan = make_project(tmp_path, conv_net(classes=2, h=1, w=2), f"inputs:\n  image: {{shape: [1, 3, 1, 2]}}\n"
                                                                  f"outputs:\n  logits: {{reduce: {reduce}}}\n")
    x = np.array([[[[0.1, 0.9]], [[0.7, 0.2]]]], dtype=np.float32)  # [1, 2, 1, 2]
    (name, y), = reference_outputs(plan, "logits", x).items()
    assert name == "logits" and y.dtype == dtype
    np.testing.assert_array_equal(y.squeeze(-2) if "argmax" not in reduce else y.squeeze(1), expected)


def test_reference_outputs_narrowing_to_fp16(tmp_path: Path) -> None:
    plan = make_project(tmp_path, conv_net(), "inputs:\n  image: {shape: [1, 3, 16, 16]}\n"
                                              "outputs:\n  logits: {dtype: fp16, reduce: {op: sigmoid}}\n")
    y = reference_outputs(plan, "logits", np.zeros((1, 4, 16, 16), np.float32))["logits"]
    assert y.dtype == np.float16 and (y == 0.5).all()
