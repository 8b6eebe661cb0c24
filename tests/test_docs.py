"""docs/recipe-reference.md is generated from the schema and must not be stale; the guides name real commands."""

from __future__ import annotations

import typing
from pathlib import Path

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
