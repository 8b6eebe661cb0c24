"""The HTTP example (examples/serve/) on the CPU engine: a real server process on 127.0.0.1, driven by
its load test from this process (bounded in requests and time), plus the error answers."""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
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


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    r = subprocess.run([sys.executable, "-m", "trtflow.cli", "build", str(EXAMPLE / "cls_u8.yaml"), "--out", str(out),
                        "--backend", "onnxruntime"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "cls_u8"


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

        png = io.BytesIO()
        Image.new("RGB", (224, 224), (120, 30, 200)).save(png, format="PNG")
        conn.request("POST", "/infer", body=png.getvalue(), headers={"Content-Type": "image/png"})
        r = conn.getresponse()
        top = json.loads(r.read())
        assert r.status == 200 and len(top["logits"]["indices"][0]) == 5
        conn.close()
        code, stats = lt._get(port, "/stats")
        s = json.loads(stats)
        assert code == 200 and s["model"] == "cls_u8" and s["instances"][0]["requests"] == 1  # the bad body never reached the engine
        assert s["instances"][0]["errors"] == 0
    finally:
        lt.stop_server(proc)
