"""How the host waits for the GPU (``streams.wait: block | spin``) and where its CPU time goes
(``trace.cpu_phases``), on the fake CUDA runtime (``test_contract_*``: the fake records the flags and
the calls; the CPU time saved is measured on the GPU machine by ``bench --sweep encoding``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup

from trtflow.errors import ArtifactError, RecipeError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    return sup.install_with_backend(monkeypatch, seed=5)


def _art(tmp_path: Path, streams: dict[str, Any]) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = sup.mlp_model(tmp_path / "mlp.onnx")
    recipe = {"inputs": {"x": {"memory": "pinned"}}, "outputs": {"y": {"memory": "pinned"}}, "streams": streams}
    art, _ = sup.make_artifact(tmp_path, model, recipe, backend="fakecuda")
    return art, model


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)


def _waited_events(r: Any) -> list[int]:
    return [e for bs in r._sets for e in (bs.ev_h2d, bs.ev_compute, bs.ev_d2h, bs.ev_consumed) if e]


@pytest.mark.parametrize("topology", ["sync", "async", "pipelined"])
def test_contract_block_is_the_default_and_every_waited_event_is_blocking_sync(tmp_path: Path, fake: Any,
                                                                               topology: str) -> None:
    art, model = _art(tmp_path, {"topology": topology})
    with sup.load_runner(art).NetRunner(timing=True) as r:
        assert r.wait == "block"
        assert all(fake.events[e]["blocking"] for e in _waited_events(r))
        # the timing markers are never waited on: plain events
        assert not any(fake.events[e]["blocking"] for bs in r._sets for e in (bs.t_h2d, bs.t_compute, bs.t_d2h))
        x = _x(1)
        fake.calls.clear()
        np.testing.assert_allclose(r(x=x).y, sup.reference(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)
        assert "cudaStreamSynchronize" not in fake.calls and "cudaEventSynchronize" in fake.calls


def test_contract_spin_keeps_plain_events_and_the_recipe_or_the_runner_chooses(tmp_path: Path, fake: Any) -> None:
    art, _ = _art(tmp_path, {"topology": "pipelined", "wait": "spin"})
    with sup.load_runner(art).NetRunner() as r:
        assert r.wait == "spin" and not any(fake.events[e]["blocking"] for e in _waited_events(r))
    with sup.load_runner(art).NetRunner(wait="block") as r:  # the runner's argument overrides the recipe
        assert all(fake.events[e]["blocking"] for e in _waited_events(r))
    with pytest.raises(ArtifactError, match="unknown wait mode 'busy'"):
        sup.load_runner(art).NetRunner(wait="busy")


def test_contract_async_block_waits_for_the_request_before_rewriting_its_staging(tmp_path: Path, fake: Any) -> None:
    """One stream, no timing: only ev_d2h is recorded, so a second submit waits on it (not on an unrecorded
    h2d event) before it rewrites the pinned staging the first request's copy may still read."""
    art, model = _art(tmp_path, {"topology": "async"})
    with sup.load_runner(art).NetRunner() as r:
        xs = [_x(i) for i in range(6)]
        pend = [r.submit(x=x) for x in xs]  # nothing ran yet on the fake stream when the next one stages
        for x, p in zip(xs, pend):
            np.testing.assert_allclose(p.result().y, sup.reference(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)
        bs = r._sets[0]
        assert bs.done_only and bs.done_event == bs.ev_d2h and bs.host_free_event() == bs.ev_d2h


def test_wait_is_a_checked_recipe_field(tmp_path: Path) -> None:
    from trtflow.recipe.loader import parse_recipe

    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    sup.mlp_model(tmp_path / "m.onnx")
    with pytest.raises(RecipeError) as exc:
        parse_recipe("model: m.onnx\nstreams: {wait: sleep}\n", tmp_path / "r.yaml")
    assert "streams.wait" in str(exc.value) and "block" in str(exc.value)
    ok = parse_recipe("model: m.onnx\nstreams: {topology: pipelined, wait: spin}\n", tmp_path / "r.yaml")
    assert ok.recipe.streams.wait == "spin"


def test_contract_cpu_phases_account_every_span_of_a_request(tmp_path: Path, fake: Any) -> None:
    from trtflow.runtime import trace

    art, _ = _art(tmp_path, {"topology": "pipelined", "depth": 2})
    with sup.load_runner(art).NetRunner() as r:
        r(x=_x(0))
        assert not trace.on  # nothing entered on the request path unless asked for
        with trace.cpu_phases() as acc:
            for i in range(5):
                r(x=_x(i))
        assert not trace.on
        names = {"trtflow.check", "trtflow.stage_in", "trtflow.h2d", "trtflow.enqueue", "trtflow.d2h", "trtflow.wait"}
        assert names <= set(acc.calls) and all(acc.calls[n] == 5 for n in names), dict(acc.calls)
        assert all(acc.process_ms[n] >= 0 and acc.wall_ms[n] >= 0 for n in names)
        assert sum(acc.wall_ms.values()) > 0
