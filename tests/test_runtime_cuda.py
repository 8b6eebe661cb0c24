"""The runtime's CUDA code paths on a CPU machine, over a fake ``cuda.bindings.runtime``.

The fake runs enqueued work lazily and in a random order that respects streams and events only, so
these tests catch missing event waits, host staging rewritten too early, stale CUDA graphs and
leaked handles. Real-GPU versions of the same checks live in tests/gpu/.
"""

from __future__ import annotations

import gc
import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup

from trtflow.errors import ArtifactError, InputError, RunnerClosed
from trtflow.runtime import cuda
from trtflow.runtime.memory import DeviceArray

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")

STRATEGIES, TOPOLOGIES = sup.STRATEGIES, sup.TOPOLOGIES


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    return sup.install_with_backend(monkeypatch, seed=1)


def _artifact(tmp_path: Path, memory: str, streams: dict[str, Any], *, out_memory: str | None = None,
              batch: int | str = 1, extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = sup.conv_model(tmp_path / "m.onnx", batch=batch)
    out_mem = out_memory or ("pinned" if memory == "write_combined" else memory)
    recipe = {"inputs": {"image": {"memory": memory, **(extra or {})}}, "outputs": {"logits": {"memory": out_mem}},
              "streams": streams}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    return art, model


def _inputs(n: int, shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def _host(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, DeviceArray) else np.asarray(x)


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
@pytest.mark.parametrize("memory", STRATEGIES)
def test_every_strategy_and_topology_matches_reference(tmp_path: Path, fake: Any, memory: str, topology: str) -> None:
    art, model = _artifact(tmp_path, memory, TOPOLOGIES[topology])
    mod = sup.load_runner(art)
    xs = _inputs(5)
    refs = [sup.reference(model, {"image": x})["logits"] for x in xs]
    dev: list[sup.FakeCudaArray] = []

    def feed(x: np.ndarray) -> Any:
        if memory == "device":
            dev.append(sup.FakeCudaArray(fake, x))
            return dev[-1]
        return x

    with mod.NetRunner() as r:
        assert r.device == "cuda" and r.backend == "fakecuda"
        for x, ref in zip(xs, refs):  # one at a time, outputs poisoned before each run
            r.fill_outputs(np.nan)
            np.testing.assert_allclose(_host(r(image=feed(x)).logits), ref, rtol=1e-6, atol=1e-6)
        pend = [r.submit(image=feed(x)) for x in xs]  # more in flight than buffer sets: unread ones survive
        for p, ref in zip(pend, refs):
            np.testing.assert_allclose(_host(p.result().logits), ref, rtol=1e-6, atol=1e-6)
        got = [_host(o.logits).copy() for o in r.stream({"image": feed(x)} for x in xs)]
        for g, ref in zip(got, refs):
            np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-6)
        if TOPOLOGIES[topology].get("cuda_graph"):
            assert r.graph_stats["captures"] >= 1 and r.graph_stats["replays"] >= 1, r.graph_status
            assert r.graph_status.startswith("captured"), r.graph_status
            if memory == "pageable":
                assert "staged through pinned" in r.graph_status
        else:
            assert r.graph_status == "off"
    for d in dev:
        d.free()
    del pend  # snapshots of unread device results own device copies, freed with them
    gc.collect()
    assert fake.live() == {}, fake.live()
    assert cuda.live_handles() == {}


def test_pipelined_results_in_order_equal_single_shot(tmp_path: Path, fake: Any) -> None:
    art, _ = _artifact(tmp_path, "pinned", {"topology": "pipelined", "depth": 3})
    mod = sup.load_runner(art)
    xs = _inputs(12, seed=3)
    with mod.NetRunner() as r:
        single = [r(image=x, copy=True).logits for x in xs]
        streamed = [o.logits.copy() for o in r.stream({"image": x} for x in xs)]
        by_ident = [o.logits for o in r.stream(({"image": x} for x in xs), copy=True)]
    for a, b, c in zip(single, streamed, by_ident):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_inputs_consumed_event_is_used_when_the_engine_supports_it(tmp_path: Path, fake: Any) -> None:
    sup.FakeBackend.options = {"consumed_events": True}
    art, model = _artifact(tmp_path, "mapped", {"topology": "pipelined", "depth": 2})
    mod = sup.load_runner(art)
    xs = _inputs(6, seed=4)
    refs = [sup.reference(model, {"image": x})["logits"] for x in xs]
    with mod.NetRunner() as r:
        assert all(bs.consumed_ok for bs in r._sets)
        for o, ref in zip(r.stream(({"image": x} for x in xs), copy=True), refs):
            np.testing.assert_allclose(o.logits, ref, rtol=1e-6)
        assert sup.FakeBackend.opened[0].consumed in {bs.ev_consumed for bs in r._sets}


def test_in_place_input_views_skip_the_host_copy(tmp_path: Path, fake: Any) -> None:
    art, model = _artifact(tmp_path, "pinned", {"topology": "pipelined", "depth": 2})
    mod = sup.load_runner(art)
    xs = _inputs(4, seed=5)
    with mod.NetRunner() as r:
        for x in xs:
            view = r.inputs.image
            assert view is not None and view.shape == (1, 3, 16, 16)
            view[...] = x
            out = r(image=view, copy=True)
            np.testing.assert_allclose(out.logits, sup.reference(model, {"image": x})["logits"], rtol=1e-6)


def test_graph_replay_equals_eager_and_recaptures_on_new_addresses(tmp_path: Path, fake: Any) -> None:
    art, model = _artifact(tmp_path, "registered", {"topology": "sync", "cuda_graph": True})
    mod = sup.load_runner(art)
    xs = _inputs(3, seed=6)
    with mod.NetRunner() as g, mod.NetRunner(cuda_graph=False) as e:
        bufs = [x.copy() for x in xs]  # long-lived caller buffers, registered in place
        for _ in range(3):
            for b in bufs:
                np.testing.assert_array_equal(g(image=b, copy=True).logits, e(image=b, copy=True).logits)
        # the caller's buffers are copied ahead of the graph (never captured): one graph for all three
        assert g.graph_stats["captures"] == 1 and g.graph_stats["replays"] == 8, g.graph_stats
        bufs[0][...] = xs[2]  # same buffer, new data: replay must copy the new data
        np.testing.assert_allclose(g(image=bufs[0]).logits, sup.reference(model, {"image": xs[2]})["logits"], rtol=1e-6)
        assert len(g._registry) == 2  # the input buffer in use (re-registered on change) + output staging
        out = np.empty((1, 5, 16, 16), np.float32)
        g.register("logits", out)  # a new output buffer: graphs copying into the old one are dropped
        np.testing.assert_allclose(g(image=bufs[1]).logits, sup.reference(model, {"image": xs[1]})["logits"], rtol=1e-6)
        assert g.graph_stats["captures"] == 2
    assert fake.registered == {}


@pytest.mark.parametrize("outlive", [True, False], ids=["graphs_own_their_state", "graphs_bake_the_context"])
def test_graph_recaptures_on_shape_change(tmp_path: Path, fake: Any, outlive: bool) -> None:
    """One graph per shape where graphs own their state (torch); where they bake the execution
    context's shapes (TensorRT), every shape change drops them and the new shape recaptures."""
    sup.FakeBackend.options = {"graphs_outlive": outlive}
    model = sup.conv_model(tmp_path / "m.onnx", batch="N")
    recipe = {"inputs": {"image": {"profile": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}},
              "streams": {"cuda_graph": True}}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    mod = sup.load_runner(art)
    with mod.NetRunner() as r:
        for b in (1, 2, 4, 2, 1, 3):
            x = _inputs(1, (b, 3, 16, 16), seed=b)[0]
            out = r(image=x).logits
            assert out.shape == (b, 5, 16, 16)
            np.testing.assert_allclose(out, sup.reference(model, {"image": x})["logits"], rtol=1e-6)
        if outlive:
            assert r.graph_stats["captures"] == 4 and r.graph_stats["replays"] == 2
        else:
            assert r.graph_stats["captures"] == 6 and r.graph_stats["replays"] == 0
            assert r.graph_stats["dropped"] == 5 and "recaptured when the input shapes change" in r.graph_status
        with pytest.raises(InputError, match="outside the profile"):
            r(image=np.zeros((5, 3, 16, 16), np.float32))


def test_capture_failure_falls_back_to_eager_and_says_why(tmp_path: Path, fake: Any) -> None:
    sup.FakeBackend.options = {"break_capture": True}
    art, model = _artifact(tmp_path, "pinned", {"topology": "sync", "cuda_graph": True})
    mod = sup.load_runner(art)
    xs = _inputs(3, seed=7)
    with mod.NetRunner() as r:
        for x in xs:
            np.testing.assert_allclose(r(image=x).logits, sup.reference(model, {"image": x})["logits"], rtol=1e-6)
        assert r.graph_status.startswith("eager: capture failed"), r.graph_status
        assert r.graph_stats == {"captures": 0, "replays": 0, "failures": 1, "dropped": 0}
    assert fake.live() == {}


def test_engine_that_cannot_be_captured_runs_eagerly(tmp_path: Path, fake: Any) -> None:
    sup.FakeBackend.options = {"capturable": False}
    art, _ = _artifact(tmp_path, "pinned", {"cuda_graph": True})
    with sup.load_runner(art).NetRunner() as r:
        r(image=_inputs(1)[0])
        assert r.graph_status == "eager: engine of backend 'fakecuda' cannot be captured"


def test_vectorized_format_stages_the_packed_layout(tmp_path: Path, fake: Any) -> None:
    # fp16 input in hwc8: the engine reads [N, H, W, 8] with 5 channels of padding.
    for memory in ("pinned", "pageable", "mapped", "registered"):
        art, model = _artifact(tmp_path / memory, memory, {"topology": "pipelined", "depth": 2},
                               out_memory="pinned", extra={"dtype": "float16", "format": "hwc8"})
        with sup.load_runner(art).NetRunner() as r:
            mem = r._sets[0].mems["image"]
            assert mem.nbytes == 1 * 16 * 16 * 8 * 2
            for x in _inputs(3, seed=8):
                x16 = x.astype(np.float16)
                ref = sup.reference(model, {"image": x16.astype(np.float32)})["logits"]
                np.testing.assert_allclose(r(image=x16).logits, ref, rtol=1e-5, atol=1e-6)


def test_device_inputs_zero_copy_when_aligned_else_copied(tmp_path: Path, fake: Any) -> None:
    art, model = _artifact(tmp_path, "device", {"topology": "sync"})
    x = _inputs(1, seed=9)[0]
    ref = sup.reference(model, {"image": x})["logits"]
    with sup.load_runner(art).NetRunner() as r:
        aligned = sup.FakeCudaArray(fake, x, stream=cuda.STREAM_LEGACY)
        out = r(image=aligned).logits
        assert isinstance(out, DeviceArray) and out.__cuda_array_interface__["version"] == 3
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)
        mem = r._sets[0].mems["image"]
        assert mem.device_ptr == aligned.ptr and mem.zero_copy_hits == 1
        odd = sup.FakeCudaArray(fake, x, offset=4)  # not 256-byte aligned: copied D2D
        np.testing.assert_allclose(r(image=odd, copy=True).logits.numpy(), ref, rtol=1e-6)
        assert mem.device_ptr != odd.ptr
        with pytest.raises(InputError, match="expected a CUDA array"):
            r(image=x)
        with pytest.raises(InputError, match="expected dtype float32, got float16"):
            r(image=sup.FakeCudaArray(fake, x.astype(np.float16)))
        aligned.free()
        odd.free()


def test_host_strategy_rejects_cuda_arrays(tmp_path: Path, fake: Any) -> None:
    art, _ = _artifact(tmp_path, "pinned", {"topology": "sync"})
    x = _inputs(1)[0]
    with sup.load_runner(art).NetRunner() as r:
        arr = sup.FakeCudaArray(fake, x)
        with pytest.raises(InputError, match="host memory.*got a CUDA array"):
            r(image=arr)
        arr.free()


def test_registered_buffers_are_unregistered_on_close(tmp_path: Path, fake: Any) -> None:
    art, model = _artifact(tmp_path, "registered", {"topology": "async"})
    x = _inputs(1)[0]
    out = np.empty((1, 5, 16, 16), np.float32)
    r = sup.load_runner(art).NetRunner()
    r.register("image", x)
    r.register("logits", out)
    assert x.ctypes.data in fake.registered and out.ctypes.data in fake.registered
    res = r(image=x).logits
    assert res.ctypes.data == out.ctypes.data  # D2H landed in the caller's buffer
    np.testing.assert_allclose(out, sup.reference(model, {"image": x})["logits"], rtol=1e-6)
    y = x + 1  # a different buffer: registered on use; x stays registered (held by register())
    r(image=y)
    assert y.ctypes.data in fake.registered
    with pytest.raises(InputError, match="at least"):
        r.register("logits", np.empty(3, np.float32))
    r.close()
    assert fake.registered == {} and fake.live() == {}
    r.close()  # idempotent
    with pytest.raises(RunnerClosed):
        r(image=x)


def test_threads_share_one_runner(tmp_path: Path, fake: Any) -> None:
    art, model = _artifact(tmp_path, "pinned", {"topology": "pipelined", "depth": 2})
    xs = _inputs(8, seed=11)
    refs = [sup.reference(model, {"image": x})["logits"] for x in xs]
    errors: list[BaseException] = []
    with sup.load_runner(art).NetRunner() as r:
        def work(i: int) -> None:
            try:
                for _ in range(5):
                    np.testing.assert_allclose(r(image=xs[i], copy=True).logits, refs[i], rtol=1e-6)
            except BaseException as exc:  # noqa: BLE001 - collected for the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def test_timing_events_per_stage(tmp_path: Path, fake: Any) -> None:
    art, _ = _artifact(tmp_path, "pinned", {"topology": "pipelined", "depth": 2})
    with sup.load_runner(art).NetRunner(timing=True) as r:
        r(image=_inputs(1)[0])
        t = r.last_timing
        assert t is not None and not t.graph
        assert t.h2d_ms is not None and t.compute_ms is not None and t.d2h_ms is not None and t.wall_ms is not None
        p = r.submit(image=_inputs(1)[0])
        p.result()
        assert p.timing is not None and p.timing.compute_ms is not None


def test_close_releases_everything_and_counts(tmp_path: Path, fake: Any) -> None:
    for memory in STRATEGIES:
        art, _ = _artifact(tmp_path / memory, memory, {"topology": "pipelined", "depth": 3, "cuda_graph": True})
        mod = sup.load_runner(art)
        for _ in range(3):
            r = mod.NetRunner()
            assert len(r.streams) == 3 and r.buffer_sets == 3
            r.close()
            r.close()
        assert fake.live() == {}, (memory, fake.live())
        assert cuda.live_handles() == {}


def test_check_finite(tmp_path: Path, fake: Any) -> None:
    art, _ = _artifact(tmp_path, "pinned", {})
    x = _inputs(1)[0]
    x[0, 0, 0, 0] = np.nan
    with sup.load_runner(art).NetRunner(check_finite=True) as r, pytest.raises(InputError, match="1 NaN/Inf"):
        r(image=x)
    with sup.load_runner(art).NetRunner() as r:
        r(image=x)  # off by default


def test_cuda_errors_name_the_call(fake: Any) -> None:
    from trtflow.errors import CudaError

    with pytest.raises(CudaError, match=r"cudaFree failed: cudaErrorInvalidValue"):
        cuda.free(12345)
    assert cuda.cuda_available()
    assert cuda.device_properties().name == "Fake GPU"
    assert cuda.device_compute_capability() == (9, 0)
    assert cuda.stream_query(cuda.stream_create()) is True


def test_allocation_failure_midway_releases_what_was_allocated(tmp_path: Path, fake: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """cudaMalloc fails for a later tensor of a buffer set (out of memory): the constructor raises a CudaError
    and every buffer allocated before it is freed (fake CUDA runtime; the GPU suite tries a real OOM)."""
    from trtflow.errors import CudaError

    art, _ = _artifact(tmp_path, "pinned", {"topology": "pipelined", "depth": 3})
    real, calls = cuda.malloc, {"n": 0}

    def failing_malloc(nbytes: int) -> int:
        calls["n"] += 1
        if calls["n"] == 4:  # second set, second tensor
            raise CudaError("cudaMalloc failed: cudaErrorMemoryAllocation")
        return real(nbytes)

    monkeypatch.setattr(cuda, "malloc", failing_malloc)
    with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
        sup.load_runner(art).NetRunner()
    assert fake.live() == {} and cuda.live_handles() == {}


@pytest.mark.parametrize("scratch", [0, 4096])
def test_contract_scratch_is_handed_over_only_when_the_engine_asks(tmp_path: Path, fake: Any, scratch: int) -> None:
    """Issue 11 item 1, runner side, against the fake CUDA engine: a scratch size of 0 is legal and
    needs no hand-over; a size > 0 is allocated once (device memory, 256-byte aligned), handed over
    before the first enqueue and freed on close."""
    sup.FakeBackend.options = {"scratch": scratch}
    art, model = _artifact(tmp_path, "pinned", {"topology": "sync", "cuda_graph": True})
    x = _inputs(1)[0]
    with sup.load_runner(art).NetRunner() as r:
        engine = sup.FakeBackend.opened[0]
        for _ in range(3):
            np.testing.assert_allclose(r(image=x).logits, sup.reference(model, {"image": x})["logits"], rtol=1e-6)
        assert len(engine.scratch_ptrs) == (1 if scratch else 0)
    assert fake.live() == {} and cuda.live_handles() == {}


ODD_SHAPES = [(1, 3, 16, 48), (2, 3, 64, 20), (1, 3, 33, 17), (1, 3, 16, 48), (2, 3, 64, 64), (1, 3, 32, 32)]


@pytest.mark.parametrize("tells", [True, False], ids=["engine_tells", "plan_expression"])
@pytest.mark.parametrize("topology", ["sync", "pipelined3", "graph", "graph_pipelined2"])
def test_contract_output_shapes_come_from_the_engine_or_the_plan(tmp_path: Path, fake: Any, tells: bool,
                                                                topology: str) -> None:
    """Issue 10 item 2 / 11 item 2, runtime side, against the fake CUDA engine: a square profile, called
    at non-square, non-opt shapes. The engine's output_shape (TensorRT: get_tensor_shape) is asked once
    per new combination of input shapes; where it cannot tell, the plan's expression gives the shape."""
    sup.FakeBackend.options = {"tells_shapes": tells}
    art, model, _ = sup.dynamic_hw_artifact(tmp_path, {"streams": TOPOLOGIES[topology]}, backend="fakecuda")
    with sup.load_runner(art).NetRunner() as r:
        engine = sup.FakeBackend.opened[0]
        for round_ in range(2):
            for i, shape in enumerate(ODD_SHAPES):
                x = _inputs(1, shape, seed=i)[0]
                r.fill_outputs(np.nan)
                out = r(image=x).logits
                assert out.shape == (shape[0], 5, (shape[2] - 1) // 2 + 1, (shape[3] - 1) // 2 + 1)
                np.testing.assert_allclose(out, sup.reference(model, {"image": x})["logits"], rtol=1e-5, atol=1e-6)
            if round_ == 0:
                asked = engine.shape_questions
        assert asked == len(set(ODD_SHAPES)) and engine.shape_questions == asked  # cached per shape key


def test_contract_output_without_expression_needs_an_engine_that_tells(tmp_path: Path, fake: Any) -> None:
    sup.FakeBackend.options = {"tells_shapes": False}
    art, _, _ = sup.dynamic_hw_artifact(tmp_path, backend="fakecuda", exprs=False)
    with sup.load_runner(art).NetRunner() as r, pytest.raises(ArtifactError, match="known only after running"):
        r(image=_inputs(1, (1, 3, 16, 48))[0])


@pytest.mark.parametrize("topology", ["sync", "pipelined3", "graph"])
def test_contract_data_dependent_output_takes_the_reported_shape(tmp_path: Path, fake: Any, topology: str) -> None:
    """NonZero against the fake CUDA engine, which synchronizes and reports the shape inside enqueue
    like TensorRT's IOutputAllocator: the buffer is the upper bound, the D2H copies what was reported,
    and CUDA graphs step aside for such requests (they cannot be captured)."""
    art, model, _ = sup.nonzero_artifact(tmp_path, {"streams": TOPOLOGIES[topology]}, backend="fakecuda")
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((b, 8)).astype(np.float32) for b in (1, 4, 2, 4, 3, 1)]
    with sup.load_runner(art).NzRunner() as r:
        for x in xs:
            got = r(x=x).idx
            ref = sup.reference(model, {"x": x})["idx"]
            assert got.shape == ref.shape
            np.testing.assert_array_equal(got, ref)
        pend = [r.submit(x=x) for x in xs]
        for p, x in zip(pend, xs):
            np.testing.assert_array_equal(p.result().idx, sup.reference(model, {"x": x})["idx"])
        if topology == "graph":
            assert r.graph_stats["captures"] == 0 and "known only after running" in r.graph_status, r.graph_status


@pytest.mark.parametrize("topology", ["graph", "graph_pipelined2"])
def test_contract_no_graph_replays_after_the_context_shapes_changed(tmp_path: Path, fake: Any, topology: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 8, against the fake CUDA engine, whose captured kernels fail when replayed after
    the context's input shapes changed (TensorRT: undefined). Alternating shapes give right results,
    steady shapes replay; a runner that kept its old graphs is caught by the fake (sensitivity)."""
    model = sup.conv_model(tmp_path / "m.onnx", batch="N")
    recipe = {"inputs": {"image": {"profile": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}},
              "streams": TOPOLOGIES[topology]}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    batches = (1, 2, 1, 2, 4, 4, 4, 4, 4, 1)
    with sup.load_runner(art).NetRunner() as r:
        for i, b in enumerate(batches):
            x = _inputs(1, (b, 3, 16, 16), seed=i)[0]
            np.testing.assert_allclose(r(image=x).logits, sup.reference(model, {"image": x})["logits"], rtol=1e-6)
        assert r.graph_stats["replays"] >= 3 and r.graph_stats["dropped"] >= 5, r.graph_stats
    with sup.load_runner(art).NetRunner() as r:
        monkeypatch.setattr(r._graphs, "bake_shapes", False)  # a runner that keeps graphs across shapes
        with pytest.raises(AssertionError, match="captured before the context's input shapes changed"):
            for i, b in enumerate(batches):
                r(image=_inputs(1, (b, 3, 16, 16), seed=i)[0])
