"""``docs/recipe-reference.md``, generated from the pydantic recipe schema so that it cannot drift.

Every section is one pydantic model, reached from :class:`~trtflow.recipe.schema.Recipe` depth first;
every row is one field with its type, default, allowed values/constraints and description, all read from
the model classes (``model_fields``, ``Literal`` arguments, ``annotated_types`` constraints). The dtype
aliases and the TensorRT format rules come from the same tables the planner uses.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from trtflow.plan.formats import FORMATS
from trtflow.recipe.schema import DTYPE_ALIASES, Recipe

REFERENCE_PATH = "docs/recipe-reference.md"
_NONE = type(None)


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "recipe"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for m in metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length"),
                          ("max_length", "max length")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return list(dict.fromkeys(out))


def _strip_annotated(tp: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        inner, more = _strip_annotated(base)
        flat: list[Any] = []
        for m in meta:
            flat += list(getattr(m, "metadata", []) or []) if isinstance(m, FieldInfo) else [m]
        return inner, flat + more
    return tp, []


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


class _Walker:
    """Finds every model reachable from Recipe, with the recipe paths where it appears."""

    def __init__(self) -> None:
        self.order: list[type[BaseModel]] = []
        self.paths: dict[type[BaseModel], list[str]] = {}
        self.anchors: dict[type[BaseModel], str] = {}
        self.variant: dict[type[BaseModel], tuple[str, Any]] = {}  # discriminated union member: (field, value)

    def visit(self, model: type[BaseModel], path: str, discriminator: str | None = None) -> None:
        first = model not in self.paths
        self.paths.setdefault(model, []).append(path)
        if not first:
            return
        self.order.append(model)
        anchor = _anchor(path or "recipe")
        if discriminator and discriminator in model.model_fields:
            tag = typing.get_args(model.model_fields[discriminator].annotation)
            self.variant[model] = (discriminator, tag[0] if tag else None)
        if anchor in self.anchors.values():
            anchor = f"{anchor}-{model.__name__.lower()}"
        self.anchors[model] = anchor
        for name, f in model.model_fields.items():
            key = f.alias or name
            disc = _discriminator(f)
            for sub, sub_path in self._models_in(f.annotation, f"{path}.{key}" if path else key):
                self.visit(sub, sub_path, disc)

    def _models_in(self, tp: Any, path: str) -> Iterator[tuple[type[BaseModel], str]]:
        tp, _ = _strip_annotated(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            yield tp, path
            return
        if (args := _union_args(tp)) is not None:
            for a in args:
                yield from self._models_in(a, path)
            return
        origin = typing.get_origin(tp)
        if origin is list:
            yield from self._models_in(typing.get_args(tp)[0], f"{path}[]")
        elif origin is dict:
            yield from self._models_in(typing.get_args(tp)[1], f"{path}.<{_map_key(path)}>")


def _discriminator(f: FieldInfo) -> str | None:
    """The discriminator of a field's union, also when it sits inside ``Optional[Annotated[...]]``."""
    if isinstance(f.discriminator, str):
        return f.discriminator

    def find(tp: Any) -> str | None:
        if typing.get_origin(tp) is typing.Annotated:
            for m in typing.get_args(tp)[1:]:
                if isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
                    return m.discriminator
            return find(typing.get_args(tp)[0])
        for a in _union_args(tp) or ():
            if (d := find(a)) is not None:
                return d
        return None

    return find(f.annotation)


def _model_doc(tp: Any) -> str:
    """The docstring of the one model a field holds (directly, optional, in a list or map), else ''."""
    found = {m for m, _ in _Walker()._models_in(tp, "")}
    if len(found) == 1:
        return " ".join((next(iter(found)).__doc__ or "").split())
    return ""


def _map_key(path: str) -> str:
    last = path.rsplit(".", 1)[-1]
    return {"inputs": "input", "outputs": "output", "tolerances": "output", "metrics": "output"}.get(last, "name")


class Reference:
    def __init__(self) -> None:
        self.walker = _Walker()
        self.walker.visit(Recipe, "")

    def link(self, model: type[BaseModel]) -> str:
        return f"[{model.__name__}](#{self.walker.anchors[model]})"

    def type_text(self, tp: Any) -> tuple[str, list[str]]:
        """(type description, allowed values/constraints) of an annotation."""
        tp, meta = _strip_annotated(tp)
        allowed = _constraints(meta)
        if typing.get_origin(tp) is Literal:
            vals = typing.get_args(tp)
            kinds = {type(v) for v in vals}
            base = "string" if kinds == {str} else "integer" if kinds == {int} else "value"
            return base, [" | ".join(f"`{json.dumps(v)}`" for v in vals)] + allowed
        if (args := _union_args(tp)) is not None:
            parts, extra = [], []
            for a in args:
                if a is _NONE:
                    parts.append("null")
                    continue
                t, al = self.type_text(a)
                parts.append(t)
                extra += al
            return " or ".join(dict.fromkeys(parts)), allowed + extra
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return self.link(tp), allowed
        origin = typing.get_origin(tp)
        if origin is list:
            t, al = self.type_text(typing.get_args(tp)[0])
            return f"list of {t}", allowed + [f"each: {a}" for a in al]
        if origin is dict:
            t, al = self.type_text(typing.get_args(tp)[1])
            return f"map: name -> {t}", allowed + al
        simple = {str: "string", int: "integer", float: "number", bool: "boolean", _NONE: "null"}
        return simple.get(tp, getattr(tp, "__name__", str(tp))), allowed

    def default_text(self, f: FieldInfo) -> str:
        if f.is_required():
            return "**required**"
        value = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(see its fields)"
        return f"`{json.dumps(value)}`"

    def section(self, model: type[BaseModel]) -> list[str]:
        paths = self.walker.paths[model]
        title = ", ".join(f"`{p}`" for p in paths) if paths != [""] else "top level"
        if model in self.walker.variant:
            key, value = self.walker.variant[model]
            title += f" with `{key}: {value}`"
        lines = [f'<a id="{self.walker.anchors[model]}"></a>', "", f"## {title} ({model.__name__})", ""]
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "!!! abstract")):
            lines += [" ".join(doc.split()), ""]
        lines += ["| field | type | default | allowed values / constraints | description |",
                  "|---|---|---|---|---|"]
        for name, f in model.model_fields.items():
            key = f.alias or name
            typ, allowed = self.type_text(f.annotation)
            allowed = _constraints(list(f.metadata)) + allowed
            desc = f.description or ""
            if not desc:
                desc = _model_doc(f.annotation)
            if (disc := _discriminator(f)) is not None:
                desc = (desc + f" One of the variants below, chosen by `{disc}`.").strip()
            lines.append(f"| `{key}` | {_cell(typ)} | {_cell(self.default_text(f))} | "
                         f"{_cell('; '.join(allowed)) or '-'} | {_cell(desc) or '-'} |")
        return lines + [""]

    def render(self) -> str:
        out = [
            "# Recipe reference",
            "",
            ("<!-- Generated from trtflow/recipe/schema.py by `trtflow docs`. Do not edit: "
             "`trtflow docs --check` (and tests/test_docs.py) fail when this file is stale. -->"),
            "",
            ("A recipe is YAML. Only `model` is required; every other field has the default shown here, and "
             "`trtflow plan RECIPE` prints what they resolve to against the model. Unknown fields are errors "
             "(reported as `file:line:col field: ...`). Editors complete and check recipes through the JSON "
             "Schema: start the file with `# yaml-language-server: $schema=<relative path to "
             "schemas/recipe.schema.json>` (`trtflow init` writes that line)."),
            "",
            ("Paths: `inputs.<input>` and `outputs.<output>` are keyed by the model's tensor names; "
             "`[]` marks list items. Paths inside a recipe (`model`, `build.timing_cache`, `validate.data`) "
             "are relative to the recipe file."),
            "",
            "Sections: " + ", ".join(self.link(m) for m in self.walker.order) + ", [dtype names](#dtype-names), "
            "[I/O formats](#io-formats).",
            "",
        ]
        for model in self.walker.order:
            out += self.section(model)
        out += self.dtypes() + self.formats()
        return "\n".join(out).rstrip("\n") + "\n"

    @staticmethod
    def dtypes() -> list[str]:
        canon: dict[str, list[str]] = {}
        for alias, name in DTYPE_ALIASES.items():
            canon.setdefault(name, []).append(alias)
        lines = ['<a id="dtype-names"></a>', "", "## dtype names", "",
                 "`inputs.<input>.dtype` and `outputs.<output>.dtype` accept these spellings (case-insensitive).",
                 "", "| dtype | also written |", "|---|---|"]
        for name, aliases in canon.items():
            others = [a for a in aliases if a != name]
            lines.append(f"| `{name}` | {', '.join(f'`{a}`' for a in others) or '-'} |")
        return lines + [""]

    @staticmethod
    def formats() -> list[str]:
        lines = ['<a id="io-formats"></a>', "", "## I/O formats", "",
                 ("`format:` of an input or output: the TensorRT memory layout of the engine tensor. Vectorized "
                  "formats pad the channel dimension to a multiple of the vector width; `trtflow plan` counts the "
                  "padded bytes."), "",
                 "| format | layout | vector | dtypes | min rank | GPU |", "|---|---|---|---|---|---|"]
        for rule in FORMATS.values():
            lines.append(f"| `{rule.name}` | {rule.kind.replace('_', ' ')} | {rule.vector} | "
                         f"{', '.join(sorted(rule.dtypes)) if len(rule.dtypes) < 8 else 'any'} | {rule.min_rank} | "
                         f"{'DLA only' if rule.dla_only else 'yes'} |")
        return lines + [""]


def recipe_reference() -> str:
    """The Markdown text of ``docs/recipe-reference.md``."""
    return Reference().render()


__all__ = ["REFERENCE_PATH", "recipe_reference"]
