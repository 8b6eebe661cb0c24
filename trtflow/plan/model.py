"""The plan: a frozen, JSON-serializable description of exactly what gets built and run.

Every later stage (graph passes, backends, codegen, runtime, validate, bench) reads a :class:`Plan`,
never the recipe. ``plan.json`` in the artifact folder is this object, so it is printable and diffable.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Role = Literal["input", "output"]


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
    streams: dict[str, Any]
    build: dict[str, Any]
    validate: dict[str, Any]
    budgets: dict[str, Any]
    link: dict[str, Any]
    warnings: tuple[str, ...] = ()
    serving: dict[str, Any] = field(default_factory=dict)  # instances, devices, max_queue (runtime/pool.py)
    trtflow_version: str = ""
    plan_version: int = 1
    mixed_precision: dict[str, Any] = field(default_factory=dict)  # recipe `mixed_precision:` (fp16/bf16 lowering)
    fixed_inputs: tuple[FixedInput, ...] = ()   # model inputs folded to constants (recipe `value:`)
    # If nodes whose condition tests input shapes and holds one way at every shape of the profile
    # (symbolic shape inference decided it): node name -> "then" | "else". Only that branch is built.
    if_branches: dict[str, str] = field(default_factory=dict)

    @property
    def tensors(self) -> tuple[TensorPlan, ...]:
        return self.inputs + self.outputs

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

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
        return asdict(self)

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

        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["inputs"] = tuple(tensor(t) for t in d["inputs"])
        kw["outputs"] = tuple(tensor(t) for t in d["outputs"])
        kw["warnings"] = tuple(d.get("warnings", ()))
        kw["fixed_inputs"] = tuple(FixedInput(**{**f, "shape": tuple(f["shape"])}) for f in d.get("fixed_inputs", ()))
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
