"""Extract the fenced code blocks of README.md and docs/*.md and run them as a reader would.

Each document's blocks run in order in ONE fresh plain folder (no .git, no pyproject.toml: the layout a
user has), holding copies of the shipped ``models/``, ``recipes/``, ``schemas/`` and ``examples/``, with
this interpreter's ``trtflow`` and ``python`` first on PATH. So a guide is exercised as a sequence, the
way someone follows it: later steps see what earlier ones built.

- ``bash`` blocks run with ``bash -euo pipefail``; ``python`` blocks with this interpreter;
- ``yaml`` blocks whose top-level keys are recipe fields are validated as recipes (a fragment gets a
  ``model:`` and is not planned), and planned when their model exists; other YAML (a CI workflow) must parse;
- blocks without a language (file trees, output) are text.

A line ``<!-- snippet: KIND: reason -->`` right before a fence changes that: ``gpu`` (runs only where a
CUDA GPU is: tests/gpu/test_gpu_docs.py on the GPU machine), ``no-run`` (installs software, starts a
server, needs the network, or IS the test suite: the reason is required; bash is still syntax-checked,
python compiled), ``setup`` (the reason is a shell command run first, e.g. building the artifact the
block uses, so the block itself stays as a reader would paste it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"(?P<marks>(?:^<!-- snippet: [^\n]*-->\n)*)^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```",
                    re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"<!-- snippet: (?P<kind>[a-z-]+)(?::\s*(?P<why>.*?))? -->")
KINDS = {"gpu", "no-run", "setup"}


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int
    lang: str
    body: str
    marks: tuple[tuple[str, str], ...] = ()   # (kind, reason): gpu | no-run | setup

    def has(self, kind: str) -> bool:
        return any(k == kind for k, _ in self.marks)

    def why(self, kind: str) -> str:
        return next((w for k, w in self.marks if k == kind), "")

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def snippets(doc: Path) -> list[Snippet]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        marks = tuple((k["kind"], (k["why"] or "").strip()) for k in _MARK.finditer(m["marks"]))
        out.append(Snippet(doc, line, m["lang"], m["body"], marks))
    return out


def sandbox(base: Path) -> Path:
    """A plain user folder with the shipped models, recipes, schemas and examples (models hard-linked)."""
    base.mkdir(parents=True, exist_ok=True)
    for name in ("recipes", "schemas", "examples"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, base / name, ignore=shutil.ignore_patterns("__pycache__"))
    (base / "models").mkdir()
    for f in (ROOT / "models").iterdir():
        if f.is_file():
            try:
                os.link(f, base / "models" / f.name)
            except OSError:
                shutil.copyfile(f, base / "models" / f.name)
    return base


def env() -> dict[str, str]:
    """This interpreter first on PATH as ``python``, and ``trtflow`` = ``python -m trtflow`` (the GPU machine
    has trtflow on PYTHONPATH, not installed, so a shim stands in for the console script)."""
    shims = Path(os.environ.get("TMPDIR", "/tmp")) / f"trtflow-doc-shims-{os.getpid()}"
    shims.mkdir(exist_ok=True)
    for name, body in (("python", f'exec {sys.executable} "$@"'), ("trtflow", f'exec {sys.executable} -m trtflow "$@"')):
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    e = dict(os.environ)
    e["PATH"] = f"{shims}{os.pathsep}{e.get('PATH', '')}"
    e["COLUMNS"] = "200"
    return e


def run_snippet(s: Snippet, cwd: Path, *, timeout: int = 600) -> None:
    """Run (or check) one block in ``cwd``; raise AssertionError naming the doc and line on failure."""
    if s.has("setup"):
        _check(subprocess.run(["bash", "-euo", "pipefail", "-c", s.why("setup")], cwd=cwd, env=env(),
                              capture_output=True, text=True, timeout=timeout, check=False), s, "setup")
    runs = not s.has("no-run")
    if s.lang in ("bash", "sh", "shell", "console"):
        args = ["bash", "-euo", "pipefail", "-c", s.body] if runs else ["bash", "-n", "-c", s.body]
        _check(subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout,
                              check=False), s, "bash")
    elif s.lang == "python":
        if not runs:
            compile(s.body, s.where, "exec")
            return
        _check(subprocess.run([sys.executable, "-c", s.body], cwd=cwd, env=env(), capture_output=True, text=True,
                              timeout=timeout, check=False), s, "python")
    elif s.lang in ("yaml", "yml"):
        check_yaml(s, cwd)


def check_yaml(s: Snippet, cwd: Path) -> None:
    import yaml

    from trtflow.recipe import parse_recipe
    from trtflow.recipe.schema import Recipe

    data = yaml.safe_load(s.body)
    fields = {f.alias or n for n, f in Recipe.model_fields.items()}
    if not isinstance(data, dict) or not set(data) <= fields:
        return  # not a recipe (a CI workflow): parsing it was the check
    fragment = "model" not in data  # a section shown alone: its fields are checked, not planned
    text = "model: ../models/tiny_mlp.onnx\n" + s.body if fragment else s.body
    loaded = parse_recipe(text, cwd / "recipes" / f"snippet_{s.line}.yaml")
    model = loaded.folder / loaded.recipe.model_source.path
    if not fragment and model.is_file():
        from trtflow.plan import make_plan

        make_plan(loaded)


def _check(p: subprocess.CompletedProcess[str], s: Snippet, what: str) -> None:
    if p.returncode != 0:
        raise AssertionError(f"{s.where}: the {what} snippet failed (exit {p.returncode})\n--- stdout\n"
                             f"{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}")
