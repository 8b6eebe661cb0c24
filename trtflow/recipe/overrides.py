"""Command-line overrides of a recipe, the way trtexec users expect: ``--precision fp16`` / ``--fp16``,
``--shapes name:1x3x640x800``, ``--min-shapes/--opt-shapes/--max-shapes`` and ``--set key.path=value``.

Overrides edit the recipe's data and the result is validated by the same pydantic model as the file,
so a bad override fails exactly like a bad recipe line, except that the message names the override
(``--set streams.depth=0 streams.depth: ...``) instead of a line of the file. ``--shapes`` follows
trtexec: the shapes inference runs at. An input without a profile gets that fixed shape; with a
profile (the recipe's, or one given by the min/opt/max flags) the shape must lie inside it. Shapes are
written in the model's layout, like the recipe's ``shape:`` (NCHW for images).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from trtflow.errors import RecipeError, UsageError
from trtflow.recipe.loader import LoadedRecipe, Loc, _pydantic_loc
from trtflow.recipe.schema import Recipe

Shapes = dict[str, tuple[int, ...]]


def parse_shapes(text: str, *, flag: str = "--shapes") -> Shapes:
    """``"image:1x3x640x800,mask:1x1x640x800"`` -> ``{"image": (1, 3, 640, 800), ...}`` (trtexec's syntax).

    A name holding ``:`` or ``,`` may be quoted with single quotes: ``'input:0':1x3x224x224``.
    """
    out: Shapes = {}
    for item in _split(text):
        name, dims = _name_and_dims(item)
        if name is None or dims is None:
            raise UsageError(f"{flag} {text!r}: cannot read {item!r}",
                             hint=f"write {flag} name:1x3x640x800[,other:8x16] (dims separated by 'x')")
        if name in out:
            raise UsageError(f"{flag} {text!r}: input {name!r} is given twice")
        out[name] = dims
    if not out:
        raise UsageError(f"{flag} is empty", hint=f"write {flag} name:1x3x640x800")
    return out


def _split(text: str) -> list[str]:
    items, cur, quoted = [], "", False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        if ch == "," and not quoted:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i for i in items if i.strip()]


def _name_and_dims(item: str) -> tuple[str | None, tuple[int, ...] | None]:
    item = item.strip()
    if item.startswith("'"):
        end = item.find("'", 1)
        if end < 0 or item[end + 1:end + 2] != ":":
            return None, None
        name, rest = item[1:end], item[end + 2:]
    else:
        name, sep, rest = item.rpartition(":")
        if not sep:
            return None, None
    m = re.fullmatch(r"\s*\d+(?:\s*[x*]\s*\d+)*\s*", rest)
    if not name or not m:
        return None, None
    return name, tuple(int(d) for d in re.split(r"\s*[x*]\s*", rest.strip()))


def parse_set(text: str) -> tuple[str, Any]:
    """``"streams.depth=3"`` -> ``("streams.depth", 3)``; the value is read as one YAML value, the way the
    recipe loader reads the file (safe, YAML 1.2 floats: ``1e-3`` is a number)."""
    import yaml

    from trtflow.recipe.loader import RecipeLoader

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise UsageError(f"--set {text!r}: expected key.path=value", hint="e.g. --set streams.depth=3 "
                         "--set inputs.image.memory=device --set 'build.compute_capabilities=[\"8.6\"]'")
    if len(raw) > 10_000:
        raise UsageError(f"--set {key}: value longer than 10000 characters")
    try:
        value = yaml.load(raw, Loader=RecipeLoader) if raw.strip() else ""  # RecipeLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {text!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})",
                         hint="quote strings that hold ':' or '#'") from None
    return key, value


@dataclass(frozen=True)
class Overrides:
    """What the command line changes in a recipe; empty means the recipe as written."""

    precision: str | None = None
    shapes: tuple[Shapes, ...] = ()   # one dict per --shapes flag
    min_shapes: Shapes = field(default_factory=dict)
    opt_shapes: Shapes = field(default_factory=dict)
    max_shapes: Shapes = field(default_factory=dict)
    sets: tuple[tuple[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.precision or self.shapes or self.min_shapes or self.opt_shapes or self.max_shapes
                    or self.sets)

    def describe(self) -> list[str]:
        """The overrides as the command-line flags that give them (recorded in the build report)."""
        out = [f"--precision {self.precision}"] if self.precision else []
        for flag, shapes in (("--min-shapes", self.min_shapes), ("--opt-shapes", self.opt_shapes),
                             ("--max-shapes", self.max_shapes), *(("--shapes", s) for s in self.shapes)):
            out += [f"{flag} {n}:{'x'.join(map(str, s))}" for n, s in shapes.items()]
        out += [f"--set {k}={_text(v)}" for k, v in self.sets]
        return out


def apply_overrides(loaded: LoadedRecipe, ov: Overrides) -> LoadedRecipe:
    """``loaded`` with ``ov`` applied and validated; errors name the override that caused them."""
    if not ov:
        return loaded
    from pydantic import ValidationError

    data = loaded.recipe.model_dump(by_alias=True, exclude_unset=True)
    where: dict[Loc, str] = {}
    if ov.precision:
        data["precision"] = ov.precision
        where[("precision",)] = f"--precision {ov.precision}"
    for key, value in ov.sets:
        loc = _set_path(data, key, value)
        where[loc] = f"--set {key}={_text(value)}"
    _apply_shapes(data, ov, where)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines, fields = [], []
        for err in exc.errors():
            loc = _pydantic_loc(err["loc"])
            flag = _owner(where, loc)
            field_ = ".".join(str(p) for p in loc) or "(recipe)"
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{flag or loaded.where(loc)} {field_}: {msg}")
            fields.append(field_)
        raise RecipeError("\n".join(dict.fromkeys(lines)), hint="fix the override (see `trtflow schema` for every "
                          "field), or edit the recipe", field=fields[0] if fields else None) from None
    digest = hashlib.sha256((loaded.text_sha256 + json.dumps(ov.describe())).encode()).hexdigest()
    return replace(loaded, recipe=recipe, text_sha256=digest, overrides={**loaded.overrides, **where})


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _owner(where: dict[Loc, str], loc: Loc) -> str | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in where:
            return where[loc[:n]]
    # an error inside an overridden subtree's parent (e.g. shape and profile both given) still names the flag
    hits = [flag for k, flag in where.items() if k[:len(loc)] == loc]
    return hits[0] if hits else None


def _set_path(data: dict[str, Any], key: str, value: Any) -> Loc:
    """Set ``key`` (dotted; tensor names holding dots match the longest existing key) in ``data``."""
    parts = key.split(".")
    node: Any = data
    loc: list[str | int] = []
    i = 0
    while i < len(parts):
        if isinstance(node, list):
            if not parts[i].isdigit() or int(parts[i]) >= len(node):
                raise UsageError(f"--set {key}: {'.'.join(map(str, loc))} is a list; {parts[i]!r} is not one of "
                                 f"its indices 0..{len(node) - 1}")
            step: str | int = int(parts[i])
            i += 1
        elif isinstance(node, dict):
            step, i = _longest_key(node, parts, i)
        else:
            raise UsageError(f"--set {key}: {'.'.join(map(str, loc))} is a value, not a section")
        loc.append(step)
        if i == len(parts):
            node[step] = value
            break
        if isinstance(node, dict) and (step not in node or node[step] is None):
            node[step] = {}
        node = node[step]
    return tuple(loc)


def _longest_key(node: dict[str, Any], parts: list[str], i: int) -> tuple[str, int]:
    for j in range(len(parts), i, -1):
        cand = ".".join(parts[i:j])
        if cand in node:
            return cand, j
    return parts[i], i + 1


def _apply_shapes(data: dict[str, Any], ov: Overrides, where: dict[Loc, str]) -> None:
    inputs = data.setdefault("inputs", {})
    named = {**ov.min_shapes, **ov.opt_shapes, **ov.max_shapes}
    for name in named:
        spec = inputs.get(name) if isinstance(inputs.get(name), dict) else inputs.setdefault(name, {})
        given = {k: s[name] for k, s in (("min", ov.min_shapes), ("opt", ov.opt_shapes), ("max", ov.max_shapes))
                 if name in s}
        prof = dict(spec.get("profile") or {})
        if not prof and spec.get("shape"):
            prof = {k: list(spec["shape"]) for k in ("min", "opt", "max")}
        missing = [k for k in ("min", "opt", "max") if k not in given and k not in prof]
        if missing:
            raise RecipeError(f"--{'/--'.join(m + '-shapes' for m in missing)}: input {name!r} has no profile in "
                              "the recipe to take them from", hint="give --min-shapes, --opt-shapes and "
                              "--max-shapes for it", field=f"inputs.{name}.profile")
        prof.update({k: list(v) for k, v in given.items()})
        spec["profile"] = prof
        spec.pop("shape", None)
        where[("inputs", name, "profile")] = " ".join(
            f"--{k}-shapes {name}:{'x'.join(map(str, v))}" for k, v in given.items())
        where[("inputs", name, "shape")] = where[("inputs", name, "profile")]
    fixed: dict[str, tuple[int, ...]] = {}
    for name, shape in ((n, s) for shapes in ov.shapes for n, s in shapes.items()):
        flag = f"--shapes {name}:{'x'.join(map(str, shape))}"
        spec = inputs.get(name) if isinstance(inputs.get(name), dict) else inputs.setdefault(name, {})
        if name in fixed and fixed[name] != shape:
            raise RecipeError(f"{flag}: input {name!r} has no profile and another --shapes gives it "
                              f"{'x'.join(map(str, fixed[name]))}", field=f"inputs.{name}",
                              hint="several shapes need a profile: --min-shapes/--opt-shapes/--max-shapes")
        prof = spec.get("profile")
        if prof:
            lo, hi = prof.get("min") or [], prof.get("max") or []
            if len(lo) != len(shape) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
                raise RecipeError(f"{flag}: outside the profile of input {name!r} (min {lo}, max {hi})",
                                  hint="pick a shape inside it, or widen it with --min-shapes/--max-shapes",
                                  field=f"inputs.{name}.profile")
            continue  # inside the profile: the shape inference runs at (validate, bench)
        spec["shape"] = list(shape)
        fixed[name] = shape
        where[("inputs", name, "shape")] = flag


__all__ = ["Overrides", "Shapes", "apply_overrides", "parse_set", "parse_shapes"]
