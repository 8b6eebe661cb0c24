"""Load a recipe from YAML with safe loading, and turn every error into ``file:line:col field: message``."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trtflow.errors import RecipeError
from trtflow.recipe.schema import Recipe, name_problem

Loc = tuple[str | int, ...]

# Caps that keep a hostile recipe from taking the machine (a real recipe is a few KB, nests ~6 deep and
# has a few hundred nodes). Expanded nodes count every alias as the size of what it points to.
MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


class RecipeLoader(yaml.SafeLoader):
    """Safe loading, plus YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-5` as a string, strict types would
    then refuse the tolerance everyone writes that way."""


class RecipeDumper(yaml.SafeDumper):
    """Writes recipe text that RecipeLoader reads back as written (quotes the string '1e5')."""


yaml.add_implicit_resolver("tag:yaml.org,2002:float",
                           re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                           list("-+0123456789."), Loader=RecipeLoader, Dumper=RecipeDumper)


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus where it came from."""

    recipe: Recipe
    path: Path  # absolute path of the recipe file
    text_sha256: str
    marks: dict[Loc, tuple[int, int]]  # field path -> (line, col), 1-based
    # field path -> the command-line flag that set it (trtflow.recipe.overrides): errors name the flag
    overrides: dict[Loc, str] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.recipe.name or self.path.stem

    def override_of(self, loc: Loc) -> str | None:
        """The command-line flag that set ``loc`` (or a field below it), if one did."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.overrides:
                return self.overrides[loc[:n]]
        below = [flag for k, flag in self.overrides.items() if loc and k[:len(loc)] == loc]
        return below[0] if below else None  # e.g. an input that only the command line names

    def where(self, loc: Loc) -> str:
        """``file:line:col`` of the closest recorded location of ``loc``, or the flag that overrode it."""
        flag = self.override_of(loc)
        if flag:
            return flag
        line, col = _closest_mark(self.marks, loc)
        return f"{_display(self.path)}:{line}:{col}"

    def error(self, loc: Loc, message: str, hint: str | None = None) -> RecipeError:
        name = ".".join(str(p) for p in loc) or "(recipe)"
        if self.override_of(loc):
            return RecipeError(f"{self.where(loc)} {name}: {message}", hint=hint, field=name)
        line, col = _closest_mark(self.marks, loc)
        return RecipeError(f"{self.where(loc)} {name}: {message}", hint=hint, file=_display(self.path), line=line,
                           column=col, field=name)

    def resolve(self, rel: str, loc: Loc, *, allow_outside: bool = False) -> Path:
        """Resolve a path written in the recipe against the recipe's folder, refusing escapes."""
        p = (self.folder / rel).resolve()
        if not allow_outside:
            root = project_root(self.folder)
            if not p.is_relative_to(root):
                raise self.error(loc, f"{rel!r} resolves to {p}, outside the project {root}",
                                 hint="keep models and data inside the project (see `project root` in "
                                 "docs/getting-started.md), or pass --allow-outside")
        return p


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


PROJECT_MARKERS = (".git", "pyproject.toml")


def project_root(folder: Path) -> Path:
    """The folder a recipe's paths must stay inside (without --allow-outside).

    The nearest ancestor of ``folder`` (itself included) holding ``.git`` or ``pyproject.toml``; else,
    when ``folder`` or an ancestor is named ``recipes``, that folder's parent (the documented layout:
    ``recipes/`` and ``models/`` side by side in a plain folder); else ``folder`` itself.
    """
    folder = folder.resolve()
    chain = (folder, *folder.parents)
    for d in chain:
        if any((d / m).exists() for m in PROJECT_MARKERS):
            return d
    for d in chain:
        if d.name == "recipes" and d.parent != d:
            return d.parent
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


def _at(path: Path, mark: yaml.Mark) -> str:
    return f"{_display(path)}:{mark.line + 1}:{mark.column + 1}"


def _check_events(text: str, path: Path) -> None:
    """Refuse nesting deeper than MAX_DEPTH while parsing, before the (recursive) composer runs."""
    depth = 0
    for event in yaml.parse(text, Loader=RecipeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"{_at(path, event.start_mark)} (yaml): nested more than {MAX_DEPTH} levels deep",
                                  hint="a recipe nests a few levels; this looks generated or hostile")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_nodes(root: yaml.Node, path: Path) -> None:
    """Duplicate keys are errors; aliases may not recurse, nor expand past MAX_NODES values or MAX_DEPTH
    levels (alias bombs: each alias counts as the size and depth of what it points to)."""
    memo: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def walk(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise RecipeError(f"{_at(path, node.start_mark)} (yaml): an alias refers to the collection that "
                              "contains it (a recursive structure)", hint="recipes are trees: remove the alias")
        active.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    first = seen.setdefault(k.value, k)
                    if first is not k:
                        raise RecipeError(f"{_at(path, k.start_mark)} (yaml): duplicate key {k.value!r} (first at "
                                          f"line {first.start_mark.line + 1}); YAML would silently keep the last one",
                                          hint="remove one of them")
                children += (k, v)
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        n, depth = 1, 1
        for child in children:
            cn, cd = walk(child)
            n, depth = n + cn, max(depth, cd + 1)
        if n > MAX_NODES:
            raise RecipeError(f"{_at(path, node.start_mark)} (yaml): expands to more than {MAX_NODES:,} values "
                              "(aliases multiply what they point to)", hint="this looks like an alias bomb")
        if depth > MAX_DEPTH:
            raise RecipeError(f"{_at(path, node.start_mark)} (yaml): nested more than {MAX_DEPTH} levels deep "
                              "once aliases are expanded", hint="a recipe nests a few levels; remove the aliases")
        active.discard(key)
        memo[key] = (n, depth)
        return n, depth

    walk(root)


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
    if err["type"].endswith("_type") and "input" in err:  # strict types: say what YAML made of the value
        got = err["input"]
        shown = ("true" if got is True else "false" if got is False else "null" if got is None
                 else type(got).__name__ if isinstance(got, (dict, list)) else repr(got))
        return f"{msg.replace('Input should be', 'must be')}, got {shown} ({_yaml_type(got)})"
    return msg.removeprefix("Value error, ")


def _yaml_type(v: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null",
             list: "a list", dict: "a mapping"}
    return names.get(type(v), type(v).__name__)


def parse_recipe(text: str, path: Path) -> LoadedRecipe:
    """Parse and validate recipe text. ``path`` is used for messages and relative paths."""
    path = path.resolve()
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{_display(path)}: {len(text):,} characters; a recipe is at most {MAX_RECIPE_BYTES:,}",
                          hint="is this the right file?")
    try:
        _check_events(text, path)
        node = yaml.compose(text, Loader=RecipeLoader)
        if node is not None:
            _check_nodes(node, path)
        data = RecipeLoader("").construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = _at(path, mark) if mark else _display(path)
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
    if recipe.name is None and (why := name_problem(path.stem)):
        raise RecipeError(f"{_display(path)}:1:1 name: the default name is the file's stem {path.stem!r}, and {why}",
                          hint=f"add `name: {_suggest_name(path.stem)}` to the recipe, or rename the file")
    return LoadedRecipe(recipe=recipe, path=path, text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                        marks=marks)


def _suggest_name(stem: str) -> str:
    import unicodedata

    ascii_ = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", ascii_).strip("._-")[:64] or "model"


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file: a regular file of at most MAX_RECIPE_BYTES, UTF-8, universal newlines.

    Opened non-blocking and checked with fstat before any read, so a FIFO, a device (/dev/zero) or a
    folder is refused at once instead of hanging or filling memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found",
                          hint="check the path; `trtflow init model.onnx` writes one") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot open the recipe: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                    if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise RecipeError(f"{path}: is {kind}, not a recipe file",
                              hint="pass a .yaml file (or a folder of them to build each)")
        chunks, size = [], 0
        while size <= MAX_RECIPE_BYTES:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES:,} bytes; a recipe is a few KB",
                          hint="is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})",
                          hint="save the recipe as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as open() in text mode reads it


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe file."""
    p = Path(path)
    return parse_recipe(read_recipe_text(p), p)


def discover_recipes(target: str | Path) -> list[Path]:
    """A recipe file, or every ``*.yaml``/``*.yml`` in a folder (sorted; hidden files and folders skipped)."""
    p = Path(target)
    if p.is_dir():
        found = sorted(f for f in [*p.glob("*.yaml"), *p.glob("*.yml")]
                       if not f.name.startswith(".") and not f.is_dir())
        if not found:
            raise RecipeError(f"{p}: no *.yaml recipes in this folder")
        return found
    return [p]
