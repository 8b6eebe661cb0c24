"""Full TensorRT (``tensorrt``, 10.12+ and 11.x): builds and runs on the GPU it is on.

Thin: everything is in :mod:`trtflow.backends._trt_common`, which TensorRT-RTX shares and which is tested
for real through it. Full TensorRT cannot be installed on this project's machines, so this module and
the shared one are type-checked against stubs generated from the TensorRT 10.12 and 11.4 bindings
(typings/, ``make typecheck``; see docs/tensorrt.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from trtflow.backends import _trt_common as common
from trtflow.backends.base import Backend, Progress
from trtflow.plan.model import BuildInfo, Plan

FLAVOR = common.Flavor(
    backend="tensorrt", title="TensorRT", timing_cache=True, hardware_compatibility=True,
    version_compatible=True, compute_capabilities=False,
    header_checked=False,  # only the magic and version bytes are known; deserialization decides the rest
)


class TensorRTBackend(Backend):
    name = "tensorrt"
    extra = "trt"
    module = "tensorrt"
    builds_engine = True
    devices = ("cuda",)
    rank = 100

    @classmethod
    def can_execute_here(cls) -> bool:
        return cls.available() and common.device_compute_capability() is not None

    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Progress | None = None) -> BuildInfo:
        import tensorrt

        self.require()
        return common.build(tensorrt, FLAVOR, onnx_path, plan, out_dir, progress=progress)

    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> common.TrtEngine:
        import tensorrt

        self.require()
        return common.open_engine(tensorrt, FLAVOR, artifact_dir, plan, device=device,
                                  allow_host_code=allow_host_code)
