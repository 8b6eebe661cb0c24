"""Serving: asyncio on runners, the pool's dispatcher, several devices (runtime/aio.py, pool.py, devices.py).

Real engines on the CPU (onnxruntime over small real models); the CUDA code paths (completion
threads, device switching, engine sharing) run over the fake CUDA runtime of test_runtime_support,
made thread-safe here (``test_contract_*``: they prove the runtime's contract, not GPU behaviour;
the GPU versions live in tests/gpu/test_gpu_serving.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup

from trtflow.errors import InputError, Overloaded, RecipeError, RunnerClosed
from trtflow.runtime import devices
from trtflow.runtime.pool import RunnerPool

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


def _x(seed: int, shape: tuple[int, ...] = (1, 64)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, type]:
    root = tmp_path_factory.mktemp("mlp")
    model = sup.mlp_model(root / "mlp.onnx")
    art, plan = sup.make_artifact(root, model, {"serving": {"instances": 2, "max_queue": 16}})
    return art, getattr(sup.load_runner(art), plan.class_name)


@pytest.fixture(scope="module")
def refs(mlp: tuple[Path, type]) -> list[np.ndarray]:
    with mlp[1]() as r:
        return [r(x=_x(i), copy=True).y for i in range(64)]


# -- asyncio on one runner (CPU engine: the runner's worker thread) ------------------------------------
def test_thousand_concurrent_awaits_complete_in_submission_order(mlp: tuple[Path, type], refs: list[np.ndarray]) -> None:
    xs = [_x(i % 64) for i in range(1000)]
    done: list[int] = []

    async def one(i: int, r: Any) -> np.ndarray:
        out = await r.infer(x=xs[i])
        done.append(i)
        return out.y.copy()  # a view: read before the next await

    async def main(r: Any) -> list[np.ndarray]:
        return await asyncio.gather(*(one(i, r) for i in range(1000)))

    with mlp[1]() as r:
        outs = asyncio.run(main(r))
        assert done == list(range(1000))  # one runner: completion order is submission order
        for i, o in enumerate(outs):
            np.testing.assert_array_equal(o, refs[i % 64])
        outs = asyncio.run(main(r))  # a second event loop gets its own dispatcher
        np.testing.assert_array_equal(outs[999], refs[999 % 64])


def test_infer_feeds_dict_and_copy(mlp: tuple[Path, type], refs: list[np.ndarray]) -> None:
    async def main(r: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        a = await r.infer_feeds({"x": _x(1)}, copy=True)
        b = await r.infer_feeds({"x": _x(2)})
        return a, b

    with mlp[1]() as r:
        a, b = asyncio.run(main(r))
        np.testing.assert_array_equal(a["y"], refs[1])
        np.testing.assert_array_equal(b["y"], refs[2])


def test_bad_request_fails_alone_and_the_runner_keeps_serving(mlp: tuple[Path, type], refs: list[np.ndarray]) -> None:
    async def main(r: Any) -> list[Any]:
        return await asyncio.gather(r.infer(x=_x(0)), r.infer(x=np.zeros((1, 3), np.float32)), r.infer(x=_x(4)),
                                    return_exceptions=True)

    with mlp[1]() as r:
        _, bad, c = asyncio.run(main(r))
        assert isinstance(bad, InputError) and "'x'" in str(bad) and "[1, 64]" in str(bad)
        np.testing.assert_array_equal(c.y, refs[4])


def test_cancelled_awaits_do_not_touch_the_next_requests(mlp: tuple[Path, type], refs: list[np.ndarray]) -> None:
    async def main(r: Any) -> list[np.ndarray]:
        tasks = [asyncio.ensure_future(r.infer(x=_x(i), copy=True)) for i in range(20)]
        await asyncio.sleep(0)  # the first one is in flight, the rest queued
        for t in tasks[0:20:3]:  # cancel in flight and queued ones
            t.cancel()
        outs = []
        for i, t in enumerate(tasks):
            try:
                outs.append((i, (await t).y))
            except asyncio.CancelledError:
                assert i % 3 == 0
        after = await r.infer(x=_x(30), copy=True)
        return [*outs, (30, after.y)]

    with mlp[1]() as r:
        for i, y in asyncio.run(main(r)):
            np.testing.assert_array_equal(y, refs[i])


def test_requests_after_close_and_queued_at_close_fail_clearly(mlp: tuple[Path, type]) -> None:
    async def main(r: Any) -> list[Any]:
        tasks = [asyncio.ensure_future(r.infer(x=_x(i))) for i in range(6)]
        await asyncio.sleep(0)
        r.close()  # from the loop thread, with requests in flight and queued
        return await asyncio.gather(*tasks, return_exceptions=True)

    r = mlp[1]()
    results = asyncio.run(main(r))
    assert any(isinstance(x, RunnerClosed) and "closed" in str(x) for x in results)
    with pytest.raises(RunnerClosed, match="closed"):
        asyncio.run(r.infer(x=_x(0)))


# -- the pool's dispatcher (CPU engine) ----------------------------------------------------------------
def test_pool_sync_stream_and_asyncio_agree_with_one_runner(mlp: tuple[Path, type], refs: list[np.ndarray]) -> None:
    with RunnerPool(mlp[1]) as pool:  # instances: 2 from the recipe's serving section
        assert len(pool.runners) == 2 and pool.max_queue == 16
        for i in range(8):
            np.testing.assert_array_equal(pool(x=_x(i)).y, refs[i])
            np.testing.assert_array_equal(pool.run({"x": _x(i)})["y"], refs[i])
        outs = [o.y.copy() for o in pool.stream({"x": _x(i)} for i in range(32))]
        for i, y in enumerate(outs):
            np.testing.assert_array_equal(y, refs[i])
        pend = [pool.submit(x=_x(i)) for i in range(4)]
        for i, p in enumerate(pend):
            np.testing.assert_array_equal(p.result(copy=True).y, refs[i])

        async def main() -> list[np.ndarray]:
            async def one(i: int) -> np.ndarray:
                return (await pool.infer(x=_x(i), copy=True)).y

            return await asyncio.gather(*(one(i) for i in range(16)))

        for i, y in enumerate(asyncio.run(main())):
            np.testing.assert_array_equal(y, refs[i])
        stats = pool.stats()
        assert [s.index for s in stats] == [0, 1] and all(s.device == "cpu" and s.in_flight == 0 for s in stats)
        assert sum(s.requests for s in stats) == 8 * 2 + 32 + 4 + 16
        assert all(s.requests > 0 for s in stats), stats  # both instances served


def test_pool_bounded_queue_overloads_at_once(mlp: tuple[Path, type]) -> None:
    async def main(pool: RunnerPool) -> list[Any]:
        return await asyncio.gather(*(pool.infer(x=_x(i)) for i in range(10)), return_exceptions=True)

    with RunnerPool(mlp[1], instances=1, max_queue=3) as pool:
        results = asyncio.run(main(pool))
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 10 - 1 - 3, results  # one in flight, three queued, the rest refused
        assert all(isinstance(e, Overloaded) and "max_queue 3" in str(e) for e in errors)
        assert pool.stats()[0].requests == 4


def test_pool_bounded_queue_for_threads(mlp: tuple[Path, type]) -> None:
    with RunnerPool(mlp[1], instances=1, max_queue=0) as pool:
        gate = threading.Event()
        runner = pool.runners[0]
        real = runner.run

        def slow(feeds: Any, *, copy: bool = False) -> Any:
            gate.wait(5)
            return real(feeds, copy=copy)

        runner.run = slow  # type: ignore[method-assign]
        t = threading.Thread(target=pool, kwargs={"x": _x(0)})
        t.start()
        while pool.stats()[0].in_flight == 0:
            gate.wait(0.001)
        with pytest.raises(Overloaded, match="max_queue 0"):
            pool(x=_x(1))
        gate.set()
        t.join()
        assert pool(x=_x(2)).y.shape == (1, 10)


def test_an_instance_that_raises_does_not_stop_the_others(mlp: tuple[Path, type], refs: list[np.ndarray]) -> None:
    with RunnerPool(mlp[1], instances=2) as pool:
        broken = pool.runners[0]._engine
        assert broken is not None

        def fail(feeds: Any, outputs: Any) -> None:
            raise RuntimeError("engine fault on instance 0")

        broken.infer = fail  # type: ignore[method-assign]

        async def main() -> list[Any]:
            return await asyncio.gather(*(pool.infer(x=_x(i), copy=True) for i in range(12)), return_exceptions=True)

        results = asyncio.run(main())
        faults = [r for r in results if isinstance(r, RuntimeError)]
        good = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        assert faults and good
        for i, r in good:
            np.testing.assert_array_equal(r.y, refs[i])
        s0, s1 = pool.stats()
        assert s0.errors == len(faults) and s1.errors == 0 and s1.requests == len(good)
        outcomes = []
        for _ in range(6):  # sequential calls: equally loaded instances take turns, failures stay on instance 0
            try:
                np.testing.assert_array_equal(pool(x=_x(5)).y, refs[5])
                outcomes.append("ok")
            except RuntimeError as exc:
                assert "instance 0" in str(exc)
                outcomes.append("fault")
        assert outcomes.count("ok") == 3 and outcomes.count("fault") == 3


def test_pool_after_close(mlp: tuple[Path, type]) -> None:
    pool = RunnerPool(mlp[1])
    pool.close()
    pool.close()  # idempotent
    assert pool.closed and all(r.closed for r in pool.runners)
    with pytest.raises(RunnerClosed):
        pool(x=_x(0))
    with pytest.raises(RunnerClosed):
        pool.submit(x=_x(0))
    with pytest.raises(RunnerClosed):
        asyncio.run(pool.infer(x=_x(0)))


def test_pool_of_an_artifact_folder_and_arguments_win_over_the_recipe(mlp: tuple[Path, type],
                                                                    refs: list[np.ndarray]) -> None:
    with RunnerPool(mlp[0], instances=3, max_queue=5) as pool:
        assert len(pool.runners) == 3 and pool.max_queue == 5
        np.testing.assert_array_equal(pool(x=_x(3))["y"], refs[3])  # generic runner: dict results
    with pytest.raises(Exception, match="instances must be >= 1"):
        RunnerPool(mlp[1], instances=0)


def test_devices_on_a_cpu_engine_are_refused_or_ignored(mlp: tuple[Path, type], tmp_path: Path) -> None:
    with pytest.raises(Exception, match="GPU"):
        RunnerPool(mlp[1], devices=[0])  # asked for explicitly: no GPU here
    model = sup.mlp_model(tmp_path / "m.onnx")
    art, _ = sup.make_artifact(tmp_path, model, {"serving": {"devices": "all"}})
    with RunnerPool(art) as pool:  # from the recipe: a CPU run ignores the GPUs it names
        assert pool.devices == [None] and pool.device == "cpu"


# -- recipe section ------------------------------------------------------------------------------------
def test_serving_section_is_strict(tmp_path: Path) -> None:
    from trtflow.recipe.loader import parse_recipe

    ok = parse_recipe("model: m.onnx\nserving: {instances: 4, devices: [0, 1], max_queue: 8}\n", tmp_path / "r.yaml")
    assert ok.recipe.serving.instances == 4 and ok.recipe.serving.devices == [0, 1]
    assert parse_recipe("model: m.onnx\nserving: {devices: all}\n", tmp_path / "r.yaml").recipe.serving.devices == "all"
    for bad, where in (("{instances: 0}", "serving.instances"), ("{devices: [0, 0]}", "serving.devices"),
                       ("{devices: some}", "serving.devices"), ("{streams: 2}", "serving.streams"),
                       ("{batching: {window_ms: 0}}", "serving.batching.window_ms")):
        with pytest.raises(RecipeError, match=where.replace(".", r"\.")):
            parse_recipe(f"model: m.onnx\nserving: {bad}\n", tmp_path / "r.yaml")


# -- CUDA code paths over the fake runtime -------------------------------------------------------------
@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    f = sup.install_with_backend(monkeypatch, seed=5)
    lock = threading.RLock()  # the fake is single-threaded; watcher threads call it too
    mod = sys.modules["cuda.bindings.runtime"]
    for name in dir(mod):
        fn = getattr(mod, name)
        if name.startswith("cuda") and callable(fn) and not isinstance(fn, type):
            def locked(*a: Any, _fn: Any = fn) -> Any:
                with lock:
                    return _fn(*a)
            setattr(mod, name, locked)
    enqueue = f.enqueue

    def locked_enqueue(*a: Any) -> Any:
        with lock:
            return enqueue(*a)

    monkeypatch.setattr(f, "enqueue", locked_enqueue)
    return f


def _fake_art(tmp_path: Path, streams: dict[str, Any], serving: dict[str, Any] | None = None) -> tuple[Path, type]:
    model = sup.mlp_model(tmp_path / "mlp.onnx")
    recipe = {"inputs": {"x": {"memory": "pinned"}}, "outputs": {"y": {"memory": "pinned"}}, "streams": streams,
              "serving": serving or {}}
    art, plan = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    return art, getattr(sup.load_runner(art), plan.class_name)


@pytest.mark.parametrize("streams", [{"topology": "sync"}, {"topology": "pipelined", "depth": 3}])
def test_contract_asyncio_on_cuda_completes_in_order(fake: Any, tmp_path: Path, streams: dict[str, Any],
                                                     refs: list[np.ndarray]) -> None:
    _, cls = _fake_art(tmp_path, streams)
    with cls() as r:
        order, outs = sup.awaits_in_order(r, 200, lambda i: _x(i % 64), cancel=(1,))  # in flight or queued
    assert order == [i for i in range(200) if i != 1]
    for i, y in enumerate(outs):
        if i != 1:
            np.testing.assert_allclose(y, refs[i % 64], rtol=1e-6, atol=1e-6)
    assert isinstance(outs[1], asyncio.CancelledError)


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts results copied aside because their buffer set was reused before they were read."""
    from trtflow.runtime.pending import Pending

    taken: list[int] = []
    take = Pending._take_snapshot

    def counted(self: Pending[Any]) -> None:
        if not (self._retrieved or self._snapshot is not None):
            taken.append(1)
        take(self)

    monkeypatch.setattr(Pending, "_take_snapshot", counted)
    return taken


@pytest.mark.parametrize("streams", [{"topology": "sync"}, {"topology": "pipelined", "depth": 3}])
def test_contract_awaited_outputs_are_read_before_their_buffer_set_is_reused(
        fake: Any, tmp_path: Path, streams: dict[str, Any], refs: list[np.ndarray], snapshots: list[int]) -> None:
    """A queued request starts after the tasks that the completions woke have read their outputs, so
    no result is copied aside (Pending._take_snapshot) when every task reads before its next await;
    one that does not read (a cancelled await) is still protected by the snapshot."""
    _, cls = _fake_art(tmp_path, streams)

    async def main(r: Any, k: int) -> list[Any]:
        async def one(i: int) -> np.ndarray:
            return (await r.infer(x=_x(i % 64))).y.copy()

        return await asyncio.gather(*(one(i) for i in range(k)), return_exceptions=True)

    with cls() as r:
        outs = asyncio.run(main(r, 300))
        for i, y in enumerate(outs):
            np.testing.assert_allclose(y, refs[i % 64], rtol=1e-6, atol=1e-6)
        assert snapshots == []


class _LaggingGpu:
    """How far the fake GPU is behind the host: the request at the head reads as done after ``lag``
    polls (``cudaEventQuery``/``cudaStreamQuery``; the poll that reads it done runs the fake's queue up
    to it: the GPU got there meanwhile), or when a host thread waits for it (``cudaEventSynchronize``).
    ``lag=0``: the GPU is always ahead. Counts the waits of the lanes' watcher threads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, lag: int) -> None:
        from trtflow.runtime import cuda

        self.lag, self.left, self.watcher_waits = lag, lag, 0
        self.lock = threading.Lock()
        for kind in ("event", "stream"):
            sync = getattr(cuda, f"{kind}_synchronize")
            monkeypatch.setattr(cuda, f"{kind}_query", lambda h, _sync=sync: self._query(_sync, h))
            monkeypatch.setattr(cuda, f"{kind}_synchronize", lambda h, _sync=sync: self._synchronize(_sync, h))

    def _query(self, sync: Any, handle: int) -> bool:
        with self.lock:
            if self.left > 0:
                self.left -= 1
                return False
            self.left = self.lag  # the next request starts its own lag
        sync(handle)
        return True

    def _synchronize(self, sync: Any, handle: int) -> None:
        sync(handle)
        with self.lock:
            self.left = 0
            if threading.current_thread().name.startswith("trtflow-watcher"):
                self.watcher_waits += 1


@pytest.mark.parametrize("streams", [{"topology": "sync"}, {"topology": "pipelined", "depth": 3}])
def test_contract_a_gpu_behind_the_host_completes_through_the_watcher(
        fake: Any, tmp_path: Path, streams: dict[str, Any], refs: list[np.ndarray],
        monkeypatch: pytest.MonkeyPatch, snapshots: list[int]) -> None:
    """Polling never finds a request done (the GPU lags): every completion comes through the lane's
    watcher thread, in order, a cancelled request included, the outputs intact and never copied aside
    (the cancelled one's: it is never read)."""
    _, cls = _fake_art(tmp_path, streams)
    gpu = _LaggingGpu(monkeypatch, lag=10**9)
    with cls() as r:
        order, outs = sup.awaits_in_order(r, 120, lambda i: _x(i % 64), cancel=(1,))
    assert order == [i for i in range(120) if i != 1]
    for i, y in enumerate(outs):
        if i != 1:
            np.testing.assert_allclose(y, refs[i % 64], rtol=1e-6, atol=1e-6)
    assert gpu.watcher_waits >= 120 // 3  # at least one wake-up per buffer-set round
    assert len(snapshots) <= 1


def test_contract_a_gpu_ahead_of_the_host_completes_on_the_loop_alone(
        fake: Any, tmp_path: Path, refs: list[np.ndarray], monkeypatch: pytest.MonkeyPatch,
        snapshots: list[int]) -> None:
    """The GPU is done by the time the loop polls (the fake finishes at once): 1,000 requests in
    flight complete without the watcher thread waking the loop once."""
    _, cls = _fake_art(tmp_path, {"topology": "pipelined", "depth": 3})
    gpu = _LaggingGpu(monkeypatch, lag=0)
    with cls() as r:
        order, outs = sup.awaits_in_order(r, 1000, lambda i: _x(i % 64))
    assert order == list(range(1000))
    np.testing.assert_allclose(outs[999], refs[999 % 64], rtol=1e-6, atol=1e-6)
    assert gpu.watcher_waits == 0 and snapshots == []


def test_contract_wait_spin_polls_on_the_loop(fake: Any, tmp_path: Path, refs: list[np.ndarray],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``streams.wait: spin``: the loop polls until the GPU is done (a few polls per request here);
    the watcher thread never waits."""
    _, cls = _fake_art(tmp_path, {"topology": "pipelined", "depth": 2, "wait": "spin"})
    gpu = _LaggingGpu(monkeypatch, lag=5)
    with cls() as r:
        order, outs = sup.awaits_in_order(r, 200, lambda i: _x(i % 64), cancel=(3,))
    assert order == [i for i in range(200) if i != 3]
    np.testing.assert_allclose(outs[199], refs[199 % 64], rtol=1e-6, atol=1e-6)
    assert gpu.watcher_waits == 0


def test_contract_completions_that_arrive_before_the_drain_share_one_wakeup(fake: Any, tmp_path: Path) -> None:
    """Lanes' threads append completions to one inbox; only the first of a batch wakes the loop."""
    from trtflow.runtime import aio

    async def main() -> int:
        loop = asyncio.get_running_loop()
        d = aio.Dispatcher([], loop)
        calls: list[Any] = []
        real = loop.call_soon_threadsafe

        def counting(cb: Any, *args: Any) -> Any:
            calls.append(cb)
            return real(cb, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        futs = [loop.create_future() for _ in range(5)]
        lane = SimpleNamespace(finish=lambda fut, pending, error: fut.set_result(pending))
        th = threading.Thread(target=lambda: [d._post((lane, f, i, None)) for i, f in enumerate(futs)])
        th.start()
        th.join()
        assert await asyncio.wait_for(asyncio.gather(*futs), 30) == [0, 1, 2, 3, 4]
        return len(calls)

    assert asyncio.run(main()) == 1


def test_contract_pool_on_two_devices_switches_around_every_call(fake: Any, tmp_path: Path,
                                                                 refs: list[np.ndarray]) -> None:
    fake.device_total = 2
    _, cls = _fake_art(tmp_path, {"topology": "pipelined", "depth": 2}, {"devices": "all", "instances": 2})
    with RunnerPool(cls) as pool:
        assert pool.devices == [0, 1] and [r.device_index for r in pool.runners] == [0, 0, 1, 1]
        # instances on one device share one engine where it can; the fake engine cannot: one each
        assert len(sup.FakeBackend.opened) == 4
        for r in pool.runners:  # every stream and buffer was created with the runner's device current
            assert {fake.stream_device[s] for s in r.streams.values()} == {r.device_index}
            ptrs = [m.device_ptr for bs in r._sets for m in bs.mems.values()]
            assert {fake.alloc_device[p] for p in ptrs} == {r.device_index}
        outs = [o.y.copy() for o in pool.stream({"x": _x(i)} for i in range(24))]

        async def main() -> list[np.ndarray]:
            return [o.y for o in await asyncio.gather(*(pool.infer(x=_x(i), copy=True) for i in range(24)))]

        outs_async = asyncio.run(main())
        threads = [threading.Thread(target=lambda i=i: np.testing.assert_allclose(pool(x=_x(i), copy=True).y,
                                                                                refs[i], rtol=1e-6, atol=1e-6))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert fake.current() == 0  # the caller's device is given back after each call
        assert not fake.wrong_device, fake.wrong_device[:3]
        assert all(s.requests > 0 for s in pool.stats()), pool.stats()
        assert [s.device for s in pool.stats()] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    for i in range(24):
        np.testing.assert_allclose(outs[i], refs[i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(outs_async[i], refs[i], rtol=1e-6, atol=1e-6)
    assert not fake.wrong_device


def test_contract_engines_that_can_share_are_shared(fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, cls = _fake_art(tmp_path, {"topology": "sync"})
    made: list[Any] = []

    def new_instance(self: Any) -> Any:
        twin = sup.FakeCudaEngine(self.plan, tmp_path / "mlp.onnx")
        made.append(twin)
        return twin

    monkeypatch.setattr(sup.FakeCudaEngine, "new_instance", new_instance, raising=False)
    with RunnerPool(cls, instances=3) as pool:
        assert len(sup.FakeBackend.opened) == 1 and len(made) == 2
        assert len({id(r._engine) for r in pool.runners}) == 3  # own execution state each
        np.testing.assert_allclose(pool(x=_x(1), copy=True).y, sup.reference(tmp_path / "mlp.onnx", {"x": _x(1)})["y"],
                                   rtol=1e-6, atol=1e-6)
    from trtflow.runtime.runner import Runner

    other, _ = sup.make_artifact(tmp_path / "o", sup.mlp_model(tmp_path / "o.onnx"), {}, backend="fakecuda")
    with cls() as a, pytest.raises(Exception, match="another artifact"):
        Runner(other, share_engine=a)


def test_device_resolution_and_numa_from_sysfs(fake: Any, tmp_path: Path) -> None:
    fake.device_total = 3
    assert devices.resolve("all") == [0, 1, 2] and devices.resolve([2, 0]) == [2, 0] and devices.resolve(None) == [0]
    for bad, msg in (([3], "no GPU"), ([0, 0], "twice"), ([], "empty"), ("some", "expected 'all'")):
        with pytest.raises(InputError, match=msg):
            devices.resolve(bad)
    sysfs = tmp_path / "sys"
    bdf = "0000:1c:00.0"  # device 1 of the fake
    (sysfs / "bus/pci/devices" / bdf).mkdir(parents=True)
    (sysfs / "bus/pci/devices" / bdf / "numa_node").write_text("1\n")
    for node, cpus in ((0, "0-1"), (1, "2-3,6")):
        (sysfs / f"devices/system/node/node{node}").mkdir(parents=True)
        (sysfs / f"devices/system/node/node{node}/cpulist").write_text(cpus + "\n")
    place = devices.placement(1, sys_root=sysfs)
    assert place.pci_bus_id == bdf and place.numa_node == 1
    assert place.cpus <= {2, 3, 6} and "NUMA node 1" in place.describe()
    assert devices.placement(0, sys_root=sysfs).numa_node is None  # no numa_node file: nothing to do
    with devices.local_allocation(place):  # pins this thread to the node's CPUs, then restores
        pass


# -- bench load mode and sweeps (CPU engine) -------------------------------------------------------------
def test_bench_instances_sweep_and_load_mode(project: Path) -> None:
    import json
    import subprocess

    sup.mlp_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\nserving: {instances: 2}\n")

    def bench(*args: str) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "trtflow.cli", "bench", str(project / "r.yaml"), "--out",
                            str(project / "build"), "--iterations", "40", "--warmup", "1", "--json", *args],
                           capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    rep = bench("--sweep", "instances", "--concurrency", "4")
    rows = rep["load"]
    assert [r["instances"] for r in rows] == [1, 2, 4] and all(r["concurrency"] == 4 for r in rows)
    assert rows[0]["ratios"]["vs_single"] == 1.0 and all(r["requests"] >= 80 and r["errors"] == 0 for r in rows)
    assert all(len(r["per_instance"]) == r["instances"] and sum(r["per_instance"]) == r["requests"] for r in rows)
    assert rows[0]["floor_per_s"] is None  # no CUDA stages on the CPU
    one = bench("--concurrency", "3")["load"]
    assert len(one) == 1 and one[0]["instances"] == 2 and one[0]["latency"]["p99"] >= one[0]["latency"]["p50"]
    r = subprocess.run([sys.executable, "-m", "trtflow.cli", "bench", str(project / "r.yaml"), "--out",
                        str(project / "build"), "--sweep", "devices"], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 3 and "needs CUDA GPUs" in r.stdout + r.stderr


def test_a_loop_closed_with_requests_in_flight_leaves_no_stale_counts(mlp: tuple[Path, type]) -> None:
    async def leave_early(pool: RunnerPool) -> None:
        for i in range(6):
            asyncio.ensure_future(pool.infer(x=_x(i)))
        await asyncio.sleep(0)  # asyncio.run cancels the rest when main returns

    with RunnerPool(mlp[1], instances=1, max_queue=4) as pool:
        asyncio.run(leave_early(pool))
        asyncio.run(leave_early(pool))  # a new loop: the old dispatcher is closed, its counts reset
        assert pool.stats()[0].in_flight == 0
        pool(x=_x(0))  # the sync path is not refused as overloaded by stale counts


# -- dynamic batching (CPU engine) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("batched")
    model = sup.conv_model(root / "conv.onnx", batch="N", hw=8)
    recipe = {"inputs": {"image": {"profile": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}}},
              "serving": {"batching": {"window_ms": 50, "max_batch": 8}}}
    art, _ = sup.make_artifact(root, model, recipe)
    return art, model


def test_dynamic_batching_joins_requests_and_splits_results(batched: tuple[Path, Path]) -> None:
    art, model = batched
    xs = [np.random.default_rng(i).standard_normal((1 + i % 2, 3, 8, 8)).astype(np.float32) for i in range(12)]

    async def main(pool: RunnerPool) -> list[Any]:
        outs = await asyncio.gather(*(pool.infer_feeds({"image": x}) for x in xs),
                                    pool.infer_feeds({"image": np.zeros((1, 3, 4, 4), np.float32)}),  # outside
                                    pool.infer_feeds({"image": np.zeros((9, 3, 8, 8), np.float32)}),  # too big
                                    return_exceptions=True)
        return outs

    with RunnerPool(art, instances=1) as pool:
        assert pool.batching is not None and pool.batching.max_batch == 8
        outs = asyncio.run(main(pool))
        for x, out in zip(xs, outs):
            np.testing.assert_allclose(out["logits"], sup.reference(model, {"image": x})["logits"], rtol=1e-5, atol=1e-5)
        assert isinstance(outs[12], InputError) and "outside the profile" in str(outs[12])  # its own batch, fails alone
        assert isinstance(outs[13], InputError) and "1..8" in str(outs[13])
        assert pool._batcher is not None and 4 <= pool._batcher.batches <= 6  # 18 samples by <= 8, + the bad one
        assert pool.stats()[0].requests == pool._batcher.batches


def test_batching_needs_a_batch_profile(mlp: tuple[Path, type]) -> None:
    with pytest.raises(Exception, match="no dynamic batch dim"):
        RunnerPool(mlp[1], batching={"window_ms": 1})


def test_contract_aio_overhead_script_runs_on_the_fake_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/aio_overhead.py --fake (the CPU form of the GPU machine's overhead rows): every figure is
    there and the tables print; the figures themselves are measurements, not asserted."""
    from helpers.scripts import load

    mod = load("aio_overhead")
    rep = mod.run_all(None, "auto", 40, repeat=1)
    assert [o["topology"] for o in rep["overhead"]] == ["sync", "pipelined"]
    for o in rep["overhead"]:
        assert all(o[f"{k}_{f}"] >= 0 for k in mod.KEYS for f in mod.FIELDS) and o["ratio_cpu"] > 0
    assert all(f"{kind}_await1000_cpu_us" in rep["floor"] for kind in mod.FLOORS)
    mod.print_tables(rep)
    out = capsys.readouterr().out
    assert "1,000 awaits in flight" in out and "the asyncio floor" in out
