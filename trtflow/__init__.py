"""trtflow: recipe -> plan -> graph passes -> backends -> runtime -> generated runner."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trtflow.runtime.runner import Runner

__version__ = "0.1.0"

_LOADED: dict[tuple[str, str], type] = {}


def load_runner(artifact: str | os.PathLike[str]) -> type[Runner]:
    """The generated runner class of an artifact folder (``artifacts/<name>/``), imported by its path.

    The documented way to use a runner: it works from any directory and with any package installed (a
    ``from artifacts.x.runner import ...`` depends on both). The artifact is verified first (every file
    against its sha256 in report.json, the plan range-checked), so a swapped ``runner.py`` is never
    executed; an unusable artifact raises :class:`~trtflow.errors.ArtifactError`. Loading the same
    unchanged artifact again returns the same class.
    """
    import importlib.util
    import sys
    from pathlib import Path

    from trtflow import artifact as art
    from trtflow.errors import ArtifactError

    folder = Path(artifact).resolve()
    if not folder.is_dir():
        raise ArtifactError(f"{artifact}: no such artifact folder",
                            hint="build it first: trtflow build recipes/<name>.yaml (writes artifacts/<name>/)")
    plan, report = art.load(folder)
    key = (str(folder), str(report.get("files", {}).get(art.RUNNER)))
    if key in _LOADED:
        return _LOADED[key]  # type: ignore[return-value]
    path = folder / art.RUNNER
    mod_name = f"trtflow_artifact_{plan.class_name}_{abs(hash(key)):x}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a verified runner.py always has a spec
        raise ArtifactError(f"{path}: cannot import the generated runner", hint="rebuild with `trtflow build --force`")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
        cls = getattr(module, plan.class_name)
    except Exception as exc:  # noqa: BLE001 - whatever a stale runner.py raises, the artifact is the problem
        sys.modules.pop(mod_name, None)
        raise ArtifactError(f"{path}: the generated runner does not import ({type(exc).__name__}: {exc})",
                            hint="rebuild with `trtflow build --force` (built by another trtflow version?)") from None
    _LOADED[key] = cls
    return cls  # type: ignore[no-any-return]


__all__ = ["__version__", "load_runner"]
