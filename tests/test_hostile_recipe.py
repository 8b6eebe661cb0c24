"""Hostile recipes (issue 15 items 1, 2, 12 and their siblings): each is a RecipeError with file and line,
found quickly, with bounded memory; nothing hangs on a FIFO or a device."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.models import ROOT

from trtflow.errors import RecipeError
from trtflow.recipe import discover_recipes, load_recipe, parse_recipe
from trtflow.recipe.loader import MAX_RECIPE_BYTES

P = Path("recipes/x.yaml")


def err(text: str, path: Path = P) -> str:
    t0 = time.perf_counter()
    with pytest.raises(RecipeError) as exc:
        parse_recipe(text, path)
    assert time.perf_counter() - t0 < 5, "a hostile recipe must be refused quickly"
    return str(exc.value)


def _bomb(levels: int = 9) -> str:
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    prev = "a"
    for name in "bcdefghijklmn"[:levels]:
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return "model: m.onnx\n" + text


# -- item 2: denial of service ------------------------------------------------------------------------
HOSTILE_YAML = {
    "alias bomb, 9 levels": (_bomb(9), "expands to more than"),
    "alias bomb hidden in an allowed field": (
        "model: m.onnx\nvalidate:\n  tolerances:\n    a: &a {atol: 1}\n" + "".join(
            f"    b{i}: &b{i} [" + ", ".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 10) + "]\n" for i in range(8)),
        "expands to more than"),
    "recursive alias": ("model: m.onnx\ninputs: &a {x: *a}\n", "recursive"),
    "deep flow nesting": ("model: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 levels"),
    "deep block nesting": ("model: m.onnx\n" + "".join(" " * i + f"k{i}:\n" for i in range(60)) + " " * 60 + "v\n",
                           "nested more than 32 levels"),
    "deep nesting through an alias chain": (
        "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100)) + "model: m.onnx\n",
        "once aliases are expanded"),
    "oversized text": ("model: m.onnx\n#" + "x" * MAX_RECIPE_BYTES + "\n", "at most"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_yaml_denial_of_service_is_refused_fast(case: str) -> None:
    text, want = HOSTILE_YAML[case]
    msg = err(text)
    assert want in msg and "x.yaml:" in msg


def test_alias_bomb_in_a_subprocess_stays_small(project: Path) -> None:
    """The CLI refuses the bomb within a 1 GiB address-space limit (it took 11+ GB before)."""
    (project / "bomb.yaml").write_text(_bomb(9))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "sys.argv = ['trtflow', 'plan', sys.argv[1]]; from trtflow.cli import main; main()")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, str(project / "bomb.yaml")], check=False, capture_output=True, text=True,
                       timeout=60, cwd=project)
    assert p.returncode == 2, p.stderr
    assert "expands to more than" in p.stderr and time.perf_counter() - t0 < 30


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "symlink_to_dev_zero", "dev_null"])
def test_special_files_as_recipe_do_not_hang(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink_to_dev_zero":
        path.symlink_to("/dev/zero")
    else:
        path = Path("/dev/zero" if kind == "dev_zero" else "/dev/null")
    # a subprocess with a timeout: a hang fails the test instead of the suite
    p = subprocess.run([sys.executable, "-m", "trtflow.cli", "plan", str(path)], check=False, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, p.stderr
    assert "not a recipe file" in p.stderr and "Traceback" not in p.stderr


def test_folder_given_to_load_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="is a folder, not a recipe file"):
        load_recipe(tmp_path)


def test_oversized_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(8 << 30)  # sparse 8 GiB
    with pytest.raises(RecipeError, match="larger than"):
        load_recipe(big)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_bytes(b"model: m.onnx\nname: caf\xe9\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:2: not UTF-8"):
        load_recipe(tmp_path / "r.yaml")


def test_crlf_recipe_hashes_like_text_mode(tmp_path: Path) -> None:
    """The recipe digest is of the text as read in text mode (inspect compares the same digest)."""
    import hashlib

    (tmp_path / "r.yaml").write_bytes(b"model: m.onnx\r\nprecision: fp16\r\n")
    loaded = load_recipe(tmp_path / "r.yaml")
    assert loaded.text_sha256 == hashlib.sha256((tmp_path / "r.yaml").read_text().encode()).hexdigest()


# -- item 12: duplicate keys and lax types ------------------------------------------------------------
LAX = {
    "duplicate top-level key": ("model: m.onnx\nprecision: fp16\nprecision: fp32\n", "x.yaml:3:1",
                                "duplicate key 'precision' (first at line 2)"),
    "duplicate tensor": ("model: m.onnx\ninputs:\n  x: {shape: [1]}\n  x: {shape: [2]}\n", "x.yaml:4:3",
                         "duplicate key 'x'"),
    "duplicate key in flow mapping": ("model: m.onnx\nstreams: {depth: 2, depth: 3}\n", "x.yaml:2:21",
                                      "duplicate key 'depth'"),
    "bool as a dim": ("model: m.onnx\ninputs: {x: {shape: [true, 64]}}\n", "x.yaml:2:22",
                      "inputs.x.shape.0: must be a valid integer, got true (a boolean)"),
    "string as a dim": ('model: m.onnx\ninputs: {x: {shape: ["1", 64]}}\n', "x.yaml:2:22",
                        "inputs.x.shape.0: must be a valid integer, got '1' (a string)"),
    "float as a dim": ("model: m.onnx\ninputs: {x: {shape: [1.0, 64]}}\n", "x.yaml:2:22", "must be a valid integer"),
    "bool as a depth": ("model: m.onnx\nstreams: {topology: pipelined, depth: true}\n", "x.yaml:2", "streams.depth"),
    "string as a number": ('model: m.onnx\nlink: {h2d_gbps: "54"}\n', "x.yaml:2", "link.h2d_gbps"),
    "bool as a tolerance": ("model: m.onnx\nvalidate: {default: {atol: true, rtol: 0}}\n", "x.yaml:2",
                            "validate.default.atol"),
    "int as a bool": ("model: m.onnx\nstreams: {cuda_graph: 1}\n", "x.yaml:2", "got 1 (an integer)"),
    "int as a name": ("model: m.onnx\nname: 5\n", "x.yaml:2", "must be a valid string"),
    "int as a model path": ("model: 5\n", "x.yaml:1", "model"),
    "bool as schema_version": ("schema_version: true\nmodel: m.onnx\n", "x.yaml:1", "schema_version"),
    "int as a dtype": ("model: m.onnx\ninputs: {x: {dtype: 16}}\n", "x.yaml:2", "inputs.x.dtype"),
    "date as a string": ("model: m.onnx\nname: 2024-01-01\n", "x.yaml:2", "name"),
    "integer mapping key": ("model: m.onnx\ninputs: {1: {shape: [1]}}\n", "x.yaml:2", "inputs"),
}


@pytest.mark.parametrize("case", sorted(LAX))
def test_duplicate_keys_and_lax_types_are_errors_with_lines(case: str) -> None:
    text, where, want = LAX[case]
    msg = err(text)
    assert where in msg and want in msg, msg


def test_merge_keys_still_work() -> None:
    r = parse_recipe("model: m.onnx\ninputs:\n  x: {<<: {memory: mapped}, dtype: fp16}\n", P).recipe
    assert r.inputs["x"].memory == "mapped" and r.inputs["x"].dtype == "float16"


def test_numbers_still_coerce_where_yaml_is_ambiguous() -> None:
    """An integer where a float is expected is fine (YAML writes 54 for 54.0)."""
    assert parse_recipe("model: m.onnx\nlink: {h2d_gbps: 12}\n", P).recipe.link.h2d_gbps == 12.0


# -- item 1: default names ----------------------------------------------------------------------------
@pytest.mark.parametrize("stem", [".", "..", "my model", "modèle", "-x", "a" * 65, "a/b"[:1] + "\u202e"])
def test_default_name_passes_the_same_check_as_name(stem: str, tmp_path: Path) -> None:
    msg = err("model: m.onnx\n", tmp_path / f"{stem}.yaml")
    assert "name: the default name is the file's stem" in msg and "add `name: " in msg


def test_explicit_name_makes_any_stem_fine(tmp_path: Path) -> None:
    assert parse_recipe("model: m.onnx\nname: ok\n", tmp_path / "..yaml").name == "ok"


def test_dotdot_recipe_never_deletes_the_out_folder(project: Path) -> None:
    """`..yaml` used to build into OUT itself and swap every artifact in it away."""
    from helpers.models import make_conv_model

    make_conv_model(project / "m.onnx")
    (project / "keep.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    (project / "..yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "trtflow.cli", "build", "-o", "out"]
    assert subprocess.run([*run, "keep.yaml"], cwd=project, env=env, check=False, capture_output=True).returncode == 0
    for recipe in ("..yaml", "...yaml"):
        if recipe == "...yaml":
            (project / recipe).write_text("model: m.onnx\n")
        p = subprocess.run([*run, recipe], cwd=project, env=env, check=False, capture_output=True, text=True)
        assert p.returncode == 2 and "default name" in p.stderr, p.stderr
    assert (project / "out" / "keep" / "report.json").is_file()


def test_folder_discovery_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", ".#a.yaml", "..yaml"):
        (tmp_path / name).write_text("model: m.onnx\n")
    (tmp_path / "dir.yaml").mkdir()
    assert [p.name for p in discover_recipes(tmp_path)] == ["a.yml", "b.yaml"]


def test_exponent_floats_are_numbers_as_in_yaml_1_2() -> None:
    """PyYAML reads `1e-5` as a string (YAML 1.1); strict types would refuse the common spelling."""
    r = parse_recipe("model: m.onnx\nvalidate: {default: {atol: 1e-5, rtol: 2E+1}}\n", P).recipe
    assert r.validate_.default is not None and (r.validate_.default.atol, r.validate_.default.rtol) == (1e-5, 20.0)
    assert "got '1e-5' (a string)" in err('model: m.onnx\nvalidate: {default: {atol: "1e-5", rtol: 0}}\n')
