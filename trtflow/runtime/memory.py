"""Memory strategies: where one engine I/O tensor's bytes live and how they reach the engine.

One small interface, :class:`TensorMemory`. A host strategy is three small parts (in the spirit of
cuda.core's MemoryResource): a host staging kind (:class:`HostStaging`: allocate / deallocate, device
accessible or not), a device buffer (:class:`DeviceBuffer`) and a packer (:class:`Packer`: the caller's
array <-> the staging bytes, linear or a vectorized format). :func:`make_memory` picks them:

| strategy         | host staging kind                                   | device side                  | per request                  |
|------------------|-----------------------------------------------------|------------------------------|------------------------------|
| ``pageable``     | numpy; a linear input is the caller's array as is; pinned under CUDA graphs | device buffer | cudaMemcpyAsync (pageable) |
| ``pinned``       | cudaHostAlloc                                       | device buffer                | host copy into staging + DMA |
| ``write_combined`` | cudaHostAlloc write-combined (inputs only)        | device buffer                | as pinned                    |
| ``registered``   | the caller's own buffer, cudaHostRegister'ed in place (:class:`RegisteredMemory`) | device buffer | DMA straight from it |
| ``mapped``       | cudaHostAllocMapped                                 | the same memory (zero copy)  | the engine reads/writes PCIe |
| ``device``       | none (:class:`DeviceMemory`)                        | device buffer, or the caller's CUDA array (zero copy) | none |

Every buffer is allocated once at ``max_shape`` (``max_bytes``, vectorized-format padding included),
host part first, through one helper (:func:`_rollback`) that releases what was allocated when a later
part fails. For a vectorized format (``hwc8``, ``chw32``...) host staging holds the packed physical
layout: :func:`trtflow.plan.formats.pack` / ``unpack`` run on the host.

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
from collections.abc import Iterator
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
        with _rollback() as undo:
            ptr = cuda.malloc(self.nbytes)
            undo.callback(cuda.free, ptr)
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


# -- one allocation helper -----------------------------------------------------------------------------
@contextlib.contextmanager
def _rollback(owned: contextlib.ExitStack | None = None) -> Iterator[contextlib.ExitStack]:
    """Allocate step by step, registering each release on the stack (``owned.callback(free, ptr)``): if a
    later step raises, what was allocated is released (last first) and the error propagates. On success
    nothing is released; whoever keeps ``owned`` closes it to release everything."""
    owned = owned if owned is not None else contextlib.ExitStack()
    try:
        yield owned
    except BaseException:
        owned.close()
        raise


# -- part 1: host staging kinds (memory resources: allocate / deallocate, device accessible or not) ----
@dataclass(eq=False, slots=True)
class HostBuffer:
    """Host bytes of one tensor: the flat uint8 ``array`` at ``ptr``. ``device_ptr``: the device's address
    of the same bytes (mapped memory), else 0; ``key``: what the kind needs to deallocate it."""

    array: np.ndarray
    ptr: int
    device_ptr: int = 0
    key: Any = None


NO_HOST = HostBuffer(np.empty(0, dtype=np.uint8), 0)


class HostStaging(ABC):
    """A kind of host memory a tensor is staged in (cuda.core's MemoryResource, host side)."""

    name: ClassVar[str]
    #: the device reads and writes these bytes in place over PCIe: no device buffer and no copies
    is_device_accessible: ClassVar[bool] = False
    #: CPU reads are cached (write-combined memory: they are not, so no output lands there)
    host_readable: ClassVar[bool] = True
    #: a linear input is the caller's own array, not a copy in staging of ours (none is allocated)
    borrows_inputs: ClassVar[bool] = False

    @abstractmethod
    def allocate(self, nbytes: int) -> HostBuffer:
        """``nbytes`` of this kind, ``ALIGNMENT``-aligned at least."""

    def deallocate(self, buf: HostBuffer) -> None:
        """Release what :meth:`allocate` returned (numpy memory: the garbage collector does)."""

    def __repr__(self) -> str:
        return self.name


class PageableStaging(HostStaging):
    """Ordinary numpy memory: the driver stages every copy from or to it, synchronously. A linear input
    is copied from the caller's array as it is."""

    name = "pageable"
    borrows_inputs = True

    def allocate(self, nbytes: int) -> HostBuffer:
        array = aligned_empty(nbytes, ALIGNMENT)
        return HostBuffer(array, data_ptr(array))


class PinnedStaging(HostStaging):
    """Page-locked memory of ours (cudaHostAlloc with ``flag``): copies are DMA at full PCIe speed."""

    name = "pinned"
    flag: ClassVar[cuda.HostAllocKind] = "default"

    def allocate(self, nbytes: int) -> HostBuffer:
        with _rollback() as undo:
            ptr = cuda.host_alloc(nbytes, self.flag)
            undo.callback(cuda.free_host, ptr)
            dev = cuda.host_get_device_pointer(ptr) if self.is_device_accessible else 0
            return HostBuffer(cuda.host_array(ptr, nbytes), ptr, dev)

    def deallocate(self, buf: HostBuffer) -> None:
        cuda.free_host(buf.ptr)


class WriteCombinedStaging(PinnedStaging):
    """Pinned + cudaHostAllocWriteCombined: fast H2D, very slow CPU reads (inputs only)."""

    name = "write_combined"
    flag = "write_combined"
    host_readable = False


class MappedStaging(PinnedStaging):
    """cudaHostAllocMapped + cudaHostGetDevicePointer: the engine reads/writes it over PCIe, no memcpy at
    all (good for data read once, bad for data read many times)."""

    name = "mapped"
    flag = "mapped"
    is_device_accessible = True


class RegisteredStaging(HostStaging):
    """numpy memory page-locked in place (cudaHostRegister, reference counted in the runner's
    :class:`HostRegistry`): a linear input is the caller's own buffer, registered when first used."""

    name = "registered"
    borrows_inputs = True

    def __init__(self, registry: HostRegistry) -> None:
        self.registry = registry

    def allocate(self, nbytes: int) -> HostBuffer:
        return self.borrow(aligned_empty(nbytes))  # own pages: nothing else is registered with them

    def borrow(self, array: np.ndarray) -> HostBuffer:
        """The caller's C-contiguous ``array``, page-locked until :meth:`deallocate`."""
        key = self.registry.acquire(array)
        return HostBuffer(array.reshape(-1).view(np.uint8), key[0], key=key)

    def deallocate(self, buf: HostBuffer) -> None:
        self.registry.release(buf.key)


PAGEABLE, PINNED, WRITE_COMBINED, MAPPED = PageableStaging(), PinnedStaging(), WriteCombinedStaging(), MappedStaging()


# -- part 2: the device buffer ---------------------------------------------------------------------------
class DeviceBuffer:
    """cudaMalloc'ed bytes (device accessible only); :meth:`free` is idempotent."""

    def __init__(self, nbytes: int) -> None:
        self.ptr = cuda.malloc(nbytes)
        self.nbytes = nbytes

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda.free(ptr)


# -- part 3: packers (the caller's array <-> the staging bytes) ------------------------------------------
class Packer(ABC):
    """How a caller's array becomes the staging bytes of a tensor, and its staging bytes an output."""

    def __init__(self, dtype: np.dtype[Any], fmt: str) -> None:
        self.dtype, self.fmt = dtype, fmt

    def view(self, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
        """The logical array at ``shape`` over ``flat`` that callers may write/read in place, if any."""
        return None

    @abstractmethod
    def pack(self, array: Any, host: HostBuffer, shape: tuple[int, ...]) -> None:
        """Write the caller's ``array`` (logical layout, ``shape``) into ``host``."""

    @abstractmethod
    def unpack(self, flat: np.ndarray, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        """The logical output at ``shape`` from ``flat``: a view, or an owned array with ``copy``."""

    def forget(self) -> None:
        """Drop cached views (their buffer changed or went away)."""


class LinearPacker(Packer):
    """Linear layout: the staging bytes are the array's own; views are cached by shape."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
        super().__init__(dtype, "linear")
        self._views: dict[tuple[int, ...], np.ndarray] = {}  # never handed out: callers get .view() of one

    def view(self, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        v = self._views.get(shape)
        if v is None:
            if len(self._views) >= _CACHE:
                self._views.clear()
            v = self._views[shape] = _logical(flat, shape, self.dtype, "linear")
        return v

    def pack(self, array: Any, host: HostBuffer, shape: tuple[int, ...]) -> None:
        if not _is_staging(array, host.array, host.ptr):  # the caller wrote into the staging view: no copy
            copy_into(self.view(host.array, shape), array)

    def unpack(self, flat: np.ndarray, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        view = self.view(flat, shape)
        return owned_copy(view) if copy else view.view()

    def forget(self) -> None:
        self._views.clear()


class FormatPacker(Packer):
    """A vectorized format (``hwc8``, ``chw32``...): staging holds the packed physical layout, packed and
    unpacked on the host (:func:`trtflow.plan.formats.pack` / ``unpack``)."""

    def pack(self, array: Any, host: HostBuffer, shape: tuple[int, ...]) -> None:
        _physical(host.array, shape, self.dtype, self.fmt)[...] = pack(array, self.fmt)

    def unpack(self, flat: np.ndarray, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        view = _logical(flat, shape, self.dtype, self.fmt)
        return owned_copy(view) if copy else view


def make_packer(dtype: np.dtype[Any], fmt: str) -> Packer:
    return LinearPacker(dtype) if fmt == "linear" else FormatPacker(dtype, fmt)


# -- the interface -----------------------------------------------------------------------------------
class TensorMemory(ABC):
    """The memory of one engine I/O tensor in one buffer set.

    ``prepare`` does the host work of a request (copy into staging, pack, register, bind a device
    array); ``enqueue_in`` / ``enqueue_out`` put the copies on a stream; ``result`` returns the output
    after the runner synchronized. Everything that takes ``stream`` only enqueues.
    """

    strategy: str
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
        self.packer = make_packer(self.dtype, self.fmt)
        self._closed = False
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
        view = self.packer.view(flat, shape)
        assert view is not None, "linear memories only"
        return view

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

    def describe(self) -> str:
        """The strategy and what it is made of (``Runner.describe``)."""
        return self.strategy

    def close(self) -> None:
        """Release what this memory owns; idempotent."""
        if not self._closed:
            self._closed = True
            self.packer.forget()
            self._release()

    def _release(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.describe()}, {self.nbytes} B)"


def _fill_host(flat: np.ndarray | None, dtype: np.dtype[Any], value: float) -> None:
    """Floats get ``value``; integer tensors get all-ones bytes (an unlikely engine result)."""
    if flat is None or not flat.size:
        return
    if dtype.kind == "f":
        n = flat.size // dtype.itemsize
        flat[:n * dtype.itemsize].view(dtype)[...] = value
    else:
        flat[...] = 0xFF


def _fill_device(ptr: int, n: int, stream: int) -> None:
    """All-ones bytes: NaN in every float format, -1 / 255 in integer ones."""
    if ptr and n:
        cuda.memset_async(ptr, 0xFF, n, stream=stream)


# -- host strategies: a staging kind + a device buffer + a packer ---------------------------------------
class StagedMemory(TensorMemory):
    """A host strategy made of its parts: ``staging`` (the kind of host bytes), a device buffer (none
    where the staging is device accessible: mapped) and the packer of the tensor's format.

    Inputs: :meth:`prepare` packs the caller's array into staging (a kind that borrows inputs takes a
    linear array as it is), :meth:`enqueue_in` copies it to the device buffer. Outputs:
    :meth:`enqueue_out` copies the device buffer into staging, :meth:`result` unpacks it.
    Allocated host part first, device part second; released in the reverse order.
    """

    fixed_addresses = True

    def __init__(self, tensor: TensorPlan, *, strategy: str, staging: HostStaging, fmt: str | None = None) -> None:
        super().__init__(tensor, fmt=fmt)
        if not (self.is_input or staging.host_readable):
            raise InputError(f"tensor {tensor.name!r}: {strategy} memory is for inputs only "
                             "(CPU reads of write-combined memory are uncached)", hint="use pinned for outputs")
        self.strategy, self.staging = strategy, staging
        #: the caller's linear input array is the H2D source itself, copied ahead of any graph
        self.borrows = self.outside_graph = self.is_input and staging.borrows_inputs and self.fmt == "linear"
        self.zero_copy = staging.is_device_accessible
        self._host = NO_HOST
        self._keep: Any = None  # a borrowed input array: alive until its copy is enqueued
        self._owned = contextlib.ExitStack()
        with _rollback(self._owned) as owned:
            if not self.borrows:
                self._host = staging.allocate(self.nbytes)
                owned.callback(staging.deallocate, self._host)
            if self.zero_copy:
                self._dev_ptr = self._host.device_ptr
            else:
                dev = DeviceBuffer(self.nbytes)
                owned.callback(dev.free)
                self._dev_ptr = dev.ptr
        self._host_ptr = self._host.ptr  # what H2D reads / D2H writes (a borrowed input: the caller's array)

    @property
    def device_ptr(self) -> int:
        return self._dev_ptr

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self._host is NO_HOST:
            return None  # the caller's own array is the input
        view = self.packer.view(self._host.array, shape)
        return None if view is None else view.view()

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        if self.borrows:
            self._borrow(array)
        else:
            self.packer.pack(array, self._host, shape)

    def _borrow(self, array: Any) -> None:
        self._keep, self._host_ptr = array, data_ptr(array)  # pageable copies stage it at once

    def enqueue_in(self, shape: tuple[int, ...], *, stream: int) -> None:
        if not self.zero_copy:
            cuda.memcpy_async(self._dev_ptr, self._host_ptr, self.bytes_for(shape), "h2d", stream=stream)
            self._keep = None

    def enqueue_out(self, shape: tuple[int, ...], *, stream: int) -> None:
        if not self.zero_copy:
            cuda.memcpy_async(self._host_ptr, self._dev_ptr, self.bytes_for(shape), "d2h", stream=stream)

    def result(self, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        return self.packer.unpack(self._host.array, shape, copy=copy)

    def graph_key(self) -> tuple[int, ...]:
        if self.zero_copy or self.outside_graph:
            return (self._dev_ptr,)
        return (self._dev_ptr, self._host_ptr)

    def fill(self, value: float, *, stream: int) -> None:
        if not self.zero_copy:
            _fill_device(self._dev_ptr, self.nbytes, stream)
        if not self.is_input and self.staging.host_readable:
            _fill_host(self._host.array, self.dtype, value)

    def describe(self) -> str:
        device = "zero copy" if self.zero_copy else "device buffer"
        return f"{self.strategy} ({self.staging.name} staging, {device}, {self.fmt})"

    def _release(self) -> None:
        self._keep = None
        self._host, self._host_ptr, self._dev_ptr = NO_HOST, 0, 0
        self._owned.close()


class RegisteredMemory(StagedMemory):
    """``registered``: the caller's own numpy buffers, page-locked in place; DMA straight from/to them.

    Inputs: the array passed at call time is registered on first use (and re-registered when the
    caller passes a different buffer; registering costs about as much as one pageable copy, so pass
    the same buffer each time or call ``runner.register(name, array)`` once). Outputs: D2H lands in
    a buffer registered with ``runner.register(name, array)`` (:meth:`use`), or in registered staging
    of ours. Vectorized formats pack into registered staging of ours. Everything is unregistered on close.
    """

    def __init__(self, tensor: TensorPlan, *, registry: HostRegistry, fmt: str | None = None) -> None:
        self._registered = RegisteredStaging(registry)
        super().__init__(tensor, strategy="registered", staging=self._registered, fmt=fmt)
        # A graph node copying from a host range that was unregistered since capture crashes the
        # process at launch: the caller's input buffers are therefore never captured.
        self.outside_graph = self.is_input
        # inputs: the device buffer is fixed and graphs never see the caller's buffer; outputs: a
        # graph copies into the registered buffer, which use() may replace
        self.fixed_addresses = self.is_input
        self._lent: HostBuffer | None = None  # the caller's buffer in use, registered by us
        self._used: Any = None  # the array last passed to use(): passing it again changes nothing

    def use(self, array: np.ndarray) -> None:
        """Make ``array`` (C-contiguous, any shape/dtype, >= max bytes for outputs) this tensor's buffer."""
        host = self._host
        if array is self._used and host is not NO_HOST:
            return  # the very array of last time: same buffer, still registered (the registry holds it)
        if host is not NO_HOST and data_ptr(array) == host.ptr and array.nbytes == host.array.nbytes:
            self._used = array
            return
        lent = self._registered.borrow(array)
        if self._lent is not None:
            self._registered.deallocate(self._lent)
        self._lent = self._host = lent
        self._host_ptr, self._used = lent.ptr, array
        self.packer.forget()

    _borrow = use

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self._host.array.nbytes < self.bytes_for(shape):
            return None  # a buffer of the caller's, smaller than this shape
        return super().host_view(shape)

    def _release(self) -> None:
        lent, self._lent, self._used = self._lent, None, None
        try:
            if lent is not None:
                self._registered.deallocate(lent)
        finally:
            super()._release()


# -- device: device-resident, shared with torch / cupy without copies --------------------------------
class DeviceMemory(TensorMemory):
    """``device``: no host staging, a device buffer, linear layout. Inputs: with ``bind_inputs`` a CUDA
    array (``__cuda_array_interface__``) that is contiguous, of the right dtype and 256-byte aligned is
    bound zero-copy; a misaligned one is copied D2D into the device buffer. The runner's stream waits
    for the producer's stream. Outputs: :class:`DeviceArray` views of the device buffer.

    Without ``bind_inputs`` (CUDA graphs) inputs are always copied D2D into the device buffer, and that
    copy stays outside the graph (``outside_graph``): the graph sees one fixed address instead of being
    recaptured for every new tensor."""

    strategy = "device"

    def __init__(self, tensor: TensorPlan, *, bind_inputs: bool = True, fmt: str | None = None) -> None:
        super().__init__(tensor, fmt=fmt)
        self.bind_inputs = bind_inputs
        self.outside_graph = self.fixed_addresses = not bind_inputs  # else caller arrays are bound
        if self.fmt != "linear":
            raise InputError(f"tensor {tensor.name!r}: device memory with format {self.fmt} would hand the "
                             "caller a packed layout", hint="use format: linear for device tensors")
        self._dev = DeviceBuffer(self.nbytes)
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
        if self.bind_inputs and info.ptr % ALIGNMENT == 0:
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
        return (self._bound, self._src) if self.bind_inputs else (self._bound,)

    def fill(self, value: float, *, stream: int) -> None:
        _fill_device(self._dev.ptr, self.nbytes, stream)

    def describe(self) -> str:
        return f"device (no staging, device buffer{', binds caller arrays' if self.bind_inputs else ''}, linear)"

    def _release(self) -> None:
        self._keep = None
        self._dev.free()
        if self._event:
            cuda.event_destroy(self._event)
            self._event = 0


# -- CPU fallback ----------------------------------------------------------------------------------------
class HostMemory(TensorMemory):
    """The engine runs on the CPU: every strategy is pageable numpy memory (linear layout)."""

    strategy = "host"
    fixed_addresses = True

    def __init__(self, tensor: TensorPlan) -> None:
        super().__init__(tensor, fmt="linear")
        self._host = PAGEABLE.allocate(self.nbytes).array
        self._feed: np.ndarray | None = None

    @property
    def device_ptr(self) -> int:
        return 0

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return self._view(self._host, shape).view()

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        self._feed = array

    def feed(self) -> np.ndarray:
        """The array the engine reads: the caller's own (or what an encoded input decoded)."""
        assert self._feed is not None
        return self._feed

    def result(self, shape: tuple[int, ...], *, copy: bool) -> np.ndarray:
        return self.packer.unpack(self._host, shape, copy=copy)

    def fill(self, value: float, *, stream: int) -> None:
        if not self.is_input:
            _fill_host(self._host, self.dtype, value)

    def _release(self) -> None:
        self._host = np.empty(0, dtype=np.uint8)
        self._feed = None


_STAGING: dict[str, HostStaging] = {"pageable": PAGEABLE, "pinned": PINNED, "write_combined": WRITE_COMBINED,
                                    "mapped": MAPPED}


def make_memory(tensor: TensorPlan, strategy: str, *, device: str, registry: HostRegistry,
                graph: bool = False) -> TensorMemory:
    """The memory of ``tensor`` for ``strategy`` on ``device`` ("cpu" gives :class:`HostMemory`).

    ``graph`` (the runner captures CUDA graphs): pageable tensors are staged in pinned memory (pageable
    copies cannot be captured) and device inputs are copied into the runner's buffer (graphs bake addresses).
    """
    if strategy not in MEMORY_STRATEGIES:
        raise InputError(f"tensor {tensor.name!r}: unknown memory strategy {strategy!r}",
                         hint=f"one of: {', '.join(MEMORY_STRATEGIES)}")
    if tensor.format not in FORMATS:
        raise InputError(f"tensor {tensor.name!r}: unknown format {tensor.format!r}")
    if device == "cpu":
        return HostMemory(tensor)
    if strategy == "device":
        return DeviceMemory(tensor, bind_inputs=not graph)
    if strategy == "registered":
        return RegisteredMemory(tensor, registry=registry)
    staging = PINNED if strategy == "pageable" and graph else _STAGING[strategy]
    return StagedMemory(tensor, strategy=strategy, staging=staging)
