"""GPU tests of serving (scripts/gpu_suite.sh): asyncio on CUDA runners, pools of instances on one GPU,
runners on chosen devices; on a host with two or more GPUs, one runner per GPU, every GPU used.

The engine is torch (the GPU engine of the GPU machine); references are onnxruntime on the CPU.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup


def _why_not() -> str | None:
    for mod in ("cuda.bindings", "torch", "onnx2torch", "onnxruntime"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed"
        except ModuleNotFoundError:
            return f"{mod} is not installed"
    from trtflow.runtime import cuda

    if not cuda.cuda_available():
        return "no CUDA GPU is visible (cudaGetDeviceCount)"
    return None


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"GPU tests: {REASON}")]


def _gpus() -> int:
    from trtflow.runtime import cuda

    return cuda.device_count() if REASON is None else 0


def _x(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sup.mlp_model(tmp_path_factory.mktemp("mlp") / "mlp.onnx")


@pytest.fixture(scope="module")
def refs(model: Path) -> list[np.ndarray]:
    return [sup.reference(model, {"x": _x(i)})["y"] for i in range(64)]


def _cls(root: Path, model: Path, streams: dict[str, Any], serving: dict[str, Any] | None = None) -> Any:
    recipe = {"inputs": {"x": {"memory": "pinned"}}, "outputs": {"y": {"memory": "pinned"}}, "streams": streams,
              "serving": serving or {}}
    art, plan = sup.make_artifact(root, model, recipe, backend="torch")
    return getattr(sup.load_runner(art), plan.class_name)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("streams", [{"topology": "sync"}, {"topology": "async", "cuda_graph": True},
                                     {"topology": "pipelined", "depth": 3}])
def test_gpu_thousand_awaits_in_order_with_cancellation(tmp_path: Path, model: Path, refs: list[np.ndarray],
                                                        streams: dict[str, Any]) -> None:
    cls = _cls(tmp_path, model, streams)
    cancelled = set(range(1, 1000, 97))
    with cls(backend="torch") as r:
        order, outs = sup.awaits_in_order(r, 1000, lambda i: _x(i % 64), cancel=tuple(sorted(cancelled)))
    assert order == [i for i in range(1000) if i not in cancelled]
    for i, y in enumerate(outs):
        if i in cancelled:
            assert isinstance(y, asyncio.CancelledError)
        else:
            _close(y, refs[i % 64])


def test_gpu_pool_of_instances_on_one_device(tmp_path: Path, model: Path, refs: list[np.ndarray]) -> None:
    from trtflow.runtime.pool import RunnerPool

    cls = _cls(tmp_path, model, {"topology": "pipelined", "depth": 2}, {"instances": 3})
    for devices in (None, [0]):  # the current device, and device 0 chosen (the device-switching path)
        with RunnerPool(cls, devices=devices, backend="torch") as pool:
            assert len(pool.runners) == 3
            assert len({s for r in pool.runners for s in r.streams.values()}) == 3 * 3  # own streams each
            outs = [o.y.copy() for o in pool.stream({"x": _x(i)} for i in range(48))]

            async def main() -> list[np.ndarray]:
                return [o.y for o in await asyncio.gather(*(pool.infer(x=_x(i), copy=True) for i in range(48)))]

            outs_async = asyncio.run(main())
            for i in range(48):
                _close(outs[i], refs[i])
                _close(outs_async[i], refs[i])
            assert all(s.requests > 0 and s.errors == 0 for s in pool.stats()), pool.stats()
            print(f"\n[gpu] {pool.describe()}")


def test_gpu_two_runners_on_the_same_device(tmp_path: Path, model: Path, refs: list[np.ndarray]) -> None:
    from trtflow.runtime import cuda

    cls = _cls(tmp_path, model, {"topology": "sync"})
    before = cuda.current_device()
    with cls(backend="torch", device_index=0) as a, cls(backend="torch", device_index=0, share_engine=a) as b:
        assert a._engine is not b._engine  # torch: a module per instance
        for i in range(8):
            pa, pb = a.submit(x=_x(i)), b.submit(x=_x(i + 1))
            _close(pa.result().y, refs[i])
            _close(pb.result().y, refs[i + 1])
        assert cuda.current_device() == before


@pytest.mark.skipif(_gpus() < 2, reason="needs two or more GPUs")
def test_gpu_one_runner_per_gpu_every_gpu_used(tmp_path: Path, model: Path, refs: list[np.ndarray]) -> None:
    from trtflow.runtime.pool import RunnerPool

    cls = _cls(tmp_path, model, {"topology": "pipelined", "depth": 2}, {"devices": "all"})
    with RunnerPool(cls, backend="torch") as pool:
        n = _gpus()
        assert pool.devices == list(range(n)) and [r.device_index for r in pool.runners] == list(range(n))
        for r in pool.runners:  # the torch module lives on the runner's GPU
            assert r._engine._device.index == r.device_index  # type: ignore[union-attr]
        outs = [o.y.copy() for o in pool.stream({"x": _x(i)} for i in range(16 * n))]

        async def main() -> list[np.ndarray]:
            return [o.y for o in await asyncio.gather(*(pool.infer(x=_x(i), copy=True) for i in range(16 * n)))]

        outs_async = asyncio.run(main())
        stats = pool.stats()
        print(f"\n[gpu] {pool.describe()}\n[gpu] {stats}")
        assert all(s.requests > 0 and s.errors == 0 for s in stats)  # every GPU served
    with cls(backend="torch") as one:
        single = [one(x=_x(i), copy=True).y for i in range(16 * n)]
    for i in range(16 * n):  # results identical to one GPU
        np.testing.assert_array_equal(outs[i], single[i])
        np.testing.assert_array_equal(outs_async[i], single[i])
        if i < len(refs):
            _close(single[i], refs[i])


def test_gpu_dynamic_batching_matches_single_requests(tmp_path: Path) -> None:
    from trtflow.runtime.pool import RunnerPool

    model = sup.conv_model(tmp_path / "conv.onnx", batch="N", hw=32)
    recipe = {"inputs": {"image": {"profile": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [16, 3, 32, 32]},
                                   "memory": "pinned"}}, "streams": {"topology": "pipelined", "depth": 2}}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="torch")
    xs = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(64)]

    async def main(pool: RunnerPool) -> list[dict[str, Any]]:
        return await asyncio.gather(*(pool.infer_feeds({"image": x}) for x in xs))

    with RunnerPool(art, instances=2, batching={"window_ms": 2, "max_batch": 16}, backend="torch") as pool:
        outs = asyncio.run(main(pool))
        batches = pool._batcher.batches if pool._batcher is not None else 0
    assert 4 <= batches < 64  # requests were joined
    for x, out in zip(xs, outs):
        _close(out["logits"], sup.reference(model, {"image": x})["logits"])
