"""The I/O contract in numpy, for the reference side of validation.

Validation runs the ORIGINAL model on onnxruntime CPU. To compare it with the lowered engine, the
same contract is applied around it here: :func:`reference_input` turns what the caller hands over
(e.g. uint8 NHWC) into the model's input, :func:`reference_outputs` turns the model's output into
what the caller gets back (e.g. a uint8 class map). These functions mirror the graph the passes
build, so a difference between the two sides is an engine difference, not a contract difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trtflow.errors import InputError
from trtflow.plan.model import Plan, TensorPlan


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype of a plan dtype name; bfloat16 from ml_dtypes (an onnx dependency)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# -- inputs -------------------------------------------------------------------------------------------
def fixed_feeds(plan: Plan) -> dict[str, np.ndarray]:
    """The original model's inputs the recipe fixed (``value:``): what the engine holds as constants."""
    return {f.name: f.array() for f in plan.fixed_inputs}


def reference_input(t: TensorPlan, caller_array: np.ndarray) -> np.ndarray:
    """The original model's input for what the caller hands over: cast, NHWC->NCHW, normalize.

    Arithmetic is float64 and rounded once at the end to the model's dtype.
    """
    x = np.asarray(caller_array)
    if x.dtype != numpy_dtype(t.dtype):
        raise InputError(f"input {t.name!r}: expected {t.dtype}, got {x.dtype}")
    if len(x.shape) != len(t.shape) or any(not lo <= d <= hi for d, lo, hi in zip(x.shape, t.min_shape, t.max_shape)):
        raise InputError(f"input {t.name!r}: shape {x.shape} is outside {t.min_shape}..{t.max_shape}")
    y = x.astype(np.float64) if t.preprocess or t.dtype != t.model_dtype or t.resize else x
    if t.layout == "NHWC":
        y = y.transpose(0, 3, 1, 2)
    if t.resize:
        y = resize(y, tuple(t.resize["to"]), t.resize["mode"])
    if t.preprocess:
        y = normalize(y, t.preprocess)
    return np.require(y.astype(numpy_dtype(t.model_dtype), copy=False), requirements="C")  # keeps rank 0


def _source_coords(n_in: int, n_out: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, frac) per output index along one axis, computed as onnxruntime does (float32 coordinates,
    clamped to the edge): bilinear ``half_pixel``, nearest ``asymmetric`` + ``floor``."""
    scale = np.float32(n_out) / np.float32(n_in)
    i = np.arange(n_out, dtype=np.float32)
    if mode == "nearest":
        i0 = np.minimum(np.floor(i / scale).astype(np.int64), n_in - 1)
        return i0, i0, np.zeros(n_out)
    src = np.clip((i + np.float32(0.5)) / scale - np.float32(0.5), 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float64)


def resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize the last two axes of ``x`` (NCHW) to ``size``, as the engine's ONNX ``Resize`` does."""
    (h0, h1, fh), (w0, w1, fw) = (_source_coords(n, m, mode) for n, m in zip(x.shape[-2:], size))
    rows = x[..., h0, :] * (1 - fh)[:, None] + x[..., h1, :] * fh[:, None]
    return rows[..., w0] * (1 - fw) + rows[..., w1] * fw


def normalize(x: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """``(x*scale - mean)/std`` per channel (axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * float(pre.get("scale", 1.0))
    if pre.get("mean") is not None:
        y = y - np.asarray(pre["mean"], dtype=np.float64).reshape(shape)
    if pre.get("std") is not None:
        y = y / np.asarray(pre["std"], dtype=np.float64).reshape(shape)
    return y


# -- outputs ------------------------------------------------------------------------------------------
def reference_outputs(plan: Plan, source_name: str, model_output_array: np.ndarray) -> dict[str, np.ndarray]:
    """What the caller gets back for model output ``source_name``: reducer, then dtype narrowing.

    One model output gives one plan output, or two for topk (``<name>_values``, ``<name>_indices``).
    """
    tensors = [t for t in plan.outputs if t.source == source_name]
    if not tensors:
        raise KeyError(f"the plan has no output from model output {source_name!r}")
    x = np.asarray(model_output_array)
    red = tensors[0].reduce or {}
    op = red.get("op")
    if op == "topk":
        values, indices = topk(x, int(red["k"]), int(red["axis"]))
        got = {f"{source_name}_values": values, f"{source_name}_indices": indices}
    elif op == "argmax":
        got = {tensors[0].name: np.argmax(x, axis=int(red["axis"]))}
    elif op == "threshold":
        mask = x > np.asarray(red["value"], dtype=x.dtype)
        got = {tensors[0].name: np.packbits(mask, axis=-1) if red.get("pack") == "bits" else mask}
    elif op == "softmax":
        got = {tensors[0].name: softmax(x, int(red["axis"]))}
    elif op == "sigmoid":
        got = {tensors[0].name: sigmoid(x)}
    elif op is None:
        got = {tensors[0].name: x}
    else:
        raise ValueError(f"unknown reducer {op!r}")
    return {t.name: got[t.name].astype(numpy_dtype(t.dtype), copy=False) for t in tensors}


def topk(x: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``k`` along ``axis``, sorted descending; ties keep the lower index first (ONNX TopK)."""
    order = np.argsort(-x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax computed in float64 (max subtracted), returned in ``x``'s dtype."""
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


def sigmoid(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(x.dtype)  # tanh form: no overflow for large |z|
