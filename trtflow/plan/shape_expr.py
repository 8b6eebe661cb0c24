"""Output shapes as integer expressions of the caller-facing input dims (``TensorPlan.shape_expr``).

One string per dim: an integer literal (``"6625"``), an expression over input dims written
``<input ident>[<axis>]`` (``"images[2] // 8"``, ``"(x[3] - 1) // 32 + 1"``, ``"max(a[0], b[0])"``), or
``"?"`` for a data-dependent dim (NonZero, NMS, ...) whose upper bound is the tensor's ``max_shape``.

The planner writes them (from symbolic shape inference, see ``trtflow.plan.symbolic``); the runtime
evaluates them per request. Stdlib only, because the runtime imports this module. An expression is
parsed with :mod:`ast` against a whitelist - integer literals, ``+ - * // %``, unary ``-``,
parentheses, ``min()``, ``max()``, ``ident[axis]`` - and compiled once into nested closures: no
``eval``/``exec``, and a hand-edited ``plan.json`` gets a :class:`ShapeExprError` naming the
expression, never a raw exception. ``//`` and ``%`` are Python's (floor) semantics, the same as
ONNX's shape arithmetic for the non-negative dims shapes have.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from trtflow.errors import TrtflowError

DATA_DEPENDENT = "?"
MAX_LENGTH = 8192          # characters of one expression
MAX_NODES = 4096           # syntax-tree nodes of one expression
MAX_ABS = 1 << 62          # any intermediate value beyond this is an error, not a slow bignum
_CHARS = re.compile(r"[A-Za-z0-9_ +\-*/%()\[\],]*")

Shapes = Mapping[str, Sequence[int]]
Interval = tuple[int, int]


class ShapeExprError(TrtflowError, ValueError):
    """A malformed shape expression, or one that cannot be evaluated for the given input shapes."""

    exit_code = 2


@dataclass(frozen=True)
class _Node:
    """A compiled expression: a point evaluator and an interval evaluator over the same tree."""

    point: Callable[[Shapes], int]
    interval: Callable[[Mapping[str, Sequence[Interval]]], Interval]


def _check(v: int, source: str) -> int:
    if -MAX_ABS <= v <= MAX_ABS:
        return v
    raise ShapeExprError(f"shape expression {source!r}: an intermediate value exceeds {MAX_ABS}")


def _floordiv_interval(a: Interval, b: Interval, source: str) -> Interval:
    if b[0] <= 0 <= b[1]:
        raise ShapeExprError(f"shape expression {source!r}: the divisor may be 0 (range {b[0]}..{b[1]})")
    # a/b is monotone in each argument while b keeps its sign, so the extremes sit at the corners
    corners = [x // y for x in a for y in b]
    return min(corners), max(corners)


def _mod_interval(a: Interval, b: Interval, source: str) -> Interval:
    if b[0] <= 0 <= b[1]:
        raise ShapeExprError(f"shape expression {source!r}: the modulus may be 0 (range {b[0]}..{b[1]})")
    if b[0] > 0:
        return a if 0 <= a[0] and a[1] < b[0] else (0, b[1] - 1)
    return a if b[1] < a[0] and a[1] <= 0 else (b[0] + 1, 0)


def _neg_interval(a: Interval) -> Interval:
    return -a[1], -a[0]


def _add_interval(a: Interval, b: Interval) -> Interval:
    return a[0] + b[0], a[1] + b[1]


def _mul_interval(a: Interval, b: Interval) -> Interval:
    corners = [x * y for x in a for y in b]
    return min(corners), max(corners)


class _Compiler:
    def __init__(self, source: str, ranks: Mapping[str, int] | None) -> None:
        self.source, self.ranks = source, ranks
        self.refs: set[tuple[str, int]] = set()

    def fail(self, why: str) -> ShapeExprError:
        return ShapeExprError(f"shape expression {self.source!r}: {why}",
                              hint="allowed: integer literals, input dims as ident[axis], + - * // %, "
                                   "unary -, parentheses, min(), max(); or '?' for a data-dependent dim")

    def compile(self, node: ast.expr) -> _Node:
        src = self.source
        if isinstance(node, ast.Constant):
            if type(node.value) is not int:
                raise self.fail(f"{node.value!r} is not an integer literal")
            v = _check(node.value, src)
            return _Node(lambda s: v, lambda s: (v, v))
        if isinstance(node, ast.Subscript):
            return self.ref(node)
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise self.fail(f"operator {type(node.op).__name__} is not allowed")
            x = self.compile(node.operand)
            if isinstance(node.op, ast.UAdd):
                return x
            xp, xi = x.point, x.interval
            return _Node(lambda s: -xp(s), lambda s: _neg_interval(xi(s)))
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in ("min", "max") or node.keywords:
                raise self.fail("the only calls allowed are min(...) and max(...)")
            if len(node.args) < 2:
                raise self.fail(f"{node.func.id}() needs at least two arguments")
            args = [self.compile(a) for a in node.args]
            pts, ivs = [a.point for a in args], [a.interval for a in args]
            pick = min if node.func.id == "min" else max

            def interval(s: Mapping[str, Sequence[Interval]]) -> Interval:
                got = [i(s) for i in ivs]
                return pick(g[0] for g in got), pick(g[1] for g in got)

            return _Node(lambda s: pick(p(s) for p in pts), interval)
        raise self.fail(f"{type(node).__name__} is not allowed")

    def ref(self, node: ast.Subscript) -> _Node:
        if not isinstance(node.value, ast.Name):
            raise self.fail("only an input name may be indexed, as name[axis]")
        ident = node.value.id
        index = node.slice
        if not (isinstance(index, ast.Constant) and type(index.value) is int and index.value >= 0):
            raise self.fail(f"{ident}[...]: the axis must be a non-negative integer literal")
        axis = index.value
        if self.ranks is not None:
            if ident not in self.ranks:
                known = ", ".join(sorted(self.ranks)) or "none"
                raise self.fail(f"{ident!r} is not an input (inputs: {known})")
            if axis >= self.ranks[ident]:
                raise self.fail(f"{ident}[{axis}]: {ident!r} has rank {self.ranks[ident]}")
        self.refs.add((ident, axis))
        src = self.source

        def point(s: Shapes) -> int:
            try:
                return int(s[ident][axis])
            except (KeyError, IndexError, TypeError, ValueError):
                raise ShapeExprError(f"shape expression {src!r} needs {ident}[{axis}], not in the input "
                                     f"shapes given ({dict(s)})") from None

        def interval(s: Mapping[str, Sequence[Interval]]) -> Interval:
            try:
                lo, hi = s[ident][axis]
            except (KeyError, IndexError, TypeError, ValueError):
                raise ShapeExprError(f"shape expression {src!r} needs the range of {ident}[{axis}]") from None
            return int(lo), int(hi)

        return _Node(point, interval)

    def binop(self, node: ast.BinOp) -> _Node:
        a, b = self.compile(node.left), self.compile(node.right)
        ap, bp, ai, bi = a.point, b.point, a.interval, b.interval
        src = self.source
        if isinstance(node.op, ast.Add):
            return _Node(lambda s: _check(ap(s) + bp(s), src), lambda s: _add_interval(ai(s), bi(s)))
        if isinstance(node.op, ast.Sub):
            return _Node(lambda s: _check(ap(s) - bp(s), src),
                         lambda s: _add_interval(ai(s), _neg_interval(bi(s))))
        if isinstance(node.op, ast.Mult):
            return _Node(lambda s: _check(ap(s) * bp(s), src), lambda s: _mul_interval(ai(s), bi(s)))
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)):
            floordiv = isinstance(node.op, ast.FloorDiv)

            def point(s: Shapes) -> int:
                x, y = ap(s), bp(s)
                if y == 0:
                    raise ShapeExprError(f"shape expression {src!r}: division by zero for input shapes {dict(s)}")
                return x // y if floordiv else x % y

            if floordiv:
                return _Node(point, lambda s: _floordiv_interval(ai(s), bi(s), src))
            return _Node(point, lambda s: _mod_interval(ai(s), bi(s), src))
        op = {ast.Div: "/ (use //)", ast.Pow: "**"}.get(type(node.op), type(node.op).__name__)
        raise self.fail(f"operator {op} is not allowed")


@dataclass(frozen=True)
class ShapeExpr:
    """One compiled dim expression. ``data_dependent`` ones evaluate to ``None``."""

    source: str
    refs: frozenset[tuple[str, int]]
    _node: _Node | None

    @property
    def data_dependent(self) -> bool:
        return self._node is None

    @property
    def constant(self) -> int | None:
        """The value when the expression reads no input dim, else None."""
        if self._node is None or self.refs:
            return None
        return self._node.point({})

    def __call__(self, shapes: Shapes) -> int | None:
        """The dim for caller-facing input ``shapes`` (ident -> shape); None when data-dependent."""
        if self._node is None:
            return None
        v = self._node.point(shapes)
        if v < 0:
            raise ShapeExprError(f"shape expression {self.source!r} is {v} (negative) for input shapes {dict(shapes)}",
                                 hint="the input shapes are outside what the model accepts")
        return v

    def bounds(self, ranges: Mapping[str, Sequence[Interval]]) -> Interval | None:
        """(smallest, largest) value over the box of input dim ranges (ident -> [(lo, hi) per axis]),
        by interval arithmetic: exact for the monotone expressions of strided layers, an enclosure
        otherwise. None when data-dependent."""
        if self._node is None:
            return None
        lo, hi = self._node.interval(ranges)
        return max(lo, 0), max(hi, 0)


def parse(source: str, ranks: Mapping[str, int] | None = None) -> ShapeExpr:
    """Compile one expression; ``ranks`` (input ident -> rank), when given, checks every ``ident[axis]``."""
    if not isinstance(source, str):
        raise ShapeExprError(f"shape expression {source!r} is a {type(source).__name__}, not a string")
    text = source.strip()
    if text == DATA_DEPENDENT:
        return ShapeExpr(source, frozenset(), None)
    if not text:
        raise ShapeExprError("empty shape expression", hint="write an integer, an expression, or '?'")
    if len(text) > MAX_LENGTH:
        raise ShapeExprError(f"shape expression of {len(text)} characters (at most {MAX_LENGTH})")
    if not _CHARS.fullmatch(text):
        bad = sorted({ch for ch in text if not _CHARS.fullmatch(ch)})
        raise ShapeExprError(f"shape expression {source!r}: characters {bad} are not allowed")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ShapeExprError(f"shape expression {source!r} does not parse ({type(exc).__name__})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ShapeExprError(f"shape expression {source!r:.80} has more than {MAX_NODES} terms")
    compiler = _Compiler(source, ranks)
    try:
        node = compiler.compile(tree.body)
    except RecursionError:
        raise ShapeExprError(f"shape expression {source!r:.80} is nested too deeply") from None
    return ShapeExpr(source, frozenset(compiler.refs), node)


@dataclass(frozen=True)
class ShapeFn:
    """The compiled expressions of one tensor: ``fn(shapes)`` gives its shape, ``None`` per '?' dim."""

    exprs: tuple[ShapeExpr, ...]

    def __call__(self, shapes: Shapes) -> tuple[int | None, ...]:
        return tuple(e(shapes) for e in self.exprs)

    @property
    def data_dependent(self) -> bool:
        return any(e.data_dependent for e in self.exprs)

    @property
    def refs(self) -> frozenset[tuple[str, int]]:
        return frozenset().union(*(e.refs for e in self.exprs))

    def bounds(self, ranges: Mapping[str, Sequence[Interval]]) -> tuple[Interval | None, ...]:
        return tuple(e.bounds(ranges) for e in self.exprs)


def compile_shape(exprs: Sequence[str], ranks: Mapping[str, int] | None = None) -> ShapeFn:
    """Compile a tensor's ``shape_expr`` once; call the result per request (cache it per input-shape key)."""
    if isinstance(exprs, str) or not isinstance(exprs, Sequence):
        raise ShapeExprError(f"shape_expr must be a list of strings, got {exprs!r:.80}")
    return ShapeFn(tuple(parse(e, ranks) for e in exprs))


def identity(ident: str, min_shape: Sequence[int], max_shape: Sequence[int]) -> tuple[str, ...]:
    """The shape_expr of an input: its literal dims, and ``ident[axis]`` for each dynamic one."""
    return tuple(str(lo) if lo == hi else f"{ident}[{i}]" for i, (lo, hi) in enumerate(zip(min_shape, max_shape)))


__all__ = ["DATA_DEPENDENT", "ShapeExpr", "ShapeExprError", "ShapeFn", "compile_shape", "identity", "parse"]
