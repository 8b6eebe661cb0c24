"""The GPU decoder: nvImageCodec (``nvidia-nvimgcodec-cu13`` / ``-cu12``), the only module that imports it.

Every nvImageCodec call of trtflow is one method here, and every failure surfaces as a
:class:`GpuDecoderError` that names the call, the nvImageCodec version and what went wrong, so an API
change costs one line here. Facts this adapter relies on (nvImageCodec 0.9 on an H200):

* ``Decoder(backends=[Backend(BackendKind.HW_GPU_ONLY)])`` is the hardware JPEG engine (NVJPG, separate
  from the SMs; baseline JPEG only); ``Decoder()`` picks among all backends. ``GPU_ONLY`` alone fails to
  create a decoder there. So: hardware first, and whatever it returns ``None`` for (progressive JPEGs)
  again with the default decoder.
* ``decode(code_streams, images=[as_image(buf)], params=..., cuda_stream=int)`` writes into the caller's
  device buffers (bit-identical to a fresh decode); ``cuda_stream`` must be an ``int``. It returns
  ``None`` at the positions it could not decode (and prints its own warning).
* ``CodeStream(bytes or 1-D uint8 array)`` parses the header and raises ``RuntimeError`` on garbage.
* PNG does not decode on the GPU (no GPU PNG decoder): the runner decodes PNG on the host.
* On a machine without a GPU nothing decodes (CUDA error 35), not even its CPU backend.

Pointers and streams are plain ints; no CUDA runtime call is made here (trtflow.runtime.cuda owns those).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trtflow.errors import BackendMissing, TrtflowError

PIP_HINT = "pip install 'trtflow[decode-cu13]' (CUDA 13) or 'trtflow[decode-cu12]' (CUDA 12)"
_nv: Any = None


class GpuDecoderError(TrtflowError, RuntimeError):
    """An nvImageCodec call failed or answered in a way this adapter does not know."""

    exit_code = 8


def module() -> Any:
    """``nvidia.nvimgcodec``, imported once; BackendMissing naming the pip extra if absent."""
    global _nv
    if _nv is None:
        try:
            _nv = importlib.import_module("nvidia.nvimgcodec")
        except ImportError as exc:
            raise BackendMissing(f"GPU image decoding needs nvImageCodec, which does not import ({exc})",
                                 hint=PIP_HINT) from None
    return _nv


def version() -> str | None:
    try:
        return str(getattr(module(), "__version__", "?"))
    except BackendMissing:
        return None


def _fail(call: str, exc: BaseException) -> GpuDecoderError:
    return GpuDecoderError(f"nvImageCodec {version()}: {call} failed: {type(exc).__name__}: {exc}",
                           hint="trtflow/decode/nvimgcodec.py is the one place that talks to nvImageCodec")


@dataclass
class Target:
    """A device buffer region ``[height, width, 3]`` uint8 (HWC interleaved) to decode into."""

    ptr: int
    height: int
    width: int

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": (self.height, self.width, 3), "typestr": "|u1", "data": (self.ptr, False),
                "strides": None, "version": 3, "stream": None}


@dataclass
class Outcome:
    """What happened to one file: ``error`` (None: decoded), and whether nvImageCodec wrote elsewhere
    than the target (``moved_from``: the address it wrote to; ``image`` keeps that memory alive until the
    caller's copy into place has completed)."""

    error: str | None = None
    moved_from: int = 0
    backend: str = ""
    image: Any = None


class GpuDecoder:
    """One nvImageCodec decoder pair (hardware first, default second) on one CUDA device."""

    def __init__(self, device_id: int, *, hardware: bool = True) -> None:
        nv = module()
        self.device_id = device_id
        self._hw: Any = None
        if hardware:
            try:
                self._hw = nv.Decoder(device_id=device_id, backends=[nv.Backend(nv.BackendKind.HW_GPU_ONLY)])
            except Exception:  # noqa: BLE001 - no hardware JPEG engine on this GPU: the default decoder does it all
                self._hw = None
        try:
            self._any = nv.Decoder(device_id=device_id)
        except Exception as exc:  # noqa: BLE001 - every creation failure becomes one clear error
            raise _fail("Decoder()", exc) from None
        try:
            self._params = nv.DecodeParams(apply_exif_orientation=True, color_spec=nv.ColorSpec.SRGB,
                                           allow_any_depth=False)
        except Exception as exc:  # noqa: BLE001
            raise _fail("DecodeParams(apply_exif_orientation, color_spec=SRGB, allow_any_depth)", exc) from None

    @property
    def backends(self) -> str:
        return "hardware JPEG decoder, then CUDA/hybrid" if self._hw is not None else "CUDA/hybrid (no hardware decoder)"

    def decode(self, sources: Sequence[Any], targets: Sequence[Target], *, stream: int) -> list[Outcome]:
        """Decode ``sources[i]`` (bytes or 1-D uint8 host arrays) into ``targets[i]``, ordered on ``stream``."""
        nv = module()
        outcomes = [Outcome() for _ in sources]
        todo = list(range(len(sources)))
        for decoder, label in ((self._hw, "hardware"), (self._any, "default")):
            if decoder is None or not todo:
                continue
            try:
                streams = [nv.CodeStream(sources[i]) for i in todo]
            except RuntimeError as exc:  # the header checks let only parsable files through: be specific anyway
                for i in todo:
                    outcomes[i].error = f"the GPU decoder cannot parse it ({exc})"
                return outcomes
            except Exception as exc:  # noqa: BLE001
                raise _fail("CodeStream(data)", exc) from None
            try:
                images = [nv.as_image(targets[i], cuda_stream=stream) for i in todo]
            except Exception as exc:  # noqa: BLE001
                raise _fail("as_image(device buffer)", exc) from None
            try:
                got = decoder.decode(streams, images=images, params=self._params, cuda_stream=int(stream))
            except Exception as exc:  # noqa: BLE001
                raise _fail(f"Decoder.decode ({label} backend)", exc) from None
            if not isinstance(got, (list, tuple)) or len(got) != len(todo):
                raise _fail("Decoder.decode", TypeError(f"returned {type(got).__name__}, expected a list of {len(todo)}"))
            failed = []
            for i, image in zip(todo, got):
                if image is None:
                    failed.append(i)
                    continue
                outcomes[i].backend = label
                ptr = _data_ptr(image)
                shape = tuple(int(d) for d in getattr(image, "shape", ()))
                t = targets[i]
                if shape[:2] != (t.height, t.width):
                    outcomes[i].error = (f"the GPU decoder produced {list(shape)}, the header says "
                                         f"{[t.height, t.width, 3]}")
                elif ptr != t.ptr:
                    outcomes[i].moved_from, outcomes[i].image = ptr, image
            todo = failed
        for i in todo:
            outcomes[i].error = "the GPU decoder could not decode it (corrupt data)"
        return outcomes


def _data_ptr(image: Any) -> int:
    try:
        return int(image.__cuda_array_interface__["data"][0])
    except Exception as exc:  # noqa: BLE001
        raise _fail("Image.__cuda_array_interface__", exc) from None
