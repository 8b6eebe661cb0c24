"""What ran is said plainly: on a machine where engine.plan cannot run, validate and bench say that the
lowered model.onnx ran on onnxruntime instead, and drop GPU-only columns and advice.

Real TensorRT-RTX builds (the builder runs without a GPU); the runner then executes model.onnx on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.ecosystem import require_backend
from helpers.models import make_conv_model
from test_errors import run

from trtflow.runtime import cuda


@pytest.fixture
def rtx_recipe(project: Path) -> Path:
    require_backend("tensorrt_rtx")
    if cuda.cuda_available():
        pytest.skip("a CUDA GPU is here: the engine may run, which is what this test must not see")
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: tensorrt_rtx}\n"
                                    "outputs: {logits: {reduce: {op: argmax, dtype: uint8}}}\n"
                                    "streams: {cuda_graph: true}\n")
    return project / "r.yaml"


def test_validate_says_the_engine_was_not_validated(capsys: pytest.CaptureFixture[str], rtx_recipe: Path) -> None:
    out = str(rtx_recipe.parent / "artifacts")
    code, text, err = run(capsys, "validate", str(rtx_recipe), "--out", out, "--json")
    assert code == 0, err
    rep = json.loads(text)
    assert rep["engine_file"] == "engine.plan" and rep["engine_validated"] is False
    assert rep["candidate"].startswith("model.onnx") and "NOT validated" in rep["candidate"]
    code, text, _ = run(capsys, "validate", str(rtx_recipe), "--out", out)
    assert code == 0
    assert "engine.plan (tensorrt_rtx) cannot run here, so the engine itself is NOT validated" in " ".join(
        text.split())
    # the integer mask row: the metric decided it, and the table says so instead of "max abs 4 ... pass"
    row = next(line for line in text.splitlines() if line.startswith("│ logits"))
    assert "agreement 1.0000 >= " in row and "pass by agreement" in row and "differ" in row  # decided by, next to max abs


def test_bench_on_the_cpu_drops_gpu_only_columns_and_advice(capsys: pytest.CaptureFixture[str],
                                                            rtx_recipe: Path) -> None:
    code, text, err = run(capsys, "bench", str(rtx_recipe), "--out", str(rtx_recipe.parent / "artifacts"),
                          "--iterations", "20", "--warmup", "2")
    assert code == 0, err
    flat = " ".join(text.split())
    assert "engine itself is NOT measured" in flat and "H2D ms" not in text and "xfer floor" not in text
    assert "CUDA graph" not in text and "lock clocks" not in text and "GPU work" not in text
