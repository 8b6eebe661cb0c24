"""Header checks and the host decoder on real JPEG/PNG files (Pillow-made, photo-like content)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.image_files import (
    corrupt_header,
    jpeg,
    jpeg_cmyk,
    jpeg_gray,
    jpeg_progressive,
    jpeg_rotated,
    photo,
    png,
    png_gray16,
    png_palette,
    png_rgb16,
    png_rgba,
    truncated,
)

from trtflow.decode import ImageProblem, check_rgb, host, inspect, sniff


def test_jpeg_header_reads_size_colour_and_coding() -> None:
    h = inspect(jpeg(48, 64))
    assert (h.codec, h.height, h.width, h.channels, h.color, h.bits, h.coding) == (
        "jpeg", 48, 64, 3, "ycbcr", 8, "baseline")
    assert inspect(jpeg_progressive()).coding == "progressive"
    check_rgb(h)


def test_exif_orientation_swaps_the_decoded_size_and_the_host_decoder_applies_it() -> None:
    data = jpeg_rotated(48, 64, orientation=6)
    h = inspect(data)
    assert (h.orientation, h.height, h.width) == (6, 64, 48)
    assert host.decode_rgb(data, h).shape == (64, 48, 3)


@pytest.mark.parametrize(("make", "words"), [
    (jpeg_gray, "a grayscale JPEG (1 channel), but the model takes RGB (3 channels)"),
    (jpeg_cmyk, "a CMYK JPEG (4 channels)"),
    (png_rgba, "an RGBA PNG (4 channels)"),
    (png_gray16, "a 16-bit PNG"),
    (png_rgb16, "a 16-bit PNG"),
])
def test_files_that_would_be_converted_silently_are_refused(make, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageProblem, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_rgb(inspect(make()))


def test_palette_png_decodes_to_rgb() -> None:
    data = png_palette()
    h = inspect(data)
    check_rgb(h)
    assert host.decode_rgb(data, h).shape == (48, 64, 3)


@pytest.mark.parametrize(("data", "words"), [
    (truncated(jpeg(96, 128)), "truncated JPEG: no end-of-image marker"),
    (truncated(jpeg(96, 128), 0.002), "truncated JPEG"),
    (corrupt_header(jpeg(96, 128)), "corrupt JPEG"),
    (truncated(png(96, 128), 0.5), "truncated PNG"),
    (b"", "empty data"),
    (b"hello world" * 10, "no image format known here"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(40), "a WebP file"),
    (b"GIF89a" + bytes(40), "a GIF file"),
])
def test_damaged_or_foreign_data_is_named(data: bytes, words: str) -> None:
    with pytest.raises(ImageProblem, match=words):
        inspect(data)


def test_declared_encoding_must_match_the_file() -> None:
    with pytest.raises(ImageProblem, match="a PNG file, but the recipe declares encoding: jpeg"):
        inspect(png(), expect="jpeg")
    with pytest.raises(ImageProblem, match="expected a PNG"):
        inspect(b"\x00" * 64, expect="png")
    assert inspect(png(), expect="image").codec == "png"
    assert sniff(jpeg()) == "jpeg"


def test_inspect_takes_every_bytes_like() -> None:
    data = jpeg()
    for value in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert inspect(value).size == (48, 64)  # type: ignore[arg-type]


def test_host_decoder_is_libjpeg_turbo_exact_and_writes_into_a_given_view() -> None:
    img = photo(48, 64)
    data = host.encode(img, "png")
    out = np.zeros((2, 48, 64, 3), np.uint8)
    host.decode_rgb(data, inspect(data), out[1])
    assert np.array_equal(out[1], img) and not out[0].any()  # PNG is lossless: exact
    lossy = jpeg(48, 64)
    dec = host.decode_rgb(lossy, inspect(lossy))
    assert dec.dtype == np.uint8 and np.abs(dec.astype(int) - img).mean() < 8  # quality 90, small busy image


def test_host_decoder_reports_what_the_header_could_not_see() -> None:
    data = jpeg(96, 128)
    head = inspect(data)
    broken = data[:len(data) - 2000] + b"\xff\xd9"  # scan data cut, end marker kept: header looks fine
    try:
        got = host.decode_rgb(broken, head)
    except ImageProblem as exc:  # Pillow refuses it ...
        assert "corrupt JPEG" in str(exc)
    else:  # ... or decodes what is there (libjpeg-turbo fills the rest); either way no crash
        assert got.shape == (96, 128, 3)
