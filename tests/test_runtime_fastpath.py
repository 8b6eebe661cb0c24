"""The runner's per-request host path, over the fake CUDA runtime: how many CUDA calls one request
makes (deterministic counts, not times: they guard the fast path against regressions), and that
the caches behind it (feed order, input checks, shape plans, bindings, the last graph, host views)
change no result and loosen no check.

Every fake runtime call is recorded in ``fake.calls``; ``sup.NullCudart`` drops stream work so a
timing loop sees the runner's own host overhead (scripts/host_overhead.py measures it on a GPU).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup

from trtflow.errors import InputError
from trtflow.runtime import memory, trace

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    return sup.install_with_backend(monkeypatch, seed=3)


def _mlp(tmp_path: Path, streams: dict[str, Any], memory: str = "pinned", out_memory: str | None = None,
         names: tuple[str, str] = ("x", "y")) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = sup.mlp_model(tmp_path / "mlp.onnx")
    if names != ("x", "y"):
        import onnx

        m = onnx.load(str(model))
        for v, new in ((m.graph.input[0], names[0]), (m.graph.output[0], names[1])):
            old = v.name
            v.name = new
            for node in m.graph.node:
                node.input[:] = [new if i == old else i for i in node.input]
                node.output[:] = [new if o == old else o for o in node.output]
        onnx.save(m, str(model))
    recipe = {"inputs": {names[0]: {"memory": memory}}, "outputs": {names[1]: {"memory": out_memory or memory}},
              "streams": streams}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    return art, model


def _x(seed: int, shape: tuple[int, ...] = (1, 64)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _calls_of(fake: Any, fn: Any) -> list[str]:
    fake.calls.clear()
    fn()
    return list(fake.calls)


# -- CUDA calls per request (the micro-benchmark: counts, not times) -----------------------------------
# streams.wait: spin synchronizes the stream (no event at all); block (the default) records one blocking-sync
# event after the request and sleeps on it: one call more, no core burnt while the GPU works
GRAPH_CALL = {"spin": ["cudaGraphLaunch", "cudaStreamSynchronize"],  # staging copy is host work
              "block": ["cudaGraphLaunch", "cudaEventRecord", "cudaEventSynchronize"]}
EAGER_CALL = {"spin": ["cudaMemcpyAsync", "cudaMemcpyAsync", "cudaStreamSynchronize"],
              "block": ["cudaMemcpyAsync", "cudaMemcpyAsync", "cudaEventRecord", "cudaEventSynchronize"]}


@pytest.mark.parametrize("wait", ["spin", "block"])
def test_graph_request_makes_two_cuda_calls(tmp_path: Path, fake: Any, wait: str) -> None:
    art, model = _mlp(tmp_path, {"topology": "sync", "cuda_graph": True, "wait": wait})
    with sup.load_runner(art).NetRunner() as r:
        for i in range(3):  # warm-up + capture, then replays
            r(x=_x(i))
        assert r.graph_stats["captures"] == 1
        for i in range(20):
            x = _x(100 + i)
            calls = _calls_of(fake, lambda: r(x=x))  # noqa: B023 - called at once
            assert calls == GRAPH_CALL[wait], calls
        # submit returns after the launch (and the event record); the result waits with one more
        assert _calls_of(fake, lambda: r.submit_feeds({"x": _x(7)})) == GRAPH_CALL[wait][:-1]
        fake.calls.clear()
        for i in range(100):
            r.submit(x=_x(i)).result()
        assert len(fake.calls) == 1 + len(GRAPH_CALL[wait]) * 100  # + the unread submit above, synchronized once
        assert r.graph_stats["captures"] == 1
        x = _x(42)
        np.testing.assert_allclose(r(x=x).y, sup.reference(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wait", ["spin", "block"])
def test_eager_request_makes_three_cuda_calls(tmp_path: Path, fake: Any, wait: str) -> None:
    for topo in ("sync", "async"):
        art, model = _mlp(tmp_path / topo, {"topology": topo, "wait": wait})
        with sup.load_runner(art).NetRunner() as r:
            r(x=_x(0))
            for i in range(10):
                x = _x(i)
                calls = _calls_of(fake, lambda: r(x=x))  # noqa: B023 - called at once
                assert calls == EAGER_CALL[wait], (topo, calls)
                np.testing.assert_allclose(r(x=x).y, sup.reference(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_pipelined_request_waits_only_on_its_own_stages(tmp_path: Path, fake: Any) -> None:
    art, model = _mlp(tmp_path, {"topology": "pipelined", "depth": 2})
    with sup.load_runner(art).NetRunner() as r:
        list(r.stream({"x": _x(i)} for i in range(4)))
        calls = _calls_of(fake, lambda: r(x=_x(1)))
        # h2d, ev_h2d, compute waits for it, ev_compute, d2h waits for it, d2h, ev_d2h, sync:
        # a set whose previous request the host saw complete needs no wait for its buffers
        assert calls == ["cudaMemcpyAsync", "cudaEventRecord", "cudaStreamWaitEvent", "cudaEventRecord",
                         "cudaStreamWaitEvent", "cudaMemcpyAsync", "cudaEventRecord", "cudaEventSynchronize"], calls
        xs = [_x(10 + i) for i in range(7)]
        pend = [r.submit(x=x) for x in xs]  # more in flight than sets: unread results are snapshotted
        for p, x in zip(pend, xs):
            np.testing.assert_allclose(p.result().y, sup.reference(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_timing_records_only_what_it_reports(tmp_path: Path, fake: Any) -> None:
    art, _ = _mlp(tmp_path, {"topology": "sync", "cuda_graph": True})
    with sup.load_runner(art).NetRunner(timing=True) as r:
        for i in range(3):
            r(x=_x(i))
        calls = _calls_of(fake, lambda: r(x=_x(5)))
        assert calls == ["cudaEventRecord", "cudaGraphLaunch", "cudaEventRecord", "cudaEventSynchronize",
                         "cudaEventElapsedTime"], calls
        t = r.last_timing
        assert t is not None and t.graph and t.compute_ms is not None and t.wall_ms is not None
    art, _ = _mlp(tmp_path / "eager", {"topology": "sync"})
    with sup.load_runner(art).NetRunner(timing=True) as r:
        r(x=_x(0))
        calls = _calls_of(fake, lambda: r(x=_x(5)))
        assert calls.count("cudaEventRecord") == 6 and calls.count("cudaEventElapsedTime") == 3, calls
        t = r.last_timing
        assert t is not None and None not in (t.h2d_ms, t.compute_ms, t.d2h_ms)


def test_binding_and_graph_lookup_are_skipped_for_the_same_shapes(tmp_path: Path, fake: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    art, _ = _mlp(tmp_path, {"topology": "sync", "cuda_graph": True})
    with sup.load_runner(art).NetRunner() as r:
        r(x=_x(0))
        r(x=_x(1))
        engine = sup.FakeBackend.opened[0]
        seen: list[str] = []
        monkeypatch.setattr(engine, "set_address", lambda n, p: seen.append(n))
        monkeypatch.setattr(engine, "set_input_shape", lambda n, s: seen.append(n))
        keys: list[int] = []

        def graph_key() -> tuple[int, ...]:
            keys.append(1)
            return (0,)

        for mem in r._sets[0].mems.values():
            monkeypatch.setattr(mem, "graph_key", graph_key)
        for i in range(5):
            r(x=_x(i))
        assert seen == [] and keys == []
        assert r.graph_stats["replays"] == 6


# -- the caches change no result and loosen no check ---------------------------------------------------------
def test_checks_still_apply_after_the_fast_path_is_warm(tmp_path: Path, fake: Any) -> None:
    art, _ = _mlp(tmp_path, {"topology": "sync", "cuda_graph": True})
    with sup.load_runner(art).NetRunner() as r:
        for i in range(3):
            r(x=_x(i))
        with pytest.raises(InputError, match="expected dtype float32, got float64"):
            r(x=_x(0).astype(np.float64))
        with pytest.raises(InputError, match=r"expected shape \[1, 64\], got \[1, 32\]"):
            r(x=_x(0, (1, 32)))
        with pytest.raises(InputError, match="expected rank 2"):
            r(x=_x(0, (64,)))
        with pytest.raises(InputError, match="not C-contiguous"):
            r(x=np.ascontiguousarray(np.tile(_x(0), (1, 2)))[:, ::2])
        with pytest.raises(InputError, match="expected a numpy array"):
            r(x=_x(0).tolist())  # type: ignore[arg-type]
        with pytest.raises(InputError, match=r"missing \['x'\]"):
            r.run({})
        with pytest.raises(InputError, match=r"unknown \['z'\]"):
            r.run({"x": _x(0), "z": _x(0)})
        bad = _x(0)
        bad[0, 3] = np.inf
        r(x=bad)  # check_finite is off
        r.check_finite = True
        with pytest.raises(InputError, match="1 NaN/Inf"):
            r(x=bad)
        r.check_finite = False
        sub = _x(1).view(np.recarray)  # an ndarray subclass takes the full check, and passes
        r.run({"x": sub})
        assert r.graph_stats["failures"] == 0


def test_feeds_by_name_or_identifier_and_doubled_inputs(tmp_path: Path, fake: Any) -> None:
    art, model = _mlp(tmp_path, {"topology": "sync"}, names=("input.1", "out:y"))
    with sup.load_runner(art).NetRunner() as r:
        x = _x(3)
        ref = sup.reference(model, {"input.1": x})["out:y"]
        for _ in range(3):
            np.testing.assert_allclose(r.run({"input.1": x})["out:y"], ref, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(r.run({"input_1": x})["out:y"], ref, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(r(input_1=x).out_y, ref, rtol=1e-5, atol=1e-6)
        with pytest.raises(InputError, match="given twice"):
            r.run({"input.1": x, "input_1": x})
        with pytest.raises(InputError, match=r"unknown \['out:y'\]"):
            r.run({"input.1": x, "out_y": x})  # an output's identifier is no input


def test_graph_replays_new_data_and_follows_shape_changes(tmp_path: Path, fake: Any) -> None:
    sup.FakeBackend.options = {"graphs_outlive": True}  # one graph per shape (torch); TensorRT: test_runtime_cuda
    model = sup.conv_model(tmp_path / "m.onnx", batch="N")
    recipe = {"inputs": {"image": {"profile": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}},
              "streams": {"cuda_graph": True}}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    with sup.load_runner(art).NetRunner() as r:
        for step, b in enumerate((1, 1, 1, 2, 2, 1, 1, 4, 1)):
            x = _x(step, (b, 3, 16, 16))
            out = r(image=x)
            assert out.logits.shape == (b, 5, 16, 16)
            np.testing.assert_allclose(out.logits, sup.reference(model, {"image": x})["logits"], rtol=1e-5)
        assert r.graph_stats["captures"] == 3
        with pytest.raises(InputError, match="outside the profile"):
            r(image=np.zeros((5, 3, 16, 16), np.float32))


def test_in_place_input_views_skip_the_staging_copy(tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = sup.conv_model(tmp_path / "m.onnx", batch="N")
    recipe = {"inputs": {"image": {"memory": "pinned",
                                   "profile": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}},
              "streams": {"cuda_graph": True}}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    copies: list[int] = []
    real = memory.copy_into

    def counting(dst: np.ndarray, src: np.ndarray) -> None:
        copies.append(1)
        real(dst, src)

    monkeypatch.setattr(memory, "copy_into", counting)
    with sup.load_runner(art).NetRunner() as r:
        for i in range(4):
            x = _x(i, (2, 3, 16, 16))
            view = r.input_view("image", (2, 3, 16, 16))
            view[...] = x
            got = r(image=view).logits
            np.testing.assert_allclose(got, sup.reference(model, {"image": x})["logits"], rtol=1e-5, atol=1e-6)
        assert copies == []
        r(image=_x(9, (2, 3, 16, 16)))
        assert copies == [1]
        # in the staging buffer, but not at its start: copied to the start (overlapping copy)
        staging = r.input_view("image", (4, 3, 16, 16))
        x = _x(11, (2, 3, 16, 16))
        staging[2:] = x
        got = r(image=staging[2:]).logits
        np.testing.assert_allclose(got, sup.reference(model, {"image": x})["logits"], rtol=1e-5, atol=1e-6)
        assert copies == [1, 1]


def test_result_views_are_fresh_objects_over_the_same_memory(tmp_path: Path, fake: Any) -> None:
    art, _ = _mlp(tmp_path, {"topology": "sync"})
    with sup.load_runner(art).NetRunner() as r:
        a = r(x=_x(0)).y
        a.shape = (10, 1)  # the caller may reshape its view in place: the next result is unaffected
        b = r(x=_x(1)).y
        assert b.shape == (1, 10) and a is not b
        assert np.shares_memory(a, b)
        c = r(x=_x(1), copy=True).y
        assert not np.shares_memory(b, c)


def test_done_polls_the_stream_when_no_event_was_recorded(tmp_path: Path, fake: Any) -> None:
    art, model = _mlp(tmp_path, {"topology": "async", "wait": "spin"})
    with sup.load_runner(art).NetRunner() as r:
        x = _x(2)
        p = r.submit(x=x)
        fake.calls.clear()
        while not p.done():
            fake.step()
        assert set(fake.calls) == {"cudaStreamQuery"}
        np.testing.assert_allclose(p.result().y, sup.reference(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)
        q = r.submit(x=_x(3))
        assert p.done()  # completed and read before the set was reused
        q.result()


def test_nvtx_ranges_are_built_once(tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    depth: list[int] = [0]

    class Annotate:
        def __init__(self, name: str, domain: str) -> None:
            built.append(name)

        def __enter__(self) -> None:
            depth[0] += 1

        def __exit__(self, *exc: object) -> None:
            depth[0] -= 1

    class Nvtx:
        annotate = Annotate

    monkeypatch.setattr(trace, "nvtx", Nvtx())
    monkeypatch.setattr(trace, "on", True)
    monkeypatch.setattr(trace, "ranges", {})
    for streams in ({"topology": "sync"}, {"topology": "sync", "cuda_graph": True}):
        art, _ = _mlp(tmp_path / str(len(streams)), streams)
        with sup.load_runner(art).NetRunner() as r:
            for i in range(10):
                r(x=_x(i))
    assert sorted(built) == sorted(set(built)) and depth[0] == 0, built
    assert {"trtflow.stage_in", "trtflow.wait", "trtflow.h2d", "trtflow.enqueue", "trtflow.d2h"} <= set(built)


def test_data_ptr_matches_the_array_interface() -> None:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ro = a.copy()
    ro.setflags(write=False)
    for x in (a, a[1], a[:, 1], a.T, a[::-1], np.empty(0, np.float32), ro, np.asfortranarray(a),
              memory.aligned_empty(100)[3:]):
        assert memory.data_ptr(x) == x.__array_interface__["data"][0]
