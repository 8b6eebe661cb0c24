"""Pass ``precision``: fp16 through onnxconverter-common (plus its fixes), bf16 of our own."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.passes import conv_net, elemwise_ok, io_desc, make_project, ops, run_ort
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import BackendMissing, ModelError
from trtflow.passes import normalize, precision
from trtflow.passes.precision import to_bf16, to_fp16

pytestmark = pytest.mark.filterwarnings("ignore::trtflow.passes._graph.PassNote")


def lowered(model: onnx.ModelProto, fn) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return fn(normalize(copy, None))  # type: ignore[no-any-return]


def float_initializer_types(model: onnx.ModelProto) -> set[int]:
    return {i.data_type for i in model.graph.initializer if i.data_type in (1, 10, 16)}


@pytest.mark.parametrize("prec", ["fp32", "tf32"])
def test_fp32_and_tf32_change_nothing(tmp_path: Path, prec: str) -> None:
    model = conv_net()
    plan = make_project(tmp_path, model, f"precision: {prec}\ninputs:\n  image: {{shape: [1, 3, 16, 16]}}\n")
    before = model.SerializeToString()
    assert precision(model, plan).SerializeToString() == before


def test_fp16_lowers_weights_and_boundaries() -> None:
    model = conv_net(head="cls", classes=10)
    out = lowered(model, to_fp16)
    onnx.checker.check_model(out, full_check=True)
    assert float_initializer_types(out) == {TensorProto.FLOAT16}
    # boundaries go fp16 too: the I/O contract pass adds the one cast the plan asks for
    assert io_desc(out.graph.input) == [("image", TensorProto.FLOAT16, ["N", 3, 16, 16])]
    assert io_desc(out.graph.output) == [("logits", TensorProto.FLOAT16, ["N", 10])]
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    ref = run_ort(model, {"image": x})["logits"]
    got = run_ort(out, {"image": x.astype(np.float16)})["logits"]
    assert elemwise_ok(ref, got, 1e-2)  # the plan's fp16 default: atol = rtol = 1e-2


def _tricky_graph() -> onnx.ModelProto:
    """Two converter gaps in one graph: a Cast(to=float) inside the compute path, and a constant shared
    by a blocked op (Max) and an unblocked one (Mul); plus unnamed nodes (cast names derive from them)."""
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "fi"], ["a"]),
             helper.make_node("Max", ["a", "c"], ["m"]),
             helper.make_node("Min", ["m", "c2"], ["m2"]),
             helper.make_node("Mul", ["m2", "c"], ["y"])]
    graph = helper.make_graph(
        nodes, "tricky",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.full([4], 0.5, np.float32), "c"),
         numpy_helper.from_array(np.full([4], 3.0, np.float32), "c2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_fixes_converter_gaps() -> None:
    model = _tricky_graph()
    out = lowered(model, to_fp16)
    onnx.checker.check_model(out, full_check=True)
    cast = next(n for n in out.graph.node if n.op_type == "Cast" and n.input[0] == "i")
    assert cast.attribute[0].i == TensorProto.FLOAT16
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert mul.input[1] == "c__fp16"
    rng = np.random.default_rng(0)
    x, i = rng.standard_normal((2, 4)).astype(np.float32), rng.integers(-3, 3, (2, 4))
    ref = run_ort(model, {"x": x, "i": i})["y"]
    got = run_ort(out, {"x": x.astype(np.float16), "i": i})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-3)


def test_fp16_keeps_overflow_prone_ops_in_fp32() -> None:
    graph = helper.make_graph(
        [helper.make_node("Pow", ["x", "two"], ["p"], name="pow"), helper.make_node("Relu", ["p"], ["y"], name="relu")],
        "pow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = lowered(model, to_fp16)
    onnx.checker.check_model(out, full_check=True)
    x = np.array([300.0, -2.0, 0.5], np.float32)  # 300^2 = 90000 overflows fp16 (max 65504)
    # x is read by Pow alone, so it stays fp32 (no fp16 round trip on the way in)
    assert io_desc(out.graph.input) == [("x", TensorProto.FLOAT, [3])]
    got = run_ort(out, {"x": x})["y"]
    assert np.isinf(got[0])  # the fp16 graph output cannot hold 90000...
    pow_node = next(n for n in out.graph.node if n.op_type == "Pow")
    assert pow_node.input[0] == "x"  # ...but Pow itself runs in fp32


def test_fp16_without_onnxconverter_common_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(BackendMissing) as err:
        to_fp16(conv_net())
    assert "trtflow[lower]" in str(err.value)


def test_fp16_refuses_unloaded_external_weights(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(conv_net(), str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    with pytest.raises(ModelError, match="external data"):
        to_fp16(onnx.load(str(path), load_external_data=False))


def test_bf16_compute_is_bf16_and_checker_clean() -> None:
    out = lowered(conv_net(head="cls", classes=10), to_bf16)
    onnx.checker.check_model(out, full_check=True)
    assert out.opset_import[0].version == 22  # bf16 Conv needs opset 22
    assert float_initializer_types(out) == {TensorProto.BFLOAT16}
    assert io_desc(out.graph.input)[0][1] == TensorProto.BFLOAT16
    assert io_desc(out.graph.output)[0][1] == TensorProto.BFLOAT16
    assert "Cast" not in ops(out)  # every op here has a bf16 schema at opset 22
    types = {vi.type.tensor_type.elem_type for vi in out.graph.value_info}
    assert types == {TensorProto.BFLOAT16}


def test_bf16_numerics_with_the_onnx_reference_evaluator() -> None:
    """onnxruntime CPU has no bf16 Conv; onnx's reference evaluator runs the graph in true bf16."""
    import ml_dtypes
    from onnx.reference import ReferenceEvaluator

    model = conv_net(batch=1, h=8, w=8)
    out = lowered(model, to_bf16)
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    got = ReferenceEvaluator(out).run(None, {"image": x.astype(ml_dtypes.bfloat16)})[0]
    ref = run_ort(model, {"image": x})["logits"]
    assert got.dtype == ml_dtypes.bfloat16
    err = np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err < 2e-2  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding


def test_bf16_keeps_fixed_float_slots_and_blocked_ops_fp32() -> None:
    """Resize's `scales` is tensor(float) in every opset, Range stays fp32 by choice: the schema-driven
    lowering keeps those fp32, casts between, and shares no weight between the two kinds."""
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize", mode="nearest"),
             helper.make_node("Mul", ["r", "s"], ["m"], name="mul"),
             helper.make_node("Range", ["s0", "lim", "s0"], ["rg"], name="range"),
             helper.make_node("Add", ["m", "rg"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
         numpy_helper.from_array(np.array(1.5, np.float32), "s"),
         numpy_helper.from_array(np.array(1.0, np.float32), "s0"),
         numpy_helper.from_array(np.array(5.0, np.float32), "lim")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    out = lowered(model, to_bf16)
    onnx.checker.check_model(out, full_check=True)
    inits = {i.name: i.data_type for i in out.graph.initializer}
    assert inits["scales"] == TensorProto.FLOAT and inits["s"] == TensorProto.BFLOAT16
    assert inits["s0"] == TensorProto.FLOAT and inits["lim"] == TensorProto.FLOAT
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert add.input[1] == "rg__to_bf16"


def test_bf16_refuses_control_flow() -> None:
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "body", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)], "if",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ModelError, match="control flow"):
        to_bf16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("computed", [False, True])
def test_fp16_resize_runs_in_fp16_with_float32_scales(computed: bool) -> None:
    """Resize's `scales` is float32 in every opset: a weight keeps its fp32 original, a computed
    scales tensor gets a Cast; the interpolation itself runs in fp16 (no fp32 island)."""
    scales = np.array([1, 1, 2, 2], np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Resize", ["r", "", "s"], ["y"], name="resize", mode="linear")]
    inits = [numpy_helper.from_array(scales, "s")]
    if computed:  # scales = s0 * 2, a float computation the converter lowers to fp16
        nodes.insert(0, helper.make_node("Mul", ["s0", "two"], ["s"], name="mul"))
        inits = [numpy_helper.from_array(scales / 2, "s0"), numpy_helper.from_array(np.float32(2), "two")]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = lowered(model, to_fp16)
    onnx.checker.check_model(out, full_check=True)
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    assert resize.input[0] == "r" and resize.input[2] == "s__fp32"
    assert ops(out).count("Cast") == (1 if computed else 0)
    if not computed:
        assert {i.name: i.data_type for i in out.graph.initializer} == {"s__fp32": TensorProto.FLOAT}
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    ref = run_ort(model, {"x": x})["y"]
    got = run_ort(out, {"x": x.astype(np.float16)})["y"]
    assert got.dtype == np.float16 and elemwise_ok(ref, got, 1e-2)


def test_bf16_decomposes_hardswish_and_stays_bf16() -> None:
    """TensorRT's importer has no bf16 HardSwish; x * HardSigmoid(x, 1/6, 1/2) is its ONNX definition."""
    import ml_dtypes
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        [helper.make_node("HardSwish", ["x"], ["y"], name="hs")], "hs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = lowered(model, to_bf16)
    onnx.checker.check_model(out, full_check=True)
    assert ops(out) == ["HardSigmoid", "Mul"]
    assert out.graph.node[1].output[0] == "y"
    x = np.linspace(-5, 5, 64, dtype=np.float32)
    got = ReferenceEvaluator(out).run(None, {"x": x.astype(ml_dtypes.bfloat16)})[0]
    ref = run_ort(model, {"x": x})["y"]
    np.testing.assert_allclose(got.astype(np.float32), ref, rtol=1e-2, atol=1e-2)
