"""Memory strategies: where one engine I/O tensor's bytes live and how they reach the engine.

One small interface, :class:`TensorMemory`, and one small class per strategy:

| strategy         | host side                               | device side                  | per request                  |
|------------------|-----------------------------------------|------------------------------|------------------------------|
| ``pageable``     | the caller's numpy array, as is         | cudaMalloc buffer            | cudaMemcpyAsync (pageable)   |
| ``pinned``       | runner-owned cudaHostAlloc staging      | cudaMalloc buffer            | host copy into staging + DMA |
| ``write_combined`` | pinned + cudaHostAllocWriteCombined (inputs only) | cudaMalloc buffer | as pinned                 |
| ``registered``   | the caller's own buffer, cudaHostRegister'ed in place | cudaMalloc buffer | DMA straight from it     |
| ``mapped``       | cudaHostAllocMapped staging             | the same memory (zero copy)  | the engine reads/writes PCIe |
| ``device``       | none                                    | cudaMalloc buffer, or the caller's CUDA array (zero copy) | none |

Every buffer is allocated once at ``max_shape`` (``max_bytes``, vectorized-format padding included).
For a vectorized format (``hwc8``, ``chw32``...) host staging holds the packed physical layout:
:func:`trtflow.plan.formats.pack` / ``unpack`` run on the host.

The split of a request into :meth:`TensorMemory.prepare` (host work, outside any CUDA graph) and
:meth:`~TensorMemory.enqueue_in` / :meth:`~TensorMemory.enqueue_out` (stream work, capturable) is
what lets the runner capture copy-in + enqueue + copy-out into one CUDA graph.

:class:`HostMemory` is the CPU fallback: plain numpy arrays whatever the declared strategy.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import math
import os
import threading
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from trtflow.errors import InputError
from trtflow.plan.formats import FORMATS, nbytes, pack, physical_shape, unpack
from trtflow.plan.model import MEMORY_STRATEGIES, TensorPlan
from trtflow.runtime import cuda

ALIGNMENT = 256  # TensorRT requires >= 256-byte aligned I/O addresses
PAGE = 4096
_CACHE = 32  # views / byte counts cached per memory, by shape (dynamic shapes: cleared when full)



def np_dtype(name: str) -> np.dtype[Any]:
    """numpy dtype of a plan dtype name (bfloat16 through ml_dtypes when installed)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise InputError("bfloat16 tensors need the ml_dtypes package on the host",
                             hint="pip install ml_dtypes") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def aligned_empty(n: int, align: int = PAGE) -> np.ndarray:
    """A uint8 numpy buffer of ``n`` bytes starting on an ``align`` boundary (own pages for registering)."""
    raw = np.empty(n + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n]


_c_byte = ctypes.c_byte


def data_ptr(array: np.ndarray) -> int:
    """Address of ``array``'s first element (a writable C-contiguous array exports its buffer to
    ctypes in a fraction of the time ``__array_interface__`` takes; anything else takes that)."""
    try:
        return ctypes.addressof(_c_byte.from_buffer(array))  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):  # read-only, non-contiguous or empty
        return int(array.__array_interface__["data"][0])


def _logical(flat: np.ndarray, shape: tuple[int, ...], dtype: np.dtype[Any], fmt: str) -> np.ndarray:
    """Logical view (``shape``) of a flat uint8 buffer holding ``fmt``'s physical layout."""
    phys = physical_shape(shape, fmt)
    n = math.prod(phys) * dtype.itemsize
    arr = flat[:n].view(dtype).reshape(phys)
    return arr if fmt == "linear" else unpack(arr, shape, fmt)


def _physical(flat: np.ndarray, shape: tuple[int, ...], dtype: np.dtype[Any], fmt: str) -> np.ndarray:
    phys = physical_shape(shape, fmt)
    return flat[:math.prod(phys) * dtype.itemsize].view(dtype).reshape(phys)


# -- host copies: large ones split over threads (numpy releases the GIL while copying) ---------------
PARALLEL_MIN_BYTES = 4 << 20
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_WORKERS = max(1, min(8, (os.cpu_count() or 1)))  # os.cpu_count() can cost tens of us: asked once


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="trtflow-copy")
        return _pool


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for C-contiguous arrays of one dtype and shape; large copies run on several
    threads (one thread copies host memory at ~5-10 GB/s, far below what pinned DMA moves)."""
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"copy_into: {src.dtype}{list(src.shape)} into {dst.dtype}{list(dst.shape)}")
    n = dst.nbytes
    if n < PARALLEL_MIN_BYTES:  # small: one direct copy on this thread (same dtype and shape: no cast)
        dst[...] = src
        return
    parts = min(_WORKERS, n // (PARALLEL_MIN_BYTES // 2))
    if parts < 2 or not (dst.flags.c_contiguous and src.flags.c_contiguous):
        np.copyto(dst, src, casting="no")
        return
    d, s = dst.reshape(-1).view(np.uint8), src.reshape(-1).view(np.uint8)
    step = -(-n // parts)
    step += (-step) % 64  # cache-line aligned chunks
    futures = [_executor().submit(np.copyto, d[i:i + step], s[i:i + step]) for i in range(0, n, step)]
    for f in futures:
        f.result()


def owned_copy(view: np.ndarray) -> np.ndarray:
    """A new array holding ``view`` (parallel for large contiguous views)."""
    if not view.flags.c_contiguous or view.nbytes < PARALLEL_MIN_BYTES:
        return np.array(view)
    out = np.empty_like(view)
    copy_into(out, view)
    return out


def _is_staging(array: Any, host: np.ndarray, ptr: int) -> bool:
    """Whether ``array`` starts at ``ptr``, the start of the runner-owned host buffer ``host``.

    A view of ``host`` has it as its ``base`` (numpy collapses view chains), so the caller's own
    arrays are told apart without asking for their address; a view of ``host`` is checked exactly.
    Missing a staging view only costs a copy onto itself.
    """
    if array is not host and getattr(array, "base", None) is not host:
        return False
    return data_ptr(array) == ptr


# -- device arrays (interop with torch / cupy through __cuda_array_interface__) --------------------
@dataclass(frozen=True)
class CudaArrayInfo:
    """What ``__cuda_array_interface__`` says about an object."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    contiguous: bool
    stream: int | None  # producer stream to order after; None: already complete / unknown


def cuda_array_info(obj: Any) -> CudaArrayInfo | None:
    """Parse ``obj.__cuda_array_interface__`` (v2/v3); None when the object has none."""
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        return None
    shape = tuple(int(d) for d in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    strides = cai.get("strides")
    contiguous = True
    if strides is not None:
        expect, acc = [], dtype.itemsize
        for d in reversed(shape):
            expect.append(acc)
            acc *= d
        contiguous = all(s == e for s, e, d in zip(strides, reversed(expect), shape) if d > 1)
    if cai.get("mask") is not None:
        contiguous = False
    stream = cai.get("stream")
    if stream is None and cai.get("version", 0) < 3:
        stream = _torch_stream(obj)
    return CudaArrayInfo(int(cai["data"][0]), shape, dtype, contiguous, int(stream) if stream else None)


def _torch_stream(obj: Any) -> int | None:
    """torch publishes CAI v2 without a stream: order after its current stream instead."""
    if not type(obj).__module__.startswith("torch"):
        return cuda.STREAM_LEGACY  # conservative: everything on the legacy default stream
    import torch

    s = int(torch.cuda.current_stream(obj.device).cuda_stream)
    return s or cuda.STREAM_LEGACY


class DeviceArray:
    """A device buffer region shaped as an array; exported through ``__cuda_array_interface__`` v3.

    Returned for ``device`` outputs: ``torch.as_tensor(arr, device="cuda")``, ``cupy.asarray(arr)`` or
    ``torch.from_dlpack(arr)`` wrap it without a copy. It borrows the runner's buffer (valid until the buffer set is reused)
    unless made by :meth:`copy`, which owns a fresh allocation.
    """

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype[Any], *, owner: Any = None,
                 owned: bool = False) -> None:
        self.ptr, self.shape, self.dtype = int(ptr), tuple(shape), np.dtype(dtype)
        self._owner = owner
        if owned:
            weakref.finalize(self, _free_quietly, self.ptr)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "strides": None,
                "version": 3, "stream": None}  # the runner synchronized before handing it out

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, cuda.current_device())  # kDLCUDA

    def __dlpack__(self, *, stream: Any = None, **kwargs: Any) -> Any:
        """DLPack export (``torch.from_dlpack(arr)``, ``cupy.from_dlpack(arr)``, ...), zero-copy.

        The capsule is made by torch or cupy from ``__cuda_array_interface__`` (the same memory; their
        tensor keeps this array alive). The data is complete when the runner hands the array out, so no
        stream ordering is needed.
        """
        try:
            import torch

            return torch.as_tensor(self, device="cuda").__dlpack__(**kwargs)
        except ImportError:
            pass
        try:
            import cupy

            return cupy.asarray(self).__dlpack__(**kwargs)
        except ImportError:
            raise InputError("DLPack export of a DeviceArray needs torch or cupy",
                             hint="or consume __cuda_array_interface__ directly") from None

    def copy(self) -> DeviceArray:
        """A device copy that owns its memory (freed when garbage-collected)."""
        ptr = cuda.malloc(self.nbytes)
        cuda.memcpy(ptr, self.ptr, self.nbytes, "d2d")
        return DeviceArray(ptr, self.shape, self.dtype, owned=True)

    def numpy(self) -> np.ndarray:
        """Synchronous copy to a new host array."""
        out = np.empty(self.shape, dtype=self.dtype)
        cuda.memcpy(data_ptr(out), self.ptr, self.nbytes, "d2h")
        return out

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, ptr=0x{self.ptr:x})"


def _free_quietly(ptr: int) -> None:
    with contextlib.suppress(Exception):  # interpreter shutdown: the context is going away anyway
        cuda.free(ptr)


# -- page-locking the caller's buffers, reference counted per runner -------------------------------
class HostRegistry:
    """cudaHostRegister'ed ranges of one runner, by (ptr, nbytes), reference counted.

    Holds a reference to each registered array so it cannot be freed while page-locked. A range that
    something else already registered is used as is and never unregistered by us.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int], list[Any]] = {}  # key -> [refcount, array, owned]

    def acquire(self, array: np.ndarray) -> tuple[int, int]:
        key = (data_ptr(array), int(array.nbytes))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                owned = cuda.host_register_or_shared(key[0], max(key[1], 1))
                self._entries[key] = [1, array, owned]
            else:
                entry[0] += 1
        return key

    def release(self, key: tuple[int, int] | None) -> None:
        if key is None:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] > 0:
                return
            del self._entries[key]
        if entry[2]:
            cuda.host_unregister(key[0])

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            entries, self._entries = self._entries, {}
        for key, (_, _, owned) in entries.items():
            if owned:
                cuda.host_unregister(key[0])


# -- the interface -----------------------------------------------------------------------------------
class TensorMemory(ABC):
    """The memory of one engine I/O tensor in one buffer set.

    ``prepare`` does the host work of a request (copy into staging, pack, register, bind a device
    array); ``enqueue_in`` / ``enqueue_out`` put the copies on a stream; ``result`` returns the output
    after the runner synchronized. Everything that takes ``stream`` only enqueues.
    """

    strategy: ClassVar[str]
    #: the input copy stays eager (enqueued before a graph launch, never captured): for memory the
    #: caller owns, whose address changes or which may be unregistered while a graph still exists
    outside_graph: bool = False
    #: :attr:`device_ptr` and :meth:`graph_key` never change between construction and close, so the
    #: runner need not ask again on every request (False: asked on every request)
    fixed_addresses: bool = False

    def __init__(self, tensor: TensorPlan, *, fmt: str | None = None) -> None:
        self.tensor = tensor
        self.name = tensor.name
        self.fmt = fmt or tensor.format
        self.dtype = np_dtype(tensor.dtype)
        self.nbytes = nbytes(tensor.max_shape, tensor.dtype, self.fmt)
        self._closed = False
        self._views: dict[tuple[int, ...], np.ndarray] = {}  # linear host views by shape (never handed out)
        self._sizes: dict[tuple[int, ...], int] = {}

    @property
    def is_input(self) -> bool:
        return self.tensor.role == "input"

    def bytes_for(self, shape: tuple[int, ...]) -> int:
        n = self._sizes.get(shape)
        if n is None:
            if len(self._sizes) >= _CACHE:
                self._sizes.clear()
            n = self._sizes[shape] = nbytes(shape, self.tensor.dtype, self.fmt)
        return n

    def _view(self, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Cached logical view of ``flat`` (linear format) at ``shape``; hand out ``.view()`` of it."""
        v = self._views.get(shape)
        if v is None:
            if len(self._views) >= _CACHE:
                self._views.clear()
            v = self._views[shape] = _logical(flat, shape, self.dtype, "linear")
        return v

    @property
    @abstractmethod
    def device_ptr(self) -> int:
        """Address the engine binds for this tensor now."""

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """Logical host view at ``shape`` callers may write inputs into / read outputs from, if any."""
        return None

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        """Host-side part of staging an input (never captured)."""

    def enqueue_in(self, shape: tuple[int, ...], *, stream: int) -> None:
        """Enqueue the copy that makes the input visible to the engine (no-op for zero-copy)."""

    def enqueue_out(self, shape: tuple[int, ...], *, stream: int) -> None:
        """Enqueue the copy that brings the output to its host side (no-op for zero-copy)."""

    @abstractmethod
    def result(self, shape: tuple[int, ...], *, copy: bool) -> Any:
        """The output at ``shape`` (valid after the runner synchronized)."""

    def graph_key(self) -> tuple[int, ...]:
        """Addresses a captured graph bakes in; a change forces a recapture."""
        return (self.device_ptr,)

    def fill(self, value: float, *, stream: int) -> None:
        """Poison the buffers (tests: catch outputs the engine never wrote)."""

    def close(self) -> None:
        """Release what this memory owns; idempotent."""
        if not self._closed:
            self._closed = True
            self._views.clear()
            self._release()

    def _release(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.nbytes} B, {self.fmt})"


def _fill_host(flat: np.ndarray | None, dtype: np.dtype[Any], value: float) -> None:
    """Floats get ``value``; integer tensors get all-ones bytes (an unlikely engine result)."""
    if flat is None or not flat.size:
        return
    if dtype.kind == "f":
        n = flat.size // dtype.itemsize
        flat[:n * dtype.itemsize].view(dtype)[...] = value
    else:
        flat[...] = 0xFF


def _host_result(mem: TensorMemory, host: np.ndarray, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
    """The output of ``shape`` in host buffer ``host``: unpacked from a vectorized format, or a view."""
    if mem.fmt != "linear":
        view = _logical(host, shape, mem.dtype, mem.fmt)
        return owned_copy(view) if copy else view
    view = mem._view(host, shape)
    return owned_copy(view) if copy else view.view()


class _DeviceBuffer:
    def __init__(self, n: int) -> None:
        self.ptr = cuda.malloc(n)
        self.n = n

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda.free(ptr)


def _fill_device(ptr: int, n: int, stream: int) -> None:
    """All-ones bytes: NaN in every float format, -1 / 255 in integer ones."""
    if ptr and n:
        cuda.memset_async(ptr, 0xFF, n, stream=stream)


# -- pinned / write-combined: runner-owned page-locked staging ----------------------------------------
class PinnedMemory(TensorMemory):
    strategy = "pinned"
    fixed_addresses = True
    _alloc_kinds: tuple[cuda.HostAllocKind, ...] = ("default",)

    def __init__(self, tensor: TensorPlan, *, fmt: str | None = None) -> None:
        super().__init__(tensor, fmt=fmt)
        self._host_ptr = cuda.host_alloc(self.nbytes, *self._alloc_kinds)
        try:
            self._host = cuda.host_array(self._host_ptr, self.nbytes)
            self._dev = _DeviceBuffer(self.nbytes)
        except BaseException:
            cuda.free_host(self._host_ptr)
            raise

    @property
    def device_ptr(self) -> int:
        return self._dev.ptr

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return self._view(self._host, shape).view() if self.fmt == "linear" else None

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        if self.fmt == "linear":
            if _is_staging(array, self._host, self._host_ptr):
                return  # the caller wrote into the staging view: nothing to copy
            copy_into(self._view(self._host, shape), array)
        else:
            _physical(self._host, shape, self.dtype, self.fmt)[...] = pack(array, self.fmt)

    def enqueue_in(self, shape: tuple[int, ...], *, stream: int) -> None:
        cuda.memcpy_async(self._dev.ptr, self._host_ptr, self.bytes_for(shape), "h2d", stream=stream)

    def enqueue_out(self, shape: tuple[int, ...], *, stream: int) -> None:
        cuda.memcpy_async(self._host_ptr, self._dev.ptr, self.bytes_for(shape), "d2h", stream=stream)

    def result(self, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        return _host_result(self, self._host, shape, copy=copy)

    def graph_key(self) -> tuple[int, ...]:
        return (self._dev.ptr, self._host_ptr)

    def fill(self, value: float, *, stream: int) -> None:
        _fill_device(self._dev.ptr, self.nbytes, stream)
        if self.strategy != "write_combined":
            _fill_host(self._host, self.dtype, value)

    def _release(self) -> None:
        self._dev.free()
        cuda.free_host(self._host_ptr)
        self._host = np.empty(0, dtype=np.uint8)


class WriteCombinedMemory(PinnedMemory):
    """Pinned + write-combined: fast H2D, very slow CPU reads. Inputs only."""

    strategy = "write_combined"
    _alloc_kinds = ("write_combined",)

    def __init__(self, tensor: TensorPlan, *, fmt: str | None = None) -> None:
        if tensor.role != "input":
            raise InputError(f"tensor {tensor.name!r}: write_combined memory is for inputs only "
                             "(CPU reads of write-combined memory are uncached)", hint="use pinned for outputs")
        super().__init__(tensor, fmt=fmt)


# -- pageable: the caller's own array, copied as is (the baseline) ---------------------------------------
class PageableMemory(TensorMemory):
    """Ordinary (pageable) host memory: the driver stages every copy, synchronously.

    With ``staged=True`` (CUDA graphs: pageable copies cannot be captured) a pinned bounce buffer
    is used instead, and a host copy into it replaces the pageable DMA.
    """

    strategy = "pageable"
    fixed_addresses = True

    def __init__(self, tensor: TensorPlan, *, fmt: str | None = None, staged: bool = False) -> None:
        super().__init__(tensor, fmt=fmt)
        self.staged = staged
        self._src: np.ndarray | None = None
        self._host_ptr = cuda.host_alloc(self.nbytes) if staged else 0
        try:
            if staged:
                self._host = cuda.host_array(self._host_ptr, self.nbytes)
            else:  # outputs land here; inputs only use it to pack vectorized formats
                self._host = aligned_empty(self.nbytes, ALIGNMENT)
            self._host_addr = data_ptr(self._host)
            self._dev = _DeviceBuffer(self.nbytes)
        except BaseException:
            if staged:
                cuda.free_host(self._host_ptr)
            raise

    @property
    def device_ptr(self) -> int:
        return self._dev.ptr

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self.is_input and not self.staged:
            return None  # the caller's own array is the input
        return self._view(self._host, shape).view() if self.fmt == "linear" else None

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        if self.fmt != "linear":
            _physical(self._host, shape, self.dtype, self.fmt)[...] = pack(array, self.fmt)
            self._src = self._host
        elif self.staged:
            if not _is_staging(array, self._host, self._host_addr):
                copy_into(self._view(self._host, shape), array)
            self._src = self._host
        else:
            self._src = array  # kept alive until the copy is enqueued (pageable copies stage it at once)

    def enqueue_in(self, shape: tuple[int, ...], *, stream: int) -> None:
        src = self._src if self._src is not None else self._host
        ptr = self._host_addr if src is self._host else data_ptr(src)
        cuda.memcpy_async(self._dev.ptr, ptr, self.bytes_for(shape), "h2d", stream=stream)
        if not self.staged:
            self._src = None

    def enqueue_out(self, shape: tuple[int, ...], *, stream: int) -> None:
        cuda.memcpy_async(self._host_addr, self._dev.ptr, self.bytes_for(shape), "d2h", stream=stream)

    def result(self, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        return _host_result(self, self._host, shape, copy=copy)

    def graph_key(self) -> tuple[int, ...]:
        return (self._dev.ptr, self._host_addr)

    def fill(self, value: float, *, stream: int) -> None:
        _fill_device(self._dev.ptr, self.nbytes, stream)
        if not self.is_input:
            _fill_host(self._host, self.dtype, value)

    def _release(self) -> None:
        self._dev.free()
        if self.staged:
            cuda.free_host(self._host_ptr)
        self._host = np.empty(0, dtype=np.uint8)
        self._host_addr = 0
        self._src = None


# -- registered: the caller's long-lived buffer, page-locked in place ---------------------------------
class RegisteredMemory(TensorMemory):
    """cudaHostRegister the caller's own numpy buffer in place; DMA straight from/to it.

    Inputs: the array passed at call time is registered on first use (and re-registered when the
    caller passes a different buffer; registering costs about as much as one pageable copy, so pass
    the same buffer each time or call ``runner.register(name, array)`` once). Outputs: D2H lands in
    a buffer registered with ``runner.register(name, array)``, or in a runner-owned registered buffer.
    Vectorized formats pack into a runner-owned registered buffer. Everything is unregistered on close.
    """

    strategy = "registered"

    def __init__(self, tensor: TensorPlan, *, fmt: str | None = None, registry: HostRegistry) -> None:
        super().__init__(tensor, fmt=fmt)
        # A graph node copying from a host range that was unregistered since capture crashes the
        # process at launch: the caller's input buffers are therefore never captured.
        self.outside_graph = self.is_input
        # inputs: the device buffer is fixed and graphs never see the caller's buffer; outputs: a
        # graph copies into the registered buffer, which register() may replace
        self.fixed_addresses = self.is_input
        self._registry = registry
        self._key: tuple[int, int] | None = None
        self._buffer: np.ndarray | None = None  # the registered host buffer (flat uint8)
        self._buffer_ptr = 0
        self._used: Any = None  # the array last passed to use(): passing it again changes nothing
        self._own_key: tuple[int, int] | None = None
        self._dev = _DeviceBuffer(self.nbytes)
        try:
            if not self.is_input or self.fmt != "linear":
                own = aligned_empty(self.nbytes)
                self._own_key = registry.acquire(own)
                self._buffer, self._key, self._buffer_ptr = own, None, data_ptr(own)
        except BaseException:
            self._dev.free()
            raise

    @property
    def device_ptr(self) -> int:
        return self._dev.ptr

    def use(self, array: np.ndarray) -> None:
        """Make ``array`` (C-contiguous, any shape/dtype, >= max bytes for outputs) this tensor's buffer."""
        if array is self._used and self._buffer is not None:
            return  # the very array of last time: same buffer, still registered (the registry holds it)
        flat = array.reshape(-1).view(np.uint8)
        ptr = data_ptr(flat)
        if self._buffer is not None and ptr == self._buffer_ptr and flat.nbytes == self._buffer.nbytes:
            self._used = array
            return
        key = self._registry.acquire(array)
        self._registry.release(self._key)
        self._key, self._buffer, self._buffer_ptr, self._used = key, flat, ptr, array
        self._views.clear()

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self._buffer is None or self.fmt != "linear":
            return None
        if self._buffer.nbytes < self.bytes_for(shape):
            return None
        return self._view(self._buffer, shape).view()

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        if self.fmt != "linear":
            assert self._buffer is not None
            _physical(self._buffer, shape, self.dtype, self.fmt)[...] = pack(array, self.fmt)
        else:
            self.use(array)

    def enqueue_in(self, shape: tuple[int, ...], *, stream: int) -> None:
        assert self._buffer is not None
        cuda.memcpy_async(self._dev.ptr, self._buffer_ptr, self.bytes_for(shape), "h2d", stream=stream)

    def enqueue_out(self, shape: tuple[int, ...], *, stream: int) -> None:
        assert self._buffer is not None
        cuda.memcpy_async(self._buffer_ptr, self._dev.ptr, self.bytes_for(shape), "d2h", stream=stream)

    def result(self, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        assert self._buffer is not None
        if self.fmt != "linear":
            view = _logical(self._buffer, shape, self.dtype, self.fmt)
            return owned_copy(view) if copy else view
        view = self._view(self._buffer, shape)
        return owned_copy(view) if copy else view.view()

    def graph_key(self) -> tuple[int, ...]:
        if self.outside_graph:
            return (self._dev.ptr,)
        return (self._dev.ptr, self._buffer_ptr if self._buffer is not None else 0)

    def fill(self, value: float, *, stream: int) -> None:
        _fill_device(self._dev.ptr, self.nbytes, stream)
        if not self.is_input:
            _fill_host(self._buffer, self.dtype, value)

    def _release(self) -> None:
        self._dev.free()
        self._registry.release(self._key)
        self._registry.release(self._own_key)
        self._key = self._own_key = None
        self._buffer = self._used = None
        self._buffer_ptr = 0


# -- mapped: zero-copy host memory the engine reads/writes over PCIe -------------------------------
class MappedMemory(TensorMemory):
    """cudaHostAllocMapped + cudaHostGetDevicePointer: no memcpy at all; every engine access of
    this tensor crosses PCIe (good for data read once, bad for data read many times)."""

    strategy = "mapped"
    fixed_addresses = True

    def __init__(self, tensor: TensorPlan, *, fmt: str | None = None) -> None:
        super().__init__(tensor, fmt=fmt)
        self._host_ptr = cuda.host_alloc(self.nbytes, "mapped")
        try:
            self._dev_ptr = cuda.host_get_device_pointer(self._host_ptr)
        except BaseException:
            cuda.free_host(self._host_ptr)
            raise
        self._host = cuda.host_array(self._host_ptr, self.nbytes)

    @property
    def device_ptr(self) -> int:
        return self._dev_ptr

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return self._view(self._host, shape).view() if self.fmt == "linear" else None

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        if self.fmt == "linear":
            if not _is_staging(array, self._host, self._host_ptr):
                copy_into(self._view(self._host, shape), array)
        else:
            _physical(self._host, shape, self.dtype, self.fmt)[...] = pack(array, self.fmt)

    def result(self, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        return _host_result(self, self._host, shape, copy=copy)

    def graph_key(self) -> tuple[int, ...]:
        return (self._dev_ptr,)

    def fill(self, value: float, *, stream: int) -> None:
        _fill_host(self._host, self.dtype, value)

    def _release(self) -> None:
        self._host = np.empty(0, dtype=np.uint8)
        cuda.free_host(self._host_ptr)


# -- device: device-resident, shared with torch / cupy without copies --------------------------------
class DeviceMemory(TensorMemory):
    """Device-resident tensor. Inputs: a CUDA array (``__cuda_array_interface__``) that is
    contiguous, of the right dtype and 256-byte aligned is bound zero-copy; a misaligned one is
    copied D2D into the runner's buffer. The runner's stream waits for the producer's stream.
    Outputs: :class:`DeviceArray` views of the runner's buffer.

    With ``graph=True`` (CUDA graphs) inputs are always copied D2D into the runner's buffer, and
    that copy stays outside the graph (``outside_graph``): the graph sees one fixed address instead
    of being recaptured for every new tensor."""

    strategy = "device"

    def __init__(self, tensor: TensorPlan, *, fmt: str | None = None, graph: bool = False) -> None:
        super().__init__(tensor, fmt=fmt)
        self.graph = graph
        self.outside_graph = graph
        self.fixed_addresses = graph  # graphs: always the runner's buffer; else caller arrays are bound
        if self.fmt != "linear":
            raise InputError(f"tensor {tensor.name!r}: device memory with format {self.fmt} would hand the "
                             "caller a packed layout", hint="use format: linear for device tensors")
        self._dev = _DeviceBuffer(self.nbytes)
        self._bound = self._dev.ptr
        self._src = 0
        self._keep: Any = None
        self._event = 0
        self.zero_copy_hits = 0

    @property
    def device_ptr(self) -> int:
        return self._bound

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        info = cuda_array_info(array)
        assert info is not None, "the runner validates device inputs"
        if info.stream is not None and info.stream != stream:
            if not self._event:
                self._event = cuda.event_create()
            cuda.event_record(self._event, stream=info.stream)
            cuda.stream_wait_event(stream, self._event)
        self._keep = array  # the caller's tensor stays alive while the engine may read it
        if self.graph:
            self._bound, self._src = self._dev.ptr, info.ptr
        elif info.ptr % ALIGNMENT == 0:
            self._bound, self._src = info.ptr, 0
            self.zero_copy_hits += 1
        else:
            self._bound, self._src = self._dev.ptr, info.ptr

    def enqueue_in(self, shape: tuple[int, ...], *, stream: int) -> None:
        if self._src:
            cuda.memcpy_async(self._dev.ptr, self._src, self.bytes_for(shape), "d2d", stream=stream)

    def result(self, shape: tuple[int, ...], *, copy: bool) -> DeviceArray:
        arr = DeviceArray(self._dev.ptr, shape, self.dtype, owner=self)
        return arr.copy() if copy else arr

    def graph_key(self) -> tuple[int, ...]:
        return (self._bound,) if self.graph else (self._bound, self._src)

    def fill(self, value: float, *, stream: int) -> None:
        _fill_device(self._dev.ptr, self.nbytes, stream)

    def _release(self) -> None:
        self._keep = None
        self._dev.free()
        if self._event:
            cuda.event_destroy(self._event)
            self._event = 0


# -- CPU fallback ----------------------------------------------------------------------------------------
class HostMemory(TensorMemory):
    """The engine runs on the CPU: every strategy is plain numpy memory (logical layout)."""

    strategy = "host"
    fixed_addresses = True

    def __init__(self, tensor: TensorPlan) -> None:
        super().__init__(tensor, fmt="linear")
        self._host = aligned_empty(self.nbytes, ALIGNMENT)
        self._feed: np.ndarray | None = None

    @property
    def device_ptr(self) -> int:
        return 0

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return self._view(self._host, shape).view()

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        self._feed = array

    def feed(self) -> np.ndarray:
        assert self._feed is not None
        return self._feed

    def result(self, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        view = self._view(self._host, shape)
        return owned_copy(view) if copy else view.view()

    def fill(self, value: float, *, stream: int) -> None:
        if not self.is_input:
            _fill_host(self._host, self.dtype, value)

    def _release(self) -> None:
        self._host = np.empty(0, dtype=np.uint8)
        self._feed = None


def make_memory(tensor: TensorPlan, strategy: str, *, device: str, registry: HostRegistry,
                graph: bool = False) -> TensorMemory:
    """The memory of ``tensor`` for ``strategy`` on ``device`` ("cpu" gives :class:`HostMemory`)."""
    if strategy not in MEMORY_STRATEGIES:
        raise InputError(f"tensor {tensor.name!r}: unknown memory strategy {strategy!r}",
                         hint=f"one of: {', '.join(MEMORY_STRATEGIES)}")
    if tensor.format not in FORMATS:
        raise InputError(f"tensor {tensor.name!r}: unknown format {tensor.format!r}")
    if device == "cpu":
        return HostMemory(tensor)
    if strategy == "pageable":
        return PageableMemory(tensor, staged=graph)
    if strategy == "pinned":
        return PinnedMemory(tensor)
    if strategy == "write_combined":
        return WriteCombinedMemory(tensor)
    if strategy == "registered":
        return RegisteredMemory(tensor, registry=registry)
    if strategy == "mapped":
        return MappedMemory(tensor)
    return DeviceMemory(tensor, graph=graph)
