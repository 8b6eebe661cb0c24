"""`bench --sweep encoding` on the CPU: its recipe variants plan and lower, the batch copy of the seed
model, and the targets/table arithmetic on given numbers (the measurements need the GPU machine:
scripts/gpu_suite.sh)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from trtflow.bench import encoding as enc
from trtflow.plan import make_plan
from trtflow.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "seg_hd_jpeg.yaml"


def test_variants_of_the_seed_recipe_plan() -> None:
    loaded = load_recipe(RECIPE)
    name = enc._image_input(loaded)
    naive = make_plan(enc._variant(loaded, "naive", enc._naive(name)))
    assert (naive.inputs[0].dtype, naive.inputs[0].memory, naive.outputs[0].dtype) == ("float32", "pageable", "float32")
    raw = make_plan(enc._variant(loaded, "raw", enc._raw(name)))
    assert (raw.inputs[0].encoding, raw.inputs[0].dtype, raw.inputs[0].layout) == (None, "uint8", "NHWC")
    packed = make_plan(enc._variant(loaded, "g", enc._reducer("out", {"op": "threshold", "value": 0.0, "pack": "bits"})))
    jpeg = make_plan(loaded)
    assert packed.outputs[0].bytes * 8 == 21 * 1600 * 2560 and jpeg.inputs[0].bytes * 15 < raw.inputs[0].bytes


def test_batched_copy_of_the_seed_model(tmp_path: Path) -> None:
    got = enc.batched_model(ROOT / "models" / "lraspp_mobilenet_v3_hd.onnx", tmp_path / "b.onnx", 8)
    assert isinstance(got, Path)
    m = onnx.load(str(got), load_external_data=False)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def row(key: str, **kw: float) -> enc.Row:
    base = {"batch": 1, "wall_p50_ms": 10.0, "wall_p99_ms": 12.0, "per_image_ms": 10.0, "images_per_s": 100.0,
            "cpu_ms_per_image": 1.0, "bytes_in": 1000, "bytes_out": 100}
    return enc.Row(key=key, label=enc.LABELS[key], **{**base, **kw})  # type: ignore[arg-type]


def test_targets_and_the_table() -> None:
    rows = [row("a", wall_p50_ms=80.0), row("b", input_ms=20.0, cpu_ms_per_image=18.0, bytes_in=12_288_000),
            row("c", wall_p50_ms=6.0, input_ms=2.5, decode_ms=2.5, compute_ms=3.0, d2h_ms=0.1, stage_sum_ms=5.6,
                cpu_ms_per_image=0.5, bytes_in=740_000),
            row("d", images_per_s=320.0, cpu_ms_per_image=0.6), row("f", bytes_out=800), row("g", bytes_out=100)]
    rep = enc.EncodingReport("seg", "GPU", "x.jpg", 740_000, {}, rows, {"e": "why"})
    ts = {t["target"]: t for t in enc.targets(rep)}
    assert ts["input stage (c) vs (b), one image"]["met"] and ts["end to end (c) vs (a)"]["met"]
    assert ts["(c) wall / (decode + compute + transfers)"]["met"] is (6.0 / 5.6 <= 1.15)
    assert ts["throughput (d) vs 1/max(decode, compute, transfers)"]["measured"] == pytest.approx(320 / (1e3 / 3.0))
    assert ts["bytes over the bus per image (c) vs (b)"]["met"]
    rep.targets = list(ts.values())
    text = enc.render(rep.to_dict())
    assert "| (c) GPU decode, sync |" in text and "(e) skipped: why" in text and "| NO |" not in text.split("target")[0]


def test_the_sweep_needs_a_gpu_and_says_so() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "trtflow.cli", "bench", str(RECIPE), "--sweep", "encoding"],
                       check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3 and "needs a CUDA GPU" in r.stderr + r.stdout
