"""Planner: recipe checked against the real model, bytes and predictions, frozen JSON plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.models import MODELS, make_conv_model

from trtflow.errors import RecipeError
from trtflow.plan import Plan, make_plan
from trtflow.plan.formats import FORMATS, inflation, nbytes, pack, unpack
from trtflow.plan.model import ChoiceGen, ImageGen
from trtflow.plan.planner import sanitize_identifiers
from trtflow.recipe import parse_recipe


def plan_for(project: Path, body: str, **model_kw: object) -> Plan:
    make_conv_model(project / "m.onnx", **model_kw)  # type: ignore[arg-type]
    return make_plan(parse_recipe("model: m.onnx\n" + body, project / "r.yaml"))


def plan_err(project: Path, body: str, **model_kw: object) -> str:
    with pytest.raises(RecipeError) as exc:
        plan_for(project, body, **model_kw)
    return str(exc.value)


def test_default_plan_reads_model(project: Path) -> None:
    p = plan_for(project, "")
    (i,), (o,) = p.inputs, p.outputs
    assert (i.name, i.shape, i.dtype, i.bytes) == ("image", (1, 3, 16, 16), "float32", 3 * 16 * 16 * 4)
    assert (o.name, o.shape, o.memory) == ("logits", (1, 5, 16, 16), "pinned")
    assert p.class_name == "RRunner" and p.validate.shapes == ("opt",)  # static inputs: one shape set
    check = p.validate.per_output["logits"]
    assert check.atol == check.rtol == 1e-4 and check.tolerance_from == "default for a float32 output of a fp32 build"


def test_plan_roundtrips_json(project: Path) -> None:
    p = plan_for(project, "precision: fp16\ninputs: {image: {dtype: uint8, layout: NHWC}}\n")
    assert Plan.from_json(p.to_json()) == p
    assert p.validate.per_output["logits"].atol == 1e-2  # an fp32 output of an fp16 build
    assert p.mixed_precision.data_max == 512.0


def test_validate_and_mixed_precision_sections_are_typed_and_resolved_once(project: Path) -> None:
    """plan.validate / plan.mixed_precision are frozen typed sections: the image generator's range, the shape
    sets and every output's check are resolved by the planner, and survive plan.json unchanged."""
    p = plan_for(project, "precision: fp16\ninputs: {image: {dtype: uint8, profile: {min: [1, 3, 16, 16], "
                 "opt: [2, 3, 16, 16], max: [4, 3, 16, 16]}}}\nmixed_precision: {keep_fp32_ops: [Conv]}\n"
                 "validate: {inputs: {image: {kind: image}}, samples: 3}\n", batch="N")
    v = p.validate
    assert v.inputs["image"] == ImageGen(range=(0.0, 255.0))  # an integer input: pixel values 0..255
    assert v.shapes == ("opt", "min", "max", "mixed") and v.samples == 3  # dynamic input: four shape sets
    assert p.mixed_precision.keep_fp32_ops == ("Conv",) and p.mixed_precision.calibrate is True
    again = Plan.from_json(p.to_json())
    assert again == p and isinstance(again.validate.inputs["image"], ImageGen)
    q = plan_for(project, "validate: {inputs: {image: {kind: choice, values: [0.5, 1]}}, shapes: [max, "
                 "{image: [1, 3, 16, 16]}]}\n")
    assert q.validate.inputs["image"] == ChoiceGen(values=(0.5, 1)) and q.validate.shapes == ("max", {"image": (1, 3, 16, 16)})
    assert Plan.from_json(q.to_json()) == q


def test_contract_bytes_uint8_nhwc_and_argmax(project: Path) -> None:
    p = plan_for(project, "inputs: {image: {dtype: uint8, layout: NHWC}}\n"
                          "outputs: {logits: {reduce: {op: argmax, dtype: uint8}}}\n")
    assert p.inputs[0].shape == (1, 16, 16, 3) and p.inputs[0].bytes == 16 * 16 * 3
    assert p.outputs[0].shape == (1, 16, 16) and p.outputs[0].bytes == 256
    assert p.naive_bytes == (3 + 5) * 256 * 4


def test_topk_makes_two_outputs(project: Path) -> None:
    p = plan_for(project, "outputs: {logits: {reduce: {op: topk, k: 2, axis: 1}}}\n")
    assert [(t.name, t.shape, t.dtype) for t in p.outputs] == [
        ("logits_values", (1, 2, 16, 16), "float32"), ("logits_indices", (1, 2, 16, 16), "int32")]
    assert p.naive_bytes == (3 + 5) * 256 * 4  # one source counted once


def test_dynamic_profile_resolves_output_symbols(project: Path) -> None:
    p = plan_for(project, "inputs: {image: {profile: {min: [1,3,16,16], opt: [4,3,16,16], max: [8,3,16,16]}}}\n",
                 batch="N")
    o = p.outputs[0]
    assert (o.min_shape, o.shape, o.max_shape) == ((1, 5, 16, 16), (4, 5, 16, 16), (8, 5, 16, 16))
    assert o.max_bytes == 8 * 5 * 256 * 4


def test_dynamic_dims_need_a_shape(project: Path) -> None:
    assert "dynamic dims" in plan_err(project, "", batch="N")


def test_unknown_tensor_name_suggests(project: Path) -> None:
    msg = plan_err(project, "inputs: {imag: {memory: pinned}}\n")
    assert "no input named 'imag'" in msg and "did you mean 'image'" in msg and "r.yaml:2:" in msg


def test_shape_contradicting_model(project: Path) -> None:
    msg = plan_err(project, "inputs: {image: {shape: [1, 3, 32, 32]}}\n")
    assert "dimension 2 is fixed to 16" in msg and "inputs.image.shape" in msg


def test_rank_mismatch(project: Path) -> None:
    assert "rank 3" in plan_err(project, "inputs: {image: {shape: [1, 3, 16]}}\n")


def test_format_dtype_rules(project: Path) -> None:
    assert "hwc8 takes bfloat16, float16, not float32" in plan_err(project, "inputs: {image: {format: hwc8}}\n")
    assert "DLA-only" in plan_err(project, "inputs: {image: {format: chw16, dtype: fp16}}\n")


def test_vectorized_format_warns_about_bytes(project: Path) -> None:
    p = plan_for(project, "inputs: {image: {format: hwc8, dtype: fp16}}\n")
    assert p.inputs[0].bytes == 16 * 16 * 8 * 2
    assert any("2.67x" in w for w in p.warnings)


def test_write_combined_refused_for_outputs(project: Path) -> None:
    assert "write-combined" in plan_err(project, "outputs: {logits: {memory: write_combined}}\n")


def test_argmax_too_many_classes_for_uint8(project: Path) -> None:
    assert "do not fit uint8" in plan_err(project, "outputs: {logits: {reduce: {op: argmax}}}\n", classes=300)


def test_model_path_escape_refused(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    make_conv_model(outside / "m.onnx")
    with pytest.raises(RecipeError, match="outside the project"):
        make_plan(parse_recipe(f"model: {outside / 'm.onnx'}\n", project / "r.yaml"))
    (project / "link.onnx").symlink_to(outside / "m.onnx")
    with pytest.raises(RecipeError, match="outside the project"):
        make_plan(parse_recipe("model: link.onnx\n", project / "r.yaml"))
    make_plan(parse_recipe("model: link.onnx\n", project / "r.yaml"), allow_outside=True)


def test_sha256_pin(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    with pytest.raises(RecipeError, match="model.sha256"):
        make_plan(parse_recipe("model: {path: m.onnx, sha256: " + "0" * 64 + "}\n", project / "r.yaml"))


def test_missing_and_corrupt_model(project: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        make_plan(parse_recipe("model: nope.onnx\n", project / "r.yaml"))
    make_conv_model(project / "m.onnx")
    data = (project / "m.onnx").read_bytes()
    (project / "m.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(RecipeError, match="model"):
        make_plan(parse_recipe("model: m.onnx\n", project / "r.yaml"))


def test_identifiers_are_safe() -> None:
    names = ["image", "class", "a b", "1x", "a'b\"c", "données", "x\ny", "image", "", "self"]
    out = sanitize_identifiers(names)
    for v in out.values():
        assert v.isidentifier() and v.isascii() and v not in ("class", "self")
    assert len(set(out.values())) == len(set(names))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_pack_unpack_roundtrip(fmt: str) -> None:
    rule = FORMATS[fmt]
    shape = (2, 5, 3, 4) if rule.min_rank <= 4 else (1, 5, 2, 3, 4)
    if rule.min_rank == 4:
        shape = (1, 5, 2, 3, 4)
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    packed = pack(x, fmt)
    assert packed.size * 4 == nbytes(shape, "float32", fmt)
    np.testing.assert_array_equal(unpack(packed, shape, fmt), x)


def test_padding_arithmetic_matches_notes() -> None:
    assert inflation((1, 3, 1600, 2560), "chw16") == pytest.approx(16 / 3)
    assert inflation((1, 3, 1600, 2560), "hwc8") == pytest.approx(8 / 3)
    assert inflation((1, 3, 4, 4), "hwc") == 1.0
    # vector-major CHW32 element (n, c, h, w) lives at [n][c//32][h][w][c%32]
    x = np.arange(1 * 40 * 2 * 2).reshape(1, 40, 2, 2)
    assert pack(x, "chw32")[0, 1, 1, 0, 3] == x[0, 35, 1, 0]


@pytest.mark.skipif(not (MODELS / "lraspp_mobilenet_v3_hd.onnx").exists(), reason="example model missing")
def test_shipped_seed_recipe_moves_under_a_quarter_of_naive_bytes() -> None:
    from trtflow.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    p = make_plan(load_recipe(root / "recipes/seg_hd.yaml"))
    assert (p.bytes_in + p.bytes_out) * 4 <= p.naive_bytes


def test_every_shipped_recipe_plans() -> None:
    from trtflow.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.glob("recipes/*.yaml")):
        p = make_plan(load_recipe(path))
        assert p.inputs and p.outputs, path
