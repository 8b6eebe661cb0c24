"""GPU tests of the TensorRT engine's pieces that need only CUDA (no TensorRT runs on our GPUs): the
IOutputAllocator's memory (grown through trtflow.runtime.cuda, copied back D2D into the runtime's buffer on
the stream) and the runtime-cache key of this GPU and driver. Run by scripts/gpu_suite.sh."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trtflow.errors import ArtifactError
from trtflow.runtime import cuda


def _why_not() -> str | None:
    try:
        if importlib.util.find_spec("cuda.bindings") is None:
            return "cuda-bindings is not installed"
    except ModuleNotFoundError:
        return "cuda-bindings is not installed"
    return None if cuda.cuda_available() else "no CUDA GPU is visible"


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"GPU tests: {REASON}")]


def test_gpu_output_allocator_grows_in_device_memory_and_copies_back(tmp_path: Path) -> None:
    from helpers.models import conv_bn_relu, plan_for

    from trtflow.backends import _trt_common as common

    conv_bn_relu(tmp_path / "m.onnx")
    y = plan_for(tmp_path, "m.onnx").outputs[0]
    t = replace(y, name="idx", dtype="int64", shape=(512,), min_shape=(0,), max_shape=(512,), max_bytes=4096)
    mem = common._OutputMemory({"idx": 4096})
    bound = cuda.malloc(4096)
    mem.bound["idx"] = bound
    stream = cuda.stream_create()
    try:
        assert mem.reallocate("idx", bound, 4096, 256) == bound
        grown = mem.reallocate("idx", bound, 1 << 20, 256)  # TensorRT's upper bound exceeds the runtime's buffer
        assert grown != bound and grown % 256 == 0
        result = np.arange(300, dtype=np.int64)
        cuda.memcpy(grown, result.ctypes.data, result.nbytes, "h2d")
        mem.shapes["idx"] = (300,)
        mem.copy_back(t, stream=stream)
        cuda.stream_synchronize(stream)
        back = np.zeros(300, dtype=np.int64)
        cuda.memcpy(back.ctypes.data, bound, back.nbytes, "d2h")
        np.testing.assert_array_equal(back, result)
        mem.shapes["idx"] = (600,)  # larger than the plan's bound: an error, not an overflow
        with pytest.raises(ArtifactError, match="needs 4800 bytes"):
            mem.copy_back(t, stream=stream)
    finally:
        mem.close()
        cuda.free(bound)
        cuda.stream_destroy(stream)
    assert not mem.grown


def test_gpu_runtime_cache_key_names_this_gpu_and_driver(tmp_path: Path) -> None:
    from trtflow.backends import _trt_common as common

    f = common.runtime_cache_file(tmp_path, "1.7.1.116")
    assert f is not None
    info = cuda.device_properties()
    cc = f"sm{info.compute_capability[0]}{info.compute_capability[1]}"
    assert cc in f.key and f"driver{cuda.driver_version()}" in f.key and cuda.driver_version() >= 12000
    print(f"runtime cache file here: {f.path.name}")
