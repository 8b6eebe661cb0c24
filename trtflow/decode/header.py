"""Read what an encoded image is from its first bytes, without decoding it (pure Python, no library).

Every path (GPU decode, host decode, the planner's ``sample``) asks :func:`inspect` first, so a file is
refused for the same reasons with the same words wherever it goes, before any pixel is decoded or any
buffer is touched: corrupt or truncated data, a format the engine input cannot take (grayscale, CMYK,
alpha, 16-bit), a size outside what the engine accepts. The decoders are then only asked to decode
files that are valid as far as a header can tell; what they still refuse is reported as corrupt data.

Checked here because the decoders do not (measured with nvImageCodec 0.9): a truncated JPEG decodes
without an error (the missing rows come out grey), and grayscale or CMYK JPEGs are converted to RGB
silently.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOF markers by coding process: only those both libjpeg-turbo and nvJPEG decode are accepted.
_SOF_OK = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_SOF_REFUSED = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical",
                0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded", 0xCB: "arithmetic-coded",
                0xCD: "arithmetic-coded hierarchical", 0xCE: "arithmetic-coded hierarchical",
                0xCF: "arithmetic-coded lossless"}
_PNG_COLOR = {0: ("gray", 1), 2: ("rgb", 3), 3: ("palette", 3), 4: ("gray_alpha", 2), 6: ("rgba", 4)}
_OTHER_MAGIC = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"))
CODECS = ("jpeg", "png")


class ImageProblem(ValueError):
    """The file cannot become the engine's input; the message says why in the caller's terms."""


@dataclass(frozen=True)
class ImageHeader:
    """What a decoder will produce from a file (after EXIF orientation), read from its header."""

    codec: str          # jpeg | png
    height: int         # decoded rows, EXIF orientation applied
    width: int
    channels: int       # components in the file (jpeg: 1, 3 or 4; png: 1-4, palette counts as 3)
    color: str          # ycbcr, rgb, gray, cmyk, ycck, palette, gray_alpha, rgba
    bits: int           # bits per sample
    nbytes: int         # size of the file
    orientation: int = 1   # EXIF orientation tag (1 = as stored; 5..8 swap height and width)
    coding: str = ""    # jpeg: baseline / extended sequential / progressive; png: interlaced or not

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def describe(self) -> str:
        return f"{self.width}x{self.height} {self.color} {self.codec.upper()}"


def sniff(data: bytes | memoryview) -> str:
    """``jpeg``, ``png`` or the name of another format (``WebP``, ``GIF``...), from the magic bytes."""
    head = bytes(data[:16])
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    return "unknown"


def inspect(data: bytes | memoryview, *, expect: str = "image") -> ImageHeader:
    """The header of an encoded image. ``expect``: ``jpeg``, ``png`` or ``image`` (either).

    Raises :class:`ImageProblem` for empty, unknown, corrupt or truncated data, or the wrong format.
    """
    mv = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    if len(mv) == 0:
        raise ImageProblem("empty data (0 bytes)")
    kind = sniff(mv)
    if kind not in CODECS:
        what = "data that is no image format known here" if kind == "unknown" else f"a {kind} file"
        want = "a JPEG" if expect == "jpeg" else "a PNG" if expect == "png" else "a JPEG or PNG file"
        raise ImageProblem(f"{what} (starts with {bytes(mv[:8]).hex(' ')}), expected {want}")
    if expect in CODECS and kind != expect:
        raise ImageProblem(f"a {kind.upper()} file, but the recipe declares encoding: {expect}")
    return _jpeg(mv) if kind == "jpeg" else _png(mv)


# -- JPEG ---------------------------------------------------------------------------------------------
def _jpeg(mv: memoryview) -> ImageHeader:
    n = len(mv)
    pos = 2
    sof: tuple[int, int, int, int, int] | None = None  # marker, precision, height, width, components
    adobe: int | None = None
    orientation = 1
    component_ids = b""
    while True:
        if pos + 4 > n:
            raise ImageProblem(f"truncated JPEG: the header ends at byte {n} before the image data")
        if mv[pos] != 0xFF:
            raise ImageProblem(f"corrupt JPEG: expected a marker at byte {pos}, found 0x{mv[pos]:02x}")
        while pos < n and mv[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise ImageProblem("truncated JPEG: the file ends inside a marker")
        marker = mv[pos]
        pos += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue  # standalone markers carry no length
        if marker == 0xD9:
            raise ImageProblem("corrupt JPEG: end-of-image marker before any image data")
        if pos + 2 > n:
            raise ImageProblem("truncated JPEG: the file ends inside a marker")
        length = (mv[pos] << 8) | mv[pos + 1]
        if length < 2:
            raise ImageProblem(f"corrupt JPEG: marker 0xFF{marker:02X} at byte {pos - 2} has length {length}")
        end = pos + length
        if end > n:
            raise ImageProblem(f"truncated JPEG: marker 0xFF{marker:02X} needs {length} bytes, the file ends first")
        seg = mv[pos + 2:end]
        if marker in _SOF_OK or marker in _SOF_REFUSED:
            if marker in _SOF_REFUSED:
                raise ImageProblem(f"a {_SOF_REFUSED[marker]} JPEG, which the decoders here do not take "
                                   "(baseline, extended or progressive only)")
            if len(seg) < 6:
                raise ImageProblem("corrupt JPEG: frame header too short")
            precision, height, width, comps = seg[0], (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], seg[5]
            sof = (marker, precision, height, width, comps)
            component_ids = bytes(seg[6 + 3 * i] for i in range(comps) if 6 + 3 * i < len(seg))
        elif marker == 0xEE and bytes(seg[:5]) == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]
        elif marker == 0xE1 and bytes(seg[:6]) == b"Exif\x00\x00":
            orientation = _exif_orientation(bytes(seg[6:]))
        elif marker == 0xDA:  # start of scan: entropy-coded data follows
            if sof is None:
                raise ImageProblem("corrupt JPEG: image data before any frame header (no SOF marker)")
            # Entropy-coded bytes never contain FF D9 (an FF there is stuffed with 00 or is RSTn), so the
            # image is complete only if an end-of-image marker follows the first scan.
            if bytes(mv[max(end, n - 4096):]).rfind(JPEG_EOI) < 0 and bytes(mv[end:]).rfind(JPEG_EOI) < 0:
                raise ImageProblem(f"truncated JPEG: no end-of-image marker (FF D9) after the image data "
                                   f"({n} bytes; the file was cut short)")
            break
        pos = end
    marker, precision, height, width, comps = sof
    if height == 0 or width == 0:
        raise ImageProblem(f"corrupt JPEG: frame size {width}x{height}")
    if precision != 8:
        raise ImageProblem(f"a {precision}-bit JPEG; the engine input is 8-bit")
    color = {1: "gray", 3: "ycbcr", 4: "cmyk"}.get(comps)
    if color is None:
        raise ImageProblem(f"corrupt JPEG: {comps} colour components")
    if comps == 3 and (adobe == 0 or (adobe is None and component_ids == b"RGB")):
        color = "rgb"
    if comps == 4 and adobe == 2:
        color = "ycck"
    if orientation in (5, 6, 7, 8):
        height, width = width, height
    return ImageHeader("jpeg", height, width, comps, color, precision, len(mv), orientation, _SOF_OK[marker])


def _exif_orientation(tiff: bytes) -> int:
    """EXIF tag 0x0112 of IFD0 in a TIFF structure; 1 when absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    e = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(e + "I", tiff, 4)
        (count,) = struct.unpack_from(e + "H", tiff, ifd)
        for i in range(count):
            tag, typ, _n = struct.unpack_from(e + "HHI", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and typ == 3:
                (value,) = struct.unpack_from(e + "H", tiff, ifd + 2 + 12 * i + 8)
                return int(value) if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


# -- PNG ----------------------------------------------------------------------------------------------
def _png(mv: memoryview) -> ImageHeader:
    n = len(mv)
    if n < 33:
        raise ImageProblem(f"truncated PNG: {n} bytes, the header alone takes 33")
    length, kind = struct.unpack_from(">I4s", mv, 8)
    if kind != b"IHDR" or length != 13:
        raise ImageProblem("corrupt PNG: the first chunk is not a 13-byte IHDR")
    width, height, bits, color_type, _comp, _filt, interlace = struct.unpack_from(">IIBBBBB", mv, 16)
    if width == 0 or height == 0:
        raise ImageProblem(f"corrupt PNG: size {width}x{height}")
    if color_type not in _PNG_COLOR:
        raise ImageProblem(f"corrupt PNG: colour type {color_type}")
    if bytes(mv[max(33, n - 64):]).rfind(b"IEND") < 0:
        raise ImageProblem(f"truncated PNG: no IEND chunk at the end ({n} bytes; the file was cut short)")
    color, channels = _PNG_COLOR[color_type]
    return ImageHeader("png", height, width, channels, color, bits, n, 1, "interlaced" if interlace else "")


# -- what the engine input can take ---------------------------------------------------------------------
def check_rgb(h: ImageHeader) -> None:
    """Refuse what would not decode to 8-bit RGB without a silent conversion."""
    if h.bits != 8 and not (h.color == "palette" and h.bits < 8):
        raise ImageProblem(f"a {h.bits}-bit {h.codec.upper()} ({h.describe()}); the engine input is 8-bit RGB")
    problem = {
        "gray": "a grayscale", "gray_alpha": "a grayscale+alpha", "cmyk": "a CMYK", "ycck": "a YCCK (CMYK)",
        "rgba": "an RGBA",
    }.get(h.color)
    if problem:
        raise ImageProblem(f"{problem} {h.codec.upper()} ({h.channels} channel{'s' if h.channels > 1 else ''}), "
                           "but the model takes RGB (3 channels)")


def fix_hint(problem: str) -> str:
    """What the caller can do about ``problem`` (the message of an :class:`ImageProblem`)."""
    if "truncated" in problem or "corrupt" in problem or "empty" in problem:
        return "the file is damaged: check how it was received (a partial upload or read?)"
    if "channel" in problem or "-bit" in problem:
        return "convert it to 8-bit RGB first (e.g. PIL: Image.open(f).convert('RGB'))"
    return "re-encode it as a baseline or progressive 8-bit RGB JPEG, or a PNG"
