"""Input checks: what a request hands over, checked once, in plan order.

Every request goes through :meth:`Inputs.check`: feeds keyed by tensor name or identifier, each a
C-contiguous numpy array (host strategies) or a CUDA array (``memory: device``) of the plan's dtype,
inside the profile; an encoded input (``encoding: jpeg|png|image``) takes file bytes, checked by
:func:`trtflow.runtime.encoded.check_files` (the shape comes from the headers); a rank-0 input also takes
a Python number or numpy scalar. The answers are cached: the key order of a feeds mapping seen before, and per
input the shapes that passed the full check, so a warm request pays one type, dtype, contiguity and
shape compare per input; anything else takes the full check and its error names the tensor, what was
expected and what came. Dims the model needs equal across inputs (``plan.dim_ties``) are checked once
per combination of shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trtflow.errors import InputError
from trtflow.plan.model import Plan, TensorPlan
from trtflow.runtime.encoded import check_files
from trtflow.runtime.memory import cuda_array_info, np_dtype
from trtflow.runtime.shapes import Shape, ShapeKey


class InputSpec:
    """What a valid host array for one input looks like, for the one-compare-each fast check."""

    __slots__ = ("device", "dtype", "encoded", "shapes_ok", "t")

    def __init__(self, t: TensorPlan, *, device: bool) -> None:
        self.t = t
        self.dtype = np_dtype(t.dtype)
        self.device = device  # a CUDA array is expected: always the full check
        self.encoded = bool(t.encoding)  # files (JPEG/PNG bytes): their headers are read on every request
        self.shapes_ok: set[Shape] = set()  # shapes that passed the full check (profile bounds)


class Inputs:
    """The inputs of one runner: names, identifiers, expectations and the caches of the fast check."""

    def __init__(self, plan: Plan, *, cuda: bool) -> None:
        self.plan = plan
        self.names = tuple(t.name for t in plan.inputs)
        self._name_set = frozenset(self.names)
        self.ident_to_name = {t.ident: t.name for t in plan.tensors}
        self._cuda = cuda
        self._specs = tuple(InputSpec(t, device=t.memory == "device" and cuda) for t in plan.inputs)
        self._orders: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._ties = plan.tied_dims()  # dims the model needs equal (plan.dim_ties)
        self._ties_ok: set[ShapeKey] = set()  # shape combinations that kept them

    def check(self, feeds: Mapping[str, Any], *, check_finite: bool) -> tuple[list[Any], ShapeKey]:
        """The inputs of ``feeds`` in plan order, checked, and their shapes."""
        if type(feeds) is not dict and not isinstance(feeds, Mapping):  # stream([5]), run(["x"]): say so
            raise InputError(f"a request is a mapping of input name (or identifier) -> array, got {describe(feeds)}",
                             hint=f"e.g. {{{self.names[0]!r}: array}}" if self.names else None)
        try:
            order = self._orders.get(tuple(feeds))
        except TypeError:
            order = None
        if order is None:
            order = self._order(feeds)
        values = [feeds[k] for k in order]
        shapes: list[Shape] = []
        for i, (spec, x) in enumerate(zip(self._specs, values)):
            if spec.encoded:  # the checked files (headers parsed once) go on to the input stage
                files = check_files(spec.t, x)
                values[i] = files
                shapes.append(files.shape)
                continue
            if type(x) is np.ndarray and not spec.device:
                dt = x.dtype
                if ((dt is spec.dtype or dt == spec.dtype) and x.shape in spec.shapes_ok and x.flags.c_contiguous
                        and not (check_finite and dt.kind == "f")):
                    shapes.append(x.shape)
                    continue
            if not spec.t.shape and not spec.device and isinstance(x, (bool, int, float, np.generic)):
                x = values[i] = scalar_input(spec.t, x)  # a rank-0 input given as a Python or numpy scalar
            shape = self.check_one(spec.t, x, check_finite=check_finite)
            ok = spec.shapes_ok
            if len(ok) >= 64:
                ok.clear()
            ok.add(shape)
            shapes.append(shape)
        key = tuple(shapes)
        if self._ties and key not in self._ties_ok:
            self.check_ties(key)
            if len(self._ties_ok) >= 64:
                self._ties_ok.clear()
            self._ties_ok.add(key)
        return values, key

    def check_ties(self, shapes: ShapeKey) -> None:
        """Dims the model needs equal (``plan.dim_ties``: silero's audio batch and state batch) are equal
        in ``shapes`` (plan input order), or an InputError naming both tensors and dims: the engine would
        fail with its own error, or a TensorRT engine run at shapes the model never runs."""
        for (k0, a0), *rest in self._ties:
            want = shapes[k0][a0]
            for k, a in rest:
                got = shapes[k][a]
                if got != want:
                    first, other = self.plan.inputs[k0].name, self.plan.inputs[k].name
                    raise InputError(
                        f"input {other!r}: dimension {a} must equal dimension {a0} of input {first!r} (the model "
                        f"needs them equal): expected {want}, got {got} (shapes {first!r} {list(shapes[k0])}, "
                        f"{other!r} {list(shapes[k])})",
                        hint="give both the same size (plan.dim_ties lists the dims the model ties)")

    def name_of(self, key: Any) -> Any:
        """The tensor name a feeds key (name or identifier) stands for."""
        return key if key in self._name_set else self.ident_to_name.get(key, key)

    def _order(self, feeds: Mapping[str, Any]) -> tuple[Any, ...]:
        """The keys of ``feeds`` in plan input order (full normalization; remembered per key tuple)."""
        self.normalize(feeds)  # raises on unknown, missing or doubled inputs
        by_name = {self.name_of(k): k for k in feeds}
        order = tuple(by_name[n] for n in self.names)
        try:
            keys = tuple(feeds)
            if len(self._orders) >= 16:
                self._orders.clear()
            self._orders[keys] = order
        except TypeError:
            pass
        return order

    def normalize(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """``feeds`` keyed by tensor name; an unknown, missing or doubled input is an InputError."""
        out: dict[str, Any] = {}
        for key, value in feeds.items():
            name = self.name_of(key)
            if name in out:
                raise InputError(f"input {name!r} given twice (by name and by identifier)")
            out[name] = value
        expected = list(self.names)
        unknown = [k for k in out if k not in self._name_set]
        missing = [n for n in expected if n not in out]
        if unknown or missing:
            parts = ([f"unknown {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
            raise InputError(f"inputs: {', '.join(parts)}; expected {expected}")
        return out

    def check_one(self, t: TensorPlan, x: Any, *, check_finite: bool) -> Shape:
        """The full check of one input array; its shape."""
        want_dtype = np_dtype(t.dtype)
        on_device = t.memory == "device" and self._cuda
        if on_device:
            if isinstance(x, np.ndarray):
                raise InputError(f"input {t.name!r}: expected a CUDA array (memory: device), got a numpy array "
                                 "on the host", hint="pass a torch/cupy CUDA tensor, or use a host memory strategy")
            info = cuda_array_info(x)
            if info is None:
                raise InputError(f"input {t.name!r}: expected a CUDA array with __cuda_array_interface__, got {describe(x)}")
            shape, dtype, contiguous = info.shape, info.dtype, info.contiguous
        else:
            if isinstance(x, (np.ma.MaskedArray, np.matrix)):  # ndarray subclasses whose meaning would be lost
                raise InputError(f"input {t.name!r}: got a {type(x).__name__}; the engine would read its raw data "
                                 "and ignore the mask (or matrix semantics)",
                                 hint="pass np.ma.filled(x, fill_value) or np.asarray(x)")
            if not isinstance(x, np.ndarray):
                where = "a CUDA array" if hasattr(x, "__cuda_array_interface__") else describe(x)
                raise InputError(f"input {t.name!r}: expected a numpy array in host memory ({t.memory}), got {where}",
                                 hint="copy it to the host (e.g. tensor.cpu().numpy()), or declare memory: device")
            shape, dtype, contiguous = tuple(x.shape), x.dtype, bool(x.flags.c_contiguous)
        if dtype != want_dtype:
            raise InputError(f"input {t.name!r}: expected dtype {t.dtype}, got {dtype} (no implicit casts)",
                             hint=f"convert it first, e.g. x.astype(np.{want_dtype.name})")
        check_shape(t, shape)
        if not contiguous:
            raise InputError(f"input {t.name!r}: array is not C-contiguous",
                             hint="pass np.ascontiguousarray(x) (or tensor.contiguous())")
        if check_finite and not on_device and dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(x.size - np.isfinite(x).sum())
            raise InputError(f"input {t.name!r}: {bad} NaN/Inf value(s) (check_finite is on)")
        return shape

    def tensor(self, name: str, role: str) -> TensorPlan:
        """Tensor ``name`` (or identifier) of ``role``; an InputError naming the choices otherwise."""
        name = self.ident_to_name.get(name, name)
        try:
            t = self.plan.tensor(name)
        except KeyError:
            names = [x.name for x in (self.plan.inputs if role == "input" else self.plan.outputs)]
            raise InputError(f"no tensor named {name!r}; {role}s: {names}") from None
        if t.role != role:
            raise InputError(f"tensor {name!r} is an {t.role}, not an {role}")
        return t


def scalar_input(t: TensorPlan, x: float | np.generic) -> np.ndarray:
    """A rank-0 array for a scalar: a numpy scalar keeps its dtype (checked like an array's: no implicit
    casts); a Python number takes the input's dtype when its value survives (16000 for an int64 ``sr``)."""
    if isinstance(x, np.generic):
        return np.asarray(x)
    try:
        arr = np.asarray(x, dtype=np_dtype(t.dtype))
    except (OverflowError, ValueError):
        arr = None
    if arr is None or arr.item() != x:
        raise InputError(f"input {t.name!r}: {x!r} does not fit its dtype {t.dtype}")
    return arr


def describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"numpy array {x.dtype}{list(x.shape)}"
    return type(x).__module__ + "." + type(x).__qualname__


def check_shape(t: TensorPlan, shape: Shape) -> None:
    if len(shape) != len(t.shape):
        raise InputError(f"input {t.name!r}: expected rank {len(t.shape)} {expected(t)}, got shape {list(shape)}")
    if not t.dynamic:
        if shape != t.shape:
            raise InputError(f"input {t.name!r}: expected shape {list(t.shape)}, got {list(shape)}")
        return
    for i, (lo, d, hi) in enumerate(zip(t.min_shape, shape, t.max_shape)):
        if not lo <= d <= hi:
            raise InputError(f"input {t.name!r}: dimension {i} is {d}, outside the profile {expected(t)} "
                             f"(got shape {list(shape)})",
                             hint="rebuild with a wider profile: inputs.<name>.profile in the recipe")


def expected(t: TensorPlan) -> str:
    """``[1, 3, 224, 224]`` or ``[1..8, 3, 224, 224]`` for a profile."""
    if not t.dynamic:
        return str(list(t.shape))
    return "[" + ", ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in zip(t.min_shape, t.max_shape)) + "]"


__all__ = ["InputSpec", "Inputs", "check_shape", "describe", "expected"]
