"""Helpers for the init/inspect/export tests: a project with real models, and built artifacts.

Artifacts are built by the real ``trtflow.build.build`` (graph passes, backend, codegen, report). Where
a stage from another part of the tree is not importable yet, the test skips and says which; only the
generated runner may be replaced by a stub, since nothing here runs it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers.models import MODELS


def add_model(project: Path, name: str) -> Path:
    """``project/models/<name>``: a hard link to the shipped model where possible, else a copy."""
    dst = project / "models" / name
    dst.parent.mkdir(exist_ok=True)
    try:
        os.link(MODELS / name, dst)
    except OSError:
        shutil.copyfile(MODELS / name, dst)
    return dst


def require_backend(name: str) -> None:
    """Skip unless backend ``name`` can build here."""
    try:
        from trtflow.backends.base import get_backend

        backend = get_backend(name)
    except ImportError as exc:
        pytest.skip(f"backend module for {name!r} is not importable yet: {exc}")
    if not backend.available():
        pytest.skip(f"{name} is not installed (pip install 'trtflow[{backend.extra}]')")


def build_artifact(recipe: Path, out_root: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build ``recipe`` with ``backend``; skips when the passes or the backend are not available."""
    require_backend(backend)
    try:
        from trtflow.passes import lower  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"trtflow.passes.lower is not available yet: {exc}")
    codegen = importlib.import_module("trtflow.codegen")
    if not hasattr(codegen, "generate_runner"):
        monkeypatch.setattr(codegen, "generate_runner", lambda plan: "# runner stub: codegen not available\n",
                            raising=False)
    from trtflow.build import build

    return build(recipe, out_root=out_root, backend=backend)


def rewrite_report(artifact: Path, **changes: Any) -> dict[str, Any]:
    """Edit report.json in place (it is not among the hashed files), e.g. to pose as another builder."""
    path = artifact / "report.json"
    report = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(report.get(key), dict):
            report[key] = {**report[key], **value}
        else:
            report[key] = value
    path.write_text(json.dumps(report, indent=2))
    return report
