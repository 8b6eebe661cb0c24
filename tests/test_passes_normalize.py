"""Pass ``normalize``: constants -> initializers, stray initializers, shape inference, external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.passes import conv_net, ops, run_ort
from onnx import TensorProto, helper, numpy_helper

from trtflow.passes.normalize import constant_tensor, normalize

pytestmark = pytest.mark.filterwarnings("ignore::trtflow.passes._graph.PassNote")


def test_paddle_style_constants_become_initializers_and_output_is_unchanged() -> None:
    model = conv_net(constants_as_nodes=True)
    assert ops(model).count("Constant") == 8
    out = normalize(_copy(model), None)  # type: ignore[arg-type]
    assert "Constant" not in ops(out)
    assert {i.name for i in out.graph.initializer} >= {"w1", "b1", "w2", "b2", "bn_var"}
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(run_ort(model, {"image": x})["logits"], run_ort(out, {"image": x})["logits"])


def test_shape_inference_fills_value_info_and_keeps_opset() -> None:
    out = normalize(conv_net(opset=13), None)  # type: ignore[arg-type]
    typed = {vi.name: vi.type.tensor_type.elem_type for vi in out.graph.value_info}
    assert typed == {"c1": TensorProto.FLOAT, "bn": TensorProto.FLOAT, "r": TensorProto.FLOAT}
    assert out.opset_import[0].version == 13


def test_scalar_and_list_constant_attributes() -> None:
    cases = {"value_float": (1.5, np.float32, ()), "value_floats": ([1.0, 2.0], np.float32, (2,)),
             "value_int": (3, np.int64, ()), "value_ints": ([1, 2, 3], np.int64, (3,))}
    for attr, (value, dtype, shape) in cases.items():
        t = constant_tensor(helper.make_node("Constant", [], ["c"], **{attr: value}))
        assert t is not None and t.name == "c"
        arr = numpy_helper.to_array(t)
        assert arr.dtype == dtype and arr.shape == shape
        np.testing.assert_array_equal(arr, np.array(value, dtype=dtype))
    t = constant_tensor(helper.make_node("Constant", [], ["s"], value_strings=["a", "b"]))
    assert t is not None and list(numpy_helper.to_array(t)) == ["a", "b"]


def test_constant_that_is_a_graph_output_stays_a_node() -> None:
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(2, np.float32))),
         helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [2])])
    out = normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), None)  # type: ignore[arg-type]
    assert ops(out) == ["Constant", "Relu"]


def test_initializers_listed_as_inputs_and_unused_ones_are_dropped() -> None:
    model = conv_net()
    model.ir_version = 3  # IR 3: every weight is also a graph input
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(5, np.float32), "unused"))
    model.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [5]))
    out = normalize(model, None)  # type: ignore[arg-type]
    assert [vi.name for vi in out.graph.input] == ["image"]
    assert "unused" not in {i.name for i in out.graph.initializer}
    assert out.ir_version == 4
    onnx.checker.check_model(out, full_check=True)


def test_external_data_is_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(conv_net(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    out = normalize(model, None)  # type: ignore[arg-type]
    assert all(i.data_location == TensorProto.EXTERNAL and not i.raw_data for i in out.graph.initializer)
    assert len(out.graph.value_info) == 3


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
