"""Small real ONNX models and plans shared by the tests, and the repository's paths (ROOT, MODELS).

Each model already matches its plan (identity I/O contract), so a backend can build it directly,
without the graph passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtflow.plan import Plan, make_plan
from trtflow.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
OPSET = 17
DYNAMIC_PROFILE = "inputs: {x: {profile: {min: [1,3,16,16], opt: [4,3,16,16], max: [8,3,16,16]}}}\n"


def _save(graph: onnx.GraphProto, path: Path, *, extra_opsets: tuple[tuple[str, int], ...] = ()) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)] +
                              [helper.make_opsetid(d, v) for d, v in extra_opsets])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def conv_bn_relu(path: Path, *, batch: int | str = 1) -> Path:
    """x[batch,3,16,16] -> Conv(8,3x3) -> BatchNormalization -> Relu -> y[batch,8,16,16]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, (8,)).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, (8,)).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "conv_bn_relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 16, 16])], inits)
    return _save(graph, path)


def fp16_uint8_inputs(path: Path) -> Path:
    """x: fp16 image [1,3,16,16]; m: uint8 mask [1,1,16,16] cast in the graph; y = float(conv(x) * m)."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float16), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Cast", ["m"], ["m16"], to=TensorProto.FLOAT16, name="cast_mask"),
        helper.make_node("Mul", ["c", "m16"], ["p"], name="mask"),
        helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT, name="cast_out"),
    ]
    graph = helper.make_graph(nodes, "fp16_uint8",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 16, 16]),
                               helper.make_tensor_value_info("m", TensorProto.UINT8, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w])
    return _save(graph, path)


def unique_op(path: Path) -> Path:
    """A standard ONNX op (Unique) that TensorRT's parser refuses and onnxruntime runs."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Unique", ["r"], ["y"], name="uniq", sorted=1)], "unique",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])])
    return _save(graph, path)


def custom_op(path: Path) -> Path:
    """An op of a custom domain: no backend implements it."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("FancyOp", ["r"], ["y"], name="fancy", domain="com.example")], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return _save(graph, path, extra_opsets=(("com.example", 1),))


def make_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("[project]\nname='x'\n")
    return folder


def plan_for(folder: Path, model: str, body: str = "", *, name: str = "r") -> Plan:
    """Plan of a recipe ``folder/<name>.yaml`` = ``model: <model>`` + ``body``."""
    make_project(folder)
    return make_plan(parse_recipe(f"model: {model}\n{body}", folder / f"{name}.yaml"))


def make_conv_model(path: Path, *, batch: int | str = 1, channels: int = 3, classes: int = 5, hw: int = 16,
                    names: tuple[str, str] = ("image", "logits"), seed: int = 0, sigmoid: bool = False) -> Path:
    """A small real conv net, Conv(3x3)-Relu-Conv(1x1) (then Sigmoid with ``sigmoid``), fixed-seed weights,
    saved to ``path``; ``names`` are its input and output."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, channels, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (classes, 8, 1, 1)).astype(np.float32), "w2")
    x, y = names
    nodes = [
        helper.make_node("Conv", [x, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2" if sigmoid else y]),
    ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["c2"], [y]))
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, channels, hw, hw])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [batch, classes, hw, hw])],
        [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tied_state_model(path: Path, *, names: tuple[str, str] = ("n", "m"), combined: bool = True) -> Path:
    """A state-carrying model like silero's: ``audio`` [n, 8] and ``state`` [2, m, 8], added (broadcast),
    so the model needs n == m although the declared dims (``names``) may differ: ``out`` [2, n, 8] and
    ``state_out`` = ``out`` + 1. ``combined=False``: ``out`` = audio + 1 and ``state_out`` = state + 1
    (only a shared dim name ties them then)."""
    one = numpy_helper.from_array(np.ones((1,), dtype=np.float32), "one")
    nodes = ([helper.make_node("Add", ["audio", "state"], ["out"], name="mix"),
              helper.make_node("Add", ["out", "one"], ["state_out"], name="next")] if combined else
             [helper.make_node("Add", ["audio", "one"], ["out"], name="mix"),
              helper.make_node("Add", ["state", "one"], ["state_out"], name="next")])
    graph = helper.make_graph(
        nodes, "tied",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [names[0], 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, names[1], 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, names[0], 8] if combined else [names[0], 8]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, names[0 if combined else 1], 8])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


_PLAN_AND_KEY = """
import sys
from trtflow.backends.base import get_backend
from trtflow.build import cache_key
from trtflow.plan import make_plan
from trtflow.recipe import load_recipe
plan = make_plan(load_recipe(sys.argv[1]))
sys.stdout.write(plan.to_json() + "cache_key " + cache_key(plan, get_backend("onnxruntime")) + "\\n")
"""


def plan_in_subprocess(recipe: Path, *, hash_seed: int) -> str:
    """plan.json and the build cache key of ``recipe``, planned in a fresh interpreter under
    PYTHONHASHSEED=``hash_seed`` (set and dict-of-str order differ between seeds)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    return subprocess.run([sys.executable, "-c", _PLAN_AND_KEY, str(recipe)], env=env, capture_output=True,
                          text=True, check=True, timeout=300).stdout
