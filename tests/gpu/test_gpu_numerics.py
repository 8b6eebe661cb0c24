"""GPU: fp16 mixed precision and our onnx2torch converters on the torch CUDA engine, real corpus models.

PP-OCRv4's detector in fp16 keeps its 9.8e7 BatchNorm variance in fp32 and must match the fp32 reference;
YOLOv8 in fp16 at 640 px; silero VAD (If on the sample rate, LSTM, reflect Pad) runs eagerly on the GPU.
The models come from the corpus (``python scripts/corpus.py fetch --gpu`` into .corpus/ or $TRTFLOW_CORPUS).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_gpu_runtime as gpu
from helpers.numerics import build_and_validate, corpus_model, project

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu.REASON is not None, reason=f"GPU tests: {gpu.REASON}"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

NORM = "mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]"


def test_ppocr_det_fp16_on_torch_cuda_matches_fp32(tmp_path: Path) -> None:
    body = ("precision: fp16\ninputs:\n  x: {shape: [1, 3, 640, 640]}\nbuild: {backend: torch}\n"
            f"validate:\n  samples: 2\n  inputs:\n    x: {{kind: image, {NORM}}}\n")
    report, rep = build_and_validate(project(tmp_path, corpus_model("ppocr_det"), body, "det16"),
                                     backend="torch", device="cuda")
    assert any(k["rule"] == "initializer_overflow" for k in report["mixed_precision"]["kept"])
    (o,) = rep.outputs
    print(f"\nppocr_det fp16 torch cuda: max abs {o.max_abs:.3g}, mean abs {o.mean_abs:.3g}, "
          f"p99 abs {o.p99_abs:.3g}, {o.failing}/{o.total} beyond 1e-2, {o.decided_by}")
    # the default policy for a sigmoid map of an fp16 build: mean error and iou at 0.5 (docs/numerics.md)
    assert o.statistic == "mean" and o.metrics[0].kind == "iou" and o.metrics[0].on == ">= 0.5"
    assert rep.passed and o.mean_abs < 1e-3


@pytest.mark.xfail(strict=True, reason="YOLOv8n fp16 box coordinates (pixels) are up to 1.07 px off at 640x640 on "
                   "the H200 (max rel 0.2), beyond the elementwise 1e-2 gate that non-probability outputs keep; "
                   "the same verdict as the corpus tier's XFAIL_VALUES[('nudenet_320n', 'fp16')]")
def test_yolov8_fp16_on_torch_cuda(tmp_path: Path) -> None:
    body = ("precision: fp16\ninputs:\n  images: {shape: [1, 3, 640, 640]}\nbuild: {backend: torch}\n"
            "validate:\n  samples: 2\n  inputs:\n    images: {kind: image}\n")
    _, rep = build_and_validate(project(tmp_path, corpus_model("nudenet_320n"), body, "yolo16"),
                                backend="torch", device="cuda")
    (o,) = rep.outputs
    print(f"\nnudenet fp16 torch cuda: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}")
    assert rep.passed


def test_silero_vad_on_torch_cuda(tmp_path: Path) -> None:
    body = ("inputs:\n  input: {shape: [1, 512]}\n  state: {shape: [2, 1, 128]}\nbuild: {backend: torch}\n"
            "validate:\n  samples: 4\n  tolerances: {stateN: {atol: 1.0e-4, rtol: 1.0e-4}}\n  inputs:\n"
            "    sr: {kind: choice, values: [16000, 8000]}\n    state: {kind: zeros}\n"
            "    input: {kind: range, low: -0.5, high: 0.5}\n")
    _, rep = build_and_validate(project(tmp_path, corpus_model("silero_vad"), body, "vad"), backend="torch",
                                device="cuda")
    print("\nsilero torch cuda: " + ", ".join(f"{o.name} max abs {o.max_abs:.3g}" for o in rep.outputs))
    assert rep.passed, [o.to_dict() for o in rep.outputs]
