"""The runner on a CPU-only machine: the generated module runs end to end on onnxruntime (and torch
when installed), with the same checks, topologies and lifecycle as on a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from helpers import runtime as sup

from trtflow.artifact import seal
from trtflow.errors import ArtifactError, BackendMissing, BuildError, InputError, RunnerClosed
from trtflow.runtime.runner import Runner

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("onnx2torch") is not None


@pytest.fixture
def conv(tmp_path: Path) -> tuple[Path, Path]:
    model = sup.conv_model(tmp_path / "m.onnx")
    art, _ = sup.make_artifact(tmp_path, model, {"streams": {"topology": "pipelined", "depth": 2}})
    return art, model


def _x(shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("streams", [{"topology": "sync"}, {"topology": "async"},
                                     {"topology": "pipelined", "depth": 3}, {"cuda_graph": True}])
@pytest.mark.parametrize("memory", ["pageable", "pinned", "registered", "mapped", "device"])
def test_generated_runner_end_to_end_on_cpu(tmp_path: Path, memory: str, streams: dict[str, Any]) -> None:
    model = sup.conv_model(tmp_path / "m.onnx")
    art, _ = sup.make_artifact(tmp_path, model, {"inputs": {"image": {"memory": memory}},
                                                    "outputs": {"logits": {"memory": memory}}, "streams": streams})
    mod = sup.load_runner(art)
    xs = [_x(seed=i) for i in range(4)]
    refs = [sup.reference(model, {"image": x})["logits"] for x in xs]
    with mod.NetRunner() as r:
        assert (r.device, r.backend) == ("cpu", "onnxruntime")
        for x, ref in zip(xs, refs):
            r.fill_outputs(np.nan)
            out = r(image=x)
            assert isinstance(out, mod.NetOutputs)
            np.testing.assert_allclose(out.logits, ref, rtol=1e-6, atol=1e-6)
        got = [p.result(copy=True).logits for p in [r.submit(image=x) for x in xs]]
        streamed = [o.logits for o in r.stream(({"image": x} for x in xs), copy=True)]
        for a, b, ref in zip(got, streamed, refs):
            np.testing.assert_allclose(a, ref, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(a, b)
        assert r.run({"image": xs[0]})["logits"].shape == (1, 5, 16, 16)
        if streams.get("cuda_graph"):
            assert r.graph_status == "eager: CUDA graphs need a CUDA engine (running on the CPU)"


def test_outputs_are_views_until_reuse_unless_copy(conv: tuple[Path, Path]) -> None:
    art, _ = conv
    with sup.load_runner(art).NetRunner(topology="sync") as r:
        a = r(image=_x(seed=1)).logits
        kept = a.copy()
        owned = r(image=_x(seed=1), copy=True).logits
        r(image=_x(seed=2))
        assert not np.array_equal(a, kept)  # the view now shows the newer result (documented)
        np.testing.assert_array_equal(owned, kept)


def test_unread_results_survive_buffer_reuse(conv: tuple[Path, Path]) -> None:
    art, model = conv
    xs = [_x(seed=i) for i in range(5)]
    with sup.load_runner(art).NetRunner() as r:  # depth 2
        pending = [r.submit(image=x) for x in xs]
        for p, x in zip(pending, xs):
            assert p.done()
            np.testing.assert_allclose(p.result().logits, sup.reference(model, {"image": x})["logits"], rtol=1e-6)


def test_input_views_and_in_place_writes(conv: tuple[Path, Path]) -> None:
    art, model = conv
    with sup.load_runner(art).NetRunner() as r:
        view = r.inputs.image
        assert view is not None
        view[...] = _x(seed=3)
        np.testing.assert_allclose(r(image=view).logits, sup.reference(model, {"image": _x(seed=3)})["logits"],
                                   rtol=1e-6)
        assert r.input_view("image").shape == (1, 3, 16, 16)
        with pytest.raises(InputError, match="is an output"):
            r.input_view("logits")


def test_input_errors_name_tensor_expected_and_got(conv: tuple[Path, Path]) -> None:
    art, _ = conv

    class OnGpu:
        __cuda_array_interface__: ClassVar[dict[str, Any]] = {"shape": (1, 3, 16, 16), "typestr": "<f4", "data": (0, False), "version": 3}

    with sup.load_runner(art).NetRunner(check_finite=True) as r:
        cases: list[tuple[Any, str]] = [
            (_x().astype(np.float64), r"input 'image': expected dtype float32, got float64 \(no implicit casts\)"),
            (_x((1, 3, 16, 8)), r"input 'image': expected shape \[1, 3, 16, 16\], got \[1, 3, 16, 8\]"),
            (_x((3, 16, 16)), r"expected rank 4 \[1, 3, 16, 16\], got shape \[3, 16, 16\]"),
            (np.asfortranarray(_x()), "not C-contiguous"),
            (_x()[:, :, ::-1], "not C-contiguous"),
            ([[1.0]], "expected a numpy array in host memory \\(pinned\\), got builtins.list"),
            (OnGpu(), "expected a numpy array in host memory \\(pinned\\), got a CUDA array"),
            (np.full((1, 3, 16, 16), np.inf, np.float32), "768 NaN/Inf value"),
        ]
        for bad, msg in cases:
            with pytest.raises(InputError, match=msg):
                r(image=bad)
        with pytest.raises(InputError, match=r"unknown \['imag'\], missing \['image'\]; expected \['image'\]"):
            r.run({"imag": _x()})
        with pytest.raises(TypeError):
            r(imag=_x())  # the generated signature is keyword-only and typed
        r(image=_x())  # still usable after errors


def test_dynamic_profile_shapes_and_bounds(tmp_path: Path) -> None:
    model = sup.conv_model(tmp_path / "m.onnx", batch="N")
    recipe = {"inputs": {"image": {"profile": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}}}
    art, _ = sup.make_artifact(tmp_path, model, recipe)
    with sup.load_runner(art).NetRunner() as r:
        for b in (1, 4, 2, 3):
            x = _x((b, 3, 16, 16), seed=b)
            out = r(image=x).logits
            assert out.shape == (b, 5, 16, 16)
            np.testing.assert_allclose(out, sup.reference(model, {"image": x})["logits"], rtol=1e-6)
        with pytest.raises(InputError, match=r"dimension 0 is 5, outside the profile \[1..4, 3, 16, 16\]"):
            r(image=_x((5, 3, 16, 16)))


def test_close_is_idempotent_and_final(conv: tuple[Path, Path]) -> None:
    art, _ = conv
    r = sup.load_runner(art).NetRunner()
    r.close()
    r.close()
    assert r.closed
    for call in (lambda: r(image=_x()), lambda: r.submit(image=_x()), lambda: list(r.stream([{"image": _x()}])),
                 lambda: r.input_view("image"), lambda: r.fill_outputs()):
        with pytest.raises(RunnerClosed, match="NetRunner is closed"):
            call()
    with sup.load_runner(art).NetRunner() as r2:
        p = r2.submit(image=_x())
    with pytest.raises(RunnerClosed):
        p.result()


def test_generated_module_imports_from_any_directory(conv: tuple[Path, Path], tmp_path: Path) -> None:
    art, model = conv
    np.save(tmp_path / "x.npy", _x(seed=4))
    code = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('anyname', {str(art / 'runner.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "with m.NetRunner() as r:\n"
        f"    out = r(image=np.load({str(tmp_path / 'x.npy')!r}))\n"
        "    print(out.logits.shape, float(out.logits.sum()))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    ref = sup.reference(model, {"image": _x(seed=4)})["logits"]
    shape, total = res.stdout.split(")")
    assert shape == "(1, 5, 16, 16" and abs(float(total) - float(ref.sum())) < 1e-3


def test_artifact_problems_are_artifact_errors(conv: tuple[Path, Path], tmp_path: Path) -> None:
    art, _ = conv
    with pytest.raises(ArtifactError, match="no report.json"):
        Runner(tmp_path / "nowhere")
    plan = json.loads((art / "plan.json").read_text())
    plan["outputs"][0]["name"] = "renamed"
    (art / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ArtifactError, match="does not match the build report"):  # the hash check comes first
        sup.load_runner(art).NetRunner()
    report = json.loads((art / "report.json").read_text())
    seal(art, report)  # a consistent tamper (report re-hashed): the runner's own checks still refuse it
    with pytest.raises(ArtifactError, match="runner.py declares outputs"):
        sup.load_runner(art).NetRunner()
    (art / "plan.json").write_text("{not json")
    seal(art, report)
    with pytest.raises(ArtifactError, match="not a valid plan"):
        Runner(art)


def test_generic_runner_without_generated_module(conv: tuple[Path, Path]) -> None:
    art, model = conv
    with Runner(art) as r:
        out = r.run({"image": _x()})
        np.testing.assert_allclose(out["logits"], sup.reference(model, {"image": _x()})["logits"], rtol=1e-6)
        assert "buffer set(s)" in r.describe()


def test_cuda_device_needs_a_gpu(conv: tuple[Path, Path]) -> None:
    from trtflow.runtime import cuda

    if cuda.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendMissing):
        Runner(conv[0], device="cuda")


@pytest.mark.skipif(not HAS_TORCH, reason="torch and onnx2torch are not installed")
def test_torch_backend_on_cpu(conv: tuple[Path, Path], tmp_path: Path) -> None:
    from trtflow.backends.torch import TorchBackend

    art, model = conv
    with Runner(art) as r0:
        info = TorchBackend().build(art / "model.onnx", r0.plan, art)
    assert info.backend == "torch" and info.engine_file is None
    with sup.load_runner(art).NetRunner(backend="torch", device="cpu") as r:
        x = _x(seed=5)
        np.testing.assert_allclose(r(image=x).logits, sup.reference(model, {"image": x})["logits"], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.skipif(not HAS_TORCH, reason="torch and onnx2torch are not installed")
def test_torch_backend_unsupported_op_is_a_build_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from trtflow.backends.torch import TorchBackend

    node = helper.make_node("Det", ["x"], ["y"])  # onnx2torch has no converter for Det
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "det.onnx"))
    art, plan = sup.make_artifact(tmp_path, tmp_path / "det.onnx")
    with pytest.raises(BuildError, match=r"no converter for Det \(opset 17\)") as err:
        TorchBackend().build(art / "model.onnx", plan, art)
    assert "onnxruntime" in str(err.value) and "tensorrt_rtx" in str(err.value)


@pytest.mark.slow
def test_real_segmentation_model_on_cpu(tmp_path: Path) -> None:
    model = ROOT / "models" / "lraspp_mobilenet_v3.onnx"
    if not model.is_file():
        pytest.skip("models/lraspp_mobilenet_v3.onnx is not there")
    art, plan = sup.make_artifact(tmp_path, model, {"streams": {"topology": "pipelined", "depth": 2}}, name="seg")
    x = _x(tuple(plan.inputs[0].shape), seed=6)
    with sup.load_runner(art).SegRunner() as r:
        out = r(image=x)
        ref = sup.reference(model, {"image": x})["out"]
        assert out._fields == (plan.outputs[0].ident,)  # "out" is reserved: the identifier differs
        np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-4)


# Non-square and non-opt shapes under a square profile: the old min/opt/max ratio heuristic gave the
# output the H of the input for both spatial dims here (and then a run-time error).
ODD_SHAPES = [(1, 3, 16, 48), (2, 3, 64, 20), (1, 3, 33, 17), (2, 3, 64, 64), (1, 3, 16, 16), (1, 3, 32, 32)]


def _strided_out(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], 5, (shape[2] - 1) // 2 + 1, (shape[3] - 1) // 2 + 1)


@pytest.mark.parametrize("exprs", [True, False], ids=["shape_expr", "no_shape_expr"])
@pytest.mark.parametrize("streams", [{"topology": "sync"}, {"topology": "pipelined", "depth": 2}])
def test_output_shapes_at_non_square_non_opt_shapes(tmp_path: Path, exprs: bool, streams: dict[str, Any]) -> None:
    """onnxruntime CPU through the generated runner: each request's output shape is the plan's shape
    expression evaluated at its input shapes (no expression: what onnxruntime reports after running)."""
    art, model, _ = sup.dynamic_hw_artifact(tmp_path, {"streams": streams}, exprs=exprs)
    with sup.load_runner(art).NetRunner() as r:
        pending = []
        for i, shape in enumerate(ODD_SHAPES):
            x = _x(shape, seed=i)
            out = r(image=x, copy=True).logits
            assert out.shape == _strided_out(shape), (shape, out.shape)
            np.testing.assert_allclose(out, sup.reference(model, {"image": x})["logits"], rtol=1e-5, atol=1e-6)
            pending.append((r.submit(image=x), x, shape))
        for p, x, shape in pending:  # unread results of other shapes survive buffer reuse at their shape
            assert p.shapes == {"logits": _strided_out(shape)}
            np.testing.assert_allclose(p.result().logits, sup.reference(model, {"image": x})["logits"], rtol=1e-5)
        assert r._out_shapes._fns[0] is not None if exprs else r._out_shapes._fns[0] is None


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("torch", marks=pytest.mark.skipif(
    not HAS_TORCH, reason="torch and onnx2torch are not installed"))])
def test_data_dependent_output_on_cpu(tmp_path: Path, backend: str) -> None:
    """NonZero: the buffer is the upper bound [2, 32]; each result has the shape the engine computed
    (torch: our NonZero converter; onnx2torch 1.5's own returns the transposed [K, 2], seen on the H200)."""
    art, model, plan = sup.nonzero_artifact(tmp_path, backend=backend)
    assert plan.outputs[0].data_dependent
    rng = np.random.default_rng(0)
    with sup.load_runner(art).NzRunner(backend=backend, device="cpu") as r:
        for b in (1, 4, 2, 4, 3):
            x = rng.standard_normal((b, 8)).astype(np.float32)
            got = r(x=x).idx
            ref = sup.reference(model, {"x": x})["idx"]
            assert got.shape == ref.shape == (2, int((x > 0).sum()))
            np.testing.assert_array_equal(got, ref)


def test_shape_expression_outside_the_buffer_is_an_artifact_error(tmp_path: Path) -> None:
    """A plan whose expression would overflow the buffer is refused before anything runs."""
    from dataclasses import replace

    art, _, plan = sup.dynamic_hw_artifact(tmp_path)
    bad = replace(plan.outputs[0], shape_expr=("image[0]", "5", "image[2]", "(image[3] - 1) // 2 + 1"))
    sup.rewrite_plan(art, replace(plan, outputs=(bad,)))
    with sup.load_runner(art).NetRunner() as r, pytest.raises(ArtifactError, match=r"outside its buffer"):
        r(image=_x((1, 3, 64, 64)))
    bad = replace(plan.outputs[0], shape_expr=("image[0]", "5", "image[2] / 2", "1"))
    sup.rewrite_plan(art, replace(plan, outputs=(bad,)))
    with pytest.raises(ArtifactError, match=r"output 'logits': shape expression"):
        sup.load_runner(art).NetRunner()


def test_real_classifier_at_every_batch_of_its_profile(tmp_path: Path) -> None:
    """models/mobilenet_v3_small.onnx (torchvision export, dynamic batch) on onnxruntime CPU through the
    generated runner at min, max and non-opt batches: the planner's expression ("images[0]", "1000")."""
    model = ROOT / "models" / "mobilenet_v3_small.onnx"
    recipe = {"inputs": {"images": {"profile": {"min": [1, 3, 224, 224], "opt": [2, 3, 224, 224],
                                                "max": [4, 3, 224, 224]}}}}
    art, plan = sup.make_artifact(tmp_path, model, recipe, name="cls")
    assert plan.outputs[0].shape_expr == ("images[0]", "1000")
    import onnxruntime as ort

    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with sup.load_runner(art).ClsRunner() as r:
        for b in (1, 4, 3, 1):
            x = _x((b, 3, 224, 224), seed=b)
            out = r(images=x).logits
            assert out.shape == (b, 1000)
            np.testing.assert_allclose(out, ref.run(None, {"images": x})[0], rtol=1e-4, atol=1e-5)
