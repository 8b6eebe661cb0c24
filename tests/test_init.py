"""`trtflow init`: a starter recipe that loads and plans as written, with safely quoted names."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
import yaml
from helpers.ecosystem import add_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from typer.testing import CliRunner

from trtflow.cli import app
from trtflow.errors import OutputError, UsageError
from trtflow.init import init_recipe, recipe_text, safe_name, y
from trtflow.plan import make_plan
from trtflow.plan.onnxmeta import IOInfo, ModelInfo
from trtflow.recipe import load_recipe, parse_recipe


def plan_of(path: Path) -> object:
    return make_plan(load_recipe(path))


def _uncomment(text: str, keys: tuple[str, ...]) -> str:
    """Turn the commented suggestions ``# key: ...`` into real lines (what a user does in an editor)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\s*)# (\w+): (.*)$", line)
        if m and m.group(2) in keys:
            line = f"{m.group(1)}{m.group(2)}: {m.group(3)}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_dynamic_batch_model_gets_a_profile_and_plans(project: Path) -> None:
    model = add_model(project, "mobilenet_v3_small.onnx")
    res = init_recipe(model, project / "recipes" / "cls.yaml")
    assert res.plan_error is None and res.notes == ()
    text = res.text
    first = text.splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/recipe.schema.json"
    assert res.schema_written == project / "schemas" / "recipe.schema.json" and res.schema_written.is_file()
    loaded = load_recipe(res.path)
    assert loaded.recipe.model == "../models/mobilenet_v3_small.onnx"
    prof = loaded.recipe.inputs["images"].profile
    assert prof is not None
    assert (prof.min, prof.opt, prof.max) == ([1, 3, 224, 224], [4, 3, 224, 224], [16, 3, 224, 224])
    plan = make_plan(loaded)
    assert [t.name for t in plan.outputs] == ["logits"] and plan.outputs[0].max_shape == (16, 1000)
    assert loaded.recipe.inputs["images"].memory == "pinned" and loaded.recipe.outputs["logits"].memory == "pinned"
    # The commented top-k suggestion is valid when uncommented.
    edited = _uncomment(text, ("reduce",))
    assert "  reduce: {op: topk" in edited
    assert [t.name for t in make_plan(parse_recipe(edited, res.path)).outputs] == ["logits_values", "logits_indices"]


def test_the_commented_default_tolerance_is_the_policy(project: Path) -> None:
    """Uncommenting init's ``# default: {atol, rtol}`` changes nothing at fp32: it is the policy's value."""
    from trtflow.validate.policy import PRECISION_TOL

    res = init_recipe(add_model(project, "mobilenet_v3_small.onnx"), project / "recipes" / "cls.yaml")
    before = make_plan(load_recipe(res.path)).validate.per_output["logits"]
    after = make_plan(parse_recipe(_uncomment(res.text, ("default",)), res.path)).validate.per_output["logits"]
    assert after.tolerance_from == "validate.default" and before.tolerance_from != after.tolerance_from
    assert (after.atol, after.rtol) == (before.atol, before.rtol) == (PRECISION_TOL["fp32"],) * 2
    assert '"logits": atol = rtol = 1e-04 (fp16 build: 1e-02)' in res.text


def test_image_model_suggestions_are_valid_when_uncommented(project: Path) -> None:
    model = add_model(project, "lraspp_mobilenet_v3.onnx")
    res = init_recipe(model, project / "seg.yaml")
    assert res.plan_error is None
    assert "# dtype: uint8" in res.text and "# layout: NHWC" in res.text and "# preprocess:" in res.text
    assert "profile:" not in res.text  # every dim is fixed by the model
    base = make_plan(load_recipe(res.path))
    assert base.inputs[0].dtype == "float32"
    # The schema line is relative to the recipe's own folder (the project root here).
    assert res.text.splitlines()[0].endswith("$schema=schemas/recipe.schema.json")
    edited = _uncomment(res.text, ("layout", "preprocess", "reduce"))
    edited = edited.replace("    # dtype: uint8\n", "    dtype: uint8\n")
    plan = make_plan(parse_recipe(edited, res.path))
    (i,), (o,) = plan.inputs, plan.outputs
    assert (i.dtype, i.layout, i.shape) == ("uint8", "NHWC", (1, 520, 520, 3))
    assert (o.dtype, o.shape, o.reduce and o.reduce["op"]) == ("uint8", (1, 520, 520), "argmax")
    assert plan.bytes_in + plan.bytes_out < plan.naive_bytes / 10


def test_tiny_model_and_defaults(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = add_model(project, "tiny_mlp.onnx")
    monkeypatch.chdir(project)
    res = init_recipe(Path("models/tiny_mlp.onnx"))
    assert res.path == Path("recipes/tiny_mlp.yaml") and res.path.is_file()
    loaded = load_recipe(res.path)
    assert loaded.name == "tiny_mlp" and loaded.recipe.validate_.formula == "elemwise"
    assert loaded.recipe.streams.topology == "sync" and loaded.recipe.build.backend == "auto"
    assert plan_of(res.path)
    assert model.is_file()


def test_refuses_to_overwrite_without_force(project: Path) -> None:
    model = add_model(project, "tiny_mlp.onnx")
    out = project / "r.yaml"
    out.write_text("model: keep-me\n")
    with pytest.raises(OutputError, match="already exists"):
        init_recipe(model, out)
    assert out.read_text() == "model: keep-me\n"
    init_recipe(model, out, force=True)
    assert "tiny_mlp.onnx" in out.read_text()
    runner = CliRunner()
    res = runner.invoke(app, ["init", str(model), "--out", str(out)])
    assert isinstance(res.exception, OutputError) and res.exception.exit_code == 10
    res = runner.invoke(app, ["init", str(model), "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output


def test_existing_schema_is_not_rewritten(project: Path) -> None:
    model = add_model(project, "tiny_mlp.onnx")
    schema = project / "schemas" / "recipe.schema.json"
    schema.parent.mkdir()
    schema.write_text("{}\n")
    res = init_recipe(model, project / "a" / "b" / "r.yaml")
    assert res.schema_written is None and schema.read_text() == "{}\n"
    assert res.text.splitlines()[0] == "# yaml-language-server: $schema=../../schemas/recipe.schema.json"
    assert load_recipe(res.path).recipe.model == "../../models/tiny_mlp.onnx"


def test_model_outside_the_project_is_flagged(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "pyproject.toml").write_text("")
    model = add_model(other, "tiny_mlp.onnx")
    res = init_recipe(model, project / "r.yaml")
    assert any("outside the project" in n for n in res.notes)
    assert res.plan_error is not None and "--allow-outside" in res.plan_error
    assert make_plan(load_recipe(res.path), allow_outside=True)


def _model(path: Path, inputs: list[tuple[str, list[object]]], outputs: list[tuple[str, list[object]]],
           op: str = "Identity") -> Path:
    nodes = []
    if op == "Add":
        nodes.append(helper.make_node("Add", [inputs[0][0], inputs[1][0]], [outputs[0][0]]))
    else:
        nodes += [helper.make_node("Identity", [i], [o]) for (i, _), (o, _) in zip(inputs, outputs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_other_dynamic_dims_get_a_checked_guess(project: Path) -> None:
    m = _model(project / "img.onnx", [("pixels", ["batch", 3, "height", "width"])],
               [("mask", ["batch", 3, "height", "width"])])
    res = init_recipe(m, project / "img.yaml")
    assert res.plan_error is None
    prof = load_recipe(res.path).recipe.inputs["pixels"].profile
    assert prof is not None and prof.min == [1, 3, 128, 128] and prof.opt == [4, 3, 512, 512]
    assert prof.max == [16, 3, 1024, 1024]
    assert len(res.notes) == 2 and all("guessed" in n for n in res.notes)
    assert "CHECK" in res.text


def test_shared_symbols_share_one_range(project: Path) -> None:
    m = _model(project / "seq.onnx", [("a", ["n", "seq"]), ("b", ["n", "seq"])], [("c", ["n", "seq"])], op="Add")
    res = init_recipe(m, project / "seq.yaml")
    assert res.plan_error is None, res.plan_error
    rec = load_recipe(res.path).recipe
    pa, pb = rec.inputs["a"].profile, rec.inputs["b"].profile
    assert pa == pb and pa is not None and pa.min == [1, 1] and pa.opt == [4, 128] and pa.max == [16, 512]
    assert len(res.notes) == 1  # "seq" is guessed once


HOSTILE = ["a: b # c", "yes", "null", "x\ny", "日本語", "- item", "{x}", "'q'\"", "1", "~", "@at", "tab\there",
           "trailing ", " lead", "#hash", "a\u2028b", "nul\x00x", "back\\slash", "&anchor", "*alias", "!tag"]


def test_hostile_tensor_names_stay_exact(project: Path) -> None:
    ins = [(n, [1, 4]) for n in HOSTILE]
    outs = [(f"out {n}", [1, 4]) for n in HOSTILE]
    m = _model(project / "hostile.onnx", ins, outs)
    res = init_recipe(m, project / "hostile.yaml")
    assert res.plan_error is None, res.plan_error
    rec = load_recipe(res.path).recipe
    assert list(rec.inputs) == HOSTILE and list(rec.outputs) == [n for n, _ in outs]
    # No name ever ends a comment early: every non-blank line is a comment or valid YAML on its own.
    for line in res.text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yaml.safe_load(line.strip().rstrip(":") + ": 0" if line.rstrip().endswith(":") else line.strip())


def test_hostile_model_file_name(project: Path) -> None:
    weird = project / "my model: v2 #1.onnx"
    _model(weird, [("x", [1, 2])], [("y", [1, 2])])
    res = init_recipe(weird, project / "recipes" / f"{safe_name(weird.stem)}.yaml")
    assert res.path.name == "my_model_v2_1.yaml"
    loaded = load_recipe(res.path)
    assert loaded.recipe.model == "../my model: v2 #1.onnx" and loaded.name == "my_model_v2_1"
    assert res.plan_error is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4, unique=True),
       sym=st.text(min_size=1, max_size=8))
def test_any_names_round_trip(names: list[str], sym: str, project: Path) -> None:
    info = ModelInfo(path=project / "m.onnx", sha256="0" * 64, opset=17,
                     inputs=tuple(IOInfo(n, "float32", (sym, 3, 8, 8)) for n in names),
                     outputs=tuple(IOInfo(n + "_o", "float32", (sym, 10)) for n in names),
                     op_types=frozenset(), has_external_data=False)
    text, _ = recipe_text(info, project / "r.yaml", name="r", schema_path=project / "s.json")
    rec = parse_recipe(text, project / "r.yaml").recipe
    assert list(rec.inputs) == names and list(rec.outputs) == [n + "_o" for n in names]


@given(value=st.one_of(st.text(), st.lists(st.integers(-5, 5)), st.dictionaries(st.text(max_size=5), st.integers())))
def test_y_is_one_line_and_round_trips(value: object) -> None:
    text = y(value)
    assert "\n" not in text
    assert yaml.safe_load(text) == value


def test_cli_init_plans(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_model(project, "tiny_mlp.onnx")
    monkeypatch.chdir(project)
    runner = CliRunner()
    res = runner.invoke(app, ["init", "models/tiny_mlp.onnx", "-o", "recipes/t.yaml", "--name", "tiny1"])
    assert res.exit_code == 0, res.output
    assert load_recipe(Path("recipes/t.yaml")).name == "tiny1"
    res = runner.invoke(app, ["plan", "recipes/t.yaml", "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["init", "models/tiny_mlp.onnx", "-o", "recipes/u.yaml", "--name", "bad name"])
    assert isinstance(res.exception, UsageError)


def test_placeholder_dims_are_distinct_and_minus_one_is_dynamic(project: Path) -> None:
    """`?` dims of two inputs are two dims (not one shared symbol); a -1 dim is dynamic, never a size."""
    m = _model(project / "ph.onnx", [("a", ["?", "?"]), ("b", ["?", "?"])], [("c", ["?", "?"])], op="Add")
    mp = onnx.load(str(m))
    mp.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    mp.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    onnx.save(mp, str(m))
    res = init_recipe(m, project / "ph.yaml")
    assert res.plan_error is None, res.plan_error
    assert "fixed to -1" not in res.text
    rec = load_recipe(res.path).recipe
    assert rec.inputs["a"].profile is not None and rec.inputs["b"].profile is not None
