"""`bench --sweep encoding` on the CPU: its recipe variants plan and lower, the batch copy of the seed
model, and the targets/table arithmetic on given numbers (the measurements need the GPU machine:
scripts/gpu_suite.sh)."""

from __future__ import annotations

import json
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
    h2d = ts["H2D bytes per image (c) vs (b): the input the GPU decode saves"]
    assert h2d["met"] and h2d["measured"] == pytest.approx(12_288_000 / 740_000)
    total = ts["total bytes over the bus per image (c) vs (b), H2D + D2H"]
    assert total["met"] is None and total["measured"] == pytest.approx(12_288_100 / 740_100)  # shown, not judged
    assert ts["total bytes over the bus per image (g) bit-packed masks vs (b)"]["measured"] == pytest.approx(12_288_100 / 1100)
    rep.targets = list(ts.values())
    text = enc.render(rep.to_dict())
    assert "| (c) GPU decode, sync |" in text and "(e) skipped: why" in text and "| NO |" not in text.split("target")[0]
    assert "| 740000 | 100 | 740100 |" in text  # H2D, D2H and total columns
    assert "the issue's 1/15 target is applied to H2D" in text


def test_cpu_phases_are_split_and_rendered() -> None:
    r = row("c", cpu_ms_per_image=5.0)
    r.cpu_phases = {"enqueue": {"thread": 3.0, "process": 3.1}, "h2d_or_decode": {"thread": 0.9, "process": 1.5},
                    "wait": {"thread": 0.01, "process": 0.02}, "other": {"thread": 0.3, "process": 0.38},
                    "total": {"thread": 4.21, "process": 5.0}}
    assert enc.top_phases(r, 2) == "enqueue 3.10, h2d_or_decode 1.50"
    rep = enc.EncodingReport("seg", "GPU", "x.jpg", 740_000, {}, [row("b", cpu_ms_per_image=30.0), r], {})
    (t,) = [t for t in enc.targets(rep) if t["target"].startswith("host CPU time per image (c)")]
    assert t["measured"] == pytest.approx(6.0) and not t["met"] and "enqueue 3.10" in t["note"]
    text = enc.render(rep.to_dict())
    assert "| (c) | 1.50 (0.90) | 3.10 (3.00) | 0.02 (0.01) | 0.38 (0.30) | 5.00 (4.21) |" in text


def test_the_sweep_needs_a_gpu_and_says_so() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "trtflow.cli", "bench", str(RECIPE), "--sweep", "encoding"],
                       check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3 and "needs a CUDA GPU" in r.stderr + r.stdout


def test_contract_the_sweep_runs_every_row_on_the_fake_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configuration (a)-(h) of the sweep on the fake CUDA runtime, the fakecuda engine and a fake
    nvImageCodec (Pillow as a stream op): the code path the GPU run takes, its rows, phases and files."""
    from helpers import runtime as sup
    from helpers.image_files import jpeg
    from test_encoded_stage import FakeNv

    from trtflow.build import build
    from trtflow.decode import nvimgcodec

    fake = sup.install_with_backend(monkeypatch, seed=4)
    monkeypatch.setattr(nvimgcodec, "_nv", FakeNv(fake).module)
    monkeypatch.setattr(enc, "ROW_SECONDS", 0.5)
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    sup.conv_model(tmp_path / "m.onnx", hw=32)
    (tmp_path / "s.jpg").write_bytes(jpeg(32, 32, 7))
    (tmp_path / "r.yaml").write_text(
        "model: m.onnx\nbuild: {backend: onnxruntime}\ninputs:\n  image:\n    encoding: jpeg\n    sample: s.jpg\n"
        "    preprocess: {scale: 0.0039, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\n"
        "outputs:\n  logits: {reduce: {op: argmax, axis: 1, dtype: uint8}, memory: pinned}\n"
        "streams: {topology: pipelined, depth: 3}\n")
    out = tmp_path / "out"
    rep = enc.sweep_encoding(load_recipe(tmp_path / "r.yaml"), build=lambda v: build(v, out_root=out),
                             backend="fakecuda", warmup=1, iterations=3, link={}, card="fake GPU",
                             variants_dir=out / ".variants")
    assert [r.key for r in rep.rows] == list("abcdefgh") and not rep.skipped
    by = {r.key: r for r in rep.rows}
    assert by["c"].bytes_in == len(jpeg(32, 32, 7)) and by["b"].bytes_in == 32 * 32 * 3
    for r in rep.rows:
        assert r.cpu_phases["total"]["process"] > 0 and r.wait == "block", r.key
    assert {"check", "stage_in", "h2d_or_decode", "enqueue", "wait"} <= set(by["c"].cpu_phases)
    assert "host_decode" in by["b"].cpu_phases and "host_post" in by["a"].cpu_phases
    assert "CUDA graph: captured" in by["h"].notes[0] and "CUDA graph: off" in by["d"].notes[0]
    saved = json.loads((out / ".variants" / "encoding.json").read_text())
    assert [r["key"] for r in saved["rows"]] == list("abcdefgh") and saved["targets"]
    assert "Host CPU ms per image by phase" in enc.render(saved)


def test_a_sweep_out_of_time_skips_what_is_left_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import runtime as sup
    from helpers.image_files import jpeg

    from trtflow.build import build

    sup.install_with_backend(monkeypatch, seed=4)
    monkeypatch.setattr(enc, "SWEEP_SECONDS", 0.0)
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    sup.conv_model(tmp_path / "m.onnx", hw=32)
    (tmp_path / "s.jpg").write_bytes(jpeg(32, 32, 7))
    (tmp_path / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\ninputs:\n  image:\n"
                                     "    encoding: jpeg\n    sample: s.jpg\n")
    rep = enc.sweep_encoding(load_recipe(tmp_path / "r.yaml"), build=lambda v: build(v, out_root=tmp_path / "o"),
                             backend="fakecuda", warmup=1, iterations=3, link={}, card="fake GPU",
                             variants_dir=tmp_path / "o" / ".variants", only="abc")
    assert not rep.rows and set(rep.skipped) == set("abc") and "time budget" in rep.skipped["a"]
