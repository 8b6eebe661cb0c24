"""trtflow bench on the CPU (onnxruntime): statistics, diagnostics, sweeps, budgets, plots, write-back.

The GPU measurements themselves (CUDA events, strategies, pipelining) run on the GPU machine through
scripts/gpu_bench.sh; here the same code paths run against the CPU engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.models import ROOT, make_conv_model

from trtflow.bench.run import batch_sizes, knee
from trtflow.bench.stats import Stats, diagnostics


def trtflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trtflow.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_stats_and_trtexec_diagnostics() -> None:
    s = Stats.of([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.min, s.max, s.p50) == (4, 2.5, 1.0, 4.0, 2.5) and s.cv > 0.4
    fast = Stats.of([1.0, 1.0])
    notes = diagnostics(wall=s, h2d=Stats.of([5.0]), compute=fast, d2h=None, host=Stats.of([0.9]))
    assert any(n.startswith("enqueue-bound") for n in notes)
    assert any(n.startswith("transfer-bound: H2D") for n in notes)
    assert any(n.startswith("unstable") for n in notes)
    assert Stats.of([]).n == 0


@pytest.fixture
def recipe(project: Path) -> Path:
    make_conv_model(project / "m.onnx", batch="N")
    (project / "r.yaml").write_text(
        "model: m.onnx\nbuild: {backend: onnxruntime}\n"
        "inputs: {image: {profile: {min: [1,3,16,16], opt: [2,3,16,16], max: [4,3,16,16]}}}\n"
        "budgets: {p99_latency_ms: 0.000001}\n")
    return project / "r.yaml"


def test_bench_json_budget_gate_and_plot(recipe: Path, project: Path) -> None:
    png = project / "bench.png"
    r = trtflow("bench", str(recipe), "--out", str(project / "build"), "--iterations", "20", "--warmup", "2",
                "--json", "--plot", str(png), "--check")
    assert r.returncode == 9, r.stderr  # the impossible p99 budget fails the gate
    assert "p99 latency" in r.stderr and "budget" in r.stderr
    rep = json.loads(r.stdout)
    res = rep["results"][0]
    assert rep["card"].startswith("CPU") and res["iterations"] >= 20 and res["samples_per_s"] > 0
    assert res["wall"]["p99"] >= res["wall"]["p50"] > 0 and res["batch"] == 2
    assert png.stat().st_size > 1000
    # cold vs warm start (open + first inference); onnxruntime has no runtime cache
    assert rep["start"]["cold_ms"] > 0 and rep["start"]["warm_ms"] > 0 and rep["start"]["runtime_cache"] == "n/a"


def test_start_measurement_moves_a_runtime_cache_aside_and_keeps_it(recipe: Path, project: Path) -> None:
    """Cold start runs without the artifact's runtime cache; a cache the engine did not replace is put back."""
    from trtflow.bench.run import measure_start
    from trtflow.plan.model import Plan

    r = trtflow("build", str(recipe), "--out", str(project / "build"), "--json")
    assert r.returncode == 0, r.stderr
    art = Path(json.loads(r.stdout)[0]["artifact"])
    (art / "runtime_cache").mkdir()
    (art / "runtime_cache" / "gpu.bin").write_bytes(b"kernels")
    st = measure_start(art, Plan.from_json((art / "plan.json").read_text()), backend="onnxruntime", device="cpu")
    assert st["runtime_cache"] == "n/a" and st["cold_ms"] > 0
    assert (art / "runtime_cache" / "gpu.bin").read_bytes() == b"kernels"
    assert not (art / ".runtime_cache.bench").exists()


def test_batch_sweep_marks_the_knee(recipe: Path, project: Path) -> None:
    r = trtflow("bench", str(recipe), "--out", str(project / "build"), "--sweep", "batch", "--iterations", "5",
                "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [x["batch"] for x in rep["results"]] == [1, 2, 4]
    assert rep["best"] in {x["label"] for x in rep["results"]}


def test_memory_sweep_writes_the_best_config_back(recipe: Path, project: Path) -> None:
    out = project / "best.yaml"
    r = trtflow("bench", str(recipe), "--out", str(project / "build"), "--sweep", "memory", "--iterations", "5",
                "--warmup", "1", "--write-best", str(out))
    assert r.returncode == 0, r.stderr
    assert "baseline" in r.stdout and out.is_file()
    from trtflow.recipe import load_recipe

    best = load_recipe(out).recipe
    assert best.inputs["image"].memory == "pageable" and best.streams.topology == "sync"


def test_batch_sizes_and_knee_helpers(recipe: Path) -> None:
    from trtflow.plan import make_plan
    from trtflow.recipe import load_recipe

    assert batch_sizes(make_plan(load_recipe(recipe))) == [1, 2, 4]
    assert knee([]) is None
