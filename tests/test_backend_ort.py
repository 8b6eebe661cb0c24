"""onnxruntime backend: build = load check, CPU engine writes into the runner's arrays; the reference session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from helpers.models import DYNAMIC_PROFILE, conv_bn_relu, custom_op, fp16_uint8_inputs, plan_for

from trtflow.errors import ArtifactError, BackendMissing, BuildError, InputError
from trtflow.plan.model import Plan

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                reason="onnxruntime is not installed (pip install 'trtflow[ort]')")


def _artifact(tmp_path: Path, make, body: str = "") -> tuple[Path, Plan]:  # type: ignore[no-untyped-def]
    """An artifact folder holding model.onnx (the model already matches its plan)."""
    art = tmp_path / "art"
    art.mkdir()
    make(tmp_path / "src.onnx")
    plan = plan_for(tmp_path, "src.onnx", body)
    (art / "model.onnx").write_bytes((tmp_path / "src.onnx").read_bytes())
    return art, plan


def _direct(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_ort_build_checks_model_and_records_providers(tmp_path: Path) -> None:
    import onnxruntime as ort

    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    art, plan = _artifact(tmp_path, conv_bn_relu)
    events: list[tuple[str, int, int]] = []
    info = OnnxRuntimeBackend().build(art / "model.onnx", plan, art, progress=lambda *e: events.append(e))
    assert (info.backend, info.engine_file, info.library_version) == ("onnxruntime", None, ort.__version__)
    assert info.details["providers"] == ["CPUExecutionProvider"]
    assert {t["name"]: (t["mode"], t["dtype"], t["shape"]) for t in info.details["io"]} == {
        "x": ("input", "float32", [1, 3, 16, 16]), "y": ("output", "float32", [1, 8, 16, 16])}
    assert events[-1] == ("load session", 1, 1)
    assert sorted(p.name for p in art.iterdir()) == ["model.onnx"]  # writes nothing


def test_ort_cpu_engine_writes_into_preallocated_outputs(tmp_path: Path) -> None:
    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    art, plan = _artifact(tmp_path, conv_bn_relu)
    engine = OnnxRuntimeBackend().open(art, plan, device="cpu")
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    y = np.full((1, 8, 16, 16), np.nan, dtype=np.float32)
    before = y.ctypes.data
    engine.infer({"x": x}, {"y": y})
    assert y.ctypes.data == before
    np.testing.assert_array_equal(y, _direct(art / "model.onnx", {"x": x})[0])
    engine.close()
    engine.close()  # idempotent


def test_ort_dynamic_batch_and_wrong_output_shape(tmp_path: Path) -> None:
    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    art, plan = _artifact(tmp_path, lambda p: conv_bn_relu(p, batch="N"), DYNAMIC_PROFILE)
    engine = OnnxRuntimeBackend().open(art, plan, device="cpu")
    x = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    y = np.empty((3, 8, 16, 16), np.float32)
    engine.infer({"x": x}, {"y": y})
    np.testing.assert_array_equal(y, _direct(art / "model.onnx", {"x": x})[0])
    # a buffer of the wrong shape: onnxruntime refuses it (exact output) or it does not fit (upper bound)
    with pytest.raises((InputError, ArtifactError), match="shape"):
        engine.infer({"x": x}, {"y": np.empty((2, 8, 16, 16), np.float32)})


def test_ort_fp16_and_uint8_inputs(tmp_path: Path) -> None:
    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    art, plan = _artifact(tmp_path, fp16_uint8_inputs)
    engine = OnnxRuntimeBackend().open(art, plan, device="cpu")
    rng = np.random.default_rng(2)
    feeds = {"x": rng.random((1, 3, 16, 16)).astype(np.float16),
             "m": rng.integers(0, 2, (1, 1, 16, 16), dtype=np.uint8)}
    y = np.empty((1, 8, 16, 16), np.float32)
    engine.infer(feeds, {"y": y})
    np.testing.assert_array_equal(y, _direct(art / "model.onnx", feeds)[0])
    assert (y[:, :, feeds["m"][0, 0] == 0] == 0).all()  # the uint8 mask reached the graph


def test_ort_non_contiguous_output_is_filled_by_copy(tmp_path: Path) -> None:
    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    art, plan = _artifact(tmp_path, conv_bn_relu)
    engine = OnnxRuntimeBackend().open(art, plan, device="cpu")
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    y = np.empty((1, 16, 16, 8), np.float32).transpose(0, 3, 1, 2)  # right shape, not C-contiguous
    engine.infer({"x": x}, {"y": y})
    np.testing.assert_array_equal(y, _direct(art / "model.onnx", {"x": x})[0])


def test_reference_session_runs_original_model_on_cpu_unoptimized(tmp_path: Path) -> None:
    import onnxruntime as ort

    from trtflow.backends.onnxruntime import reference_session

    model = conv_bn_relu(tmp_path / "m.onnx")
    sess = reference_session(model)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    x = np.random.default_rng(4).random((1, 3, 16, 16), dtype=np.float32)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, _direct(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the level it asks for; see reference_session


def test_ort_cuda_device_without_cuda_provider_is_backend_missing(tmp_path: Path) -> None:
    import onnxruntime as ort

    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    art, plan = _artifact(tmp_path, conv_bn_relu)
    with pytest.raises(BackendMissing, match="no CUDAExecutionProvider") as exc:
        OnnxRuntimeBackend().open(art, plan, device="cuda")
    assert "onnxruntime-gpu" in (exc.value.hint or "")


def test_ort_build_of_custom_op_model_is_build_error(tmp_path: Path) -> None:
    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    art, plan = _artifact(tmp_path, custom_op)
    with pytest.raises(BuildError, match="FancyOp"):
        OnnxRuntimeBackend().build(art / "model.onnx", plan, art)


def test_ort_build_of_model_not_matching_plan_is_build_error(tmp_path: Path) -> None:
    from trtflow.backends.onnxruntime import OnnxRuntimeBackend

    art, plan = _artifact(tmp_path, conv_bn_relu)
    fp16_uint8_inputs(art / "model.onnx")
    with pytest.raises(BuildError, match="not the plan's"):
        OnnxRuntimeBackend().build(art / "model.onnx", plan, art)
