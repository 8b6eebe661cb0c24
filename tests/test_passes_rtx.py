"""The lowered graphs are accepted by a real TensorRT ONNX parser and builder (TensorRT-RTX, which
builds ahead of time without a GPU): uint8 boundaries, the NHWC transpose after the cast, reducers,
fp16 and bf16 graphs. onnx.checker cannot tell that, e.g., TensorRT has no bf16 HardSwish.

The parser is called directly (not through trtflow.backends) so this checks the passes alone.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers.passes import MODELS, conv_net, make_project, real_model

from trtflow.passes import lower
from trtflow.plan import Plan

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip extra rtx)")
pytestmark = [pytest.mark.rtx]

IMAGENET = "preprocess: {scale: 0.00392156862745098, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"


def build(model: onnx.ModelProto, plan: Plan) -> tuple[list[str], list[str]]:
    """Parse + build; returns the engine network's input/output dtype names (after a successful build)."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        pytest.fail("TensorRT-RTX could not parse the lowered model:\n" + "\n".join(errors))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for t in plan.inputs:
        profile.set_shape(t.name, t.min_shape, t.shape, t.max_shape)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None, "build failed"
    return ([network.get_input(i).dtype.name for i in range(network.num_inputs)],
            [network.get_output(i).dtype.name for i in range(network.num_outputs)])


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
def test_conv_net_full_contract_builds(tmp_path: Path, prec: str) -> None:
    model = conv_net()
    plan = make_project(tmp_path, model, f"""precision: {prec}
inputs:
  image: {{dtype: uint8, layout: NHWC, {IMAGENET}, profile: {{min: [1,3,16,16], opt: [2,3,16,16], max: [4,3,16,16]}}}}
outputs:
  logits: {{reduce: {{op: argmax, dtype: uint8}}}}
""")
    lowered, _ = lower(model, plan)
    assert build(lowered, plan) == (["UINT8"], ["UINT8"])


@pytest.mark.slow
@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
def test_mobilenet_v3_topk_builds(tmp_path: Path, prec: str) -> None:
    """MobileNetV3 has HardSwish: bf16 only builds because the pass decomposes it."""
    path = real_model("mobilenet_v3_small.onnx")
    plan = make_project(tmp_path, path, f"""precision: {prec}
inputs:
  images: {{dtype: uint8, layout: NHWC, shape: [1, 3, 224, 224], {IMAGENET}}}
outputs:
  logits: {{reduce: {{op: topk, k: 5}}}}
""")
    lowered, _ = lower(onnx.load(str(MODELS / "mobilenet_v3_small.onnx")), plan)
    assert build(lowered, plan) == (["UINT8"], ["FLOAT", "INT32"])
