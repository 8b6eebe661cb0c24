"""``trtflow init model.onnx``: write a starter recipe from the model's inputs and outputs.

The recipe is built line by line so that every choice carries a comment, but every key and value that
comes from the model (tensor names, paths, symbolic dims) goes through the recipe dumper (``yaml.SafeDumper``) and every
name inside a comment through ``json.dumps``: a tensor called ``"a: b # c\\n"`` stays one key, and a
comment can never be ended early by a line break hidden in a name. The text is parsed back and checked
against the model before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trtflow.errors import OutputError, UsageError
from trtflow.plan.onnxmeta import IOInfo, ModelInfo, is_named_dim, read_model_info

SCHEMA_REL = Path("schemas") / "recipe.schema.json"
FLOATS = ("float32", "float16", "bfloat16")

# Profile defaults for dynamic dims (min, opt, max). Batch: small to moderate, tuned at 4.
BATCH_RANGE = (1, 4, 16)
# Spatial dims of [N, C, H, W] / [N, C, D, H, W]: multiples of 32, so strided backbones stay exact.
SPATIAL_RANGE = (128, 512, 1024)
# Anything else (sequence length, number of boxes, ...): a guess the user must confirm.
OTHER_RANGE = (1, 128, 512)
_BATCH_NAMES = re.compile(r"(?i)^(n|b|bs|batch|batch_?size|num_?batch(es)?)$")

IMAGENET = {"scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass(frozen=True)
class InitResult:
    path: Path                      # the recipe written
    text: str
    schema_written: Path | None     # the JSON Schema, when init had to create it for the editor line
    notes: tuple[str, ...] = ()     # choices the user should check (guessed dims, paths)
    plan_error: str | None = None   # why `trtflow plan` would fail on it as written (None: it plans)


def y(value: Any) -> str:
    """One YAML scalar, sequence or mapping in flow style on a single line, safely quoted."""
    from trtflow.recipe.loader import RecipeDumper  # the recipe loader's resolvers: `1e5` stays a string

    text = yaml.dump(value, Dumper=RecipeDumper, default_flow_style=True, width=1 << 30, allow_unicode=False,
                     sort_keys=False)
    if "\n" in text.rstrip("\n").removesuffix("\n...").rstrip("\n"):
        # Multi-line plain/single-quoted output (names holding line breaks): force double quotes, which
        # escape every break as \n.
        text = yaml.dump(value, Dumper=RecipeDumper, default_flow_style=True, width=1 << 30, allow_unicode=False,
                         sort_keys=False, default_style='"')
    text = text.rstrip("\n").removesuffix("\n...").rstrip("\n")
    if "\n" in text:  # pragma: no cover - safe_dump with double quotes never breaks lines at this width
        raise ValueError(f"cannot write {value!r} on one YAML line")
    return text


def c(value: Any) -> str:
    """A model-derived value shown inside a comment: JSON with every non-ASCII char escaped (no line breaks)."""
    return json.dumps(value, ensure_ascii=True)


def safe_name(stem: str) -> str:
    """A valid recipe ``name`` from a file stem: letters, digits, ``_.-``; starts with a letter or digit."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip("_.-")[:64]
    return name or "model"


def _is_batch(symbol: Any, index: int) -> bool:
    return index == 0 or (isinstance(symbol, str) and bool(_BATCH_NAMES.match(symbol)))


class _Dims:
    """Chooses (min, opt, max) per dynamic dim, then checks them against symbolic shape inference.

    A name shared by several inputs gets one range; placeholders (``?``, unnamed, ``-1``) are each their
    own dim. ``fit`` then moves guesses the model cannot run with (an output dim below 1, two dims the
    model combines that disagree) to the nearest sizes it can, and ties dims the model forces equal.
    """

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, int], tuple[int, int, int]] = {}
        self.whys: dict[tuple[str, int], str] = {}
        self.notes: list[str] = []
        self.batch: set[tuple[str, int]] = set()     # batch dims: probed at their min (cheap)
        self.fixed: dict[str, Any] = {}              # inputs init fixes with `value:` (name -> value)
        self.symbolic_ok: Any = None                 # (key, size) -> bool from the last symbolic fit
        self.failed: str | None = None               # why the last symbolic fit could not run
        self.tie: dict[tuple[str, int], tuple[str, int]] = {}   # dim -> the dim whose range it shares

    def group(self, key: tuple[str, int]) -> list[tuple[str, int]]:
        """``key`` and every dim tied to it (one range for all)."""
        root = self.root(key)
        return [k for k in self.ranges if self.root(k) == root]

    def root(self, key: tuple[str, int]) -> tuple[str, int]:
        while key in self.tie:
            key = self.tie[key]
        return key

    def join(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.tie[rb] = ra
            for k in self.group(ra):
                self.ranges[k] = self.ranges[ra]
            if {a, b} & self.batch:
                self.batch.update(self.group(ra))

    def set_range(self, key: tuple[str, int], new: tuple[int, int, int]) -> None:
        for k in self.group(key):
            self.ranges[k] = new

    def prepare(self, info: ModelInfo) -> None:
        by_symbol: dict[str, tuple[str, int]] = {}
        for io in info.inputs:
            for i, d in enumerate(io.dims):
                if not _dynamic(d):
                    continue
                key = (io.name, i)
                if is_named_dim(d) and d in by_symbol:
                    self.ranges[key] = self.ranges[by_symbol[d]]
                    self.whys[key] = f"dim {i} {c(d)}: shared with another input"
                    self.join(by_symbol[d], key)
                    continue
                self.ranges[key], self.whys[key] = self._guess(io, i)
                if _is_batch(d, i):
                    self.batch.add(key)
                if is_named_dim(d):
                    by_symbol[str(d)] = key

    def _guess(self, io: IOInfo, index: int) -> tuple[tuple[int, int, int], str]:
        d = io.dims[index]
        rank = len(io.dims)
        if _is_batch(d, index):
            return BATCH_RANGE, f"dim {index} {c(d)} looks like the batch: tuned for {BATCH_RANGE[1]}, up to {BATCH_RANGE[2]}"
        if rank >= 4 and index >= 2:
            rng, why = SPATIAL_RANGE, (f"dim {index} {c(d)} is spatial and dynamic: CHECK this range "
                                       "(engines are fastest at opt)")
        else:
            rng, why = OTHER_RANGE, f"dim {index} {c(d)} is dynamic: CHECK this range (a guess)"
        self.notes.append(f"input {c(io.name)} dim {index} {c(d)}: guessed {list(rng)} "
                          "(min/opt/max); set the sizes you serve")
        return rng, why

    def fit(self, info: ModelInfo) -> None:
        """Check the guesses against the model's shape arithmetic (symbolic shape inference)."""
        if not self.ranges or not info.path.is_file():
            return
        from trtflow.errors import TrtflowError
        from trtflow.plan.planner import sanitize_identifiers
        from trtflow.plan.shape_expr import ShapeExprError, parse
        from trtflow.plan.symbolic import InputDims, ShapeConditionError, infer

        idents = sanitize_identifiers([io.name for io in info.inputs])
        key_of = {(idents[io.name], i): (io.name, i) for io in info.inputs for i in range(len(io.dims))}

        def shape_of(io: IOInfo, k: int) -> tuple[int, ...]:
            return tuple(self.ranges[(io.name, i)][k] if (io.name, i) in self.ranges else int(d)  # type: ignore[arg-type]
                         for i, d in enumerate(io.dims))

        for _ in range(4):  # a shape test that flips within a guessed range: narrow it, try again
            try:
                inferred = infer(info.path, [InputDims(io.name, idents[io.name], shape_of(io, 0), shape_of(io, 2),
                                                       tuple(range(len(io.dims)))) for io in info.inputs
                                             if io.name not in self.fixed],
                                 [o.name for o in info.outputs], fixed=self._fixed_arrays(info))
                break
            except ShapeConditionError as exc:
                key = key_of.get(exc.dim) if exc.dim else None
                if key is None or key not in self.ranges or not exc.stretches:
                    self.symbolic_ok, self.failed = None, str(exc)
                    return
                first, last, _ = max(exc.stretches, key=lambda st: st[1] - st[0])  # the longest stretch
                lo, opt, hi = self.ranges[key]
                new = (first, min(max(opt, first), last), last)
                self.set_range(key, new)
                self.whys[key] = (f"dim {key[1]}: narrowed from {[lo, opt, hi]}: a shape test of the model "
                                  f"(an If) holds one way at {first}..{last}")
                self.notes.append(f"input {c(key[0])} dim {key[1]}: the model takes another branch within the "
                                  f"guessed {[lo, opt, hi]}; picked {list(new)} ({exc.message})")
            except TrtflowError as exc:
                self.symbolic_ok, self.failed = None, str(exc)
                return
        else:
            self.symbolic_ok, self.failed = None, "a shape test of the model flips within every range tried"
            return
        self.failed = None
        single = re.compile(r"^(\w+)\[(\d+)\]$")
        order = {io.name: k for k, io in enumerate(info.inputs)}
        for a, b in inferred.constraints:  # dims the model forces equal (audio batch and state batch)
            ma, mb = single.match(a), single.match(b)
            if ma and mb:
                # the range a batch dim was given wins (else the earlier input's): the state follows the batch
                ka, kb = sorted((key_of[(ma[1], int(ma[2]))], key_of[(mb[1], int(mb[2]))]),
                                key=lambda k: (k not in self.batch, order[k[0]], k[1]))
                if ka in self.ranges and kb in self.ranges and self.root(ka) != self.root(kb):
                    if self.ranges[ka] != self.ranges[kb]:
                        self.whys[kb] = f"dim {kb[1]}: the model combines it with {c(ka[0])} dim {ka[1]}: same range"
                    self.join(ka, kb)
        outs = [parse(e) for dims in inferred.outputs.values() for e in dims or () if isinstance(e, str)]
        # dims tied above share a range, so they agree at every corner: only the other constraints limit sizes
        cons = [(parse(a), parse(b)) for a, b in inferred.constraints if not (single.match(a) and single.match(b))]

        def runs(key: tuple[str, int], v: int) -> bool:
            shapes = {idents[io.name]: list(shape_of(io, 1)) for io in info.inputs}
            shapes[idents[key[0]]][key[1]] = v
            try:
                return all((e(shapes) or 0) >= 1 for e in outs if not e.data_dependent) and \
                    all(a(shapes) == b(shapes) for a, b in cons)
            except ShapeExprError:
                return False

        self.symbolic_ok = runs
        for key, (lo, opt, hi) in list(self.ranges.items()):
            if runs(key, lo) and runs(key, opt) and runs(key, hi):
                continue
            valid = [v for v in range(1, 4097) if runs(key, v)]
            if not valid:
                self.notes.append(f"input {c(key[0])} dim {key[1]}: no size up to 4096 runs the model; set it by hand")
                continue
            step = next(g for g in (32, 16, 8, 1) if len([v for v in valid if v % g == 0]) >= 3 or g == 1)
            vv = [v for v in valid if v % step == 0]
            new_lo = lo if runs(key, lo) else next((v for v in vv if v >= lo), vv[0])
            above = [v for v in vv if v >= new_lo]
            new_opt = opt if runs(key, opt) and opt >= new_lo else min(above, key=lambda v: abs(v - opt))
            new_hi = hi if runs(key, hi) and hi >= new_opt else max(v for v in above if v <= max(hi, 4 * new_opt))
            if new_hi == new_lo and len(above) > 1:  # keep the dim dynamic: up to 4x its smallest size
                new_hi = max(v for v in above if v <= 4 * new_lo)
            self.set_range(key, (new_lo, new_opt, new_hi))
            self.whys[key] = (f"dim {key[1]}: moved from {[lo, opt, hi]}: the model's shape arithmetic (symbolic "
                              f"shape inference) runs at {valid[0]}..{valid[-1]} here (checked in steps of {step})")
            self.notes.append(f"input {c(key[0])} dim {key[1]}: the model does not run at the guessed "
                              f"{[lo, opt, hi]}; picked {list(self.ranges[key])}")


    def _fixed_arrays(self, info: ModelInfo) -> dict[str, Any]:
        import numpy as np

        dtypes = {io.name: io.dtype for io in info.inputs}
        return {name: np.asarray(v, dtype=dtypes[name]) for name, v in self.fixed.items()}

    def probe(self, info: ModelInfo) -> bool:
        """Run the model in onnxruntime at the guessed min, opt and max (batch dims at their min, zeros
        as data) and move every dim it refuses to the nearest sizes it runs at. True: something moved."""
        if not self.ranges or not info.path.is_file():
            return False
        import numpy as np

        from trtflow.errors import TrtflowError

        try:
            from trtflow.backends.onnxruntime import reference_session

            sess = reference_session(info.path)
        except TrtflowError as exc:
            self.notes.append(f"the ranges were not tried in onnxruntime: {exc}")
            return False
        fixed = self._fixed_arrays(info)

        def point(k: int, at: dict[tuple[str, int], int] | None = None) -> dict[str, list[int]]:
            """Shapes at corner k (batch dims at their min), dims tied to a key of ``at`` set to its size."""
            shapes = {}
            for io in info.inputs:
                dims = []
                for i, d in enumerate(io.dims):
                    r = self.ranges.get((io.name, i))
                    dims.append(int(d) if r is None else r[0] if (io.name, i) in self.batch else r[k])  # type: ignore[arg-type]
                shapes[io.name] = dims
            for key, v in (at or {}).items():
                for other in self.group(key):
                    shapes[other[0]][other[1]] = v
            return shapes

        def runs(shapes: dict[str, list[int]]) -> bool:
            feeds = {io.name: fixed[io.name] if io.name in fixed else np.zeros(shapes[io.name], dtype=io.dtype)
                     for io in info.inputs}
            try:
                sess.run(None, feeds)
            except Exception:  # noqa: BLE001 - onnxruntime's own error classes: the model refuses the shapes
                return False
            return True

        self._tie_to_batch(info, point, runs)
        if all(runs(point(k)) for k in (1, 0, 2)):
            return False
        moved = False
        for key, (lo, opt, hi) in list(self.ranges.items()):
            if key in self.batch or self.root(key) != key:
                continue
            step = 32 if key[1] >= 2 and len(info.inputs[[io.name for io in info.inputs].index(key[0])].dims) >= 4 else 1

            def ok(v: int, key: tuple[str, int] = key) -> bool:
                sym = self.symbolic_ok
                return (sym is None or sym(key, v)) and runs(point(1, {key: v}))

            if ok(lo) and ok(opt) and ok(hi):
                continue
            seed = next((v for v in dict.fromkeys([opt, *_ladder(opt, step), *_ladder(opt, 1)]) if ok(v)), None)
            if seed is None:
                self.notes.append(f"input {c(key[0])} dim {key[1]}: onnxruntime runs the model at none of the sizes "
                                  f"tried (1..4096) with the other dims at opt; set the profile by hand")
                continue
            new_lo = lo if ok(lo) else _bisect(ok, lo, seed, step, low=True)
            new_hi = hi if ok(hi) and hi >= seed else _bisect(ok, seed, max(hi, seed), step, low=False)
            new_opt = opt if new_lo <= opt <= new_hi and ok(opt) else seed
            if (new_lo, new_opt, new_hi) == (lo, opt, hi):
                continue
            self.set_range(key, (new_lo, new_opt, new_hi))
            self.whys[key] = (f"dim {key[1]}: moved from {[lo, opt, hi]}: onnxruntime runs the model at "
                              f"{new_lo}..{new_hi} (tried at min, opt and max, zeros as data)")
            self.notes.append(f"input {c(key[0])} dim {key[1]}: onnxruntime refuses the guessed {[lo, opt, hi]}; "
                              f"picked {[new_lo, new_opt, new_hi]}")
            moved = True
        if not all(runs(point(k)) for k in (1, 0, 2)):
            self.notes.append("onnxruntime refuses the model at the profile's corners (with zeros as data): "
                              "check the ranges by hand")
        return moved


    def _tie_to_batch(self, info: ModelInfo, point: Any, runs: Any) -> None:
        """A dim the model needs equal to the batch (a recurrent state's batch written ``?``) that symbolic
        inference did not tie: the model runs with it at the batch size and not otherwise. Tie it."""
        if runs(point(1)):
            return
        roots = {self.root(k) for k in self.ranges}
        batches = [b for b in roots if b in self.batch]
        for key in sorted(roots - set(batches)):
            for b in batches:
                if b[0] == key[0]:
                    continue
                if runs(point(1, {key: 2, b: 2})) and not runs(point(1, {key: 3, b: 2})):
                    old = self.ranges[key]
                    self.join(b, key)
                    self.whys[key] = f"dim {key[1]}: the model runs only with it equal to {c(b[0])} dim {b[1]}: same range"
                    self.notes.append(f"input {c(key[0])} dim {key[1]}: onnxruntime runs the model only with it equal "
                                      f"to input {c(b[0])} dim {b[1]} (a batch): tied, range {list(self.ranges[key])} "
                                      f"instead of the guessed {list(old)}")
                    break


def _ladder(opt: int, step: int) -> list[int]:
    """Sizes tried for a first one the model runs at: 16..4096 in steps of x1.5/x1.33, nearest opt first."""
    sizes = sorted({max(step, round(v / step) * step) for b in (16, 24) for v in (b << s for s in range(9)) if v <= 4096})
    return sorted(sizes, key=lambda v: abs(math.log(v / max(opt, 1))))


def _bisect(ok: Any, a: int, b: int, step: int, *, low: bool) -> int:
    """The smallest (low) / largest size in [a, b] on the step grid that runs, assuming those that run
    form one stretch and that ``b`` (low) / ``a`` (high) runs."""
    grid = list(range(-(-a // step) * step or step, b + 1, step)) if step > 1 else list(range(max(a, 1), b + 1))
    if not grid:
        return b if low else a
    lo_i, hi_i = 0, len(grid) - 1
    if low:  # first index that runs
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            lo_i, hi_i = (lo_i, mid) if ok(grid[mid]) else (mid + 1, hi_i)
        return grid[lo_i]
    while lo_i < hi_i:  # last index that runs
        mid = (lo_i + hi_i + 1) // 2
        lo_i, hi_i = (mid, hi_i) if ok(grid[mid]) else (lo_i, mid - 1)
    return grid[lo_i]


def _dynamic(d: Any) -> bool:
    return not isinstance(d, int) or d <= 0


def _input_lines(io: IOInfo, dims: _Dims, info: ModelInfo) -> list[str]:
    lines = [f"  # model input {c(io.name)}: {io.dtype} {c(list(io.dims))}"]
    lines.append(f"  {y(io.name)}:")
    if io.name in dims.fixed:
        ifs = [sw.node for sw in info.switches if sw.input == io.name]
        lines += [f"    # the model branches on this input's value (If {', '.join(c(n) for n in ifs[:3])}): fixed to the",
                  "    # value it tests for, the engine holds that branch only and the runner does not take the input.",
                  "    # Serve another value with another recipe, or delete this line to keep the input (and both branches).",
                  f"    value: {y(dims.fixed[io.name])}"]
        return lines
    if any(_dynamic(d) for d in io.dims):
        lo, opt, hi = [], [], []
        whys = []
        for i, d in enumerate(io.dims):
            if not _dynamic(d):
                a = b = m = int(d)  # type: ignore[arg-type]
            else:
                (a, b, m), why = dims.ranges[(io.name, i)], dims.whys[(io.name, i)]
                whys.append(why)
            lo.append(a)
            opt.append(b)
            hi.append(m)
        lines.append("    # dynamic dims need a profile: the engine accepts any shape between min and max")
        lines += [f"    #   {w}" for w in whys]
        lines.append(f"    profile: {y({'min': lo, 'opt': opt, 'max': hi})}")
    else:
        fixed = [d for d in io.dims if isinstance(d, int)]
        lines.append(f"    # shape: {y(fixed)}   # fixed by the model; nothing to choose")
    lines.append(f"    # dtype: {io.dtype}   # the model's dtype; a narrower one here moves fewer bytes")
    if len(io.dims) == 4 and io.dtype in FLOATS and io.dims[1] == 3:
        lines += [
            "    # Looks like an image batch [N, 3, H, W]. Handing over uint8 NHWC pixels moves 1/4 of the",
            "    # float32 bytes; the cast, the transpose to NCHW and the normalization then run in the engine:",
            "    # dtype: uint8",
            "    # layout: NHWC      # profile/shape above stay in the model's NCHW layout",
            f"    # preprocess: {y(IMAGENET)}   # ImageNet statistics: use your model's",
        ]
    lines.append("    format: linear   # TensorRT I/O format; vectorized ones (hwc8, chw32) pad the channel dim")
    lines.append("    memory: pinned   # page-locked: full-speed async copies (pageable ones are staged by the driver)")
    return lines


def _output_lines(io: IOInfo) -> list[str]:
    lines = [f"  # model output {c(io.name)}: {io.dtype} {c(list(io.dims))}", f"  {y(io.name)}:"]
    if io.dtype in FLOATS:
        ch = io.dims[1] if len(io.dims) >= 2 else None
        if len(io.dims) == 4:
            dtype = "uint8" if isinstance(ch, int) and ch <= 256 else "int32"
            lines.append(f"    # reduce: {y({'op': 'argmax', 'axis': 1, 'dtype': dtype})}   "
                         "# a class mask instead of per-class float maps")
        elif len(io.dims) == 2 and (not isinstance(ch, int) or ch >= 5):
            lines.append(f"    # reduce: {y({'op': 'topk', 'k': 5, 'axis': 1})}   "
                         "# 5 scores + 5 indices per row instead of every score")
        lines.append("    # dtype: float16   # narrowed on the GPU: half the D2H bytes")
    lines.append("    memory: pinned")
    return lines


def recipe_text(info: ModelInfo, recipe_path: Path, *, name: str, schema_path: Path) -> tuple[str, list[str]]:
    """The starter recipe for ``info`` to be written at ``recipe_path``, and notes on the guesses in it."""
    folder = recipe_path.resolve().parent
    schema_rel = _rel(schema_path.resolve(), folder)
    model_rel = _rel(info.path.resolve(), folder)
    dims = _Dims()
    dims.prepare(info)
    dims.fixed = {sw.input: sw.equals for sw in info.switches if sw.equals is not None and
                  next(io for io in info.inputs if io.name == sw.input).dims == ()}
    dims.fit(info)
    if dims.probe(info):
        dims.fit(info)  # the moved sizes, checked against the shape arithmetic again
    if dims.failed:
        dims.notes.append(f"symbolic shape inference failed, the ranges are unchecked guesses: {dims.failed}")
    any_dynamic = any(_dynamic(d) for io in info.inputs for d in io.dims)
    out: list[str] = [
        f"# yaml-language-server: $schema={schema_rel}",
        f"# Starter recipe written by `trtflow init` for {c(info.path.name)} (opset {info.opset}).",
        "# Every field is optional except `model`; `trtflow plan` shows what each choice costs in bytes and ms.",
        "# Reference of every field: `trtflow docs` (Markdown) or `trtflow schema` (JSON Schema).",
        "schema_version: 1",
        f"name: {y(name)}   # artifact folder artifacts/<name>/ and the runner class",
        f"model: {y(model_rel)}   # relative to this file",
        f"# model: {{path: {y(model_rel)}, sha256: {info.sha256}}}   # pin it: a changed file is an error",
        "precision: fp32   # fp32 | tf32 | fp16 | bf16; fp16 halves compute and memory, tolerances follow",
        "",
        "inputs:" if info.inputs else "inputs: {}",
    ]
    for io in info.inputs:
        out += _input_lines(io, dims, info)
    out += ["", "outputs:" if info.outputs else "outputs: {}"]
    for io in info.outputs:
        out += _output_lines(io)
    out += [
        "",
        "streams:",
        "  topology: sync   # sync: simplest | async: copies overlap compute | pipelined: `depth` requests in flight",
        "  depth: 2         # buffer sets in flight when pipelined (also Triton instance count on export)",
        "  cuda_graph: false   # replay copy-in + enqueue + copy-out as one graph: less launch overhead"
        + ("; dynamic shapes recapture on every shape change" if any_dynamic else ""),
        "",
        "build:",
        "  backend: auto   # the best builder installed (says which); `trtflow doctor` lists them",
        "  workspace_mib: 4096",
        "  optimization_level: 3   # 0..5: higher builds slower, may run faster",
        "  # timing_cache: timing.cache   # relative to this file; TensorRT reuses kernel timings across builds",
        "",
        "validate:",
        "  formula: elemwise   # fail an element only if |a-b| > atol AND |a-b|/|b| > rtol (Polygraphy's rule)",
        "  statistic: max",
        *_tolerance_lines(info),
        "  samples: 2",
        "  seed: 0",
        "  generator: uniform   # or data: inputs.npz with real inputs (better for reduced outputs)",
        *_generator_lines(info, set(dims.fixed)),
        "",
        "# budgets: {p99_latency_ms: 10, min_throughput: 100}   # enforced by `trtflow bench --check`",
        "",
    ]
    text = "\n".join(out)
    _check_roundtrip(text, info, recipe_path)
    return text, dims.notes


def _tolerance_lines(info: ModelInfo) -> list[str]:
    """The commented ``default:`` and one comment per output: what decides it by default at fp32 (and
    fp16), from trtflow.validate.policy, so uncommenting the line changes nothing at fp32."""
    from trtflow.validate.policy import default_metrics, default_tolerance, probability_metrics

    fp32 = default_tolerance("fp32", "float32") or {}
    default = (f"  # default: {{atol: {fp32['atol']:.1e}, rtol: {fp32['rtol']:.1e}}}   # one tolerance for all float "
               "outputs (this is fp32's); unset: per output (docs/numerics.md):")
    lines = [default]
    for io in info.outputs:
        tol, half = default_tolerance("fp32", io.dtype), default_tolerance("fp16", io.dtype)
        fp16 = f"{half['atol']:.0e}" if half else ""
        if half and io.name in info.probabilities:  # a Sigmoid/Softmax output: its decision and mean error
            kind, axis = info.probabilities[io.name]
            (m,) = probability_metrics("fp16", kind, axis)
            on = f"at >= {m['threshold']:g}" if kind == "sigmoid" else f"of the argmax on axis {m['axis']}"
            fp16 = f"mean error {fp16} and {m['kind']} {on} >= {m['min']:g}, a {kind}"
        what = (f"atol = rtol = {tol['atol']:.0e} (fp16 build: {fp16})" if tol and half else
                ", ".join(f"{m['kind']} >= {m['min']}" for m in default_metrics("fp32", io.dtype)))
        lines.append(f"  #   {c(io.name)}: {what}")
    return lines


def _generator_lines(info: ModelInfo, fixed: set[str]) -> list[str]:
    """``validate.inputs`` for inputs whose name and shape say what they are (a sample rate, a state, an
    image); none for ``fixed`` inputs (``value:``: the engine does not take them)."""
    from trtflow.validate.inputs import suggest_generator

    found = [(io, g) for io in info.inputs
             if io.name not in fixed and (g := suggest_generator(io.name, io.dtype, tuple(io.dims)))]
    if not found:
        return ["  # inputs: {<input>: {kind: image | range | normal | choice | zeros}}   # per-input generators"]
    lines = ["  inputs:   # guessed from the names and shapes: CHECK (kinds: image, range, normal, choice, zeros)"]
    for io, g in found:
        fields = ", ".join(f"{k}: {v}" for k, v in g.items())
        lines.append(f"    {y(io.name)}: {{{fields}}}")
    return lines


def _rel(target: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(target, folder)).as_posix()
    except ValueError:  # another drive: only an absolute path works
        return target.as_posix()


def _check_roundtrip(text: str, info: ModelInfo, recipe_path: Path) -> None:
    """The written names must be exactly the model's: a quoting bug must never reach disk."""
    from trtflow.recipe import parse_recipe

    loaded = parse_recipe(text, recipe_path)
    got = (list(loaded.recipe.inputs), list(loaded.recipe.outputs))
    want = ([io.name for io in info.inputs], [io.name for io in info.outputs])
    if got != want:  # pragma: no cover - a bug in y()
        raise AssertionError(f"init wrote names {got}, the model has {want}")


def default_recipe_path(model: Path) -> Path:
    return Path("recipes") / f"{safe_name(model.stem)}.yaml"


def init_recipe(model: Path, out: Path | None = None, *, force: bool = False, name: str | None = None,
                write_schema: bool = True) -> InitResult:
    """Write a starter recipe for ``model`` at ``out`` (default ``recipes/<model stem>.yaml``)."""
    from trtflow.artifact import atomic_write
    from trtflow.recipe.loader import project_root

    out = out or default_recipe_path(model)
    if out.exists() and not force:
        raise OutputError(f"{out} already exists; not overwriting it", hint="pass --force to replace it, or --out",
                          file=out)
    if out.exists() and not out.is_file():
        raise OutputError(f"{out} exists and is not a file", hint="pass another --out", file=out)
    name = name or safe_name(out.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise UsageError(f"name {name!r} is not a valid recipe name",
                          hint="1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
    info = read_model_info(model.resolve())
    root = project_root(out.resolve().parent)
    schema_path = root / SCHEMA_REL
    schema_written = None
    if write_schema and not schema_path.exists():
        from trtflow.recipe.jsonschema import recipe_json_schema

        atomic_write(schema_path, recipe_json_schema())
        schema_written = schema_path
    text, notes = recipe_text(info, out, name=name, schema_path=schema_path)
    if not info.path.resolve().is_relative_to(root):
        notes.append(f"the model is outside the project {root}: plan/build need --allow-outside "
                     "(or move the model into the project)")
    atomic_write(out, text)
    return InitResult(path=out, text=text, schema_written=schema_written, notes=tuple(notes),
                      plan_error=_plan_error(out))


def _plan_error(path: Path) -> str | None:
    from trtflow.errors import TrtflowError
    from trtflow.plan import make_plan
    from trtflow.recipe import load_recipe

    try:
        make_plan(load_recipe(path))
    except TrtflowError as exc:
        return str(exc)
    return None


__all__ = ["InitResult", "default_recipe_path", "init_recipe", "recipe_text", "safe_name"]
