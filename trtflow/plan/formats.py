"""TensorRT I/O formats, their dtype rules and padded byte sizes, and dtype sizes.

Pure data and arithmetic, no TensorRT import: the planner checks a recipe against these rules on any
machine, and the runner uses them to pack/unpack vectorized layouts on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ITEMSIZE: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8, "bool": 1,
}


@dataclass(frozen=True)
class FormatRule:
    name: str
    dtypes: frozenset[str]
    kind: Literal["linear", "vector_major", "vector_minor", "channel_last"]
    vector: int  # scalars per vector (1 for linear/channel_last)
    min_rank: int
    dla_only: bool = False


_ALL = frozenset(ITEMSIZE)
FORMATS: dict[str, FormatRule] = {r.name: r for r in [
    FormatRule("linear", _ALL, "linear", 1, 0),
    FormatRule("chw2", frozenset({"float16", "bfloat16"}), "vector_major", 2, 3),
    FormatRule("hwc8", frozenset({"float16", "bfloat16"}), "vector_minor", 8, 3),
    FormatRule("chw4", frozenset({"int8"}), "vector_major", 4, 3),
    FormatRule("chw16", frozenset({"float16"}), "vector_major", 16, 3, dla_only=True),
    FormatRule("chw32", frozenset({"int8", "float32", "float16"}), "vector_major", 32, 3),
    FormatRule("dhwc8", frozenset({"float16", "bfloat16"}), "vector_minor", 8, 4),
    FormatRule("cdhw32", frozenset({"float16", "int8"}), "vector_major", 32, 4),
    FormatRule("hwc", frozenset({"float32", "uint8"}), "channel_last", 1, 3),
    FormatRule("hwc16", frozenset({"float16", "int8"}), "vector_minor", 16, 3),
    FormatRule("dhwc", frozenset({"float32"}), "channel_last", 1, 4),
]}


def check_format(fmt: str, dtype: str, rank: int) -> str | None:
    """None if TensorRT allows ``fmt`` for ``dtype`` at ``rank`` on a GPU, else the reason."""
    rule = FORMATS[fmt]
    if rule.dla_only:
        return f"format {fmt} is DLA-only; a GPU build fails (use linear, or hwc8/chw2 for fp16)"
    if dtype not in rule.dtypes:
        return f"format {fmt} takes {', '.join(sorted(rule.dtypes))}, not {dtype}"
    if rank < rule.min_rank:
        return f"format {fmt} needs a tensor of rank >= {rule.min_rank}, got rank {rank}"
    return None


def channel_dim(rank: int, fmt: str) -> int:
    """The dimension TensorRT vectorizes (the channel): third to last for the 2-D image formats (CHW2,
    HWC8, HWC, ...), fourth to last for the volume formats DHWC8, CDHW32 and DHWC, at every rank they
    allow (NvInferRuntime.h, ``enum class TensorFormat``). A 4-D tensor in DHWC8 is [C][D][H][W]: dim 0."""
    return rank - FORMATS[fmt].min_rank


def physical_shape(shape: tuple[int, ...], fmt: str) -> tuple[int, ...]:
    """Shape of the engine buffer as laid out in memory (for packing), outermost first."""
    rule = FORMATS[fmt]
    if rule.kind == "linear":
        return tuple(shape)
    c = channel_dim(len(shape), fmt)
    outer, ch, spatial = shape[:c], shape[c], shape[c + 1:]
    if rule.kind == "channel_last":
        return (*outer, *spatial, ch)
    groups = math.ceil(ch / rule.vector)
    if rule.kind == "vector_major":
        return (*outer, groups, *spatial, rule.vector)
    return (*outer, *spatial, groups * rule.vector)


def padded_elements(shape: tuple[int, ...], fmt: str) -> int:
    return math.prod(physical_shape(tuple(shape), fmt))


def nbytes(shape: tuple[int, ...], dtype: str, fmt: str = "linear") -> int:
    """Bytes of a tensor in ``fmt``, counting the padding of the vectorized dimension."""
    return padded_elements(shape, fmt) * ITEMSIZE[dtype]


def inflation(shape: tuple[int, ...], fmt: str) -> float:
    """How many times more bytes ``fmt`` moves than linear (1.0 = no padding)."""
    n = math.prod(shape)
    return padded_elements(shape, fmt) / n if n else 1.0


def pack(array: np.ndarray, fmt: str) -> np.ndarray:
    """Logical [N]C[D]HW array -> contiguous array in ``fmt``'s physical layout (zero padding)."""
    rule = FORMATS[fmt]
    if rule.kind == "linear":
        return np.ascontiguousarray(array)
    c = channel_dim(array.ndim, fmt)
    moved = np.moveaxis(array, c, -1)  # [..outer, ..spatial, C]
    if rule.kind == "channel_last":
        return np.ascontiguousarray(moved)
    ch = array.shape[c]
    groups = math.ceil(ch / rule.vector)
    pad = groups * rule.vector - ch
    if pad:
        moved = np.concatenate([moved, np.zeros((*moved.shape[:-1], pad), dtype=array.dtype)], axis=-1)
    if rule.kind == "vector_minor":
        return np.ascontiguousarray(moved)
    # vector-major: [..outer, ..spatial, G, V] -> [..outer, G, ..spatial, V]
    split = moved.reshape(*moved.shape[:-1], groups, rule.vector)
    return np.ascontiguousarray(np.moveaxis(split, -2, c))


def unpack(physical: np.ndarray, shape: tuple[int, ...], fmt: str) -> np.ndarray:
    """Inverse of :func:`pack`: physical layout -> logical array of ``shape`` (padding dropped)."""
    rule = FORMATS[fmt]
    if rule.kind == "linear":
        return physical.reshape(shape)
    c = channel_dim(len(shape), fmt)
    ch = shape[c]
    if rule.kind == "vector_major":
        # [..outer, G, ..spatial, V] -> [..outer, ..spatial, G*V]
        moved = np.moveaxis(physical, c, -2)
        moved = moved.reshape(*moved.shape[:-2], -1)
    else:
        moved = physical
    return np.moveaxis(moved[..., :ch], -1, c)
