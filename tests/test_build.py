"""Build orchestration end to end: artifact contents, cache hits, --force, atomicity, corruption, staleness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.models import ROOT, make_conv_model

from trtflow import artifact as art
from trtflow.build import build
from trtflow.errors import ArtifactError
from trtflow.recipe import load_recipe

RECIPE = """model: m.onnx
precision: fp16
inputs: {image: {dtype: uint8, layout: NHWC, preprocess: {scale: 0.0039215686, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}}
outputs: {logits: {reduce: {op: argmax, dtype: uint8}}}
build: {backend: onnxruntime}
"""


@pytest.fixture
def recipe(project: Path) -> Path:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text(RECIPE)
    return project / "r.yaml"


def test_build_writes_complete_artifact_and_hits_cache(recipe: Path, project: Path) -> None:
    res = build(recipe, out_root=project / "build")
    a = res.artifact
    assert not res.cache_hit and sorted(p.name for p in a.iterdir()) == [
        "model.onnx", "plan.json", "report.json", "runner.py"]
    report = json.loads((a / "report.json").read_text())
    assert report["backend"] == "onnxruntime" and report["versions"]["onnx"]
    assert [p["name"] for p in report["passes"]][:4] == ["fix_inputs", "normalize", "fold_shapes", "precision"]
    assert set(report["files"]) == {"model.onnx", "plan.json", "runner.py"}
    again = build(recipe, out_root=project / "build")
    assert again.cache_hit
    forced = build(recipe, out_root=project / "build", force=True)
    assert not forced.cache_hit


def test_recipe_change_rebuilds_and_stale_is_reported(recipe: Path, project: Path) -> None:
    first = build(recipe, out_root=project / "build")
    recipe.write_text(RECIPE.replace("fp16", "fp32"))
    loaded = load_recipe(recipe)
    report = art.read_report(first.artifact)
    assert art.staleness(report, recipe_sha256=loaded.text_sha256, model_sha256=None) == [
        "the recipe changed since the build"]
    assert not build(recipe, out_root=project / "build").cache_hit


@pytest.mark.rtx
def test_rtx_build_writes_engine_and_verifies(recipe: Path, project: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    recipe.write_text(RECIPE.replace("backend: onnxruntime", "backend: tensorrt_rtx"))
    res = build(recipe, out_root=project / "build")
    assert (res.artifact / "engine.plan").stat().st_size > 1000
    art.verify(res.artifact)


def test_corrupt_file_is_detected_before_loading(recipe: Path, project: Path) -> None:
    res = build(recipe, out_root=project / "build")
    model = res.artifact / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="does not match the build report"):
        art.verify(res.artifact)
    assert not build(recipe, out_root=project / "build").cache_hit  # a corrupt artifact is rebuilt


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    art.atomic_write(tmp_path / "f.json", "{}")
    art.atomic_write(tmp_path / "f.json", "{\"a\": 1}")
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    mode = (tmp_path / "f.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


KILL_SCRIPT = """
import sys, time
from pathlib import Path
import trtflow.backends.onnxruntime as ortb
real = ortb.OnnxRuntimeBackend.build
def slow(self, *a, **k):
    info = real(self, *a, **k)
    Path(sys.argv[2]).write_text("building")
    time.sleep(60)
    return info
ortb.OnnxRuntimeBackend.build = slow
from trtflow.build import build
build(sys.argv[1], out_root=Path(sys.argv[3]), force=True)
"""


def test_killed_build_leaves_previous_artifact_intact(recipe: Path, project: Path) -> None:
    """SIGKILL in the middle of a build: the old artifact still verifies; the next build cleans up."""
    first = build(recipe, out_root=project / "build")
    before = art.read_report(first.artifact)["files"]
    flag = project / "flag"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(recipe), str(flag), str(project / "build")],
                            cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert time.time() < deadline and proc.poll() is None, "build did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert art.verify(first.artifact)["files"] == before
    leftovers = [p.name for p in (project / "build").iterdir() if p.name.startswith(".")]
    # the half build is only in a temp folder (and the lock file, released by the kernel when the holder died)
    assert any(".tmp-" in n for n in leftovers) and all(".tmp-" in n or n == ".r.lock" for n in leftovers)
    assert build(recipe, out_root=project / "build").cache_hit
    recipe.write_text(RECIPE.replace("fp16", "fp32"))
    build(recipe, out_root=project / "build")
    assert not [p for p in (project / "build").iterdir() if p.name.startswith(".")]  # stale temp removed


def test_generated_runner_imports_from_any_directory(recipe: Path, project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    res = build(recipe, out_root=project / "build")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    # trtflow.load_runner, never `from build.r.runner import ...`: PyPA's `build` package (in dev) shadows that.
    code = ("import numpy as np, trtflow\n"
            f"RRunner = trtflow.load_runner({str(res.artifact)!r})\n"
            "with RRunner() as r:\n"
            "    out = r(image=np.zeros((1, 16, 16, 3), np.uint8))\n"
            "    print(out.logits.shape, out.logits.dtype)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "(1, 16, 16) uint8"
    assert res.artifact.name == "r"


NO_NET = """
import socket, sys
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from pathlib import Path
from trtflow.build import build
from trtflow.validate.run import validate_artifact
res = build(sys.argv[1], out_root=Path(sys.argv[2]))
print(validate_artifact(res.artifact).passed)
"""


def test_build_and_validate_never_touch_the_network(recipe: Path, project: Path) -> None:
    p = subprocess.run([sys.executable, "-c", NO_NET, str(recipe), str(project / "build")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("True")


@pytest.mark.rtx
def test_version_compatible_plan_needs_explicit_host_code_opt_in(recipe: Path, project: Path) -> None:
    """A plan marked version-compatible embeds host code: opening it without allow_host_code is refused
    before deserialization (the RTX runtime cannot deserialize without a GPU, so only the refusal runs here)."""
    pytest.importorskip("tensorrt_rtx")
    from dataclasses import replace

    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    recipe.write_text(RECIPE.replace("backend: onnxruntime", "backend: tensorrt_rtx"))
    res = build(recipe, out_root=project / "build")
    plan = replace(res.plan, build=replace(res.plan.build, version_compatible=True))
    with pytest.raises(ArtifactError, match="version-compatible.*host code") as exc:
        TensorRTRTXBackend().open(res.artifact, plan, device="cuda")
    assert "--allow-host-code" in str(exc.value)
