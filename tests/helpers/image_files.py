"""Real JPEG/PNG files for the tests, made with Pillow (libjpeg-turbo, libpng) from photo-like content.

Every file a test feeds the runner or the header parser comes from here, so each kind of bad input is
one named function: grayscale and CMYK JPEGs, progressive, EXIF-rotated, truncated, corrupt; PNG 8/16-bit,
RGBA, palette. 16-bit RGB PNGs are written by hand (Pillow writes 16-bit PNGs in grayscale only).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from trtflow.decode import host, synth


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return synth.photo(h, w, seed)


def jpeg(h: int = 48, w: int = 64, seed: int = 0, **options: object) -> bytes:
    return host.encode(photo(h, w, seed), "jpeg", **options)  # type: ignore[arg-type]


def png(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    return host.encode(photo(h, w, seed), "png")


def jpeg_gray(h: int = 48, w: int = 64) -> bytes:
    return jpeg(h, w, mode="L")


def jpeg_cmyk(h: int = 48, w: int = 64) -> bytes:
    return jpeg(h, w, mode="CMYK")


def jpeg_progressive(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    return jpeg(h, w, seed, progressive=True)


def jpeg_rotated(h: int = 48, w: int = 64, orientation: int = 6) -> bytes:
    """Stored ``h`` x ``w`` with EXIF orientation ``orientation`` (6: displays rotated 90 degrees)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(photo(h, w)).save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def truncated(data: bytes, keep: float = 1 / 3) -> bytes:
    return data[: int(len(data) * keep)]


def corrupt_header(data: bytes) -> bytes:
    """Zeros over the JPEG header segments (as a damaged transfer leaves them)."""
    return data[:20] + bytes(200) + data[220:]


def png_rgba(h: int = 48, w: int = 64) -> bytes:
    rgba = np.dstack([photo(h, w), np.full((h, w, 1), 200, np.uint8)])
    return host.encode(rgba, "png")


def png_gray16(h: int = 48, w: int = 64) -> bytes:
    return host.encode(photo(h, w)[:, :, 0].astype(np.uint16) * 257, "png")


def png_rgb16(h: int = 48, w: int = 64) -> bytes:
    """A 16-bit RGB PNG, written chunk by chunk."""
    px = photo(h, w).astype(">u2") * 257
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_palette(h: int = 48, w: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(photo(h, w)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(out, "PNG")
    return out.getvalue()
