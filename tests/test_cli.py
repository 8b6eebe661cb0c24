"""The CLI as a user runs it: exit codes, JSON output, error messages with file:line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.models import ROOT, make_conv_model


def trtflow(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trtflow.cli", *args], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=300)


def test_plan_json_of_shipped_recipe() -> None:
    r = trtflow("plan", "recipes/seg_hd.yaml", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["totals"]["ratio"] < 0.25 and p["inputs"][0]["dtype"] == "uint8"


def test_plan_table_and_link_override() -> None:
    r = trtflow("plan", "recipes/seg_hd.yaml", "--h2d-gbps", "27")
    assert r.returncode == 0 and "H2D 27.0 GB/s" in r.stdout and "moves 4.2% of the naive bytes" in r.stdout


def test_recipe_error_exit_code_and_location(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\ninputs:\n  image:\n    memory: pined\n")
    r = trtflow("plan", str(project / "r.yaml"))
    assert r.returncode == 2 and "r.yaml:4:5 inputs.image.memory" in r.stderr and "Traceback" not in r.stderr


def test_build_validate_and_cache(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\noutputs: {logits: {reduce: {op: argmax}}}\n"
                                    "build: {backend: onnxruntime}\n")
    out = str(project / "build")
    r = trtflow("build", str(project / "r.yaml"), "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["cache_hit"] is False
    r = trtflow("build", str(project / "r.yaml"), "--out", out, "--json")
    assert json.loads(r.stdout)[0]["cache_hit"] is True and "cache hit" in r.stderr
    r = trtflow("validate", str(project / "r.yaml"), "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["outputs"][0]["metrics"][0]["kind"] == "agreement"
    assert (project / "build" / "r" / "validation.json").is_file()


def test_validate_failure_exits_4(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    # fp16 compute against an fp32 reference with fp32 tolerances must fail
    (project / "r.yaml").write_text("model: m.onnx\nprecision: fp16\nbuild: {backend: onnxruntime}\n"
                                    "validate: {default: {atol: 1e-7, rtol: 1e-7}}\n")
    r = trtflow("validate", str(project / "r.yaml"), "--out", str(project / "build"))
    assert r.returncode == 4 and "FAIL" in r.stdout and "validation failed for r" in r.stderr


def test_schema_check_is_fresh() -> None:
    r = trtflow("schema", "--check")
    assert r.returncode == 0, r.stderr


def test_doctor_json() -> None:
    r = trtflow("doctor", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert {b["name"] for b in info["backends"]} >= {"tensorrt", "tensorrt_rtx", "onnxruntime", "torch"}


def test_schema_check_fails_when_stale(tmp_path: Path) -> None:
    stale = tmp_path / "schema.json"
    stale.write_text("{}\n")
    r = trtflow("schema", "--check", "--out", str(stale))
    assert r.returncode == 1 and "stale" in r.stderr


def test_bench_refuses_an_unknown_sweep_and_options_it_would_ignore_before_building(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    out = project / "out"
    cases = {("--sweep", "bogus"): "hint: --sweep memory | batch | precision | encoding | instances | devices",
             ("--sweep", "memory", "--concurrency", "4"): "--sweep memory does not take --concurrency",
             ("--sweep", "encoding", "--check", "--duration", "2"): "--sweep encoding does not take --duration, --check"}
    for args, said in cases.items():
        r = trtflow("bench", str(project / "r.yaml"), "--out", str(out), *args)
        assert r.returncode == 64 and said in r.stderr, (args, r.stderr)
    assert not out.exists()  # refused before the build, not after it
