"""What the CLI prints, as README.md and docs/ promise it: real runs of ``python -m trtflow`` in subprocesses.

- ``build`` says what fp16 lowering kept in fp32 and why, ``validate`` repeats the summary line
  (docs/numerics.md, "Where it shows");
- ``-v`` streams the builder's log at INFO, ``-vv`` TensorRT's VERBOSE too, escaped (README, global options);
- progress bars appear on a terminal (stderr on a pseudo-terminal here) and never in a pipe, under
  ``--json`` or ``--quiet``;
- with ``--json`` stdout is exactly one JSON document, whatever else the command says (on stderr).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.models import make_conv_model
from helpers.numerics import corpus_model
from helpers.numerics import project as corpus_project
from onnx import TensorProto, helper, numpy_helper

# Rich decides "terminal or not" from these too: the tests set the terminal themselves.
_TERMINAL_ENV = ("FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS")
ESC = "\x1b"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TERMINAL_ENV}
    return env | {"TERM": "xterm-256color", "COLUMNS": "160"}


def trtflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``trtflow ARGS`` with stdout and stderr piped (a script, CI)."""
    return subprocess.run([sys.executable, "-m", "trtflow", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300, check=False)


def on_a_terminal(*args: str, cwd: Path) -> tuple[int, str, str]:
    """``trtflow ARGS`` with stderr on a pseudo-terminal (a person at a shell), stdout to a file: (rc, out, err)."""
    master, slave = pty.openpty()
    out_file = cwd / ".stdout"
    with out_file.open("w") as out:
        p = subprocess.Popen([sys.executable, "-m", "trtflow", *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                             stdout=out, stderr=slave)
    os.close(slave)
    chunks = []
    while True:  # read as it comes (a full terminal buffer would block the child), until the child closes it
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = p.wait(timeout=300)
    return rc, out_file.read_text(), b"".join(chunks).decode(errors="replace")


def one_json_document(stdout: str) -> object:
    """stdout parses as exactly one JSON document (json.loads refuses trailing text)."""
    assert stdout.strip(), "nothing on stdout"
    return json.loads(stdout)


def _bn_model(path: Path) -> Path:
    """Conv -> BatchNormalization -> Sigmoid whose BN variance (9.8e7) is beyond fp16's 65504: the same
    weight as PP-OCR's text detector, scaled so the output stays a probability map."""
    rng = np.random.default_rng(0)
    var = np.ones(4, np.float32)
    var[1] = 9.8e7
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "conv.w"),
             numpy_helper.from_array(np.sqrt(var + 1e-5).astype(np.float32), "bn.scale"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bn.bias"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bn.mean"), numpy_helper.from_array(var, "bn.var")]
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
             helper.make_node("Sigmoid", ["b"], ["y"], name="sigmoid")]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fp16_bn(project: Path) -> Path:
    _bn_model(project / "bn.onnx")
    (project / "bn.yaml").write_text("model: bn.onnx\nprecision: fp16\nbuild: {backend: onnxruntime}\n")
    return project / "bn.yaml"


# -- mixed precision: build says what it kept and why, validate repeats the summary ------------------------
SUMMARY = "fp16: 1 of 3 nodes kept in fp32 (1 for a weight above fp16's range)"
REASON = "bn (BatchNormalization): weight 'bn.var' max |x| 9.8e+07 > 65504"


def test_build_prints_what_fp16_kept_in_fp32_and_why(fp16_bn: Path) -> None:
    cwd = fp16_bn.parent
    r = trtflow("build", "bn.yaml", "--out", "out", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # status lines are stderr's: stdout stays for results
    lines = r.stderr.splitlines()
    assert f"  {SUMMARY}" in lines and f"    {REASON}" in lines, r.stderr
    assert "activation ranges not measured" not in r.stderr  # calibration ran (validate's samples, ORT CPU)
    report = json.loads((cwd / "out" / "bn" / "report.json").read_text())["mixed_precision"]
    assert [(k["node"], k["rule"]) for k in report["kept"]] == [("bn", "initializer_overflow")]

    again = trtflow("build", "bn.yaml", "--out", "out", cwd=cwd)  # a cache hit built nothing: says nothing of it
    assert "cache hit" in again.stderr and "kept in fp32" not in again.stderr
    quiet = trtflow("--quiet", "build", "bn.yaml", "--out", "out", "--force", cwd=cwd)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""

    v = trtflow("validate", "bn.yaml", "--out", "out", "--no-build", cwd=cwd)
    assert v.returncode == 0, v.stderr
    assert f"  {SUMMARY} (`trtflow inspect` lists them)" in v.stdout.splitlines(), v.stdout
    saved = json.loads((cwd / "out" / "bn" / "validation.json").read_text())
    assert saved["mixed_precision"]["kept_fp32"] == 1


def test_an_fp32_build_prints_no_mixed_precision(project: Path) -> None:
    _bn_model(project / "bn.onnx")
    (project / "bn.yaml").write_text("model: bn.onnx\nbuild: {backend: onnxruntime}\n")
    r = trtflow("validate", "bn.yaml", "--out", "out", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "kept in fp32" not in r.stdout + r.stderr


@pytest.mark.slow
def test_ppocr_det_fp16_build_prints_the_lines_docs_numerics_shows(tmp_path: Path) -> None:
    """The real model of docs/numerics.md: PP-OCRv4's detector, BN variance 9.79e7 and FPN activations."""
    recipe = corpus_project(tmp_path, corpus_model("ppocr_det"),
                            "precision: fp16\ninputs:\n  x: {shape: [1, 3, 320, 320]}\nbuild: {backend: onnxruntime}\n"
                            "validate:\n  samples: 1\n  inputs:\n    x: {kind: image, mean: [0.485, 0.456, 0.406], "
                            "std: [0.229, 0.224, 0.225]}\n", "det")
    r = trtflow("build", recipe.name, "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    summary = next(ln for ln in lines if "nodes kept in fp32" in ln)
    assert summary.startswith("  fp16: ") and "of 330 nodes" in summary and "1 for a weight above fp16's range" in summary
    assert ("    p2o.BatchNormalization.1 (BatchNormalization): weight 'batch_norm_0.w_2' max |x| 9.79e+07 > 65504"
            in lines)
    reasons = [ln for ln in lines if ln.startswith("    p2o.")]
    assert len(reasons) == 8 and sum("activation '" in ln and "> data_max 512" in ln for ln in reasons) == 7
    assert any(ln.startswith("    ... and ") and ln.endswith("more: report.json `mixed_precision`, `trtflow inspect`")
               for ln in lines)
    v = trtflow("validate", recipe.name, "--out", "out", "--no-build", cwd=tmp_path)
    assert summary.strip() + " (`trtflow inspect` lists them)" in v.stdout, v.stdout


# -- -v / -vv: the builder's log --------------------------------------------------------------------------
def test_v_streams_the_builder_log_and_vv_its_verbose_messages_escaped(project: Path) -> None:
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip extra rtx)")
    model = onnx.load(str(make_conv_model(project / "m.onnx")))
    model.graph.node[0].name = "conv\x1b[2Jone"  # a hostile node name reaches the builder's messages
    onnx.save(model, str(project / "m.onnx"))
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: tensorrt_rtx}\n")

    plain = trtflow("build", "r.yaml", "--out", "out", cwd=project)
    assert plain.returncode == 0, plain.stderr
    assert "[trtflow.builder]" not in plain.stderr

    info = trtflow("-v", "build", "r.yaml", "--out", "out", "--force", cwd=project)
    assert info.returncode == 0, info.stderr
    logged = [ln for ln in info.stderr.splitlines() if ln.startswith("[trtflow.builder] ")]
    assert any(ln.startswith("[trtflow.builder] INFO ") for ln in logged), info.stderr
    assert not any(" DEBUG " in ln for ln in logged)  # TensorRT's VERBOSE is -vv's

    verbose = trtflow("-vv", "build", "r.yaml", "--out", "out", "--force", "--json", cwd=project)
    assert verbose.returncode == 0, verbose.stderr
    debug = [ln for ln in verbose.stderr.splitlines() if ln.startswith("[trtflow.builder] DEBUG ")]
    assert len(debug) > len(logged)
    assert ESC not in verbose.stderr and "conv\\x1b[2Jone" in verbose.stderr  # shown, never sent
    assert one_json_document(verbose.stdout)[0]["cache_hit"] is False  # type: ignore[index]

    both = trtflow("-q", "-v", "build", "r.yaml", "--out", "out", cwd=project)
    assert both.returncode == 64 and "--quiet and --verbose contradict each other" in both.stderr


# -- progress: on a terminal, never in a pipe ------------------------------------------------------------
def test_progress_bars_show_on_a_terminal_and_never_in_a_pipe(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\nvalidate: {samples: 4}\n")

    rc, out, err = on_a_terminal("validate", "r.yaml", "--out", "out", cwd=project)
    assert rc == 0, err
    assert "building r.yaml" in err or "r.yaml: " in err  # the build's spinner
    assert "validating r.yaml" in err and "4/4" in err  # the samples bar, M/N done
    assert ESC not in out and "pass" in out  # the table on stdout (a file) stays plain

    rc, out, err = on_a_terminal("bench", "r.yaml", "--out", "out", "--iterations", "3", "--warmup", "1", cwd=project)
    assert rc == 0, err
    assert "benchmarking r.yaml" in err

    piped = trtflow("validate", "r.yaml", "--out", "out", cwd=project)
    assert piped.returncode == 0, piped.stderr
    assert "validating" not in piped.stderr and ESC not in piped.stderr + piped.stdout
    assert piped.stderr.splitlines() == ["r: cache hit, nothing rebuilt with onnxruntime -> out/r/"]

    for flags in (("--json",), ("-q",)):  # a person asked for a document, or for silence
        args = ("validate", *flags, "r.yaml", "--out", "out") if flags == ("--json",) else (*flags, "validate",
                                                                                            "r.yaml", "--out", "out")
        rc, out, err = on_a_terminal(*args, cwd=project)
        assert rc == 0, err
        assert "validating" not in err and "\x1b[?25l" not in err, (flags, err)  # no bar: not even a hidden cursor


# -- --json: stdout is one document ---------------------------------------------------------------------
def test_json_stdout_is_exactly_one_document_for_every_command(fp16_bn: Path) -> None:
    cwd = fp16_bn.parent
    runs = {
        "plan": ("plan", "bn.yaml", "--json"),
        "build": ("-v", "build", "bn.yaml", "--out", "out", "--json"),   # warnings, mixed precision, a log handler
        "validate": ("validate", "bn.yaml", "--out", "out", "--json"),
        "bench": ("bench", "bn.yaml", "--out", "out", "--json", "--iterations", "2", "--warmup", "0"),
        "inspect": ("inspect", "out/bn", "--json"),
        "init": ("init", "bn.onnx", "--out", "recipes/init.yaml", "--json"),
        "doctor": ("doctor", "--json"),
        "a recipe error": ("plan", "missing.yaml", "--json"),
        "a usage error": ("plan", "bn.yaml", "--json", "--no-such-flag"),
        "an accuracy failure": ("validate", "bn.yaml", "--out", "out", "--json", "--set",
                                "validate.default={atol: 1.0e-9, rtol: 1.0e-9}"),
    }
    codes = {}
    for what, args in runs.items():
        r = trtflow(*args, cwd=cwd)
        doc = one_json_document(r.stdout)
        codes[what] = r.returncode
        if r.returncode:
            assert isinstance(doc, dict) and doc["error"]["code"] == r.returncode, (what, doc)
            assert r.stderr.strip(), what  # the human message still goes to stderr
    assert codes == {"plan": 0, "build": 0, "validate": 0, "bench": 0, "inspect": 0, "init": 0, "doctor": 0,
                     "a recipe error": 2, "a usage error": 64, "an accuracy failure": 4}
