"""TensorRT for RTX (``tensorrt_rtx``): builds ahead of time on any machine, runs on CC 7.5-12.1.

Thin: everything is in :mod:`trtflow.backends._trt_common`. What differs from full TensorRT is the
:data:`FLAVOR`: targets are set with ``build.compute_capabilities``; a runtime cache of JIT-compiled
kernels; no timing cache (a no-op since TensorRT-RTX 1.2), no hardware-compatibility level, no
version-compatible plans. docs/tensorrt.md says what each of these rests on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from trtflow.backends import _trt_common as common
from trtflow.backends.base import Backend, Progress
from trtflow.plan.model import BuildInfo, Plan

FLAVOR = common.Flavor(
    backend="tensorrt_rtx", title="TensorRT-RTX", timing_cache=False, hardware_compatibility=False,
    version_compatible=False, compute_capabilities=True, header_checked=True, runtime_cache=True,
    # The targets of TensorRT-RTX 1.7 (its ComputeCapability enum: SM75..SM121; 7.5 only when asked for,
    # see docs/tensorrt.md). The runtime refuses the others, e.g. 9.0 (H100/H200), at deserialization.
    runs_on=("7.5", "8.0", "8.6", "8.9", "12.0", "12.1"),
)


def _trt() -> Any:
    TensorRTRTXBackend.require()
    import tensorrt_rtx

    return tensorrt_rtx


class TensorRTRTXBackend(Backend):
    name = "tensorrt_rtx"
    extra = "rtx"
    module = "tensorrt_rtx"
    builds_engine = True
    devices = ("cuda",)
    rank = 90

    @classmethod
    def can_execute_here(cls) -> bool:
        if not cls.available():
            return False
        cc = common.device_compute_capability()
        return cc is not None and FLAVOR.can_run_on(cc)

    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Progress | None = None) -> BuildInfo:
        return common.build(_trt(), FLAVOR, onnx_path, plan, out_dir, progress=progress)

    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> common.TrtEngine:
        return common.open_engine(_trt(), FLAVOR, artifact_dir, plan, device=device, allow_host_code=allow_host_code)
