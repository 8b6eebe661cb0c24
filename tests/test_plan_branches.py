"""If nodes: shape tests decided over the profile, mode inputs fixed by the recipe (`value:`).

Small graphs built here show each rule alone; tests/corpus/test_corpus_fixes.py pins the same rules on
the real silero exports that needed them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtflow.errors import RecipeError
from trtflow.passes import lower
from trtflow.plan import make_plan
from trtflow.recipe import parse_recipe


def _squeeze_if_one(path: Path) -> Path:
    """y = Squeeze(x, 1) if x.shape[1] == 1 else x: the output's rank depends on a shape test."""
    then = helper.make_graph([helper.make_node("Squeeze", ["x", "axes"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["l"]),
        helper.make_node("Equal", ["l", "one"], ["c"]),
        helper.make_node("If", ["c"], ["y"], name="squeeze_if_one", then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "l"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("one", TensorProto.INT64, [], [1]), helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _mode_switch(path: Path) -> Path:
    """y = x * 2 if mode == 16000 else x * 3, with ``mode`` a rank-0 int64 input (like silero's ``sr``)."""
    def branch(name: str, k: float) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Mul", ["x", f"k{name}"], [f"y{name}"])], name, [],
                                 [helper.make_tensor_value_info(f"y{name}", TensorProto.FLOAT, None)],
                                 [helper.make_tensor(f"k{name}", TensorProto.FLOAT, [], [k])])
    nodes = [helper.make_node("Equal", ["mode", "rate"], ["c"]),
             helper.make_node("If", ["c"], ["y"], name="by_rate", then_branch=branch("then", 2.0),
                              else_branch=branch("else", 3.0))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                     helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor("rate", TensorProto.INT64, [], [16000])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _plan(project: Path, model: Path, inputs: str) -> object:
    text = f"model: {model.name}\ninputs:\n{inputs}"
    return make_plan(parse_recipe(text, project / "r.yaml"))


def test_a_shape_test_that_flips_inside_the_profile_names_the_node_and_the_sizes(project: Path) -> None:
    model = _squeeze_if_one(project / "m.onnx")
    with pytest.raises(RecipeError) as exc:
        _plan(project, model, "  x: {profile: {min: [1, 1], opt: [2, 2], max: [4, 4]}}\n")
    msg = str(exc.value)
    assert "'squeeze_if_one'" in msg and "x[1] == 1" in msg
    assert "true at x[1] in 1, false at 2..4" in msg and "narrow the profile" in msg


@pytest.mark.parametrize(("lo", "hi", "branch", "dims"), [(1, 1, "then", ("x[0]",)), (2, 8, "else", ("x[0]", "x[1]"))])
def test_a_shape_test_that_holds_over_the_profile_takes_its_branch_and_only_that_one_is_built(
        project: Path, lo: int, hi: int, branch: str, dims: tuple[str, ...]) -> None:
    model = _squeeze_if_one(project / "m.onnx")
    plan = _plan(project, model, f"  x: {{profile: {{min: [1, {lo}], opt: [2, {lo}], max: [4, {hi}]}}}}\n")
    assert plan.if_branches == {"squeeze_if_one": branch}  # type: ignore[attr-defined]
    assert plan.outputs[0].shape_expr == dims  # type: ignore[attr-defined]
    lowered, _ = lower(onnx.load(str(model)), plan)  # type: ignore[arg-type]
    assert "If" not in {n.op_type for n in lowered.graph.node}


def test_structural_equality_of_a_symbolic_dim_never_picks_a_branch(project: Path) -> None:
    # onnxruntime's inference compares sympy expressions with ==: a dynamic dim "is never 1", so it took
    # the else branch at every shape and planned rank 2 for L in 1..4. The flip must be reported instead.
    model = _squeeze_if_one(project / "m.onnx")
    with pytest.raises(RecipeError, match="changes within the profile"):
        _plan(project, model, "  x: {profile: {min: [1, 1], opt: [1, 1], max: [1, 4]}}\n")


def test_a_fixed_mode_input_leaves_the_engine_and_its_if_folds(project: Path) -> None:
    import onnxruntime as ort

    model = _mode_switch(project / "m.onnx")
    plan = _plan(project, model, "  x: {profile: {min: [1, 4], opt: [2, 4], max: [8, 4]}}\n  mode: {value: 16000}\n")
    assert [t.name for t in plan.inputs] == ["x"]  # type: ignore[attr-defined]
    (f,) = plan.fixed_inputs  # type: ignore[attr-defined]
    assert (f.name, f.dtype, f.shape, f.value) == ("mode", "int64", (), 16000) and "'by_rate'" in f.why
    lowered, records = lower(onnx.load(str(model)), plan)  # type: ignore[arg-type]
    assert [i.name for i in lowered.graph.input] == ["x"] and "If" not in {n.op_type for n in lowered.graph.node}
    notes = {r["name"]: r["notes"] for r in records}
    assert any("fixed to 16000" in n for n in notes["fix_inputs"])
    assert any("by_rate" in n for n in notes["fold_shapes"])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    got = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, x * 2)


@pytest.mark.parametrize(("inputs", "match"), [
    ("  x: {shape: [2, 4]}\n  mode: {value: 1.5}\n", "must be an integer"),
    ("  x: {shape: [2, 4]}\n  mode: {value: [1, 2]}\n", "2 values for input 'mode' of shape"),
    ("  x: {value: 1.0}\n  mode: {value: 1}\n", "dynamic dims"),
    ("  x: {shape: [2, 4]}\n  mode: {value: 1, memory: pageable}\n", "memory does not apply"),
])
def test_a_wrong_value_is_a_recipe_error_naming_the_field(project: Path, inputs: str, match: str) -> None:
    model = _mode_switch(project / "m.onnx")
    with pytest.raises(RecipeError, match=match):
        _plan(project, model, inputs)
