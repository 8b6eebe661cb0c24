"""`resize` and `pack: bits` in the lowered graph, run on onnxruntime against the numpy contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.image_files import photo
from helpers.models import make_conv_model

from trtflow.passes import lower
from trtflow.passes.reference import reference_input, reference_outputs
from trtflow.plan import Plan, make_plan
from trtflow.recipe import parse_recipe


def lowered(project: Path, body: str, **model_kw: object) -> tuple[Plan, ort.InferenceSession, ort.InferenceSession]:
    make_conv_model(project / "m.onnx", **model_kw)  # type: ignore[arg-type]
    plan = make_plan(parse_recipe("model: m.onnx\n" + body, project / "r.yaml"))
    model, _ = lower(onnx.load(plan.model_path), plan)
    cand = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(plan.model_path, providers=["CPUExecutionProvider"])
    return plan, cand, ref


def reference(plan: Plan, ref: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    t = plan.inputs[0]
    raw = ref.run(None, {t.source: reference_input(t, x)})[0]
    return reference_outputs(plan, plan.outputs[0].source, raw)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(23, 37), (16, 16), (9, 40)])
def test_resize_in_the_engine_equals_numpy_resize_then_the_model(project: Path, mode: str, size: tuple[int, int]) -> None:
    plan, cand, ref = lowered(project, "inputs:\n  image:\n    dtype: uint8\n    layout: NHWC\n"
                              f"    resize: {{mode: {mode}, max: [64, 64]}}\n    preprocess: {{scale: 0.0039, mean: [0.5], std: [0.25]}}\n",
                              hw=16)
    x = photo(*size)[None]
    got = cand.run(None, {"image": x})[0]
    want = reference(plan, ref, x)["logits"]
    assert got.shape == want.shape == (1, 5, 16, 16)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_resize_with_a_dynamic_batch_reads_n_at_run_time(project: Path) -> None:
    plan, cand, ref = lowered(project, "inputs:\n  image:\n    dtype: uint8\n    layout: NHWC\n"
                              "    shape: [2, 3, 16, 16]\n    resize: {mode: bilinear}\n", batch="batch", hw=16)
    assert plan.inputs[0].min_shape[0] == plan.inputs[0].max_shape[0] == 2  # fixed batch: constant sizes
    plan, cand, ref = lowered(project, "inputs:\n  image:\n    dtype: uint8\n    layout: NHWC\n"
                              "    profile: {min: [1, 3, 16, 16], opt: [2, 3, 16, 16], max: [4, 3, 16, 16]}\n"
                              "    resize: {mode: bilinear, max: [64, 64]}\n", batch="batch", hw=16)
    for n in (1, 3):
        x = np.stack([photo(30, 20, s) for s in range(n)])
        got = cand.run(None, {"image": x})[0]
        np.testing.assert_allclose(got, reference(plan, ref, x)["logits"], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("hw", [16, 20])  # 20: the last axis is padded to 24 before packing
def test_pack_bits_in_the_engine_equals_numpy_packbits(project: Path, hw: int) -> None:
    plan, cand, ref = lowered(project, "outputs:\n  logits: {reduce: {op: threshold, value: 0.0, pack: bits}}\n", hw=hw)
    x = np.random.default_rng(0).standard_normal((1, 3, hw, hw)).astype(np.float32)
    got = cand.run(None, {"image": x})[0]
    want = reference(plan, ref, x)["logits"]
    assert got.dtype == np.uint8 and got.shape == want.shape == (1, 5, hw, -(-hw // 8))
    assert np.array_equal(got, want)
    mask = np.unpackbits(got, axis=-1, count=hw).astype(bool)
    raw = ref.run(None, {"image": x})[0]
    assert np.array_equal(mask, raw > 0)


def test_pack_bits_with_a_dynamic_batch(project: Path) -> None:
    plan, cand, ref = lowered(project, "inputs:\n  image: {profile: {min: [1, 3, 16, 16], opt: [2, 3, 16, 16], "
                              "max: [4, 3, 16, 16]}}\noutputs:\n  logits: {reduce: {op: threshold, pack: bits}}\n",
                              batch="batch", hw=16)
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    assert np.array_equal(cand.run(None, {"image": x})[0], reference(plan, ref, x)["logits"])
