"""Default tolerances follow each output's dtype and the precision; integer outputs are judged by their metric.

Real model: the shipped LRASPP-MobileNetV3 (torchvision architecture) with an fp16 output in an fp32
build (1e-5 would fail it; the policy gives 1e-3) and an argmax mask (decided by agreement, shown next to
its max abs in the table).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.numerics import REPO, build_and_validate, project

from trtflow.plan.model import MetricCheck, TensorPlan
from trtflow.validate.policy import default_metrics, default_tolerance, resolve

pytestmark = pytest.mark.filterwarnings("ignore::trtflow.passes._graph.PassNote")
SEG = REPO / "models" / "lraspp_mobilenet_v3.onnx"


def test_tolerance_is_the_larger_of_precision_and_output_dtype() -> None:
    assert default_tolerance("fp32", "float32") == {"atol": 1e-4, "rtol": 1e-4}  # 10x Polygraphy's (see policy)
    assert default_tolerance("fp32", "float16") == {"atol": 1e-3, "rtol": 1e-3}  # fp16 rounding of the output
    assert default_tolerance("tf32", "float32") == {"atol": 1e-3, "rtol": 1e-3}
    assert default_tolerance("fp16", "float32") == {"atol": 1e-2, "rtol": 1e-2}
    assert default_tolerance("bf16", "bfloat16") == {"atol": 5e-2, "rtol": 5e-2}
    assert default_tolerance("fp32", "uint8") is None  # integers: metrics, not tolerances
    assert default_metrics("fp32", "uint8") == [{"kind": "agreement", "min": 0.999}]
    assert default_metrics("fp16", "int32", {"op": "topk"}, "x_indices") == [{"kind": "topk_overlap", "min": 0.9}]


def _t(name: str, dtype: str, reduce: dict | None = None) -> TensorPlan:  # type: ignore[type-arg]
    return TensorPlan(name=name, ident=name, role="output", dtype=dtype, shape=(1,), min_shape=(1,), max_shape=(1,),
                      format="linear", memory="pinned", bytes=4, max_bytes=4, naive_bytes=4, predicted_ms=0.0,
                      naive_predicted_ms=0.0, source=name, model_dtype="float32", model_shape=(1,), reduce=reduce)


def test_resolve_says_where_each_number_comes_from() -> None:
    outs = (_t("a", "float32"), _t("b", "float16"), _t("m", "uint8", {"op": "argmax"}), _t("c", "float32"))
    v = {"tolerances": {"c": {"atol": 0.5, "rtol": 0.1}}, "metrics": {}, "default": None}
    r = resolve(v, "fp32", outs)
    assert (r["a"].atol, r["b"].atol, r["c"].atol) == (1e-4, 1e-3, 0.5)
    assert r["b"].tolerance_from == "default for a float16 output of a fp32 build"
    assert r["c"].tolerance_from == "validate.tolerances"
    assert r["m"].gate == "metrics" and r["m"].atol is None and r["m"].metrics[0].kind == "agreement"
    r = resolve({**v, "default": {"atol": 0.2, "rtol": 0.2}}, "fp32", outs)
    assert r["a"].atol == 0.2 and r["m"].atol is None  # validate.default is for float outputs


def test_a_tolerance_field_left_out_keeps_the_policys_value() -> None:
    """``{atol: 0.05}`` alone: rtol is the policy's for that output, not a fixed schema default."""
    from trtflow.recipe import parse_recipe

    v = parse_recipe("model: m.onnx\nvalidate: {default: {atol: 0.05}, tolerances: {m: {rtol: 0.3}}}\n",
                     Path("r.yaml")).recipe.validate_.model_dump()
    outs = (_t("a", "float32"), _t("b", "float16"), _t("m", "uint8", {"op": "argmax"}))
    r = resolve(v, "fp16", outs)
    assert (r["a"].atol, r["a"].rtol, r["b"].rtol) == (0.05, 1e-2, 1e-2)
    assert (r["m"].atol, r["m"].rtol, r["m"].gate) == (1e-2, 0.3, "tolerance")  # named: gated by it
    assert resolve(v, "fp32", outs)["a"].rtol == 1e-4 and resolve(v, "fp32", outs)["b"].rtol == 1e-3


@pytest.mark.slow
def test_fp16_output_of_an_fp32_build_and_an_argmax_mask(tmp_path: Path) -> None:
    body = ("outputs:\n  out: {dtype: float16}\nbuild: {backend: onnxruntime}\nvalidate: {samples: 1, "
            "inputs: {image: {kind: image, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}}\n")
    _, rep = build_and_validate(project(tmp_path, SEG, body, "seg16out"))
    (o,) = rep.outputs
    assert o.dtype == "float16" and (o.atol, o.rtol) == (1e-3, 1e-3) and rep.passed
    assert o.max_abs > 1e-4  # fp32's 1e-4 would have failed it

    body = ("outputs:\n  out: {reduce: {op: argmax, axis: 1, dtype: uint8}}\nbuild: {backend: onnxruntime}\n"
            "validate: {samples: 1}\n")
    _, rep = build_and_validate(project(tmp_path, SEG, body, "segmask"))
    (o,) = rep.outputs
    assert not o.numeric_gate and o.metrics[0].kind == "agreement" and rep.passed
    assert o.decided_by.startswith("agreement ") and ">= 0.999" in o.decided_by


def test_table_shows_the_deciding_metric_next_to_max_abs(tmp_path: Path) -> None:
    import numpy as np
    from rich.console import Console

    from trtflow import cli
    from trtflow.validate.compare import compare
    from trtflow.validate.run import ValidationReport

    a = np.zeros((1, 100), np.uint8)
    b = a.copy()
    b[0, 0] = 16  # one class id differs by 16
    o = compare("mask", a, b, atol=0.0, rtol=0.0, metrics=[MetricCheck("agreement", 0.99)], numeric_gate=False)
    rep = ValidationReport("r", "a", "onnxruntime", "cpu", "ref", "elemwise", "f", "max", 1, [o], ["opt"])
    console = Console(record=True, width=200)
    old, cli.console = cli.console, console
    try:
        cli._print_validation(rep)
    finally:
        cli.console = old
    text = console.export_text()
    row = next(line for line in text.splitlines() if "mask" in line)
    assert "agreement 0.9900 >= 0.99" in row and "16" in row and "pass" in row and "1/100 differ" in row


# -- probabilities in reduced precision: gated by their decision and their mean error ------------------
def _graph(tail: list[str], opset: int, out_shape: list[int]) -> object:
    """x [2, 3, 4] -> MatMul -> tail ops (each on the previous tensor) -> y."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes, prev = [helper.make_node("MatMul", ["x", "w"], ["z"])], "z"
    for i, op in enumerate(tail):
        name = "y" if i == len(tail) - 1 else f"t{i}"
        extra = {"Softmax": {"axis": 1}, "Transpose": {"perm": [0, 2, 1]}}.get(op, {})
        ins = [prev, "shape"] if op == "Reshape" else [prev]
        nodes.append(helper.make_node(op, ins, [name], **extra))
        prev = name
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
                           numpy_helper.from_array(np.array([2, 12], np.int64), "shape")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_contract_probability_outputs_are_found_through_layout_ops() -> None:
    from trtflow.plan.onnxmeta import probabilities

    assert probabilities(_graph(["Sigmoid", "Reshape"], 17, [2, 12]), 17) == {"y": ("sigmoid", None)}
    assert probabilities(_graph(["Softmax"], 17, [2, 3, 4]), 17) == {"y": ("softmax", -2)}
    assert probabilities(_graph(["Softmax", "Identity"], 17, [2, 3, 4]), 17) == {"y": ("softmax", -2)}
    assert probabilities(_graph(["Softmax", "Transpose"], 17, [2, 4, 3]), 17) == {}  # its axis moved
    assert probabilities(_graph(["Softmax"], 12, [2, 3, 4]), 12) == {}  # opset 12: over dims 1 and 2 together
    assert probabilities(_graph(["Relu"], 17, [2, 3, 4]), 17) == {}


def test_a_probability_of_an_fp16_build_is_gated_by_its_decision_and_mean_error() -> None:
    probs = {"p": ("sigmoid", None), "s": ("softmax", -1)}
    outs = (_t("p", "float32"), _t("s", "float32"), _t("v", "float32"))
    pol = resolve({}, "fp16", outs, probs)
    assert (pol["p"].statistic, pol["p"].atol) == ("mean", 1e-2)
    assert pol["p"].metrics == (MetricCheck("iou", 0.99, threshold=0.5),)
    assert pol["s"].metrics == (MetricCheck("agreement", 0.99, axis=-1),) and pol["s"].statistic == "mean"
    assert pol["v"].statistic is None and pol["v"].metrics == ()  # not a probability: every element
    assert resolve({}, "fp32", outs, probs)["p"] == resolve({}, "fp32", outs)["p"]  # fp32: every element
    # the recipe takes an output over: its tolerance gates every element; its metrics replace the decision
    mine = resolve({"tolerances": {"p": {"atol": 0.05, "rtol": 0.05}},
                    "metrics": {"s": [{"kind": "agreement", "min": 0.95, "axis": 0}]}}, "fp16", outs, probs)
    assert mine["p"].statistic is None and mine["p"].atol == 0.05
    assert mine["s"].metrics == (MetricCheck("agreement", 0.95, axis=-1),)  # axis 0 of a rank-1 output
    assert resolve({"statistic": "p99"}, "fp16", outs, probs)["p"].statistic is None  # the recipe's statistic


def test_decision_metrics_compare_binarized_maps_and_argmaxes() -> None:
    import numpy as np

    from trtflow.validate.compare import compare

    ref = np.array([[0.1, 0.49, 0.9, 0.7]], np.float32)
    near = ref + np.float32(0.04) * np.array([1, -1, 1, -1], np.float32)  # 0.04 everywhere, no side changes
    o = compare("p", near, ref, atol=1e-2, rtol=1e-2, statistic="mean",
                metrics=[MetricCheck("iou", 0.99, threshold=0.5)])
    assert not o.statistic_ok and o.metrics[0].value == 1.0 and o.metrics[0].on == ">= 0.5"
    assert "elemwise mean atol 0.01" in o.decided_by and "iou (>= 0.5) 1.0000" in o.decided_by
    flipped = ref.copy()
    flipped[0, 1] = 0.51  # one element crosses 0.5: the positives' IoU drops
    o = compare("p", flipped, ref, atol=1e-2, rtol=1e-2, statistic="mean",
                metrics=[MetricCheck("iou", 0.99, threshold=0.5)])
    assert o.statistic_ok and not o.passed  # mean error 0.005, but a decision changed
    scores = np.array([[[0.2, 0.8], [0.6, 0.4]]], np.float32)  # samples stacked in front: axis -1 stays
    o = compare("s", scores[..., ::-1].copy(), scores, atol=1.0, rtol=1.0, metrics=[MetricCheck("agreement", 0.99, axis=-1)])
    assert o.metrics[0].value == 0.0 and o.metrics[0].on == "argmax axis -1" and not o.passed
