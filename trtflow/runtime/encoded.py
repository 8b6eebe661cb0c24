"""The input stage of encoded images: JPEG/PNG file bytes in, the engine's uint8 NHWC input out.

One request's value for an encoded input is a file (``bytes``, ``bytearray``, ``memoryview`` or a 1-D
uint8 array) or a list of files for a batch. :func:`check_files` reads every header first (trtflow.decode
.header): a corrupt, truncated, foreign, grayscale, CMYK, alpha or 16-bit file, or an image outside
the engine's sizes, is an :class:`~trtflow.errors.InputError` naming the tensor, the file and the
problem before anything is staged or enqueued, so the runner stays usable.

On a CUDA runner (:class:`EncodedMemory`, a :class:`~trtflow.runtime.memory.TensorMemory`):

* ``prepare`` (host): the file bytes are copied into runner-owned pinned staging, grown on demand
  (powers of two) and reused (``memory: pageable``: the caller's bytes are handed to the decoder as
  they are). PNG files, which nvImageCodec cannot decode on the GPU, and every file when the runner
  decodes on the host (``decoder="host"``) are decoded by Pillow into pinned pixel staging instead.
* ``enqueue_in`` (stream work, on the runner's input stream, after the waits that free this buffer
  set's device input): nvImageCodec decodes straight into the engine's input device buffer, one
  batched call for all files of the request; host-decoded pixels are copied H2D. The engine's stream
  waits on the input stream's event like after any H2D, so the decode of request i+1 runs on the
  input stream (and the hardware JPEG engine) while the engine computes request i.
* nothing of it is captured in a CUDA graph (``outside_graph``): nvImageCodec does host work and its
  own stream work per call. A graph covers the engine and the copy back.

On a CPU runner (:class:`EncodedHostMemory`) Pillow decodes into the runner's host buffer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtflow.decode import header as hdr
from trtflow.decode.header import ImageHeader, ImageProblem
from trtflow.errors import BackendMissing, InputError
from trtflow.plan.model import TensorPlan
from trtflow.runtime import cuda
from trtflow.runtime.memory import HostMemory, TensorMemory

DECODERS = ("auto", "gpu", "host")
MIN_STAGING = 1 << 20
BytesLike = (bytes, bytearray, memoryview)


@dataclass(frozen=True)
class EncodedFiles:
    """One request's files for one encoded input, checked: their bytes, headers and the decoded shape."""

    files: tuple[Any, ...]          # bytes-likes / 1-D uint8 arrays, as handed over
    headers: tuple[ImageHeader, ...]
    shape: tuple[int, int, int, int]  # N, H, W, 3

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in self.headers)


def _as_buffer(x: Any) -> memoryview | None:
    if isinstance(x, BytesLike):
        mv = memoryview(x)
        return mv if mv.ndim == 1 and mv.itemsize == 1 else mv.cast("B")
    if isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype == np.uint8:
        return memoryview(np.ascontiguousarray(x).data)
    return None


def _what(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"a numpy array {x.dtype}{list(x.shape)}"
    return f"a {type(x).__name__}"


def check_files(t: TensorPlan, value: Any) -> EncodedFiles:
    """Check one request's value for encoded input ``t``; raise InputError naming file and problem."""
    if isinstance(value, EncodedFiles):
        return value
    single = _as_buffer(value)
    if single is not None:
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            raise InputError(f"input {t.name!r}: an empty list of files", hint="pass at least one file's bytes")
    else:
        raise InputError(f"input {t.name!r}: expected the bytes of a {_codec_words(t)} file (bytes, bytearray, "
                         f"memoryview or a 1-D uint8 array) or a list of them, got {_what(value)}",
                         hint="pass open(path, 'rb').read(); decoded arrays go to a recipe without `encoding`")
    many = single is None
    headers = []
    for i, item in enumerate(items):
        where = f"input {t.name!r}" + (f" file {i}" if many else "")
        buf = _as_buffer(item)
        if buf is None:
            raise InputError(f"{where}: expected bytes, bytearray, memoryview or a 1-D uint8 array, got {_what(item)}",
                             hint="pass each file's bytes, e.g. open(path, 'rb').read()")
        try:
            h = hdr.inspect(buf, expect=t.encoding or "image")
            hdr.check_rgb(h)
        except ImageProblem as exc:
            raise InputError(f"{where}: {exc}", hint=hdr.fix_hint(str(exc))) from None
        headers.append(h)
    n = len(items)
    lo, hi = t.min_shape, t.max_shape
    if not lo[0] <= n <= hi[0]:
        want = str(lo[0]) if lo[0] == hi[0] else f"{lo[0]}..{hi[0]}"
        raise InputError(f"input {t.name!r}: {n} file(s), the engine takes a batch of {want}",
                         hint="pass a list of that many files" if hi[0] > 1 else "pass one file, not a list")
    sizes = {h.size for h in headers}
    if len(sizes) > 1:
        listed = ", ".join(f"file {i}: {h.width}x{h.height}" for i, h in enumerate(headers))
        raise InputError(f"input {t.name!r}: the files of one batch decode to different sizes ({listed}, WxH); "
                         "one engine input is one size", hint="resize them to one size first, or run them separately")
    height, width = headers[0].size
    (h_lo, w_lo), (h_hi, w_hi) = lo[1:3], hi[1:3]
    if not (h_lo <= height <= h_hi and w_lo <= width <= w_hi):
        want = f"{w_lo}x{h_lo}" if (h_lo, w_lo) == (h_hi, w_hi) else f"{w_lo}..{w_hi} x {h_lo}..{h_hi}"
        hint = ("declare `resize: {mode: bilinear}` for the input in the recipe (the engine resizes on the GPU)"
                if not t.resize else "widen inputs.<name>.resize.min/max in the recipe (and rebuild)")
        raise InputError(f"input {t.name!r}: the image is {width}x{height} (WxH), the engine takes {want}",
                         hint=hint)
    return EncodedFiles(tuple(items), tuple(headers), (n, height, width, 3))


def _codec_words(t: TensorPlan) -> str:
    return {"jpeg": "JPEG", "png": "PNG"}.get(t.encoding or "", "JPEG or PNG")


# -- decoders of one runner ----------------------------------------------------------------------------------
class Decoders:
    """The decoder choice of one runner, and its GPU decoder (created on first use, shared by its buffer sets).

    ``auto``: nvImageCodec on a CUDA runner when it imports and creates a decoder, else Pillow on the host
    (``status`` says which and why); ``gpu``: nvImageCodec or BackendMissing; ``host``: Pillow always.
    """

    def __init__(self, choice: str = "auto", *, device: str = "cpu") -> None:
        if choice not in DECODERS:
            raise InputError(f"unknown decoder {choice!r}", hint=f"one of: {', '.join(DECODERS)}")
        self.choice = choice
        self.device = device
        self._gpu: Any = None
        self._lock = threading.Lock()
        self.status = "host (Pillow)" if choice == "host" or device != "cuda" else "not used yet"
        self.on_gpu = False
        if device == "cuda" and choice != "host":
            self.on_gpu = self._try_gpu(required=choice == "gpu")

    def _try_gpu(self, *, required: bool) -> bool:
        from trtflow.decode import nvimgcodec

        try:
            self._gpu = nvimgcodec.GpuDecoder(cuda.current_device())
        except (BackendMissing, nvimgcodec.GpuDecoderError) as exc:
            if required:
                raise
            self.status = f"host (Pillow): no GPU decoder ({str(exc).splitlines()[0]})"
            return False
        self.status = f"GPU (nvImageCodec {nvimgcodec.version()}: {self._gpu.backends}); PNG on the host (Pillow)"
        return True

    def gpu(self) -> Any:
        assert self._gpu is not None
        return self._gpu

    def close(self) -> None:
        self._gpu = None


def _host_decode(h: ImageHeader, data: Any, out: np.ndarray, where: str) -> None:
    from trtflow.decode import host

    try:
        host.decode_rgb(data, h, out)
    except ImageProblem as exc:
        raise InputError(f"{where}: {exc}", hint=hdr.fix_hint(str(exc))) from None


class _Staging:
    """Runner-owned pinned host memory, grown on demand to the next power of two and reused."""

    def __init__(self) -> None:
        self.ptr = 0
        self.capacity = 0
        self.array = np.empty(0, np.uint8)
        self.grown = 0

    def ensure(self, n: int) -> np.ndarray:
        if n > self.capacity:
            self.free()
            cap = max(MIN_STAGING, 1 << (max(n, 1) - 1).bit_length())
            self.ptr = cuda.host_alloc(cap)
            self.capacity, self.array = cap, cuda.host_array(self.ptr, cap)
            self.grown += 1
        return self.array

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.capacity, self.array = self.ptr, 0, 0, np.empty(0, np.uint8)
            cuda.free_host(ptr)


class EncodedMemory(TensorMemory):
    """An encoded input of a CUDA runner: file-byte staging, GPU decode into the engine's input buffer.

    Counters for tests and benchmarks: ``gpu_decoded`` / ``host_decoded`` files, ``extra_copies`` (the
    GPU decoder wrote elsewhere and a D2D copy was needed; 0 when it decodes in place, as measured),
    ``staging.grown``.
    """

    strategy = "encoded"      # tensor.memory: pinned (bytes staged) or pageable (handed to the decoder as they are)
    outside_graph = True      # nvImageCodec cannot be captured: its decode stays eager, ahead of a graph
    fixed_addresses = True    # the engine always reads the runner's device buffer

    def __init__(self, tensor: TensorPlan, *, decoders: Decoders) -> None:
        super().__init__(tensor, fmt="linear")
        self.decoders = decoders
        self.staging = _Staging()   # file bytes for the GPU decoder
        self.pixels = _Staging()    # host-decoded pixels (PNG, decoder="host")
        self._dev = cuda.malloc(self.nbytes)
        self._gpu_items: list[tuple[int, Any]] = []   # (file index, bytes view) decoded on the GPU
        self._host_items: list[int] = []              # file indices decoded on the host
        self._files: EncodedFiles | None = None
        self.last_files: EncodedFiles | None = None   # the request decoded last (Runner.decoded)
        self.gpu_decoded = self.host_decoded = self.extra_copies = 0

    @property
    def device_ptr(self) -> int:
        return self._dev

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        files = check_files(self.tensor, array)
        self._files = self.last_files = files
        n, h, w, c = files.shape
        per_image = h * w * c
        gpu = self.decoders.on_gpu
        self._gpu_items = []
        self._host_items = []
        todo_bytes = [(i, f) for i, (f, hd) in enumerate(zip(files.files, files.headers)) if gpu and hd.codec == "jpeg"]
        if todo_bytes and self.tensor.memory == "pinned":
            total = sum(files.headers[i].nbytes for i, _ in todo_bytes)
            stage = self.staging.ensure(total)
            off = 0
            for i, f in todo_bytes:
                buf = memoryview(_as_buffer(f))  # type: ignore[arg-type]
                k = files.headers[i].nbytes
                stage[off:off + k] = np.frombuffer(buf, np.uint8)
                self._gpu_items.append((i, stage[off:off + k]))
                off += k
        else:
            self._gpu_items = [(i, np.frombuffer(_as_buffer(f), np.uint8)) for i, f in todo_bytes]  # type: ignore[arg-type]
        gpu_set = {i for i, _ in self._gpu_items}
        self._host_items = [i for i in range(n) if i not in gpu_set]
        if self._host_items:
            px = self.pixels.ensure(n * per_image)
            for i in self._host_items:
                where = f"input {self.name!r}" + (f" file {i}" if n > 1 else "")
                view = px[i * per_image:(i + 1) * per_image].reshape(h, w, c)
                _host_decode(files.headers[i], _as_buffer(files.files[i]), view, where)

    def enqueue_in(self, shape: tuple[int, ...], *, stream: int) -> None:
        files = self._files
        assert files is not None, "prepare() runs first"
        n, h, w, c = files.shape
        per_image = h * w * c
        for i in self._host_items:
            cuda.memcpy_async(self._dev + i * per_image, self.pixels.ptr + i * per_image, per_image, "h2d",
                              stream=stream)
        self.host_decoded += len(self._host_items)
        if not self._gpu_items:
            return
        from trtflow.decode.nvimgcodec import Target

        targets = [Target(self._dev + i * per_image, h, w) for i, _ in self._gpu_items]
        outcomes = self.decoders.gpu().decode([v for _, v in self._gpu_items], targets, stream=stream)
        for (i, _), target, out in zip(self._gpu_items, targets, outcomes):
            if out.error is not None:
                where = f"input {self.name!r}" + (f" file {i}" if n > 1 else "")
                raise InputError(f"{where}: {out.error}", hint=hdr.fix_hint("corrupt"))
            if out.moved_from:  # not decoded in place: one D2D copy into the engine's buffer
                cuda.memcpy_async(target.ptr, out.moved_from, per_image, "d2d", stream=stream)
                cuda.stream_synchronize(stream)  # the decoder's image is freed when `out` goes
                self.extra_copies += 1
        self.gpu_decoded += len(self._gpu_items)

    def decoded(self, shape: tuple[int, ...]) -> np.ndarray:
        """A host copy of the decoded input the engine read last (synchronous; tests and validation)."""
        out = np.empty(shape, np.uint8)
        cuda.memcpy(int(out.ctypes.data), self._dev, out.nbytes, "d2h")
        return out

    def result(self, shape: tuple[int, ...], *, copy: bool) -> Any:
        raise InputError(f"tensor {self.name!r} is an input")

    def graph_key(self) -> tuple[int, ...]:
        return (self._dev,)

    def _release(self) -> None:
        self.staging.free()
        self.pixels.free()
        if self._dev:
            ptr, self._dev = self._dev, 0
            cuda.free(ptr)
        self._files = None
        self._gpu_items = []


class EncodedHostMemory(HostMemory):
    """An encoded input of a CPU runner: Pillow decodes into the runner's host buffer (the engine's feed)."""

    def __init__(self, tensor: TensorPlan) -> None:
        super().__init__(tensor)
        self.host_decoded = 0
        self.last_files: EncodedFiles | None = None

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return None  # the caller hands over files; there is no array to write into

    def prepare(self, array: Any, shape: tuple[int, ...], *, stream: int) -> None:
        files = check_files(self.tensor, array)
        n = files.shape[0]
        view = self._view(self._host, files.shape)
        for i, (f, hd) in enumerate(zip(files.files, files.headers)):
            _host_decode(hd, _as_buffer(f), view[i], f"input {self.name!r}" + (f" file {i}" if n > 1 else ""))
        self._feed = view
        self.last_files = files
        self.host_decoded += n

    def decoded(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.array(self._view(self._host, shape))


def make_encoded_memory(tensor: TensorPlan, *, device: str, decoders: Decoders) -> TensorMemory:
    """The memory of an encoded input (``tensor.encoding``) on ``device``."""
    if device == "cpu":
        return EncodedHostMemory(tensor)
    return EncodedMemory(tensor, decoders=decoders)


__all__ = ["DECODERS", "Decoders", "EncodedFiles", "EncodedHostMemory", "EncodedMemory", "check_files",
           "make_encoded_memory"]
