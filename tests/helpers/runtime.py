"""Helpers of the runtime tests (no tests here): artifact folders built by hand, and a fake
``cuda.bindings.runtime`` for CPU tests of the runtime's CUDA code paths (no GPU needed).

Fake CUDA:

"Device" memory is host memory, so every copy is a memmove. Work enqueued on a stream is NOT run when
it is enqueued: it runs lazily, in a random order that respects stream order and event waits, only
when something waits for it (a stream/event synchronize, a D2H into pageable memory). A runner that
forgets an event wait, or rewrites host staging before its copy ran, gets wrong results here.
Graph capture records ops with the addresses of capture time, like real CUDA graphs.
Every runtime call is counted (``FakeCudart.calls``, names in call order): tests of the request path
assert how many CUDA calls one request makes.

:class:`NullCudart` is the same API with every stream operation a no-op (nothing is queued or run):
with ``FakeBackend.options = {"null_kernel": True}`` it measures the runner's own host overhead.

Test modules import it as ``from helpers import runtime as sup``.
"""

from __future__ import annotations

import ctypes
import enum
import random
import sys
import threading
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from trtflow.backends.base import Backend, CudaEngine
from trtflow.codegen import write_runner
from trtflow.plan.formats import pack, physical_shape, unpack
from trtflow.plan.model import MEMORY_STRATEGIES, BuildInfo, Plan


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNotReady = 600
    cudaErrorHostMemoryAlreadyRegistered = 712
    cudaErrorHostMemoryNotRegistered = 713
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


OK = cudaError_t.cudaSuccess


@dataclass
class _Op:
    fn: Callable[[], None]
    waits: list[tuple[int, int]] = field(default_factory=list)  # (event, generation) that must have run
    records: tuple[int, int] | None = None                       # (event, generation) this op completes
    host: tuple[int, int, int] | None = None                     # (ptr, n, pinning id) a copy node uses


@dataclass
class _Stream:
    queue: deque[_Op] = field(default_factory=deque)
    capturing: list[_Op] | None = None
    invalidated: bool = False


class FakeCudart:
    """State of the fake runtime; its methods are the module functions."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.blocks: dict[int, np.ndarray] = {}       # device allocations
        self.host: dict[int, tuple[np.ndarray, int]] = {}  # host allocations -> (buffer, flags)
        self.registered: dict[int, int] = {}           # ptr -> nbytes
        self.pin_ids: dict[int, int] = {}              # ptr of a registration/host alloc -> id of that pinning
        self.streams: dict[int, _Stream] = {}
        self.events: dict[int, dict[str, Any]] = {}    # ev -> {gen, done_gen, time, timing}
        self.graphs: dict[int, list[_Op]] = {}
        self.execs: dict[int, list[_Op]] = {}
        self.next_handle = 0x1000
        self.last_error = OK
        self.clock = 0.0
        self.kernel_launches = 0
        self.calls: list[str] = []
        # devices (serving tests): how many, the current one per thread, the device of each stream and
        # allocation, and every stream operation issued while another device was current
        self.device_total = 1
        self._current = threading.local()
        self.stream_device: dict[int, int] = {}
        self.alloc_device: dict[int, int] = {}
        self.wrong_device: list[str] = []

    # -- helpers ------------------------------------------------------------------------------------------
    def handle(self) -> int:
        self.next_handle += 0x10
        return self.next_handle

    def alloc(self, n: int) -> tuple[np.ndarray, int]:
        buf = np.empty(n + 512, dtype=np.uint8)
        buf[...] = 0xAB  # garbage, like fresh device memory
        ptr = buf.ctypes.data
        off = (-ptr) % 256
        return buf, ptr + off

    def pin_id(self, ptr: int, n: int) -> int | None:
        """Which host allocation / registration page-locks [ptr, ptr+n), if any."""
        for base, (buf, _) in self.host.items():
            if base <= ptr and ptr + n <= base + buf.size - 512:
                return self.pin_ids.get(base)
        for base, size in self.registered.items():
            if base <= ptr and ptr + n <= base + size:
                return self.pin_ids.get(base)
        return None

    def is_pinned(self, ptr: int, n: int) -> bool:
        return self.pin_id(ptr, n) is not None

    def is_device(self, ptr: int) -> bool:
        for base, buf in self.blocks.items():
            if base <= ptr < base + buf.size - 512:
                return True
        for base, (buf, flags) in self.host.items():
            if flags & 2 and base <= ptr < base + buf.size - 512:
                return True  # mapped host memory is device accessible
        return False

    def stream(self, s: int) -> _Stream:
        if s in (0, 1, 2):  # legacy / per-thread default streams exist implicitly
            return self.streams.setdefault(s, _Stream())
        return self.streams[s]

    def current(self) -> int:
        return int(getattr(self._current, "device", 0))

    def enqueue(self, s: int, op: _Op) -> cudaError_t:
        if self.stream_device.get(s, self.current()) != self.current():
            self.wrong_device.append(f"stream {s:#x} of device {self.stream_device[s]} used with device "
                                     f"{self.current()} current")
        st = self.stream(s)
        if st.capturing is not None:
            st.capturing.append(op)
        else:
            st.queue.append(op)
        self.background()
        return OK

    def runnable(self, op: _Op) -> bool:
        return all(self.events[e]["done_gen"] >= g for e, g in op.waits if e in self.events)

    def step(self) -> bool:
        heads = [st for st in self.streams.values() if st.queue and self.runnable(st.queue[0])]
        if not heads:
            return False
        st = self.rng.choice(heads)
        op = st.queue.popleft()
        op.fn()
        if op.records is not None:
            ev, gen = op.records
            if ev in self.events:
                self.events[ev]["done_gen"] = max(self.events[ev]["done_gen"], gen)
                self.clock += 0.25
                self.events[ev]["time"] = self.clock
        return True

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            if not self.step():
                raise AssertionError("fake CUDA deadlock: nothing runnable but the wait is not satisfied")

    def background(self) -> None:
        """Now and then run some queued work, so completion order varies between runs."""
        for _ in range(self.rng.randint(0, 1)):
            if not self.step():
                break

    # -- module API -------------------------------------------------------------------------------------------
    def cudaGetErrorName(self, err: int) -> tuple[Any, bytes]:
        return OK, cudaError_t(err).name.encode()

    def cudaGetLastError(self) -> tuple[Any]:
        err, self.last_error = self.last_error, OK
        return (err,)

    def cudaGetDeviceCount(self) -> tuple[Any, int]:
        return OK, self.device_total

    def cudaGetDevice(self) -> tuple[Any, int]:
        return OK, self.current()

    def cudaSetDevice(self, i: int) -> tuple[Any]:
        if not 0 <= int(i) < self.device_total:
            return (cudaError_t.cudaErrorInvalidValue,)
        self._current.device = int(i)
        return (OK,)

    def cudaDeviceGetPCIBusId(self, n: int, i: int) -> tuple[Any, bytes]:
        return OK, f"0000:{0x1b + int(i):02X}:00.0".encode().ljust(int(n), b"\0")

    def cudaDriverGetVersion(self) -> tuple[Any, int]:
        return OK, 13020

    def cudaGetDeviceProperties(self, i: int) -> tuple[Any, Any]:
        return OK, types.SimpleNamespace(name=b"Fake GPU\0\0", major=9, minor=0, totalGlobalMem=80 << 30)

    def cudaMemGetInfo(self) -> tuple[Any, int, int]:
        used = sum(b.size for b in self.blocks.values())
        return OK, (80 << 30) - used, 80 << 30

    def cudaDeviceSynchronize(self) -> tuple[Any]:
        self.run_until(lambda: not any(st.queue for st in self.streams.values()))
        return (OK,)

    def cudaMalloc(self, n: int) -> tuple[Any, int]:
        buf, ptr = self.alloc(n)
        self.blocks[ptr] = buf
        self.alloc_device[ptr] = self.current()
        return OK, ptr

    def cudaFree(self, ptr: int) -> tuple[Any]:
        if self.blocks.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (OK,)

    def cudaMemsetAsync(self, ptr: int, value: int, n: int, s: int) -> tuple[Any]:
        return (self.enqueue(s, _Op(lambda: ctypes.memset(ptr, value, n))),)

    cudaHostAllocDefault = 0
    cudaHostAllocPortable = 1
    cudaHostAllocMapped = 2
    cudaHostAllocWriteCombined = 4
    cudaHostRegisterDefault = 0
    cudaStreamDefault = 0
    cudaStreamNonBlocking = 1
    cudaEventDefault = 0
    cudaEventDisableTiming = 2
    cudaEventBlockingSync = 1

    def cudaHostAlloc(self, n: int, flags: int) -> tuple[Any, int]:
        buf, ptr = self.alloc(n)
        self.host[ptr] = (buf, int(flags))
        self.alloc_device[ptr] = self.current()
        self.pin_ids[ptr] = self.handle()
        return OK, ptr

    def cudaFreeHost(self, ptr: int) -> tuple[Any]:
        if self.host.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (OK,)

    def cudaHostRegister(self, ptr: int, n: int, flags: int) -> tuple[Any]:
        if int(ptr) in self.registered:
            return (cudaError_t.cudaErrorHostMemoryAlreadyRegistered,)
        self.registered[int(ptr)] = int(n)
        self.pin_ids[int(ptr)] = self.handle()
        return (OK,)

    def cudaHostUnregister(self, ptr: int) -> tuple[Any]:
        if self.registered.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorHostMemoryNotRegistered,)
        return (OK,)

    def cudaHostGetDevicePointer(self, ptr: int, flags: int) -> tuple[Any, int]:
        entry = self.host.get(int(ptr))
        if entry is None or not entry[1] & 2:
            return cudaError_t.cudaErrorInvalidValue, 0
        return OK, int(ptr)

    def _copy(self, dst: int, src: int, n: int, kind: int, s: int, *, sync: bool) -> cudaError_t:
        dst, src, n = int(dst), int(src), int(n)
        kind = cudaMemcpyKind(int(kind))
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice and not self.is_device(dst):
            return cudaError_t.cudaErrorInvalidValue
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost and not self.is_device(src):
            return cudaError_t.cudaErrorInvalidValue
        st = self.stream(s)
        pageable_src = kind == cudaMemcpyKind.cudaMemcpyHostToDevice and not self.is_pinned(src, n)
        pageable_dst = kind == cudaMemcpyKind.cudaMemcpyDeviceToHost and not self.is_pinned(dst, n)
        if st.capturing is not None and (pageable_src or pageable_dst or sync):
            st.invalidated = True  # pageable copies and sync calls cannot be captured
            self.last_error = cudaError_t.cudaErrorStreamCaptureUnsupported
            return cudaError_t.cudaErrorStreamCaptureUnsupported
        if pageable_src:  # the driver stages pageable data before the call returns
            staged = (ctypes.c_uint8 * n).from_buffer_copy((ctypes.c_uint8 * n).from_address(src))
            op = _Op(lambda: ctypes.memmove(dst, ctypes.addressof(staged), n))
        else:
            op = _Op(lambda: ctypes.memmove(dst, src, n))
            if kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToHost):
                hp = src if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else dst
                op.host = (hp, n, self.pin_id(hp, n) or 0)
        self.enqueue(s, op)
        if pageable_dst or sync:  # returns only once the copy has completed
            self.run_until(lambda: op not in st.queue)
        return OK

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, s: int) -> tuple[Any]:
        return (self._copy(dst, src, n, kind, int(s), sync=False),)

    def cudaMemcpy(self, dst: int, src: int, n: int, kind: int) -> tuple[Any]:
        err = self._copy(dst, src, n, kind, 1, sync=True)
        return (err,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, int]:
        h = self.handle()
        self.streams[h] = _Stream()
        self.stream_device[h] = self.current()
        return OK, h

    def cudaStreamDestroy(self, s: int) -> tuple[Any]:
        st = self.streams.pop(int(s), None)
        if st is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        while st.queue:  # outstanding work still completes
            self.streams[int(s)] = st
            self.step()
            self.streams.pop(int(s), None)
        return (OK,)

    def cudaStreamSynchronize(self, s: int) -> tuple[Any]:
        st = self.stream(int(s))
        if st.capturing is not None:
            st.invalidated = True
            self.last_error = cudaError_t.cudaErrorStreamCaptureUnsupported
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        self.run_until(lambda: not st.queue)
        return (OK,)

    def cudaStreamQuery(self, s: int) -> tuple[Any]:
        return (OK if not self.stream(int(s)).queue else cudaError_t.cudaErrorNotReady,)

    def cudaEventCreateWithFlags(self, flags: int) -> tuple[Any, int]:
        h = self.handle()
        self.events[h] = {"gen": 0, "done_gen": 0, "time": 0.0, "timing": not int(flags) & 2,
                          "blocking": bool(int(flags) & 1)}
        return OK, h

    def cudaEventDestroy(self, ev: int) -> tuple[Any]:
        if self.events.pop(int(ev), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (OK,)

    def cudaEventRecord(self, ev: int, s: int) -> tuple[Any]:
        e = self.events[int(ev)]
        st = self.stream(int(s))
        if st.capturing is not None:
            return (self.enqueue(int(s), _Op(lambda: None)),)  # an internal dependency node
        e["gen"] += 1
        return (self.enqueue(int(s), _Op(lambda: None, records=(int(ev), e["gen"]))),)

    def cudaEventSynchronize(self, ev: int) -> tuple[Any]:
        e = self.events[int(ev)]
        self.run_until(lambda: e["done_gen"] >= e["gen"])
        return (OK,)

    def cudaEventQuery(self, ev: int) -> tuple[Any]:
        e = self.events[int(ev)]
        return (OK if e["done_gen"] >= e["gen"] else cudaError_t.cudaErrorNotReady,)

    def cudaEventElapsedTime(self, a: int, b: int) -> tuple[Any, float]:
        ea, eb = self.events[int(a)], self.events[int(b)]
        if not (ea["timing"] and eb["timing"]) or not ea["gen"] or not eb["gen"]:
            return cudaError_t.cudaErrorInvalidResourceHandle, 0.0
        return OK, max(eb["time"] - ea["time"], 0.0)

    def cudaStreamWaitEvent(self, s: int, ev: int, flags: int) -> tuple[Any]:
        e = self.events[int(ev)]
        return (self.enqueue(int(s), _Op(lambda: None, waits=[(int(ev), e["gen"])])),)

    def cudaStreamBeginCapture(self, s: int, mode: int) -> tuple[Any]:
        st = self.stream(int(s))
        if st.capturing is not None:
            return (cudaError_t.cudaErrorInvalidValue,)
        st.capturing, st.invalidated = [], False
        return (OK,)

    def cudaStreamEndCapture(self, s: int) -> tuple[Any, Any]:
        st = self.stream(int(s))
        ops, bad = st.capturing, st.invalidated
        st.capturing, st.invalidated = None, False
        if ops is None:
            return cudaError_t.cudaErrorInvalidValue, None
        if bad:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        h = self.handle()
        self.graphs[h] = ops
        return OK, h

    def cudaStreamIsCapturing(self, s: int) -> tuple[Any, Any]:
        st = self.stream(int(s))
        status = (cudaStreamCaptureStatus.cudaStreamCaptureStatusNone if st.capturing is None else
                  cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated if st.invalidated else
                  cudaStreamCaptureStatus.cudaStreamCaptureStatusActive)
        return OK, status

    def cudaGraphInstantiate(self, g: int, flags: int) -> tuple[Any, int]:
        h = self.handle()
        self.execs[h] = list(self.graphs[int(g)])
        return OK, h

    def cudaGraphLaunch(self, ex: int, s: int) -> tuple[Any]:
        ops = self.execs[int(ex)]
        for op in ops:  # real CUDA crashes on a node whose host memory was unregistered since capture
            if op.host is not None and self.pin_id(op.host[0], op.host[1]) != op.host[2]:
                raise AssertionError(f"graph launch: host memory {op.host[0]:#x} was unpinned since capture "
                                     "(a real GPU segfaults here)")

        def run_all() -> None:
            for op in ops:
                op.fn()

        return (self.enqueue(int(s), _Op(run_all)),)

    def cudaGraphDestroy(self, g: int) -> tuple[Any]:
        return (OK if self.graphs.pop(int(g), None) is not None else cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaGraphExecDestroy(self, ex: int) -> tuple[Any]:
        return (OK if self.execs.pop(int(ex), None) is not None else cudaError_t.cudaErrorInvalidResourceHandle,)

    # -- what tests look at ------------------------------------------------------------------------------------
    def live(self) -> dict[str, int]:
        return {k: v for k, v in {"device": len(self.blocks), "host": len(self.host), "registered": len(self.registered),
                                  "stream": len([s for s in self.streams if s > 2]), "event": len(self.events),
                                  "graph": len(self.graphs), "graph_exec": len(self.execs)}.items() if v}


class NullCudart(FakeCudart):
    """The fake's allocations, handles and capture bookkeeping, but stream work is dropped: copies,
    event records, waits, kernels and graph launches cost one Python call and do nothing. Results
    are garbage; only the runner's host path is exercised (timing it, counting its calls)."""

    def enqueue(self, s: int, op: _Op) -> cudaError_t:
        return OK

    def background(self) -> None:
        pass

    def run_until(self, done: Callable[[], bool]) -> None:
        pass

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, s: int) -> tuple[Any]:
        return (OK,)

    def cudaEventRecord(self, ev: int, s: int) -> tuple[Any]:
        e = self.events[int(ev)]
        e["gen"] = e["done_gen"] = e["gen"] + 1
        return (OK,)

    def cudaStreamWaitEvent(self, s: int, ev: int, flags: int) -> tuple[Any]:
        return (OK,)

    def cudaGraphLaunch(self, ex: int, s: int) -> tuple[Any]:
        return (OK,)


def _counted(fake: FakeCudart, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        fake.calls.append(name)
        return fn(*args)

    return call


def install(monkeypatch: Any, seed: int = 0, *, cls: type[FakeCudart] | None = None, count: bool = True) -> FakeCudart:
    """Install a fresh fake (``cls``, default :class:`FakeCudart`) as ``cuda.bindings.runtime`` and
    reset trtflow.runtime.cuda. ``count``: record every call's name in ``fake.calls``."""
    from trtflow.runtime import cuda

    fake = (cls or FakeCudart)(seed)
    mod = types.ModuleType("cuda.bindings.runtime")
    for name in dir(fake):
        if name.startswith("cuda"):
            attr = getattr(fake, name)
            setattr(mod, name, _counted(fake, name, attr) if count and callable(attr) else attr)
    mod.cudaError_t = cudaError_t  # type: ignore[attr-defined]
    mod.cudaMemcpyKind = cudaMemcpyKind  # type: ignore[attr-defined]
    mod.cudaStreamCaptureMode = cudaStreamCaptureMode  # type: ignore[attr-defined]
    mod.cudaStreamCaptureStatus = cudaStreamCaptureStatus  # type: ignore[attr-defined]
    pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = mod  # type: ignore[attr-defined]
    pkg.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", mod)
    cuda._reset_for_tests()
    monkeypatch.setattr(cuda, "_rt", None)
    return fake


# -- a CUDA engine over the fake: onnxruntime on the host, run as a "kernel" on the stream ----------
FAKE: FakeCudart | None = None


class FakeCudaEngine(CudaEngine):
    """Binds addresses like TensorRT; enqueue adds one kernel op that reads/writes those addresses
    (baked in at enqueue time, so a captured graph replays the old addresses).

    Like a TensorRT execution context, a graph captured from it bakes the context's state: a kernel
    captured at one set of input shapes and replayed after :meth:`set_input_shape` changed them fails
    loudly (on a GPU it is undefined behaviour). ``graphs_outlive``: the torch flavour (every graph owns
    its state), where such replays are fine.

    ``scratch``: the :attr:`scratch_size` it asks for (enqueue refuses to run before :meth:`set_scratch`
    when it is > 0, like TensorRT's user-managed memory). ``tells_shapes``: :meth:`output_shape` answers
    like ``context.get_tensor_shape`` (ONNX shape inference at the input shapes set); False: it answers
    None, and the runtime must use the plan's shape expressions."""

    def __init__(self, plan: Plan, model: Path, *, capturable: bool = True, break_capture: bool = False,
                 consumed_events: bool = False, null_kernel: bool = False, scratch: int = 0,
                 tells_shapes: bool = True, graphs_outlive: bool = False) -> None:
        import onnxruntime as ort

        self.plan = plan
        self.sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.model_dtypes = {i.name: i.type for i in self.sess.get_inputs()}
        self.shapes = {t.name: t.shape for t in plan.tensors}
        self.ptrs: dict[str, int] = {}
        self._capturable, self.break_capture, self.consumed_events = capturable, break_capture, consumed_events
        self.consumed = 0
        self.enqueues = 0
        self.null_kernel = null_kernel  # enqueue does nothing (host-overhead measurements)
        self.closed = False
        self.scratch = scratch
        self.scratch_ptrs: list[int] = []
        self.model_path, self.tells_shapes = model, tells_shapes
        self.graphs_outlive_shape_changes = graphs_outlive  # type: ignore[misc]
        self.shape_epoch = 0  # bumped whenever an input shape of the "context" changes
        self._inferred: dict[tuple[Any, ...], dict[str, tuple[int, ...] | None]] = {}
        self.shape_questions = 0
        self.reported: dict[str, tuple[int, ...]] = {}

    def reported_shape(self, name: str) -> tuple[int, ...] | None:
        return self.reported.get(name)

    def output_shape(self, name: str) -> tuple[int, ...] | None:
        self.shape_questions += 1
        if not self.tells_shapes:
            return None
        key = tuple(self.shapes[t.name] for t in self.plan.inputs)
        if key not in self._inferred:
            import onnx

            m = onnx.load(str(self.model_path))
            for inp in m.graph.input:
                if inp.name in self.shapes:
                    dims = inp.type.tensor_type.shape.dim
                    for d, v in zip(dims, self.shapes[inp.name]):
                        d.ClearField("dim_param")
                        d.dim_value = int(v)
            del m.graph.value_info[:]
            for out in m.graph.output:
                for d in out.type.tensor_type.shape.dim:
                    d.ClearField("dim_value")
                    d.ClearField("dim_param")
            inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
            got: dict[str, tuple[int, ...] | None] = {}
            for out in inferred.graph.output:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in out.type.tensor_type.shape.dim]
                got[out.name] = None if any(d < 0 for d in dims) else tuple(dims)
            self._inferred[key] = got
        return self._inferred[key].get(name)

    @property
    def scratch_size(self) -> int:
        return self.scratch

    def set_scratch(self, ptr: int) -> None:
        assert FAKE is not None and ptr % 256 == 0 and FAKE.is_device(ptr), f"bad scratch {ptr:#x}"
        self.scratch_ptrs.append(ptr)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self.shapes.get(name) != tuple(shape):
            self.shape_epoch += 1
        self.shapes[name] = tuple(shape)

    def set_address(self, name: str, ptr: int) -> None:
        assert ptr % 256 == 0, f"{name}: address {ptr:#x} not 256-byte aligned"
        self.ptrs[name] = int(ptr)

    def set_input_consumed_event(self, event: int) -> bool:
        if self.consumed_events:
            self.consumed = int(event)
        return self.consumed_events

    @property
    def capturable(self) -> bool:
        return self._capturable

    def _array(self, name: str, ptr: int, shape: tuple[int, ...]) -> np.ndarray:
        t = self.plan.tensor(name)
        phys = physical_shape(shape, t.format)
        n = int(np.prod(phys)) * np.dtype(t.dtype).itemsize
        raw = np.frombuffer((ctypes.c_uint8 * n).from_address(ptr), dtype=np.uint8) if n else np.empty(0, np.uint8)
        return raw.view(t.dtype).reshape(phys)  # the engine's (physical) layout

    def enqueue(self, stream: int) -> None:
        assert FAKE is not None
        if self.closed:
            raise RuntimeError("closed")
        if self.scratch and not self.scratch_ptrs:
            raise RuntimeError("enqueue before set_scratch")
        if self.null_kernel:
            self.enqueues += 1
            return
        ptrs, shapes = dict(self.ptrs), dict(self.shapes)  # baked in, like a real engine/graph
        plan, sess = self.plan, self.sess
        if self.break_capture and FAKE.stream(stream).capturing is not None:
            FAKE.cudaStreamSynchronize(stream)  # a host sync inside capture: invalidates it
        self.enqueues += 1
        captured_at = self.shape_epoch if FAKE.stream(stream).capturing is not None else None

        def kernel() -> None:
            FAKE.kernel_launches += 1  # type: ignore[union-attr]
            if captured_at is not None and captured_at != self.shape_epoch and not self.graphs_outlive_shape_changes:
                raise AssertionError("a graph captured before the context's input shapes changed was replayed "
                                     "(TensorRT: undefined behaviour)")
            feeds = {}
            for t in plan.inputs:
                phys = self._array(t.name, ptrs[t.name], shapes[t.name])
                x = phys if t.format == "linear" else unpack(phys, shapes[t.name], t.format)
                want = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(self.model_dtypes[t.name])
                feeds[t.name] = np.ascontiguousarray(x).astype(want or x.dtype)
            results = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            for o in plan.outputs:
                res = results[o.name].astype(o.dtype)  # the shape the engine computes, like TensorRT
                dst = self._array(o.name, ptrs[o.name], res.shape)
                dst[...] = res if o.format == "linear" else pack(res, o.format)
                if o.data_dependent:
                    self.reported[o.name] = tuple(res.shape)

        if any(o.data_dependent for o in plan.outputs):
            # TensorRT with data-dependent output shapes: enqueueV3 synchronizes, runs, and calls
            # IOutputAllocator.notify_shape before it returns
            self.reported = {}
            FAKE.cudaStreamSynchronize(stream)
            kernel()
        else:
            FAKE.enqueue(stream, _Op(kernel))
        if self.consumed:
            FAKE.cudaEventRecord(self.consumed, stream)

    def close(self) -> None:
        self.closed = True


class FakeBackend(Backend):
    """Registered as backend ``fakecuda`` by the tests; options come from class attributes."""

    name = "fakecuda"
    extra = "dev"
    module = "onnxruntime"
    builds_engine = False
    rank = 0
    devices = ("cuda",)
    options: ClassVar[dict[str, Any]] = {}
    opened: ClassVar[list[FakeCudaEngine]] = []

    @classmethod
    def can_execute_here(cls) -> bool:
        return True

    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Any = None) -> BuildInfo:
        return BuildInfo("fakecuda", None, "0", 0.0)

    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> CudaEngine:
        assert device == "cuda"
        eng = FakeCudaEngine(plan, Path(artifact_dir) / "model.onnx", **self.options)
        FakeBackend.opened.append(eng)
        return eng


class FakeCudaArray:
    """A CUDA array (``__cuda_array_interface__`` v3) over fake device memory, like a cupy array."""

    def __init__(self, fake: FakeCudart, array: np.ndarray, *, offset: int = 0, stream: int | None = None) -> None:
        self.fake = fake
        self.shape, self.dtype = array.shape, array.dtype
        _, self.base = fake.cudaMalloc(array.nbytes + offset)
        self.ptr = self.base + offset
        ctypes.memmove(self.ptr, array.ctypes.data, array.nbytes)
        self.stream = stream

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "strides": None,
                "version": 3, "stream": self.stream}

    def free(self) -> None:
        self.fake.cudaFree(self.base)


# -- artifact folders built by hand ------------------------------------------------------------------
def make_artifact(root: Path, model: Path, recipe: dict[str, Any] | None = None, *, backend: str = "onnxruntime",
                  name: str = "net", lowered: Path | None = None) -> tuple[Path, Plan]:
    """``root/<name>/`` with plan.json (make_plan of the recipe), model.onnx (``lowered`` or the
    original model: fine when the recipe has no I/O contract), report.json and a generated runner.py."""
    import json
    import shutil

    from trtflow.artifact import seal
    from trtflow.plan.planner import make_plan
    from trtflow.recipe.loader import parse_recipe

    src = root / f"{name}_src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "pyproject.toml").write_text("[project]\nname='x'\n")
    shutil.copy(model, src / "model.onnx")
    body = {"model": "model.onnx", "name": name, **(recipe or {})}
    text = json.dumps(body, indent=1)  # JSON is YAML: any tensor name survives quoting
    plan = make_plan(parse_recipe(text, src / "recipe.yaml"))
    art = root / name
    art.mkdir(parents=True, exist_ok=True)
    (art / "plan.json").write_text(plan.to_json())
    shutil.copy(lowered or model, art / "model.onnx")
    write_runner(plan, art)
    seal(art, {"backend": backend})  # report.json with every file's hash, as a build writes it
    return art, plan


def rewrite_plan(art: Path, plan: Plan) -> Plan:
    """Replace an artifact's plan.json (a plan no planner writes: stale, hand-edited) and reseal it."""
    import json

    from trtflow.artifact import seal

    (art / "plan.json").write_text(plan.to_json())
    seal(art, {"backend": json.loads((art / "report.json").read_text())["backend"]})
    return plan


def load_runner(art: Path) -> types.ModuleType:
    """The generated module of artifact ``art``, loaded the documented way (:func:`trtflow.load_runner`:
    verified first); tests reach its other classes (``<X>Outputs``) through the module."""
    import trtflow

    return sys.modules[trtflow.load_runner(art).__module__]


def conv_model(path: Path, *, batch: int | str = 1, channels: int = 3, classes: int = 5, hw: int = 16,
               names: tuple[str, str] = ("image", "logits"), seed: int = 0) -> Path:
    """A small real conv net: Conv(3x3)-Relu-Conv(1x1)-Sigmoid, fixed-seed weights."""
    from helpers.models import make_conv_model

    return make_conv_model(path, batch=batch, channels=channels, classes=classes, hw=hw, names=names, seed=seed,
                           sigmoid=True)


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def mlp_model(path: Path, *, features: int = 64, hidden: int = 32, classes: int = 10, seed: int = 0) -> Path:
    """A tiny MLP like models/tiny_mlp.onnx ([1, 64] -> [1, 10]): the runner's overhead dominates."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, s).astype(np.float32), n)
             for n, s in (("w1", (features, hidden)), ("b1", (hidden,)), ("w2", (hidden, classes)), ("b2", (classes,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


# -- dynamic H/W and data-dependent outputs -------------------------------------------------------------
def strided_conv_model(path: Path, *, batch: int | str = 1, hw: tuple[int | str, int | str] = (32, 32),
                       seed: int = 0) -> Path:
    """Conv(3x3, stride 2, pad 1)-Sigmoid: ``image`` [N, 3, H, W] -> ``logits`` [N, 5, (H-1)//2+1, (W-1)//2+1].
    With symbolic H/W the output's dims are names of their own (``OH``, ``OW``), as exporters write them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (5,)).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Sigmoid", ["c"], ["logits"])]
    out_shape = ([batch, 5, *((d - 1) // 2 + 1 for d in hw if isinstance(d, int))]
                 if all(isinstance(d, int) for d in hw) else [batch, 5, "OH", "OW"])
    graph = helper.make_graph(nodes, "strided", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                              [batch, 3, *hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], [w, b])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def nonzero_model(path: Path, *, batch: int | str = "N", features: int = 8) -> Path:
    """``idx = NonZero(x > 0)``: int64 [2, K], K known only after running (a data-dependent output)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Greater", ["x", "zero"], ["m"]), helper.make_node("NonZero", ["m"], ["idx"])]
    graph = helper.make_graph(nodes, "nonzero", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "K"])],
                              [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def dynamic_hw_artifact(root: Path, recipe: dict[str, Any] | None = None, *, backend: str = "onnxruntime",
                        exprs: bool = True, name: str = "net") -> tuple[Path, Path, Plan]:
    """The strided conv with a dynamic batch, H and W under a SQUARE profile [1..2, 3, 16..64, 16..64]
    (opt 1x3x32x32), planned by make_plan: its output's shape_expr is
    ("image[0]", "5", "(image[2] - 1) // 2 + 1", "(image[3] - 1) // 2 + 1"). ``exprs=False`` strips the
    expressions (a dynamic output whose shape only the engine can tell). Returns (artifact, model, plan)."""
    from dataclasses import replace

    root.mkdir(parents=True, exist_ok=True)
    model = strided_conv_model(root / "dynamic.onnx", batch="N", hw=("H", "W"))
    profile = {"min": [1, 3, 16, 16], "opt": [1, 3, 32, 32], "max": [2, 3, 64, 64]}
    body = dict(recipe or {})
    body["inputs"] = {"image": {**body.get("inputs", {}).get("image", {}), "profile": profile}}
    art, plan = make_artifact(root, model, body, backend=backend, name=name)
    if not exprs:
        plan = rewrite_plan(art, replace(plan, outputs=tuple(replace(o, shape_expr=None) for o in plan.outputs)))
    return art, model, plan


def nonzero_artifact(root: Path, recipe: dict[str, Any] | None = None, *,
                     backend: str = "onnxruntime") -> tuple[Path, Path, Plan]:
    """``nonzero_model`` with x in [1..4, 8] and ``outputs.idx.max_shape: [2, 32]``, planned by make_plan
    (shape_expr ("2", "?"): the buffer is an upper bound)."""
    root.mkdir(parents=True, exist_ok=True)
    model = nonzero_model(root / "nonzero.onnx")
    body = {**(recipe or {}), "inputs": {"x": {"profile": {"min": [1, 8], "opt": [2, 8], "max": [4, 8]}}},
            "outputs": {"idx": {"max_shape": [2, 32]}}}
    art, plan = make_artifact(root, model, body, backend=backend, name="nz")
    return art, model, plan


# The strategy x topology matrix both the fake-runtime tests and the GPU suite run.
STRATEGIES = list(MEMORY_STRATEGIES)
TOPOLOGIES: dict[str, dict[str, Any]] = {
    "sync": {"topology": "sync"},
    "async": {"topology": "async"},
    "pipelined3": {"topology": "pipelined", "depth": 3},
    "graph": {"topology": "sync", "cuda_graph": True},
    "graph_pipelined2": {"topology": "pipelined", "depth": 2, "cuda_graph": True},
}


def awaits_in_order(runner: Any, n: int, x: Callable[[int], np.ndarray],
                    cancel: tuple[int, ...] = ()) -> tuple[list[int], list[Any]]:
    """``n`` concurrent ``await runner.infer(x=x(i))`` on one event loop, the requests in ``cancel``
    cancelled once every one has started: the order they completed in, and per request a copy of its
    ``y`` (read before the next await) or its exception (CancelledError)."""
    import asyncio

    order: list[int] = []

    async def main() -> list[Any]:
        async def one(i: int) -> np.ndarray:
            y = (await runner.infer(x=x(i))).y.copy()
            order.append(i)
            return y

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        await asyncio.sleep(0)  # every task started: in flight or queued
        for i in cancel:
            tasks[i].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    return order, asyncio.run(main())


def install_with_backend(monkeypatch: Any, seed: int, *, cls: type[FakeCudart] | None = None,
                         count: bool = True) -> FakeCudart:
    """The fake CUDA runtime plus the ``fakecuda`` backend registered for runners (body of the tests'
    fixture; ``cls``/``count`` as for :func:`install`: scripts/aio_overhead.py uses NullCudart uncounted)."""
    from trtflow.backends import base

    f = install(monkeypatch, seed=seed, cls=cls, count=count)
    monkeypatch.setattr(sys.modules[__name__], "FAKE", f)
    monkeypatch.setitem(base._REGISTRY, "fakecuda", "helpers.runtime:FakeBackend")
    monkeypatch.setattr(FakeBackend, "options", {})
    monkeypatch.setattr(FakeBackend, "opened", [])
    return f
