"""Code shared by the full TensorRT and the TensorRT-RTX backends, parameterized by the imported module.

Both libraries expose the same Builder/Network/OnnxParser/BuilderConfig/Runtime/ExecutionContext API
(``tensorrt`` and ``tensorrt_rtx``); what differs between them is written down once in a :class:`Flavor`.
Every function here takes the imported module as ``trt``; only this module and the two thin backend
modules touch a TensorRT library, and all of them import it lazily.

Enum values are always looked up by name on the module (``trt.TensorFormat.HWC8``): their integers moved
between TensorRT 10 and 11 and differ in TensorRT-RTX, so no raw enum integer is ever persisted.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trtflow.backends.base import CudaEngine, Progress
from trtflow.errors import ArtifactError, BackendMissing, BuildError, CudaError, InputError, TrtflowError
from trtflow.plan.model import BuildInfo, Plan

if TYPE_CHECKING:
    import tensorrt

ENGINE_FILE = "engine.plan"


class TrtModule(Protocol):
    """The part of ``tensorrt`` / ``tensorrt_rtx`` this module uses.

    Type-checking only: ``tensorrt.py`` passes the real ``tensorrt`` module, so mypy checks these names
    and every call made through them against the tensorrt stubs. ``tensorrt_rtx`` has no stubs.
    """

    Builder: type[tensorrt.Builder]
    BuilderFlag: type[tensorrt.BuilderFlag]
    DataType: type[tensorrt.DataType]
    Dims: type[tensorrt.Dims]
    ExecutionContextAllocationStrategy: type[tensorrt.ExecutionContextAllocationStrategy]
    HardwareCompatibilityLevel: type[tensorrt.HardwareCompatibilityLevel]
    ILogger: type[tensorrt.ILogger]
    IProgressMonitor: type[tensorrt.IProgressMonitor]
    LayerInformationFormat: type[tensorrt.LayerInformationFormat]
    MemoryPoolType: type[tensorrt.MemoryPoolType]
    NetworkDefinitionCreationFlag: type[tensorrt.NetworkDefinitionCreationFlag]
    OnnxParser: type[tensorrt.OnnxParser]
    ProfilingVerbosity: type[tensorrt.ProfilingVerbosity]
    Runtime: type[tensorrt.Runtime]
    TensorFormat: type[tensorrt.TensorFormat]
    TensorIOMode: type[tensorrt.TensorIOMode]


@dataclass(frozen=True)
class Flavor:
    """What differs between full TensorRT and TensorRT-RTX (the API is otherwise the same)."""

    backend: str                    # registry name
    title: str                      # for messages
    timing_cache: bool              # RTX 1.2+: timing cache calls are deprecated no-ops
    hardware_compatibility: bool    # RTX: "setHardwareCompatibilityLevel() is unsupported"
    version_compatible: bool        # RTX: the flag needs libnvinfer_lean, which RTX does not ship
    compute_capabilities: bool      # RTX: IBuilderConfig.set_compute_capability / num_compute_capabilities
    header_checked: bool            # plan-header layout verified against real plans of this library
    runs_on: tuple[str, ...] = ()   # compute capabilities the runtime accepts ("8.6", or "12" for 12.x); () = any

    def can_run_on(self, cc: tuple[int, int]) -> bool:
        return not self.runs_on or f"{cc[0]}.{cc[1]}" in self.runs_on or str(cc[0]) in self.runs_on


# -- logging ------------------------------------------------------------------------------------------
# Every message is also handed to Python logging, so `trtflow -v` (INFO and up) and `-vv` (VERBOSE too)
# stream the builder's log as it runs; without a handler (the default) nothing is printed.
_LOG = logging.getLogger("trtflow.builder")
_LEVELS = {"INTERNAL_ERROR": logging.CRITICAL, "ERROR": logging.ERROR, "WARNING": logging.WARNING,
           "INFO": logging.INFO, "VERBOSE": logging.DEBUG}


@dataclass
class LogSink:
    """Messages a TensorRT logger received: INFO and above, and of VERBOSE only the engine report."""

    records: list[tuple[str, str]] = field(default_factory=list)
    engine_report: str | None = None   # the builder's "Layers: ... I/O Tensors: ..." message (DETAILED)
    layer_lines: list[str] = field(default_factory=list)  # "Layer(Type): ..." lines (LAYER_NAMES_ONLY)
    limit: int = 5000

    def add(self, severity: str, message: str) -> None:
        _LOG.log(_LEVELS.get(severity, logging.INFO), "%s", message)
        if len(self.records) < self.limit:
            self.records.append((severity, message))

    def add_verbose(self, message: str) -> None:
        _LOG.debug("%s", message)
        # The builder describes the finished engine in one VERBOSE message: with DETAILED profiling
        # "Layers:\nName: ...\n\nI/O Tensors:\n Name: x, IOMode: Input, ...", else
        # "Engine Layer Information:\nLayer(Type): ...". That is the engine's own account of its layers
        # and I/O formats, available where the plan cannot be deserialized (no GPU).
        if message.startswith("Layers:") and "I/O Tensors:" in message:
            self.engine_report = message
        elif "Layer(" in message:
            lines = [ln for ln in message.splitlines() if ln.startswith("Layer(")]
            self.layer_lines.extend(lines[: max(0, self.limit - len(self.layer_lines))])

    def errors(self) -> list[str]:
        return [m for s, m in self.records if s in ("INTERNAL_ERROR", "ERROR")]

    def warnings(self) -> list[str]:
        return [m for s, m in self.records if s == "WARNING"]

    def clear(self) -> None:
        self.records.clear()


def make_logger(trt: TrtModule) -> tuple[Any, LogSink]:
    """A ``trt.ILogger`` that collects into a :class:`LogSink` (returned alongside)."""
    base: Any = trt.ILogger
    sink = LogSink()

    class CollectingLogger(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            if name == "VERBOSE":
                sink.add_verbose(msg)
                return
            sink.add(name, msg)

    return CollectingLogger(), sink


# DataType spelling in the builder's engine report -> plan dtype name
_REPORT_DTYPES = {"Float": "float32", "Half": "float16", "BFloat16": "bfloat16", "BF16": "bfloat16",
                  "Int8": "int8", "UInt8": "uint8", "Int32": "int32", "Int64": "int64", "Bool": "bool"}
_REPORT_IO = re.compile(r"^\s*Name: (?P<name>.+?), IOMode: (?P<mode>\w+), DataType: (?P<dtype>\w+), "
                        r"Dimensions: \[(?P<dims>[-\d,\s]*)\]")
_REPORT_FORMAT = re.compile(r"Format: (?P<desc>[^}]*?\(k(?P<fmt>\w+)\)[^}]*?)\s*\}")


def parse_engine_report(report: str) -> tuple[int, list[dict[str, Any]]]:
    """(engine layer count, I/O tensors) from the builder's DETAILED engine report; ([], 0) if unreadable."""
    layers_part, _, rest = report.partition("I/O Tensors:")
    n_layers = sum(1 for ln in layers_part.splitlines() if ln.startswith("Name: "))
    io: list[dict[str, Any]] = []
    for line in rest.splitlines():
        m = _REPORT_IO.match(line)
        if not m:
            continue
        fmts = _REPORT_FORMAT.findall(line)
        io.append({
            "name": m["name"], "mode": m["mode"].lower(),
            "dtype": _REPORT_DTYPES.get(m["dtype"], m["dtype"].lower()),
            "shape": [int(d) for d in m["dims"].replace(" ", "").split(",") if d],
            "format": fmts[0][1].lower() if fmts else None,
            "format_desc": fmts[0][0].strip() if fmts else None,
        })
    return n_layers, io


def make_progress_monitor(trt: TrtModule, progress: Progress) -> Any:
    """A ``trt.IProgressMonitor`` calling ``progress(phase, step, total)``.

    An exception raised by ``progress`` cancels the build (step_complete returns False) and is re-raised
    by :func:`build` afterwards, so a caller can abort a long build from its callback.
    """
    base: Any = trt.IProgressMonitor

    class Monitor(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)
            self.totals: dict[str, int] = {}
            self.error: BaseException | None = None

        def _call(self, phase: str, step: int, total: int) -> bool:
            if self.error is not None:
                return False
            try:
                progress(phase, step, total)
            except BaseException as exc:  # noqa: BLE001 - handed back to the builder's caller
                self.error = exc
                return False
            return True

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.totals[phase_name] = int(num_steps)
            self._call(phase_name, 0, int(num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            return self._call(phase_name, int(step) + 1, self.totals.get(phase_name, 0))

        def phase_finish(self, phase_name: str) -> None:
            total = self.totals.pop(phase_name, 0)
            self._call(phase_name, total, total)

    return Monitor()


# -- names <-> enums ----------------------------------------------------------------------------------

# trt.DataType member name -> numpy-style dtype name used by the plan
DTYPE_NAMES: dict[str, str] = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn", "INT4": "int4",
    "FP4": "float4_e2m1", "E8M0": "float8_e8m0",
}


def version(trt: TrtModule) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def dims(d: tensorrt.Dims) -> list[int]:
    """A ``trt.Dims`` as a list (-1 marks a dynamic dimension)."""
    return [int(d[i]) for i in range(len(d))]


def dtype_name(dt: Any) -> str:
    name = str(getattr(dt, "name", dt))
    return DTYPE_NAMES.get(name, name.lower())


def tensor_format(trt: TrtModule, fmt: str) -> tensorrt.TensorFormat:
    """The ``trt.TensorFormat`` member for a plan format name (``hwc8`` -> ``TensorFormat.HWC8``)."""
    member = getattr(trt.TensorFormat, fmt.upper(), None)
    if member is None:
        known = ", ".join(n.lower() for n in trt.TensorFormat.__members__)
        raise BuildError(f"TensorRT {version(trt)} has no I/O format {fmt!r}", hint=f"one of: {known}")
    return member  # type: ignore[no-any-return]


def format_names(trt: TrtModule, mask: int) -> list[str]:
    """Names of the formats set in an ``allowed_formats`` bitmask."""
    return [n.lower() for n, m in trt.TensorFormat.__members__.items() if mask >> int(m) & 1]


def _cc_name(cc: str) -> str:
    """'8.6' -> 'SM86' (the ComputeCapability member name in TensorRT-RTX)."""
    major, _, minor = cc.strip().partition(".")
    return f"SM{major}{minor or '0'}"


# -- plan header ----------------------------------------------------------------------------------------

# First four bytes of a serialized plan. "vtrt" checked on TensorRT-RTX 1.7.1 plans built here; "ftrt"
# is what full TensorRT 8.6-10.x plans start with (checked by several projects, e.g. torch-tensorrt).
PLAN_MAGIC: dict[bytes, str] = {b"ftrt": "tensorrt", b"vtrt": "tensorrt_rtx"}
PLAN_TITLE = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}
HEADER_BYTES = 64
# TensorRT-RTX 1.7 header, read off real plans (one build per target): bit i of the u32 at offset 32
# is one compute capability. Bits not listed here are reported as unknown, never guessed.
RTX_CC_BITS: dict[int, str] = {0: "7.5", 1: "8.0", 2: "8.6", 3: "8.9", 4: "12.0", 5: "12.1"}


@dataclass(frozen=True)
class PlanHeader:
    library: str | None                     # backend name from the magic, None if unknown
    magic: bytes
    version: tuple[int, int, int, int] | None   # bytes 24..27: major, minor, patch, build
    recorded_size: int | None               # TensorRT-RTX: u64 at offset 16 = total plan bytes
    compute_capabilities: tuple[str, ...] | None   # TensorRT-RTX: targets in the plan
    unknown_cc_bits: int = 0

    @property
    def version_str(self) -> str | None:
        return ".".join(map(str, self.version)) if self.version else None

    def to_dict(self) -> dict[str, Any]:
        return {"library": self.library, "magic": self.magic.decode("latin-1"), "version": self.version_str,
                "recorded_size": self.recorded_size,
                "compute_capabilities": list(self.compute_capabilities) if self.compute_capabilities else None,
                "unknown_cc_bits": self.unknown_cc_bits}


def read_plan_header(data: bytes) -> PlanHeader:
    """Decode what is known of a plan's first 64 bytes. Pure Python: works without any TensorRT.

    The layout is not a documented API. Byte 24..26 = major.minor.patch is what NVIDIA told users in
    NVIDIA/TensorRT#3073 for full TensorRT; for TensorRT-RTX 1.7.1 every field used here was checked
    against plans built with different settings.
    """
    head = bytes(data[:HEADER_BYTES])
    magic = head[:4]
    library = PLAN_MAGIC.get(magic)
    version = tuple(head[24:28]) if library and len(head) >= 28 else None
    size = cc = None
    unknown = 0
    if library == "tensorrt_rtx" and len(head) >= 36:
        size = struct.unpack_from("<Q", head, 16)[0]
        mask = struct.unpack_from("<I", head, 32)[0]
        cc = tuple(v for b, v in sorted(RTX_CC_BITS.items()) if mask >> b & 1)
        unknown = mask & ~sum(1 << b for b in RTX_CC_BITS)
    return PlanHeader(library, magic, version, size, cc, unknown)  # type: ignore[arg-type]


def check_plan_header(flavor: Flavor, data: bytes, library_version: str, *, path: Path,
                      version_compatible: bool, device_cc: tuple[int, int] | None) -> PlanHeader:
    """Refuse, before deserialization, a plan that is truncated, foreign, or from another version/GPU."""
    rebuild = "rebuild the artifact on this machine: trtflow build <recipe> --force"
    if len(data) < HEADER_BYTES:
        raise ArtifactError(f"{path}: {len(data)} bytes is too short for a {flavor.title} plan (empty or truncated)",
                            hint=rebuild)
    header = read_plan_header(data)
    if header.library is not None and header.library != flavor.backend:
        other = PLAN_TITLE[header.library]
        raise ArtifactError(f"{path} was built by {other}, but is being opened with {flavor.title}",
                            hint=f"open it with backend {header.library}, or {rebuild} --backend {flavor.backend}")
    if header.library is None:
        if flavor.header_checked:
            raise ArtifactError(f"{path} is not a {flavor.title} plan (starts with {header.magic!r})", hint=rebuild)
        return header  # layout not checked for this library: deserialization decides
    mine = tuple(int(p) for p in library_version.split(".")[:3])
    if header.version is not None and header.version[:3] != mine and not version_compatible:
        raise ArtifactError(f"{path} was built by {flavor.title} {header.version_str}; this is {library_version}, "
                            "and a plan only loads in the version that built it",
                            hint=f"{rebuild} (or build with `version_compatible: true` on full TensorRT)")
    if header.recorded_size is not None and header.recorded_size != len(data):
        raise ArtifactError(f"{path} is {len(data)} bytes but its header says {header.recorded_size}: "
                            "the plan is truncated or corrupt", hint=rebuild)
    if device_cc is not None and header.compute_capabilities is not None and not header.unknown_cc_bits:
        here = f"{device_cc[0]}.{device_cc[1]}"
        if here not in header.compute_capabilities:
            raise ArtifactError(f"{path} holds kernels for compute capability {', '.join(header.compute_capabilities)}; "
                                f"this GPU is {here}",
                                hint=f"add '{here}' to build.compute_capabilities and rebuild")
    return header


def describe_plan_file(path: Path) -> dict[str, Any]:
    """Header facts of a plan file for ``trtflow inspect`` (no TensorRT import, no GPU)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    d = read_plan_header(head).to_dict()
    d["bytes"] = path.stat().st_size
    return d


# -- device ---------------------------------------------------------------------------------------------

def device_compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the current CUDA device; None without cuda-bindings or without a GPU."""
    from trtflow.runtime import cuda  # the module that owns CUDA calls; imports cuda-bindings lazily

    if not cuda.cuda_available():
        return None
    try:
        return cuda.device_properties().compute_capability
    except TrtflowError:  # CudaError / BackendMissing: answer like "no usable GPU"
        return None


# -- build ------------------------------------------------------------------------------------------

def _check_settings(flavor: Flavor, build: dict[str, Any]) -> list[str]:
    """Refuse settings this library cannot honour where they promise something; list ignored ones."""
    ignored: list[str] = []
    hint_rtx = "TensorRT-RTX plans are portable through build.compute_capabilities"
    if build.get("hardware_compatibility", "none") != "none" and not flavor.hardware_compatibility:
        raise BuildError(f"build.hardware_compatibility={build['hardware_compatibility']} is not supported by "
                         f"{flavor.title}", hint=f"remove it; {hint_rtx}")
    if build.get("version_compatible") and not flavor.version_compatible:
        raise BuildError(f"build.version_compatible is not supported by {flavor.title} "
                         "(version-compatible plans embed the lean runtime, which it does not ship)",
                         hint="remove it, or build with backend tensorrt")
    if build.get("compute_capabilities") and not flavor.compute_capabilities:
        raise BuildError(f"build.compute_capabilities applies to TensorRT-RTX; {flavor.title} builds for the GPU "
                         "it runs on", hint="use `hardware_compatibility: ampere_plus` for a plan that runs on "
                         "Ampere and newer, or backend tensorrt_rtx")
    if build.get("timing_cache") and not flavor.timing_cache:
        ignored.append(f"build.timing_cache ignored: timing cache operations are no-ops in {flavor.title} "
                       "(deprecated since 1.2)")
    return ignored


def _parse_error_message(flavor: Flavor, parser: tensorrt.OnnxParser, onnx_path: Path) -> BuildError:
    """One BuildError naming every failing node and op, and which backends can run the model."""
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    lines: list[str] = []
    ops: list[str] = []
    for e in errors:
        op, node_name, node = e.node_operator(), e.node_name(), e.node()
        where = f"node #{node} {node_name!r}" if node >= 0 else "the graph"
        code = getattr(e.code(), "name", str(e.code()))
        lines.append(f"op {op or '?'} ({where}) unsupported by {flavor.title}: {code}: {e.desc().strip()} "
                     f"[{e.file()}:{e.line()} {e.func()}]")
        if op:
            ops.append(op)
    if not lines:
        lines.append(f"{flavor.title} could not parse the model (no parser error recorded)")
    domains = _op_domains(onnx_path)
    custom = sorted({op for op in ops if not _standard_op(op, domains.get(op, ""))})
    if custom:
        hint = (f"{', '.join(custom)} {'is a custom op' if len(custom) == 1 else 'are custom ops'} "
                f"(domain {', '.join(sorted({domains.get(o, '?') for o in custom}))}): no trtflow backend "
                "implements it; register a TensorRT plugin or replace the op in the model")
    elif not ops:
        hint = "check the model: python -c \"import onnx; onnx.checker.check_model('model.onnx', full_check=True)\""
    else:
        hint = ("onnxruntime can run this model: backend: onnxruntime "
                "(set `build: {backend: onnxruntime}` in the recipe, or pass --backend onnxruntime)")
    head = f"{flavor.title} cannot build {onnx_path.name}: " + (
        f"op {', '.join(dict.fromkeys(ops))} unsupported" if ops else "parse failed")
    return BuildError(head + "\n  " + "\n  ".join(lines), hint=hint)


def _op_domains(onnx_path: Path) -> dict[str, str]:
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - only used to word an error message
        return {}
    return {n.op_type: n.domain for n in model.graph.node}


def _standard_op(op: str, domain: str) -> bool:
    """Whether onnxruntime's CPU provider implements ``op`` (every standard op and its contrib ops)."""
    if domain == "com.microsoft":
        return True
    if domain not in ("", "ai.onnx"):
        return False
    import onnx.defs

    return bool(onnx.defs.has(op))


def _check_network_io(flavor: Flavor, network: tensorrt.INetworkDefinition, plan: Plan
                      ) -> dict[str, tensorrt.ITensor]:
    """The lowered model's I/O must be the plan's (names and dtypes); map name -> network tensor."""
    tensors: dict[str, tensorrt.ITensor] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        tensors[t.name] = t
    for i in range(network.num_outputs):
        t = network.get_output(i)
        tensors[t.name] = t
    planned = {t.name for t in plan.tensors}
    if set(tensors) != planned:
        raise BuildError(f"the lowered model's I/O {sorted(tensors)} is not the plan's {sorted(planned)}",
                         hint="the graph passes must produce a model whose inputs/outputs equal the plan's tensors")
    for tp in plan.tensors:
        got = dtype_name(tensors[tp.name].dtype)
        if got != tp.dtype:
            raise BuildError(f"{flavor.title} parsed {tp.role} {tp.name!r} as {got}, the plan says {tp.dtype}",
                             hint="the lowered model must carry the plan's boundary dtypes (Cast nodes at the I/O)")
    for tp in plan.inputs:
        shape = dims(tensors[tp.name].shape)
        fixed = [lo if lo == hi else -1 for lo, hi in zip(tp.min_shape, tp.max_shape)]
        if len(shape) != len(fixed) or any(d != -1 and d != f for d, f in zip(shape, fixed)):
            raise BuildError(f"{flavor.title} parsed input {tp.name!r} with shape {shape}; the plan's range is "
                             f"{list(tp.min_shape)}..{list(tp.max_shape)}",
                             hint="the lowered model must have static dims where the plan does (-1 elsewhere)")
    return tensors


def _timing_cache(trt: TrtModule, config: tensorrt.IBuilderConfig, path: Path | None
                  ) -> tuple[tensorrt.ITimingCache, dict[str, Any]]:
    loaded = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(loaded)
    info: dict[str, Any] = {"path": str(path) if path else None, "loaded_bytes": len(loaded)}
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # Made on another GPU or TensorRT version: start from an empty one rather than mix.
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        info["mismatch"] = True
    info["entries_loaded"] = _cache_entries(cache)
    return cache, info


def _cache_entries(cache: tensorrt.ITimingCache) -> int | None:
    keys = getattr(cache, "queryKeys", None)  # TensorRT 10.x; absent elsewhere
    return len(keys()) if keys is not None else None


def _atomic_write_bytes(path: Path, data: memoryview | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _network_io(trt: TrtModule, tensors: dict[str, tensorrt.ITensor], plan: Plan) -> list[dict[str, Any]]:
    out = []
    for tp in plan.tensors:
        t = tensors[tp.name]
        out.append({"name": tp.name, "mode": tp.role, "dtype": dtype_name(t.dtype), "shape": dims(t.shape),
                    "allowed_formats": format_names(trt, int(t.allowed_formats))})
    return out


def engine_io(trt: TrtModule, engine: tensorrt.ICudaEngine) -> list[dict[str, Any]]:
    """Every I/O tensor as the engine reports it (the runner must follow these, not assumptions)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        d: dict[str, Any] = {
            "name": name,
            "mode": "input" if mode == trt.TensorIOMode.INPUT else "output",
            "dtype": dtype_name(engine.get_tensor_dtype(name)),
            "format": engine.get_tensor_format(name).name.lower(),
            "format_desc": engine.get_tensor_format_desc(name),
            "shape": dims(engine.get_tensor_shape(name)),
            "vectorized_dim": engine.get_tensor_vectorized_dim(name),
            "components_per_element": engine.get_tensor_components_per_element(name),
            "bytes_per_component": engine.get_tensor_bytes_per_component(name),
        }
        if d["mode"] == "input" and -1 in d["shape"]:
            lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
            d["profile"] = {"min": dims(lo), "opt": dims(opt), "max": dims(hi)}
        out.append(d)
    return out


def _try_engine_details(trt: TrtModule, flavor: Flavor, plan_bytes: memoryview) -> dict[str, Any] | None:
    """Deserialize the fresh plan for the engine's own I/O report, where a usable GPU is visible."""
    cc = device_compute_capability()
    if cc is None or not flavor.can_run_on(cc):
        return None
    logger, _ = make_logger(trt)
    runtime = trt.Runtime(logger)
    runtime.engine_host_code_allowed = True  # our own plan, just built
    engine = runtime.deserialize_cuda_engine(plan_bytes)
    if engine is None:
        return None
    return {"io": engine_io(trt, engine), "layers": engine.num_layers,
            "device_memory_bytes": _device_memory_size(engine)}


def _set_compute_capabilities(trt: Any, config: Any, ccs: Sequence[str]) -> list[str]:
    """TensorRT-RTX targets. ``trt`` is untyped: ComputeCapability exists only in TensorRT-RTX."""
    members = trt.ComputeCapability.__members__
    targets = []
    for cc in ccs:
        name = _cc_name(cc)
        if name not in members or name in ("NONE", "CURRENT"):
            known = sorted(f"{m[2:-1]}.{m[-1]}" for m in members if m.startswith("SM"))
            raise BuildError(f"build.compute_capabilities: {cc!r} is not a TensorRT-RTX {version(trt)} target",
                             hint=f"one of: {', '.join(known)}")
        targets.append(members[name])
    config.num_compute_capabilities = len(targets)
    for i, target in enumerate(targets):
        if not config.set_compute_capability(target, i):
            raise BuildError(f"TensorRT-RTX refused compute capability {ccs[i]!r}")
    return [f"{t.name[2:-1]}.{t.name[-1]}" for t in targets]


def build(trt: TrtModule, flavor: Flavor, onnx_path: Path, plan: Plan, out_dir: Path, *,
          progress: Progress | None = None) -> BuildInfo:
    """Parse ``onnx_path``, configure from ``plan.build``, build, write ``out_dir/engine.plan``."""
    t0 = time.perf_counter()
    b = plan.build
    notes = _check_settings(flavor, b)
    logger, sink = make_logger(trt)
    builder = trt.Builder(logger)
    # Strong typing: precision comes from the graph. Required on TensorRT 10, ignored by 11, accepted by RTX.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from file: external weights resolve next to it
        raise _parse_error_message(flavor, parser, onnx_path)
    tensors = _check_network_io(flavor, network, plan)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(b["workspace_mib"]) << 20)
    config.builder_optimization_level = int(b["optimization_level"])
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None:  # on by default; a common cause of disagreement with onnxruntime
        if plan.tf32:
            config.set_flag(tf32_flag)
        else:
            config.clear_flag(tf32_flag)
    config.profiling_verbosity = (trt.ProfilingVerbosity.DETAILED if b.get("detailed_profiling", True)
                                  else trt.ProfilingVerbosity.LAYER_NAMES_ONLY)
    hw = b.get("hardware_compatibility", "none")
    if hw != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, hw.upper())
    if b.get("version_compatible"):
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    targets: list[str] | None = None
    if b.get("compute_capabilities"):
        targets = _set_compute_capabilities(trt, config, b["compute_capabilities"])

    cache_path: Path | None = None
    cache_info: dict[str, Any] = {"used": False}
    cache = None
    if flavor.timing_cache:
        if b.get("timing_cache"):
            cache_path = Path(plan.recipe_path).parent / b["timing_cache"]
        cache, cache_info = _timing_cache(trt, config, cache_path)
        cache_info["used"] = True

    profiles = []
    if any(-1 in dims(tensors[t.name].shape) for t in plan.inputs):
        profile = builder.create_optimization_profile()
        for t in plan.inputs:
            if -1 in dims(tensors[t.name].shape) or t.dynamic:
                profile.set_shape(t.name, trt.Dims(list(t.min_shape)), trt.Dims(list(t.shape)),
                                  trt.Dims(list(t.max_shape)))
                profiles.append({"name": t.name, "min": list(t.min_shape), "opt": list(t.shape),
                                 "max": list(t.max_shape)})
        config.add_optimization_profile(profile)
    for t in plan.tensors:
        tensors[t.name].allowed_formats = 1 << int(tensor_format(trt, t.format))

    monitor = make_progress_monitor(trt, progress) if progress is not None else None
    if monitor is not None:
        config.progress_monitor = monitor
    t_build = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - t_build
    if monitor is not None and monitor.error is not None:
        raise monitor.error
    if serialized is None:
        errs = sink.errors() or ["(the builder logged no error)"]
        raise BuildError(f"{flavor.title} failed to build {onnx_path.name}:\n  " + "\n  ".join(errs[-20:]),
                         hint="see the messages above; a smaller build.optimization_level or a larger "
                         "build.workspace_mib can help")
    plan_bytes = memoryview(serialized).cast("B")
    (out_dir / ENGINE_FILE).write_bytes(plan_bytes)

    if cache is not None:
        saved = memoryview(config.get_timing_cache().serialize()).cast("B")
        cache_info.update(saved_bytes=saved.nbytes, entries_saved=_cache_entries(config.get_timing_cache()))
        if cache_info.get("entries_loaded") is not None and cache_info.get("entries_saved") is not None:
            cache_info["new_entries"] = cache_info["entries_saved"] - cache_info["entries_loaded"]
        if cache_path is not None:
            _atomic_write_bytes(cache_path, saved)
    elif not flavor.timing_cache:
        cache_info["why"] = f"timing cache operations are no-ops in {flavor.title}"

    header = read_plan_header(bytes(plan_bytes[:HEADER_BYTES]))
    engine = _try_engine_details(trt, flavor, plan_bytes)
    report_layers, report_io = parse_engine_report(sink.engine_report) if sink.engine_report else (None, [])
    if sink.layer_lines and report_layers is None:
        report_layers = len(sink.layer_lines)
    if engine:  # deserialized here: the engine's own answers
        io_source, io = "engine", engine["io"]
    elif {t["name"] for t in report_io} == {t.name for t in plan.tensors}:  # the builder's report
        io_source, io = "build_log", report_io
    else:  # neither: what the network was told (dtype as parsed, formats as allowed)
        io_source, io = "network", _network_io(trt, tensors, plan)
    details: dict[str, Any] = {
        "library": flavor.title,
        "library_version": version(trt),
        "plan_bytes": plan_bytes.nbytes,
        "plan_header": header.to_dict(),
        "strongly_typed": True,
        "tf32": plan.tf32 if tf32_flag is not None else None,
        "workspace_mib": int(b["workspace_mib"]),
        "optimization_level": int(b["optimization_level"]),
        "profiling_verbosity": "DETAILED" if b.get("detailed_profiling", True) else "LAYER_NAMES_ONLY",
        "hardware_compatibility": hw,
        "version_compatible": bool(b.get("version_compatible")),
        "compute_capabilities": targets if targets is not None else (
            list(header.compute_capabilities) if header.compute_capabilities is not None else None),
        "profiles": profiles,
        "layers": {"network": network.num_layers,
                   "engine": engine["layers"] if engine else report_layers},
        "io_source": io_source,
        "io": io,
        "device_memory_bytes": engine["device_memory_bytes"] if engine else None,
        "timing_cache": cache_info,
        "build_seconds": round(build_seconds, 3),
        "warnings": notes + sink.warnings()[:50],
    }
    return BuildInfo(backend=flavor.backend, engine_file=ENGINE_FILE, library_version=version(trt),
                     seconds=time.perf_counter() - t0, details=details)


# -- runtime --------------------------------------------------------------------------------------------

def _device_memory_size(engine: tensorrt.ICudaEngine) -> int:
    size = getattr(engine, "device_memory_size_v2", None)  # TensorRT 10.1+, 11, RTX
    return int(size if size is not None else engine.device_memory_size)


def _check_engine_io(engine: tensorrt.ICudaEngine, plan: Plan, path: Path) -> None:
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    planned = {t.name for t in plan.tensors}
    if names != planned:
        raise ArtifactError(f"{path}: the engine's tensors {sorted(names)} are not the plan's {sorted(planned)} "
                            "(stale artifact)", hint="rebuild: trtflow build <recipe> --force")
    for t in plan.tensors:
        got = dtype_name(engine.get_tensor_dtype(t.name))
        if got != t.dtype:
            raise ArtifactError(f"{path}: engine tensor {t.name!r} is {got}, plan.json says {t.dtype} (stale artifact)",
                                hint="rebuild: trtflow build <recipe> --force")


def _validity_diagnostics(trt: Any, runtime: Any, data: bytes) -> tuple[str, list[str]] | None:
    """TensorRT-RTX ``Runtime.get_engine_validity``: (validity name, diagnostic names), if the API exists."""
    check = getattr(runtime, "get_engine_validity", None)
    diag_enum = getattr(trt, "EngineInvalidityDiagnostics", None)
    if check is None or diag_enum is None:
        return None
    validity, bits = check(data)
    reasons = [n for n, m in diag_enum.__members__.items() if int(bits) & int(m)]
    return str(getattr(validity, "name", validity)), reasons


class TrtEngine(CudaEngine):
    """A deserialized plan with one execution context; the runtime owns buffers, streams and scratch.

    Device scratch memory is user-managed where the library offers it: the runtime allocates
    :attr:`scratch_size` bytes (256-byte aligned) and hands them over with :meth:`set_scratch` before
    the first :meth:`enqueue`; a size of 0 needs no hand-over.
    """

    def __init__(self, trt: TrtModule, flavor: Flavor, runtime: tensorrt.Runtime, engine: tensorrt.ICudaEngine,
                 sink: LogSink, logger: Any, plan: Plan) -> None:
        self._trt, self.flavor, self._logger, self._sink, self.plan = trt, flavor, logger, sink, plan
        self._runtime: tensorrt.Runtime | None = runtime
        self._engine: tensorrt.ICudaEngine | None = engine
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        self.user_managed_memory = strategy is not None
        ctx = (engine.create_execution_context(strategy.USER_MANAGED) if strategy is not None
               else engine.create_execution_context())
        if ctx is None:
            raise ArtifactError(f"{flavor.title} could not create an execution context: " + "; ".join(sink.errors()[-5:]))
        self._ctx: tensorrt.IExecutionContext | None = ctx
        self._memory: tuple[int, int] | None = None
        self.tensor_names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]

    # -- state ----------------------------------------------------------------------------------------
    def _live(self) -> tuple[tensorrt.ICudaEngine, tensorrt.IExecutionContext]:
        if self._engine is None or self._ctx is None:
            from trtflow.errors import RunnerClosed

            raise RunnerClosed(f"{self.flavor.title} engine used after close()")
        return self._engine, self._ctx

    @property
    def scratch_size(self) -> int:
        """Scratch bytes the context needs at the largest shapes of every profile (0 without user-managed memory)."""
        return _device_memory_size(self._live()[0]) if self.user_managed_memory else 0

    def set_scratch(self, ptr: int) -> None:
        engine, ctx = self._live()
        size = _device_memory_size(engine)
        if ptr % 256:
            raise InputError(f"scratch memory at {ptr:#x} is not 256-byte aligned")
        ctx.set_device_memory(ptr, size)
        self._memory = (ptr, size)

    def output_shape(self, name: str) -> tuple[int, ...] | None:
        shape = tuple(dims(self._live()[1].get_tensor_shape(name)))
        return None if any(d < 0 for d in shape) else shape

    def io(self) -> list[dict[str, Any]]:
        return engine_io(self._trt, self._live()[0])

    def inspect(self) -> str:
        """Per-layer engine information as JSON (full detail needs build.detailed_profiling)."""
        engine, ctx = self._live()
        inspector = engine.create_engine_inspector()
        inspector.execution_context = ctx
        return inspector.get_engine_information(self._trt.LayerInformationFormat.JSON)

    # -- Engine protocol ------------------------------------------------------------------------------
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        _, ctx = self._live()
        if not ctx.set_input_shape(name, tuple(int(d) for d in shape)):
            t = self.plan.tensor(name)
            raise InputError(f"input {name!r}: shape {tuple(shape)} is outside the engine's profile "
                             f"[{t.min_shape} .. {t.max_shape}]")

    def set_address(self, name: str, ptr: int) -> None:
        _, ctx = self._live()
        if not ctx.set_tensor_address(name, int(ptr)):
            raise InputError(f"{self.flavor.title} rejected address {int(ptr):#x} for tensor {name!r} "
                             "(unknown tensor, or not 256-byte aligned)")

    def set_input_consumed_event(self, event: int) -> bool:
        _, ctx = self._live()
        return bool(ctx.set_input_consumed_event(int(event)))

    def enqueue(self, stream: int) -> None:
        _, ctx = self._live()
        if self._memory is None and self.scratch_size:
            raise TrtflowError("enqueue before set_scratch: this engine's scratch memory is user-managed",
                               hint=f"allocate scratch_size ({self.scratch_size}) bytes and call set_scratch(ptr) once")
        self._sink.clear()
        if not ctx.execute_async_v3(int(stream)):
            raise CudaError(f"{self.flavor.title} execute_async_v3 failed: " +
                            ("; ".join(self._sink.errors()[-5:]) or "no message logged"),
                            hint="check that every I/O address and input shape is set")

    @property
    def capturable(self) -> bool:
        return True

    # -- serving (runtime/pool.py): several instances of one engine ---------------------------------
    def new_instance(self) -> TrtEngine:
        """A second execution context of the same deserialized engine (weights shared; its own
        shapes, addresses and scratch memory), for another runner on this device."""
        engine, _ = self._live()
        assert self._runtime is not None
        return TrtEngine(self._trt, self.flavor, self._runtime, engine, self._sink, self._logger, self.plan)

    def close(self) -> None:
        self._ctx = None
        self._engine = None
        self._runtime = None


def open_engine(trt: TrtModule, flavor: Flavor, artifact_dir: Path, plan: Plan, *, device: str,
                allow_host_code: bool = False) -> TrtEngine:
    """Check and deserialize ``artifact_dir/engine.plan`` and create its execution context."""
    if device != "cuda":
        raise BackendMissing(f"{flavor.title} engines run on a CUDA GPU, not on {device!r}",
                             hint="execute the artifact's model.onnx on the CPU with backend onnxruntime")
    path = artifact_dir / ENGINE_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} has no {ENGINE_FILE}", hint="rebuild: trtflow build <recipe>")
    data = path.read_bytes()
    version_compatible = bool(plan.build.get("version_compatible"))
    cc = device_compute_capability()
    check_plan_header(flavor, data, version(trt), path=path, version_compatible=version_compatible,
                      device_cc=cc)
    if cc is not None and not flavor.can_run_on(cc):
        raise BackendMissing(f"{flavor.title} cannot run on this GPU (compute capability {cc[0]}.{cc[1]})",
                             hint="execute the artifact's model.onnx with backend torch or onnxruntime")
    if version_compatible and not allow_host_code:
        raise ArtifactError(f"{path} is version-compatible: it embeds a lean runtime (host code) that runs "
                            "when loaded", hint="load it only if you trust the file: pass --allow-host-code")
    logger, sink = make_logger(trt)
    runtime = trt.Runtime(logger)
    if allow_host_code:
        runtime.engine_host_code_allowed = True
    validity = _validity_diagnostics(trt, runtime, data)
    if validity is not None and validity[0] == "INVALID" and validity[1]:
        raise ArtifactError(f"{flavor.title} says {path} cannot run here: {', '.join(validity[1])}",
                            hint="rebuild the artifact for this GPU and library version: trtflow build <recipe> --force")
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        msgs = sink.errors()[-5:] or ["no message logged"]
        raise ArtifactError(f"{flavor.title} {version(trt)} could not deserialize {path}: " + "; ".join(msgs),
                            hint="plans are tied to the library version and GPU that built them: rebuild on "
                            "this machine with trtflow build <recipe> --force")
    _check_engine_io(engine, plan, path)
    return TrtEngine(trt, flavor, runtime, engine, sink, logger, plan)
