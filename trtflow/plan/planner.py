"""Planner: recipe + ONNX metadata -> a resolved, checked, frozen :class:`Plan`. Builds nothing."""

from __future__ import annotations

import difflib
import keyword
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from trtflow import __version__
from trtflow.errors import ModelError
from trtflow.plan.formats import ITEMSIZE, check_format, inflation, nbytes
from trtflow.plan.model import (
    BudgetsPlan,
    BuildPlan,
    FixedInput,
    Generator,
    LinkPlan,
    MixedPrecisionPlan,
    Plan,
    ServingPlan,
    StreamsPlan,
    TensorPlan,
    ValidatePlan,
    make_generator,
)
from trtflow.plan.onnxmeta import IOInfo, ModelInfo, is_named_dim, read_model_info
from trtflow.plan.shape_expr import DATA_DEPENDENT, ShapeExpr, ShapeExprError, identity, parse
from trtflow.plan.symbolic import Unresolved
from trtflow.recipe.loader import LoadedRecipe
from trtflow.recipe.schema import InputSpec, OutputSpec, TopKReduce
from trtflow.validate.policy import resolve as resolve_validation

FLOATS = ("float32", "float16", "bfloat16")


def sanitize_identifiers(names: list[str]) -> dict[str, str]:
    """Map arbitrary tensor names to distinct, valid, non-keyword Python identifiers."""
    out: dict[str, str] = {}
    from trtflow.codegen.runner import RESERVED_IDENTS

    used: set[str] = set(RESERVED_IDENTS)  # names the generated methods use
    for name in names:
        ident = re.sub(r"\W", "_", name, flags=re.ASCII).strip("_") or "tensor"
        ident = ident.lower() if ident.isupper() else ident
        if ident[0].isdigit():
            ident = "t_" + ident
        if keyword.iskeyword(ident) or keyword.issoftkeyword(ident):
            ident += "_"
        base, n = ident, 2
        while ident in used:
            ident, n = f"{base}_{n}", n + 1
        used.add(ident)
        out[name] = ident
    return out


def class_name_for(name: str) -> str:
    parts = re.split(r"[^A-Za-z0-9]+", name)
    camel = "".join(p[:1].upper() + p[1:] for p in parts if p) or "Model"
    if camel[0].isdigit():
        camel = "M" + camel
    return camel + "Runner"


def _ms(nbytes_: int, gbps: float, latency_us: float) -> float:
    return nbytes_ / (gbps * 1e9) * 1e3 + latency_us * 1e-3


def _link_cost(memory: str, role: str, link: dict[str, Any]) -> tuple[float, float] | None:
    """(GB/s, fixed us per copy) of a strategy; None when nothing crosses the bus by copy."""
    if memory == "device":
        return None
    if memory == "pageable":
        return float(link["pageable_gbps"]), float(link["pageable_latency_us"])
    if memory == "mapped":  # read by the kernel over the link: bandwidth-bound, no copy launched
        return float(link["h2d_gbps"] if role == "input" else link["d2h_gbps"]), 0.0
    return float(link["h2d_gbps"] if role == "input" else link["d2h_gbps"]), float(link["copy_latency_us"])


class _Planner:
    def __init__(self, loaded: LoadedRecipe, info: ModelInfo) -> None:
        self.loaded, self.info, self.recipe = loaded, info, loaded.recipe
        self.warnings: list[str] = []
        self.if_branches: dict[str, str] = {}
        self.constraints: tuple[tuple[str, str], ...] = ()   # dims the model needs equal (symbolic inference)
        self.link = self.recipe.link.model_dump()

    def err(self, loc: tuple[str | int, ...], msg: str, hint: str | None = None) -> Exception:
        return self.loaded.error(loc, msg, hint)

    def check_names(self) -> None:
        for section, known in (("inputs", self.info.inputs), ("outputs", self.info.outputs)):
            names = [t.name for t in known]
            for name in getattr(self.recipe, section):
                if name not in names:
                    close = difflib.get_close_matches(name, names, n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"the model's {section}: {', '.join(names)}"
                    raise self.err((section, name), f"the model has no {section[:-1]} named {name!r}", hint)
        names = [t.name for t in self.info.inputs]
        for name in self.recipe.validate_.inputs:  # per-input generators
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                raise self.err(("validate", "inputs", name), f"the model has no input named {name!r}",
                               f"did you mean {close[0]!r}?" if close else f"the model's inputs: {', '.join(names)}")

    # -- inputs -----------------------------------------------------------------------------------
    def input_shapes(self, io: IOInfo, spec: InputSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        loc: tuple[str | int, ...] = ("inputs", io.name)
        if spec.shape is not None:
            lo = opt = hi = tuple(spec.shape)
            loc = loc + ("shape",)
        elif spec.profile is not None:
            lo, opt, hi = tuple(spec.profile.min), tuple(spec.profile.opt), tuple(spec.profile.max)
            loc = loc + ("profile",)
        else:
            if not all(isinstance(d, int) for d in io.dims):
                raise self.err(loc, f"input {io.name!r} has dynamic dims {list(io.dims)} in the model",
                               hint="declare `shape: [...]` or `profile: {min, opt, max}` for it")
            lo = opt = hi = tuple(int(d) for d in io.dims)  # type: ignore[arg-type]
        if len(opt) != len(io.dims):
            raise self.err(loc, f"rank {len(opt)} contradicts the model's rank {len(io.dims)} ({list(io.dims)})")
        for i, d in enumerate(io.dims):
            if isinstance(d, int) and not (lo[i] == opt[i] == hi[i] == d):
                raise self.err(loc, f"dimension {i} is fixed to {d} in the model, recipe says "
                               f"{lo[i] if lo == hi else (lo[i], opt[i], hi[i])}",
                               hint=f"use {d} for dimension {i}, or re-export the model with that dim dynamic")
        return lo, opt, hi

    def plan_input(self, io: IOInfo, spec: InputSpec, ident: str) -> TensorPlan:
        lo, opt, hi = self.input_shapes(io, spec)
        loc = ("inputs", io.name)
        encoded = spec.encoding != "raw"
        dtype = spec.dtype or ("uint8" if encoded else io.dtype)
        layout = spec.layout or ("NHWC" if encoded else None)
        if encoded:
            self.check_encoded(io, spec, opt, dtype, layout)
        if spec.preprocess is not None and io.dtype not in FLOATS:
            raise self.err(loc + ("preprocess",), f"preprocessing needs a float model input, {io.name!r} is {io.dtype}")
        if dtype != io.dtype and (dtype not in FLOATS + ("uint8", "int8") or io.dtype not in FLOATS):
            raise self.err(loc + ("dtype",), f"cannot hand over {dtype} for a {io.dtype} model input",
                           hint="boundary casts go between float types, or from uint8/int8 to float")
        if layout is not None and len(opt) != 4:
            raise self.err(loc + ("layout",), f"layout applies to 4-D image inputs, {io.name!r} has rank {len(opt)}")
        if spec.preprocess is not None:
            channels = opt[1]
            for key in ("mean", "std"):
                vals = getattr(spec.preprocess, key)
                if vals is not None and len(vals) not in (1, channels):
                    raise self.err(loc + ("preprocess", key), f"{len(vals)} values for {channels} channels")

        def caller(shape: tuple[int, ...]) -> tuple[int, ...]:
            return (shape[0], shape[2], shape[3], shape[1]) if layout == "NHWC" else shape

        if spec.format != "linear" and layout == "NHWC":
            raise self.err(loc + ("format",), f"format {spec.format} describes an NCHW engine tensor; "
                           "layout NHWC already makes the engine take channel-last input",
                           hint="use format: linear with layout: NHWC, or layout: NCHW with a vectorized format")
        resize = None
        c_lo, c_opt, c_hi = caller(lo), caller(opt), caller(hi)
        if spec.resize is not None:
            resize, (c_lo, c_opt, c_hi) = self.resize_shapes(io, spec, lo, opt, hi, layout)
        self.check_format(loc, spec.format, dtype, len(opt), opt)
        extra: dict[str, Any] = {}
        codec = "raw"
        if encoded:
            extra, codec = self.encoded_bytes(io, spec, c_opt, c_lo, c_hi, resize is not None)
        t = self.tensor(io.name, ident, "input", dtype, c_opt, c_lo, c_hi, spec.format, spec.memory, io, opt,
                        layout=layout, preprocess=spec.preprocess.model_dump() if spec.preprocess else None,
                        resize=resize, shape_expr=identity(ident, c_lo, c_hi), **extra)
        if codec == "jpeg" and t.encoded_bytes is not None:  # decoded on the GPU: the file crosses the bus
            cost = _link_cost(spec.memory, "input", self.link)
            t = replace(t, bytes=t.encoded_bytes, predicted_ms=_ms(t.encoded_bytes, *cost) if cost else 0.0)
        return t

    def check_shared_dims(self, inputs: list[tuple[IOInfo, TensorPlan]]) -> None:
        """A dim name the model gives several inputs (``batch`` of audio and state) is one dim: the
        recipe must give it one range everywhere, or the engine is built for shapes the model refuses."""
        seen: dict[str, tuple[str, int, tuple[int, int, int]]] = {}
        for io, t in inputs:
            model = dict(zip(("min_shape", "shape", "max_shape"), (t.min_shape, t.shape, t.max_shape)))
            if t.layout == "NHWC":  # back to the model's axes
                model = {k: (v[0], v[3], v[1], v[2]) for k, v in model.items()}
            for axis, d in enumerate(io.dims):
                if not is_named_dim(d):
                    continue
                assert isinstance(d, str)
                rng = (model["min_shape"][axis], model["shape"][axis], model["max_shape"][axis])
                if d in seen and seen[d][2] != rng:
                    other, other_axis, other_rng = seen[d]
                    raise self.err(("inputs", io.name), f"dimension {axis} of {io.name!r} and dimension "
                                   f"{other_axis} of {other!r} are the same dim {d!r} in the model, but the "
                                   f"recipe gives them (min, opt, max) {rng} and {other_rng}",
                                   hint="give both the same range")
                seen.setdefault(d, (io.name, axis, rng))

    def dim_ties(self, inputs: list[tuple[IOInfo, TensorPlan]]) -> tuple[tuple[str, ...], ...]:
        """``plan.dim_ties``: the dynamic caller-facing dims the model needs equal, grouped. Two sources:
        a dim name the model gives several inputs (one dim, check_shared_dims), and two dims its graph
        combines (symbolic inference's merges: silero's spox export names no dim, its LSTM adds them)."""
        order = {t.ident: k for k, (_, t) in enumerate(inputs)}
        parent: dict[tuple[str, int], tuple[str, int]] = {}

        def root(d: tuple[str, int]) -> tuple[str, int]:
            while parent.setdefault(d, d) != d:
                d = parent[d]
            return d

        def tie(a: tuple[str, int], b: tuple[str, int]) -> None:
            ra, rb = sorted((root(a), root(b)), key=lambda d: (order[d[0]], d[1]))
            parent[rb] = ra

        named: dict[str, tuple[str, int]] = {}
        for io, t in inputs:
            for axis, d in enumerate(io.dims):
                if is_named_dim(d):
                    caller = (0, 3, 1, 2)[axis] if t.layout == "NHWC" else axis
                    tie(named.setdefault(str(d), (t.ident, caller)), (t.ident, caller))
        for lhs, rhs in self.constraints:
            a, b = parse(lhs), parse(rhs)
            if _ref(a) == lhs and _ref(b) == rhs:  # dim == dim, not arithmetic of dims
                tie(next(iter(a.refs)), next(iter(b.refs)))
        dynamic = {(t.ident, i) for _, t in inputs for i, (lo, hi) in enumerate(zip(t.min_shape, t.max_shape))
                   if lo != hi}
        groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for ref in sorted(parent, key=lambda r: (order[r[0]], r[1])):
            if ref in dynamic:
                groups.setdefault(root(ref), []).append(ref)
        return tuple(tuple(f"{i}[{a}]" for i, a in g) for g in groups.values() if len(g) > 1)

    def fixed_input(self, io: IOInfo, spec: InputSpec) -> FixedInput:
        """``inputs.<name>.value``: the input becomes a constant of the engine (graph pass ``fix_inputs``)."""
        import numpy as np

        loc: tuple[str | int, ...] = ("inputs", io.name, "value")
        if not all(isinstance(d, int) for d in io.dims):
            raise self.err(loc, f"input {io.name!r} has dynamic dims {list(io.dims)}: only a fixed-shape input "
                           "can be fixed to a value", hint="fix rank-0 (scalar) or small static inputs")
        shape = tuple(int(d) for d in io.dims)  # type: ignore[arg-type]
        value = spec.value
        want = "an integer" if io.dtype.startswith(("int", "uint")) else "true or false" if io.dtype == "bool" else "a number"
        items = value if isinstance(value, list) else [value]
        ok = all((isinstance(v, bool) if io.dtype == "bool" else not isinstance(v, bool) and
                  (isinstance(v, int) or (isinstance(v, float) and io.dtype in FLOATS))) for v in items)
        if not ok:
            raise self.err(loc, f"input {io.name!r} is {io.dtype}: its value must be {want}, got {value!r}")
        arr = np.asarray(value, dtype=io.dtype if io.dtype != "bfloat16" else "float32")
        if isinstance(value, list):
            if len(shape) != 1 or shape[0] != len(value):
                raise self.err(loc, f"{len(value)} values for input {io.name!r} of shape {list(shape)}",
                               hint="a list fixes a rank-1 input of that length; a number a scalar input")
        elif math.prod(shape) != 1:
            raise self.err(loc, f"one number for input {io.name!r} of shape {list(shape)} ({math.prod(shape)} values)",
                           hint="a number fixes a rank-0 or one-element input")
        if arr.dtype.kind in "iu" and not np.array_equal(arr, np.asarray(value)):
            raise self.err(loc, f"{value!r} does not fit {io.dtype}")
        arr = arr.reshape(shape)
        ifs = [sw.node for sw in self.info.switches if sw.input == io.name]
        why = (f"the If node{'s' if len(ifs) > 1 else ''} {', '.join(repr(n) for n in ifs[:3])}"
               f"{' and more' if len(ifs) > 3 else ''} branching on it fold{'s' if len(ifs) == 1 else ''} to one branch"
               if ifs else "folded into the engine")
        return FixedInput(name=io.name, dtype=io.dtype, shape=shape, value=arr.tolist(), why=why)

    # -- encoded inputs and resize ----------------------------------------------------------------------
    def check_encoded(self, io: IOInfo, spec: InputSpec, opt: tuple[int, ...], dtype: str,
                      layout: str | None) -> None:
        loc = ("inputs", io.name)
        if len(opt) != 4:
            raise self.err(loc + ("encoding",), f"encoded images need a 4-D image input, {io.name!r} has rank {len(opt)}")
        if opt[1] != 3:
            raise self.err(loc + ("encoding",), f"encoded images decode to RGB (3 channels); the model's "
                           f"input {io.name!r} has {opt[1]} channels in dimension 1 (NCHW)")
        if dtype != "uint8":
            raise self.err(loc + ("dtype",), f"decoded images are uint8, not {dtype}",
                           hint="drop `dtype` or write dtype: uint8 (preprocess does the float conversion)")
        if layout != "NHWC":
            raise self.err(loc + ("layout",), "decoders produce channel-last (NHWC) images",
                           hint="drop `layout` or write layout: NHWC; the engine transposes on the GPU")
        if spec.format != "linear":
            raise self.err(loc + ("format",), f"decoded images are written linear, not {spec.format}")
        if spec.memory not in ("pinned", "pageable"):
            raise self.err(loc + ("memory",), f"memory {spec.memory} does not apply to encoded files",
                           hint="pinned (default: the file bytes are staged in page-locked memory) or pageable")

    def resize_shapes(self, io: IOInfo, spec: InputSpec, lo: tuple[int, ...], opt: tuple[int, ...],
                      hi: tuple[int, ...], layout: str | None
                      ) -> tuple[dict[str, Any], tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """The resize record and the caller-side shapes: any H x W within resize.min..max."""
        loc = ("inputs", io.name, "resize")
        rs = spec.resize
        assert rs is not None
        if len(opt) != 4:
            raise self.err(loc, f"resize applies to 4-D image inputs, {io.name!r} has rank {len(opt)}")
        if not (lo[2:] == opt[2:] == hi[2:]):
            raise self.err(loc, f"resize needs a fixed model size to resize to; {io.name!r} has H, W "
                           f"{lo[2]}..{hi[2]}, {lo[3]}..{hi[3]}",
                           hint="declare `shape: [N, C, H, W]` for the size the model should see")
        to = [int(opt[2]), int(opt[3])]
        rmin = [int(v) for v in rs.min]
        rmax = [int(v) for v in rs.max] if rs.max is not None else [2 * to[0], 2 * to[1]]
        if any(a > b for a, b in zip(rmin, rmax)):
            raise self.err(loc + ("min",), f"resize.min {rmin} exceeds resize.max {rmax}")
        mid = [min(max(t, a), b) for t, a, b in zip(to, rmin, rmax)]  # profile opt: the model size if accepted

        def shape(n: int, hw: list[int]) -> tuple[int, ...]:
            return (n, hw[0], hw[1], opt[1]) if layout == "NHWC" else (n, opt[1], hw[0], hw[1])

        record = {"mode": rs.mode, "min": rmin, "max": rmax, "to": to}
        return record, (shape(lo[0], rmin), shape(opt[0], mid), shape(hi[0], rmax))

    def encoded_bytes(self, io: IOInfo, spec: InputSpec, c_opt: tuple[int, ...], c_lo: tuple[int, ...],
                      c_hi: tuple[int, ...], resized: bool) -> tuple[dict[str, Any], str]:
        """(encoding, encoded_bytes per inference and where that number comes from; the codec the bytes
        are planned for: ``image`` counts as JPEG unless the sample is a PNG). Checks ``sample``."""
        from trtflow.decode.header import ImageProblem, check_rgb, inspect

        loc = ("inputs", io.name)
        batch = c_opt[0]
        codec = spec.encoding
        if spec.sample is not None:
            path = self.loaded.resolve(spec.sample, loc + ("sample",))
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise self.err(loc + ("sample",), f"cannot read sample {spec.sample!r}: {exc.strerror}") from None
            try:
                head = inspect(data, expect=spec.encoding)
                check_rgb(head)
            except ImageProblem as exc:
                raise self.err(loc + ("sample",), f"sample {spec.sample!r}: {exc}") from None
            (h_lo, w_lo), (h_hi, w_hi) = c_lo[1:3], c_hi[1:3]
            if not (h_lo <= head.height <= h_hi and w_lo <= head.width <= w_hi):
                want = f"{w_lo}x{h_lo}" if (h_lo, w_lo) == (h_hi, w_hi) else f"{w_lo}..{w_hi} x {h_lo}..{h_hi}"
                raise self.err(loc + ("sample",), f"sample {spec.sample!r} is {head.width}x{head.height} (WxH), "
                               f"the engine input takes {want}",
                               hint="add `resize: {mode: bilinear}`" if not resized else "widen resize.min/max")
            return ({"encoding": spec.encoding, "encoded_bytes": head.nbytes * batch, "sample": str(path),
                     "encoded_source": f"sample {Path(spec.sample).name} ({head.describe()}, {head.nbytes} B)"},
                    head.codec)
        codec = "png" if codec == "png" else "jpeg"
        if spec.typical_bytes is not None:
            return ({"encoding": spec.encoding, "encoded_bytes": spec.typical_bytes * batch,
                     "encoded_source": f"typical_bytes {spec.typical_bytes} per image"}, codec)
        est = math.prod(c_opt[:3]) * (3 if codec == "png" else 0.1875)  # PNG ~1 B/channel; JPEG q90 ~1.5 bit/pixel
        what = "8 bits/channel (PNG)" if codec == "png" else "1.5 bits/pixel (a JPEG photo at quality 90)"
        self.warnings.append(f"{io.name}: encoded bytes estimated at {what}; declare `sample:` or "
                             "`typical_bytes:` for the plan's bytes")
        return ({"encoding": spec.encoding, "encoded_bytes": int(est),
                 "encoded_source": "estimate " + ("(PNG, 8 bits/channel)" if codec == "png" else "(JPEG, 1.5 bits/pixel)")},
                codec)

    def check_format(self, loc: tuple[str | int, ...], fmt: str, dtype: str, rank: int,
                     shape: tuple[int, ...]) -> None:
        why = check_format(fmt, dtype, rank)
        if why:
            raise self.err(loc + ("format",), why)
        k = inflation(shape, fmt)
        if k > 1.0:
            self.warnings.append(f"{loc[1]}: format {fmt} moves {k:.2f}x the bytes of linear "
                                 f"(channel dim {shape[1] if rank > 1 else '?'} padded to the vector width)")

    # -- outputs ----------------------------------------------------------------------------------
    def output_exprs(self, inputs: list[tuple[IOInfo, TensorPlan]], fixed: tuple[FixedInput, ...] = ()
                     ) -> dict[str, tuple[str | Unresolved, ...] | None]:
        """Each model output's dims as shape_expr strings over the caller-facing input dims."""
        static = all(not t.dynamic for _, t in inputs)
        if static and all(isinstance(d, int) and d >= 0 for o in self.info.outputs for d in o.dims):
            return {o.name: tuple(str(d) for d in o.dims) for o in self.info.outputs}  # nothing to infer
        from trtflow.plan.symbolic import InputDims, infer

        dims = []
        for io, t in inputs:
            lo, hi = self.input_shapes(io, self.recipe.inputs.get(io.name, InputSpec()))[::2]
            caller_axis = (0, 3, 1, 2) if t.layout == "NHWC" else tuple(range(len(lo)))
            dims.append(InputDims(io.name, t.ident, lo, hi, caller_axis))
        try:
            inferred = infer(self.info.path, dims, [o.name for o in self.info.outputs],
                             fixed={f.name: f.array() for f in fixed})
        except ModelError as exc:
            raise self.err(("model",), exc.message, exc.hint) from None
        self.check_constraints(inferred.constraints, [t for _, t in inputs])
        self.constraints = inferred.constraints
        self.if_branches = {name: "then" if taken else "else" for name, taken in sorted(inferred.branches.items())}
        return dict(inferred.outputs)

    def check_constraints(self, constraints: tuple[tuple[str, str], ...], inputs: list[TensorPlan]) -> None:
        """Dims the model combines (adds, concatenates) must agree at every profile point, or it cannot run."""
        for point in ("min_shape", "shape", "max_shape"):
            shapes = {t.ident: getattr(t, point) for t in inputs}
            for lhs, rhs in constraints:
                a, b = parse(lhs)(shapes), parse(rhs)(shapes)
                if a != b:
                    names = sorted({ident for ident, _ in parse(lhs).refs | parse(rhs).refs})
                    raise self.err(("inputs", next(t.name for t in inputs if t.ident == names[0]), "profile"),
                                   f"the model cannot run at the profile's {point.replace('_shape', '') or 'opt'} "
                                   f"shapes {shapes}: it combines two dims that must be equal, "
                                   f"{lhs} = {a} and {rhs} = {b}",
                                   hint="pick sizes where both agree (strided backbones with upsampling need "
                                        "multiples of their largest stride, e.g. 32)")
        if constraints:
            first = f"{constraints[0][0]} == {constraints[0][1]}"
            more = f" and {len(constraints) - 1} more" if len(constraints) > 1 else ""
            self.warnings.append(f"the model combines dims that must be equal ({first:.120}{more}): they hold at "
                                 "the profile's min, opt and max; other input shapes may not run")

    def resolve_dims(self, io: IOInfo, spec: OutputSpec, dims: tuple[str | Unresolved, ...] | None
                     ) -> tuple[str, ...]:
        """Unresolved dims become '?' when the recipe bounds them (``max_shape``); else a plan error."""
        loc: tuple[str | int, ...] = ("outputs", io.name)
        bound = spec.max_shape
        if dims is None:
            if bound is None:
                raise self.err(loc, f"symbolic shape inference cannot tell even the rank of output {io.name!r}",
                               hint=f"set outputs.{io.name}.max_shape (model layout) to bound it; the engine "
                                    "then reports its shape per run")
            dims = tuple(Unresolved("", "", True) for _ in bound)
        if bound is not None and len(bound) != len(dims):
            raise self.err(loc + ("max_shape",), f"rank {len(bound)} contradicts the output's rank {len(dims)}")
        out = []
        for i, d in enumerate(dims):
            if isinstance(d, str):
                out.append(d)
                continue
            if bound is None:
                what = "is data-dependent: it" if d.data_dependent else "cannot be inferred: it"
                raise self.err(loc, f"dimension {i} of output {io.name!r} {what} {d.describe()}",
                               hint=f"set outputs.{io.name}.max_shape (model layout, e.g. "
                                    f"{[b if isinstance(b, str) and b.isdigit() else 'N' for b in dims]}) "
                                    "to bound it; the engine then reports the actual shape per run")
            out.append(DATA_DEPENDENT)
        return tuple(out)

    def evaluate(self, io: IOInfo, spec: OutputSpec, exprs: tuple[str, ...], inputs: list[TensorPlan]
                 ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of one output: opt by evaluation, min/max as bounds over the profile box."""
        loc: tuple[str | int, ...] = ("outputs", io.name)
        ranks = {t.ident: len(t.shape) for t in inputs}
        opt_shapes = {t.ident: t.shape for t in inputs}
        box = {t.ident: list(zip(t.min_shape, t.max_shape)) for t in inputs}
        lo, opt, hi = [], [], []
        for i, text in enumerate(exprs):
            e = parse(text, ranks)
            if e.data_dependent:
                assert spec.max_shape is not None  # resolve_dims required it
                m = spec.max_shape[i]
                lo.append(0)
                opt.append(m)
                hi.append(m)
                continue
            for label, shapes in (("min", {t.ident: t.min_shape for t in inputs}), ("opt", opt_shapes),
                                  ("max", {t.ident: t.max_shape for t in inputs})):
                try:
                    v = e(shapes)
                except ShapeExprError as exc:
                    raise self.err(loc, f"dimension {i} of output {io.name!r} ({text}) at the profile's {label} "
                                   f"input shapes {shapes}: {exc}",
                                   hint="the model does not accept inputs that small or that large: "
                                        "narrow the profile") from None
                if label == "opt":
                    opt.append(int(v))  # type: ignore[arg-type]
            a, b = e.bounds(box)  # type: ignore[misc]
            lo.append(a)
            hi.append(b)
        return tuple(lo), tuple(opt), tuple(hi)

    def plan_outputs(self, io: IOInfo, spec: OutputSpec, idents: dict[str, str],
                     exprs: tuple[str, ...], inputs: list[TensorPlan]) -> list[TensorPlan]:
        loc: tuple[str | int, ...] = ("outputs", io.name)
        lo, opt, hi = self.evaluate(io, spec, exprs, inputs)
        if spec.memory == "write_combined":
            raise self.err(loc + ("memory",), "write-combined memory is very slow to read from the CPU",
                           hint="use pinned for outputs; write_combined is for inputs")
        red = spec.reduce
        if red is not None and io.dtype not in FLOATS:
            raise self.err(loc + ("reduce",), f"reducers need a float output, {io.name!r} is {io.dtype}")

        def axis_of(a: int) -> int:
            ax = a + len(opt) if a < 0 else a
            if not 0 <= ax < len(opt):
                raise self.err(loc + ("reduce", "axis"), f"axis {a} is out of range for rank {len(opt)}")
            return ax

        def drop(shape: tuple[Any, ...], ax: int) -> tuple[Any, ...]:
            return shape[:ax] + shape[ax + 1:]

        float_dtype = spec.dtype or io.dtype
        if red is None or red.op in ("softmax", "sigmoid"):
            if red is not None and red.op == "softmax":
                axis_of(red.axis)
            if float_dtype not in FLOATS and io.dtype in FLOATS:
                raise self.err(loc + ("dtype",), f"cannot narrow a float output to {float_dtype} without a reducer",
                               hint="use reduce: {op: argmax} or {op: threshold} for integer masks")
            items = [(io.name, float_dtype, lo, opt, hi, exprs)]
        elif red.op == "argmax":
            ax = axis_of(red.axis)
            if opt[ax] > 256 and red.dtype == "uint8":
                raise self.err(loc + ("reduce", "dtype"), f"{opt[ax]} classes do not fit uint8", hint="use int32")
            items = [(io.name, red.dtype, drop(lo, ax), drop(opt, ax), drop(hi, ax), drop(exprs, ax))]
        elif red.op == "threshold" and red.pack == "bits":
            if lo[-1] != hi[-1]:
                raise self.err(loc + ("reduce", "pack"), f"pack: bits packs the last axis, which is dynamic "
                               f"({lo[-1]}..{hi[-1]}) in {io.name!r}", hint="fix the last dimension, or drop pack")

            def packed(s: tuple[int, ...]) -> tuple[int, ...]:
                return s[:-1] + (-(-s[-1] // 8),)

            items = [(io.name, "uint8", packed(lo), packed(opt), packed(hi),
                      exprs[:-1] + (str(-(-lo[-1] // 8)),))]
        elif red.op == "threshold":
            items = [(io.name, red.dtype, lo, opt, hi, exprs)]
        else:
            assert isinstance(red, TopKReduce)
            ax = axis_of(red.axis)
            k = red.k
            if k > lo[ax]:
                raise self.err(loc + ("reduce", "k"), f"k={k} exceeds dimension {ax} ({lo[ax]})")

            def kshape(s: tuple[Any, ...], kk: Any) -> tuple[Any, ...]:
                return s[:ax] + (kk,) + s[ax + 1:]

            kexprs = kshape(exprs, str(k))
            items = [(f"{io.name}_values", float_dtype, kshape(lo, k), kshape(opt, k), kshape(hi, k), kexprs),
                     (f"{io.name}_indices", "int32", kshape(lo, k), kshape(opt, k), kshape(hi, k), kexprs)]
        out = []
        for name, dtype, a, b, c, e in items:
            self.check_format(loc, spec.format, dtype, len(b), b)
            out.append(self.tensor(name, idents[name], "output", dtype, b, a, c, spec.format, spec.memory, io, opt,
                                   reduce=red.model_dump() if red else None, shape_expr=tuple(e)))
        return out

    def tensor(self, name: str, ident: str, role: str, dtype: str, shape: tuple[int, ...],
               lo: tuple[int, ...], hi: tuple[int, ...], fmt: str, memory: str, io: IOInfo,
               model_shape: tuple[int, ...], **extra: Any) -> TensorPlan:
        b = nbytes(shape, dtype, fmt)
        naive_item = 4 if io.dtype in FLOATS else ITEMSIZE[io.dtype]
        naive = math.prod(model_shape) * naive_item
        cost = _link_cost(memory, role, self.link)
        return TensorPlan(
            name=name, ident=ident, role=role, dtype=dtype, shape=shape, min_shape=lo, max_shape=hi,  # type: ignore[arg-type]
            format=fmt, memory=memory, bytes=b, max_bytes=nbytes(hi, dtype, fmt), naive_bytes=naive,
            predicted_ms=_ms(b, *cost) if cost else 0.0,
            naive_predicted_ms=_ms(naive, float(self.link["pageable_gbps"]), float(self.link["pageable_latency_us"])),
            source=io.name, model_dtype=io.dtype, model_shape=model_shape, **extra)

    def check_memory(self, tensors: list[TensorPlan], sets: int) -> None:
        """The runner allocates every tensor at its max shape once per buffer set (``sets``), on the host
        (staging) and on the GPU: refuse a plan that cannot fit, with the numbers, before anything is built."""
        total = sum(t.max_bytes for t in tensors) * sets
        limit_mib = self.recipe.build.max_io_mib
        if limit_mib is not None:
            limits = [(limit_mib << 20, f"build.max_io_mib is {limit_mib} MiB")]
        else:
            limits = memory_limits()
        for limit, what in limits:
            if total > limit:
                big = max(tensors, key=lambda t: t.max_bytes)
                dyn = next((t for t in tensors if t.role == "input" and t.dynamic), None)  # what sets the max
                loc: tuple[str | int, ...] = (("inputs", dyn.source, "profile") if dyn is not None else
                                              ("inputs" if big.role == "input" else "outputs", big.source))
                raise self.err(loc, f"the I/O buffers need {_gib(total)} at the max shapes "
                               f"({len(tensors)} tensors x {sets} buffer set(s); the largest, {big.name!r} at "
                               f"{list(big.max_shape)}, is {_gib(big.max_bytes)}), and {what}",
                               hint="lower the profile's max (or streams.depth); if the runner will run on a bigger "
                               "machine than this one, set build.max_io_mib")

    def claim(self, made_by: dict[str, tuple[str, tuple[str | int, ...]]], name: str, what: str,
              loc: tuple[str | int, ...]) -> None:
        """Engine tensor names must be distinct: two tensors named alike would share one buffer and binding."""
        if name in made_by:
            first, first_loc = made_by[name]
            where = loc if loc != ("model",) else first_loc
            raise self.err(where, f"two engine tensors would be named {name!r}: {first} and {what}",
                           hint="rename the model's tensor (or reduce another output); names must be distinct")
        made_by[name] = (what, loc)

    def validate_plan(self, inputs: list[TensorPlan], outputs: list[TensorPlan]) -> ValidatePlan:
        """``validate:`` with its defaults resolved: the shape sets, each image generator's value range,
        and one check per output (tolerances per output dtype and precision, trtflow.validate.policy)."""
        v = self.recipe.validate_
        dtypes = {io.name: io.dtype for io in self.info.inputs} | {t.name: t.dtype for t in inputs}
        gens: dict[str, Generator] = {}
        for name, g in v.inputs.items():
            d = g.model_dump()
            if d["kind"] == "image" and d["range"] is None:
                d["range"] = (0.0, 255.0) if dtypes[name].startswith(("int", "uint")) else (0.0, 1.0)
            gens[name] = make_generator(d)
        if v.shapes is not None:
            shapes = tuple(s if isinstance(s, str) else {k: tuple(d) for k, d in s.items()} for s in v.shapes)
        else:
            shapes = ("opt", "min", "max", "mixed") if any(t.dynamic for t in inputs) else ("opt",)
        return ValidatePlan(formula=v.formula, statistic=v.statistic, samples=v.samples, seed=v.seed,
                            generator=v.generator, inputs=gens, shapes=shapes, data=v.data,
                            per_output=resolve_validation(v.model_dump(), self.recipe.precision, outputs,
                                                                   self.info.probabilities))

    def run(self) -> Plan:
        r = self.recipe
        self.check_names()
        specs: list[InputSpec | OutputSpec] = [*r.inputs.values(), *r.outputs.values()]
        if r.streams.cuda_graph and any(s.memory == "pageable" for s in specs):
            self.warnings.append("cuda_graph with pageable memory: pageable copies are staged by the driver "
                                 "and cannot be captured; the runner stages them through pinned buffers")
        in_specs = {io.name: r.inputs.get(io.name, InputSpec()) for io in self.info.inputs}
        out_specs = {io.name: r.outputs.get(io.name, OutputSpec()) for io in self.info.outputs}
        fixed = tuple(self.fixed_input(io, in_specs[io.name]) for io in self.info.inputs
                      if in_specs[io.name].value is not None)
        live = [io for io in self.info.inputs if in_specs[io.name].value is None]
        out_names: list[str] = []
        made_by: dict[str, tuple[str, tuple[str | int, ...]]] = {}  # engine tensor name -> what makes it, where
        for io in live:
            self.claim(made_by, io.name, f"the model's input {io.name!r}", ("model",))
        for io in self.info.outputs:
            red = out_specs[io.name].reduce
            names = [f"{io.name}_values", f"{io.name}_indices"] if red and red.op == "topk" else [io.name]
            for n in names:
                self.claim(made_by, n, f"the model's output {io.name!r}" if n == io.name else
                           f"reduce: topk on output {io.name!r}", ("outputs", io.name, "reduce") if n != io.name
                           else ("model",))
            out_names += names
        idents = sanitize_identifiers([io.name for io in live] + out_names)
        inputs = [self.plan_input(io, in_specs[io.name], idents[io.name]) for io in live]
        self.check_shared_dims(list(zip(live, inputs)))
        exprs = self.output_exprs(list(zip(live, inputs)), fixed)
        outputs: list[TensorPlan] = []
        for io in self.info.outputs:
            spec = out_specs[io.name]
            outputs += self.plan_outputs(io, spec, idents, self.resolve_dims(io, spec, exprs[io.name]), inputs)
        streams = StreamsPlan.from_dict(r.streams.model_dump())
        self.check_memory(inputs + outputs, streams.buffer_sets)
        dynamic = [t.name for t in inputs if t.dynamic]
        if r.streams.cuda_graph and dynamic:
            self.warnings.append(f"cuda_graph with dynamic inputs {dynamic}: the graph is recaptured "
                                 "whenever a shape changes")
        name = self.loaded.name
        return Plan(
            name=name, class_name=class_name_for(name), recipe_path=str(self.loaded.path),
            recipe_sha256=self.loaded.text_sha256, model_path=str(self.info.path), model_sha256=self.info.sha256,
            opset=self.info.opset, precision=r.precision, tf32=r.precision == "tf32",
            inputs=tuple(inputs), outputs=tuple(outputs), streams=streams,
            serving=ServingPlan.from_dict(r.serving.model_dump()), build=BuildPlan.from_dict(r.build.model_dump()),
            validate=self.validate_plan(inputs, outputs), budgets=BudgetsPlan.from_dict(r.budgets.model_dump()), link=LinkPlan.from_dict(self.link),
            mixed_precision=MixedPrecisionPlan.from_dict(r.mixed_precision.model_dump()),
            warnings=tuple(self.warnings), trtflow_version=__version__, fixed_inputs=fixed,
            if_branches=self.if_branches, dim_ties=self.dim_ties(list(zip(live, inputs))))


def _ref(e: ShapeExpr) -> str | None:
    """``ident[axis]`` when shape expression ``e`` is one input dim alone."""
    if len(e.refs) != 1:
        return None
    ident, axis = next(iter(e.refs))
    return f"{ident}[{axis}]"


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def memory_limits() -> list[tuple[int, str]]:
    """(bytes, description) of the memories a runner's buffers must fit in here: the host's (the cgroup
    limit where one is set) and the GPU's when CUDA sees one."""
    import os

    out: list[tuple[int, str]] = []
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        host = 0
    cgroup = Path("/sys/fs/cgroup/memory.max")  # a container's limit ("max" when unlimited)
    text = cgroup.read_text().strip() if cgroup.is_file() else ""
    if text.isdigit():
        host = min(host, int(text)) if host else int(text)
    if host:
        out.append((host, f"this host has {_gib(host)} of memory"))
    from trtflow.runtime import cuda

    try:
        gpu = cuda.device_properties().total_memory if cuda.cuda_available() else 0
    except Exception:  # noqa: BLE001 - a GPU that cannot be asked is not a planning error
        gpu = 0
    if gpu:
        out.append((gpu, f"the GPU has {_gib(gpu)}"))
    return out


def resolve_model_path(loaded: LoadedRecipe, *, allow_outside: bool = False) -> Path:
    src = loaded.recipe.model_source
    loc: tuple[str | int, ...] = ("model", "path") if not isinstance(loaded.recipe.model, str) else ("model",)
    path = loaded.resolve(src.path, loc, allow_outside=allow_outside)
    if path.is_dir():
        raise loaded.error(loc, f"model {src.path!r} is a folder ({path}), not an ONNX file",
                           hint="name the .onnx file inside it")
    if path.exists() and not path.is_file():  # a FIFO or a device: never opened (it could block or never end)
        raise loaded.error(loc, f"model {src.path!r} ({path}) is not a regular file", hint="name the .onnx file")
    if not path.is_file():
        raise loaded.error(loc, f"model file {src.path!r} not found (looked at {path})",
                           hint="paths are relative to the recipe file's folder")
    return path


def resolve_data_path(loaded: LoadedRecipe, *, allow_outside: bool = False) -> Path | None:
    """``validate.data`` resolved under the same project policy as the model; None when not set."""
    rel = loaded.recipe.validate_.data
    if rel is None:
        return None
    path = loaded.resolve(rel, ("validate", "data"), allow_outside=allow_outside)
    if not path.is_file():
        raise loaded.error(("validate", "data"), f"data file {rel!r} not found (looked at {path})",
                           hint="an .npz of input arrays, relative to the recipe file's folder")
    return path


def make_plan(loaded: LoadedRecipe, *, allow_outside: bool = False) -> Plan:
    """Resolve and check ``loaded`` against its ONNX model."""
    path = resolve_model_path(loaded, allow_outside=allow_outside)
    resolve_data_path(loaded, allow_outside=allow_outside)
    try:
        info = read_model_info(path)
    except ModelError as exc:
        raise loaded.error(("model",), exc.message, exc.hint) from None
    pin = loaded.recipe.model_source.sha256
    if pin and pin != info.sha256:
        raise loaded.error(("model", "sha256"), f"model sha256 is {info.sha256}, the recipe pins {pin}",
                           hint="the model file changed: update the pin if the change is intended")
    return _Planner(loaded, info).run()
