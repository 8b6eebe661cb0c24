"""A new user's first hour, for real: build the wheel, install it (not editable) into a fresh venv beside
PyPA's `build` package, and run init -> plan -> build -> validate -> load_runner -> export triton in a plain
folder (no .git, no pyproject.toml), with `recipes/` and `models/` side by side as the docs show.

Slow (pip installs onnxruntime, tensorrt-rtx, pydantic, ...; pip's cache helps): marked `slow`, and CI
runs it (`make test` runs the whole suite). It needs the package index, like `make setup`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.models import ROOT

pytestmark = pytest.mark.slow

SOURCE_IGNORE = shutil.ignore_patterns(".venv", ".git", "artifacts", "build", "dist", "models", ".corpus", ".whl",
                                       "wheelhouse", "out", "*.egg-info", "__pycache__", ".*_cache", "model_repository")


def sh(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"{' '.join(map(str, p.args))}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_wheel_in_a_fresh_venv_runs_the_whole_user_path(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}

    # 1. the wheel, built by PyPA's build from a copy of the sources (setuptools writes build/ there)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SOURCE_IGNORE)
    p = ok(sh([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", src], src, env))
    warnings = [ln for ln in (p.stdout + p.stderr).splitlines() if "Deprecat" in ln or "BuildBackendWarning" in ln]
    assert not warnings, "setuptools warned:\n" + "\n".join(warnings)
    (wheel,) = (tmp_path / "dist").glob("trtflow-*.whl")
    t_wheel = time.perf_counter() - t0

    # 2. a fresh venv: the core wheel alone first (a missing extra is exit 3 naming it), then [cpu] + build
    venv = tmp_path / "venv"
    ok(sh([sys.executable, "-m", "venv", venv], tmp_path, env))
    bin_ = venv / "bin"
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    pip = [bin_ / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    ok(sh([*pip, wheel], tmp_path, env))
    t_core = time.perf_counter() - t0

    proj = tmp_path / "my-project"  # plain: no .git, no pyproject.toml anywhere above (tmp_path)
    (proj / "models").mkdir(parents=True)
    shutil.copyfile(ROOT / "models" / "tiny_mlp.onnx", proj / "models" / "tiny_mlp.onnx")
    assert not any((d / m).exists() for d in (proj, *proj.parents) for m in (".git", "pyproject.toml"))
    ok(sh(["trtflow", "init", "models/tiny_mlp.onnx", "--out", "recipes/tiny.yaml"], proj, env))
    ok(sh(["trtflow", "plan", "recipes/tiny.yaml"], proj, env))  # the core plans
    p = sh(["trtflow", "validate", "recipes/tiny.yaml", "--json"], proj, env)
    err = json.loads(p.stdout)["error"]
    assert p.returncode == 3 and "trtflow[ort]" in err["hint"] and "trtflow[cpu]" in err["hint"], p.stdout
    assert not (proj / "artifacts").exists()  # found before any work

    ok(sh([*pip, f"trtflow[cpu] @ {wheel.as_uri()}", "build"], tmp_path, env, timeout=1500))
    t_cpu = time.perf_counter() - t0

    # 3. the user's path, in the plain folder
    where = ok(sh(["python", "-c", "import trtflow, build; print(trtflow.__file__); print(build.__file__)"], proj, env))
    trtflow_file, build_file = where.stdout.split()
    assert trtflow_file.startswith(str(venv)) and build_file.startswith(str(venv))  # the wheel, and PyPA's build

    plan = json.loads(ok(sh(["trtflow", "plan", "recipes/tiny.yaml", "--json"], proj, env)).stdout)
    assert plan["model_path"] == str((proj / "models" / "tiny_mlp.onnx").resolve())
    built = json.loads(ok(sh(["trtflow", "build", "recipes/tiny.yaml", "--json"], proj, env)).stdout)
    assert built[0]["artifact"] == "artifacts/tiny" and built[0]["backend"] == "tensorrt_rtx", built
    assert (proj / "artifacts" / "tiny" / "engine.plan").is_file() and not (proj / "build").exists()
    rep = json.loads(ok(sh(["trtflow", "validate", "recipes/tiny.yaml", "--json"], proj, env)).stdout)
    assert rep["passed"] and rep["engine_file"] == "engine.plan" and "model.onnx" in rep["candidate"]
    code = ("import numpy as np, trtflow\n"
            "TinyRunner = trtflow.load_runner('artifacts/tiny')\n"
            "with TinyRunner() as run:\n"
            "    print(run(x=np.ones((1, 64), np.float32)).y.shape)\n")
    assert ok(sh(["python", "-c", code], proj, env)).stdout.strip() == "(1, 10)"
    exp = json.loads(ok(sh(["trtflow", "export", "triton", "recipes/tiny.yaml", "--out", "model_repository",
                            "--json"], proj, env)).stdout)
    assert exp[0]["platform"] == "onnxruntime"  # an RTX plan does not load in Triton's TensorRT backend
    check = ("from google.protobuf import text_format\nfrom tritonclient.grpc import model_config_pb2 as mc\n"
             "c = text_format.Parse(open('model_repository/tiny/config.pbtxt').read(), mc.ModelConfig())\n"
             "print(c.name, c.backend, [i.name for i in c.input])\n")
    assert ok(sh(["python", "-c", check], proj, env)).stdout.split() == ["tiny", "onnxruntime", "['x']"]
    assert ok(sh(["python", "-m", "trtflow", "--version"], proj, env)).stdout.startswith("trtflow ")
    t_all = time.perf_counter() - t0
    print(f"\nfresh venv: wheel {t_wheel:.0f} s, core install {t_core - t_wheel:.0f} s, [cpu] install "
          f"{t_cpu - t_core:.0f} s, user path {t_all - t_cpu:.0f} s, total {t_all:.0f} s")
