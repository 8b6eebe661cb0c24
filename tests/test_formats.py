"""plan/formats.py against NvInferRuntime.h's ``enum class TensorFormat``: the vectorized dimension is
"third to last" for CHW2/HWC8/CHW4/CHW16/CHW32/HWC/HWC16 and "fourth to last" for DHWC8/CDHW32/DHWC,
whatever the rank (at least 3, resp. 4)."""

from __future__ import annotations

import numpy as np
import pytest

from trtflow.plan.formats import FORMATS, channel_dim, nbytes, pack, physical_shape, unpack

THIRD_TO_LAST = ["chw2", "hwc8", "chw4", "chw16", "chw32", "hwc", "hwc16"]
FOURTH_TO_LAST = ["dhwc8", "cdhw32", "dhwc"]


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("fmt", THIRD_TO_LAST)
def test_image_formats_vectorize_the_third_to_last_dim(fmt: str, rank: int) -> None:
    assert channel_dim(rank, fmt) == rank - 3


@pytest.mark.parametrize("rank", [4, 5, 6])
@pytest.mark.parametrize("fmt", FOURTH_TO_LAST)
def test_volume_formats_vectorize_the_fourth_to_last_dim_at_every_rank(fmt: str, rank: int) -> None:
    assert channel_dim(rank, fmt) == rank - 4  # rank 4 ([C][D][H][W]): dim 0, not 1


def test_every_format_is_classified() -> None:
    assert set(THIRD_TO_LAST + FOURTH_TO_LAST) == set(FORMATS) - {"linear"}


def test_rank4_dhwc8_pads_the_channel_not_the_depth() -> None:
    """[C=3, D=2, H=4, W=5] in DHWC8: laid out [D][H][W][8], the 3 channels padded to 8."""
    shape = (3, 2, 4, 5)
    assert physical_shape(shape, "dhwc8") == (2, 4, 5, 8)
    assert nbytes(shape, "float16", "dhwc8") == 2 * 4 * 5 * 8 * 2
    x = np.arange(np.prod(shape), dtype=np.float16).reshape(shape)
    p = pack(x, "dhwc8")
    assert p[1, 2, 3, 2] == x[2, 1, 2, 3] and p[1, 2, 3, 5] == 0  # channel 2 kept, channel 5 is padding
    np.testing.assert_array_equal(unpack(p, shape, "dhwc8"), x)


@pytest.mark.parametrize("fmt, shape, physical", [
    ("cdhw32", (40, 2, 3, 3), (2, 2, 3, 3, 32)),     # [ceil(C/32)][D][H][W][32]
    ("dhwc", (3, 2, 4, 4), (2, 4, 4, 3)),            # channel last, unpadded
    ("dhwc8", (1, 3, 2, 4, 4), (1, 2, 4, 4, 8)),     # rank 5 unchanged: N kept outermost
])
def test_volume_formats_at_rank_4_and_5(fmt: str, shape: tuple[int, ...], physical: tuple[int, ...]) -> None:
    assert physical_shape(shape, fmt) == physical
    x = np.random.default_rng(0).integers(1, 100, size=shape).astype(np.float16 if fmt != "dhwc" else np.float32)
    np.testing.assert_array_equal(unpack(pack(x, fmt), shape, fmt), x)
