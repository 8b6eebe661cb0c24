"""The small protocol every backend implements, and the registry ``backend: auto`` picks from.

A backend does two things: ``build`` an artifact from the lowered ONNX model, and ``open`` an
:class:`Engine` on it. The runtime owns buffers, streams and events; an engine only binds addresses
and enqueues (CUDA engines) or runs on host arrays (CPU engines). Each backend module is the only
place its library is imported, lazily, inside functions.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from trtflow.errors import BackendMissing
from trtflow.plan.model import BuildInfo, Plan

# progress(phase, step, total): a backend reports build phases; total 0 means unknown.
Progress = Callable[[str, int, int], None]


class Engine(ABC):
    """An opened artifact that can execute. ``device`` says where its I/O lives."""

    device: Literal["cpu", "cuda"]

    # -- CUDA engines: the runtime binds device addresses and enqueues on its own stream ----------
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        raise NotImplementedError

    def set_address(self, name: str, ptr: int) -> None:
        raise NotImplementedError

    def set_input_consumed_event(self, event: int) -> bool:
        """Register an event fired once inputs may be overwritten; False if the engine cannot."""
        return False

    def enqueue(self, stream: int) -> None:
        """Enqueue one inference on ``stream`` (a cudaStream_t as int); never blocks on completion."""
        raise NotImplementedError

    @property
    def capturable(self) -> bool:
        """Whether :meth:`enqueue` can be captured into a CUDA graph."""
        return False

    # -- CPU engines: run on host arrays, writing into the runner's preallocated outputs -----------
    def infer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release library objects; idempotent."""


class Backend(ABC):
    name: ClassVar[str]
    extra: ClassVar[str]              # pip extra that installs the library
    module: ClassVar[str]             # import name of the library, for availability checks
    builds_engine: ClassVar[bool]     # True: writes an engine plan; False: runs the lowered ONNX
    rank: ClassVar[int]               # auto picks the highest rank that is available

    @classmethod
    def available(cls) -> bool:
        try:
            spec = importlib.util.find_spec(cls.module.split(".")[0])
        except (ImportError, ValueError):
            return False
        # A bare folder (e.g. tensorrt-stubs' `tensorrt/`) imports as an empty namespace package: not installed.
        return spec is not None and spec.origin is not None

    @classmethod
    def version(cls) -> str | None:
        if not cls.available():
            return None
        try:
            mod = importlib.import_module(cls.module)
        except Exception:  # noqa: BLE001 - a broken install of any kind reports as unavailable
            return None
        return str(getattr(mod, "__version__", "unknown"))

    @classmethod
    def require(cls) -> None:
        if not cls.available():
            raise BackendMissing(f"backend {cls.name!r} needs the {cls.module!r} package, which is not installed",
                                 hint=f"pip install 'trtflow[{cls.extra}]'")

    @classmethod
    def can_execute_here(cls) -> bool:
        """Whether an engine of this backend can run on this machine (library + device)."""
        return cls.available()

    @abstractmethod
    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Progress | None = None) -> BuildInfo:
        """Build from the lowered ONNX model into ``out_dir`` (a temporary folder, renamed on success)."""

    @abstractmethod
    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> Engine:
        """Open an engine on a built artifact."""


_REGISTRY: dict[str, str] = {
    "tensorrt": "trtflow.backends.tensorrt:TensorRTBackend",
    "tensorrt_rtx": "trtflow.backends.tensorrt_rtx:TensorRTRTXBackend",
    "torch": "trtflow.backends.torch:TorchBackend",
    "onnxruntime": "trtflow.backends.onnxruntime:OnnxRuntimeBackend",
}


def get_backend(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise BackendMissing(f"unknown backend {name!r}", hint=f"one of: auto, {', '.join(_REGISTRY)}")
    mod, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(mod), cls)  # type: ignore[no-any-return]


def all_backends() -> list[type[Backend]]:
    return sorted((get_backend(n) for n in _REGISTRY), key=lambda b: -b.rank)


def pick_builder(requested: str) -> type[Backend]:
    """The backend that builds: the requested one, or the best available for ``auto``."""
    if requested != "auto":
        b = get_backend(requested)
        b.require()
        return b
    for b in all_backends():
        if b.available():
            return b
    raise BackendMissing("no backend is installed",
                         hint="pip install 'trtflow[ort]' (CPU) or 'trtflow[rtx]' / 'trtflow[trt]'")


def pick_executor(builder: str, *, prefer: str = "auto") -> type[Backend]:
    """The backend that executes an artifact built by ``builder`` on this machine.

    TensorRT plans run on their own runtime where it can execute; every artifact also holds the
    lowered ONNX model, so torch (CUDA) or onnxruntime can execute it where TensorRT cannot.
    """
    if prefer != "auto":
        b = get_backend(prefer)
        b.require()
        return b
    order = [builder] + [b.name for b in all_backends() if not b.builds_engine]
    for name in dict.fromkeys(order):
        b = get_backend(name)
        if b.can_execute_here():
            return b
    raise BackendMissing(f"nothing here can execute an artifact built by {builder!r}",
                         hint="pip install 'trtflow[ort]' to run the lowered ONNX model on the CPU")
