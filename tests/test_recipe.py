"""Recipe loading: strict schema, errors rendered as file:line:col field: message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtflow.errors import RecipeError
from trtflow.recipe import load_recipe, parse_recipe

P = Path("recipes/x.yaml")


def err(text: str) -> str:
    with pytest.raises(RecipeError) as exc:
        parse_recipe(text, P)
    return str(exc.value)


def test_minimal_recipe_is_one_line() -> None:
    r = parse_recipe("model: m.onnx\n", P).recipe
    assert r.precision == "fp32" and r.streams.topology == "sync" and r.validate_.formula == "elemwise"


def test_unknown_key_names_line_and_field() -> None:
    msg = err("model: m.onnx\nprecison: fp16\n")
    assert "x.yaml:2:1 precison: unknown field" in msg


def test_nested_wrong_value_names_path_and_allowed_values() -> None:
    msg = err("model: m.onnx\ninputs:\n  image:\n    memory: pined\n")
    assert "x.yaml:4:5 inputs.image.memory" in msg and "'pinned'" in msg


def test_wrong_type_in_list() -> None:
    msg = err("model: m.onnx\ninputs:\n  image:\n    shape: [1, three, 4]\n")
    assert "inputs.image.shape.1" in msg and ":4:" in msg


def test_profile_order_checked() -> None:
    msg = err("model: m.onnx\ninputs:\n  x:\n    profile: {min: [4], opt: [2], max: [8]}\n")
    assert "min <= opt <= max" in msg and "inputs.x.profile" in msg


def test_shape_and_profile_exclusive() -> None:
    assert "either `shape` or `profile`" in err(
        "model: m.onnx\ninputs:\n  x: {shape: [1], profile: {min: [1], opt: [1], max: [1]}}\n")


def test_malformed_yaml_names_line() -> None:
    msg = err("model: m.onnx\ninputs: [\n")
    assert "(yaml)" in msg and "x.yaml:" in msg


def test_yaml_is_safe_loaded() -> None:
    msg = err("model: !!python/object/apply:os.system ['echo pwned']\n")
    assert "(yaml)" in msg


def test_tolerance_out_of_range() -> None:
    assert "validate.tolerances.out.atol" in err("model: m.onnx\nvalidate:\n  tolerances: {out: {atol: -1}}\n")


def test_sha256_format() -> None:
    assert "model.sha256" in err("model: {path: m.onnx, sha256: abc}\n")


def test_dtype_aliases_canonicalized() -> None:
    r = parse_recipe("model: m.onnx\ninputs: {x: {dtype: fp16}}\noutputs: {y: {dtype: half}}\n", P).recipe
    assert r.inputs["x"].dtype == "float16" and r.outputs["y"].dtype == "float16"


def test_unknown_dtype() -> None:
    assert "unknown dtype" in err("model: m.onnx\ninputs: {x: {dtype: fp17}}\n")


def test_reduce_discriminated_union() -> None:
    r = parse_recipe("model: m.onnx\noutputs: {o: {reduce: {op: topk, k: 3}}}\n", P).recipe
    assert r.outputs["o"].reduce.k == 3  # type: ignore[union-attr]
    assert "outputs.o.reduce" in err("model: m.onnx\noutputs: {o: {reduce: {op: median}}}\n")


def test_empty_and_non_mapping() -> None:
    assert "empty" in err("")
    assert "mapping" in err("- a\n- b\n")


def test_missing_file() -> None:
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")


def test_shipped_recipes_load() -> None:
    for path in sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml")):
        load_recipe(path)


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
_keys = st.sampled_from(["model", "precision", "inputs", "outputs", "streams", "build", "validate", "budgets",
                         "shape", "dtype", "memory", "profile", "min", "opt", "max", "reduce", "op", "x", "image"])
_yamlish = st.recursive(_scalar, lambda ch: st.one_of(st.lists(ch, max_size=4),
                                                      st.dictionaries(_keys, ch, max_size=5)), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_yamlish)
def test_loader_never_crashes_with_anything_but_recipe_error(doc: object) -> None:
    import yaml

    text = yaml.safe_dump(doc)
    try:
        parse_recipe(text, P)
    except RecipeError:
        pass


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_loader_survives_arbitrary_text(text: str) -> None:
    try:
        parse_recipe(text, P)
    except RecipeError:
        pass
