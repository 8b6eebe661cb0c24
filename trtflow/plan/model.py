"""The plan: a frozen, JSON-serializable description of exactly what gets built and run.

Every later stage (graph passes, backends, codegen, runtime, validate, bench) reads a :class:`Plan`,
never the recipe. ``plan.json`` in the artifact folder is this object, so it is printable and diffable.
Its sections are frozen typed objects the planner builds once, defaults resolved (:class:`StreamsPlan`,
:class:`BuildPlan`, :class:`ServingPlan`, :class:`BudgetsPlan`, :class:`LinkPlan`, :class:`ValidatePlan`,
:class:`MixedPrecisionPlan`); a section gains a field by one typed line here (and its recipe field in
``trtflow.recipe.schema``).

This module also holds the one list of memory-strategy and topology names everything else uses.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, TypeVar, get_args

from typing_extensions import Self

from trtflow.errors import ArtifactError

Role = Literal["input", "output"]
MemoryStrategy = Literal["pageable", "pinned", "write_combined", "registered", "mapped", "device"]
Topology = Literal["sync", "async", "pipelined"]
MEMORY_STRATEGIES: tuple[str, ...] = get_args(MemoryStrategy)
HOST_STRATEGIES: tuple[str, ...] = tuple(s for s in MEMORY_STRATEGIES if s != "device")
TOPOLOGIES: tuple[str, ...] = get_args(Topology)
#: how the host waits for the GPU (``streams.wait``): sleep on blocking-sync CUDA events, or spin on a core
Wait = Literal["block", "spin"]
WAITS: tuple[str, ...] = get_args(Wait)
#: the layout of plan.json; a plan of another version is refused (rebuild), never half-read
PLAN_VERSION = 4

S = TypeVar("S", bound="_Section")


def _frozen(v: Any) -> Any:
    """JSON lists as tuples (hashable, immutable), recursively; mappings keep their keys."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return {k: _frozen(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class _Section:
    """A frozen plan section: built from a mapping (the recipe's ``model_dump()`` or plan.json)."""

    name: ClassVar[str]

    @classmethod
    def from_dict(cls, d: Any) -> Self:
        if not isinstance(d, dict):
            raise TypeError(f"plan section {cls.name!r} must be an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TypeError(f"plan section {cls.name!r} has unknown fields {unknown}")
        return cls(**{k: _frozen(v) for k, v in d.items()})


@dataclass(frozen=True)
class StreamsPlan(_Section):
    """Stream topology of the generated runner."""

    name: ClassVar[str] = "streams"
    topology: str = "sync"
    depth: int = 2              # buffer sets of the pipelined topology
    cuda_graph: bool = False
    wait: str = "block"         # how the host waits for the GPU: block (blocking-sync events) | spin

    @property
    def buffer_sets(self) -> int:
        """Requests in flight: ``depth`` when pipelined, else 1."""
        return self.depth if self.topology == "pipelined" else 1


@dataclass(frozen=True)
class BuildPlan(_Section):
    """How the engine is built (TensorRT / TensorRT-RTX builder settings; the backend for every builder)."""

    name: ClassVar[str] = "build"
    backend: str = "auto"
    workspace_mib: int = 4096
    optimization_level: int = 3
    timing_cache: str | None = None          # relative to the recipe
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    compute_capabilities: tuple[str, ...] = ()
    detailed_profiling: bool = True
    shape_inputs: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # name -> {min, opt, max}
    max_io_mib: int | None = None            # cap of the I/O buffers the planner checked (None: this machine's memory)


@dataclass(frozen=True)
class ServingPlan(_Section):
    """How ``RunnerPool`` (trtflow.runtime.pool) serves the artifact."""

    name: ClassVar[str] = "serving"
    instances: int = 1
    devices: str | tuple[int, ...] | None = None   # "all", GPU indices, or None: the current device
    max_queue: int = 1024
    batching: dict[str, Any] | None = None  # {max_batch, window_ms}: dynamic batching of asyncio requests


@dataclass(frozen=True)
class BudgetsPlan(_Section):
    """Performance budgets checked by ``trtflow bench --check`` (None: not budgeted)."""

    name: ClassVar[str] = "budgets"
    p99_latency_ms: float | None = None
    p50_latency_ms: float | None = None
    h2d_ms: float | None = None
    d2h_ms: float | None = None
    min_throughput: float | None = None


@dataclass(frozen=True)
class LinkPlan(_Section):
    """The host-device link the planner predicted transfer times with."""

    name: ClassVar[str] = "link"
    h2d_gbps: float = 54.0
    d2h_gbps: float = 54.0
    pageable_gbps: float = 10.0
    copy_latency_us: float = 4.2
    pageable_latency_us: float = 8.1


@dataclass(frozen=True)
class MixedPrecisionPlan(_Section):
    """Which nodes fp16/bf16 lowering keeps in fp32 (recipe ``mixed_precision:``; ModelOpt AutoCast's rules)."""

    name: ClassVar[str] = "mixed_precision"
    keep_fp32_ops: tuple[str, ...] = ()
    keep_fp32_nodes: tuple[str, ...] = ()   # shell-style wildcards
    init_max: float = 65504.0               # fp16: a node reading a weight with |x| above this stays fp32
    data_max: float | None = 512.0          # fp16: ... whose activation reaches |x| above this (None: rule off)
    calibrate: bool = True                  # fp16: measure activation ranges on onnxruntime at build time


# -- validate: generators per input (recipe ``validate.inputs``), checks per output ------------------------
@dataclass(frozen=True)
class RangeGen:
    """Uniform values in [low, high) (floats) or integers in [low, high] (integer inputs)."""

    kind: ClassVar[str] = "range"
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class NormalGen:
    kind: ClassVar[str] = "normal"
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class ChoiceGen:
    """Sample k fills the whole input with ``values[k % len(values)]``."""

    kind: ClassVar[str] = "choice"
    values: tuple[int | float, ...] = (0,)


@dataclass(frozen=True)
class ZerosGen:
    kind: ClassVar[str] = "zeros"


@dataclass(frozen=True)
class ImageGen:
    """A photo-like image; ``range`` is resolved by the planner ([0, 255] integer inputs, [0, 1] floats)."""

    kind: ClassVar[str] = "image"
    range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels_last: bool | None = None       # None: from the input's layout, else guessed from the shape


Generator = RangeGen | NormalGen | ChoiceGen | ZerosGen | ImageGen
GENERATORS: dict[str, type[Generator]] = {c.kind: c for c in (RangeGen, NormalGen, ChoiceGen, ZerosGen, ImageGen)}


def make_generator(d: dict[str, Any]) -> Generator:
    """A generator from its mapping (``{"kind": ..., params}``: the recipe's dump or plan.json)."""
    return GENERATORS[d["kind"]](**{k: _frozen(v) for k, v in d.items() if k != "kind"})


@dataclass(frozen=True)
class MetricCheck:
    """A task metric an output must reach (``agreement``, ``iou``, ``topk_overlap``): at least ``min``.

    It compares the output's decision when one is named: both maps binarized at ``>= threshold`` (a
    probability map), or their argmax along ``axis`` (a softmax; negative, counted from the last dim)."""

    kind: str
    min: float
    threshold: float | None = None
    axis: int | None = None


@dataclass(frozen=True)
class OutputCheck:
    """How ``trtflow validate`` decides one output, resolved once by the planner
    (:func:`trtflow.validate.policy.resolve`): the tolerance or metrics, and where each came from."""

    gate: str                          # "tolerance" (atol/rtol decide) | "metrics" (the metrics decide)
    atol: float | None                 # None: an integer/bool output without a tolerance
    rtol: float | None
    tolerance_from: str | None         # "validate.tolerances", "validate.default", "default for a ..."
    metrics: tuple[MetricCheck, ...] = ()
    metrics_from: str | None = None
    statistic: str | None = None       # the error statistic that gates this output; None: ``validate.statistic``


ShapeSet = str | dict[str, tuple[int, ...]]   # "min" | "opt" | "max" | "mixed" | {input: shape, model layout}


@dataclass(frozen=True)
class ValidatePlan(_Section):
    """What ``trtflow validate`` runs and how it decides, defaults resolved: the recipe's tolerances,
    metrics and default are folded into ``per_output`` (one :class:`OutputCheck` per plan output)."""

    name: ClassVar[str] = "validate"
    formula: str = "elemwise"          # elemwise (Polygraphy) | allclose (numpy)
    statistic: str = "max"
    samples: int = 2                   # per shape set (with ``data``: a cap of the file's samples)
    seed: int = 0
    generator: str = "uniform"         # inputs without a generator: uniform [0, 1) | normal
    inputs: dict[str, Generator] = field(default_factory=dict)   # input name -> generator
    shapes: tuple[ShapeSet, ...] = ("opt",)                      # the shape sets, in order
    data: str | None = None            # .npz of input arrays, relative to the recipe
    per_output: dict[str, OutputCheck] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> Self:
        if not isinstance(d, dict):
            raise TypeError(f"plan section {cls.name!r} must be an object, got {type(d).__name__}")
        d = dict(d)
        inputs = d.pop("inputs", {})
        per_output = d.pop("per_output", {})
        shapes = d.pop("shapes", ("opt",))
        base = super().from_dict(d)
        gens = {k: make_generator(g) for k, g in inputs.items()}
        checks = {k: OutputCheck(**{**c, "metrics": tuple(MetricCheck(**m) for m in c.get("metrics", ()))})
                  for k, c in per_output.items()}
        sets = tuple(s if isinstance(s, str) else {n: tuple(v) for n, v in s.items()} for s in shapes)
        return replace(base, inputs=gens, per_output=checks, shapes=sets)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs"] = {k: {"kind": g.kind, **asdict(g)} for k, g in self.inputs.items()}
        return out


SECTIONS: dict[str, type[_Section]] = {c.name: c for c in (StreamsPlan, BuildPlan, ServingPlan, BudgetsPlan, LinkPlan,
                                                           ValidatePlan, MixedPrecisionPlan)}


@dataclass(frozen=True)
class TensorPlan:
    """One engine I/O tensor, after the I/O contract is applied."""

    name: str                      # engine tensor name (escaped wherever it reaches code)
    ident: str                     # sanitized Python identifier used in generated code
    role: Role
    dtype: str                     # boundary dtype = what the caller hands over / gets back
    shape: tuple[int, ...]         # caller-facing shape at the fixed/opt shape
    min_shape: tuple[int, ...]     # profile bounds (== shape when static)
    max_shape: tuple[int, ...]
    format: str                    # TensorRT I/O format name (linear, hwc8, ...)
    memory: str                    # memory strategy
    bytes: int                     # bytes moved per inference at ``shape`` (format padding included)
    max_bytes: int                 # bytes of the buffer allocated (at ``max_shape``)
    naive_bytes: int               # bytes fp32 linear, original layout, no reducer (the baseline)
    predicted_ms: float            # predicted transfer time of ``bytes`` with this memory strategy
    naive_predicted_ms: float      # predicted pageable transfer time of ``naive_bytes``
    source: str                    # tensor of the original model this one comes from
    model_dtype: str               # dtype in the original model
    model_shape: tuple[int, ...]   # shape in the original model's layout (at opt)
    layout: str | None = None      # caller layout of an image input (NCHW/NHWC), None otherwise
    preprocess: dict[str, Any] | None = None
    reduce: dict[str, Any] | None = None
    # One string per caller-facing dim: an integer literal, an integer expression of the caller-facing
    # input dims written ``<input ident>[<axis>]`` (e.g. "images[2] // 8"), or "?" for a data-dependent
    # dim bounded by ``max_shape``. Grammar and evaluator: trtflow/plan/shape_expr.py (stdlib only).
    # Inputs carry the identity (``x[0]`` per dynamic dim). None only in plans written before it existed.
    shape_expr: tuple[str, ...] | None = None
    encoding: str | None = None    # jpeg | png | image: the caller hands over encoded files (None: an array)
    encoded_bytes: int | None = None   # typical encoded bytes per inference (all images of a batch)
    encoded_source: str | None = None  # where encoded_bytes comes from (sample file, typical_bytes, estimate)
    resize: dict[str, Any] | None = None  # {mode, min, max, to}: any H x W in min..max -> the model's ``to``
    sample: str | None = None      # the recipe's sample file (absolute path): validation's first input

    @property
    def dynamic(self) -> bool:
        return self.min_shape != self.max_shape

    @property
    def data_dependent(self) -> bool:
        """An output with a dim known only after running (NonZero, NMS): its buffer is an upper bound."""
        return self.shape_expr is not None and "?" in self.shape_expr

    @property
    def shape_after_run(self) -> bool:
        """An output whose shape only running tells (unless the engine can say before): data-dependent,
        or dynamic without a shape expression. A CPU engine gets an upper-bound array for it."""
        return self.data_dependent or (self.dynamic and self.shape_expr is None)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded uint8 image(s) at ``shape``: what a host decoder would copy to the GPU."""
        return math.prod(self.shape)

    @property
    def packed_bits(self) -> bool:
        """A threshold mask packed 8 values per byte along its last axis (``reduce.pack: bits``)."""
        return bool(self.reduce and self.reduce.get("pack") == "bits")

    @property
    def unpacked_shape(self) -> tuple[int, ...]:
        """The mask's shape before packing (``shape`` for unpacked tensors)."""
        if not self.packed_bits:
            return self.shape
        return self.shape[:-1] + (int(self.model_shape[-1]),)


@dataclass(frozen=True)
class FixedInput:
    """A model input the recipe fixes (``inputs.<name>.value``): a constant inside the engine, which the
    runner no longer takes. The reference run of validation feeds the original model this value."""

    name: str                      # the model's input name
    dtype: str                     # the model's dtype
    shape: tuple[int, ...]         # the model's (static) shape
    value: Any                     # nested lists / a scalar (``numpy.ndarray.tolist()``)
    why: str = ""                  # what fixing it folds (e.g. the If nodes that branch on it)

    def array(self) -> Any:
        """The value as a numpy array of the model's dtype and shape."""
        import numpy as np

        if self.dtype == "bfloat16":
            import ml_dtypes

            return np.asarray(self.value, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(self.shape)
        return np.asarray(self.value, dtype=self.dtype).reshape(self.shape)


@dataclass(frozen=True)
class Plan:
    """Everything the build and the generated runner need, resolved."""

    name: str
    class_name: str                # generated runner class, e.g. SegRunner
    recipe_path: str
    recipe_sha256: str
    model_path: str
    model_sha256: str
    opset: int
    precision: str
    tf32: bool
    inputs: tuple[TensorPlan, ...]
    outputs: tuple[TensorPlan, ...]
    streams: StreamsPlan
    build: BuildPlan
    validate: ValidatePlan
    budgets: BudgetsPlan
    link: LinkPlan
    warnings: tuple[str, ...] = ()
    serving: ServingPlan = field(default_factory=ServingPlan)
    trtflow_version: str = ""
    plan_version: int = PLAN_VERSION
    mixed_precision: MixedPrecisionPlan = field(default_factory=MixedPrecisionPlan)
    fixed_inputs: tuple[FixedInput, ...] = ()   # model inputs folded to constants (recipe `value:`)
    # If nodes whose condition tests input shapes and holds one way at every shape of the profile
    # (symbolic shape inference decided it): node name -> "then" | "else". Only that branch is built.
    if_branches: dict[str, str] = field(default_factory=dict)
    # Dynamic input dims the model needs equal, caller-facing ``ident[axis]`` (silero: its audio batch
    # ``input[0]`` and its state batch ``state[1]``): one dim name the model gives several inputs, or dims
    # its graph combines. Groups in input order, then axis; the first dim names the group (the one output
    # shape_exprs read). The runner refuses a request that breaks one; validate's shape sets honour them.
    dim_ties: tuple[tuple[str, ...], ...] = ()

    @property
    def tensors(self) -> tuple[TensorPlan, ...]:
        return self.inputs + self.outputs

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def tied_dims(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """``dim_ties`` as (index into ``inputs``, caller-facing axis) per dim, groups as in ``dim_ties``."""
        index = {t.ident: k for k, t in enumerate(self.inputs)}
        groups = []
        for group in self.dim_ties:
            dims = []
            for ref in group:
                ident, _, axis = ref.rstrip("]").partition("[")
                dims.append((index[ident], int(axis)))
            groups.append(tuple(dims))
        return tuple(groups)

    @property
    def bytes_in(self) -> int:
        return sum(t.bytes for t in self.inputs)

    @property
    def bytes_out(self) -> int:
        return sum(t.bytes for t in self.outputs)

    @property
    def naive_bytes(self) -> int:
        """Bytes of the naive fp32-in/fp32-out contract (a topk output's two tensors share one source)."""
        per_source = {(t.role, t.source): t.naive_bytes for t in self.tensors}
        return sum(per_source.values())

    @property
    def naive_predicted_ms(self) -> float:
        per_source = {(t.role, t.source): t.naive_predicted_ms for t in self.tensors}
        return sum(per_source.values())

    @property
    def predicted_ms(self) -> float:
        return sum(t.predicted_ms for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["validate"] = self.validate.to_dict()  # generators carry their kind (a ClassVar asdict skips)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        def tensor(t: dict[str, Any]) -> TensorPlan:
            kw = {f.name: t[f.name] for f in fields(TensorPlan) if f.name in t}
            for k in ("shape", "min_shape", "max_shape", "model_shape"):
                kw[k] = tuple(kw[k])
            if kw.get("shape_expr") is not None:
                kw["shape_expr"] = tuple(kw["shape_expr"])
            return TensorPlan(**kw)

        version = d.get("plan_version", PLAN_VERSION) if isinstance(d, dict) else PLAN_VERSION
        if version != PLAN_VERSION:
            raise ArtifactError(f"plan version {version!r} (written by trtflow {d.get('trtflow_version') or '?'}); "
                                f"this trtflow reads plan version {PLAN_VERSION}",
                                hint="rebuild the artifact with this trtflow: trtflow build <recipe> --force")
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for key, section in SECTIONS.items():
            if key in kw:
                kw[key] = section.from_dict(kw[key])
        kw["inputs"] = tuple(tensor(t) for t in d["inputs"])
        kw["outputs"] = tuple(tensor(t) for t in d["outputs"])
        kw["warnings"] = tuple(d.get("warnings", ()))
        kw["fixed_inputs"] = tuple(FixedInput(**{**f, "shape": tuple(f["shape"])}) for f in d.get("fixed_inputs", ()))
        kw["dim_ties"] = tuple(tuple(group) for group in d.get("dim_ties", ()))
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class BuildInfo:
    """What a backend's build produced (recorded in the build report)."""

    backend: str
    engine_file: str | None        # file name inside the artifact folder, None for ONNX-executed backends
    library_version: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
