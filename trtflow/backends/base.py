"""The small protocol every backend implements, and the registry ``backend: auto`` picks from.

A backend does two things: ``build`` an artifact from the lowered ONNX model, and ``open`` an
engine on it: a :class:`CudaEngine` (the runtime binds device addresses and enqueues on its own
stream) or a :class:`CpuEngine` (runs on host arrays). These two classes are the whole contract
between a runner and an engine. Each backend module is the only place its library is imported,
lazily, inside functions.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import numpy as np

from trtflow.errors import ArtifactError, BackendMissing
from trtflow.plan.model import BuildInfo, Plan

Device = Literal["cpu", "cuda"]
# progress(phase, step, total): a backend reports build phases; total 0 means unknown.
Progress = Callable[[str, int, int], None]


class CapturedGraph(Protocol):
    """A CUDA graph ready to replay (the runtime's own, or one an engine captured itself)."""

    def launch(self, stream: int) -> None: ...

    def close(self) -> None: ...


class Engine(ABC):
    """An opened artifact that can execute: a :class:`CudaEngine` or a :class:`CpuEngine`.

    The runtime owns buffers, streams, events and scratch memory; an engine only computes. The two
    kinds share nothing but :meth:`close`: a runner asks a CUDA engine for what the methods of
    :class:`CudaEngine` declare and a CPU engine for :meth:`CpuEngine.infer`, nothing else.
    """

    device: ClassVar[Device]

    def new_instance(self) -> Engine | None:
        """Another engine over the same loaded model with its own execution state, for a second
        runner on the same device (serving: TensorRT makes a new execution context of this engine,
        sharing its weights). None where the engine cannot: that runner then opens its own."""
        return None

    def close(self) -> None:
        """Release library objects; idempotent."""


class CudaEngine(Engine):
    """An engine that computes over device addresses the runtime binds, on the runtime's stream.

    Per request the runtime calls :meth:`set_input_shape` and, for :attr:`host_inputs`,
    :meth:`set_input_values` (only when they changed), asks :meth:`output_shape` (once per combination
    of input shapes and host values), :meth:`set_address` (only when an address changed) and
    :meth:`enqueue`; before capturing a graph (after a warm-up enqueue) it asks :attr:`capturable`
    again. Output buffers are sized at the profile's max shape.
    """

    device: ClassVar[Device] = "cuda"
    #: True where a captured graph owns everything it replays (torch: its own memory pool), so graphs
    #: captured at other input shapes stay valid; False (TensorRT): a graph bakes the execution
    #: context's state at capture, so the runtime drops every graph when the input shapes change.
    graphs_outlive_shape_changes: ClassVar[bool] = False
    #: Inputs the engine reads on the HOST (TensorRT shape tensors: ``is_shape_inference_io`` at
    #: ``TensorLocation.HOST``). The runtime hands their values over with :meth:`set_input_values`
    #: before :meth:`output_shape` and :meth:`enqueue`; output shapes then depend on those values.
    host_inputs: frozenset[str] = frozenset()

    @abstractmethod
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """The shape of input ``name`` for the next :meth:`enqueue` (inside the profile)."""

    def set_input_values(self, name: str, values: np.ndarray) -> None:
        """The values of host input ``name`` (one of :attr:`host_inputs`) for the next
        :meth:`output_shape` / :meth:`enqueue`; the engine keeps its own copy."""
        raise TypeError(f"{type(self).__name__} reads no input on the host (host_inputs is empty)")

    @abstractmethod
    def set_address(self, name: str, ptr: int) -> None:
        """The device address of tensor ``name`` (256-byte aligned, sized for the max shape)."""

    @abstractmethod
    def enqueue(self, stream: int) -> None:
        """Enqueue one inference on ``stream`` (a cudaStream_t as int); never blocks on completion,
        except where the library must (data-dependent output shapes)."""

    def set_input_consumed_event(self, event: int) -> bool:
        """Register an event fired once inputs may be overwritten; False if the engine cannot."""
        return False

    def output_shape(self, name: str) -> tuple[int, ...] | None:
        """The exact shape of output ``name`` for the input shapes last set (TensorRT:
        ``context.get_tensor_shape`` after ``set_input_shape``); None when the engine cannot tell
        before running, or when a dim is data-dependent. The runtime then uses the plan's shape
        expression (data-dependent dims: :meth:`reported_shape`)."""
        return None

    def reported_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape the engine reported for a data-dependent output of the request just enqueued
        (TensorRT: ``IOutputAllocator.notify_shape``, called before ``execute_async_v3`` returns),
        known once :meth:`enqueue` returns; None when the engine has none for ``name``."""
        return None

    @property
    def scratch_size(self) -> int:
        """Bytes of device scratch the runtime must allocate and hand over with :meth:`set_scratch`
        before the first :meth:`enqueue`. 0 (legal): nothing to hand over, and :meth:`enqueue` must
        run without it."""
        return 0

    def set_scratch(self, ptr: int) -> None:
        """Device scratch of :attr:`scratch_size` bytes at ``ptr`` (256-byte aligned), owned by the
        runtime until after :meth:`close`. Called once, only when :attr:`scratch_size` > 0."""
        raise TypeError(f"{type(self).__name__} takes no scratch memory (scratch_size is 0)")

    @property
    def capturable(self) -> bool:
        """Whether :meth:`enqueue` can be captured into a CUDA graph. Asked when the runner opens and
        again right before each capture, after the warm-up enqueue on the stream to capture (TensorRT-RTX:
        ``is_stream_capturable`` of that stream)."""
        return False

    def capture_graph(self, stream: int, body: Callable[[], None]) -> CapturedGraph | None:
        """Capture ``body`` (copies + :meth:`enqueue`) on ``stream`` with the library's own graph
        machinery (torch: its allocator must know); None: the runtime captures with the CUDA runtime."""
        return None


class CpuEngine(Engine):
    """An engine that computes on host arrays, writing into the runtime's preallocated outputs."""

    device: ClassVar[Device] = "cpu"

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Run one inference on ``feeds``; write each result into ``outputs[name]`` and return the
        shape of every output as computed.

        ``outputs[name]`` has the output's exact shape where the runtime knows it; for an output with
        a data-dependent dim it is an upper-bound array (the profile's max shape), and the engine
        writes the result into its first elements in C order (``dst.reshape(-1)[:n] = result.reshape(-1)``).
        """


def write_result(name: str, dst: np.ndarray, src: np.ndarray, *, exact: bool) -> tuple[int, ...]:
    """What a :class:`CpuEngine` does with one result: write ``src`` into the runtime's buffer ``dst``
    (same shape; or, ``exact`` False, an upper-bound buffer of a data-dependent output: into its first
    elements in C order). Returns ``src``'s shape. A result that does not fit is an ArtifactError."""
    if src.shape == dst.shape:
        np.copyto(dst, src.astype(dst.dtype, copy=False))
    elif exact or src.size > dst.size:
        raise ArtifactError(f"output {name!r}: the model produced shape {list(src.shape)}, the runner's buffer is "
                         f"{list(dst.shape)}", hint="the plan's output shapes disagree with the model: rebuild")
    else:
        dst.reshape(-1)[:src.size] = src.reshape(-1).astype(dst.dtype, copy=False)
    return tuple(src.shape)


class Backend(ABC):
    name: ClassVar[str]
    extra: ClassVar[str]              # pip extra that installs the library
    module: ClassVar[str]             # import name of the library, for availability checks
    builds_engine: ClassVar[bool]     # True: writes an engine plan; False: runs the lowered ONNX
    rank: ClassVar[int]               # auto picks the highest rank that is available
    devices: ClassVar[tuple[Device, ...]] = ("cpu",)  # where its engines run, preferred first

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
            from trtflow.extras import install_hint

            raise BackendMissing(f"backend {cls.name!r} needs the {cls.module!r} package, which is not installed",
                                 hint=install_hint(cls.extra))

    @classmethod
    def can_execute_here(cls) -> bool:
        """Whether an engine of this backend can run on this machine (library + device)."""
        return cls.available()

    @abstractmethod
    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Progress | None = None) -> BuildInfo:
        """Build from the lowered ONNX model into ``out_dir`` (a temporary folder, renamed on success)."""

    @abstractmethod
    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> CudaEngine | CpuEngine:
        """Open an engine on a built artifact (a :class:`CudaEngine` for ``device="cuda"``)."""


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
