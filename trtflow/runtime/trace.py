"""NVTX ranges (they show up in Nsight Systems), from the optional ``nvtx`` package.

The request path checks ``trace.nvtx is None`` itself and enters no context at all then: without
nvtx a request pays one attribute lookup per stage, nothing else.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from typing import Any


def _load_nvtx() -> Any:
    """The optional ``nvtx`` module; None when absent or broken."""
    if importlib.util.find_spec("nvtx") is None:
        return None
    try:
        return importlib.import_module("nvtx")
    except Exception:  # noqa: BLE001 - a broken install must not break inference
        return None


nvtx: Any = _load_nvtx()
ranges: dict[str, Any] = {}  # name -> annotation, built once each
_NO_RANGE = contextlib.nullcontext()


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """NVTX range ``name`` (domain trtflow), built once and reused; a shared no-op without nvtx."""
    if nvtx is None:
        return _NO_RANGE
    r = ranges.get(name)
    if r is None:
        r = ranges[name] = nvtx.annotate(name, domain="trtflow")
    return r  # type: ignore[no-any-return]


__all__ = ["nvtx", "ranges", "span"]
