"""torch backend: onnx2torch modules with constant sizes/k/shape become sync-free stand-ins (CPU)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import runtime as sup
from helpers.passes import caller_feeds, make_project, real_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from trtflow.passes import lower


def _why_not() -> str | None:
    try:
        import torch  # noqa: F401

        from trtflow.backends import _torch_ops

        _torch_ops.load()  # imports onnx2torch the way the backend does (a stand-in for a broken torchvision)
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. torchvision without its CUDA libs) too
        return f"torch/onnx2torch not importable: {type(exc).__name__}: {exc}"
    return None


REASON = _why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))


def _convert(model: onnx.ModelProto, *, split: bool = True) -> Any:
    """onnx2torch's module, with one output per graph output (``split_outputs``, as the backend does)."""
    from onnx2torch import convert

    from trtflow.backends._torch_static import split_outputs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = convert(model).eval()
    if split:
        split_outputs(module, model)
    return module


def _run(module: Any, *xs: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(x) for x in xs))
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def _runtime_readers(module: Any) -> list[str]:
    """Names of modules left that read a tensor argument on the host each call."""
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.resize import OnnxResize, OnnxResizeV10
    from onnx2torch.node_converters.topk import OnnxTopK

    kinds = (OnnxResize, OnnxResizeV10, OnnxTopK, OnnxReshape)
    return [name for name, m in module.named_modules() if isinstance(m, kinds)]


@pytest.fixture(scope="module")
def lraspp(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, Any, Path]:
    d = tmp_path_factory.mktemp("lraspp")
    path = real_model("lraspp_mobilenet_v3.onnx")
    plan = make_project(d, path, "outputs:\n  out: {}\n")
    lowered, _ = lower(onnx.load(str(path)), plan)
    onnx.save(lowered, str(d / "lowered.onnx"))
    return lowered, plan, d / "lowered.onnx"


@pytest.mark.slow
def test_lowered_lraspp_resizes_are_static_and_match(lraspp: tuple[onnx.ModelProto, Any, Path]) -> None:
    from trtflow.backends._torch_static import StaticResize, make_static

    lowered, plan, _ = lraspp
    plain, static = _convert(lowered), _convert(lowered)
    assert len(_runtime_readers(static)) == 2
    assert make_static(static) == {"Resize": 2}
    assert _runtime_readers(static) == []
    resizes = [m for m in static.modules() if isinstance(m, StaticResize)]
    assert sorted(m.size for m in resizes) == [[65, 65], [520, 520]]
    assert all(m.mode == "bilinear" and m.align_corners is False and m.scale_factor is None for m in resizes)
    calls = [n for n in static.graph.nodes if n.op == "call_module"
             and isinstance(static.get_submodule(n.target), StaticResize)]
    assert len(calls) == 2 and all(len(n.args) == 1 and not n.kwargs for n in calls)  # no tensor read but x

    x = caller_feeds(plan, seed=7)["image"]
    got, ref = _run(static, x)[0], _run(plain, x)[0]
    np.testing.assert_array_equal(got, ref)  # the same interpolate call, only without the host reads
    np.testing.assert_allclose(got, run_ort(lowered, {"image": x})["out"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_backend_open_makes_them_static(lraspp: tuple[onnx.ModelProto, Any, Path], tmp_path: Path) -> None:
    from trtflow.backends.torch import TorchBackend

    lowered, plan, path = lraspp
    art, art_plan = sup.make_artifact(tmp_path, real_model("lraspp_mobilenet_v3.onnx"), {"outputs": {"out": {}}},
                                      backend="torch", name="seg", lowered=path)
    engine = TorchBackend().open(art, art_plan, device="cpu")
    try:
        assert engine.static_modules == {"Resize": 2}  # type: ignore[attr-defined]
        x = caller_feeds(plan, seed=8)["image"]
        out = {"out": np.empty((1, 21, 520, 520), np.float32)}
        engine.infer({"image": x}, out)  # type: ignore[attr-defined]
        np.testing.assert_allclose(out["out"], run_ort(lowered, {"image": x})["out"], rtol=1e-5, atol=1e-5)
    finally:
        engine.close()


@pytest.mark.slow
def test_unfolded_sizes_are_left_to_onnx2torch() -> None:
    from trtflow.backends._torch_static import make_static

    model = onnx.load(str(real_model("lraspp_mobilenet_v3.onnx")))  # Shape->Slice->Concat still computes sizes
    module = _convert(model)
    assert make_static(module) == {}
    assert len(_runtime_readers(module)) == 2


def test_mobilenet_topk_k_is_static(tmp_path: Path) -> None:
    from trtflow.backends._torch_static import make_static
    from trtflow.backends.torch import TorchBackend

    path = real_model("mobilenet_v3_small.onnx")
    recipe = {"inputs": {"images": {"profile": {"min": [1, 3, 224, 224], "opt": [2, 3, 224, 224],
                                                "max": [4, 3, 224, 224]}}},
              "outputs": {"logits": {"reduce": {"op": "topk", "k": 5}}}}
    plan = make_project(tmp_path, path, "".join(f"{k}: {json.dumps(v)}\n" for k, v in recipe.items()))
    lowered, _ = lower(onnx.load(str(path)), plan)
    plain, static = _convert(lowered), _convert(lowered)
    assert make_static(static) == {"TopK": 1} and _runtime_readers(static) == []
    x = np.random.default_rng(1).random((3, 3, 224, 224), dtype=np.float32)
    ref = run_ort(lowered, {"images": x})
    for module in (static, plain):
        values, indices = _run(module, x)
        np.testing.assert_allclose(values, ref["logits_values"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(indices, ref["logits_indices"])

    # through the backend: TopK's values and indices come back as two outputs (split_outputs)
    onnx.save(lowered, str(tmp_path / "lowered.onnx"))
    art, art_plan = sup.make_artifact(tmp_path, path, recipe, backend="torch", name="cls",
                                      lowered=tmp_path / "lowered.onnx")
    engine = TorchBackend().open(art, art_plan, device="cpu")
    try:
        assert engine.static_modules == {"TopK": 1}  # type: ignore[attr-defined]
        out = {"logits_values": np.empty((3, 5), np.float32), "logits_indices": np.empty((3, 5), np.int32)}
        engine.infer({"images": x}, out)  # type: ignore[attr-defined]
        np.testing.assert_allclose(out["logits_values"], ref["logits_values"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out["logits_indices"], ref["logits_indices"])
    finally:
        engine.close()


def _small_model() -> onnx.ModelProto:
    """Resize by constant scales, Reshape with a 0 (copy) dim, TopK with constant k; plus a Resize
    whose sizes come from the graph input (must stay onnx2torch's)."""
    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 3], np.float32), "scales"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
             numpy_helper.from_array(np.array([3], np.int64), "k")]
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),  # x, not up: no ties for TopK
        helper.make_node("TopK", ["flat", "k"], ["vals", "idx"]),
        helper.make_node("Resize", ["x", "", "", "sz"], ["dyn"], mode="linear"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [2, 3, 4, 5]),
                                           helper.make_tensor_value_info("sz", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("vals", f32, [2, 3]),
                               helper.make_tensor_value_info("idx", TensorProto.INT64, [2, 3]),
                               helper.make_tensor_value_info("up", f32, [2, 3, 8, 15]),
                               helper.make_tensor_value_info("dyn", f32, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_scales_reshape_topk_static_and_runtime_sizes_untouched() -> None:
    from onnx2torch.node_converters.resize import OnnxResize

    from trtflow.backends._torch_static import StaticReshape, StaticResize, StaticTopK, make_static

    model = _small_model()
    plain, static = _convert(model), _convert(model)
    assert make_static(static) == {"Resize": 1, "Reshape": 1, "TopK": 1}
    kinds = [type(m) for m in static.children()]
    assert {StaticResize, StaticReshape, StaticTopK, OnnxResize} <= set(kinds)
    scaled = next(m for m in static.modules() if isinstance(m, StaticResize))
    assert scaled.scale_factor == [2.0, 3.0] and scaled.size is None and scaled.mode == "nearest"
    x = np.random.default_rng(2).random((2, 3, 4, 5), dtype=np.float32)
    sz = np.array([2, 3, 6, 7], np.int64)
    import torch

    with torch.inference_mode():  # onnx2torch alone nests TopK's (values, indices) as one output
        raw = _convert(model, split=False)(torch.from_numpy(x), torch.from_numpy(sz))
    assert len(raw) == 3 and isinstance(raw[0], tuple)
    got, ref, ort = _run(static, x, sz), _run(plain, x, sz), run_ort(model, {"x": x, "sz": sz})
    assert len(got) == len(ref) == 4
    for g, r, o in zip(got, ref, (ort["vals"], ort["idx"], ort["up"], ort["dyn"])):
        np.testing.assert_array_equal(g, r)
        np.testing.assert_allclose(g, o, rtol=1e-5, atol=1e-5)


def test_static_resize_still_refuses_a_batch_or_channel_change() -> None:
    import torch

    from trtflow.backends._torch_static import StaticResize

    m = StaticResize("bilinear", False, [8, 8], None, [1, 3])
    assert tuple(m(torch.zeros(1, 3, 4, 4)).shape) == (1, 3, 8, 8)
    with pytest.raises(NotImplementedError, match="channel or batch"):
        m(torch.zeros(2, 3, 4, 4))
