"""Load mode of ``trtflow bench``: C concurrent clients against a pool, and the instances/devices sweeps.

Definitions (stated once):

* a client is an asyncio task that awaits one request at a time (closed loop): C clients keep up to C
  requests outstanding; ``throughput`` is completed requests (and samples) per second over the timed
  window, ``latency`` each request's time from the client's call to its outputs on the host
  (queueing in the dispatcher included), p50/p99 over every request of the window;
* ``vs_single``: throughput over the same run's single-instance (single-GPU) figure; the devices
  sweep also gives ``vs_linear``: over N x the single-GPU figure;
* ``floor_per_s``: 1 / max(stage) of one instance, from a timed single-runner pass in the same run
  (CUDA events), times the number of GPUs: what a perfectly pipelined engine reaches; None on the CPU.

What serializes (GIL, engine, copies) shows as throughput that stays flat while instances grow, at a
floor well above the measured figure; the diagnostics say which resource was saturated where known.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtflow.bench.stats import Stats
from trtflow.plan.model import Plan

INSTANCES = (1, 2, 4)
BATCH_WINDOWS_MS = (1.0, 5.0)  # dynamic batching rows of the instances sweep (batch-1 requests)


@dataclass
class LoadResult:
    label: str
    instances: int                 # per device
    devices: list[int] | None      # None: the current device (or the CPU)
    concurrency: int
    requests: int
    seconds: float
    requests_per_s: float
    samples_per_s: float
    latency: Stats
    per_instance: list[int] = field(default_factory=list)  # completed requests per instance
    errors: int = 0
    floor_per_s: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _clients(pool: Any, feeds: list[dict[str, Any]], *, concurrency: int, requests: int | None,
                   duration_s: float | None, warmup: int) -> tuple[list[float], float, int, list[int]]:
    """Run ``concurrency`` closed-loop clients; returns (latencies ms, timed seconds, errors, requests
    per instance)."""
    for i in range(warmup):  # every instance and buffer set sees a request before timing starts
        await asyncio.gather(*(pool.infer_feeds(feeds[(i + k) % len(feeds)]) for k in range(concurrency)))
    before = [s.requests for s in pool.stats()]
    lat: list[float] = []
    errors = 0
    budget = requests if requests is not None else 1 << 62
    deadline = time.perf_counter() + duration_s if duration_s else None
    issued = 0

    async def client(c: int) -> None:
        nonlocal issued, errors
        k = c
        while issued < budget and (deadline is None or time.perf_counter() < deadline):
            issued += 1
            t0 = time.perf_counter()
            try:
                await pool.infer_feeds(feeds[k % len(feeds)])
            except Exception:  # noqa: BLE001 - counted; a load test reports failures, it does not stop
                errors += 1
                continue
            lat.append((time.perf_counter() - t0) * 1e3)
            k += concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    seconds = time.perf_counter() - t0
    return lat, seconds, errors, [s.requests - b for s, b in zip(pool.stats(), before)]


def run_load(artifact: Path, plan: Plan, *, label: str, instances: int, devices: list[int] | None, concurrency: int,
             requests: int | None, duration_s: float | None, warmup: int, backend: str, device: str,
             floor_per_s: float | None = None, batch: int | None = None,
             batching: dict[str, Any] | None = None, feeds: list[dict[str, Any]] | None = None) -> LoadResult:
    """Open a pool of ``instances`` per device on ``devices``, drive it with ``concurrency`` clients
    (each request of ``batch`` samples, default the plan's; ``batching``: the pool's dynamic batching;
    ``feeds``: the requests to send in turn, default 8 generated input sets)."""
    from trtflow.bench.measure import input_sets
    from trtflow.runtime.pool import RunnerPool

    if feeds is None:
        feeds = input_sets(plan, 8, batch=batch)
    if requests is None and duration_s is None:
        requests = 200
    with RunnerPool(artifact, instances=instances, devices=devices, max_queue=max(concurrency, 1),
                    batching=batching or {}, backend=backend, device=device) as pool:
        lat, seconds, errors, per = asyncio.run(_clients(pool, feeds, concurrency=concurrency, requests=requests,
                                                         duration_s=duration_s, warmup=warmup))
    if batch is None:
        batch = plan.inputs[0].shape[0] if plan.inputs and plan.inputs[0].shape else 1
    n = len(lat)
    res = LoadResult(label=label, instances=instances, devices=devices, concurrency=concurrency, requests=n,
                     seconds=seconds, requests_per_s=n / seconds if seconds else 0.0,
                     samples_per_s=n * batch / seconds if seconds else 0.0, latency=Stats.of(lat),
                     per_instance=per, errors=errors, floor_per_s=floor_per_s)
    idle = [i for i, c in enumerate(per) if c == 0]
    if idle:
        res.diagnostics.append(f"instances {idle} served nothing: concurrency {concurrency} is too low to use them")
    if errors:
        res.diagnostics.append(f"{errors} request(s) failed")
    return res


def compare(results: list[LoadResult], *, per_device: bool) -> None:
    """Fill ``ratios``: against the first (single-instance / single-GPU) row, and against the floor."""
    if not results:
        return
    base = results[0].requests_per_s
    for r in results:
        if base:
            r.ratios["vs_single"] = r.requests_per_s / base
            if per_device and r.devices:
                r.ratios["vs_linear"] = r.requests_per_s / (base * len(r.devices))
        if r.floor_per_s:
            r.ratios["vs_floor"] = r.requests_per_s / r.floor_per_s


def stage_floor(artifact: Path, plan: Plan, *, backend: str, device: str, warmup: int, iterations: int) -> float | None:
    """1/max(stage) of one runner of the artifact (CUDA events), or None where stages are not timed (CPU)."""
    from trtflow import load_runner
    from trtflow.bench.measure import measure

    with load_runner(artifact)(backend=backend, device=device, timing=True) as r:
        if r.device != "cuda":
            return None
        res = measure(r, plan, label="floor", memory="/".join(sorted({t.memory for t in plan.tensors})),
                      warmup=warmup, iterations=iterations)
    return res.pipeline_floor_per_s


__all__ = ["INSTANCES", "LoadResult", "compare", "run_load", "stage_floor"]
