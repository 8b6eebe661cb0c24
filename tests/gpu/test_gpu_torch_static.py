"""GPU: the lowered LRASPP (fold_shapes + the torch backend's static Resize) captures into a CUDA
graph through the torch engine, and a replay equals eager. Before, onnx2torch's Resize read its
sizes on the host and capture failed ("Cannot copy between CPU and CUDA tensors during capture")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_gpu_runtime as gpu
from helpers import runtime as sup

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu.REASON is not None, reason=f"GPU tests: {gpu.REASON}")]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_lowered_lraspp_captures_and_replays_like_eager(tmp_path: Path, precision: str) -> None:
    import onnx
    from helpers.passes import make_project

    from trtflow.passes import lower
    from trtflow.runtime.runner import Runner

    model = gpu._lraspp()
    recipe = {"precision": precision, "inputs": {"image": {"dtype": "uint8", "layout": "NHWC", "memory": "pinned"}},
              "outputs": {"out": {"reduce": {"op": "argmax", "dtype": "uint8"}, "memory": "pinned"}},
              "streams": {"topology": "pipelined", "depth": 2, "cuda_graph": True}}
    body = "".join(f"{k}: {v!r}\n" if isinstance(v, str) else f"{k}: {_flow(v)}\n" for k, v in recipe.items())
    (tmp_path / "src").mkdir()
    plan = make_project(tmp_path / "src", model, body)
    lowered, _ = lower(onnx.load(str(model)), plan)
    onnx.save(lowered, str(tmp_path / "lowered.onnx"))
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="torch", name="seg", lowered=tmp_path / "lowered.onnx")

    rng = np.random.default_rng(11)
    xs = [rng.integers(0, 256, (1, 520, 520, 3), dtype=np.uint8) for _ in range(4)]
    with Runner(art, backend="torch", cuda_graph=True) as g, Runner(art, backend="torch", cuda_graph=False) as e:
        assert g._engine.static_modules == {"Resize": 2}  # type: ignore[union-attr]
        for _ in range(2):
            for x in xs:
                got, ref = g.run({"image": x}, copy=True)["out"], e.run({"image": x}, copy=True)["out"]
                assert (got == ref).mean() >= 0.9999, (got != ref).sum()
        streamed = [o["out"] for o in g.stream(({"image": x} for x in xs), copy=True)]
        for s, x in zip(streamed, xs):
            assert (s == e.run({"image": x}, copy=True)["out"]).mean() >= 0.9999
        print(f"\n[gpu] lraspp {precision} lowered, cuda_graph: {g.graph_status} {g.graph_stats}")
        assert g.graph_stats["captures"] >= 1 and g.graph_stats["failures"] == 0, (g.graph_status, g.graph_stats)
        assert g.graph_stats["replays"] >= 1 and g.graph_status.startswith("captured"), g.graph_status


def _flow(v: object) -> str:
    import json

    return json.dumps(v)  # JSON is YAML flow style
