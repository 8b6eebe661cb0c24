"""The runner over the real :class:`~trtflow.backends._trt_common.TrtEngine`, driven through the fake
TensorRT-RTX objects (tests/helpers/trt_fake.py) on the fake CUDA runtime: what the RUNTIME owes a
TensorRT engine (issue 11, runtime side), which only a supported GPU could show for real.

- shape-tensor inputs (``TrtEngine.host_inputs``): the runner hands their values over with
  ``set_input_values`` and keys its output-shape cache on them, not only on the input shapes;
- ``capturable`` (TensorRT-RTX ``is_stream_capturable``) is asked again after the warm-up enqueue, right
  before a capture, not only when the runner opens.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup
from helpers import trt_fake
from helpers.models import conv_bn_relu

from trtflow.artifact import seal
from trtflow.backends import base
from trtflow.codegen import write_runner
from trtflow.errors import ArtifactError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> sup.FakeCudart:
    f = sup.install_with_backend(monkeypatch, seed=5)
    monkeypatch.setitem(base._REGISTRY, "faketrt", "helpers.trt_fake:FakeTrtBackend")
    monkeypatch.setattr(trt_fake.FakeTrtBackend, "opened", [])
    return f


def _artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: trt_fake.Model, *,
              streams: dict[str, Any] | None = None, shape_memory: str = "pinned") -> Path:
    """An artifact whose plan is the fake engine's: x [1..8, 3, 16, 16] -> y, plus (``model.shape_input``)
    the int64 [2] shape tensor ``shape`` reshaping x into ``r`` (at most [24, 256]; no shape expression:
    only the engine can tell, from the VALUES of ``shape``)."""
    monkeypatch.setattr(trt_fake.FakeTrtBackend, "model", model)
    model_file = conv_bn_relu(tmp_path / "m.onnx", batch="N")
    recipe = {"inputs": {"x": {"profile": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [8, 3, 16, 16]}}},
              "streams": streams or {}}
    art, plan = sup.make_artifact(tmp_path, model_file, recipe, backend="faketrt")
    if model.shape_input:
        x, y = plan.inputs[0], plan.outputs[0]
        shape = replace(x, name="shape", ident="shape", dtype="int64", shape=(2,), min_shape=(2,), max_shape=(2,),
                        bytes=16, max_bytes=16, shape_expr=None, memory=shape_memory)
        r = replace(y, name="r", ident="r", shape=(3, 256), min_shape=(1, 1), max_shape=(24, 256),
                    bytes=3 * 256 * 4, max_bytes=24 * 256 * 4, shape_expr=None)
        plan = replace(plan, inputs=(x, shape), outputs=(y, r))
        (art / "plan.json").write_text(plan.to_json())
        write_runner(plan, art)
        seal(art, {"backend": "faketrt"})
    return art


def _x(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "cuda_graph"])
def test_contract_shape_tensor_values_reach_the_engine_and_key_the_output_shapes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: sup.FakeCudart, graph: bool) -> None:
    art = _artifact(tmp_path, monkeypatch, trt_fake.Model(scratch=0, shape_input=True),
                    streams={"cuda_graph": graph})
    with sup.load_runner(art).NetRunner() as r:
        engine = trt_fake.FakeTrtBackend.opened[0]
        assert engine.host_inputs == {"shape"}
        # same input shapes every time, different VALUES of the shape tensor: r follows the values
        for i, dims in enumerate([(3, 256), (6, 128), (3, 256), (24, 32), (24, 32)]):
            x = _x(i)
            out = r(x=x, shape=np.array(dims, dtype=np.int64))
            assert out.r.shape == dims, f"request {i}: shape values {dims}"
            np.testing.assert_array_equal(out.r, x.reshape(dims))
            assert engine._host_values["shape"].tolist() == list(dims)  # handed over on the host
            assert out.y.shape == (1, 8, 16, 16)
        if graph:  # a graph bakes the values' shapes: dropped on each change, replayed when steady
            assert r.graph_stats["dropped"] >= 3 and r.graph_stats["replays"] >= 1, r.graph_stats


def test_contract_shape_tensor_input_needs_host_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       fake: sup.FakeCudart) -> None:
    art = _artifact(tmp_path, monkeypatch, trt_fake.Model(scratch=0, shape_input=True), shape_memory="device")
    with pytest.raises(ArtifactError, match=r"input 'shape' is a shape tensor .* memory: device"):
        sup.load_runner(art).NetRunner()


@pytest.mark.parametrize("capturable", [True, False], ids=["capturable", "not_capturable_after_warm_up"])
def test_contract_capturable_is_asked_again_after_the_warm_up_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: sup.FakeCudart, capturable: bool) -> None:
    """TensorRT-RTX answers ``is_stream_capturable`` for the stream of the last enqueue: at open there was
    none (the engine says True), so the runner must ask again after the warm-up run, before capturing."""
    art = _artifact(tmp_path, monkeypatch, trt_fake.Model(scratch=0, stream_capturable=capturable),
                    streams={"cuda_graph": True})
    with sup.load_runner(art).NetRunner() as r:
        assert r.graph_status.startswith("pending")  # nothing enqueued yet: the engine cannot tell
        for i in range(4):
            fake.calls.clear()
            x = _x(i, n=2)
            out = r(x=x)
            assert out.y.shape == (2, 8, 16, 16)
            np.testing.assert_array_equal(out.y, np.concatenate([2 * x] * 3, axis=1)[:, :8])  # the fake's kernel
            assert capturable or "cudaStreamBeginCapture" not in fake.calls
        if capturable:
            assert r.graph_stats["captures"] == 1 and r.graph_stats["replays"] == 3
        else:
            assert r.graph_stats["captures"] == 0 and r.graph_stats["failures"] == 1
            assert "after the warm-up run" in r.graph_status and r.graph_status.startswith("eager")
