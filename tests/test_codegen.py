"""Generated runner modules: safe with any tensor name, compile, import and behave."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import keyword
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtflow.codegen import CodegenError, generate_runner, write_runner
from trtflow.plan.model import BudgetsPlan, BuildPlan, LinkPlan, Plan, StreamsPlan, TensorPlan, ValidatePlan
from trtflow.plan.planner import sanitize_identifiers

NASTY = ['x"y\'z', "new\nline", "back\\slash", "\u00e9\u6f22\u5b57", "class", "copy", "self", '"""', "'''",
         "np", "Runner", "\\N{BULLET}", "a\u2028b", "tab\tx", "0lead", "__init__", "#comment", "{x}"]


def _tensor(name: str, ident: str, role: str, memory: str = "pinned") -> TensorPlan:
    return TensorPlan(name=name, ident=ident, role=role, dtype="float32", shape=(1, 4), min_shape=(1, 4),  # type: ignore[arg-type]
                      max_shape=(1, 4), format="linear", memory=memory, bytes=16, max_bytes=16, naive_bytes=16,
                      predicted_ms=0.0, naive_predicted_ms=0.0, source=name, model_dtype="float32",
                      model_shape=(1, 4))


def _plan(inputs: list[str], outputs: list[str], *, path: str = "r.yaml", topology: str = "sync") -> Plan:
    idents = sanitize_identifiers(inputs + outputs)
    return Plan(name="fuzz", class_name="FuzzRunner", recipe_path=path, recipe_sha256="0" * 64, model_path=path,
                model_sha256="f" * 64, opset=17, precision="fp32", tf32=False,
                inputs=tuple(_tensor(n, idents[n], "input") for n in inputs),
                outputs=tuple(_tensor(n, idents[n], "output", "device") for n in outputs),
                streams=StreamsPlan(topology=topology), build=BuildPlan(), validate=ValidatePlan(), budgets=BudgetsPlan(),
                link=LinkPlan())


def _exec(src: str, folder: Path) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "generated_fuzz", "__file__": str(folder / "runner.py")}
    exec(compile(src, str(folder / "runner.py"), "exec"), ns)  # noqa: S102 - testing generated code
    return ns


def _check_module(plan: Plan, src: str, folder: Path) -> None:
    assert src.isascii()
    tree = ast.parse(src)
    ns = _exec(src, folder)
    cls = ns[plan.class_name]
    assert cls.INPUT_NAMES == tuple(t.name for t in plan.inputs)
    assert cls.OUTPUT_NAMES == tuple(t.name for t in plan.outputs)
    assert cls.ARTIFACT_DIR == folder.resolve()
    assert ns["FuzzOutputs"]._fields == tuple(t.ident for t in plan.outputs)
    assert ns["FuzzInputViews"]._fields == tuple(t.ident for t in plan.inputs)
    params = inspect.signature(cls.__call__).parameters
    assert [p for p in params if p not in ("self", "copy")] == [t.ident for t in plan.inputs]
    assert all(params[t.ident].kind is inspect.Parameter.KEYWORD_ONLY for t in plan.inputs)
    doc = ast.get_docstring(tree) or ""
    for t in plan.tensors:  # names show up escaped, exactly as ascii() writes them
        assert ascii(t.name) in doc
    # every raw name reaches the code only inside string constants
    consts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for t in plan.tensors:
        assert t.name in consts


names = st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=6, unique=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=names, split=st.integers(1, 5), path=st.text(max_size=20))
def test_fuzzed_names_generate_valid_modules(tmp_path: Path, names: list[str], split: int, path: str) -> None:
    k = min(split, len(names) - 1)
    plan = _plan(names[:k], names[k:], path=path)
    _check_module(plan, generate_runner(plan), tmp_path)


def test_nasty_names_generate_valid_modules(tmp_path: Path) -> None:
    plan = _plan(NASTY[:9], NASTY[9:], path='x"""\\n\'.yaml', topology="pipelined")
    src = generate_runner(plan)
    _check_module(plan, src, tmp_path)
    for t in plan.tensors:
        assert t.ident.isidentifier() and not keyword.iskeyword(t.ident)


@pytest.mark.parametrize("field,value", [
    ("class_name", "Runner"), ("class_name", "os.system('x')"), ("class_name", "_Hidden"), ("class_name", "np"),
])
def test_tampered_plans_are_refused(field: str, value: str) -> None:
    plan = dataclasses.replace(_plan(["a"], ["b"]), **{field: value})
    with pytest.raises(CodegenError):
        generate_runner(plan)


@pytest.mark.parametrize("field,value", [
    ("ident", "a b"), ("ident", "class"), ("ident", "copy"), ("ident", "_x"), ("memory", "pinned'); import os; ('"),
    ("format", "linear\n"), ("dtype", "object"), ("shape", ("1", 4)),
])
def test_tampered_tensors_are_refused(field: str, value: Any) -> None:
    plan = _plan(["a"], ["b"])
    bad = dataclasses.replace(plan.inputs[0], **{field: value})
    with pytest.raises(CodegenError):
        generate_runner(dataclasses.replace(plan, inputs=(bad,)))


def test_duplicate_identifiers_are_refused() -> None:
    plan = _plan(["a", "b"], ["c"])
    dup = dataclasses.replace(plan.inputs[1], ident=plan.inputs[0].ident)
    with pytest.raises(CodegenError, match="used by two tensors"):
        generate_runner(dataclasses.replace(plan, inputs=(plan.inputs[0], dup)))


def test_write_runner_is_atomic_and_replaces(tmp_path: Path) -> None:
    plan = _plan(["a"], ["b"])
    (tmp_path / "runner.py").write_text("old")
    path = write_runner(plan, tmp_path)
    assert path.read_text() == generate_runner(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runner.py"]  # no temporary file left


@pytest.mark.skipif(shutil.which("ruff") is None and importlib.util.find_spec("ruff") is None, reason="no ruff")
def test_generated_code_passes_ruff(tmp_path: Path) -> None:
    plan = _plan(NASTY[:4], NASTY[4:8], topology="pipelined")
    write_runner(plan, tmp_path)
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "E,F,W,I",
                          "--line-length", "110", str(tmp_path / "runner.py")], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_generated_code_is_user_code(tmp_path: Path) -> None:
    """No path of the build machine, no private method of the base class, no type: ignore; and mypy
    accepts it as written (strict about Any returns), so a user's type checker does too."""
    plan = _plan(["x", "y"], ["out"], path="/home/builder/secret/project/r.yaml", topology="pipelined")
    src = write_runner(plan, tmp_path).read_text()
    assert "/home/builder" not in src and "secret" not in src
    assert "self._" not in src and "super()._" not in src and "type: ignore" not in src
    res = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--warn-return-any", "--follow-imports=silent",
                          "--ignore-missing-imports", str(tmp_path / "runner.py")],
                         capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_nasty_names_run_end_to_end(tmp_path: Path) -> None:
    import onnx
    from helpers import runtime as sup
    from onnx import TensorProto, helper

    x_name, outs = 'in"put\n\\ \u00e9', ["class", '"""', "copy", "self"]
    nodes = [helper.make_node("Relu", [x_name], [outs[0]]), helper.make_node("Neg", [x_name], [outs[1]]),
             helper.make_node("Abs", [x_name], [outs[2]]), helper.make_node("Sigmoid", [x_name], [outs[3]])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in outs])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "weird.onnx"))
    art, plan = sup.make_artifact(tmp_path, tmp_path / "weird.onnx", name="weird")
    mod = sup.load_runner(art)
    x = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)
    with mod.WeirdRunner() as r:
        out = r(**{plan.inputs[0].ident: x})
        np.testing.assert_array_equal(out[0], np.maximum(x, 0))
        np.testing.assert_array_equal(out[1], -x)
        np.testing.assert_array_equal(getattr(out, plan.outputs[2].ident), np.abs(x))
        by_name = r.run({x_name: x})
        np.testing.assert_allclose(by_name["self"], 1 / (1 + np.exp(-x)), rtol=1e-5)
