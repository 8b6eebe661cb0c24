"""Exit codes and the JSON error object: one table (errors.EXIT_CODES), one handler (cli.main), the README.

Most cases run the real command in-process through ``cli.main`` (what the ``trtflow`` script calls); the
tests that make a command raise on purpose to reach the handler say so in their names (``contract``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers.models import ROOT, make_conv_model

from trtflow import cli
from trtflow.errors import EXIT_CODES, TrtflowError, error_object


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err


def one_error(out: str) -> dict[str, Any]:
    doc = json.loads(out)  # exactly one JSON document on stdout
    assert set(doc) == {"error"}, doc
    err: dict[str, Any] = doc["error"]
    assert {"code", "class", "message", "hint", "file", "line", "column", "field", "details"} <= set(err)
    return err


def test_readme_documents_the_exit_code_table() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| `?([^|`]+?)`? \|", readme, re.MULTILINE)}
    assert rows.keys() == {c.code for c in EXIT_CODES}, rows
    for c in EXIT_CODES:
        assert rows[c.code] == c.name, (c.code, rows[c.code], c.name)
    assert len({c.code for c in EXIT_CODES}) == len(EXIT_CODES)


def test_usage_error_is_64_and_distinct_from_recipe_and_backend_errors(
        capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, err = run(capsys, "plan", "--no-such-option", "x.yaml")
    assert code == 64 and "No such option" in err and out == ""
    code, out, _ = run(capsys, "plan", "--no-such-option", "x.yaml", "--json")
    e = one_error(out)
    assert code == e["code"] == 64 and e["class"] == "UsageError" and "--no-such-option" in e["message"]
    code, _, _ = run(capsys, "plan")  # missing argument
    assert code == 64

    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\ninputs:\n  image:\n    memory: pined\n")
    code, out, err = run(capsys, "plan", str(project / "r.yaml"), "--json")
    e = one_error(out)
    assert code == e["code"] == 2 and e["class"] == "RecipeError"
    assert e["file"].endswith("r.yaml") and (e["line"], e["column"], e["field"]) == (4, 5, "inputs.image.memory")
    assert "r.yaml:4:5 inputs.image.memory" in err and "Traceback" not in err

    (project / "b.yaml").write_text("model: m.onnx\nbuild: {backend: tensorrt}\n")
    code, out, err = run(capsys, "build", str(project / "b.yaml"), "--out", str(project / "build"), "--json")
    e = one_error(out)
    assert code == e["code"] == 3 and e["class"] == "BackendMissing" and "trtflow[" in e["hint"]


def test_debug_never_changes_the_code(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nprecision: fp99\n")
    code, _, err = run(capsys, "plan", str(project / "r.yaml"))
    assert code == 2 and "Traceback" not in err
    code, _, err = run(capsys, "--debug", "plan", str(project / "r.yaml"))
    assert code == 2 and "Traceback" in err and "precision" in err
    code, _, err = run(capsys, "--debug", "plan", "--bogus")
    assert code == 64


def test_contract_internal_error_is_70_with_a_json_object(capsys: pytest.CaptureFixture[str], project: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside a command (made here by a planner that raises) exits 70, never a traceback without --debug."""
    import trtflow.plan

    def broken(*_: Any, **__: Any) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(trtflow.plan, "make_plan", broken)
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\n")
    code, out, err = run(capsys, "plan", str(project / "r.yaml"))
    assert code == 70 and "internal error: ZeroDivisionError" in err and "Traceback" not in err
    code, out, err = run(capsys, "plan", str(project / "r.yaml"), "--json")
    e = one_error(out)
    assert code == e["code"] == 70 and e["class"] == "ZeroDivisionError" and "bug" in e["hint"]
    code, out, err = run(capsys, "--debug", "plan", str(project / "r.yaml"))
    assert code == 70 and "Traceback" in err


def test_contract_interrupt_is_130(capsys: pytest.CaptureFixture[str], project: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import trtflow.plan

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trtflow.plan, "make_plan", interrupted)
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\n")
    code, out, err = run(capsys, "plan", str(project / "r.yaml"), "--json")
    assert code == 130 and one_error(out)["class"] == "Interrupted" and "interrupted" in err


def test_contract_os_errors_a_user_can_fix_are_output_errors(capsys: pytest.CaptureFixture[str], project: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import trtflow.plan

    def disk_full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(project / "build"))

    monkeypatch.setattr(trtflow.plan, "make_plan", disk_full)
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\n")
    code, out, _ = run(capsys, "plan", str(project / "r.yaml"), "--json")
    e = one_error(out)
    assert code == e["code"] == 10 and e["class"] == "OutputError" and "free space" in e["hint"]


def test_export_that_exists_is_an_output_error_not_an_artifact_error(
        capsys: pytest.CaptureFixture[str], project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    args = ("export", "triton", str(project / "r.yaml"), "--out", str(project / "repo"),
            "--build-out", str(project / "build"))
    code, _, err = run(capsys, *args)
    assert code == 0, err
    code, out, err = run(capsys, *args, "--json")
    e = one_error(out)
    assert code == e["code"] == 10 and e["class"] == "OutputError" and "--force" in e["hint"]
    code, _, err = run(capsys, "init", str(project / "m.onnx"), "--out", str(project / "r.yaml"))
    assert code == 10 and "already exists" in err


def test_bench_and_validate_give_the_same_code_for_no_gpu(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    from trtflow.runtime import cuda

    if cuda.cuda_available():
        pytest.skip("this machine has a CUDA GPU")
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    codes = set()
    for cmd in ("validate", "bench"):
        code, out, _ = run(capsys, cmd, str(project / "r.yaml"), "--out", str(project / "build"), "--device", "cuda",
                           "--json")
        e = one_error(out)
        assert code == e["code"] and e["class"] == "BackendMissing", (cmd, e)
        codes.add(code)
    assert codes == {3}


def test_failed_validation_prints_one_document_with_the_error(capsys: pytest.CaptureFixture[str],
                                                              project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nprecision: fp16\nbuild: {backend: onnxruntime}\n"
                                    "validate: {default: {atol: 1e-7, rtol: 1e-7}}\n")
    code, out, _ = run(capsys, "validate", str(project / "r.yaml"), "--out", str(project / "build"), "--json")
    doc = json.loads(out)
    assert code == 4 and doc["passed"] is False and doc["error"]["class"] == "AccuracyFailure"


def test_error_object_of_a_multi_error_recipe_lists_every_cause() -> None:
    from trtflow.errors import RecipeError
    from trtflow.recipe import parse_recipe

    with pytest.raises(RecipeError) as exc:
        parse_recipe("model: m.onnx\nprecision: fp99\nstreams: {depth: 0, topology: x}\n", Path("r.yaml"))
    e = error_object(exc.value)["error"]
    assert e["line"] == 2 and e["field"] == "precision" and len(e["details"]) >= 3
    assert all({"file", "line", "column", "field", "message"} <= set(d) for d in e["details"])
    assert error_object(TrtflowError("x"))["error"]["code"] == 70  # the bare base class is not a user error


def test_no_gpu_is_found_before_building_and_quiet_is_quiet(capsys: pytest.CaptureFixture[str],
                                                             project: Path) -> None:
    from trtflow.runtime import cuda

    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    out = str(project / "artifacts")
    if not cuda.cuda_available():
        code, _, _ = run(capsys, "validate", str(project / "r.yaml"), "--out", out, "--device", "cuda")
        assert code == 3 and not (project / "artifacts").exists()
    code, _, _ = run(capsys, "validate", str(project / "r.yaml"), "--out", out, "--device", "tpu")
    assert code == 64
    for args in (("build", str(project / "r.yaml"), "--out", out), ("validate", str(project / "r.yaml"), "--out", out),
                 ("export", "triton", str(project / "r.yaml"), "--build-out", out, "--out", str(project / "repo"))):
        code, _, err = run(capsys, "--quiet", *args)
        assert code == 0 and err == "", (args, err)
