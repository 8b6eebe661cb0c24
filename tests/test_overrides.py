"""Command-line overrides (--precision/--fp16, --shapes, --min/opt/max-shapes, --set) and the project root.

Overrides go through the same pydantic model as the recipe file; errors name the flag, not a line.
The project-root policy is run on plain temporary folders (no .git, no pyproject.toml).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.models import make_conv_model
from test_errors import one_error, run

from trtflow.errors import RecipeError, UsageError
from trtflow.plan import make_plan
from trtflow.recipe import load_recipe
from trtflow.recipe.loader import project_root
from trtflow.recipe.overrides import Overrides, apply_overrides, parse_set, parse_shapes


def test_parse_shapes_trtexec_syntax() -> None:
    assert parse_shapes("image:1x3x640x800,mask:1x1x64x64") == {"image": (1, 3, 640, 800), "mask": (1, 1, 64, 64)}
    assert parse_shapes("input.1:8x3x224x224") == {"input.1": (8, 3, 224, 224)}
    assert parse_shapes("'in:0':1x3") == {"in:0": (1, 3)}
    assert parse_shapes("x:7") == {"x": (7,)}
    for bad in ("image", "image:1x", ":1x2", "image:1x-3", ""):
        with pytest.raises(UsageError):
            parse_shapes(bad)
    with pytest.raises(UsageError, match="given twice"):
        parse_shapes("a:1,a:2")


def test_parse_set_reads_one_yaml_value() -> None:
    assert parse_set("streams.depth=3") == ("streams.depth", 3)
    assert parse_set('build.compute_capabilities=["8.6"]') == ("build.compute_capabilities", ["8.6"])
    assert parse_set("build.timing_cache=null") == ("build.timing_cache", None)
    for bad in ("streams.depth", "=3", "a..b=1"):
        with pytest.raises(UsageError):
            parse_set(bad)
    with pytest.raises(UsageError, match="not valid YAML"):
        parse_set("x=[1,")


@pytest.fixture
def recipe(project: Path) -> Path:
    make_conv_model(project / "m.onnx", batch="N")
    (project / "r.yaml").write_text(
        "model: m.onnx\n"
        "inputs:\n  image: {profile: {min: [1, 3, 16, 16], opt: [2, 3, 16, 16], max: [4, 3, 16, 16]}}\n"
        "outputs:\n  logits: {memory: pinned}\n")
    return project / "r.yaml"


def test_overrides_change_the_plan_and_its_key(recipe: Path) -> None:
    loaded = load_recipe(recipe)
    base = make_plan(loaded)
    ov = Overrides(precision="fp16", sets=(("streams.depth", 3), ("outputs.logits.memory", "pageable")),
                   max_shapes={"image": (8, 3, 16, 16)})
    new = apply_overrides(loaded, ov)
    p = make_plan(new)
    assert (base.precision, p.precision) == ("fp32", "fp16") and p.streams.depth == 3
    assert p.outputs[0].memory == "pageable" and p.inputs[0].max_shape == (8, 3, 16, 16)
    assert p.recipe_sha256 != base.recipe_sha256  # an artifact built with overrides is not the recipe's
    assert apply_overrides(loaded, Overrides()) is loaded


def test_override_errors_name_the_flag(recipe: Path) -> None:
    loaded = load_recipe(recipe)
    with pytest.raises(RecipeError, match=r"^--set streams.depth=0 streams.depth: .*greater than or equal to 1"):
        apply_overrides(loaded, Overrides(sets=(("streams.depth", 0),)))
    with pytest.raises(RecipeError, match=r"--precision fp8 precision: .*'fp16'"):
        apply_overrides(loaded, Overrides(precision="fp8"))
    with pytest.raises(RecipeError, match=r"--set streams.nope=1 streams.nope: unknown field|--set streams.nope=1"):
        apply_overrides(loaded, Overrides(sets=(("streams.nope", 1),)))
    with pytest.raises(RecipeError, match=r"--shapes image:9x3x16x16: outside the profile"):
        apply_overrides(loaded, Overrides(shapes=({"image": (9, 3, 16, 16)},)))
    bad = apply_overrides(loaded, Overrides(shapes=({"imgae": (1, 3, 16, 16)},)))
    with pytest.raises(RecipeError, match=r"(?s)^--shapes imgae:1x3x16x16 inputs.imgae: .*did you mean 'image'"):
        make_plan(bad)
    with pytest.raises(RecipeError, match="no profile in the recipe"):
        apply_overrides(loaded, Overrides(max_shapes={"other": (1, 2)}))


def test_shapes_fix_an_input_without_a_profile(project: Path) -> None:
    make_conv_model(project / "m.onnx", batch="N")
    (project / "r.yaml").write_text("model: m.onnx\ninputs: {image: {shape: [1, 3, 16, 16]}}\n")
    loaded = load_recipe(project / "r.yaml")
    p = make_plan(apply_overrides(loaded, Overrides(shapes=({"image": (4, 3, 16, 16)},))))
    assert p.inputs[0].shape == p.inputs[0].max_shape == (4, 3, 16, 16)
    with pytest.raises(RecipeError, match="another --shapes"):
        apply_overrides(loaded, Overrides(shapes=({"image": (4, 3, 16, 16)}, {"image": (2, 3, 16, 16)})))
    p = make_plan(apply_overrides(loaded, Overrides(min_shapes={"image": (1, 3, 16, 16)},
                                                    max_shapes={"image": (8, 3, 16, 16)})))
    assert (p.inputs[0].min_shape[0], p.inputs[0].shape[0], p.inputs[0].max_shape[0]) == (1, 1, 8)


def test_cli_flags_on_every_recipe_command(capsys: pytest.CaptureFixture[str], recipe: Path) -> None:
    project = recipe.parent
    code, out, err = run(capsys, "plan", str(recipe), "--fp16", "--shapes", "image:3x3x16x16", "--maxShapes",
                         "image:8x3x16x16", "--json")
    assert code == 0, err
    p = json.loads(out)
    assert p["precision"] == "fp16" and p["inputs"][0]["max_shape"] == [8, 3, 16, 16]
    code, out, _ = run(capsys, "plan", str(recipe), "--fp16", "--precision", "bf16", "--json")
    assert code == 64 and one_error(out)["class"] == "UsageError"
    code, out, _ = run(capsys, "plan", str(recipe), "--h2d-gbps", "0", "--json")
    e = one_error(out)
    assert code == 2 and e["field"] == "link.h2d_gbps" and e["file"] is None
    build = str(project / "build")
    code, out, err = run(capsys, "build", str(recipe), "--out", build, "--set", "build.backend=onnxruntime",
                         "--precision", "fp16", "--json")
    assert code == 0, err
    report = json.loads((project / "build" / "r" / "report.json").read_text())
    assert report["precision"] == "fp16" and "--precision fp16" in report["overrides"]
    for cmd in (["validate"], ["bench"], ["export", "triton"]):
        code, out, _ = run(capsys, *cmd, str(recipe), "--set", "streams.depth=0", "--json")
        assert code == 2 and one_error(out)["message"].startswith("--set streams.depth=0"), cmd
        code, out, _ = run(capsys, *cmd, str(recipe), "--allow-outside", "--shapes", "bad", "--json")
        assert code == 64, cmd


# ------------------------------------------------------------------------------------ project root
def _layout(base: Path, recipes: str = "recipes") -> Path:
    (base / "models").mkdir(parents=True)
    (base / recipes).mkdir(parents=True)
    make_conv_model(base / "models" / "m.onnx")
    r = base / recipes / "r.yaml"
    r.write_text("model: ../models/m.onnx\nbuild: {backend: onnxruntime}\n")
    return r


def test_documented_layout_works_in_a_plain_folder(tmp_path: Path) -> None:
    assert not any((p / m).exists() for p in (tmp_path, *tmp_path.parents) for m in (".git", "pyproject.toml"))
    r = _layout(tmp_path / "proj")
    assert project_root(r.parent) == (tmp_path / "proj").resolve()
    assert make_plan(load_recipe(r)).model_path == str((tmp_path / "proj" / "models" / "m.onnx").resolve())
    # beyond the root is still refused
    (tmp_path / "elsewhere").mkdir()
    make_conv_model(tmp_path / "elsewhere" / "x.onnx")
    r.write_text("model: ../../elsewhere/x.onnx\n")
    with pytest.raises(RecipeError, match="(?s)outside the project .*--allow-outside"):
        make_plan(load_recipe(r))
    assert make_plan(load_recipe(r), allow_outside=True)


def test_a_recipe_folder_not_named_recipes_is_its_own_root(tmp_path: Path) -> None:
    r = _layout(tmp_path / "proj", recipes="configs")
    assert project_root(r.parent) == r.parent.resolve()
    with pytest.raises(RecipeError, match="outside the project"):
        make_plan(load_recipe(r))
    (tmp_path / "proj" / "pyproject.toml").write_text("")  # a marker widens it
    assert make_plan(load_recipe(r))


def test_validate_data_follows_the_same_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """#15 item 8: validate.data outside the project needs --allow-outside, on every command."""
    r = _layout(tmp_path / "proj")
    (tmp_path / "secret").mkdir()
    np.savez(tmp_path / "secret" / "in.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    r.write_text("model: ../models/m.onnx\nbuild: {backend: onnxruntime}\nvalidate: {data: ../../secret/in.npz}\n")
    out = str(tmp_path / "proj" / "build")
    for cmd in ("plan", "build", "validate", "bench"):
        code, o, _ = run(capsys, cmd, str(r), "--out", out, "--json") if cmd != "plan" else run(
            capsys, cmd, str(r), "--json")
        e = one_error(o)
        assert code == 2 and e["field"] == "validate.data" and "outside the project" in e["message"], cmd
    code, o, err = run(capsys, "validate", str(r), "--out", out, "--allow-outside", "--json")
    assert code == 0, err
    code, o, _ = run(capsys, "validate", str(r), "--out", out, "--no-build", "--json")
    assert code == 2 and one_error(o)["field"] == "validate.data"
    r.write_text("model: ../models/m.onnx\nvalidate: {data: missing.npz}\n")
    code, o, _ = run(capsys, "plan", str(r), "--json")
    assert code == 2 and "not found" in one_error(o)["message"]


# ------------------------------------------------------------------------------- bench --write-best
def test_write_best_keeps_comments_and_writes_a_new_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A real CPU memory sweep; the written recipe differs from the input only where the best config does."""
    r = _layout(tmp_path / "proj")
    text = ("# yaml-language-server: $schema=../schemas/recipe.schema.json\n"
            "# my segmentation service\n"
            "model: ../models/m.onnx   # exported by me\n"
            "inputs:\n  image:\n    memory: pinned        # page-locked staging\n\n"
            "streams: {topology: async}\n"
            "build: {backend: onnxruntime}\n"
            "validate:\n  metrics:\n    logits:\n      - {kind: agreement, min: 0.9}   # loose\n")
    r.write_text(text)
    (tmp_path / "proj" / "recipes" / "tuned").mkdir()
    best = tmp_path / "proj" / "recipes" / "tuned" / "fast.yaml"  # one level deeper: paths are rewritten
    out = str(tmp_path / "proj" / "artifacts")
    code, _, err = run(capsys, "bench", str(r), "--out", out, "--sweep", "memory", "--iterations", "3",
                       "--warmup", "1", "--write-best", str(best))
    assert code == 0, err
    written = best.read_text()
    assert written.startswith("# yaml-language-server: $schema=../../schemas/recipe.schema.json\n# my segmentation")
    assert re.search(r"\nmodel: \.\./\.\./models/m\.onnx +# exported by me\n", written), written
    assert "# loose" in written and "(was pinned)" in written
    loaded = load_recipe(best)
    assert loaded.name == "fast" and loaded.recipe.streams.topology == "sync"  # the CPU sweep's best: baseline
    assert make_plan(loaded).model_path == make_plan(load_recipe(r)).model_path
    code, _, _ = run(capsys, "bench", str(r), "--out", out, "--sweep", "memory", "--iterations", "2",
                     "--warmup", "0", "--write-best", str(r))
    assert code == 10 and r.read_text() == text  # never over the input


# ------------------------------------------------------------------------------------------ load_runner
def test_load_runner_verifies_and_imports_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtflow
    from trtflow.build import build
    from trtflow.errors import ArtifactError

    r = _layout(tmp_path / "proj")
    res = build(r, out_root=tmp_path / "proj" / "artifacts")
    monkeypatch.chdir(tmp_path)  # any directory
    cls = trtflow.load_runner(res.artifact)
    assert cls.__name__ == "RRunner" and trtflow.load_runner(str(res.artifact)) is cls
    with cls() as run:
        assert run(image=np.zeros((1, 3, 16, 16), np.float32)).logits.shape == (1, 5, 16, 16)
    runner_py = res.artifact / "runner.py"
    runner_py.write_text(runner_py.read_text() + "\nraise SystemExit('swapped')\n")
    with pytest.raises(ArtifactError, match="runner.py"):  # a swapped runner.py never executes
        trtflow.load_runner(res.artifact)
    with pytest.raises(ArtifactError, match="no such artifact folder"):
        trtflow.load_runner(tmp_path / "nope")
