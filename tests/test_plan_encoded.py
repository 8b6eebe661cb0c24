"""Recipe and plan of encoded inputs (`encoding`, `sample`, `typical_bytes`), `resize` and `pack: bits`."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.image_files import jpeg, jpeg_gray, png
from helpers.models import make_conv_model

from trtflow.errors import RecipeError
from trtflow.plan import Plan, make_plan
from trtflow.recipe import parse_recipe

NORM = "preprocess: {scale: 0.00392156862745098, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"


def plan_for(project: Path, body: str, **model_kw: object) -> Plan:
    make_conv_model(project / "m.onnx", **model_kw)  # type: ignore[arg-type]
    return make_plan(parse_recipe("model: m.onnx\n" + body, project / "r.yaml"))


def plan_err(project: Path, body: str, **model_kw: object) -> str:
    with pytest.raises(RecipeError) as exc:
        plan_for(project, body, **model_kw)
    return str(exc.value)


def test_jpeg_input_defaults_to_uint8_nhwc_and_estimates_file_bytes(project: Path) -> None:
    p = plan_for(project, f"inputs:\n  image:\n    encoding: jpeg\n    {NORM}\n", hw=64)
    t = p.inputs[0]
    assert (t.encoding, t.dtype, t.layout, t.shape) == ("jpeg", "uint8", "NHWC", (1, 64, 64, 3))
    assert t.decoded_bytes == 64 * 64 * 3 and t.naive_bytes == 64 * 64 * 3 * 4
    assert t.bytes == t.encoded_bytes == int(64 * 64 * 0.1875)  # 1.5 bits/pixel: what crosses the bus
    assert "estimate" in (t.encoded_source or "")
    assert any("declare `sample:` or `typical_bytes:`" in w for w in p.warnings)
    assert Plan.from_json(p.to_json()) == p


def test_sample_file_gives_the_bytes_and_is_checked(project: Path) -> None:
    (project / "cat.jpg").write_bytes(jpeg(64, 64))
    p = plan_for(project, "inputs:\n  image: {encoding: jpeg, sample: cat.jpg}\n", hw=64)
    t = p.inputs[0]
    assert t.encoded_bytes == len(jpeg(64, 64)) == t.bytes
    assert "sample cat.jpg (64x64 ycbcr JPEG" in (t.encoded_source or "")
    assert not p.warnings


def test_png_plans_the_decoded_pixels_on_the_bus(project: Path) -> None:
    (project / "a.png").write_bytes(png(64, 64))
    t = plan_for(project, "inputs:\n  image: {encoding: image, sample: a.png}\n", hw=64).inputs[0]
    assert t.encoded_bytes == len(png(64, 64)) and t.bytes == t.decoded_bytes  # host decode, then H2D
    t = plan_for(project, "inputs:\n  image: {encoding: jpeg, typical_bytes: 1000}\n", hw=64).inputs[0]
    assert t.bytes == 1000 and t.encoded_source == "typical_bytes 1000 per image"


@pytest.mark.parametrize(("body", "words"), [
    ("image: {encoding: jpeg, sample: big.jpg}", "sample 'big.jpg' is 96x80 (WxH), the engine input takes 64x64"),
    ("image: {encoding: jpeg, sample: gray.jpg}", "a grayscale JPEG (1 channel), but the model takes RGB"),
    ("image: {encoding: png, sample: big.jpg}", "a JPEG file, but the recipe declares encoding: png"),
    ("image: {encoding: jpeg, sample: nope.jpg}", "cannot read sample 'nope.jpg'"),
    ("image: {encoding: jpeg, dtype: float32}", "decoded images are uint8, not float32"),
    ("image: {encoding: jpeg, layout: NCHW}", "decoders produce channel-last (NHWC) images"),
    ("image: {encoding: jpeg, memory: device}", "memory device does not apply to encoded files"),
    ("image: {encoding: jpeg, sample: big.jpg, typical_bytes: 5}", "either `sample` or `typical_bytes`"),
    ("image: {typical_bytes: 5}", "set `encoding` (jpeg, png, image)"),
    ("image: {encoding: webp}", "inputs.image.encoding"),
])
def test_encoded_input_errors_name_the_field_and_the_fix(project: Path, body: str, words: str) -> None:
    (project / "big.jpg").write_bytes(jpeg(80, 96))
    (project / "gray.jpg").write_bytes(jpeg_gray(64, 64))
    msg = plan_err(project, f"inputs:\n  {body}\n", hw=64)
    assert words in msg and "r.yaml:" in msg


def test_sample_outside_the_shape_suggests_resize(project: Path) -> None:
    (project / "big.jpg").write_bytes(jpeg(80, 96))
    assert "add `resize: {mode: bilinear}`" in plan_err(project, "inputs:\n  image: {encoding: jpeg, sample: big.jpg}\n", hw=64)
    t = plan_for(project, "inputs:\n  image: {encoding: jpeg, sample: big.jpg, resize: {mode: bilinear}}\n", hw=64).inputs[0]
    assert t.encoded_bytes == len(jpeg(80, 96))


def test_encoded_images_need_three_channels(project: Path) -> None:
    assert "decode to RGB (3 channels)" in plan_err(project, "inputs:\n  image: {encoding: jpeg}\n", channels=1)


def test_resize_takes_any_size_within_min_max_and_sizes_the_buffer_at_max(project: Path) -> None:
    t = plan_for(project, "inputs:\n  image: {encoding: jpeg, resize: {mode: bilinear}}\n", hw=64).inputs[0]
    assert t.resize == {"mode": "bilinear", "min": [1, 1], "max": [128, 128], "to": [64, 64]}
    assert (t.min_shape, t.shape, t.max_shape) == ((1, 1, 1, 3), (1, 64, 64, 3), (1, 128, 128, 3))
    assert t.max_bytes == 128 * 128 * 3 and t.model_shape == (1, 3, 64, 64)
    t = plan_for(project, "inputs:\n  image: {dtype: uint8, layout: NHWC, resize: {min: [80, 90], max: [100, 200]}}\n",
                 hw=64).inputs[0]
    assert t.encoding is None and (t.min_shape, t.shape, t.max_shape) == ((1, 80, 90, 3), (1, 80, 90, 3), (1, 100, 200, 3))


def test_resize_needs_a_fixed_model_size(project: Path) -> None:
    msg = plan_err(project, "inputs:\n  image:\n    resize: {mode: nearest}\n"
                   "    profile: {min: [1, 3, 8, 8], opt: [1, 3, 16, 16], max: [1, 3, 32, 32]}\n", hw="hw")
    assert "resize needs a fixed model size" in msg


def test_pack_bits_packs_the_last_axis(project: Path) -> None:
    o = plan_for(project, "outputs:\n  logits: {reduce: {op: threshold, pack: bits}}\n", hw=20).outputs[0]
    assert (o.dtype, o.shape, o.unpacked_shape, o.packed_bits) == ("uint8", (1, 5, 20, 3), (1, 5, 20, 20), True)
    assert o.bytes == 1 * 5 * 20 * 3  # vs 2000 bytes as a uint8 mask
    with pytest.raises(RecipeError, match="pack: bits returns uint8 bytes"):
        plan_for(project, "outputs:\n  logits: {reduce: {op: threshold, pack: bits, dtype: bool}}\n")
