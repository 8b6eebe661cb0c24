"""The artifact folder on disk: atomic writes, content hashes, and the checks made before loading.

An artifact is complete or absent: it is assembled in a temporary sibling folder and swapped in with
renames, so an interrupted build leaves the previous artifact intact. ``report.json`` records the
sha256 of every file; :func:`verify` re-hashes before anything is deserialized.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trtflow.errors import ArtifactError

REPORT = "report.json"
PLAN = "plan.json"
MODEL = "model.onnx"
ENGINE = "engine.plan"
RUNNER = "runner.py"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final``; stale ones from killed builds are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def commit_dir(tmp: Path, final: Path) -> None:
    """Swap ``tmp`` in as ``final``: the old artifact stays until the new one is in place."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_report(artifact: Path) -> dict[str, Any]:
    path = artifact / REPORT
    if not path.is_file():
        raise ArtifactError(f"{artifact}: no {REPORT}; this is not a trtflow artifact (or its build never finished)",
                            hint=f"run `trtflow build <recipe>` to create {artifact}")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable build report ({exc})", hint="rebuild with --force") from None
    return data


def verify(artifact: Path, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-hash every file the report lists; a mismatch (truncated, corrupt, edited) is an ArtifactError."""
    report = report or read_report(artifact)
    for name, want in report.get("files", {}).items():
        path = artifact / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing from the artifact", hint="rebuild with `trtflow build --force`")
        got = sha256_path(path)
        if got != want:
            raise ArtifactError(f"{path}: content hash {got[:12]}... does not match the build report ({want[:12]}...); "
                                "the file is truncated, corrupt or was replaced", hint="rebuild with `trtflow build --force`")
    return report


def staleness(report: dict[str, Any], *, recipe_sha256: str | None, model_sha256: str | None) -> list[str]:
    """Reasons the artifact no longer matches the recipe/model (empty = fresh)."""
    reasons = []
    if recipe_sha256 and report.get("recipe_sha256") != recipe_sha256:
        reasons.append("the recipe changed since the build")
    if model_sha256 and report.get("model_sha256") != model_sha256:
        reasons.append("the model file changed since the build")
    return reasons
