"""The HTTP example (examples/serve/) on the CPU engine: a real server process on 127.0.0.1, driven by
its load test from this process (bounded in requests and time), plus the error answers; for a raw input
(cls_u8.yaml) and for an encoded one (cls_jpeg.yaml: the JPEG/PNG file's bytes go to the runner, which
decodes them with its host decoder here)."""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import scripts
from helpers.image_files import corrupt_header, jpeg, png, truncated
from helpers.models import ROOT

EXAMPLE = ROOT / "examples" / "serve"
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn", "onnxruntime")),
    reason="needs the serve extra (starlette, uvicorn) and onnxruntime")


def _loadtest() -> Any:
    spec = importlib.util.spec_from_file_location("serve_loadtest", EXAMPLE / "loadtest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _build(name: str, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "trtflow.cli", "build", str(EXAMPLE / f"{name}.yaml"), "--out", str(out),
                        "--backend", "onnxruntime"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return out / name


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("cls_u8", tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def jpeg_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("cls_jpeg", tmp_path_factory.mktemp("build"))


def _call(conn: http.client.HTTPConnection, body: bytes, content_type: str) -> tuple[int, Any]:
    conn.request("POST", "/infer", body=body, headers={"Content-Type": content_type})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_http_example_load_test_on_the_cpu(artifact: Path, tmp_path: Path) -> None:
    report = tmp_path / "load.json"
    r = subprocess.run([sys.executable, str(EXAMPLE / "loadtest.py"), str(artifact), "--concurrency", "1", "3",
                        "--requests", "24", "--seconds", "30", "--json", str(report)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(report.read_text())
    assert data["check"] == "ok"  # the server's answer equals an in-process runner's
    assert [h["concurrency"] for h in data["http"]] == [1, 3]
    assert all(h["requests"] == 24 and h["status"] == {"200": 24} for h in data["http"])
    assert all(x["requests"] == 24 and x["p99_ms"] >= x["p50_ms"] > 0 for x in data["runner"])
    assert "| clients | HTTP img/s |" in r.stdout


def test_http_example_error_answers(artifact: Path) -> None:
    lt = _loadtest()
    port = lt._free_port()
    proc = lt.start_server(artifact, port, [], timeout=120)
    try:
        conn = http.client.HTTPConnection(lt.HOST, port, timeout=60)
        code, body, _ = lt._post(conn, b"\0" * 10)
        assert code == 400 and "expected 150528 bytes (uint8 [1, 224, 224, 3]), got 10" in json.loads(body)["error"]
        from PIL import Image

        png_body = io.BytesIO()
        Image.new("RGB", (224, 224), (120, 30, 200)).save(png_body, format="PNG")
        code, answer = _call(conn, png_body.getvalue(), "image/png")  # decoding belongs to the runner
        assert code == 415 and "expected the raw uint8 [1, 224, 224, 3] array (application/octet-stream), got a " \
            "image/png body" in answer["error"] and "encoding: image" in answer["error"]
        code, answer = _call(conn, b"\0" * 150529, "application/octet-stream")
        assert code == 413 and "input 'images': expected at most 150528 bytes" in answer["error"]
        code, answer = _call(conn, b"\0" * 150528, "application/octet-stream")
        assert code == 200 and len(answer["logits"]["indices"][0]) == 5
        conn.close()
        code, stats = lt._get(port, "/stats")
        s = json.loads(stats)
        assert code == 200 and s["model"] == "cls_u8" and s["instances"][0]["requests"] == 1  # the bad body never reached the engine
        assert s["instances"][0]["errors"] == 0 and s["input"]["encoding"] is None
    finally:
        lt.stop_server(proc)


def test_http_example_sends_image_files_to_an_encoded_input(jpeg_artifact: Path) -> None:
    """The body is the file's bytes; the runner decodes it: the answer equals a runner called with the same file."""
    from trtflow.runtime.runner import Runner

    lt = _loadtest()
    port = lt._free_port()
    proc = lt.start_server(jpeg_artifact, port, [], timeout=120)
    files = {"image/jpeg": jpeg(224, 224, seed=3), "image/png": png(224, 224, seed=4)}
    try:
        conn = http.client.HTTPConnection(lt.HOST, port, timeout=60)
        answers = {ct: _call(conn, data, ct) for ct, data in files.items()}
        bad = {"corrupt": _call(conn, corrupt_header(files["image/jpeg"]), "image/jpeg"),
               "truncated": _call(conn, truncated(files["image/jpeg"]), "image/jpeg"),
               "size": _call(conn, jpeg(100, 120), "image/jpeg"),
               "garbage": _call(conn, b"hello", "image/jpeg"),
               "large": _call(conn, b"\xff" * (2 * 224 * 224 * 3 + (1 << 20) + 1), "image/jpeg")}
        conn.close()
        stats_code, stats = lt._get(port, "/stats")
    finally:
        lt.stop_server(proc)
    assert stats_code == 200
    with Runner(jpeg_artifact, backend="onnxruntime", device="cpu") as r:
        for ct, data in files.items():
            ref = r.run({"images": data}, copy=True)
            code_ok, got = answers[ct]
            assert code_ok == 200, got
            assert got["logits"]["indices"] == ref["logits_indices"].tolist()
            np.testing.assert_allclose(got["logits"]["values"], ref["logits_values"], rtol=1e-6)
    for key, words in {"corrupt": "corrupt JPEG", "truncated": "truncated JPEG",
                       "size": "the image is 120x100 (WxH), the engine takes 224x224",
                       "garbage": "no image format known here"}.items():
        status, answer = bad[key]
        assert status == 400 and answer["error"].startswith("input 'images': ") and words in answer["error"], answer
    status, answer = bad["large"]
    assert status == 413 and "input 'images': expected at most 1349632 bytes (a 224x224 image file: twice its pixels + 1 MiB), got 1349633" in answer["error"]
    s = json.loads(stats)
    assert s["input"]["encoding"] == "image" and s["input"]["decoder"].startswith("host (Pillow)")
    # the runner's header checks refused the 4 bad files (counted as errors); the oversized body never reached it
    assert s["instances"][0]["requests"] == 6 and s["instances"][0]["errors"] == 4


def test_http_example_load_test_with_jpeg_bodies(jpeg_artifact: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(jpeg(224, 224, seed=5))
    report = tmp_path / "load.json"
    r = subprocess.run([sys.executable, str(EXAMPLE / "loadtest.py"), str(jpeg_artifact), "--image", str(image),
                        "--concurrency", "1", "2", "--requests", "12", "--seconds", "20", "--json", str(report)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(report.read_text())
    assert data["check"] == "ok" and data["content_type"] == "image/jpeg"
    assert data["input_bytes"] == image.stat().st_size and data["pixel_bytes"] == 224 * 224 * 3
    assert all(h["requests"] == 12 and h["status"] == {"200": 12} for h in data["http"])
    assert all(x["requests"] == 12 for x in data["runner"])
    assert f"{image.stat().st_size:,} B of image/jpeg per request, decoded to 150,528 B of pixels" in r.stdout
    scripts.load("gpu_serving").print_tables({"http_jpeg": data})  # the GPU machine's table (--only http_jpeg)
    assert f"| JPEG file | {image.stat().st_size:,} | 2 | " in capsys.readouterr().out
