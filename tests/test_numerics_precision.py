"""fp16 never silently ruins a model: out-of-range weights and activations keep their nodes in fp32.

Real models (the corpus, from PyPI wheels): PP-OCRv4's text detector has a BatchNorm variance of 9.8e7
that the converter used to clamp to 65504 (output garbage); YOLOv8 (nudenet) at 640 px decodes box
coordinates above data_max; silero VAD has If branches (the converter broke them). Synthetic graphs pin
each rule and each converter fix alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.numerics import build_and_validate, corpus_model, project
from helpers.passes import make_project, run_ort
from onnx import TensorProto, helper, numpy_helper

from trtflow.passes import lower
from trtflow.passes.normalize import normalize
from trtflow.passes.precision import Policy, bypass_cast_roundtrips, weight_problem

pytestmark = pytest.mark.filterwarnings("ignore::trtflow.passes._graph.PassNote")

DET_IMAGE = "validate:\n  samples: 1\n  inputs:\n    x: {kind: image, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}\n"


# -- real models --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fp16_ppocr_det_keeps_the_huge_batchnorm_variance_in_fp32(tmp_path: Path) -> None:
    model = corpus_model("ppocr_det")
    body = "precision: fp16\ninputs:\n  x: {shape: [1, 3, 320, 320]}\nbuild: {backend: onnxruntime}\n" + DET_IMAGE
    report, rep = build_and_validate(project(tmp_path, model, body, "det16"))
    mp = report["mixed_precision"]
    bn = [k for k in mp["kept"] if k["rule"] == "initializer_overflow"]
    assert [k["op"] for k in bn] == ["BatchNormalization"] and bn[0]["value"] > 9e7 and bn[0]["limit"] == 65504
    assert mp["calibration"]["ran"] and mp["by_rule"]["activation"] >= 1  # FPN activations above 512
    (out,) = rep.outputs
    assert out.mean_abs < 1e-3 and out.failing / out.total < 0.01  # a probability map, right almost everywhere

    # what the converter did before (clamp the variance to 65504): the map is garbage
    old = body + "mixed_precision: {init_max: 1.0e+30, data_max: null}\n"
    report, rep = build_and_validate(project(tmp_path, model, old.replace("det16", "x"), "det16_clamped"))
    assert not report["mixed_precision"]["kept"] or all(k["rule"] == "op_type" for k in report["mixed_precision"]["kept"])
    assert rep.outputs[0].mean_abs > 0.1 and not rep.passed


@pytest.mark.slow
def test_fp16_yolov8_is_right_and_keeps_the_pixel_coordinates_fp32(tmp_path: Path) -> None:
    model = corpus_model("nudenet_320n")
    body = ("precision: fp16\ninputs:\n  images: {shape: [1, 3, 640, 640]}\nbuild: {backend: onnxruntime}\n"
            "validate:\n  samples: 1\n  inputs:\n    images: {kind: image}\n")
    report, rep = build_and_validate(project(tmp_path, model, body, "yolo16"))
    assert rep.passed, [o.to_dict() for o in rep.outputs]
    act = [k for k in report["mixed_precision"]["kept"] if k["rule"] == "activation"]
    assert act and all(k["value"] > 512 for k in act)  # box coordinates up to 640 px: the decode tail
    assert any(k["node"].startswith("/model.22/") for k in act)


@pytest.mark.slow
def test_fp16_silero_vad_with_if_branches_builds_and_validates(tmp_path: Path) -> None:
    model = corpus_model("silero_vad")
    body = ("precision: fp16\ninputs:\n  input: {shape: [1, 512]}\n  state: {shape: [2, 1, 128]}\n"
            "build: {backend: onnxruntime}\nvalidate:\n  inputs:\n    sr: {kind: choice, values: [16000, 8000]}\n"
            "    state: {kind: zeros}\n    input: {kind: range, low: -0.5, high: 0.5}\n")
    report, rep = build_and_validate(project(tmp_path, model, body, "vad16"))
    assert rep.passed, [o.to_dict() for o in rep.outputs]
    assert report["mixed_precision"]["precision"] == "fp16"


# -- the rules ----------------------------------------------------------------------------------------
def test_weight_rules() -> None:
    big = numpy_helper.from_array(np.array([1.0, 9.79e7], np.float32), "var")
    assert weight_problem(big, 65504.0) == ("initializer_overflow", pytest.approx(9.79e7), 65504.0)
    tiny = numpy_helper.from_array(np.full(8, 3e-9, np.float32), "eps")  # flushed/raised to 1e-7 in fp16
    rule, lost, limit = weight_problem(tiny, 65504.0)  # type: ignore[misc]
    assert rule == "initializer_underflow" and lost > 0.9 and limit == 0.01
    mixed = numpy_helper.from_array(np.array([1.0, 0.5, 1e-9], np.float32), "w")  # one tiny value: harmless
    assert weight_problem(mixed, 65504.0) is None
    assert weight_problem(numpy_helper.from_array(np.array([np.inf, 1.0], np.float32), "i"), 65504.0) is None


def _chain() -> onnx.ModelProto:
    """x -> Mul(by 1e3) -> Add(1) -> Relu -> y, and Add's output also read by Neg -> z: values near 1e5."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["m"], name="mul"), helper.make_node("Add", ["m", "one"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["y"], name="relu"), helper.make_node("Neg", ["a"], ["z"], name="neg")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.array(1e3, np.float32), "k"),
                               numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_calibration_keeps_large_activations_and_their_boundaries_fp32(tmp_path: Path) -> None:
    model = _chain()
    plan = make_project(tmp_path, model, "precision: fp16\nvalidate:\n  inputs:\n    x: {kind: range, low: 90, high: 100}\n")
    lowered, records = lower(model, plan)
    mp = next(r["details"]["mixed_precision"] for r in records if r["name"] == "precision")
    kept = {k["node"]: k for k in mp["kept"]}
    assert set(kept) == {"mul", "add", "relu", "neg"} and all(k["rule"] == "activation" for k in kept.values())
    assert kept["add"]["value"] == pytest.approx(1e5, rel=0.01) and kept["add"]["limit"] == 512
    # every tensor stays fp32, boundaries included: no fp16 round trip (1e5 > 65504 would be inf)
    x = np.array([99.0, 95.0, 91.0, 90.5], np.float32)
    got = run_ort(lowered, {"x": x})
    np.testing.assert_allclose(got["y"], x * 1e3 + 1, rtol=1e-6)
    assert not any(n.op_type == "Cast" for n in lowered.graph.node)


def test_without_calibration_the_report_says_so(tmp_path: Path) -> None:
    plan = make_project(tmp_path, _chain(), "precision: fp16\nmixed_precision: {calibrate: false}\n")
    _, records = lower(_chain(), plan)
    mp = next(r["details"]["mixed_precision"] for r in records if r["name"] == "precision")
    assert mp["calibration"] == {"ran": False, "why": "mixed_precision.calibrate is false"} and not mp["kept"]


def test_recipe_names_ops_and_nodes_to_keep(tmp_path: Path) -> None:
    body = ("precision: fp16\nmixed_precision: {keep_fp32_ops: [Neg], keep_fp32_nodes: ['re*'], calibrate: false}\n")
    plan = make_project(tmp_path, _chain(), body)
    _, records = lower(_chain(), plan)
    mp = next(r["details"]["mixed_precision"] for r in records if r["name"] == "precision")
    assert {k["node"]: k["rule"] for k in mp["kept"]} == {"neg": "recipe", "relu": "recipe"}


def test_two_fp32_nodes_in_a_row_pass_fp32_between_them() -> None:
    """The converter routes a blocked node's output through fp16 to the next blocked node when the
    tensor has several readers; bypass_cast_roundtrips reconnects them in fp32."""
    from onnxconverter_common import float16

    model = normalize(_chain(), None)  # type: ignore[arg-type]

    conv = float16.convert_float_to_float16(model, keep_io_types=False, node_block_list=["add", "neg"],
                                            check_fp16_ready=False)
    roundtrip = any(n.op_type == "Cast" for n in conv.graph.node
                    if any(x.startswith("neg_input_cast") for x in n.output))
    assert roundtrip  # the converter's graph: add -> Cast(fp16) -> Cast(fp32) -> neg
    bypass_cast_roundtrips(conv.graph)
    neg = next(n for n in conv.graph.node if n.name == "neg")
    add = next(n for n in conv.graph.node if n.name == "add")
    assert neg.input[0] == add.output[0]  # fp32 straight from add
    onnx.checker.check_model(conv, full_check=True)


def test_policy_defaults_follow_autocast() -> None:
    p = Policy.of(None)
    assert (p.init_max, p.data_max, p.calibrate) == (65504.0, 512.0, True)
