"""`trtflow inspect`: I/O with strides from the physical layout, engine details, report, staleness, corruption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.ecosystem import add_model, build_artifact, rewrite_report
from helpers.models import ROOT, make_conv_model
from typer.testing import CliRunner

from trtflow.cli import app
from trtflow.errors import ArtifactError
from trtflow.inspect import contiguous_strides, inspect_artifact, resolve_artifact, tensor_layout
from trtflow.plan.formats import nbytes

TINY = """# yaml-language-server: $schema=../schemas/recipe.schema.json
model: ../models/tiny_mlp.onnx
inputs: {x: {memory: pinned}}
streams: {topology: sync, cuda_graph: true}
"""


def _t(shape: tuple[int, ...], fmt: str, dtype: str = "float16") -> dict[str, Any]:
    return {"shape": list(shape), "format": fmt, "dtype": dtype, "bytes": nbytes(shape, dtype, fmt)}


def test_strides_follow_the_physical_layout() -> None:
    assert contiguous_strides((2, 3, 4)) == (12, 4, 1)
    lin = tensor_layout(_t((1, 3, 4, 5), "linear", "float32"))
    assert lin["physical_shape"] == [1, 3, 4, 5] and lin["strides"] == [60, 20, 5, 1] and lin["padded_elements"] == 0
    hwc8 = tensor_layout(_t((1, 3, 4, 5), "hwc8"))  # channels padded to 8, innermost
    assert hwc8["physical_shape"] == [1, 4, 5, 8] and hwc8["strides"] == [160, 40, 8, 1]
    assert hwc8["padded_elements"] == 160 - 60 and hwc8["vector"] == 8 and hwc8["bytes_check"]
    chw32 = tensor_layout(_t((2, 40, 2, 2), "chw32"))  # 40 channels -> 2 groups of 32
    assert chw32["physical_shape"] == [2, 2, 2, 2, 32] and chw32["strides"] == [256, 128, 64, 32, 1]
    hwc = tensor_layout(_t((1, 3, 4, 5), "hwc", "uint8"))
    assert hwc["physical_shape"] == [1, 4, 5, 3] and hwc["strides"] == [60, 15, 3, 1]


@pytest.fixture
def tiny_project(project: Path) -> Path:
    add_model(project, "tiny_mlp.onnx")
    (project / "recipes").mkdir()
    (project / "recipes" / "tiny.yaml").write_text(TINY)
    return project


@pytest.fixture(params=["onnxruntime", "tensorrt_rtx"])
def built(request: pytest.FixtureRequest, tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    res = build_artifact(tiny_project / "recipes" / "tiny.yaml", tiny_project / "artifacts", request.param, monkeypatch)
    return Path(res.artifact)


def test_fresh_artifact(built: Path) -> None:
    info = inspect_artifact(built)
    assert info["integrity"] == {"ok": True, "error": None}
    assert info["staleness"]["stale"] is False and info["staleness"]["reasons"] == []
    rows = {t["name"]: t for t in info["io"]}
    assert rows["x"]["shape"] == [1, 64] and rows["x"]["strides"] == [64, 1] and rows["x"]["bytes"] == 256
    assert rows["y"]["role"] == "output" and rows["y"]["bytes"] == 40
    rep = info["report"]
    assert rep["versions"]["trtflow"] and "total" in rep["timings_s"]
    assert [p["name"] for p in rep["passes"]][-1] == "check_io"
    names = {f["name"] for f in info["files"]}
    assert {"model.onnx", "plan.json", "runner.py"} <= names
    if rep["backend"] == "tensorrt_rtx":
        assert "engine.plan" in names
        eng = info["engine"]
        assert eng and eng["source"] == "build report" and [t["name"] for t in eng["io"]] == ["x", "y"]
    json.dumps(info)  # --json must always serialize


def test_cli_tables_and_json(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(built.parent.parent)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", f"artifacts/{built.name}"])
    assert res.exit_code == 0, res.output
    assert "fresh" in res.output and "strides" in res.output and "(64, 1)" in res.output
    res = runner.invoke(app, ["inspect", "recipes/tiny.yaml", "--json", "--no-open"])  # a recipe finds its artifact
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == "tiny"


def test_recipe_edits_and_model_changes(built: Path) -> None:
    project = built.parent.parent
    recipe = project / "recipes" / "tiny.yaml"
    recipe.write_text(TINY + "# a comment changes the text, not the plan\n")
    st = inspect_artifact(built, open_engine=False)["staleness"]
    assert st["stale"] is False and any("same plan" in n for n in st["notes"])
    recipe.write_text(TINY.replace("cuda_graph: true", "cuda_graph: false"))
    st = inspect_artifact(built, open_engine=False)["staleness"]
    assert st["stale"] is True and "streams.cuda_graph" in st["reasons"][0]
    recipe.write_text(TINY)
    model = project / "models" / "tiny_mlp.onnx"
    model.unlink()  # a hard link: replace, never edit the shipped model in place
    make_conv_model(model)
    st = inspect_artifact(built, open_engine=False)["staleness"]
    assert st["stale"] is True and any("model file changed" in r for r in st["reasons"])


def test_builder_version_change_is_stale(built: Path) -> None:
    dist = {"tensorrt_rtx": "tensorrt-rtx", "onnxruntime": "onnxruntime"}[json.loads(
        (built / "report.json").read_text())["backend"]]
    rewrite_report(built, versions={dist: "0.0.1"})
    st = inspect_artifact(built, open_engine=False)["staleness"]
    assert st["stale"] is True and any(f"built with {dist} 0.0.1" in r for r in st["reasons"])


def test_corrupt_artifact_exits_6(built: Path) -> None:
    target = built / ("engine.plan" if (built / "engine.plan").exists() else "model.onnx")
    target.write_bytes(target.read_bytes()[:100])
    info = inspect_artifact(built)
    assert info["integrity"]["ok"] is False and "does not match" in info["integrity"]["error"]
    assert any("not opened" in n for n in info["notes"])
    cmd = [sys.executable, "-m", "trtflow.cli", "inspect", str(built)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert r.returncode == ArtifactError.exit_code == 6, r.stderr
    assert "CORRUPT" in r.stdout and "does not match" in r.stderr
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert r.returncode == 6 and json.loads(r.stdout)["integrity"]["ok"] is False


def test_missing_file_and_not_an_artifact(built: Path, tmp_path: Path) -> None:
    (built / "plan.json").unlink()
    info = inspect_artifact(built, open_engine=False)
    assert not info["integrity"]["ok"] and "missing" in info["integrity"]["error"]
    with pytest.raises(ArtifactError, match="no report.json"):
        inspect_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="no such artifact"):
        inspect_artifact(tmp_path / "nope")


class _FakeEngine:
    closed = False

    def io(self) -> list[dict[str, Any]]:
        return [{"name": "x", "mode": "input", "dtype": "float32", "format": "linear", "shape": [1, 64]}]

    def inspect(self) -> str:
        return json.dumps({"Layers": [{"Name": "fc1", "LayerType": "MatMul"}, "relu"], "Bindings": ["x", "y"]})

    def close(self) -> None:
        _FakeEngine.closed = True


class _FakeBackend:
    name = "fake"
    builds_engine = True

    @classmethod
    def available(cls) -> bool:
        return True

    @classmethod
    def can_execute_here(cls) -> bool:
        return True

    def open(self, artifact_dir: Path, plan: Any, *, device: str, allow_host_code: bool = False) -> _FakeEngine:
        assert device == "cuda" and not allow_host_code
        return _FakeEngine()


def test_backend_is_asked_through_optional_methods(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtflow.backends import base

    monkeypatch.setattr(base, "get_backend", lambda name: _FakeBackend)
    info = inspect_artifact(built)
    eng = info["engine"]
    assert eng["source"] == "fake (opened here)" or eng["source"].endswith("(opened here)")
    assert eng["layer_names"] == ["fc1", "relu"] and eng["io"][0]["shape"] == [1, 64]
    assert _FakeEngine.closed


def test_backend_that_cannot_open_is_a_note(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtflow.backends import base

    class Broken(_FakeBackend):
        def open(self, *a: Any, **k: Any) -> _FakeEngine:
            raise RuntimeError("no device")

    monkeypatch.setattr(base, "get_backend", lambda name: Broken)
    info = inspect_artifact(built)
    assert any("could not open the engine here (RuntimeError: no device)" in n for n in info["notes"])


def test_resolve_artifact_from_recipe(tiny_project: Path) -> None:
    assert resolve_artifact(tiny_project / "recipes" / "tiny.yaml", tiny_project / "build") == tiny_project / "build" / "tiny"
    assert resolve_artifact(tiny_project / "build" / "x") == tiny_project / "build" / "x"
