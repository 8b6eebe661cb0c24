"""Load a recipe from YAML with safe loading, and turn every error into ``file:line:col field: message``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trtflow.errors import RecipeError
from trtflow.recipe.schema import Recipe

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus where it came from."""

    recipe: Recipe
    path: Path  # absolute path of the recipe file
    text_sha256: str
    marks: dict[Loc, tuple[int, int]]  # field path -> (line, col), 1-based

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.recipe.name or self.path.stem

    def where(self, loc: Loc) -> str:
        """``file:line:col`` of the closest recorded location of ``loc``."""
        line, col = _closest_mark(self.marks, loc)
        return f"{_display(self.path)}:{line}:{col}"

    def error(self, loc: Loc, message: str, hint: str | None = None) -> RecipeError:
        field = ".".join(str(p) for p in loc) or "(recipe)"
        line, col = _closest_mark(self.marks, loc)
        return RecipeError(f"{self.where(loc)} {field}: {message}", hint=hint, file=_display(self.path), line=line,
                           column=col, field=field)

    def resolve(self, rel: str, loc: Loc, *, allow_outside: bool = False) -> Path:
        """Resolve a path written in the recipe against the recipe's folder, refusing escapes."""
        p = (self.folder / rel).resolve()
        if not allow_outside:
            root = project_root(self.folder)
            if not p.is_relative_to(root):
                raise self.error(loc, f"{rel!r} resolves to {p}, outside the project {root}",
                                 hint="keep models inside the project, or pass --allow-outside")
        return p


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def project_root(folder: Path) -> Path:
    """Nearest ancestor holding .git or pyproject.toml; the folder itself otherwise."""
    folder = folder.resolve()
    for d in (folder, *folder.parents):
        if (d / ".git").exists() or (d / "pyproject.toml").exists():
            return d
    return folder


def _closest_mark(marks: dict[Loc, tuple[int, int]], loc: Loc) -> tuple[int, int]:
    for n in range(len(loc), -1, -1):
        if loc[:n] in marks:
            return marks[loc[:n]]
    return (1, 1)


def _collect_marks(node: yaml.Node, loc: Loc, out: dict[Loc, tuple[int, int]]) -> None:
    out.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            out[loc + (k,)] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _collect_marks(value, loc + (k,), out)
            # pydantic reports errors inside a value at the value; keep the key's mark for the field.
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_marks(item, loc + (i,), out)


_UNION_TAGS = {"str", "argmax", "threshold", "topk", "softmax", "sigmoid"}


def _pydantic_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop pydantic's union/discriminator tags (e.g. 'str', 'ModelSource', 'argmax') from a loc."""
    clean: list[str | int] = []
    for part in loc:
        tag = isinstance(part, str) and (part[:1].isupper() or part in _UNION_TAGS)
        if tag and clean and clean[-1] in ("model", "reduce"):
            continue
        clean.append(part)
    return tuple("validate" if p == "validate_" else p for p in clean)


def _describe(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown field; check the spelling (see `trtflow schema` for every field)"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "literal_error":
        return msg.replace("Input should be", "must be")
    return msg.removeprefix("Value error, ")


def parse_recipe(text: str, path: Path) -> LoadedRecipe:
    """Parse and validate recipe text. ``path`` is used for messages and relative paths."""
    path = path.resolve()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{_display(path)}:{mark.line + 1}:{mark.column + 1}" if mark else _display(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{where} (yaml): {problem}", hint="fix the YAML syntax at that line") from None
    if data is None:
        raise RecipeError(f"{_display(path)}:1:1 (recipe): file is empty", hint="a recipe needs at least `model: file.onnx`")
    if not isinstance(data, dict):
        raise RecipeError(f"{_display(path)}:1:1 (recipe): top level must be a mapping, got {type(data).__name__}",
                          hint="start with `model: path/to/model.onnx`")
    marks: dict[Loc, tuple[int, int]] = {}
    if node is not None:
        _collect_marks(node, (), marks)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = _pydantic_loc(err["loc"])
            line, col = _closest_mark(marks, loc)
            field = ".".join(str(p) for p in loc) or "(recipe)"
            lines.append(f"{_display(path)}:{line}:{col} {field}: {_describe(err)}")
        raise RecipeError("\n".join(dict.fromkeys(lines)),
                          hint="see schemas/recipe.schema.json or `trtflow schema`") from None
    return LoadedRecipe(recipe=recipe, path=path, text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                        marks=marks)


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{p}: recipe file not found", hint="check the path; `trtflow init model.onnx` writes one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{p}: cannot read recipe: {exc}") from None
    return parse_recipe(text, p)


def discover_recipes(target: str | Path) -> list[Path]:
    """A recipe file, or every ``*.yaml``/``*.yml`` in a folder (sorted)."""
    p = Path(target)
    if p.is_dir():
        found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        if not found:
            raise RecipeError(f"{p}: no *.yaml recipes in this folder")
        return found
    return [p]
