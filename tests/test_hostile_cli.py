"""The CLI against hostile input (issue 15 items 3, 6, 7, 9, 15 and siblings): every command, real
subprocesses, real files; exit codes from the table, valid JSON on every error, names shown, never obeyed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.models import make_conv_model

from trtflow.terminal import markup, plain

IN = "[/][bold red]x\x1b[2J"               # closes a tag that is not open (crashed plan), styles, clears the screen
OUT = "[link=file:///etc/passwd]o[/link]"   # a hyperlink in terminals that support OSC 8
SGR = re.compile(r"\x1b\[[0-9;]*m")         # Rich's own colours, removed before reading the text


def cli(*args: str, cwd: Path, color: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}
    if color:  # a colour terminal, as a person sees it: markup would be rendered, links emitted
        env.update(FORCE_COLOR="1", TERM="xterm-256color")
    else:
        env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "trtflow", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False, timeout=300)


def hostile_model(path: Path, names: tuple[str, str] = (IN, OUT)) -> Path:
    import onnx

    make_conv_model(path)
    m = onnx.load(str(path))
    rename = {"image": names[0], "logits": names[1]}
    for vi in (*m.graph.input, *m.graph.output):
        vi.name = rename[vi.name]
    for node in m.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


@pytest.fixture
def hostile(project: Path) -> Path:
    hostile_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    return project


def _safe(p: subprocess.CompletedProcess[str], *, code: int = 0, shows: tuple[str, ...] = ()) -> str:
    raw = p.stdout + p.stderr
    assert p.returncode == code, raw[-3000:]
    assert "Traceback" not in raw and "internal error" not in raw
    assert "\x1b[2J" not in raw and "\x1b]8;" not in raw  # no screen clear, no hyperlink reached the terminal
    text = SGR.sub("", raw)
    for want in shows:
        assert want in text, (want, text[-3000:])
    return text


# -- item 9: every command, hostile tensor names ------------------------------------------------------
@pytest.mark.slow
def test_every_command_shows_hostile_names_as_text(hostile: Path) -> None:
    shown_in, shown_out = plain(IN), OUT  # the ESC is shown as the 4 characters \x1b
    _safe(cli("plan", "r.yaml", cwd=hostile), shows=(shown_in, shown_out))
    _safe(cli("build", "r.yaml", cwd=hostile))
    _safe(cli("validate", "r.yaml", cwd=hostile), shows=(shown_out,))
    _safe(cli("bench", "r.yaml", "--device", "cpu", "--iterations", "2", "--warmup", "0", "--no-link",
              cwd=hostile))
    _safe(cli("inspect", "artifacts/r", cwd=hostile), shows=(shown_in, shown_out))
    _safe(cli("init", "m.onnx", "-o", "init.yaml", cwd=hostile))
    _safe(cli("plan", "init.yaml", cwd=hostile), shows=(shown_in, shown_out))
    _safe(cli("doctor", cwd=hostile))
    for args in (("plan", "r.yaml", "--json"), ("inspect", "artifacts/r", "--json")):
        doc = json.loads(cli(*args, cwd=hostile, color=False).stdout)
        assert IN in json.dumps(doc, ensure_ascii=False) or json.dumps(IN) in json.dumps(doc)


def test_error_messages_quote_hostile_names_as_text(hostile: Path) -> None:
    """A recipe naming a tensor the model lacks: the error quotes both names, escaped, exit 2."""
    (hostile / "bad.yaml").write_text('model: m.onnx\ninputs: {"[bold]y\\e[2J": {memory: pinned}}\n')
    text = _safe(cli("plan", "bad.yaml", cwd=hostile), code=2, shows=("the model has no input named",))
    assert "[bold]y" in text and r"\x1b[2J" in text
    doc = json.loads(cli("plan", "bad.yaml", "--json", cwd=hostile, color=False).stdout)
    assert doc["error"]["code"] == 2 and "\x1b[2J" in doc["error"]["message"]  # JSON keeps the real name


def test_markup_helper() -> None:
    assert markup("[/]") == "\\[/]" and plain("a\x1b[2J\u202eb") == "a\\x1b[2J\\u202eb"
    assert plain("two\nlines", newlines=True) == "two\nlines" and plain("two\nlines") == "two\\nlines"


def test_bench_graph_label_is_not_swallowed_as_markup() -> None:
    """A sibling found on the way: the table label 'x [graph]' lost its '[graph]' (read as a style tag)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=80).print(markup("fp16 [graph]"))
    assert "[graph]" in buf.getvalue()


# -- item 6: folders of recipes -------------------------------------------------------------------------
@pytest.fixture
def batch(project: Path) -> Path:
    make_conv_model(project / "m.onnx")
    folder = project / "recipes"
    folder.mkdir()
    (folder / "a.yaml").write_text("model: ../m.onnx\nbuild: {backend: onnxruntime}\n")
    (folder / "b.yaml").write_text("model: ../m.onnx\nprecison: fp16\n")  # typo: a recipe error
    (folder / "c.yaml").write_text("model: ../m.onnx\nbuild: {backend: onnxruntime}\nname: c\n")
    return project


@pytest.mark.parametrize("command", ["plan", "build", "validate"])
def test_folder_with_one_bad_recipe_runs_the_rest(batch: Path, command: str) -> None:
    p = cli(command, "recipes", cwd=batch, color=False)
    assert p.returncode == 2, p.stderr  # the first failure's code: b's recipe error
    assert "error: b.yaml: " in p.stderr and "precison: unknown field" in p.stderr
    assert "1 of 3 recipes failed: b.yaml (2)" in p.stderr
    assert re.search(r"a\.yaml\W+a: ", p.stderr) and re.search(r"c\.yaml\W+c: ", p.stderr)  # the summary table
    if command != "plan":
        assert (batch / "artifacts" / "a" / "report.json").is_file()
        assert (batch / "artifacts" / "c" / "report.json").is_file()


@pytest.mark.parametrize("command", ["plan", "build", "validate"])
def test_folder_json_is_one_valid_document_with_each_error(batch: Path, command: str) -> None:
    p = cli(command, "recipes", "--json", cwd=batch, color=False)
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    assert isinstance(doc, list) and len(doc) == 3
    assert doc[1]["recipe"].endswith("b.yaml") and doc[1]["error"]["code"] == 2
    assert doc[1]["error"]["line"] == 2 and doc[1]["error"]["field"] == "precison"
    assert "error" not in doc[0] and "error" not in doc[2]


@pytest.mark.slow
def test_folder_of_good_recipes_exits_0_and_accuracy_failure_is_4(batch: Path) -> None:
    (batch / "recipes" / "b.yaml").write_text("model: ../m.onnx\nprecision: fp16\nbuild: {backend: onnxruntime}\n"
                                              "validate: {default: {atol: 1e-9, rtol: 1e-9}}\n")
    assert cli("build", "recipes", cwd=batch, color=False).returncode == 0
    p = cli("validate", "recipes", cwd=batch, color=False)
    assert p.returncode == 4 and "validation failed for b" in p.stderr


def test_folder_with_an_unreadable_recipe_still_runs_the_rest(batch: Path) -> None:
    """An unreadable recipe (no permission; as root, a FIFO) is one recipe error; the others still build."""
    (batch / "recipes" / "b.yaml").write_text("model: ../m.onnx\nbuild: {backend: onnxruntime}\n")
    (batch / "recipes" / "b.yaml").chmod(0o000)
    if os.access(batch / "recipes" / "b.yaml", os.R_OK):  # root reads anything: use a FIFO instead
        (batch / "recipes" / "b.yaml").unlink()
        os.mkfifo(batch / "recipes" / "b.yaml")
    p = cli("build", "recipes", cwd=batch, color=False)
    assert p.returncode == 2 and "b.yaml" in p.stderr
    assert (batch / "artifacts" / "c" / "report.json").is_file()


# -- item 3: stale is exit 6 everywhere ----------------------------------------------------------------
@pytest.fixture
def built(project: Path) -> Path:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    assert cli("build", "r.yaml", cwd=project, color=False).returncode == 0
    return project


def test_validate_no_build_refuses_an_artifact_of_another_recipe(built: Path) -> None:
    (built / "other").mkdir()
    make_conv_model(built / "other" / "m.onnx", classes=7)
    (built / "other" / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    p = cli("validate", "other/r.yaml", "--no-build", "--out", "artifacts", cwd=built, color=False)
    assert p.returncode == 6 and "is stale" in p.stderr and "built from" in p.stderr, p.stderr
    p = cli("validate", "other/r.yaml", "--no-build", "--json", cwd=built, color=False)
    assert p.returncode == 6 and json.loads(p.stdout)["error"]["code"] == 6


@pytest.mark.slow
def test_validate_no_build_refuses_an_artifact_from_before_an_edit(built: Path) -> None:
    (built / "r.yaml").write_text("model: m.onnx\nprecision: fp16\nbuild: {backend: onnxruntime}\n")
    p = cli("validate", "r.yaml", "--no-build", cwd=built, color=False)
    assert p.returncode == 6 and "precision" in p.stderr, p.stderr
    p = cli("validate", "r.yaml", "--no-build", "--allow-stale", cwd=built, color=False)
    assert p.returncode in (0, 4), p.stderr  # asked for: it runs the artifact as it is
    p = cli("validate", "r.yaml", "--no-build", "--set", "precision=fp16", cwd=built, color=False)
    assert p.returncode == 6  # overrides count: the artifact is not what this command line would build


def test_validate_no_build_accepts_a_fresh_artifact_and_a_comment_edit(built: Path) -> None:
    (built / "r.yaml").write_text("# a comment\nmodel: m.onnx\nbuild: {backend: onnxruntime}\n")
    assert cli("validate", "r.yaml", "--no-build", cwd=built, color=False).returncode == 0


@pytest.mark.slow
def test_inspect_stale_exits_6_unless_allowed(built: Path) -> None:
    (built / "r.yaml").write_text("model: m.onnx\nprecision: fp16\nbuild: {backend: onnxruntime}\n")
    p = cli("inspect", "artifacts/r", cwd=built, color=False)
    assert p.returncode == 6 and "stale" in p.stdout and "is stale" in p.stderr
    doc = json.loads(cli("inspect", "artifacts/r", "--json", cwd=built, color=False).stdout)
    assert doc["staleness"]["stale"] is True and doc["error"]["code"] == 6
    assert cli("inspect", "artifacts/r", "--allow-stale", cwd=built, color=False).returncode == 0


# -- item 15: validate on a read-only artifact ------------------------------------------------------------
def test_validate_report_that_cannot_be_written_fails_before_the_run(built: Path) -> None:
    p = cli("validate", "r.yaml", "--report", "missing/dir/v.json", cwd=built, color=False)
    assert p.returncode == 10 and "cannot write the report" in p.stderr
    p = cli("validate", "r.yaml", "--report", "artifacts", cwd=built, color=False)
    assert p.returncode == 10 and "is a folder" in p.stderr
