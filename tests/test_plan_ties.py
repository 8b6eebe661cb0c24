"""Dims the model needs equal (tied dims): silero's ``input`` batch and ``state`` batch, here on a small
synthetic model of the same structure (the real model: tests/corpus/test_corpus_fixes.py).

Planning is deterministic (the merged dim is named after the earliest input dim, whatever the hash
seed), the plan records the ties, validate's shape sets give a tied group one value, and the runner
refuses a request that breaks a tie with an InputError naming both tensors.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.models import make_project, plan_in_subprocess, tied_state_model
from helpers.runtime import rewrite_plan

from trtflow.errors import InputError
from trtflow.plan import Plan

TIED_RECIPE = """model: tied.onnx
inputs:
  audio: {profile: {min: [1, 8], opt: [4, 8], max: [16, 8]}}
  state: {profile: {min: [2, 1, 8], opt: [2, 4, 8], max: [2, 16, 8]}}
"""


def tied_project(folder: Path, *, names: tuple[str, str] = ("n", "m"), combined: bool = True) -> Path:
    make_project(folder)
    tied_state_model(folder / "tied.onnx", names=names, combined=combined)
    recipe = folder / "tied.yaml"
    recipe.write_text(TIED_RECIPE)
    return recipe


def test_plan_of_tied_dims_is_the_same_in_every_process(tmp_path: Path) -> None:
    # Before: onnxruntime's merge named the class after the first input symbol of a set, so the
    # outputs read audio[0] under PYTHONHASHSEED=0 and state[1] under 1: another cache key, and
    # `validate --no-build` called the artifact stale (exit 6).
    recipe = tied_project(tmp_path)
    first, second = (plan_in_subprocess(recipe, hash_seed=s) for s in (0, 1))
    assert first == second
    assert '"2",\n        "audio[0]",\n        "8"' in first  # named after the earliest input dim


def test_plan_records_the_dims_the_model_ties(tmp_path: Path) -> None:
    from trtflow.plan import make_plan
    from trtflow.recipe import load_recipe

    # declared n and m: only the graph (an Add that broadcasts) ties them
    plan = make_plan(load_recipe(tied_project(tmp_path / "graph")))
    assert plan.dim_ties == (("audio[0]", "state[1]"),)
    assert {t.name: t.shape_expr for t in plan.outputs}["out"] == ("2", "audio[0]", "8")
    # one dim name for both inputs ties them too, even where the graph does not combine them (TensorRT's
    # ONNX parser holds dims of one name equal)
    plan = make_plan(load_recipe(tied_project(tmp_path / "named", names=("batch", "batch"), combined=False)))
    assert plan.dim_ties == (("audio[0]", "state[1]"),)
    loaded = Plan.from_json(plan.to_json())
    assert loaded.dim_ties == plan.dim_ties and loaded.tied_dims() == (((0, 0), (1, 1)),)
    # neither: nothing tied
    assert make_plan(load_recipe(tied_project(tmp_path / "free", combined=False))).dim_ties == ()


def test_every_shape_set_gives_tied_dims_one_value(tmp_path: Path) -> None:
    from trtflow.errors import RecipeError
    from trtflow.plan import make_plan
    from trtflow.recipe import load_recipe
    from trtflow.validate.inputs import generate_inputs, shape_cases

    plan = make_plan(load_recipe(tied_project(tmp_path)))
    # Before: mixed put audio's batch at 8 (dim 0: half way) and state's at 5 (dim 1: 0.3 of the way)
    cases = {c.label: c.shapes for c in shape_cases(plan)}
    assert cases["mixed"] == {"audio": (8, 8), "state": (2, 8, 8)}
    assert cases["min"] == {"audio": (1, 8), "state": (2, 1, 8)}
    # an explicit shape for one input: the dims tied to it follow; contradicting ones are refused
    (case,) = shape_cases(plan, ["audio:3x8"])
    assert case.shapes == {"audio": (3, 8), "state": (2, 3, 8)}
    with pytest.raises(RecipeError, match=r"dimension 0 of input 'audio' is 3 and dimension 1 of input 'state' is 5"):
        shape_cases(plan, ["audio:3x8,state:2x5x8"])
    # bench's batch sweep moves the state batch with the batch
    feeds = generate_inputs(plan, 0, tmp_path, batch=6)
    assert feeds["audio"].shape == (6, 8) and feeds["state"].shape == (2, 6, 8)


def test_runner_refuses_a_request_that_breaks_a_tie_naming_both_tensors(tmp_path: Path) -> None:
    from trtflow import load_runner
    from trtflow.build import build

    recipe = tied_project(tmp_path)
    art = build(recipe, out_root=tmp_path / "build").artifact
    audio = np.zeros((8, 8), np.float32)
    with load_runner(art)(device="cpu") as r:
        assert r(audio=audio, state=np.ones((2, 8, 8), np.float32)).out.shape == (2, 8, 8)
        # Before: onnxruntime's raw RuntimeError (Add: broadcast 5 by 8), exit 70 from the CLI
        with pytest.raises(InputError) as exc:
            r(audio=audio, state=np.ones((2, 5, 8), np.float32))
        assert str(exc.value).startswith("input 'state': dimension 1 must equal dimension 0 of input 'audio' "
                                         "(the model needs them equal): expected 8, got 5 (shapes 'audio' [8, 8], "
                                         "'state' [2, 5, 8])")
        assert exc.value.exit_code == 7
        assert r(audio=audio[:3], state=np.ones((2, 3, 8), np.float32)).out.shape == (2, 3, 8)  # still serves


def test_validate_of_a_tied_model_passes_at_the_default_shape_sets(tmp_path: Path) -> None:
    from trtflow.build import build
    from trtflow.validate.run import validate_artifact

    art = build(tied_project(tmp_path), out_root=tmp_path / "build").artifact
    rep = validate_artifact(art)
    assert rep.passed and rep.cases == ["opt", "min", "max", "mixed"]


def test_a_reference_run_that_fails_is_a_model_error_naming_the_shapes(tmp_path: Path) -> None:
    from trtflow.build import build
    from trtflow.errors import ModelError
    from trtflow.validate.run import validate_artifact

    # a plan that does not know the tie (as one written before plan.dim_ties): the shapes break it
    art = build(tied_project(tmp_path), out_root=tmp_path / "build").artifact
    plan = Plan.from_json((art / "plan.json").read_text())
    rewrite_plan(art, replace(plan, dim_ties=()))
    with pytest.raises(ModelError) as exc:
        validate_artifact(art, shapes=["audio:3x8,state:2x5x8"])
    msg = str(exc.value)
    assert "the reference run (onnxruntime CPU, the original model) fails at shape set " in msg
    assert "(audio:3x8, state:2x5x8)" in msg and exc.value.exit_code == 2


def test_an_rnn_ties_its_initial_state_batch_to_its_input_batch(tmp_path: Path) -> None:
    # ONNX's rule (onnxruntime's inference takes the LSTM's output batch from X alone): with no dim names
    # and nothing else combining them, the LSTM is where the audio batch meets the state batch
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trtflow.plan import make_plan
    from trtflow.recipe import load_recipe

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (1, 32, 4)).astype(np.float32), "w")
    r = numpy_helper.from_array(rng.normal(0, 0.1, (1, 32, 8)).astype(np.float32), "r")
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r", "", "", "h", "c"], ["", "h_out"], hidden_size=8, name="rnn")],
        "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 4]),
                helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "m", 8]),
                helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, "k", 8])],
        [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, "n", 8])], [w, r])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    make_project(tmp_path)
    onnx.save(model, str(tmp_path / "rnn.onnx"))
    prof = "{profile: {min: [1, 1, %d], opt: [1, 4, %d], max: [1, 16, %d]}}"
    (tmp_path / "rnn.yaml").write_text("model: rnn.onnx\ninputs:\n" + "".join(
        f"  {n}: {prof % (d, d, d)}\n" for n, d in (("x", 4), ("h", 8), ("c", 8))))
    assert make_plan(load_recipe(tmp_path / "rnn.yaml")).dim_ties == (("x[1]", "h[1]", "c[1]"),)
