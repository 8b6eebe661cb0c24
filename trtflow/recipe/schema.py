"""The recipe: what a user writes in YAML. Strict pydantic v2 models, ``extra="forbid"`` everywhere.

Only ``model`` is required, so the smallest recipe is one line; everything else has a default that
the planner resolves against the ONNX model and records in ``plan.json``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trtflow.plan.model import MemoryStrategy, Topology, Wait

SCHEMA_VERSION = 1

# Names a user may write for a dtype, mapped to the canonical numpy name.
DTYPE_ALIASES: dict[str, str] = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "int8": "int8", "uint8": "uint8", "int32": "int32", "int64": "int64", "bool": "bool",
}
Precision = Literal["fp32", "tf32", "fp16", "bf16"]
TensorFormatName = Literal[
    "linear", "chw2", "hwc8", "chw4", "chw16", "chw32", "dhwc8", "cdhw32", "hwc", "hwc16", "dhwc",
]
BackendName = Literal["auto", "tensorrt", "tensorrt_rtx", "onnxruntime", "torch"]
Encoding = Literal["raw", "jpeg", "png", "image"]


class _Strict(BaseModel):
    # strict: YAML `true` or "1" is not the integer 1; every value has the type the field says.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an artifact folder (None: it can). One rule for `name:` and file stems."""
    if not re.fullmatch(NAME_PATTERN, name):
        return "a name must be 1-64 of letters, digits, '_', '.', '-' and start with a letter or digit"
    return None


def _canonical_dtype(v: object) -> object:
    if isinstance(v, str):
        key = v.strip().lower()
        if key not in DTYPE_ALIASES:
            raise ValueError(f"unknown dtype {v!r}; allowed: {', '.join(sorted(set(DTYPE_ALIASES.values())))}")
        return DTYPE_ALIASES[key]
    return v


Dim = Annotated[int, Field(ge=1, le=1 << 20)]


class ModelSource(_Strict):
    """The ONNX file, relative to the recipe file, with an optional sha256 pin."""

    path: str = Field(description="ONNX file path, relative to the recipe's folder.")
    sha256: str | None = Field(default=None, description="Expected sha256 of the file (hex); a mismatch is an error.")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError("sha256 must be 64 hex characters")
        return v.lower() if v else v


class Profile(_Strict):
    """A dynamic-shape optimization profile: min <= opt <= max in every dimension."""

    min: list[Dim]
    opt: list[Dim]
    max: list[Dim]

    @model_validator(mode="after")
    def _ordered(self) -> Profile:
        _check_ordered(self.min, self.opt, self.max, "dimension")
        return self


def _check_ordered(lo_: list[int], mid_: list[int], hi_: list[int], what: str) -> None:
    if not (len(lo_) == len(mid_) == len(hi_)):
        raise ValueError("min, opt and max must have the same length")
    for i, (lo, mid, hi) in enumerate(zip(lo_, mid_, hi_)):
        if not lo <= mid <= hi:
            raise ValueError(f"{what} {i}: need min <= opt <= max, got {lo}, {mid}, {hi}")


class ShapeValues(_Strict):
    """The values a shape-tensor input takes (e.g. the target shape of a Reshape): min <= opt <= max each."""

    min: list[Annotated[int, Field(ge=0)]]
    opt: list[Annotated[int, Field(ge=0)]]
    max: list[Annotated[int, Field(ge=0)]]

    @model_validator(mode="after")
    def _ordered(self) -> ShapeValues:
        _check_ordered(self.min, self.opt, self.max, "value")
        return self


class Preprocess(_Strict):
    """Normalization fused into the engine: y = (x * scale - mean) / std, per channel."""

    scale: float = Field(default=1.0, description="Multiplier applied first (e.g. 0.00392156862745098 = 1/255).")
    mean: list[float] | None = Field(default=None, description="Per-channel mean subtracted after scaling.")
    std: list[float] | None = Field(default=None, description="Per-channel std divided after the mean.")

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v


class Resize(_Strict):
    """Resize in the engine: any image size within ``min``..``max`` (H, W) -> the model's fixed H x W.

    Fused into the engine as an ONNX ``Resize`` after the boundary cast (and transpose): the engine input
    takes the decoded (or handed-over) size, so no resized copy is ever made on the host.
    """

    mode: Literal["bilinear", "nearest"] = Field(
        default="bilinear", description="bilinear: half-pixel centres, no antialias (OpenCV INTER_LINEAR, torch "
        "interpolate(align_corners=False)); nearest: floor of asymmetric coordinates (OpenCV INTER_NEAREST).")
    min: list[Dim] = Field(default_factory=lambda: [1, 1], min_length=2, max_length=2,
                           description="Smallest accepted image [H, W].")
    max: list[Dim] | None = Field(default=None, min_length=2, max_length=2,
                                  description="Largest accepted image [H, W] (sizes the input buffer). "
                                  "Default: twice the model's H and W.")

    @model_validator(mode="after")
    def _ordered(self) -> Resize:
        if self.max is not None and any(lo > hi for lo, hi in zip(self.min, self.max)):
            raise ValueError(f"need min <= max in both dims, got min {self.min}, max {self.max}")
        return self


class InputSpec(_Strict):
    """The contract of one engine input: what the caller hands over and where it lives."""

    shape: list[Dim] | None = Field(default=None, description="Fixed shape in the model's layout (NCHW for images).")
    profile: Profile | None = Field(default=None, description="Dynamic shape range; exclusive with `shape`.")
    dtype: str | None = Field(default=None, description="Dtype the caller hands over (the engine's I/O dtype). Default: the model's.")
    layout: Literal["NCHW", "NHWC"] | None = Field(
        default=None, description="Layout the caller hands over; NHWC on an NCHW model adds a transpose in the engine.")
    format: TensorFormatName = Field(default="linear", description="TensorRT I/O format of the engine tensor.")
    memory: MemoryStrategy = Field(default="pinned", description="Host memory strategy for this tensor.")
    preprocess: Preprocess | None = Field(default=None, description="Normalization fused into the engine.")
    encoding: Encoding = Field(
        default="raw", description="raw: an array. jpeg | png | image (JPEG or PNG): the caller hands over the "
        "file's bytes; the runner decodes them (JPEG on the GPU with nvImageCodec, PNG and CPU-only runs on the "
        "host) into the engine's uint8 NHWC input.")
    resize: Resize | None = Field(default=None, description="Resize any image size to the model's H x W in the engine.")
    sample: str | None = Field(default=None, description="An encoded file (relative to the recipe) the planner "
                               "reads for the bytes per inference and checks against the shape.")
    typical_bytes: int | None = Field(default=None, ge=1, description="Typical encoded file size in bytes, "
                                      "for the plan's bytes per inference when no `sample` is given.")
    value: int | float | bool | list[int | float | bool] | None = Field(
        default=None, description="Fix this input to a constant (a number for a rank-0 or one-element input, a "
        "list for a rank-1 one): it is folded into the engine and the runner no longer takes it. For mode inputs "
        "such as a sample rate that the model branches on (`If`): only the branch taken is built.")

    _dtype = field_validator("dtype", mode="before")(classmethod(lambda cls, v: _canonical_dtype(v)))

    @model_validator(mode="after")
    def _shape_xor_profile(self) -> InputSpec:
        if self.shape is not None and self.profile is not None:
            raise ValueError("give either `shape` or `profile`, not both")
        if self.encoding == "raw" and (self.sample is not None or self.typical_bytes is not None):
            raise ValueError("`sample` and `typical_bytes` describe encoded files: set `encoding` (jpeg, png, image)")
        if self.sample is not None and self.typical_bytes is not None:
            raise ValueError("give either `sample` or `typical_bytes`, not both")
        if self.value is not None:
            others = sorted(self.model_fields_set - {"value"})
            if others:
                raise ValueError(f"`value` fixes the input inside the engine; {', '.join(others)} "
                                 f"{'does' if len(others) == 1 else 'do'} not apply to it: drop "
                                 f"{'it' if len(others) == 1 else 'them'}")
        return self


class ArgmaxReduce(_Strict):
    op: Literal["argmax"]
    axis: int = 1
    dtype: Literal["uint8", "int32", "int64"] = "uint8"


class ThresholdReduce(_Strict):
    op: Literal["threshold"]
    value: float = 0.5
    dtype: Literal["uint8", "bool"] = "uint8"
    pack: Literal["bits"] | None = Field(
        default=None, description="bits: 8 mask values per byte along the last axis (MSB first, like "
        "numpy.packbits), 8x fewer D2H bytes than uint8; `runner.unpack(name, array)` restores the mask.")

    @model_validator(mode="after")
    def _packed_bytes(self) -> ThresholdReduce:
        if self.pack == "bits" and self.dtype != "uint8":
            raise ValueError("pack: bits returns uint8 bytes; drop `dtype: bool`")
        return self


class TopKReduce(_Strict):
    op: Literal["topk"]
    k: int = Field(default=5, ge=1)
    axis: int = -1


class SoftmaxReduce(_Strict):
    op: Literal["softmax"]
    axis: int = 1


class SigmoidReduce(_Strict):
    op: Literal["sigmoid"]


Reduce = Annotated[
    ArgmaxReduce | ThresholdReduce | TopKReduce | SoftmaxReduce | SigmoidReduce,
    Field(discriminator="op"),
]


class OutputSpec(_Strict):
    """The contract of one engine output: what the caller wants back and where it lands."""

    dtype: str | None = Field(default=None, description="Dtype the caller wants back (narrowing is done in the engine).")
    format: TensorFormatName = Field(default="linear", description="TensorRT I/O format of the engine tensor.")
    memory: MemoryStrategy = Field(default="pinned", description="Host memory strategy for this tensor.")
    reduce: Reduce | None = Field(default=None, description="Reducer computed on the GPU before D2H.")
    max_shape: list[Annotated[int, Field(ge=0, le=1 << 30)]] | None = Field(
        default=None, description="Upper bound of an output whose size depends on tensor values (NonZero, NMS, "
        "an If on a runtime value), in the model's layout before a reducer: sizes the output buffer; the "
        "engine reports the actual shape per run. `trtflow plan` says when an output needs it.")

    _dtype = field_validator("dtype", mode="before")(classmethod(lambda cls, v: _canonical_dtype(v)))


class Streams(_Strict):
    """Stream topology of the generated runner."""

    topology: Topology = Field(default="sync", description="sync | async | pipelined")
    depth: int = Field(default=2, ge=1, le=16, description="Buffer sets in flight for `pipelined`.")
    cuda_graph: bool = Field(default=False, description="Capture copy-in + enqueue + copy-out in a CUDA graph.")
    wait: Wait = Field(
        default="block", description="How the host waits for the GPU: `block` sleeps on blocking-sync CUDA events "
        "(no CPU burnt; a wake-up of some microseconds; trtexec's default), `spin` busy-waits on a core "
        "(lowest latency; trtexec --useSpinWait).")


class ServingBatching(_Strict):
    """Dynamic batching of a pool's asyncio requests (needs a batch profile on every input)."""

    window_ms: float = Field(default=2.0, gt=0, le=1000, description="How long the first request of a batch "
                             "waits for others (latency added at low load).")
    max_batch: int | None = Field(default=None, ge=1, description="Samples per batch at most; default: the "
                                  "profile's max batch.")


class Serving(_Strict):
    """How `RunnerPool` (trtflow.runtime.pool) serves this artifact; a single runner ignores it."""

    instances: int = Field(default=1, ge=1, le=64, description="Engine instances per device, each with its own "
                           "buffer sets and streams (TensorRT: execution contexts of one engine).")
    devices: Literal["all"] | list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        default=None, description="GPUs to run on: `all` or indices like [0, 1] (one engine each); "
        "default: the current device. Ignored on the CPU.")
    max_queue: int = Field(default=1024, ge=0, le=1 << 20, description="Requests that may wait for a busy pool; "
                           "one more fails at once with Overloaded (HTTP 503), never unbounded memory.")
    batching: ServingBatching | None = Field(default=None, description="Dynamic batching of asyncio requests "
                                             "(off by default).")

    @field_validator("devices")
    @classmethod
    def _distinct(cls, v: object) -> object:
        if isinstance(v, list):
            if not v:
                raise ValueError("name at least one GPU, or write `all`")
            if len(set(v)) != len(v):
                raise ValueError("a GPU is named twice (use `instances` for several engines on one GPU)")
        return v


class Build(_Strict):
    backend: BackendName = Field(default="auto", description="auto picks the best builder present and says which.")
    workspace_mib: int = Field(default=4096, ge=16, description="TensorRT workspace memory pool limit.")
    optimization_level: int = Field(default=3, ge=0, le=5, description="TensorRT builder optimization level.")
    timing_cache: str | None = Field(default=None, description="Timing cache file (relative to the recipe).")
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = Field(default=False, description="Embed a lean runtime (loading needs --allow-host-code).")
    compute_capabilities: list[str] = Field(
        default_factory=list, description="TensorRT-RTX targets, e.g. ['8.6', '12.0']; empty = the builder's default.")
    detailed_profiling: bool = Field(default=True, description="ProfilingVerbosity.DETAILED for `trtflow inspect`.")
    max_io_mib: int | None = Field(
        default=None, ge=1, description="Largest I/O buffer memory the runner may allocate (every tensor at its "
        "max shape, times the buffer sets), MiB. Default: this host's memory, and the GPU's when one is visible; "
        "set it when building for a larger machine than this one.")
    shape_inputs: dict[str, ShapeValues] = Field(
        default_factory=dict, description="TensorRT: the value range of each shape-tensor input (an input whose "
        "values are a shape, e.g. a Reshape target), for the optimization profile.")


Formula = Literal["elemwise", "allclose"]
Statistic = Literal["max", "mean", "median", "p99"]


class Tolerance(_Strict):
    """Absolute and relative tolerance of a float output; a field left out keeps the policy's default."""

    atol: float | None = Field(default=None, ge=0, le=1e6, description="Absolute tolerance. Default: the "
                               "policy's for this output, from the build's precision and the output's dtype "
                               "(fp32 1e-4; docs/numerics.md, 'Tolerances').")
    rtol: float | None = Field(default=None, ge=0, le=1e6, description="Relative tolerance. Default: the "
                               "policy's, as for atol.")


class Metric(_Strict):
    """A task metric for reduced outputs, checked besides the numeric tolerance."""

    kind: Literal["agreement", "iou", "topk_overlap"]
    min: float = Field(ge=0, le=1, description="Smallest acceptable value (fraction).")
    threshold: float | None = Field(default=None, description="Compare both outputs binarized at >= this "
                                    "value (a probability map's decision, e.g. 0.3 for a DB text detector).")
    axis: int | None = Field(default=None, description="Compare the argmax of both outputs along this axis "
                             "(a softmax's decision; negative counts from the last dim).")


class RangeGenerator(_Strict):
    """Uniform values in [low, high) (floats) or integers in [low, high] (integer inputs)."""

    kind: Literal["range"]
    low: float = 0.0
    high: float = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> RangeGenerator:
        if self.high < self.low:
            raise ValueError(f"need low <= high, got {self.low} > {self.high}")
        return self


class NormalGenerator(_Strict):
    """Gaussian values (float inputs)."""

    kind: Literal["normal"]
    mean: float = 0.0
    std: float = Field(default=1.0, ge=0)


class ChoiceGenerator(_Strict):
    """Sample k fills the whole input with ``values[k % len(values)]``: a sample rate, a flag, a mode."""

    kind: Literal["choice"]
    values: list[int | float] = Field(min_length=1, description="e.g. [8000, 16000] for a sample-rate input.")


class ZerosGenerator(_Strict):
    """All zeros: the initial recurrent state of a streaming model."""

    kind: Literal["zeros"]


class ImageGenerator(_Strict):
    """A procedural photo-like image (smooth shading, objects with edges, 1/f texture, text-like strokes)."""

    kind: Literal["image"]
    range: list[float] | None = Field(min_length=2, max_length=2,
        default=None, description="Pixel value range before mean/std; default [0, 255] for integer inputs, [0, 1] for floats.")
    mean: list[float] | None = Field(default=None, description="Per-channel mean subtracted (for models that "
                                     "take normalized images without a recipe `preprocess`).")
    std: list[float] | None = Field(default=None, description="Per-channel std divided after the mean.")
    channels_last: bool | None = Field(
        default=None, description="Channel axis last (NHWC); default: from the input's layout, else NCHW.")


Generator = Annotated[
    RangeGenerator | NormalGenerator | ChoiceGenerator | ZerosGenerator | ImageGenerator,
    Field(discriminator="kind"),
]
ShapeSet = Literal["min", "opt", "max", "mixed"] | dict[str, list[Dim]]


class Validate(_Strict):
    formula: Formula = Field(
        default="elemwise",
        description="elemwise (Polygraphy): fail where |a-b| > atol AND |a-b|/|b| > rtol. "
        "allclose (numpy): fail where |a-b| > atol + rtol*|b|.")
    statistic: Statistic = Field(default="max", description="Statistic printed and gated per output.")
    default: Tolerance | None = Field(default=None, description="Tolerance for float outputs not named below "
                                      "(default: from the precision and each output's dtype, see docs/numerics.md).")
    tolerances: dict[str, Tolerance] = Field(default_factory=dict, description="Per-output tolerances.")
    metrics: dict[str, list[Metric]] = Field(default_factory=dict, description="Per-output task metrics.")
    samples: int = Field(default=2, ge=1, le=1000, description="Samples per shape set (with `data`: the file's samples).")
    seed: int = 0
    generator: Literal["uniform", "normal"] = Field(
        default="uniform", description="Inputs without an entry in `inputs`: uniform [0, 1) or standard normal floats.")
    inputs: dict[str, Generator] = Field(default_factory=dict, description="Per-input generators, by input name.")
    shapes: list[ShapeSet] | None = Field(
        default=None, description="Input shape sets to validate: min, opt, max, mixed (every dynamic dim "
        "off opt, H != W) or {input: shape} in the model's layout. Default: [opt] for static inputs, [opt, min, max, "
        "mixed] for dynamic. `validate --shapes` replaces it.")
    data: str | None = Field(default=None, description="An .npz file of input arrays (relative to the recipe): "
                             "key <input> (one sample, or samples stacked on a new axis 0) or <k>/<input> "
                             "(sample k). Inputs it lacks are generated.")


class MixedPrecision(_Strict):
    """Which layers fp16/bf16 lowering keeps in fp32 (the rules of ModelOpt AutoCast)."""

    keep_fp32_ops: list[str] = Field(default_factory=list, description="Op types kept in fp32, e.g. [Softmax].")
    keep_fp32_nodes: list[str] = Field(
        default_factory=list, description="Node names kept in fp32; shell-style wildcards, e.g. '/model.22/*'.")
    init_max: float = Field(default=65504.0, gt=0, description="fp16: a node reading a weight with |x| above "
                            "this stays fp32 (65504 = fp16 max; the converter would clamp it).")
    data_max: float | None = Field(default=512.0, gt=0, description="fp16: a node whose input or output reaches "
                                   "|x| above this on the calibration run stays fp32 (AutoCast's default 512); "
                                   "null turns the rule off.")
    calibrate: bool = Field(default=True, description="fp16: run the fp32 model once per validation sample on "
                            "onnxruntime (CPU) at build time to measure activation ranges for `data_max`.")


class Budgets(_Strict):
    """Performance budgets checked by `trtflow bench --check`."""

    p99_latency_ms: float | None = Field(default=None, gt=0)
    p50_latency_ms: float | None = Field(default=None, gt=0)
    h2d_ms: float | None = Field(default=None, gt=0)
    d2h_ms: float | None = Field(default=None, gt=0)
    min_throughput: float | None = Field(default=None, gt=0, description="Samples per second.")


class Link(_Strict):
    """The host-device link the planner predicts transfer times with."""

    h2d_gbps: float = Field(default=54.0, gt=0, description="Pinned H2D bandwidth, GB/s (PCIe Gen5 x16 ~54).")
    d2h_gbps: float = Field(default=54.0, gt=0, description="Pinned D2H bandwidth, GB/s.")
    pageable_gbps: float = Field(default=10.0, gt=0, description="Pageable bandwidth, GB/s.")
    copy_latency_us: float = Field(default=4.2, ge=0, description="Fixed cost of one pinned copy (4 KiB copy: 4.2 us).")
    pageable_latency_us: float = Field(default=8.1, ge=0, description="Fixed cost of one pageable copy.")


class Recipe(_Strict):
    """A trtflow recipe. Only `model` is required."""

    schema_version: Literal[1] = 1  # SCHEMA_VERSION
    name: str | None = Field(default=None, description="Artifact name; default: the recipe file's stem.")
    model: str | ModelSource = Field(description="ONNX file (relative to the recipe) or {path, sha256}.")
    precision: Precision = Field(default="fp32", description="fp32 | tf32 | fp16 | bf16 (lowered in the ONNX graph).")
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    streams: Streams = Field(default_factory=Streams)
    serving: Serving = Field(default_factory=Serving)
    build: Build = Field(default_factory=Build)
    mixed_precision: MixedPrecision = Field(default_factory=MixedPrecision)
    validate_: Validate = Field(default_factory=Validate, alias="validate")
    budgets: Budgets = Field(default_factory=Budgets)
    link: Link = Field(default_factory=Link)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True,
                              strict=True, allow_inf_nan=False)

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version(cls, v: object) -> object:
        if isinstance(v, bool):  # True == 1 would pass Literal[1]
            raise ValueError(f"schema_version must be the integer 1, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (why := name_problem(v)):
            raise ValueError(why)
        return v

    @property
    def model_source(self) -> ModelSource:
        return self.model if isinstance(self.model, ModelSource) else ModelSource(path=self.model)
