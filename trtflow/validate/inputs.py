"""Validation inputs: per-input generators, ``.npz`` data, and the input shape sets to validate at.

Everything here is caller-side: arrays in the dtype, layout and shape the generated runner takes
(``plan.inputs``), seeded so that a run is reproducible. Used by ``trtflow validate``, by the fp16
calibration run of the ``precision`` pass and by ``trtflow bench``.

Shape sets (``validate.shapes``, ``validate --shapes``): ``opt``, ``min``, ``max``, ``mixed`` (every
dynamic dim moved off opt, and dims of one input that share a range given different values, so H != W),
or explicit shapes per input in the model's layout (trtexec's syntax ``name:1x3x640x800,other:1x16`` on
the command line, parsed by :func:`trtflow.recipe.overrides.parse_shapes`). Default: ``[opt]`` when every
input is static, ``[opt, min, max, mixed]`` otherwise. Dims the model needs equal (``plan.dim_ties``:
silero's audio and state batch) get one value in every set: the one given explicitly, else the group's
first dim's.

``.npz`` keys (``validate.data``): ``<input>`` holds one sample (the input's rank) or samples stacked on
a new leading axis (rank + 1); ``<k>/<input>`` holds sample ``k`` alone (samples may then differ in
shape). An exact input name wins over the ``<k>/`` reading. Inputs the file lacks are generated.
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import RecipeError
from trtflow.plan.model import ChoiceGen, ImageGen, NormalGen, Plan, RangeGen, TensorPlan, ZerosGen

_SAMPLE_KEY = re.compile(r"(\d+)/(.+)", re.DOTALL)
# Where a `mixed` shape puts each dynamic dim between min and max, by dim position: different positions
# get different fractions, so two dims with one range (H and W) get different values.
_FRACTIONS = (0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6)


@dataclass(frozen=True)
class ShapeCase:
    """One set of input shapes to validate at."""

    label: str                                  # "opt", "min", "max", "mixed" or "x:1x3x640x800"
    shapes: dict[str, tuple[int, ...]]          # caller-side shape per input name


# -- shape sets ---------------------------------------------------------------------------------------
def shape_cases(plan: Plan, requested: Sequence[Any] | None = None) -> list[ShapeCase]:
    """The shape sets to validate at: ``requested`` (CLI: words, trtexec strings or dicts in the model's
    layout), else ``plan.validate.shapes`` (the recipe's, or the planner's default)."""
    if requested is None:
        requested = plan.validate.shapes
    cases: list[ShapeCase] = []
    for item in requested:
        case = parse_shape_set(plan, item) if isinstance(item, str) else explicit_case(plan, item)
        if all(case.shapes != c.shapes for c in cases):  # min == opt on a half-dynamic profile, ...
            cases.append(case)
    return cases


def parse_shape_set(plan: Plan, text: str) -> ShapeCase:
    """``min``/``opt``/``max``/``mixed``, or trtexec's ``name:1x3x640x800,other:4`` (unnamed inputs at opt)."""
    word = text.strip()
    if word in ("min", "opt", "max", "mixed"):
        return ShapeCase(word, tie_shapes(plan, {t.name: named_shape(t, word) for t in plan.inputs}))
    from trtflow.recipe.overrides import parse_shapes

    return explicit_case(plan, {k: list(v) for k, v in parse_shapes(word).items()})


def explicit_case(plan: Plan, given: Mapping[str, Sequence[int]]) -> ShapeCase:
    """A shape set from explicit shapes per input IN THE MODEL'S LAYOUT (as ``inputs.<name>.shape`` and
    trtexec's ``--shapes``: NCHW for an image the caller hands over as NHWC); inputs not named run at opt.
    Checked against the profile."""
    names = [t.name for t in plan.inputs]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise RecipeError(f"validate shapes: no input named {unknown[0]!r}; inputs are {names}")
    shapes = {}
    for t in plan.inputs:
        shape = caller_shape(t, tuple(int(d) for d in given[t.name])) if t.name in given else t.shape
        _check_in_profile(t, shape, "validate shapes")
        shapes[t.name] = shape
    shapes = tie_shapes(plan, shapes, {(t.name, a) for t in plan.inputs if t.name in given for a in range(len(t.shape))},
                        where="validate shapes")
    label = ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in given.items()) or "opt"
    return ShapeCase(label, shapes)


def tie_shapes(plan: Plan, shapes: dict[str, tuple[int, ...]], given: set[tuple[str, int]] | None = None, *,
               where: str = "shapes") -> dict[str, tuple[int, ...]]:
    """``shapes`` (caller-side, per input name) with each group of ``plan.dim_ties`` at one value: the
    value of a dim in ``given`` ((input name, axis) the caller chose), else of the group's first dim. Two
    given dims of one group that differ are a RecipeError naming both (the model cannot run them)."""
    out = {k: list(v) for k, v in shapes.items()}
    for group in plan.tied_dims():
        dims = [(plan.inputs[k].name, a) for k, a in group]
        chosen = [d for d in dims if d in (given or ())] or dims[:1]
        (n0, a0), value = chosen[0], out[chosen[0][0]][chosen[0][1]]
        for n, a in chosen[1:]:
            if out[n][a] != value:
                raise RecipeError(f"{where}: dimension {a0} of input {n0!r} is {value} and dimension {a} of input "
                                  f"{n!r} is {out[n][a]}, but the model needs them equal (plan.dim_ties)",
                                  hint="give both the same size")
        for n, a in dims:
            out[n][a] = value
    return {k: tuple(v) for k, v in out.items()}


def caller_shape(t: TensorPlan, model_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The caller-side shape of ``t`` for a shape in the model's layout (NCHW -> NHWC where ``layout: NHWC``)."""
    if t.layout == "NHWC" and len(model_shape) == 4:
        n, c, h, w = model_shape
        return (n, h, w, c)
    return model_shape


def named_shape(t: TensorPlan, which: str) -> tuple[int, ...]:
    if which == "min":
        return t.min_shape
    if which == "max":
        return t.max_shape
    if which == "mixed":
        return mixed_shape(t)
    return t.shape


def mixed_shape(t: TensorPlan) -> tuple[int, ...]:
    """Every dynamic dim off opt, on the grid of gcd(min, opt, max) (detectors want multiples of their stride),
    and dims of ``t`` with the same range different from each other (a non-square image)."""
    taken: dict[tuple[int, int, int], set[int]] = {}
    dims = []
    for i, (lo, opt, hi) in enumerate(zip(t.min_shape, t.shape, t.max_shape)):
        if lo == hi:
            dims.append(lo)
            continue
        used = taken.setdefault((lo, opt, hi), set())
        value = _off_opt(lo, opt, hi, _FRACTIONS[i % len(_FRACTIONS)], used)
        used.add(value)
        dims.append(value)
    return tuple(dims)


def _off_opt(lo: int, opt: int, hi: int, fraction: float, used: set[int]) -> int:
    step = math.gcd(math.gcd(lo, opt), hi)
    target = lo + fraction * (hi - lo)
    base = lo + round((target - lo) / step) * step
    candidates = sorted({min(hi, max(lo, base + k * step)) for k in range(-8, 9)} | {lo, hi},
                        key=lambda v: (abs(v - target), v))
    for want_unused in (True, False):
        for v in candidates:
            if v != opt and (not want_unused or v not in used):
                return v
    return opt  # a range of one value besides opt cannot happen (lo != hi), kept for the type checker


def _check_in_profile(t: TensorPlan, shape: tuple[int, ...], where: str) -> None:
    if len(shape) != len(t.shape) or any(not lo <= d <= hi for d, lo, hi in zip(shape, t.min_shape, t.max_shape)):
        rng = "x".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in zip(t.min_shape, t.max_shape))
        raise RecipeError(f"{where}: input {t.name!r} shape {'x'.join(map(str, shape)) or '()'} is outside its "
                          f"profile {rng or '()'}", hint="pick a shape inside inputs.<name>.profile")


# -- generated inputs ---------------------------------------------------------------------------------
def generate_inputs(plan: Plan, sample: int, folder: Path, *, batch: int | None = None,
                    shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """One sample of caller-side inputs: from the recipe's ``.npz`` data, else from the generators.

    ``shapes``: the shape set (default opt). ``batch`` replaces dim 0 of inputs whose profile lets it vary
    (batch sweeps); it ignores ``data``.
    """
    if plan.validate.data and batch is None and shapes is None:
        samples = load_data(plan, folder)
        return samples[sample % len(samples)]
    wanted = {t.name: tuple(shapes[t.name]) if shapes and t.name in shapes else t.shape for t in plan.inputs}
    if batch is not None:  # and every dim tied to a batch (silero's state batch is its dim 1)
        batched = {(t.name, 0) for t in plan.inputs if t.shape and t.min_shape[0] != t.max_shape[0]}
        wanted = tie_shapes(plan, {n: (batch, *s[1:]) if (n, 0) in batched else s for n, s in wanted.items()}, batched)
    return {t.name: generate(t, plan, sample, wanted[t.name]) for t in plan.inputs}


def generate(t: TensorPlan, plan: Plan, sample: int, shape: tuple[int, ...]) -> np.ndarray:
    """Input ``t`` of sample ``sample`` at ``shape``, from its generator in ``validate.inputs``."""
    v = plan.validate
    rng = np.random.default_rng([v.seed, sample, _name_seed(t.name)])
    spec = v.inputs.get(t.name)
    dtype = _np_dtype(t.dtype)
    if isinstance(spec, ZerosGen):
        return np.zeros(shape, dtype)
    if isinstance(spec, ChoiceGen):
        return np.full(shape, spec.values[sample % len(spec.values)]).astype(dtype)
    if isinstance(spec, RangeGen):
        lo, hi = spec.low, spec.high
        if dtype.kind in "iub":
            return rng.integers(math.ceil(lo), math.floor(hi) + 1, size=shape).astype(dtype)
        return rng.uniform(lo, hi, size=shape).astype(dtype)
    if isinstance(spec, NormalGen):
        return _to_dtype(rng.normal(spec.mean, spec.std, size=shape), dtype)
    if isinstance(spec, ImageGen):
        return image_input(rng, t, shape, spec)
    return _default(rng, dtype, shape, v.generator)


def _name_seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode("utf-8", "surrogatepass"))


def _np_dtype(name: str) -> np.dtype:
    from trtflow.passes.reference import numpy_dtype

    return numpy_dtype(name)


def _to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return x > 0.5
    return x.astype(dtype)


def _default(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], generator: str) -> np.ndarray:
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if dtype == np.int8:
        return rng.integers(-128, 128, size=shape, dtype=np.int8)
    if dtype.kind in "iu":
        return rng.integers(0, 16, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    x = rng.standard_normal(shape) if generator == "normal" else rng.random(shape)
    return x.astype(dtype)


# -- image-like inputs --------------------------------------------------------------------------------
def image_input(rng: np.random.Generator, t: TensorPlan, shape: tuple[int, ...], spec: ImageGen) -> np.ndarray:
    """Photo-like images in ``shape``: channel axis from ``channels_last``/the layout, else NCHW."""
    dtype = _np_dtype(t.dtype)
    if len(shape) < 2:
        raise RecipeError(f"validate.inputs.{t.name}: an image generator needs an input of rank >= 2, "
                          f"{t.name!r} has shape {list(shape)}")
    last = spec.channels_last
    if last is None:
        last = t.layout == "NHWC" or (len(shape) >= 3 and shape[-1] in (1, 3, 4) and shape[-3] not in (1, 3, 4))
    lead: tuple[int, ...]
    if len(shape) == 2:
        lead, h, w, c = (), shape[0], shape[1], 1
    elif last:
        lead, h, w, c = shape[:-3], shape[-3], shape[-2], shape[-1]
    else:
        lead, c, h, w = shape[:-3], shape[-3], shape[-2], shape[-1]
    images = [photo_like(rng, h, w, c) for _ in range(math.prod(lead))]
    x = np.stack(images) if images else np.zeros((0, h, w, c))
    lo, hi = spec.range
    x = lo + x * (hi - lo)
    if spec.mean is not None:
        x = x - np.asarray(spec.mean, dtype=np.float64)[:c]
    if spec.std is not None:
        x = x / np.asarray(spec.std, dtype=np.float64)[:c]
    x = x.reshape(*lead, h, w, c)
    if len(shape) == 2:
        x = x[..., 0]
    elif not last:
        x = np.moveaxis(x, -1, -3)
    return np.ascontiguousarray(_to_dtype(x, dtype)).reshape(shape)


def photo_like(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    """One procedural image in [0, 1], shape (h, w, c): what a camera sees more than what noise is.

    Natural images have a 1/f amplitude spectrum, large smooth regions, hard object edges and, in
    documents and street scenes, text. So: a shaded background with 1/f texture, a dozen overlapping
    shapes with their own color and shading, and a light panel with rows of glyph-like strokes (which
    gives text detectors something to find). numpy only, deterministic for a given ``rng``.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    palette = rng.random((16, 3))
    img = np.empty((h, w, 3), np.float32)
    g = rng.uniform(-0.4, 0.4, 2)
    for k in range(3):  # background: a tilted gradient between two colours
        img[..., k] = palette[0, k] + (palette[1, k] - palette[0, k]) * np.clip(0.5 + g[0] * (xx - .5) + g[1] * (yy - .5)
                                                                                + 0.25 * (xx + yy - 1), 0, 1)
    for i in range(int(rng.integers(8, 14))):  # objects with hard edges and their own shading
        cy, cx = rng.random(2)
        ry, rx = rng.uniform(0.05, 0.35, 2)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            a = rng.uniform(0, np.pi)
            u, v = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a), -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
            mask = (np.abs(u) <= rx) & (np.abs(v) <= ry)
        shade = 0.75 + 0.25 * np.clip((yy - cy) / (2 * ry) + 0.5, 0, 1)[mask]
        img[mask] = palette[2 + i % 14] * shade[:, None]
    _text_panel(rng, img)
    texture = _pink_noise(rng, h, w)
    img = img * (0.85 + 0.3 * texture[..., None]) + 0.03 * rng.standard_normal((h, w, 1)).astype(np.float32)
    img = np.clip(img, 0, 1)
    if c == 3:
        return img.astype(np.float64)
    gray = img @ np.array([0.299, 0.587, 0.114], np.float32)
    if c == 1:
        return gray[..., None].astype(np.float64)
    extra = [np.clip(0.5 * gray + 0.5 * _pink_noise(rng, h, w), 0, 1) for _ in range(max(c - 3, 0))]
    return np.concatenate([img[..., :min(c, 3)], *(e[..., None] for e in extra)], axis=-1).astype(np.float64)


def _pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Noise with a 1/f amplitude spectrum, scaled to [0, 1]."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f
    spectrum[0, 0] = 0
    x = np.fft.irfft2(spectrum, s=(h, w)).astype(np.float32)
    span = float(x.max() - x.min()) or 1.0
    return (x - x.min()) / span


def _text_panel(rng: np.random.Generator, img: np.ndarray) -> None:
    """A light panel with rows of dark glyph-like strokes, in place."""
    h, w = img.shape[:2]
    line = max(4, int(min(h, w) * rng.uniform(0.03, 0.06)))
    ph, pw = min(h, int(line * rng.integers(3, 7) * 1.6)), min(w, int(w * rng.uniform(0.3, 0.6)))
    if ph < line or pw < line:
        return
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    img[y0:y0 + ph, x0:x0 + pw] = rng.uniform(0.8, 1.0)
    ink = rng.uniform(0.0, 0.25, 3)
    stroke = max(1, line // 6)
    cell = max(2, int(line * 0.6))
    for row in range(y0 + line // 3, y0 + ph - line, int(line * 1.6)):
        for col in range(x0 + cell, x0 + pw - cell, cell):
            if rng.random() < 0.15:
                continue  # a space between words
            for _ in range(int(rng.integers(1, 4))):
                kind = rng.integers(0, 3)
                if kind == 0:  # vertical bar
                    cx = col + int(rng.integers(0, cell - stroke + 1))
                    img[row:row + line, cx:cx + stroke] = ink
                elif kind == 1:  # horizontal bar
                    cy = row + int(rng.integers(0, line - stroke + 1))
                    img[cy:cy + stroke, col:col + cell - 1] = ink
                else:  # diagonal
                    for k in range(line):
                        cx = col + k * (cell - stroke) // line
                        img[row + k, cx:cx + stroke] = ink


# -- .npz data ----------------------------------------------------------------------------------------
def load_data(plan: Plan, folder: Path) -> list[dict[str, np.ndarray]]:
    """Every sample of ``validate.data``; inputs the file lacks are generated (at opt) per sample."""
    path = (folder / str(plan.validate.data)).resolve()
    names = {t.name: t for t in plan.inputs}
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RecipeError(f"validate.data: {path} not found", hint="paths are relative to the recipe file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RecipeError(f"validate.data: {path} is not a readable .npz file ({exc})",
                          hint="write it with numpy.savez(path, **{input_name: array})") from None
    whole: dict[str, np.ndarray] = {}
    per_sample: dict[int, dict[str, np.ndarray]] = {}

    def read(key: str) -> np.ndarray:
        try:  # members are read lazily: a pickled object array or a truncated member fails only here
            return np.asarray(npz[key])
        except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error) as exc:
            # MemoryError: a member header may claim any shape (4 TiB from a 100-byte file)
            raise RecipeError(f"validate.data: {path} is not a readable .npz file: array {key!r}: {exc}",
                              hint="write it with numpy.savez(path, **{input_name: array}); object arrays "
                              "(pickles) are refused") from None

    with npz:
        for key in npz.files:
            m = _SAMPLE_KEY.fullmatch(key)
            if key in names:
                whole[key] = read(key)
            elif m and m.group(2) in names:
                per_sample.setdefault(int(m.group(1)), {})[m.group(2)] = read(key)
            else:
                raise RecipeError(f"validate.data: {path.name} has an array {key!r} that is no input; inputs are "
                                  f"{list(names)}", hint="keys are <input> (one sample, or samples stacked on a new "
                                  "axis 0) or <k>/<input> (sample k)")
    stacked = {k: a for k, a in whole.items() if a.ndim == len(names[k].shape) + 1}
    single = {k: a for k, a in whole.items() if k not in stacked}
    for k, a in single.items():
        if a.ndim != len(names[k].shape):
            raise RecipeError(f"validate.data: {path.name}[{k!r}] has rank {a.ndim}; input {k!r} has rank "
                              f"{len(names[k].shape)} (one sample) or {len(names[k].shape) + 1} (stacked samples)")
    lengths = {len(a) for a in stacked.values()}
    both = [f"{k}/{n}" for k, d in per_sample.items() for n in d if n in whole]
    if both:
        raise RecipeError(f"validate.data: {path.name} gives {both[0].split('/', 1)[1]!r} both whole and as {both[0]!r}")
    if len(lengths) > 1:
        raise RecipeError(f"validate.data: {path.name}: stacked arrays disagree on the number of samples "
                          f"({ {k: len(a) for k, a in stacked.items()} })")
    n = max([*lengths, (max(per_sample) + 1) if per_sample else 0, 1])
    if lengths and per_sample and lengths != {n}:
        raise RecipeError(f"validate.data: {path.name}: {lengths.pop()} stacked samples but sample keys up to "
                          f"{n - 1}/...")
    samples = []
    for i in range(n):
        feeds: dict[str, np.ndarray] = {}
        for t in plan.inputs:
            if t.name in per_sample.get(i, {}):
                a = per_sample[i][t.name]
            elif t.name in stacked:
                a = stacked[t.name][i]
            elif t.name in single:
                a = single[t.name]
            else:
                feeds[t.name] = generate(t, plan, i, t.shape)
                continue
            feeds[t.name] = _as_input(t, a, f"{path.name}[{i}/{t.name!r}]")
        samples.append(feeds)
    return samples


def _as_input(t: TensorPlan, a: np.ndarray, where: str) -> np.ndarray:
    """``a`` as input ``t`` takes it: the same dtype (a value-preserving cast is done), shape inside the profile."""
    want = _np_dtype(t.dtype)
    if a.dtype != want:
        same_kind = (a.dtype.kind == want.kind == "f") or (a.dtype.kind in "iu" and want.kind in "iu")
        cast = a.astype(want) if same_kind or (a.dtype.kind == "b" and want.kind in "iub") else None
        if cast is None or (want.kind in "iu" and not np.array_equal(cast, a)):
            raise RecipeError(f"validate.data: {where} is {a.dtype}; input {t.name!r} takes {t.dtype}",
                              hint=f"save it as {t.dtype} (e.g. array.astype(np.{want.name}))")
        a = cast
    _check_in_profile(t, tuple(a.shape), f"validate.data: {where}")
    return np.require(a, requirements="C")  # np.ascontiguousarray would turn a rank-0 array into shape (1,)


# -- suggestions for `trtflow init` -------------------------------------------------------------------
_STATE_NAMES = re.compile(r"(^|[^a-z])(state|h0|c0|hidden|cache|past|memory|carry)", re.IGNORECASE)
_RATE_NAMES = re.compile(r"(^|[^a-z])(sr|sample_?rate|sampling_?rate|rate)($|[^a-z])", re.IGNORECASE)


def suggest_generator(name: str, dtype: str, shape: tuple[int | str | None, ...]) -> dict[str, Any] | None:
    """A generator for ``validate.inputs.<name>`` where the name and shape say what the input is, else None.

    Rank-0 integer ``sr``/``sample_rate``: the two rates speech models take; ``state``/``h0``/``cache``...:
    zeros; rank 4 with 1 or 3 channels: an image.
    """
    if _RATE_NAMES.search(name) and len(shape) <= 1 and dtype.startswith(("int", "uint")):
        return {"kind": "choice", "values": [16000, 8000]}
    if _STATE_NAMES.search(name) and dtype.startswith(("float", "bfloat")):
        return {"kind": "zeros"}
    if len(shape) == 4 and (shape[1] in (1, 3) or shape[3] in (1, 3)):
        return {"kind": "image"}
    return None
