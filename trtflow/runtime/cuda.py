"""The only module of trtflow that calls cuda-bindings (imported lazily, on first use).

Thin, checked wrappers: every handle is a plain ``int`` (a cudaStream_t, cudaEvent_t, pointer...),
every failing call raises :class:`~trtflow.errors.CudaError` naming the call and the CUDA error
(``cudaGetErrorName``). :func:`cuda_available` never raises.

A live-handle count per kind (:func:`live_handles`) lets tests prove that ``close()`` released
everything it allocated.

The calls a request makes (copies, event records and waits, stream synchronize, graph launch) are
written out lean: one binding call, one compare with ``cudaSuccess``, the error path out of line.
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import numpy as np

from trtflow.errors import BackendMissing, CudaError

HostAllocKind = Literal["default", "mapped", "write_combined", "portable"]
CopyKind = Literal["h2d", "d2h", "d2d", "default"]

# The legacy default stream's handle in the CUDA runtime (also the value __cuda_array_interface__ v3 uses).
STREAM_LEGACY = 1

_rt: Any = None
_lock = threading.Lock()
_live: Counter[str] = Counter()
_kinds: tuple[Any, dict[str, Any]] | None = None  # (runtime module, copy kind name -> cudaMemcpyKind)


def _runtime() -> Any:
    """``cuda.bindings.runtime``, imported once; BackendMissing with the pip extra if absent."""
    global _rt
    if _rt is None:
        try:
            from cuda.bindings import runtime
        except ImportError:
            raise BackendMissing("the CUDA runtime needs cuda-bindings, which is not installed",
                                 hint="pip install 'trtflow[cuda]'") from None
        _rt = runtime
    return _rt


def _reset_for_tests() -> None:
    """Forget the imported module (tests swap in a fake ``cuda.bindings.runtime``)."""
    global _rt, _kinds
    _rt = None
    _kinds = None
    _live.clear()


def _error_name(rt: Any, err: Any) -> str:
    try:
        name = rt.cudaGetErrorName(err)[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - never mask the original failure with a formatting problem
        return str(err)


def _check(call: str, result: Any, *, hint: str | None = None) -> Any:
    """Unpack ``(err, *values)``; raise CudaError naming ``call`` unless err is cudaSuccess."""
    rt = _runtime()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != rt.cudaError_t.cudaSuccess:
        raise CudaError(f"{call} failed: {_error_name(rt, err)}", hint=hint)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _fail(call: str, rt: Any, err: Any) -> NoReturn:
    raise CudaError(f"{call} failed: {_error_name(rt, err)}")


def _track(kind: str, delta: int) -> None:
    with _lock:
        _live[kind] += delta


def live_handles() -> dict[str, int]:
    """How many allocations/handles of each kind trtflow holds now (device, host, registered, ...)."""
    with _lock:
        return {k: v for k, v in _live.items() if v}


# -- availability and devices ----------------------------------------------------------------------
def cuda_available() -> bool:
    """True when cuda-bindings imports and at least one CUDA device is visible. Never raises."""
    try:
        rt = _runtime()
        err, count = rt.cudaGetDeviceCount()
        return bool(err == rt.cudaError_t.cudaSuccess and count > 0)
    except Exception:  # noqa: BLE001 - a broken driver install answers like "no GPU"
        return False


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int


def device_count() -> int:
    return int(_check("cudaGetDeviceCount", _runtime().cudaGetDeviceCount()))


def current_device() -> int:
    """The calling thread's current device (lean: runners on a chosen device ask on every call)."""
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaGetDevice()
    if res[0] != rt.cudaError_t.cudaSuccess:
        _fail("cudaGetDevice", rt, res[0])
    return int(res[1])


def set_device(index: int) -> None:
    """Make device ``index`` (its primary context) current for the calling thread."""
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaSetDevice(index)
    err = res[0] if type(res) is tuple else res
    if err != rt.cudaError_t.cudaSuccess:
        _fail(f"cudaSetDevice({index})", rt, err)


def pci_bus_id(index: int) -> str:
    """PCI address of device ``index`` as sysfs spells it, e.g. ``0000:1b:00.0`` (lower case)."""
    raw = _check("cudaDeviceGetPCIBusId", _runtime().cudaDeviceGetPCIBusId(32, index))
    text = bytes(raw).split(b"\0", 1)[0].decode() if isinstance(raw, (bytes, bytearray)) else str(raw)
    return text.strip().lower()


def device_properties(index: int | None = None) -> DeviceInfo:
    idx = current_device() if index is None else index
    prop = _check("cudaGetDeviceProperties", _runtime().cudaGetDeviceProperties(idx))
    raw = prop.name
    name = bytes(raw).split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return DeviceInfo(idx, name, (int(prop.major), int(prop.minor)), int(prop.totalGlobalMem))


def driver_version() -> int:
    """The CUDA driver's version as CUDA encodes it (1000 * major + 10 * minor, e.g. 13020)."""
    return int(_check("cudaDriverGetVersion", _runtime().cudaDriverGetVersion()))


def mem_get_info() -> tuple[int, int]:
    """(free, total) device memory in bytes."""
    free, total = _check("cudaMemGetInfo", _runtime().cudaMemGetInfo())
    return int(free), int(total)


def get_last_error() -> str | None:
    """Return and clear the last sticky-free runtime error; None when there was none."""
    rt = _runtime()
    res = rt.cudaGetLastError()
    err = res[0] if isinstance(res, tuple) else res
    return None if err == rt.cudaError_t.cudaSuccess else _error_name(rt, err)


def device_synchronize() -> None:
    _check("cudaDeviceSynchronize", _runtime().cudaDeviceSynchronize())


# -- device memory ---------------------------------------------------------------------------------
def malloc(nbytes: int) -> int:
    ptr = _check("cudaMalloc", _runtime().cudaMalloc(max(int(nbytes), 1)),
                 hint="the GPU is out of memory: close other runners or lower max shapes")
    _track("device", 1)
    return int(ptr)


def free(ptr: int) -> None:
    _check("cudaFree", _runtime().cudaFree(ptr))
    _track("device", -1)


def memset_async(ptr: int, value: int, nbytes: int, *, stream: int) -> None:
    _check("cudaMemsetAsync", _runtime().cudaMemsetAsync(ptr, value, nbytes, stream))


# -- host memory -----------------------------------------------------------------------------------
def _host_alloc_flag(rt: Any, kind: HostAllocKind) -> int:
    return int({
        "default": rt.cudaHostAllocDefault,
        "mapped": rt.cudaHostAllocMapped,
        "write_combined": rt.cudaHostAllocWriteCombined,
        "portable": rt.cudaHostAllocPortable,
    }[kind])


def host_alloc(nbytes: int, *kinds: HostAllocKind) -> int:
    """Page-locked host memory; ``kinds`` are OR-ed (e.g. ``host_alloc(n, "mapped")``)."""
    rt = _runtime()
    flags = 0
    for k in kinds or ("default",):
        flags |= _host_alloc_flag(rt, k)
    ptr = _check("cudaHostAlloc", rt.cudaHostAlloc(max(int(nbytes), 1), flags),
                 hint="page-locked memory is limited by the OS (ulimit -l) and physical RAM")
    _track("host", 1)
    return int(ptr)


def free_host(ptr: int) -> None:
    _check("cudaFreeHost", _runtime().cudaFreeHost(ptr))
    _track("host", -1)


def host_register(ptr: int, nbytes: int) -> None:
    """Page-lock an existing host range in place (``cudaHostRegisterDefault``)."""
    rt = _runtime()
    _check("cudaHostRegister", rt.cudaHostRegister(ptr, nbytes, rt.cudaHostRegisterDefault))
    _track("registered", 1)


def host_register_or_shared(ptr: int, nbytes: int) -> bool:
    """Register like :func:`host_register`; False (no error) if the range is already registered."""
    rt = _runtime()
    res = rt.cudaHostRegister(ptr, nbytes, rt.cudaHostRegisterDefault)
    err = res[0] if isinstance(res, tuple) else res
    if err == rt.cudaError_t.cudaErrorHostMemoryAlreadyRegistered:
        get_last_error()
        return False
    _check("cudaHostRegister", res)
    _track("registered", 1)
    return True


def host_unregister(ptr: int) -> None:
    _check("cudaHostUnregister", _runtime().cudaHostUnregister(ptr))
    _track("registered", -1)


def host_get_device_pointer(ptr: int) -> int:
    return int(_check("cudaHostGetDevicePointer", _runtime().cudaHostGetDevicePointer(ptr, 0)))


def host_array(ptr: int, nbytes: int) -> np.ndarray:
    """A writable uint8 numpy view of ``nbytes`` at host address ``ptr`` (no ownership)."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    buf = (ctypes.c_uint8 * nbytes).from_address(ptr)
    return np.frombuffer(buf, dtype=np.uint8)  # type: ignore[call-overload]


# -- copies ----------------------------------------------------------------------------------------
def _kind(rt: Any, kind: CopyKind) -> Any:
    global _kinds
    cached = _kinds
    if cached is None or cached[0] is not rt:
        k = rt.cudaMemcpyKind
        cached = _kinds = (rt, {"h2d": k.cudaMemcpyHostToDevice, "d2h": k.cudaMemcpyDeviceToHost,
                                "d2d": k.cudaMemcpyDeviceToDevice, "default": k.cudaMemcpyDefault})
    return cached[1][kind]


def memcpy_async(dst: int, src: int, nbytes: int, kind: CopyKind, *, stream: int) -> None:
    if nbytes <= 0:
        return
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaMemcpyAsync(dst, src, nbytes, _kind(rt, kind), stream)
    err = res[0] if type(res) is tuple else res
    if err != rt.cudaError_t.cudaSuccess:
        _fail(f"cudaMemcpyAsync({kind})", rt, err)


def memcpy(dst: int, src: int, nbytes: int, kind: CopyKind) -> None:
    """Synchronous copy (blocks the host until done)."""
    if nbytes <= 0:
        return
    rt = _runtime()
    _check(f"cudaMemcpy({kind})", rt.cudaMemcpy(dst, src, nbytes, _kind(rt, kind)))


# -- streams and events ----------------------------------------------------------------------------
def stream_create(*, non_blocking: bool = True) -> int:
    rt = _runtime()
    flags = rt.cudaStreamNonBlocking if non_blocking else rt.cudaStreamDefault
    s = _check("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(flags))
    _track("stream", 1)
    return int(s)


def stream_destroy(stream: int) -> None:
    _check("cudaStreamDestroy", _runtime().cudaStreamDestroy(stream))
    _track("stream", -1)


def stream_synchronize(stream: int) -> None:
    """Wait for all work on ``stream``. How the host waits is the device's schedule flag (spin by default
    with few CUDA contexts per core), not the caller's choice: where the host should sleep, record an event
    made with ``blocking=True`` and :func:`event_synchronize` it."""
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaStreamSynchronize(stream)
    err = res[0] if type(res) is tuple else res
    if err != rt.cudaError_t.cudaSuccess:
        _fail("cudaStreamSynchronize", rt, err)


def stream_query(stream: int) -> bool:
    """True when all work on ``stream`` has completed."""
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaStreamQuery(stream)
    err = res[0] if isinstance(res, tuple) else res
    if err == rt.cudaError_t.cudaErrorNotReady:
        return False
    _check("cudaStreamQuery", res)
    return True


def stream_wait_event(stream: int, event: int) -> None:
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaStreamWaitEvent(stream, event, 0)
    err = res[0] if type(res) is tuple else res
    if err != rt.cudaError_t.cudaSuccess:
        _fail("cudaStreamWaitEvent", rt, err)


def event_create(*, timing: bool = False, blocking: bool = False) -> int:
    """A CUDA event. ``blocking`` (``cudaEventBlockingSync``): a host thread in :func:`event_synchronize`
    on it sleeps until the GPU signals completion instead of busy-waiting on a CPU core (the default of
    events; trtexec creates its events blocking unless ``--useSpinWait``). Costs a wake-up on completion."""
    rt = _runtime()
    flags = int(rt.cudaEventDefault if timing else rt.cudaEventDisableTiming)
    if blocking:
        flags |= int(rt.cudaEventBlockingSync)
    ev = _check("cudaEventCreateWithFlags", rt.cudaEventCreateWithFlags(flags))
    _track("event", 1)
    return int(ev)


def event_destroy(event: int) -> None:
    _check("cudaEventDestroy", _runtime().cudaEventDestroy(event))
    _track("event", -1)


def event_record(event: int, *, stream: int) -> None:
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaEventRecord(event, stream)
    err = res[0] if type(res) is tuple else res
    if err != rt.cudaError_t.cudaSuccess:
        _fail("cudaEventRecord", rt, err)


def event_synchronize(event: int) -> None:
    """Wait for ``event``: sleeping if it was made with ``blocking=True``, else spinning on a CPU core."""
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaEventSynchronize(event)
    err = res[0] if type(res) is tuple else res
    if err != rt.cudaError_t.cudaSuccess:
        _fail("cudaEventSynchronize", rt, err)


def event_query(event: int) -> bool:
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaEventQuery(event)
    err = res[0] if isinstance(res, tuple) else res
    if err == rt.cudaError_t.cudaErrorNotReady:
        return False
    _check("cudaEventQuery", res)
    return True


def event_elapsed_ms(start: int, end: int) -> float:
    return float(_check("cudaEventElapsedTime", _runtime().cudaEventElapsedTime(start, end)))


# -- CUDA graphs -----------------------------------------------------------------------------------
def begin_capture(stream: int) -> None:
    """Start capturing ``stream`` (thread-local mode: other threads' CUDA calls are unaffected)."""
    rt = _runtime()
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    _check("cudaStreamBeginCapture", rt.cudaStreamBeginCapture(stream, mode))


def end_capture(stream: int) -> int:
    g = _check("cudaStreamEndCapture", _runtime().cudaStreamEndCapture(stream))
    _track("graph", 1)
    return int(g)


def abort_capture(stream: int) -> str | None:
    """End a capture that went wrong, discard its graph; return the error it left, if any."""
    rt = _runtime()
    res = rt.cudaStreamEndCapture(stream)
    err = res[0] if isinstance(res, tuple) else res
    if err == rt.cudaError_t.cudaSuccess and len(res) > 1 and int(res[1]):
        rt.cudaGraphDestroy(res[1])
    return get_last_error() or (None if err == rt.cudaError_t.cudaSuccess else _error_name(rt, err))


def is_capturing(stream: int) -> bool:
    rt = _runtime()
    status = _check("cudaStreamIsCapturing", rt.cudaStreamIsCapturing(stream))
    return bool(status != rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)


def graph_instantiate(graph: int) -> int:
    rt = _runtime()
    try:
        res = rt.cudaGraphInstantiate(graph, 0)
    except TypeError:  # older bindings spell it with an explicit flags entry point
        res = rt.cudaGraphInstantiateWithFlags(graph, 0)
    ex = _check("cudaGraphInstantiate", res)
    _track("graph_exec", 1)
    return int(ex)


def graph_launch(graph_exec: int, *, stream: int) -> None:
    rt = _rt if _rt is not None else _runtime()
    res = rt.cudaGraphLaunch(graph_exec, stream)
    err = res[0] if type(res) is tuple else res
    if err != rt.cudaError_t.cudaSuccess:
        _fail("cudaGraphLaunch", rt, err)


def graph_destroy(graph: int) -> None:
    _check("cudaGraphDestroy", _runtime().cudaGraphDestroy(graph))
    _track("graph", -1)


def graph_exec_destroy(graph_exec: int) -> None:
    _check("cudaGraphExecDestroy", _runtime().cudaGraphExecDestroy(graph_exec))
    _track("graph_exec", -1)


def device_compute_capability(device: int = 0) -> tuple[int, int] | None:
    """(major, minor) of CUDA device ``device``; None without cuda-bindings or such a device. Never raises."""
    try:
        if not cuda_available() or device >= device_count():
            return None
        return device_properties(device).compute_capability
    except Exception:  # noqa: BLE001 - a broken driver install answers like "no GPU"
        return None
