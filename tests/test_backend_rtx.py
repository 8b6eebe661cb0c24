"""TensorRT-RTX backend: real builds of small real models on this machine (the builder needs no GPU).

The RTX runtime cannot deserialize without a GPU of compute capability 8.0/8.6/8.9/12.x, so on this
machine opening tests only the checks that run before deserialization, plus the error deserialization
gives without a GPU. Plans are built once per module.
"""

from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_backend_models import (
    DYNAMIC_PROFILE,
    conv_bn_relu,
    custom_op,
    fp16_uint8_inputs,
    plan_for,
    unique_op,
)

from trtflow.backends import _trt_common as common
from trtflow.errors import ArtifactError, BackendMissing, BuildError
from trtflow.plan.model import BuildInfo, Plan

pytestmark = [
    pytest.mark.rtx,
    pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                       reason="tensorrt_rtx is not installed (pip install 'trtflow[rtx]')"),
]

@dataclass
class Built:
    plan: Plan
    out: Path
    info: BuildInfo
    progress: list[tuple[str, int, int]]

    @property
    def io(self) -> dict[str, dict]:
        return {t["name"]: t for t in self.info.details["io"]}


def _build(root: Path, name: str, model: Path, body: str) -> Built:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    plan = plan_for(root, model.name, body, name=name)
    out = root / f"{name}.artifact"
    out.mkdir()
    events: list[tuple[str, int, int]] = []
    info = TensorRTRTXBackend().build(model, plan, out, progress=lambda *e: events.append(e))
    return Built(plan, out, info, events)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("rtx")
    cbr = conv_bn_relu(root / "cbr.onnx")
    dyn = conv_bn_relu(root / "dyn.onnx", batch="N")
    mixed = fp16_uint8_inputs(root / "mixed.onnx")
    return {
        "cbr": _build(root, "cbr", cbr, "build: {timing_cache: cache.bin}\n"),
        "dyn": _build(root, "dyn", dyn, DYNAMIC_PROFILE + "build: {compute_capabilities: ['8.6', '12.0']}\n"),
        "mixed": _build(root, "mixed", mixed, "inputs: {x: {format: hwc8}}\n"),
    }


# -- builds -------------------------------------------------------------------------------------------

def test_rtx_builds_conv_bn_relu_plan_with_engine_report(built: dict[str, Built]) -> None:
    import tensorrt_rtx

    b = built["cbr"]
    plan_file = b.out / "engine.plan"
    assert b.info.engine_file == "engine.plan" and plan_file.is_file()
    assert plan_file.stat().st_size > 50_000  # kernels for several GPU generations
    d = b.info.details
    assert (b.info.backend, b.info.library_version) == ("tensorrt_rtx", tensorrt_rtx.__version__)
    assert d["plan_bytes"] == plan_file.stat().st_size
    assert d["plan_header"]["version"] == tensorrt_rtx.__version__
    assert d["plan_header"]["recorded_size"] == plan_file.stat().st_size
    # The builder's DETAILED engine report is the I/O source here (no GPU to deserialize on).
    assert d["io_source"] == "build_log"
    assert b.io["x"] | {"format_desc": None} == {"name": "x", "mode": "input", "dtype": "float32",
                                                  "shape": [1, 3, 16, 16], "format": "linear", "format_desc": None}
    assert (b.io["y"]["mode"], b.io["y"]["dtype"], b.io["y"]["shape"]) == ("output", "float32", [1, 8, 16, 16])
    assert d["layers"]["network"] == 3 and d["layers"]["engine"] >= 1
    assert d["tf32"] is False and d["strongly_typed"] and d["profiling_verbosity"] == "DETAILED"
    assert d["profiles"] == []
    assert d["build_seconds"] > 0 and b.info.seconds >= d["build_seconds"]


def test_rtx_timing_cache_is_skipped_with_a_warning(built: dict[str, Built]) -> None:
    b = built["cbr"]
    assert b.info.details["timing_cache"]["used"] is False
    assert any("timing_cache ignored" in w for w in b.info.details["warnings"])
    assert not (Path(b.plan.recipe_path).parent / "cache.bin").exists()


def test_rtx_dynamic_batch_gets_profile_and_compute_capabilities(built: dict[str, Built]) -> None:
    b = built["dyn"]
    d = b.info.details
    assert d["profiles"] == [{"name": "x", "min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}]
    assert b.io["x"]["shape"] == [-1, 3, 16, 16] and b.io["y"]["shape"] == [-1, 8, 16, 16]
    assert d["compute_capabilities"] == ["8.6", "12.0"]
    header = common.describe_plan_file(b.out / "engine.plan")
    assert header["compute_capabilities"] == ["8.6", "12.0"] and header["unknown_cc_bits"] == 0


def test_rtx_fp16_and_uint8_inputs_with_hwc8_format(built: dict[str, Built]) -> None:
    io = built["mixed"].io
    assert (io["x"]["dtype"], io["x"]["format"]) == ("float16", "hwc8")
    assert "kHWC8" in io["x"]["format_desc"]
    assert (io["m"]["dtype"], io["m"]["format"]) == ("uint8", "linear")
    assert (io["y"]["dtype"], io["y"]["format"]) == ("float32", "linear")


def test_rtx_progress_reports_build_phases(built: dict[str, Built]) -> None:
    events = built["cbr"].progress
    phases = {p for p, _, _ in events}
    assert "Building engine" in phases
    last = [e for e in events if e[0] == "Building engine"][-1]
    assert last[1] == last[2] > 0  # the outer phase finishes at step == total


def test_rtx_progress_callback_exception_cancels_build(tmp_path: Path) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    model = conv_bn_relu(tmp_path / "m.onnx")
    plan = plan_for(tmp_path, "m.onnx")

    def cancel(phase: str, step: int, total: int) -> None:
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TensorRTRTXBackend().build(model, plan, tmp_path, progress=cancel)
    assert not (tmp_path / "engine.plan").exists()


# -- build errors -------------------------------------------------------------------------------------

def test_rtx_unsupported_standard_op_names_op_and_onnxruntime(tmp_path: Path) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    model = unique_op(tmp_path / "u.onnx")
    with pytest.raises(BuildError) as exc:
        TensorRTRTXBackend().build(model, plan_for(tmp_path, "u.onnx"), tmp_path)
    text = str(exc.value)
    assert "op Unique" in text and "'uniq'" in text and "unsupported by TensorRT-RTX" in text
    assert "onnxruntime can run this model: backend: onnxruntime" in text


def test_rtx_custom_domain_op_says_no_backend_implements_it(tmp_path: Path) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    model = custom_op(tmp_path / "c.onnx")
    with pytest.raises(BuildError) as exc:
        TensorRTRTXBackend().build(model, plan_for(tmp_path, "c.onnx"), tmp_path)
    text = str(exc.value)
    assert "op FancyOp" in text and "'fancy'" in text and "com.example" in text
    assert "no trtflow backend implements it" in text


@pytest.mark.parametrize("body, words", [
    ("build: {version_compatible: true}\n", "version_compatible"),
    ("build: {hardware_compatibility: ampere_plus}\n", "hardware_compatibility"),
    ("build: {compute_capabilities: ['9.0']}\n", "'9.0' is not a TensorRT-RTX"),
])
def test_rtx_refuses_settings_it_cannot_honour(tmp_path: Path, body: str, words: str) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    model = conv_bn_relu(tmp_path / "m.onnx")
    with pytest.raises(BuildError, match=words):
        TensorRTRTXBackend().build(model, plan_for(tmp_path, "m.onnx", body), tmp_path)


def test_rtx_model_not_matching_plan_is_a_build_error(tmp_path: Path) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    conv_bn_relu(tmp_path / "m.onnx")
    plan = plan_for(tmp_path, "m.onnx")
    other = fp16_uint8_inputs(tmp_path / "other.onnx")
    with pytest.raises(BuildError, match="not the plan's"):
        TensorRTRTXBackend().build(other, plan, tmp_path)


# -- opening: checks before deserialization -----------------------------------------------------------

def _artifact_with(built: Built, tmp_path: Path, data: bytes) -> Path:
    art = tmp_path / "art"
    art.mkdir()
    (art / "engine.plan").write_bytes(data)
    return art


def _open(built: Built, art: Path) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    TensorRTRTXBackend().open(art, built.plan, device="cuda")


def test_rtx_open_rejects_truncated_plan_before_deserialization(built: dict[str, Built], tmp_path: Path) -> None:
    data = (built["cbr"].out / "engine.plan").read_bytes()
    art = _artifact_with(built["cbr"], tmp_path, data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        _open(built["cbr"], art)


def test_rtx_open_rejects_garbage_and_empty_files_before_deserialization(built: dict[str, Built],
                                                                          tmp_path: Path) -> None:
    art = _artifact_with(built["cbr"], tmp_path, b"\x08\x01" + bytes(500))  # e.g. an ONNX file renamed
    with pytest.raises(ArtifactError, match="is not a TensorRT-RTX plan"):
        _open(built["cbr"], art)
    (art / "engine.plan").write_bytes(b"")
    with pytest.raises(ArtifactError, match="too short"):
        _open(built["cbr"], art)


def test_rtx_open_rejects_plan_of_another_version_before_deserialization(built: dict[str, Built],
                                                                         tmp_path: Path) -> None:
    data = bytearray((built["cbr"].out / "engine.plan").read_bytes())
    data[25] += 1  # minor version byte
    art = _artifact_with(built["cbr"], tmp_path, bytes(data))
    with pytest.raises(ArtifactError, match="only loads in the version that built it") as exc:
        _open(built["cbr"], art)
    assert "trtflow build" in (exc.value.hint or "")


def test_rtx_open_rejects_full_tensorrt_plan_before_deserialization(built: dict[str, Built],
                                                                    tmp_path: Path) -> None:
    data = b"ftrt" + (built["cbr"].out / "engine.plan").read_bytes()[4:]
    art = _artifact_with(built["cbr"], tmp_path, data)
    with pytest.raises(ArtifactError, match="built by TensorRT, but is being opened with TensorRT-RTX"):
        _open(built["cbr"], art)


def test_rtx_header_check_refuses_gpu_not_in_plan_targets(built: dict[str, Built]) -> None:
    import tensorrt_rtx

    from trtflow.backends.tensorrt_rtx import FLAVOR

    path = built["dyn"].out / "engine.plan"  # targets 8.6 and 12.0 only
    data = path.read_bytes()
    kw = {"path": path, "version_compatible": False}
    with pytest.raises(ArtifactError, match="this GPU is 8.9") as exc:
        common.check_plan_header(FLAVOR, data, tensorrt_rtx.__version__, device_cc=(8, 9), **kw)
    assert "add '8.9' to build.compute_capabilities" in (exc.value.hint or "")
    assert common.check_plan_header(FLAVOR, data, tensorrt_rtx.__version__, device_cc=(12, 0), **kw).version


def test_rtx_plan_header_fields_read_from_real_plan(built: dict[str, Built]) -> None:
    data = (built["cbr"].out / "engine.plan").read_bytes()
    h = common.read_plan_header(data)
    assert h.library == "tensorrt_rtx" and h.magic == b"vtrt"
    assert h.recorded_size == len(data) == struct.unpack_from("<Q", data, 16)[0]
    assert set(h.compute_capabilities or ()) >= {"8.0", "8.6", "8.9", "12.0"}  # the builder's default targets


def test_rtx_open_on_cpu_device_is_refused(built: dict[str, Built]) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    with pytest.raises(BackendMissing, match="run on a CUDA GPU"):
        TensorRTRTXBackend().open(built["cbr"].out, built["cbr"].plan, device="cpu")


@pytest.mark.skipif(common.device_compute_capability() is not None, reason="a CUDA GPU is visible here")
def test_rtx_open_intact_plan_without_gpu_fails_at_deserialization_with_artifact_error(
        built: dict[str, Built]) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    assert not TensorRTRTXBackend.can_execute_here()
    with pytest.raises(ArtifactError, match="could not deserialize") as exc:
        TensorRTRTXBackend().open(built["cbr"].out, built["cbr"].plan, device="cuda")
    assert "CUDA" in str(exc.value)  # the runtime's own reason is passed on


def test_rtx_builds_model_with_external_weights(tmp_path: Path) -> None:
    import onnx

    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    model = onnx.load(str(conv_bn_relu(tmp_path / "src.onnx")))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    assert (tmp_path / "ext.weights").stat().st_size > 800
    info = TensorRTRTXBackend().build(tmp_path / "ext.onnx", plan_for(tmp_path, "ext.onnx"), tmp_path)
    assert (tmp_path / "engine.plan").stat().st_size == info.details["plan_bytes"] > 50_000


def test_rtx_model_shape_outside_plan_is_a_build_error(tmp_path: Path) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    conv_bn_relu(tmp_path / "dyn.onnx", batch="N")
    plan = plan_for(tmp_path, "dyn.onnx", "inputs: {x: {shape: [2, 3, 16, 16]}}\n")
    static = conv_bn_relu(tmp_path / "b1.onnx")  # batch fixed to 1 in the graph
    with pytest.raises(BuildError, match=r"input 'x' with shape \[1, 3, 16, 16\]"):
        TensorRTRTXBackend().build(static, plan, tmp_path)
