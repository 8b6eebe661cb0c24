"""TensorRT-RTX backend: real builds of small real models on this machine (the builder needs no GPU).

The RTX runtime cannot deserialize without a GPU of compute capability 7.5-8.9 or 12.0/12.1, so on this
machine opening tests only the checks that run before deserialization, plus the error deserialization
gives without a GPU. Plans are built once per module.
"""

from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.models import (
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
    path = built["dyn"].out / "engine.plan"  # targets 8.6 and 12.0 only
    header = common.read_plan_header(path.read_bytes())
    with pytest.raises(ArtifactError, match="this GPU is 8.9") as exc:
        common.check_plan_targets(header, (8, 9), None, path=path)
    assert "add '8.9' to build.compute_capabilities" in (exc.value.hint or "")
    common.check_plan_targets(header, (12, 0), None, path=path)
    # documented: explicit targets are the only ones; a 12.0-only plan is not for a 12.1 GPU ...
    with pytest.raises(ArtifactError, match="this GPU is 12.1"):
        common.check_plan_targets(header, (12, 1), None, path=path)
    # ... unless the library itself (get_engine_validity, on the GPU) says it runs there
    common.check_plan_targets(header, (12, 1), ("VALID", []), path=path)
    with pytest.raises(ArtifactError, match="this GPU is 12.1"):
        common.check_plan_targets(header, (12, 1), ("INVALID", ["UNSUPPORTED_CC"]), path=path)


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


# -- compute capabilities (issue #11 item 3) -----------------------------------------------------------

def test_rtx_runs_on_lists_the_installed_modules_targets() -> None:
    """runs_on is the ComputeCapability enum of the installed TensorRT-RTX (7.5 and 8.0 included)."""
    import tensorrt_rtx

    from trtflow.backends.tensorrt_rtx import FLAVOR

    members = [m for m in tensorrt_rtx.ComputeCapability.__members__ if m.startswith("SM")]
    assert list(FLAVOR.runs_on) == [f"{m[2:-1]}.{m[-1]}" for m in members]
    assert FLAVOR.can_run_on((7, 5)) and FLAVOR.can_run_on((12, 1)) and not FLAVOR.can_run_on((9, 0))
    assert not FLAVOR.can_run_on((12, 2))  # no family wildcard: a future 12.x needs a TensorRT-RTX that names it


def test_rtx_plan_header_records_the_requested_targets(tmp_path: Path) -> None:
    model = conv_bn_relu(tmp_path / "m.onnx")
    b = _build(tmp_path, "t", model, "build: {compute_capabilities: ['7.5', '12.1']}\n")
    header = common.read_plan_header((b.out / "engine.plan").read_bytes())
    assert header.compute_capabilities == ("7.5", "12.1") and not header.unknown_cc_bits
    assert b.info.details["compute_capabilities"] == ["7.5", "12.1"]


def test_rtx_default_targets_leave_out_turing_and_defer_to_the_library(built: dict[str, Built]) -> None:
    """Default plans: 8.0, 8.6, 8.9, 12.0 and 12.1 (the docs: "8.0, 8.6, 8.9, 12.0, and later"), not 7.5
    (Turing must be asked for), plus one header bit this module cannot name: the pre-deserialization
    check then leaves the verdict to TensorRT-RTX instead of guessing."""
    path = built["cbr"].out / "engine.plan"
    header = common.read_plan_header(path.read_bytes())
    assert set(header.compute_capabilities or ()) == {"8.0", "8.6", "8.9", "12.0", "12.1"}
    assert header.unknown_cc_bits
    common.check_plan_targets(header, (7, 5), None, path=path)  # no refusal from the header alone


# -- CUDA graphs need user allocation (item 5) ----------------------------------------------------------

def test_rtx_cuda_graph_recipe_builds_with_require_user_allocation(tmp_path: Path) -> None:
    import tensorrt_rtx

    assert hasattr(tensorrt_rtx.BuilderFlag, "REQUIRE_USER_ALLOCATION")
    model = conv_bn_relu(tmp_path / "m.onnx")
    target = "build: {compute_capabilities: ['8.6']}\n"
    plain = _build(tmp_path, "plain", model, target)
    again = _build(tmp_path, "again", model, target)
    graph = _build(tmp_path, "graph", model, target + "streams: {cuda_graph: true}\n")
    assert graph.info.details["require_user_allocation"] is True
    assert plain.info.details["require_user_allocation"] is False
    data = {k: (v.out / "engine.plan").read_bytes() for k, v in (("plain", plain), ("again", again), ("graph", graph))}
    assert data["plain"] == data["again"]  # builds are deterministic here ...
    assert data["graph"] != data["plain"] and len(data["graph"]) == len(data["plain"])  # ... the flag is in the plan


# -- shape-tensor inputs (item 7) ------------------------------------------------------------------------

def _reshape_by_input(path: Path) -> Path:
    """y = Reshape(x, shape) where ``shape`` (int64[2]) is a graph input: a shape tensor."""
    from helpers.models import _save
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "reshape_input",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
                           helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 4])])
    return _save(g, path)


def test_rtx_shape_tensor_input_builds_with_its_value_profile(tmp_path: Path) -> None:
    model = _reshape_by_input(tmp_path / "r.onnx")
    b = _build(tmp_path, "r", model, "build: {shape_inputs: {shape: {min: [6, 4], opt: [6, 4], max: [6, 4]}}}\n")
    assert b.info.details["profiles"] == [{"name": "shape", "values": {"min": [6, 4], "opt": [6, 4], "max": [6, 4]}}]
    assert b.io["shape"]["dtype"] == "int64" and b.io["y"]["shape"] == [6, 4]  # one value set: fixed
    assert not [w for w in b.info.details["warnings"] if "self-consistent" in w]


def test_rtx_shape_tensor_without_values_names_the_recipe_fix(tmp_path: Path) -> None:
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    model = _reshape_by_input(tmp_path / "r.onnx")
    with pytest.raises(BuildError, match="input 'shape' is a shape tensor") as exc:
        TensorRTRTXBackend().build(model, plan_for(tmp_path, "r.onnx"), tmp_path)
    hint = exc.value.hint or ""
    assert "build: {shape_inputs: {shape: {min: [1, 1], opt: [1, 1], max: [1, 1]}}}" in hint
    assert "workspace" not in hint and "optimization_level" not in hint
    with pytest.raises(BuildError, match=r"build.shape_inputs names \['x'\]"):
        TensorRTRTXBackend().build(model, plan_for(tmp_path, "r.onnx", "build: {shape_inputs: {x: {min: [1], opt: [1], "
                                                   "max: [1]}, shape: {min: [6, 4], opt: [6, 4], max: [6, 4]}}}\n"),
                                   tmp_path)
    with pytest.raises(BuildError, match="min has 1 values; the shape tensor 'shape' holds 2"):
        TensorRTRTXBackend().build(model, plan_for(tmp_path, "r.onnx", "build: {shape_inputs: {shape: {min: [6], "
                                                   "opt: [6], max: [6]}}}\n"), tmp_path)


def test_rtx_profile_failure_gets_a_profile_hint_not_a_workspace_hint(tmp_path: Path) -> None:
    """A shape-tensor value range the model cannot take: the builder fails, and the hint points at the
    profile (the old hint blamed workspace and optimization level)."""
    from trtflow.backends.tensorrt_rtx import TensorRTRTXBackend

    model = _reshape_by_input(tmp_path / "r.onnx")
    plan = plan_for(tmp_path, "r.onnx", "build: {shape_inputs: {shape: {min: [1, 1], opt: [5, 5], max: [9, 9]}}}\n")
    with pytest.raises(BuildError, match="violate shape constraints") as exc:  # 5x5 is not 24 elements
        TensorRTRTXBackend().build(model, plan, tmp_path)
    assert "optimization profile does not fit" in (exc.value.hint or "") and "workspace" not in (exc.value.hint or "")


def test_build_failure_hints_match_the_builder_message() -> None:
    h = common._build_failure_hint
    assert "workspace_mib" in h(["Error Code 2: OutOfMemory (Requested size was 123 bytes.)"], graphs=False)
    assert "profile" in h(["Network has dynamic or shape inputs, but no optimization profile has been defined."],
                          graphs=False)
    assert "cuda_graph: false" in h(["... requires runtime allocation ..."], graphs=True)
    assert "workspace" not in h(["Some other internal error"], graphs=False)
