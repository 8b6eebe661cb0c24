"""docs/recipe-reference.md is generated from the schema and must not be stale; the guides name real commands."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from helpers.models import ROOT
from pydantic import BaseModel
from typer.testing import CliRunner

from trtflow.cli import app
from trtflow.docs_gen import REFERENCE_PATH, Reference, recipe_reference
from trtflow.plan.formats import FORMATS
from trtflow.recipe.schema import DTYPE_ALIASES


def test_recipe_reference_is_up_to_date() -> None:
    on_disk = (ROOT / REFERENCE_PATH).read_text()
    assert on_disk == recipe_reference(), "docs/recipe-reference.md is stale: run `trtflow docs` and commit it"


def _literals(tp: object) -> list[object]:
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    return [v for a in typing.get_args(tp) for v in _literals(a)]


def test_every_field_and_allowed_value_is_documented() -> None:
    ref = Reference()
    text = ref.render()
    models = ref.walker.order
    assert len(models) >= 15  # Recipe and every nested model, reduce variants included
    for model in models:
        assert issubclass(model, BaseModel)
        assert f"({model.__name__})" in text
        for name, f in model.model_fields.items():
            assert f"| `{f.alias or name}` |" in text, (model.__name__, name)
            for value in _literals(f.annotation):
                assert f'`"{value}"`' in text or f"`{value}`" in text, (model.__name__, name, value)
    for alias in DTYPE_ALIASES:
        assert f"`{alias}`" in text
    for fmt in FORMATS:
        assert f"| `{fmt}` |" in text
    header = 0  # a table row never gains a column from an unescaped '|' in a description
    for line in text.splitlines():
        if not line.startswith("|"):
            header = 0
            continue
        cells = line.replace("\\|", "").count("|")
        header = header or cells
        assert cells == header, line


def test_cli_docs_check_and_write(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ref.md"
    res = runner.invoke(app, ["docs", "--check", "--out", str(out)])
    assert res.exit_code == 1
    res = runner.invoke(app, ["docs", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text() == recipe_reference()
    res = runner.invoke(app, ["docs", "--check", "--out", str(out)])
    assert res.exit_code == 0
    res = runner.invoke(app, ["docs"])
    assert res.exit_code == 0 and res.output.startswith("# Recipe reference")


def test_guides_exist_and_name_real_commands() -> None:
    gs = (ROOT / "docs" / "getting-started.md").read_text()
    for cmd in ("trtflow init", "trtflow plan", "trtflow build", "trtflow validate", "trtflow inspect",
                "trtflow export triton", "make wheelhouse", "--install-completion", "--no-index --find-links"):
        assert cmd in gs, cmd
    ci = (ROOT / "docs" / "ci.md").read_text()
    for cmd in ("make test", "make schema", "make validate", "make gpu", "trtflow bench", "--check"):
        assert cmd in ci, cmd
    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert {"init", "inspect", "docs", "export"} <= commands
    makefile = (ROOT / "Makefile").read_text()
    assert "wheelhouse:" in makefile and (ROOT / "scripts" / "wheelhouse.sh").is_file()


# -- docs/architecture.md matches the code ------------------------------------------------------------------
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_architecture_names_every_module() -> None:
    """Every module under trtflow/ has its line in docs/architecture.md (a new module is documented with it)."""
    text = ARCHITECTURE.read_text()
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "trtflow").rglob("*.py"))
    assert len(modules) > 50
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not mention {missing}: add a line saying what each owns"


def _defines(path: Path, qualname: str) -> bool:
    """Whether ``qualname`` (``f``, ``Cls.method``, ``CONSTANT``) is defined at that nesting in ``path``."""
    import ast

    body: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in qualname.split("."):
        found: ast.stmt | None = None
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        body = getattr(found, "body", [])
    return True


def test_architecture_where_to_look_answers_exist() -> None:
    """Each ``file::function`` docs/architecture.md points at ("Where do I look for ...") exists."""
    import re

    refs = re.findall(r"`(trtflow/[\w/]+\.py)::([\w.]+)`", ARCHITECTURE.read_text())
    assert len(refs) >= 20
    wrong = [f"{f}::{q}" for f, q in refs if not (ROOT / f).is_file() or not _defines(ROOT / f, q)]
    assert not wrong, f"docs/architecture.md names what the code does not define: {wrong}"


# Flags of other tools that the docs quote (checked so that a trtflow flag can never hide among them).
FOREIGN_FLAGS = {"--useSpinWait": "trtexec", "--check-error-stat": "Polygraphy", "--render": "scripts/gpu_corpus.py",
                 "--nvidia-index": "scripts/wheelhouse.sh", "--image": "examples/serve/loadtest.py",
                 "--only": "scripts/gpu_serving.py"}
_FLAG = re.compile(r"(?<![\w./-])(--?[A-Za-z][\w-]*)")


def _cli_options() -> tuple[dict[tuple[str, ...], set[str]], set[str]]:
    """Every command path of the CLI with its option spellings, and the global options."""
    import typer.main

    def spellings(cmd: Any) -> set[str]:
        return {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}

    root = typer.main.get_command(app)
    commands: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))
        if not hasattr(cmd, "commands"):
            commands[path] = spellings(cmd) | {"--help"}

    walk(root, ())
    return commands, spellings(root) | {"--help", "--install-completion", "--show-completion"}


def _command_lines(text: str) -> list[tuple[int, str]]:
    """(line, text after `trtflow `) of every trtflow command: in inline code, and on shell-block lines."""
    out, block = [], None  # the language of the code block we are in
    text = text.replace("\\|", "|").replace("\\\n", " ")  # table cells; continued shell lines
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            block = line.strip("` ") if block is None else None
            continue
        if block is None:
            frags = re.findall(r"`([^`]+)`", line)
        else:
            frags = [line.split(" #")[0]] if block in ("bash", "sh", "shell", "console") else []
        out += [(number, seg) for frag in frags for seg in re.split(r"(?<![\w/.-])trtflow\s+", frag)[1:]]
    return out


def test_every_command_line_in_the_docs_uses_real_commands_options_and_sweeps() -> None:
    """Each `trtflow CMD ... --flag` in README.md and docs/*.md names a command and options it has; each
    `--sweep X` a real sweep; each inline `--flag` an option of some command (or a quoted tool's)."""
    from trtflow.bench import SWEEPS

    commands, global_opts = _cli_options()
    everything = set().union(*commands.values()) | global_opts
    problems, seen = [], 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for line, seg in _command_lines(text):
            toks = seg.split()
            while toks and toks[0] in global_opts:
                toks.pop(0)
            path: tuple[str, ...] = ()
            while toks and any(k[: len(path) + 1] == (*path, toks[0]) for k in commands):
                path = (*path, toks.pop(0))
            if path not in commands:
                if toks and re.fullmatch(r"[a-z][a-z-]*", toks[0]):
                    problems.append(f"{doc.name}:{line}: `trtflow {' '.join((*path, toks[0]))}` is no command")
                continue  # `trtflow <cmd> --help`, a bare group name
            seen += 1
            for flag in _FLAG.findall(" ".join(toks)):
                if flag not in commands[path] | global_opts:
                    problems.append(f"{doc.name}:{line}: `trtflow {' '.join(path)}` has no option {flag}")
            for values in re.findall(r"--sweep[ =]([\w|]+)", seg):
                problems += [f"{doc.name}:{line}: --sweep {v} is not a sweep" for v in values.split("|")
                             if v not in SWEEPS]
        for m in re.finditer(r"`(--[A-Za-z][\w-]*)", text):
            if m.group(1) not in everything and m.group(1) not in FOREIGN_FLAGS:
                problems.append(f"{doc.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(1)} is no trtflow "
                                "option (another tool's? add it to FOREIGN_FLAGS)")
    assert seen > 50, "found too few command lines: is the extractor broken?"
    assert not problems, "\n".join(problems)
    bench_row = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("| `trtflow bench "))
    assert all(s in bench_row for s in SWEEPS) and "--concurrency" in bench_row, "README's bench row lists every sweep"


def test_help_texts_say_what_the_code_does() -> None:
    """Numbers and lists in --help that the code also holds: init's batch profile, the encoding sweep's rows."""
    from trtflow.bench.encoding import LABELS
    from trtflow.init import BATCH_RANGE
    from trtflow.recipe.schema import Tolerance
    from trtflow.validate.policy import PRECISION_TOL

    runner = CliRunner()
    init_help = " ".join(runner.invoke(app, ["init", "--help"], terminal_width=200).output.split())
    assert "batch " + "/".join(map(str, BATCH_RANGE)) in init_help
    bench_help = " ".join(runner.invoke(app, ["bench", "--help"], terminal_width=200).output.split())
    assert f"configurations {min(LABELS)}-{max(LABELS)}" in bench_help
    said = re.search(r"fp32 ([\d.e+-]+)", Tolerance.model_fields["atol"].description or "")
    assert said and float(said.group(1)) == PRECISION_TOL["fp32"]
