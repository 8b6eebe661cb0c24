"""``fold_shapes``: static Shape chains become constants (LRASPP's Resize sizes); dynamic dims stay."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.passes import caller_feeds, make_project, ops, real_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from trtflow.passes import PASSES, PassNote, lower
from trtflow.passes.fold import MAX_ELEMENTS, fold_shapes
from trtflow.passes.normalize import normalize

WITHOUT_FOLD = tuple(p for p in PASSES if p.name != "fold_shapes")


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def dyn_reshape_model() -> onnx.ModelProto:
    """x[N,3,4,4] -> Reshape(x, Concat(Shape(x)[0:1], ReduceProd(Shape(x, start=1)))) -> y[N,48]."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Shape", ["x"], ["chw"], start=1),
        helper.make_node("ReduceProd", ["chw"], ["flat"], keepdims=1),
        helper.make_node("Concat", ["n", "flat"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])],
                              [_i64("zero", [0]), _i64("one", [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """normalize + fold_shapes on a copy (neither reads the plan); their notes are not checked here."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassNote)
        return fold_shapes(normalize(copy, None), None)  # type: ignore[arg-type]


# -- the example segmentation model --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("prec", ["fp32", "fp16"])
def test_lraspp_resize_sizes_become_initializers(tmp_path: Path, prec: str) -> None:
    path = real_model("lraspp_mobilenet_v3.onnx")
    plan = make_project(tmp_path, path, f"precision: {prec}\ninputs:\n  image: {{dtype: uint8, layout: NHWC}}\n"
                        "outputs:\n  out: {reduce: {op: argmax, dtype: uint8}}\n")
    lowered, records = lower(onnx.load(str(path)), plan)
    inits = {i.name: numpy_helper.to_array(i) for i in lowered.graph.initializer}
    resizes = [n for n in lowered.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 2
    for node in resizes:
        given = [x for x in node.input[1:] if x]  # roi, scales, sizes: every one given is a constant
        assert given and all(x in inits for x in given)
    assert sorted(inits[r.input[3]].tolist() for r in resizes) == [[1, 21, 520, 520], [1, 128, 65, 65]]
    assert not {"Shape", "Slice", "Concat"} & set(ops(lowered))
    rec = next(r for r in records if r["name"] == "fold_shapes")
    assert rec["nodes_removed"] == {"Concat": 2, "Shape": 2, "Slice": 2} and rec["nodes_added"] == {}
    assert any("folded to constants: Concat 2, Shape 2, Slice 2" in n for n in rec["notes"])


@pytest.mark.slow
def test_lraspp_ort_output_unchanged_by_folding(tmp_path: Path) -> None:
    path = real_model("lraspp_mobilenet_v3.onnx")
    plan = make_project(tmp_path, path, "outputs:\n  out: {}\n")
    model = onnx.load(str(path))
    folded, _ = lower(model, plan)
    plain, _ = lower(model, plan, passes=WITHOUT_FOLD)
    assert ops(plain).count("Shape") == 2 and "Shape" not in ops(folded)
    feeds = caller_feeds(plan, seed=3)
    got, ref = run_ort(folded, feeds)["out"], run_ort(plain, feeds)["out"]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


# -- dynamic dims stay dynamic --------------------------------------------------------------------------
def test_dynamic_batch_keeps_its_shape_and_folds_the_static_dims() -> None:
    model = dyn_reshape_model()
    out = _fold(model)
    onnx.checker.check_model(out, full_check=True)
    shapes = [n for n in out.graph.node if n.op_type == "Shape"]
    assert len(shapes) == 1 and not shapes[0].attribute  # the batch Shape; Shape(start=1) is folded
    assert ops(out) == ["Shape", "Slice", "Concat", "Reshape"]  # ReduceProd of [3,4,4] is folded too
    concat = next(n for n in out.graph.node if n.op_type == "Concat")
    flat = next(i for i in out.graph.initializer if i.name == concat.input[1])
    assert numpy_helper.to_array(flat).tolist() == [48]
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, 3, 4, 4), dtype=np.float32)
        assert run_ort(out, {"x": x})["y"].shape == (batch, 48)
        np.testing.assert_array_equal(run_ort(out, {"x": x})["y"], run_ort(model, {"x": x})["y"])


def test_mobilenet_dynamic_batch_still_lowers_and_runs(tmp_path: Path) -> None:
    path = real_model("mobilenet_v3_small.onnx")
    plan = make_project(tmp_path, path, "inputs:\n  images: {profile: {min: [1, 3, 224, 224], opt: [2, 3, 224, 224], "
                        "max: [4, 3, 224, 224]}}\n")
    lowered, _ = lower(onnx.load(str(path)), plan)
    assert lowered.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(0).random((3, 3, 224, 224), dtype=np.float32)
    assert run_ort(lowered, {"images": x})["logits"].shape == (3, 1000)


# -- what is never folded ------------------------------------------------------------------------------
def _one_node(node: onnx.NodeProto, inits: list[onnx.TensorProto], out: str = "y", out_type: int = TensorProto.FLOAT,
              outputs: list[str] | None = None) -> onnx.ModelProto:
    """x -> Add(x, <node's result>) -> y, so the node's result is internal unless ``outputs`` says so."""
    nodes = [node, helper.make_node("Add", ["x", node.output[0]], [out])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", out_type, None)],
                              [helper.make_tensor_value_info(o, out_type, None) for o in (outputs or [out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_shape_start_end_attributes() -> None:
    node = helper.make_node("Shape", ["c"], ["s"], start=-3, end=-1)
    c = numpy_helper.from_array(np.zeros((2, 3, 5, 7), np.float32), "c")
    out = _fold(_one_node(node, [c], out_type=TensorProto.INT64))
    s = next(i for i in out.graph.initializer if i.name == "s")
    assert numpy_helper.to_array(s).tolist() == [3, 5] and "c" not in {i.name for i in out.graph.initializer}


def test_random_and_dequantize_are_kept() -> None:
    rnd = helper.make_node("RandomNormalLike", ["c"], ["r"], seed=1.0)
    c = numpy_helper.from_array(np.zeros((4,), np.float32), "c")
    assert ops(_fold(_one_node(rnd, [c]))) == ["RandomNormalLike", "Add"]
    dq = helper.make_node("DequantizeLinear", ["q", "sc"], ["d"])
    inits = [numpy_helper.from_array(np.arange(4, dtype=np.int8), "q"),
             numpy_helper.from_array(np.array(0.5, np.float32), "sc")]
    assert ops(_fold(_one_node(dq, inits))) == ["DequantizeLinear", "Add"]


def test_large_results_graph_outputs_and_external_data_are_kept() -> None:
    big = helper.make_node("Expand", ["one", "shape"], ["e"])
    inits = [numpy_helper.from_array(np.ones((1,), np.float32), "one"), _i64("shape", [MAX_ELEMENTS + 1])]
    assert ops(_fold(_one_node(big, inits))) == ["Expand", "Add"]

    neg = helper.make_node("Neg", ["c"], ["n"])
    c = numpy_helper.from_array(np.ones((4,), np.float32), "c")
    assert ops(_fold(_one_node(neg, [c], outputs=["y", "n"]))) == ["Neg", "Add"]  # n is a graph output
    assert ops(_fold(_one_node(neg, [c]))) == ["Add"]  # the same node, internal, folds

    ext = numpy_helper.from_array(np.ones((4,), np.float32), "c")
    onnx.external_data_helper.set_external_data(ext, "weights.bin")
    ext.data_location = TensorProto.EXTERNAL
    ext.ClearField("raw_data")
    assert ops(_fold(_one_node(neg, [ext]))) == ["Neg", "Add"]


def test_a_model_without_anything_to_fold_is_left_alone() -> None:
    node = helper.make_node("Relu", ["x"], ["r"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = normalize(model, None)  # type: ignore[arg-type]
    text = before.SerializeToString()
    assert fold_shapes(before, None).SerializeToString() == text  # type: ignore[arg-type]
