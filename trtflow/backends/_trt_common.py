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
import re
import struct
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trtflow.artifact import ENGINE, atomic_write
from trtflow.backends.base import CudaEngine, Progress
from trtflow.errors import ArtifactError, BackendMissing, BuildError, CudaError, InputError, TrtflowError
from trtflow.plan.model import BuildInfo, BuildPlan, Plan, TensorPlan

if TYPE_CHECKING:
    import tensorrt



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
    IOutputAllocator: type[tensorrt.IOutputAllocator]
    IProgressMonitor: type[tensorrt.IProgressMonitor]
    LayerInformationFormat: type[tensorrt.LayerInformationFormat]
    MemoryPoolType: type[tensorrt.MemoryPoolType]
    NetworkDefinitionCreationFlag: type[tensorrt.NetworkDefinitionCreationFlag]
    OnnxParser: type[tensorrt.OnnxParser]
    ProfilingVerbosity: type[tensorrt.ProfilingVerbosity]
    Runtime: type[tensorrt.Runtime]
    TensorFormat: type[tensorrt.TensorFormat]
    TensorIOMode: type[tensorrt.TensorIOMode]
    TensorLocation: type[tensorrt.TensorLocation]


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
    runtime_cache: bool = False     # RTX: IRuntimeCache of JIT-compiled kernels, persisted per GPU
    runs_on: tuple[str, ...] = ()   # compute capabilities the runtime accepts ("8.6"); () = any

    def can_run_on(self, cc: tuple[int, int]) -> bool:
        return not self.runs_on or f"{cc[0]}.{cc[1]}" in self.runs_on


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
                      version_compatible: bool) -> PlanHeader:
    """Refuse, before deserialization, a plan that is truncated, foreign, or from another library version."""
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
    return header


def check_plan_targets(header: PlanHeader, device_cc: tuple[int, int] | None,
                       validity: tuple[str, list[str]] | None, *, path: Path) -> None:
    """Refuse a TensorRT-RTX plan whose compute-capability targets leave out this GPU.

    TensorRT-RTX documents that a plan built for explicit ``build.compute_capabilities`` runs only on
    those (docs/tensorrt.md cites the page): a 12.0-only plan is not for a 12.1 GPU, even in one family.
    The header is read without a GPU; where the library itself can judge the plan
    (``Runtime.get_engine_validity``, which needs the GPU), its verdict wins: only UNSUPPORTED_CC refuses.
    Header bits this module does not know (the builder's default target list carries one) leave the
    decision to the library.
    """
    if device_cc is None or header.compute_capabilities is None or header.unknown_cc_bits:
        return
    here = f"{device_cc[0]}.{device_cc[1]}"
    if here in header.compute_capabilities:
        return
    if validity is not None and "UNSUPPORTED_CC" not in validity[1]:
        return  # the library says this plan runs on this GPU
    raise ArtifactError(f"{path} holds kernels for compute capability {', '.join(header.compute_capabilities)}; "
                        f"this GPU is {here}", hint=f"add '{here}' to build.compute_capabilities and rebuild")


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

def _check_settings(flavor: Flavor, build: BuildPlan) -> list[str]:
    """Refuse settings this library cannot honour where they promise something; list ignored ones."""
    ignored: list[str] = []
    hint_rtx = "TensorRT-RTX plans are portable through build.compute_capabilities"
    if build.hardware_compatibility != "none" and not flavor.hardware_compatibility:
        raise BuildError(f"build.hardware_compatibility={build.hardware_compatibility} is not supported by "
                         f"{flavor.title}", hint=f"remove it; {hint_rtx}")
    if build.version_compatible and not flavor.version_compatible:
        raise BuildError(f"build.version_compatible is not supported by {flavor.title} "
                         "(version-compatible plans embed the lean runtime, which it does not ship)",
                         hint="remove it, or build with backend tensorrt")
    if build.compute_capabilities and not flavor.compute_capabilities:
        raise BuildError(f"build.compute_capabilities applies to TensorRT-RTX; {flavor.title} builds for the GPU "
                         "it runs on", hint="use `hardware_compatibility: ampere_plus` for a plan that runs on "
                         "Ampere and newer, or backend tensorrt_rtx")
    if build.timing_cache and not flavor.timing_cache:
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
            "device_memory_bytes": int(engine.device_memory_size_v2)}


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


def _shape_input_values(flavor: Flavor, tensors: dict[str, tensorrt.ITensor], plan: Plan
                        ) -> dict[str, dict[str, list[int]]]:
    """``build.shape_inputs`` for the network's shape-tensor inputs (values read on the host, e.g. the
    target shape of a Reshape); every shape tensor needs its value range in the optimization profile."""
    given = plan.build.shape_inputs
    found = {t.name for t in plan.inputs if tensors[t.name].is_shape_tensor}
    unknown = sorted(set(given) - found)
    if unknown:
        raise BuildError(f"build.shape_inputs names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not a "
                         f"shape-tensor input of the model (shape tensors: {sorted(found) or 'none'})",
                         hint="list only inputs whose values are a shape (e.g. the shape input of a Reshape)")
    missing = sorted(found - set(given))
    if missing:
        name = missing[0]
        n = int(dims(tensors[name].shape)[0]) if dims(tensors[name].shape) else 1
        example = ", ".join(f"{k}: [{', '.join(['1'] * n)}]" for k in ("min", "opt", "max"))
        raise BuildError(f"input {name!r} is a shape tensor: {flavor.title} reads its {n} value(s) on the host "
                         "as a shape, and its optimization profile needs the range of those values",
                         hint=f"add to the recipe: build: {{shape_inputs: {{{name}: {{{example}}}}}}} "
                         "with the smallest, typical and largest values")
    for name, v in given.items():
        n = int(dims(tensors[name].shape)[0]) if dims(tensors[name].shape) else 1
        bad = [k for k in ("min", "opt", "max") if len(v[k]) != n]
        if bad:
            raise BuildError(f"build.shape_inputs.{name}: {bad[0]} has {len(v[bad[0]])} values; the shape tensor "
                             f"{name!r} holds {n}", hint=f"give {n} values each for min, opt and max")
    return {name: {k: list(v[k]) for k in ("min", "opt", "max")} for name, v in given.items()}


def _build_failure_hint(errors: list[str], *, graphs: bool) -> str:
    """A hint that matches what the builder said (a workspace hint only for memory failures)."""
    text = " ".join(errors).lower()
    if "profile" in text or "shape constraints" in text or "shape input" in text:
        return ("the optimization profile does not fit the model: check inputs.<name>.profile and "
                "build.shape_inputs (values of shape tensors) against the model's shapes")
    if graphs and ("user allocation" in text or "require_user_allocation" in text or "runtime allocation" in text):
        return ("streams.cuda_graph needs an engine that allocates nothing at run time, which this model's "
                "data-dependent shapes prevent: set streams.cuda_graph: false")
    if "memory" in text or "workspace" in text or "out of" in text:
        return "the builder ran out of memory: raise build.workspace_mib, or lower build.optimization_level"
    if "unsupported" in text or "not supported" in text:
        return ("an op or setting is not supported by this library version: see the messages above; "
                "backend onnxruntime runs every standard op")
    return "see the messages above (the builder's own account of the failure)"


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
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, b.workspace_mib << 20)
    config.builder_optimization_level = b.optimization_level
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None:  # on by default; a common cause of disagreement with onnxruntime
        if plan.tf32:
            config.set_flag(tf32_flag)
        else:
            config.clear_flag(tf32_flag)
    config.profiling_verbosity = (trt.ProfilingVerbosity.DETAILED if b.detailed_profiling
                                  else trt.ProfilingVerbosity.LAYER_NAMES_ONLY)
    hw = b.hardware_compatibility
    if hw != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, hw.upper())
    if b.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    targets: list[str] | None = None
    if b.compute_capabilities:
        targets = _set_compute_capabilities(trt, config, b.compute_capabilities)
    # TensorRT-RTX 1.2+: without this flag the runtime may allocate inside an enqueue (shapes beyond the
    # static allocation), which a CUDA graph capture cannot hold. Full TensorRT has no such flag.
    user_alloc_flag = getattr(trt.BuilderFlag, "REQUIRE_USER_ALLOCATION", None)
    graphs = plan.streams.cuda_graph
    if graphs and user_alloc_flag is not None:
        config.set_flag(user_alloc_flag)

    cache_path: Path | None = None
    cache_info: dict[str, Any] = {"used": False}
    cache = None
    if flavor.timing_cache:
        if b.timing_cache:
            cache_path = Path(plan.recipe_path).parent / b.timing_cache
        cache, cache_info = _timing_cache(trt, config, cache_path)
        cache_info["used"] = True

    shape_inputs = _shape_input_values(flavor, tensors, plan)
    profiles: list[dict[str, Any]] = []
    if shape_inputs or any(-1 in dims(tensors[t.name].shape) for t in plan.inputs):
        profile = builder.create_optimization_profile()
        for t in plan.inputs:
            if t.name in shape_inputs:  # a shape tensor: the profile bounds its values, not its shape
                v = shape_inputs[t.name]
                profile.set_shape_input(t.name, v["min"], v["opt"], v["max"])
                profiles.append({"name": t.name, "values": v})
            elif -1 in dims(tensors[t.name].shape) or t.dynamic:
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
                         hint=_build_failure_hint(errs, graphs=graphs and user_alloc_flag is not None))
    plan_bytes = memoryview(serialized).cast("B")
    atomic_write(out_dir / ENGINE, plan_bytes)

    if cache is not None:
        saved = memoryview(config.get_timing_cache().serialize()).cast("B")
        cache_info.update(saved_bytes=saved.nbytes, entries_saved=_cache_entries(config.get_timing_cache()))
        if cache_info.get("entries_loaded") is not None and cache_info.get("entries_saved") is not None:
            cache_info["new_entries"] = cache_info["entries_saved"] - cache_info["entries_loaded"]
        if cache_path is not None:
            atomic_write(cache_path, bytes(saved))
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
        "workspace_mib": b.workspace_mib,
        "optimization_level": b.optimization_level,
        "profiling_verbosity": "DETAILED" if b.detailed_profiling else "LAYER_NAMES_ONLY",
        "hardware_compatibility": hw,
        "version_compatible": b.version_compatible,
        "compute_capabilities": targets if targets is not None else (
            list(header.compute_capabilities) if header.compute_capabilities is not None else None),
        "profiles": profiles,
        "require_user_allocation": (graphs if user_alloc_flag is not None else None),
        "layers": {"network": network.num_layers,
                   "engine": engine["layers"] if engine else report_layers},
        "io_source": io_source,
        "io": io,
        "device_memory_bytes": engine["device_memory_bytes"] if engine else None,
        "timing_cache": cache_info,
        "build_seconds": round(build_seconds, 3),
        "warnings": notes + sink.warnings()[:50],
    }
    return BuildInfo(backend=flavor.backend, engine_file=ENGINE, library_version=version(trt),
                     seconds=time.perf_counter() - t0, details=details)


# -- runtime --------------------------------------------------------------------------------------------

RUNTIME_CACHE_DIR = "runtime_cache"  # inside the artifact folder: one file per GPU, driver and library version


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


# -- runtime cache (TensorRT-RTX) -------------------------------------------------------------------------

def runtime_cache_key(gpu: str, cc: tuple[int, int], driver: int, library: str) -> str:
    """File stem of the runtime cache for one GPU model, driver and library version.

    TensorRT-RTX validates a cache blob itself (GPU SKU, driver major and not older, library version:
    ``IRuntimeCache.deserialize``); the key keeps one file per environment so that two machines sharing an
    artifact folder never overwrite each other's cache and a foreign one is never even read.
    """
    name = re.sub(r"[^A-Za-z0-9.]+", "-", gpu).strip("-").lower() or "gpu"
    return f"{name}-sm{cc[0]}{cc[1]}-driver{driver}-{library}"


@dataclass(frozen=True)
class RuntimeCacheFile:
    """Where one environment's TensorRT-RTX runtime cache lives: ``<artifact>/runtime_cache/<key>.bin``."""

    folder: Path
    key: str

    @property
    def path(self) -> Path:
        return self.folder / f"{self.key}.bin"

    def load(self) -> bytes | None:
        """The saved blob; None if there is none (or it cannot be read: a warning, never an error)."""
        try:
            return self.path.read_bytes() if self.path.is_file() else None
        except OSError as exc:
            warnings.warn(f"runtime cache {self.path} unreadable ({exc}); compiling kernels afresh",
                          RuntimeWarning, stacklevel=2)
            return None

    def save(self, data: bytes | memoryview) -> bool:
        """Write atomically (a reader sees the old or the new file, never half of one). A read-only
        artifact folder is a warning: the cache is an optimisation."""
        try:
            atomic_write(self.path, bytes(data))
        except OSError as exc:
            warnings.warn(f"runtime cache not saved to {self.path} ({exc}); the next start compiles again",
                          RuntimeWarning, stacklevel=2)
            return False
        return True


def runtime_cache_file(artifact_dir: Path, library: str) -> RuntimeCacheFile | None:
    """The runtime cache file of the current GPU, or None without a usable GPU."""
    from trtflow.runtime import cuda

    try:
        info = cuda.device_properties()
        driver = cuda.driver_version()
    except TrtflowError:
        return None
    key = runtime_cache_key(info.name, info.compute_capability, driver, library)
    return RuntimeCacheFile(artifact_dir / RUNTIME_CACHE_DIR, key)


def _load_runtime_cache(cache: Any, file: RuntimeCacheFile) -> str:
    """Fill an ``IRuntimeCache`` from ``file``: 'loaded', 'empty' (no file) or 'rejected' (a warning)."""
    blob = file.load()
    if not blob:
        return "empty"
    if cache.deserialize(blob):
        return "loaded"
    warnings.warn(f"runtime cache {file.path} was rejected by TensorRT-RTX (corrupt, or made by another "
                  "GPU/driver/version); compiling kernels afresh and replacing it", RuntimeWarning, stacklevel=2)
    return "rejected"


# -- data-dependent outputs -------------------------------------------------------------------------------

class _OutputMemory:
    """State of the ``IOutputAllocator`` of one engine: the runtime's buffers and those grown here."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self.capacity = capacity                         # output -> bytes of the runtime's buffer
        self.bound: dict[str, int] = {}                  # output -> runtime's address (set_address)
        self.grown: dict[str, tuple[int, int]] = {}      # output -> (address, bytes) from runtime.cuda
        self.used: dict[str, int] = {}                   # output -> where TensorRT wrote the last result
        self.shapes: dict[str, tuple[int, ...]] = {}     # output -> notify_shape of the last enqueue
        self.error: BaseException | None = None

    def reallocate(self, name: str, current: int, size: int, alignment: int) -> int:
        """The address TensorRT writes output ``name`` to: the runtime's buffer when ``size`` fits,
        else memory grown here (doubling, allocated and freed through :mod:`trtflow.runtime.cuda`)."""
        from trtflow.runtime import cuda

        align = max(int(alignment), 1)
        bound = self.bound.get(name, current)
        if bound and size <= self.capacity.get(name, 0) and bound % align == 0:
            self.used[name] = bound
            return bound
        ptr, have = self.grown.get(name, (0, 0))
        if not ptr or have < size or ptr % align:
            if ptr:
                cuda.free(ptr)  # TensorRT asked for more: the old result was copied out already
                del self.grown[name]
            have = max(int(size), 2 * have, 256)
            ptr = cuda.malloc(have)
            self.grown[name] = (ptr, have)
            if ptr % align:
                raise CudaError(f"output {name!r}: cudaMalloc returned {ptr:#x}, not {align}-byte aligned")
        self.used[name] = ptr
        return ptr

    def copy_back(self, t: TensorPlan, *, stream: int) -> None:
        """A result TensorRT wrote into memory grown here goes into the runtime's buffer (stream-ordered D2D),
        so the runtime reads every output where it bound it. Too big for that buffer: an ArtifactError."""
        from trtflow.plan.formats import nbytes
        from trtflow.runtime import cuda

        used, bound = self.used.get(t.name), self.bound.get(t.name)
        if used is None or bound is None or used == bound:
            return
        shape = self.shapes.get(t.name)
        cap = self.capacity[t.name]
        need = nbytes(shape, t.dtype, t.format) if shape is not None else cap + 1
        if need > cap:
            raise ArtifactError(f"output {t.name!r}: the result of shape {list(shape or [])} needs {need} bytes; "
                                f"the runner's buffer holds {cap} (the plan's bound {list(t.max_shape)})",
                                hint="raise the output's upper bound in the recipe and rebuild")
        if need:
            cuda.memcpy_async(bound, used, need, "d2d", stream=stream)

    def close(self) -> None:
        from trtflow.runtime import cuda

        for ptr, _ in self.grown.values():
            cuda.free(ptr)
        self.grown.clear()


def make_output_allocator(trt: TrtModule, memory: _OutputMemory) -> Any:
    """A ``trt.IOutputAllocator`` over ``memory`` (pyCore.cpp's trampoline calls ``reallocate_output_async``
    and ``notify_shape``; a Python exception there would only be printed, so it is kept and re-raised
    by :meth:`TrtEngine.enqueue`)."""
    base: Any = trt.IOutputAllocator

    class OutputAllocator(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)

        def reallocate_output_async(self, tensor_name: str, memory_: int, size: int, alignment: int,
                                    stream: int) -> int:
            try:
                return memory.reallocate(tensor_name, int(memory_), int(size), int(alignment))
            except BaseException as exc:  # noqa: BLE001 - handed back to enqueue's caller
                memory.error = exc
                return 0  # nullptr: TensorRT fails the enqueue

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            memory.shapes[tensor_name] = tuple(int(d) for d in shape)

    return OutputAllocator()


# -- the engine ---------------------------------------------------------------------------------------------

class TrtEngine(CudaEngine):
    """A deserialized plan with one execution context; the runtime owns buffers, streams and scratch.

    The context is created through an ``IRuntimeConfig`` (TensorRT 10.12+, 11, TensorRT-RTX) with the
    USER_MANAGED allocation strategy: the runtime allocates :attr:`scratch_size` bytes and hands them over
    with :meth:`set_scratch` (nothing when the size is 0). On TensorRT-RTX the config also carries the
    runtime cache (JIT-compiled kernels, persisted per GPU in the artifact folder) and the kernel
    specialization strategy: EAGER when the plan captures CUDA graphs, so that the warm-up enqueue before
    a capture compiles the shape-specialized kernels and the graph never bakes in a fallback kernel.

    One execution context, and CUDA graphs bake in its state (shapes, addresses, scratch): a graph
    captured at one set of input shapes is invalid once :meth:`set_input_shape` changed them
    (:attr:`graphs_outlive_shape_changes` is False, the runtime recaptures).
    """

    graphs_outlive_shape_changes = False

    def __init__(self, trt: TrtModule, flavor: Flavor, runtime: tensorrt.Runtime, engine: tensorrt.ICudaEngine,
                 sink: LogSink, logger: Any, plan: Plan, *, cache_file: RuntimeCacheFile | None = None) -> None:
        self._trt, self.flavor, self._logger, self._sink, self.plan = trt, flavor, logger, sink, plan
        self._runtime: tensorrt.Runtime | None = runtime
        self._engine: tensorrt.ICudaEngine | None = engine
        self.tensor_names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.cache_file = cache_file
        self.runtime_cache: str = "n/a"  # n/a | empty | loaded | rejected
        self._cache: Any = None
        self._config: Any = None
        ctx = self._create_context(engine)
        if ctx is None:
            raise ArtifactError(f"{flavor.title} could not create an execution context: " + "; ".join(sink.errors()[-5:]))
        self._ctx: tensorrt.IExecutionContext | None = ctx
        self._scratch_size = int(engine.device_memory_size_v2)
        self._scratch: int | None = None
        self._stream: int | None = None  # the stream of the last enqueue (is_stream_capturable asks for one)
        self._outputs = [t.name for t in plan.outputs]
        self._out_memory = _OutputMemory({t.name: int(t.max_bytes) for t in plan.outputs})
        self._allocator: Any = None
        self._dynamic_outputs: set[str] = set()  # outputs with -1 dims at the shapes set (allocator bound)
        self._shapes_dirty = True
        self._unshaped = {t.name for t in plan.inputs if t.dynamic}  # dynamic inputs without a shape yet
        # Shape tensors: inputs whose values TensorRT reads on the host (TensorLocation.HOST).
        host = trt.TensorLocation.HOST
        self.host_inputs = frozenset(t.name for t in plan.inputs
                                     if engine.is_shape_inference_io(t.name) and engine.get_tensor_location(t.name) == host)
        self._host_values: dict[str, Any] = {}

    def _create_context(self, engine: tensorrt.ICudaEngine) -> tensorrt.IExecutionContext | None:
        trt = self._trt
        config = engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        rtx: Any = config  # TensorRT-RTX only: runtime cache and strategies (version-guarded below)
        if hasattr(rtx, "create_runtime_cache"):
            if self.cache_file is not None:
                self._cache = rtx.create_runtime_cache()
                self.runtime_cache = _load_runtime_cache(self._cache, self.cache_file)
                if not rtx.set_runtime_cache(self._cache):
                    warnings.warn("TensorRT-RTX refused the runtime cache; kernels are compiled per run",
                                  RuntimeWarning, stacklevel=3)
                    self._cache, self.runtime_cache = None, "n/a"
            graphs = self.plan.streams.cuda_graph
            strategies: Any = trt
            if graphs and hasattr(strategies, "DynamicShapesKernelSpecializationStrategy"):
                rtx.dynamic_shapes_kernel_specialization_strategy = \
                    strategies.DynamicShapesKernelSpecializationStrategy.EAGER
            if hasattr(strategies, "CudaGraphStrategy"):
                # trtflow captures the whole request (copies included) itself; RTX's own capture inside
                # an application capture is not possible, and without `cuda_graph` none was asked for.
                rtx.cuda_graph_strategy = strategies.CudaGraphStrategy.DISABLED
        self._config = config
        return engine.create_execution_context(config)

    # -- state ----------------------------------------------------------------------------------------
    def _live(self) -> tuple[tensorrt.ICudaEngine, tensorrt.IExecutionContext]:
        if self._engine is None or self._ctx is None:
            from trtflow.errors import RunnerClosed

            raise RunnerClosed(f"{self.flavor.title} engine used after close()")
        return self._engine, self._ctx

    @property
    def scratch_size(self) -> int:
        """Device scratch bytes the context needs at the largest shapes of its profile (0 is legal:
        nothing to hand over, :meth:`enqueue` runs without it)."""
        self._live()
        return self._scratch_size

    def set_scratch(self, ptr: int) -> None:
        """Hand over :attr:`scratch_size` bytes at ``ptr`` (owned by the runtime, 256-byte aligned)."""
        _, ctx = self._live()
        if ptr % 256:
            raise InputError(f"scratch memory at {ptr:#x} is not 256-byte aligned")
        if not ptr and self._scratch_size:
            raise InputError(f"scratch memory of {self._scratch_size} bytes needed, got a null pointer")
        ctx.set_device_memory(int(ptr), self._scratch_size)
        self._scratch = int(ptr)

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
        self._shapes_dirty = True
        self._unshaped.discard(name)

    def set_input_values(self, name: str, values: Any) -> None:
        """The values of shape-tensor input ``name`` (:attr:`host_inputs`), kept in host memory this
        engine owns: TensorRT reads them on the host, for output shapes and at enqueue."""
        import numpy as np

        _, ctx = self._live()
        if name not in self.host_inputs:
            raise InputError(f"input {name!r} is not a shape tensor; its data goes to device memory",
                             hint=f"shape tensors of this engine: {sorted(self.host_inputs) or 'none'}")
        want = np.dtype(self.plan.tensor(name).dtype)
        buf = self._host_values.get(name)
        arr = np.ascontiguousarray(values, dtype=want)
        if buf is None or buf.shape != arr.shape:
            buf = self._host_values[name] = arr.copy()  # stays alive: TensorRT keeps its address
        else:
            buf[...] = arr
        if not ctx.set_tensor_address(name, int(buf.ctypes.data)):
            raise InputError(f"{self.flavor.title} rejected the host values of shape tensor {name!r}")
        self._shapes_dirty = True

    def set_address(self, name: str, ptr: int) -> None:
        _, ctx = self._live()
        if name in self.host_inputs:
            return  # its values live on the host (set_input_values); the runtime's device copy is unused
        if not ctx.set_tensor_address(name, int(ptr)):
            raise InputError(f"{self.flavor.title} rejected address {int(ptr):#x} for tensor {name!r} "
                             "(unknown tensor, or not 256-byte aligned)")
        if name in self._out_memory.capacity:
            self._out_memory.bound[name] = int(ptr)

    def set_input_consumed_event(self, event: int) -> bool:
        _, ctx = self._live()
        return bool(ctx.set_input_consumed_event(int(event)))

    def _refresh(self) -> None:
        """After input shapes/values changed: which outputs have dims the context cannot tell yet
        (data-dependent, -1): those get the output allocator. Not before every dynamic input has a shape
        (until then every dynamic dim reads -1)."""
        if not self._shapes_dirty or self._unshaped:
            return
        _, ctx = self._live()
        dynamic = {n for n in self._outputs if -1 in dims(ctx.get_tensor_shape(n))}
        if dynamic - self._dynamic_outputs:
            if self._allocator is None:
                self._allocator = make_output_allocator(self._trt, self._out_memory)
            for name in sorted(dynamic - self._dynamic_outputs):
                if not ctx.set_output_allocator(name, self._allocator):
                    raise CudaError(f"{self.flavor.title} refused an output allocator for {name!r}")
        self._dynamic_outputs |= dynamic
        self._shapes_dirty = False

    def output_shape(self, name: str) -> tuple[int, ...] | None:
        """The exact shape of output ``name`` at the input shapes (and shape-tensor values) last set,
        from ``context.get_tensor_shape``; None where a dim is data-dependent (see :meth:`reported_shape`)."""
        _, ctx = self._live()
        self._refresh()
        shape = dims(ctx.get_tensor_shape(name))
        return None if -1 in shape else tuple(shape)

    def reported_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape ``IOutputAllocator.notify_shape`` reported for ``name`` during the last enqueue."""
        self._live()
        return self._out_memory.shapes.get(name) if name in self._dynamic_outputs else None

    def enqueue(self, stream: int) -> None:
        _, ctx = self._live()
        if self._scratch_size and self._scratch is None:
            raise TrtflowError("enqueue before set_scratch: this engine's scratch memory is user-managed",
                               hint=f"allocate scratch_size ({self._scratch_size}) bytes and call set_scratch(ptr) once")
        missing = sorted(self.host_inputs - set(self._host_values))
        if missing:
            raise InputError(f"shape-tensor input(s) {missing}: values not set",
                             hint="TensorRT reads shape tensors on the host: call set_input_values(name, values)")
        self._refresh()
        self._sink.clear()
        mem = self._out_memory
        mem.error = None
        for name in self._dynamic_outputs:
            mem.shapes.pop(name, None)
        self._stream = int(stream)
        ok = ctx.execute_async_v3(int(stream))
        if mem.error is not None:
            raise mem.error
        if not ok:
            raise CudaError(f"{self.flavor.title} execute_async_v3 failed: " +
                            ("; ".join(self._sink.errors()[-5:]) or "no message logged"),
                            hint="check that every I/O address and input shape is set")
        self._copy_back(int(stream))

    def _copy_back(self, stream: int) -> None:
        for name in self._dynamic_outputs:
            self._out_memory.copy_back(self.plan.tensor(name), stream=stream)

    @property
    def capturable(self) -> bool:
        """Whether an enqueue can be captured: not with data-dependent outputs (the allocator runs inside
        the enqueue); on TensorRT-RTX ``is_stream_capturable`` of the stream of the last enqueue (ask after
        the warm-up run); else True."""
        _, ctx = self._live()
        self._refresh()
        if self._dynamic_outputs or any(t.data_dependent for t in self.plan.outputs):
            return False
        check = getattr(ctx, "is_stream_capturable", None)  # TensorRT-RTX 1.2+
        if check is not None and self._stream is not None:
            return bool(check(self._stream))
        return True

    def save_runtime_cache(self) -> bool:
        """Persist the TensorRT-RTX runtime cache (JIT-compiled kernels) for the next start; False if
        there is none. Called by :meth:`close`."""
        if self._cache is None or self.cache_file is None:
            return False
        blob = self._cache.serialize()
        return bool(blob is not None and memoryview(blob).nbytes and self.cache_file.save(memoryview(blob).cast("B")))

    # -- serving (runtime/pool.py): several instances of one engine ---------------------------------
    def new_instance(self) -> TrtEngine:
        """A second execution context of the same deserialized engine (weights shared; its own
        shapes, addresses and scratch memory), for another runner on this device."""
        engine, _ = self._live()
        assert self._runtime is not None
        return TrtEngine(self._trt, self.flavor, self._runtime, engine, self._sink, self._logger, self.plan,
                         cache_file=self.cache_file)

    def close(self) -> None:
        if self._ctx is not None:
            try:
                self.save_runtime_cache()
            finally:
                self._out_memory.close()
        self._ctx = None
        self._cache = self._config = self._allocator = None
        self._engine = None
        self._runtime = None


def open_engine(trt: TrtModule, flavor: Flavor, artifact_dir: Path, plan: Plan, *, device: str,
                allow_host_code: bool = False) -> TrtEngine:
    """Check and deserialize ``artifact_dir/engine.plan`` and create its execution context."""
    if device != "cuda":
        raise BackendMissing(f"{flavor.title} engines run on a CUDA GPU, not on {device!r}",
                             hint="execute the artifact's model.onnx on the CPU with backend onnxruntime")
    path = artifact_dir / ENGINE
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} has no {ENGINE}", hint="rebuild: trtflow build <recipe>")
    data = path.read_bytes()
    version_compatible = plan.build.version_compatible
    cc = device_compute_capability()
    header = check_plan_header(flavor, data, version(trt), path=path, version_compatible=version_compatible)
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
    validity = _validity_diagnostics(trt, runtime, data) if cc is not None else None
    check_plan_targets(header, cc, validity, path=path)
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
    cache_file = runtime_cache_file(artifact_dir, version(trt)) if flavor.runtime_cache else None
    return TrtEngine(trt, flavor, runtime, engine, sink, logger, plan, cache_file=cache_file)
