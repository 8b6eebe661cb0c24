"""Regression tests on real corpus models for what the corpus run found (issue #10).

Each test plans (and where it matters lowers) one real model from ``scripts/corpus.py``; they run with
the tier (``-m corpus``, CI) and skip when the model is not fetched, like tests/corpus/test_corpus.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import scripts
from helpers.models import plan_in_subprocess

ROOT = Path(__file__).resolve().parents[2]
corpus = scripts.load("corpus")

from trtflow.errors import RecipeError
from trtflow.init import init_recipe
from trtflow.passes import lower
from trtflow.plan import make_plan
from trtflow.recipe import load_recipe, parse_recipe

pytestmark = pytest.mark.corpus


@pytest.fixture(autouse=True)
def _tier_enabled(request: pytest.FixtureRequest) -> None:
    if os.environ.get("CI") != "true" and "corpus" not in (request.config.getoption("-m") or ""):
        pytest.skip("corpus tier: `python scripts/corpus.py fetch` then `pytest -m corpus tests/corpus`")


def _model(project: Path, model_id: str) -> Path:
    m = next(m for m in corpus.MODELS if m.id == model_id)
    src = corpus.model_path(m)
    if not src.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{src} missing: .ci/run must run `python scripts/corpus.py fetch` (every tier)")
        pytest.skip(f"{model_id} not fetched: python scripts/corpus.py fetch {model_id}")
    dst = project / "models" / src.name
    dst.parent.mkdir(exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _plan(project: Path, text: str) -> object:
    return make_plan(parse_recipe(text, project / "recipes" / "r.yaml"))


SILERO_STATE = "  state: {profile: {min: [2, 1, 128], opt: [2, 4, 128], max: [2, 16, 128]}}\n"


def test_silero_op15_shape_test_that_flips_names_the_node_and_the_sizes(project: Path) -> None:
    # Before: onnxruntime's inference compared the symbolic time dim with 1 structurally ("never 1"),
    # took the else branch at every shape and crashed in an Unsqueeze inside the LSTM branch.
    _model(project, "silero_vad_op15")
    with pytest.raises(RecipeError) as exc:
        _plan(project, "model: ../models/silero_vad_op15.onnx\ninputs:\n"
                       "  input: {profile: {min: [1, 1], opt: [4, 512], max: [16, 512]}}\n" + SILERO_STATE)
    msg = str(exc.value)
    assert "If node '/model/decoder/If'" in msg and "input[1]" in msg
    assert "true at input[1] in 192..512, false at 1..191" in msg


def test_silero_op15_shape_tests_that_hold_over_the_profile_build_one_branch(project: Path) -> None:
    model = _model(project, "silero_vad_op15")
    plan = _plan(project, "model: ../models/silero_vad_op15.onnx\ninputs:\n"
                          "  input: {profile: {min: [1, 192], opt: [4, 512], max: [16, 640]}}\n" + SILERO_STATE)
    assert plan.if_branches["/model/decoder/If"] == "then"  # type: ignore[attr-defined]
    assert {t.name: t.shape_expr for t in plan.outputs} == {  # type: ignore[attr-defined]
        "output": ("input[0]", "1"), "stateN": ("2", "input[0]", "128")}
    lowered, _ = lower(onnx.load(str(model)), plan)  # type: ignore[arg-type]
    # the LSTM sat inside Ifs TensorRT-RTX could not build (graphScope assertion): no If is left
    assert "If" not in {n.op_type for n in lowered.graph.node}


def test_silero_sr_value_folds_the_if_and_matches_the_model_at_16k(project: Path) -> None:
    import onnxruntime as ort

    model = _model(project, "silero_vad")
    plan = _plan(project, "model: ../models/silero_vad.onnx\ninputs:\n"
                          "  input: {profile: {min: [1, 512], opt: [4, 512], max: [16, 1024]}}\n"
                          + SILERO_STATE + "  sr: {value: 16000}\n")
    assert [t.name for t in plan.inputs] == ["input", "state"]  # type: ignore[attr-defined]
    assert [(f.name, f.value) for f in plan.fixed_inputs] == [("sr", 16000)]  # type: ignore[attr-defined]
    lowered, _ = lower(onnx.load(str(model)), plan)  # type: ignore[arg-type]
    assert "If" not in {n.op_type for n in lowered.graph.node} and "sr" not in {i.name for i in lowered.graph.input}
    rng = np.random.default_rng(0)
    feeds = {"input": rng.random((3, 768), dtype=np.float32), "state": rng.random((2, 3, 128), dtype=np.float32)}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    got = ort.InferenceSession(lowered.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    want = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]).run(
        None, feeds | {"sr": np.array(16000, dtype=np.int64)})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_silero_spox_shape_test_in_the_8k_branch_points_at_fixing_sr(project: Path) -> None:
    _model(project, "silero_vad_spox")
    with pytest.raises(RecipeError) as exc:
        _plan(project, "model: ../models/silero_vad_spox.onnx\ninputs:\n"
                       "  input: {profile: {min: [1, 192], opt: [4, 512], max: [16, 640]}}\n" + SILERO_STATE)
    msg = str(exc.value)
    assert "else_branch" in msg and "false at 352..640" in msg and "inputs.sr.value" in msg


def test_init_never_proposes_sizes_silero_cannot_run(project: Path) -> None:
    # Before: init's guessed sequence range 1..512 (opt 128); the model needs >= 192 samples
    # (onnxruntime refuses below, TensorRT-RTX failed the build at opt).
    model = _model(project, "silero_vad")
    res = init_recipe(model, project / "recipes" / "silero_vad.yaml")
    assert res.plan_error is None, res.plan_error
    rec = load_recipe(res.path).recipe
    prof = rec.inputs["input"].profile
    assert prof is not None and prof.min[1] >= 192 and prof.opt[1] >= 192
    assert rec.inputs["sr"].value == 16000  # init fixes the mode input to the value the model tests for
    assert any("onnxruntime refuses the guessed" in n for n in res.notes)


def test_init_ties_an_unnamed_state_batch_to_the_batch(project: Path) -> None:
    # silero's spox export names no dim (`?`): the state's batch is only found by running the model
    model = _model(project, "silero_vad_spox")
    res = init_recipe(model, project / "recipes" / "spox.yaml")
    assert res.plan_error is None, res.plan_error
    rec = load_recipe(res.path).recipe
    state, inp = rec.inputs["state"].profile, rec.inputs["input"].profile
    assert state is not None and inp is not None
    assert (state.min[1], state.opt[1], state.max[1]) == (inp.min[0], inp.opt[0], inp.max[0])
    assert inp.min[1] >= 192


def test_silero_plan_is_the_same_under_every_hash_seed(project: Path) -> None:
    # Before: the outputs' batch read input[0] under PYTHONHASHSEED 0, 2, 3 and state[1] under 1 (the
    # direction of onnxruntime's dim merge followed set order): a build in another process missed the
    # cache and `validate --no-build` called the artifact stale (exit 6).
    _model(project, "silero_vad")
    recipe = project / "recipes" / "silero.yaml"
    recipe.parent.mkdir(exist_ok=True)
    recipe.write_text("model: ../models/silero_vad.onnx\ninputs:\n"
                      "  input: {profile: {min: [1, 512], opt: [4, 512], max: [16, 1024]}}\n"
                      + SILERO_STATE + "  sr: {value: 16000}\n")
    first, second = (plan_in_subprocess(recipe, hash_seed=s) for s in (0, 1))
    assert first == second  # plan.json and the cache key, byte for byte
    outputs = json.loads(first.rpartition("cache_key ")[0])["outputs"]
    assert {o["name"]: o["shape_expr"] for o in outputs} == {
        "output": ["input[0]", "1"], "stateN": ["2", "input[0]", "128"]}


@pytest.mark.parametrize("model_id", ["silero_vad", "silero_vad_v4", "silero_vad_spox"])
def test_init_then_validate_with_no_options_passes_with_tied_batches(tmp_path: Path, model_id: str) -> None:
    # Before: validate's default `mixed` set gave silero's `input` batch 8 and its `state` batch 5 (each
    # tensor on its own); onnxruntime raised (Add: broadcast 5 by 8) and validate exited 70, "a trtflow
    # bug". v4 ties three dims: `input` batch, `h` and `c` batch. The spox export names no dim: only its
    # LSTM (in the If on `sr`) ties them (onnxruntime's inference had no rule for an RNN's initial state,
    # and dropped what a branch merged). A plain folder, as a user starts.
    model = _model(tmp_path, model_id)

    def trtflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trtflow", *args], cwd=tmp_path, capture_output=True,
                              text=True, check=False, timeout=1200)

    r = trtflow("init", str(model.relative_to(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    r = trtflow("validate", f"recipes/{model_id}.yaml", "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["cases"] == ["opt", "min", "max", "mixed"]
    plan = json.loads((tmp_path / "artifacts" / model_id / "plan.json").read_text())
    want = {"silero_vad_v4": [["input[0]", "h[1]", "c[1]"]]}.get(model_id, [["input[0]", "state[1]"]])
    assert plan["dim_ties"] == want
    if model_id != "silero_vad":
        return
    from trtflow import load_runner
    from trtflow.errors import InputError

    with load_runner(tmp_path / "artifacts" / model_id)(device="cpu") as run:
        audio = np.zeros((8, 512), np.float32)
        assert run(input=audio, state=np.zeros((2, 8, 128), np.float32)).output.shape == (8, 1)
        # Before: onnxruntime's raw RuntimeError from the generated runner
        with pytest.raises(InputError, match=r"input 'state': dimension 1 must equal dimension 0 of input 'input' "
                                             r"\(the model needs them equal\): expected 8, got 5"):
            run(input=audio, state=np.zeros((2, 5, 128), np.float32))
