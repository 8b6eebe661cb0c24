"""scripts/corpus.py (list, table, the GPU selection) and scripts/gpu_corpus.py --render, on written results.

The results rows are written here in the format tests/corpus/test_corpus.py appends (the real rows come
from the corpus tier); what is checked is the table the docs are generated from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import corpus
import gpu_corpus


def _rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_takes_the_last_row_and_footnotes_reasons(tmp_path: Path) -> None:
    res = _rows(tmp_path / "results.jsonl", [
        {"model": "ppocr_cls", "precision": "fp32", "stage": "validate", "shape": "min", "ok": False, "err": 1.0},
        {"model": "ppocr_cls", "precision": "fp32", "stage": "validate", "shape": "min", "ok": True, "err": 0.0},
        {"model": "ppocr_cls", "precision": "fp16", "stage": "validate", "shape": "min", "ok": True, "err": 0.0123},
        {"model": "ppocr_det", "precision": "fp16", "stage": "validate", "shape": "max", "ok": False, "err": 0.04,
         "shapes": {"x": [1, 3, 64, 64]}, "why": "sigmoid_0.tmp_0: iou (>= 0.5) 0.5 < 0.99",
         "decided_by": ["elemwise mean"]},
        {"model": "slanet", "precision": "fp32", "stage": "build", "ok": False, "reason": "RTX assertion"},
        {"model": "ppocr_cls", "precision": "fp32", "stage": "contract", "ok": True, "bytes": 100, "naive_bytes": 400,
         "contract": "uint8 in"},
    ])
    text = corpus.table(res)
    cls = next(line for line in text.splitlines() if line.startswith("| ppocr_cls "))
    assert "| pass / pass | min | 0 | 0.012 |" in cls and "400 B -> 100 B (4x, validated)" in cls
    det = next(line for line in text.splitlines() if line.startswith("| ppocr_det "))
    assert "| not run / **fails** [" in det and "| **0.04** [" in det  # the failure and the probability rule
    assert "ppocr_det fp16: at max {'x': [1, 3, 64, 64]}: sigmoid_0.tmp_0: iou (>= 0.5) 0.5 < 0.99" in text
    slanet = next(line for line in text.splitlines() if line.startswith("| slanet "))
    assert "**no build** [" in slanet and "RTX assertion" in text
    doc = tmp_path / "models.md"
    doc.write_text(f"intro\n{corpus.TABLE_BEGIN}\nold\n{corpus.TABLE_END}\nrest\n")
    corpus.write_table(doc, text)
    body = doc.read_text()
    assert body.startswith("intro\n") and body.endswith("\nrest\n") and "\nold\n" not in body and "| slanet " in body


def test_gpu_selection_fits_the_carry_budget() -> None:
    gpu = [m for m in corpus.MODELS if m.gpu]
    exporters = " ".join(m.exporter for m in gpu)
    assert "Paddle" in exporters and "YOLOv8" in exporters and "tf2onnx" in exporters
    assert any("audio" in m.task for m in gpu)
    cached = [m for m in gpu if m.wheel is not None]
    assert len(cached) == 3  # 14.1 MB: with the repository (~40 MB) and .whl/ (~12 MB) under 64 MiB


def test_every_contract_names_a_model_and_the_repo_model_is_pinned() -> None:
    ids = {m.id for m in corpus.MODELS}
    assert set(corpus.CONTRACTS) <= ids
    repo = next(m for m in corpus.MODELS if m.wheel is None)
    assert corpus.sha256_of(corpus.model_path(repo)) == repo.sha256, "models/export.py output changed: re-pin"


def test_gpu_render_writes_between_the_markers(tmp_path: Path) -> None:
    run = {"gpu": "NVIDIA H200", "versions": {"torch": "2.11"}, "seconds": 12.5, "rows": [
        {"model": "ppocr_cls", "precision": "fp32", "passed": True, "worst": {"min": 1e-6}, "failing": [], "seconds": 3.0},
        {"model": "nudenet_320n", "precision": "fp16", "passed": False, "error": "BuildError: onnx2torch lacks X",
         "seconds": 1.0},
        {"model": "oww_embedding", "precision": "fp32", "skipped": "skipped (time budget)"},
    ]}
    src = tmp_path / "corpus_gpu.json"
    src.write_text(json.dumps(run))
    doc = tmp_path / "models.md"
    doc.write_text(f"a\n{gpu_corpus.GPU_BEGIN}\n(not run)\n{gpu_corpus.GPU_END}\nb\n")
    assert gpu_corpus.main(["--render", str(src), "--write", str(doc)]) == 0
    body = doc.read_text()
    assert "on NVIDIA H200 (torch engine; torch 2.11), 12.5 s" in body and "(not run)" not in body
    assert "| ppocr_cls | fp32 | pass | min 1e-06 | 3.0 |" in body
    assert "| nudenet_320n | fp16 | **fails**: BuildError: onnx2torch lacks X |" in body
    assert "skipped (time budget)" in body and body.endswith("\nb\n")
