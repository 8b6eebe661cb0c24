"""``trtflow doctor``: what this machine can build and run, and how to install what is missing."""

from __future__ import annotations

import platform
from typing import Any

from trtflow import __version__
from trtflow.backends.base import all_backends
from trtflow.extras import install_hint


def _gpu() -> dict[str, Any]:
    try:
        from trtflow.runtime import cuda
    except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
        return {"summary": None, "why": f"trtflow.runtime.cuda: {exc}"}
    if not cuda.cuda_available():
        return {"summary": None, "why": "no CUDA GPU visible (or cuda-bindings missing: pip install 'trtflow[cuda]')"}
    from trtflow.bench.link import device_summary

    return {"summary": device_summary(), "why": None}


def _bandwidth(seconds: float = 2.0) -> dict[str, float] | None:
    try:
        from trtflow.runtime import cuda
        if not cuda.cuda_available():
            return None
        from trtflow.bench.link import measure_link
    except Exception:  # noqa: BLE001 - no bandwidth figure rather than no report
        return None
    return measure_link(seconds=seconds)


def collect(*, measure: bool = True) -> dict[str, Any]:
    gpu = _gpu()
    backends = []
    notes = []
    for b in all_backends():
        installed = b.available()
        executes = False
        if installed:
            try:
                executes = b.can_execute_here()
            except Exception as exc:  # noqa: BLE001 - a broken backend is reported, not fatal
                notes.append(f"{b.name}: installed but cannot execute here ({type(exc).__name__}: {exc})")
        backends.append({"name": b.name, "installed": installed, "version": b.version() if installed else None,
                         "builds_engine": b.builds_engine, "executes_here": executes,
                         "install": install_hint(b.extra)})
    names = {b["name"]: b for b in backends}
    if names["tensorrt_rtx"]["installed"] and not names["tensorrt_rtx"]["executes_here"]:
        from trtflow.backends.tensorrt_rtx import FLAVOR as RTX

        notes.append("tensorrt_rtx builds plans here, but its runtime needs a GPU of compute capability "
                     f"{'/'.join(RTX.runs_on)} (it refuses 9.0, the H100/H200); the lowered ONNX runs on "
                     "torch/onnxruntime")
    if not names["tensorrt"]["installed"]:
        notes.append("tensorrt (full TensorRT) is not installed: pip install 'trtflow[trt]' on a CUDA host")
    return {
        "trtflow": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "gpu": gpu, "backends": backends, "notes": notes,
        "bandwidth": _bandwidth() if measure and gpu.get("summary") else None,
    }
