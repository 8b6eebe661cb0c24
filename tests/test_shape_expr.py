"""trtflow.plan.shape_expr: the grammar of TensorPlan.shape_expr, its evaluator and its interval bounds."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtflow.plan.shape_expr import (
    MAX_ABS,
    ShapeExprError,
    compile_shape,
    identity,
    parse,
)

RANKS = {"x": 4, "images": 4, "seq": 2}

# An expression tree: ("lit", n) | ("ref", ident, axis) | (op, a, b) | ("neg", a) | ("min"/"max", [..])
leaf = st.one_of(st.tuples(st.just("lit"), st.integers(-50, 5000)),
                 st.tuples(st.just("ref"), st.sampled_from(sorted(RANKS)), st.integers(0, 1)))


def _extend(children: Any) -> Any:
    return st.one_of(
        st.tuples(st.sampled_from(["+", "-", "*", "//", "%"]), children, children),
        st.tuples(st.just("neg"), children),
        st.tuples(st.sampled_from(["min", "max"]), st.lists(children, min_size=2, max_size=3)),
    )


trees = st.recursive(leaf, _extend, max_leaves=12)


def render(t: Any) -> str:
    kind = t[0]
    if kind == "lit":
        return str(t[1]) if t[1] >= 0 else f"({t[1]})"
    if kind == "ref":
        return f"{t[1]}[{t[2]}]"
    if kind == "neg":
        return f"-({render(t[1])})"
    if kind in ("min", "max"):
        return f"{kind}({', '.join(render(a) for a in t[1])})"
    return f"({render(t[1])} {kind} {render(t[2])})"


class _Undefined(Exception):
    pass


def reference(t: Any, dims: dict[str, list[int]]) -> int:
    """The value by plain Python arithmetic (what the compiled closures must reproduce)."""
    kind = t[0]
    if kind == "lit":
        return int(t[1])
    if kind == "ref":
        return dims[t[1]][t[2]]
    if kind == "neg":
        return -reference(t[1], dims)
    if kind in ("min", "max"):
        vals = [reference(a, dims) for a in t[1]]
        return min(vals) if kind == "min" else max(vals)
    a, b = reference(t[1], dims), reference(t[2], dims)
    if kind in ("//", "%") and b == 0:
        raise _Undefined
    r = {"+": a + b, "-": a - b, "*": a * b}.get(kind)
    if r is None:
        r = a // b if kind == "//" else a % b
    if abs(r) > MAX_ABS:
        raise _Undefined
    return r


dims_st = st.fixed_dictionaries({k: st.lists(st.integers(1, 4096), min_size=2, max_size=2) for k in RANKS})


@settings(max_examples=300, deadline=None)
@given(trees, dims_st)
def test_point_evaluation_matches_python_arithmetic(tree: Any, dims: dict[str, list[int]]) -> None:
    e = parse(render(tree), RANKS)
    try:
        want = reference(tree, dims)
    except _Undefined:
        with pytest.raises(ShapeExprError):
            e._node.point(dims)  # type: ignore[union-attr]
        return
    assert e._node.point(dims) == want  # type: ignore[union-attr]
    if want >= 0:
        assert e(dims) == want
    else:
        with pytest.raises(ShapeExprError, match="negative"):
            e(dims)


@settings(max_examples=200, deadline=None)
@given(trees, dims_st, dims_st)
def test_interval_bounds_enclose_every_corner(tree: Any, a: dict[str, list[int]], b: dict[str, list[int]]) -> None:
    """bounds() over a box holds every point of it (checked at all its corners)."""
    e = parse(render(tree), RANKS)
    ranges = {k: [(min(x, y), max(x, y)) for x, y in zip(a[k], b[k])] for k in RANKS}
    try:
        lo, hi = e.bounds(ranges)  # type: ignore[misc]
    except ShapeExprError:
        return  # a divisor range holding 0: refused, never a wrong bound
    refs = sorted(e.refs)
    for corner in itertools.product(*[ranges[i][ax] for i, ax in refs]):
        dims = {k: [r[0] for r in ranges[k]] for k in RANKS}
        for (ident, ax), v in zip(refs, corner):
            dims[ident][ax] = v
        try:
            v = reference(tree, dims)
        except _Undefined:
            continue
        assert max(v, 0) <= hi and (v < 0 or v >= lo)


def test_strided_backbone_expression() -> None:
    """YOLOv8 at 320x640: three heads of stride 8, 16 and 32 (the nudenet output dim)."""
    src = ("((x[2] - 1) // 2 // 2 // 2 + 1) * ((x[3] - 1) // 2 // 2 // 2 + 1)"
           " + (x[2] // 16) * (x[3] // 16) + (x[2] // 32) * (x[3] // 32)")
    e = parse(src, RANKS)
    assert e({"x": [1, 3, 320, 640]}) == 40 * 80 + 20 * 40 + 10 * 20
    assert e.bounds({"x": [(1, 1), (3, 3), (320, 640), (320, 640)]}) == (40 * 40 + 400 + 100, 6400 + 1600 + 400)
    assert e.refs == {("x", 2), ("x", 3)}


def test_literals_data_dependent_and_identity() -> None:
    fn = compile_shape(["6625", "?", "x[0]", " seq[1] * 2 "], RANKS)
    assert fn({"x": [3, 3, 8, 8], "seq": [1, 7]}) == (6625, None, 3, 14)
    assert fn.data_dependent and fn.exprs[0].constant == 6625 and fn.exprs[2].constant is None
    assert fn.refs == {("x", 0), ("seq", 1)}
    assert fn.bounds({"x": [(1, 8)] * 4, "seq": [(1, 1), (1, 512)]}) == ((6625, 6625), None, (1, 8), (2, 1024))
    assert identity("x", (1, 3, 32, 32), (8, 3, 64, 32)) == ("x[0]", "3", "x[2]", "32")


@pytest.mark.parametrize("src, match", [
    ("__import__('os').system('true')", "not allowed"),
    ("x.__class__", "not allowed"),
    ("x[0]()", "only calls allowed"),
    ("(lambda: 1)()", "not allowed"),
    ("x[0] ** 2", r"\*\*"),
    ("x[0] / 2", "use //"),
    ("1 if x[0] else 2", "IfExp"),
    ("x[0:2]", "not allowed"),
    ("x[-1]", "axis must be"),
    ("x[True]", "axis must be"),
    ("x[(0, 1)]", "axis must be"),
    ("y[0]", "not an input"),
    ("x[4]", "has rank 4"),
    ("x[0][1]", "only an input name"),
    ("min(x[0])", "at least two"),
    ("max(x[0], key=1)", "not allowed"),
    ("abs(x[0])", "only calls allowed"),
    ("x[0] +", "does not parse"),
    ("", "empty"),
    ("1\n+ 2", "not allowed"),
    ("x[0] == 1", "not allowed"),
    ("x[0] << 3", "not allowed"),
    ("'3'", "not allowed"),
    ("(" * 5000 + "1" + ")" * 5000, "characters|nested|parse"),
    ("1" + " + 1" * 3000, "characters|terms"),
    ("9" * 40, "exceeds"),
])
def test_hostile_or_malformed_expressions_raise_shape_expr_error(src: str, match: str) -> None:
    with pytest.raises(ShapeExprError, match=match):
        parse(src, RANKS)


def test_hostile_values_raise_shape_expr_error() -> None:
    with pytest.raises(ShapeExprError, match="division by zero"):
        parse("x[2] // (x[3] - 64)", RANKS)({"x": [1, 3, 64, 64]})
    with pytest.raises(ShapeExprError, match="exceeds"):
        parse("x[2] * 4611686018427387904", RANKS)({"x": [1, 3, 64, 64]})
    with pytest.raises(ShapeExprError, match="needs x"):
        parse("x[2]", RANKS)({"images": [1, 3, 64, 64]})
    with pytest.raises(ShapeExprError, match="divisor may be 0"):
        parse("8 // (x[2] - 64)", RANKS).bounds({"x": [(1, 1), (3, 3), (32, 128), (64, 64)]})
    with pytest.raises(ShapeExprError, match="not a string"):
        parse(3)  # type: ignore[arg-type]
    with pytest.raises(ShapeExprError, match="list of strings"):
        compile_shape("x[0]")
    # an unchecked parse (no ranks) still refuses unknown names at evaluation, with the error type
    with pytest.raises(ShapeExprError):
        parse("zz[0]")({"x": [1]})


def test_error_is_a_trtflow_error_with_a_hint() -> None:
    from trtflow.errors import TrtflowError

    with pytest.raises(TrtflowError) as info:
        parse("x[0] / 2", RANKS)
    assert info.value.hint and "ident[axis]" in info.value.hint


def test_module_is_stdlib_only() -> None:
    """The runtime imports shape_expr: it must not pull numpy, onnx, pydantic or sympy."""
    import subprocess
    import sys

    code = ("import sys; import trtflow.plan.shape_expr; "
            "bad = [m for m in ('numpy', 'onnx', 'pydantic', 'sympy', 'yaml') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
