"""Reliability on the GPU machine: out-of-memory at allocation, and the full build -> validate path on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_gpu_runtime import REASON

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"GPU tests: {REASON}")]
from helpers.models import make_conv_model


def _project(tmp: Path, body: str, hw: int = 16, build: str = "") -> Path:
    (tmp / "pyproject.toml").write_text("[project]\nname='x'\n")
    make_conv_model(tmp / "m.onnx", batch="N", hw=hw)
    (tmp / "r.yaml").write_text("model: m.onnx\nbuild: {backend: torch" + build + "}\n" + body)
    return tmp / "r.yaml"


def test_malloc_failure_is_a_clear_cuda_error() -> None:
    from trtflow.errors import CudaError
    from trtflow.runtime import cuda

    with pytest.raises(CudaError, match="cudaMalloc.*cudaErrorMemoryAllocation") as exc:
        cuda.malloc(1 << 50)
    assert "out of memory" in str(exc.value)


def test_runner_out_of_memory_at_allocation_leaks_nothing(tmp_path: Path) -> None:
    """Buffers sized at a huge profile max (1M x 3 x 64 x 64 fp32 in, 1M x 5 x 64 x 64 out: ~134 GB per
    buffer set) cannot be allocated: a clear error, and every handle released."""
    from trtflow.build import build
    from trtflow.errors import CudaError
    from trtflow.runtime import cuda
    from trtflow.runtime.runner import Runner

    recipe = _project(tmp_path, "inputs: {image: {profile: {min: [1,3,64,64], opt: [1,3,64,64], "
                                "max: [1048576,3,64,64]}}}\noutputs: {logits: {memory: device}}\n"
                                "streams: {topology: pipelined, depth: 3}\n", hw=64,
                     build=", max_io_mib: 1000000")  # past the planner's memory check: the runner's own is tested
    res = build(recipe, out_root=tmp_path / "build")
    before = dict(cuda.live_handles())
    free_before = cuda.mem_get_info()[0]
    with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
        Runner(res.artifact)
    assert cuda.live_handles() == before
    assert abs(cuda.mem_get_info()[0] - free_before) < 64 << 20


def test_plan_refuses_buffers_beyond_this_machine_and_knows_the_gpu(tmp_path: Path) -> None:
    """The same profile without build.max_io_mib is refused while planning, with the numbers; the limits
    the planner checks include this GPU's memory (issue 15 item 13)."""
    from trtflow.errors import RecipeError
    from trtflow.plan import make_plan
    from trtflow.plan.planner import memory_limits
    from trtflow.recipe import load_recipe

    assert any("the GPU has" in what for _, what in memory_limits())
    recipe = _project(tmp_path, "inputs: {image: {profile: {min: [1,3,64,64], opt: [1,3,64,64], "
                                "max: [1048576,3,64,64]}}}\nstreams: {topology: pipelined, depth: 3}\n", hw=64)
    with pytest.raises(RecipeError, match=r"the I/O buffers need .* GiB at the max shapes"):
        make_plan(load_recipe(recipe))


def test_build_and_validate_on_cuda_through_the_cli_path(tmp_path: Path) -> None:
    from trtflow.build import build
    from trtflow.validate.run import validate_artifact

    recipe = _project(tmp_path, "precision: fp16\ninputs: {image: {shape: [2,3,16,16], dtype: uint8, layout: NHWC, "
                                "preprocess: {scale: 0.0039215686, mean: [0.5,0.5,0.5], std: [0.25,0.25,0.25]}}}\n"
                                "outputs: {logits: {reduce: {op: argmax, dtype: uint8}}}\n"
                                "streams: {topology: pipelined, depth: 2, cuda_graph: true}\n"
                                "validate: {metrics: {logits: [{kind: agreement, min: 0.95}]}}\n")
    res = build(recipe, out_root=tmp_path / "build")
    rep = validate_artifact(res.artifact, device="cuda")
    assert rep.device == "cuda" and rep.backend == "torch" and rep.passed, rep.to_dict()
    assert np.isfinite(rep.outputs[0].metrics[0].value)
