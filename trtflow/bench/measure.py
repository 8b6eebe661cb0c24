"""Measure the generated runner itself: stage times (CUDA events), wall clock, host overhead, throughput.

Definitions (what each number means, stated once):

* ``h2d``/``compute``/``d2h``: CUDA-event time of each stage of one request (trtexec's stage times).
  A CUDA graph replays the three as one unit, reported under ``compute`` (``graph`` = True).
* ``stage_sum``: h2d + compute + d2h, trtexec's "latency" (an ideal that ignores the host).
* ``wall``: what the caller sees, from the call to the outputs being readable on the host, including
  input checks and host staging copies (pageable/pinned).
* ``host``: time until ``submit`` returns: checks, staging, binding and enqueue (trtexec's enqueue time).
* throughput: requests (batches) and samples per second over a back-to-back run; for ``pipelined``
  the stream API keeps ``depth`` requests in flight.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.bench.stats import Stats, diagnostics
from trtflow.plan.model import Plan


@dataclass
class BenchResult:
    label: str
    memory: str
    topology: str
    depth: int
    cuda_graph: bool
    precision: str
    backend: str
    device: str
    batch: int
    iterations: int
    wall: Stats
    host: Stats
    h2d: Stats | None
    compute: Stats | None
    d2h: Stats | None
    stage_sum_ms: float
    batches_per_s: float
    samples_per_s: float
    bytes_in: int
    bytes_out: int
    transfer_floor_ms: float | None = None     # bytes / measured pinned bandwidth
    pipeline_floor_per_s: float | None = None  # 1 / max(stage) in batches per second
    graph_status: str = ""
    diagnostics: list[str] = field(default_factory=list)
    io_ms: float | None = None                 # wall p50 minus the device-resident wall p50
    ratios: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _to_device(x: np.ndarray) -> Any:
    """A CUDA copy of ``x`` for device-resident inputs (torch, else cupy)."""
    try:
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).cuda()
    except ImportError:
        import cupy

        return cupy.asarray(x)


def _sync_device() -> None:
    from trtflow.runtime import cuda

    cuda.device_synchronize()


def input_sets(plan: Plan, n: int, *, batch: int | None = None, device: bool = False) -> list[dict[str, Any]]:
    """``n`` rotating input sets keyed by identifier, so caches do not flatter results."""
    from trtflow.validate.inputs import generate_inputs

    sets = []
    for i in range(n):
        feeds = generate_inputs(plan, 1000 + i, Path(plan.recipe_path).parent, batch=batch)
        sets.append({plan.tensor(k).ident: (_to_device(v) if device else v) for k, v in feeds.items()})
    return sets


def measure(runner: Any, plan: Plan, *, label: str, memory: str, warmup: int = 10, iterations: int = 100,
            duration_s: float | None = None, batch: int | None = None, link: dict[str, float] | None = None,
            rotate: int = 4, in_place: bool = False) -> BenchResult:
    """Benchmark an open runner (constructed with ``timing=True``).

    ``in_place``: inputs are the runner's own staging views (a producer that writes into
    ``runner.input_view(name)``); each buffer set is filled once during warm-up, the writes are not timed.
    """
    device_inputs = memory == "device" and runner.device == "cuda"
    feeds = input_sets(plan, rotate, batch=batch, device=device_inputs)
    if device_inputs:
        _sync_device()
    if in_place:
        for i in range(max(warmup, runner.depth)):
            views = {t.ident: runner.input_view(t.name) for t in plan.inputs}
            for t in plan.inputs:
                views[t.ident][...] = feeds[i % rotate][t.ident]
            runner.submit_feeds(views).result_dict()
    else:
        for i in range(warmup):
            runner.submit_feeds(feeds[i % rotate]).result_dict()

    def next_feeds(i: int) -> dict[str, Any]:
        """Evaluated right before each submit: in place, the staging views of the next buffer set."""
        if in_place:
            return {t.ident: runner.input_view(t.name) for t in plan.inputs}
        return feeds[i % rotate]

    walls, hosts, h2d, comp, d2h = [], [], [], [], []
    graph_any = False
    deadline = time.perf_counter() + duration_s if duration_s else None
    i = 0
    while i < iterations or (deadline is not None and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        pending = runner.submit_feeds(next_feeds(i))
        t1 = time.perf_counter()
        pending.result_dict()
        t2 = time.perf_counter()
        walls.append((t2 - t0) * 1e3)
        hosts.append((t1 - t0) * 1e3)
        t = pending.timing
        if t is not None:
            graph_any |= t.graph
            if t.h2d_ms is not None:
                h2d.append(t.h2d_ms)
            if t.compute_ms is not None:
                comp.append(t.compute_ms)
            if t.d2h_ms is not None:
                d2h.append(t.d2h_ms)
        i += 1

    # Throughput: back to back; the stream API keeps `depth` requests in flight when pipelined.
    n_tp = max(i, 20)
    t0 = time.perf_counter()
    for _ in runner.stream(next_feeds(j) for j in range(n_tp)):
        pass
    tp_s = time.perf_counter() - t0

    def st(x: list[float]) -> Stats | None:
        return Stats.of(x) if x else None

    s_h2d, s_c, s_d2h = st(h2d), st(comp), st(d2h)
    wall = Stats.of(walls)
    sample_batch = (plan.inputs[0].shape[0] if batch is None else batch) if plan.inputs and plan.inputs[0].shape else 1
    bytes_in = sum(_bytes_at(t, batch) for t in plan.inputs)
    bytes_out = sum(_bytes_at(t, batch) for t in plan.outputs)
    res = BenchResult(
        label=label, memory=memory, topology=runner.topology, depth=runner.depth, cuda_graph=runner.cuda_graph,
        precision=plan.precision, backend=runner.backend, device=runner.device, batch=int(sample_batch),
        iterations=i, wall=wall, host=Stats.of(hosts), h2d=s_h2d, compute=s_c, d2h=s_d2h,
        stage_sum_ms=sum(s.mean for s in (s_h2d, s_c, s_d2h) if s is not None),
        batches_per_s=n_tp / tp_s, samples_per_s=n_tp * sample_batch / tp_s, bytes_in=bytes_in,
        bytes_out=bytes_out, graph_status=str(getattr(runner, "graph_status", "")))
    copied_in = sum(_bytes_at(t, batch) for t in plan.inputs if memory not in ("device", "mapped"))
    copied_out = sum(_bytes_at(t, batch) for t in plan.outputs if memory not in ("device", "mapped"))
    if link:
        res.transfer_floor_ms = (copied_in / (link["pinned_h2d"] * 1e9) + copied_out / (link["pinned_d2h"] * 1e9)) * 1e3
    stages = [s.mean for s in (s_h2d, s_c, s_d2h) if s is not None]
    if stages and not graph_any:
        res.pipeline_floor_per_s = 1e3 / max(stages)
    on_gpu = runner.device == "cuda"  # on the CPU the host does the compute: enqueue-bound means nothing
    res.diagnostics = diagnostics(wall=wall, h2d=s_h2d, compute=s_c, d2h=s_d2h, host=res.host if on_gpu else None,
                                  gpu=on_gpu)
    return res


def _bytes_at(t: Any, batch: int | None) -> int:
    if batch is None or not t.shape or t.min_shape[0] == t.max_shape[0]:
        return int(t.bytes)
    return int(t.bytes // t.shape[0] * batch)


def timeline(runner: Any, plan: Plan, *, memory: str) -> list[dict[str, Any]]:
    """Start/end (ms, relative to the first H2D) of each stage for one window of ``depth`` requests."""
    from trtflow.runtime import cuda

    feeds = input_sets(plan, runner.depth, device=memory == "device" and runner.device == "cuda")
    pend = [runner.submit_feeds(f) for f in feeds]
    for p in pend:
        p.result_dict()
    origin = pend[0]._set.t_h2d
    rows = []
    for k, p in enumerate(pend):
        s = p._set
        for stage, a, b in (("h2d", s.t_h2d, s.ev_h2d), ("compute", s.t_compute, s.ev_compute),
                            ("d2h", s.t_d2h, s.ev_d2h)):
            rows.append({"request": k, "stage": stage, "start_ms": cuda.event_elapsed_ms(origin, a),
                         "end_ms": cuda.event_elapsed_ms(origin, b)})
    return rows
