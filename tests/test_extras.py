"""A missing optional library is found before any work starts: exit 3 naming the pip extra.

Libraries are hidden in a subprocess by a meta-path finder (what a venv without that extra looks like);
each case must fail within seconds, before a build or a benchmark runs. The packaging metadata is
checked here too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import tomllib
from helpers.models import ROOT, make_conv_model


def hidden(blocked: list[str], *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Hide(importlib.abc.MetaPathFinder):
            def __init__(self, inner):
                self.inner = inner
            def __getattr__(self, attr):
                return getattr(self.inner, attr)
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    return None
                return self.inner.find_spec(name, path, target)
        sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
        from trtflow.cli import main
        main({list(args)!r})
    """)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                       check=False)
    return r, time.perf_counter() - t


def _error(r: subprocess.CompletedProcess[str]) -> dict[str, str]:
    e: dict[str, str] = json.loads(r.stdout)["error"]
    return e


def test_missing_extras_fail_first_with_the_extra_named(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    r, _ = hidden(["onnxconverter_common"], "build", "r.yaml", "--fp16", "--json", cwd=project)
    e = _error(r)
    assert r.returncode == 3 and "onnxconverter-common" in e["message"] and "trtflow[lower]" in e["hint"]
    assert not (project / "artifacts" / "r").exists()  # nothing was built
    r, _ = hidden(["matplotlib"], "bench", "r.yaml", "--plot", "p.png", "--json", cwd=project)
    e = _error(r)
    assert r.returncode == 3 and "--plot needs matplotlib" in e["message"] and "trtflow[plot]" in e["hint"]
    assert "trtflow[cpu]" in e["hint"]  # the machine-kind extra is offered too
    assert not (project / "artifacts" / "r").exists()  # the benchmark (and its build) never started
    r, _ = hidden(["onnxruntime"], "validate", "r.yaml", "--json", cwd=project)
    e = _error(r)
    assert r.returncode == 3 and "trtflow[ort]" in e["hint"]


def test_packaging_metadata() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").read_text().startswith(" " * 30 + "Apache License")
    assert "version" in project["dynamic"] and "version" not in project
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "trtflow.__version__"}
    from trtflow import __version__

    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    extras = project["optional-dependencies"]
    assert {"cpu", "gpu", "all"} <= set(extras)
    from trtflow.extras import LIBRARIES, MACHINE_EXTRAS

    for kind, parts in MACHINE_EXTRAS.items():  # what the error hints promise is what pip installs
        assert set(re.findall(r"\[(.*)\]", extras[kind][0])[0].split(",")) <= set(parts) | set(MACHINE_EXTRAS)
    assert {lib.extra for lib in LIBRARIES.values()} <= set(extras)
    for pattern in meta["tool"]["setuptools"]["package-data"]["trtflow"]:  # no entry for a missing folder
        assert list((ROOT / "trtflow").glob(pattern)), pattern
    assert any(c.startswith("License") for c in project["classifiers"]) is False  # PEP 639: no license classifier
