"""The host decoder: libjpeg-turbo and libpng through Pillow (the only module that imports PIL).

Used where the GPU does not decode: CPU-only runners (CI, onnxruntime), PNG files (nvImageCodec has no
GPU PNG decoder), and the reference side of ``trtflow validate``. Pillow rather than OpenCV: a 4 MB
wheel instead of 35-60 MB, the same libjpeg-turbo underneath, and it refuses truncated files itself;
OpenCV decodes a 1600x2560 JPEG about 1.5x faster (17 vs 25 ms on one core), which matters only on
the path that the GPU decoder exists to avoid. Install with ``pip install 'trtflow[decode]'``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from trtflow.decode.header import ImageHeader, ImageProblem
from trtflow.errors import BackendMissing

_pil: Any = None


def _modules() -> Any:
    global _pil
    if _pil is None:
        try:
            from PIL import Image, ImageOps
        except ImportError:
            raise BackendMissing("decoding JPEG/PNG on the host needs Pillow, which is not installed",
                                 hint="pip install 'trtflow[decode]'") from None
        Image.MAX_IMAGE_PIXELS = None  # sizes are bounded by the engine's shape, checked on the header first
        _pil = (Image, ImageOps)
    return _pil


def available() -> bool:
    try:
        _modules()
        return True
    except BackendMissing:
        return False


def version() -> str | None:
    try:
        import PIL
    except ImportError:
        return None
    return str(PIL.__version__)


def decode_rgb(data: Any, header: ImageHeader, out: np.ndarray | None = None) -> np.ndarray:
    """Decode ``data`` to 8-bit RGB HWC, EXIF orientation applied (as nvImageCodec does), into ``out``
    (a C-contiguous uint8 ``[H, W, 3]`` view, e.g. the runner's staging) or a new array."""
    image_mod, ops = _modules()
    buf = data if isinstance(data, (bytes, bytearray)) else memoryview(data).cast("B")
    try:
        with image_mod.open(io.BytesIO(buf)) as im:
            im.load()
            oriented = ops.exif_transpose(im) if header.orientation != 1 else im
            rgb = oriented if oriented.mode == "RGB" else oriented.convert("RGB")
            arr = np.asarray(rgb)
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for damaged data
        why = "not recognised as an image" if type(exc).__name__ == "UnidentifiedImageError" else str(exc)
        raise ImageProblem(f"corrupt {header.codec.upper()}: the decoder failed ({why})") from None
    if arr.shape != (header.height, header.width, 3):
        raise ImageProblem(f"the decoder produced {list(arr.shape)}, the header says "
                           f"{[header.height, header.width, 3]}")
    if out is None:
        return np.ascontiguousarray(arr)
    out[...] = arr
    return out


def encode(image: np.ndarray, codec: str = "jpeg", *, quality: int = 90, **options: Any) -> bytes:
    """Encode an ``[H, W, C]`` uint8 (or uint16 for PNG) array: test data and validation samples.

    ``options`` go to Pillow (``progressive=True``, ``exif=...``); ``mode`` picks the JPEG colour model
    (``L``, ``RGB``, ``CMYK``).
    """
    image_mod, _ = _modules()
    mode = options.pop("mode", None)
    arr = np.ascontiguousarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint16 and arr.ndim != 2:
        raise ValueError("encode: Pillow writes 16-bit PNGs in grayscale only")
    im = image_mod.fromarray(arr)
    if mode and im.mode != mode:
        im = im.convert(mode)
    out = io.BytesIO()
    if codec == "jpeg":
        im.save(out, "JPEG", quality=quality, **options)
    elif codec == "png":
        im.save(out, "PNG", **options)
    else:
        raise ValueError(f"encode: codec {codec!r} (jpeg or png)")
    return out.getvalue()
