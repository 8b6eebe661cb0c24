"""Pass ``io_outputs``: reducers and dtype narrowing; names, dims, numerics against reference.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.passes import (
    agreement,
    caller_feeds,
    contract_only,
    contract_pair,
    conv_net,
    elemwise_ok,
    io_desc,
    make_project,
    ops,
)
from onnx import TensorProto, helper

pytestmark = pytest.mark.filterwarnings("ignore::trtflow.passes._graph.PassNote")

SEG_IN = "inputs:\n  image: {profile: {min: [1, 3, 16, 16], opt: [2, 3, 16, 16], max: [4, 3, 16, 16]}}\n"


def lowered_pairs(tmp_path: Path, model: onnx.ModelProto, body: str):  # type: ignore[no-untyped-def]
    plan = make_project(tmp_path, model, body)
    lowered = contract_only(model, plan)
    return plan, lowered, contract_pair(plan, model, lowered, caller_feeds(plan, seed=3))


@pytest.mark.parametrize("dtype,elem", [("uint8", TensorProto.UINT8), ("int32", TensorProto.INT32),
                                        ("int64", TensorProto.INT64)])
def test_argmax_class_map(tmp_path: Path, dtype: str, elem: int) -> None:
    _, lowered, pairs = lowered_pairs(tmp_path, conv_net(), SEG_IN + f"""
outputs:
  logits: {{reduce: {{op: argmax, axis: 1, dtype: {dtype}}}}}
""")
    assert io_desc(lowered.graph.output) == [("logits", elem, ["N", 16, 16])]
    assert ops(lowered)[-2:] == (["ArgMax", "Cast"] if dtype != "int64" else ["Conv", "ArgMax"])
    ref, got = pairs["logits"]
    assert got.dtype == ref.dtype and agreement(ref, got) == 1.0


@pytest.mark.parametrize("dtype,elem,tail", [("uint8", TensorProto.UINT8, ["Greater", "Cast"]),
                                             ("bool", TensorProto.BOOL, ["Conv", "Greater"])])
def test_threshold_mask(tmp_path: Path, dtype: str, elem: int, tail: list[str]) -> None:
    _, lowered, pairs = lowered_pairs(tmp_path, conv_net(classes=1), SEG_IN + f"""
outputs:
  logits: {{reduce: {{op: threshold, value: 0.25, dtype: {dtype}}}}}
""")
    assert io_desc(lowered.graph.output) == [("logits", elem, ["N", 1, 16, 16])]
    assert ops(lowered)[-2:] == tail
    ref, got = pairs["logits"]
    assert got.dtype == ref.dtype and 0 < got.mean() < 1 and agreement(ref, got) == 1.0


def test_topk_values_and_int32_indices(tmp_path: Path) -> None:
    plan, lowered, pairs = lowered_pairs(tmp_path, conv_net(classes=10, head="cls"), SEG_IN + """
outputs:
  logits: {reduce: {op: topk, k: 3, axis: -1}}
""")
    assert [t.name for t in plan.outputs] == ["logits_values", "logits_indices"]
    assert io_desc(lowered.graph.output) == [("logits_values", TensorProto.FLOAT, ["N", 3]),
                                              ("logits_indices", TensorProto.INT32, ["N", 3])]
    ref_v, got_v = pairs["logits_values"]
    ref_i, got_i = pairs["logits_indices"]
    assert elemwise_ok(ref_v, got_v, 1e-5)
    assert got_i.dtype == np.int32 and agreement(ref_i, got_i) == 1.0


def test_softmax_then_fp16_narrowing(tmp_path: Path) -> None:
    _, lowered, pairs = lowered_pairs(tmp_path, conv_net(), SEG_IN + """
outputs:
  logits: {dtype: fp16, reduce: {op: softmax, axis: 1}}
""")
    assert ops(lowered)[-2:] == ["Softmax", "Cast"]
    assert io_desc(lowered.graph.output) == [("logits", TensorProto.FLOAT16, ["N", 4, 16, 16])]
    ref, got = pairs["logits"]
    assert got.dtype == np.float16 and elemwise_ok(ref, got, 1e-3)
    np.testing.assert_allclose(got.astype(np.float32).sum(axis=1), 1.0, atol=3e-3)


def test_sigmoid_keeps_the_name(tmp_path: Path) -> None:
    _, lowered, pairs = lowered_pairs(tmp_path, conv_net(), SEG_IN + "outputs:\n  logits: {reduce: {op: sigmoid}}\n")
    assert ops(lowered)[-1] == "Sigmoid" and lowered.graph.node[-1].output[0] == "logits"
    assert lowered.graph.node[-1].input[0] == "logits__model"
    ref, got = pairs["logits"]
    assert elemwise_ok(ref, got, 1e-5)


def test_plain_fp16_narrowing_is_one_cast(tmp_path: Path) -> None:
    _, lowered, pairs = lowered_pairs(tmp_path, conv_net(), SEG_IN + "outputs:\n  logits: {dtype: fp16}\n")
    assert ops(lowered)[-1] == "Cast" and ops(lowered).count("Cast") == 1
    ref, got = pairs["logits"]
    assert got.dtype == np.float16 and elemwise_ok(ref, got, 1e-3)


def test_softmax_on_an_inner_axis_before_opset_13(tmp_path: Path) -> None:
    """Softmax-11 flattens trailing dims: axis 1 of a 4-D tensor needs the transpose wrap."""
    _, lowered, pairs = lowered_pairs(tmp_path, conv_net(opset=11), SEG_IN + """
outputs:
  logits: {reduce: {op: softmax, axis: 1}}
""")
    assert ops(lowered)[-3:] == ["Transpose", "Softmax", "Transpose"]
    ref, got = pairs["logits"]
    assert elemwise_ok(ref, got, 1e-5)


def test_argmax_negative_axis_before_opset_11(tmp_path: Path) -> None:
    _, lowered, pairs = lowered_pairs(tmp_path, conv_net(opset=10), SEG_IN + """
outputs:
  logits: {reduce: {op: argmax, axis: -3, dtype: int32}}
""")
    assert next(n for n in lowered.graph.node if n.op_type == "ArgMax").attribute[0].i == 1
    ref, got = pairs["logits"]
    assert agreement(ref, got) == 1.0


def test_two_outputs_one_also_read_inside_the_graph(tmp_path: Path) -> None:
    """``logits`` is an output AND feeds ``probs``: after the rename the Softmax still reads the model's
    logits, not the argmax map that now carries the name."""
    model = conv_net()
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    model.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4, 16, 16]))
    _, lowered, pairs = lowered_pairs(tmp_path, model, SEG_IN + """
outputs:
  probs: {dtype: fp16}
  logits: {reduce: {op: argmax, dtype: uint8}}
""")
    assert [vi.name for vi in lowered.graph.output] == ["logits", "probs"]  # the model's order
    softmax = next(n for n in lowered.graph.node if n.op_type == "Softmax")
    assert softmax.input[0] == "logits__model"
    assert agreement(*pairs["logits"]) == 1.0 and elemwise_ok(*pairs["probs"], 1e-3)


def test_topk_boundary_name_already_used_inside_the_model(tmp_path: Path) -> None:
    """The model happens to have an internal tensor called ``logits_values``: it moves aside."""
    model = conv_net(classes=10, head="cls")
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    relu.output[0] = conv2.input[0] = "logits_values"
    _, lowered, pairs = lowered_pairs(tmp_path, model, SEG_IN + "outputs:\n  logits: {reduce: {op: topk, k: 2}}\n")
    assert conv2.name in {n.name for n in lowered.graph.node}
    assert next(n for n in lowered.graph.node if n.name == "conv2").input[0] == "logits_values__internal"
    assert elemwise_ok(*pairs["logits_values"], 1e-5) and agreement(*pairs["logits_indices"]) == 1.0
