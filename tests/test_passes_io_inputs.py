"""Pass ``io_inputs``: boundary Cast, NHWC transpose, folded normalization; names, dims, numerics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.passes import (
    caller_feeds,
    contract_only,
    contract_pair,
    conv_net,
    elemwise_ok,
    io_desc,
    make_project,
    ops,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto

from trtflow.passes.io_inputs import normalization_constants
from trtflow.passes.reference import normalize as reference_normalize

pytestmark = pytest.mark.filterwarnings("ignore::trtflow.passes._graph.PassNote")

IMAGENET = "preprocess: {scale: 0.00392156862745098, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"


def test_uint8_nhwc_imagenet_input_matches_reference(tmp_path: Path) -> None:
    model = conv_net()
    plan = make_project(tmp_path, model, f"""
inputs:
  image: {{shape: [2, 3, 16, 16], dtype: uint8, layout: NHWC, {IMAGENET}}}
""")
    lowered = contract_only(model, plan)
    assert ops(lowered)[:4] == ["Cast", "Transpose", "Mul", "Add"]
    assert io_desc(lowered.graph.input) == [("image", TensorProto.UINT8, [2, 16, 16, 3])]
    # the model's own tensor moved aside; the first conv reads the normalized tensor
    conv = next(n for n in lowered.graph.node if n.op_type == "Conv")
    assert conv.input[0] == "image__model"
    mul = next(i for i in lowered.graph.initializer if i.name == "image__mul")
    assert list(mul.dims) == [1, 3, 1, 1]
    (ref, got), = contract_pair(plan, model, lowered, caller_feeds(plan)).values()
    assert elemwise_ok(ref, got, 1e-5)


def test_fp16_handover_is_a_single_cast(tmp_path: Path) -> None:
    model = conv_net()
    plan = make_project(tmp_path, model, "inputs:\n  image: {shape: [1, 3, 16, 16], dtype: fp16}\n")
    lowered = contract_only(model, plan)
    assert ops(lowered)[0] == "Cast" and ops(lowered).count("Cast") == 1
    assert io_desc(lowered.graph.input) == [("image", TensorProto.FLOAT16, [1, 3, 16, 16])]
    (ref, got), = contract_pair(plan, model, lowered, caller_feeds(plan)).values()
    assert elemwise_ok(ref, got, 1e-5)


def test_no_contract_adds_no_nodes_but_fixes_static_dims(tmp_path: Path) -> None:
    model = conv_net()  # batch is dynamic ("N") in the model
    plan = make_project(tmp_path, model, "inputs:\n  image: {shape: [1, 3, 16, 16]}\n")
    lowered = contract_only(model, plan)
    assert ops(lowered) == ["Conv", "BatchNormalization", "Relu", "Conv"]
    assert io_desc(lowered.graph.input) == [("image", TensorProto.FLOAT, [1, 3, 16, 16])]
    assert io_desc(lowered.graph.output) == [("logits", TensorProto.FLOAT, [1, 4, 16, 16])]


def test_dynamic_dims_keep_the_models_symbol_or_get_one(tmp_path: Path) -> None:
    model = conv_net(h=16, w="W")
    plan = make_project(tmp_path, model, """
inputs:
  image: {dtype: uint8, layout: NHWC, profile: {min: [1, 3, 16, 8], opt: [2, 3, 16, 16], max: [4, 3, 16, 32]}}
""")
    lowered = contract_only(model, plan)
    assert io_desc(lowered.graph.input) == [("image", TensorProto.UINT8, ["N", 16, "W", 3])]
    assert io_desc(lowered.graph.output) == [("logits", TensorProto.FLOAT, ["N", 4, 16, "W"])]
    feeds = {"image": np.random.default_rng(1).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)}
    (ref, got), = contract_pair(plan, model, lowered, feeds).values()
    assert got.shape == (3, 4, 16, 24) and elemwise_ok(ref, got, 1e-5)


def test_dynamic_dim_without_a_model_symbol_is_named_after_the_tensor(tmp_path: Path) -> None:
    model = conv_net()
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()  # unknown, unnamed batch dim
    plan_model = conv_net()  # the planner needs a named dim to accept a profile; same weights
    plan = make_project(tmp_path, plan_model, "inputs:\n  image: {profile: {min: [1,3,16,16], opt: [1,3,16,16], "
                                               "max: [2,3,16,16]}}\n")
    lowered = contract_only(model, plan)
    assert io_desc(lowered.graph.input)[0][2] == ["d0_image", 3, 16, 16]


@pytest.mark.parametrize("pre", ["{scale: 0.5}", "{mean: [0.5]}", "{std: [2.0, 4.0, 8.0]}",
                                 "{scale: 1.0, mean: [1.0, 2.0, 3.0], std: [0.5]}"])
def test_partial_preprocess_in_nchw(tmp_path: Path, pre: str) -> None:
    model = conv_net()
    plan = make_project(tmp_path, model, f"inputs:\n  image: {{shape: [1, 3, 16, 16], layout: NCHW, preprocess: {pre}}}\n")
    lowered = contract_only(model, plan)
    assert "Transpose" not in ops(lowered) and "Cast" not in ops(lowered)
    assert "Add" not in ops(lowered) if "mean" not in pre else "Add" in ops(lowered)
    (ref, got), = contract_pair(plan, model, lowered, caller_feeds(plan)).values()
    assert elemwise_ok(ref, got, 1e-5)


@settings(max_examples=50, deadline=None)
@given(scale=st.floats(1e-3, 10), mean=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
       std=st.lists(st.floats(0.05, 5), min_size=1, max_size=3).filter(lambda s: len(s) in (1, 3)))
def test_folded_constants_equal_the_recipe_formula(scale: float, mean: list[float], std: list[float]) -> None:
    pre = {"scale": scale, "mean": mean, "std": std}
    x = np.random.default_rng(0).random((1, 3, 2, 2)) * 255
    a, b = normalization_constants(pre, channels=3, rank=4)
    np.testing.assert_allclose(x * a + b, reference_normalize(x, pre), rtol=1e-12, atol=1e-9)


def test_an_input_consumed_twice_is_renamed_everywhere(tmp_path: Path) -> None:
    model = conv_net()
    # the raw image also feeds a second output: both consumers must read the contract's result
    model.graph.node.append(onnx.helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0))
    model.graph.output.append(onnx.helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N"]))
    plan = make_project(tmp_path, model, "inputs:\n  image: {shape: [1, 3, 16, 16], dtype: uint8, layout: NHWC}\n")
    lowered = contract_only(model, plan)
    readers = [n.input[0] for n in lowered.graph.node if n.name == "conv1" or n.op_type == "ReduceMean"]
    assert readers == ["image__model", "image__model"]
    pairs = contract_pair(plan, model, lowered, caller_feeds(plan))
    assert all(elemwise_ok(r, g, 1e-5) for r, g in pairs.values())
