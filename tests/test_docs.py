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
