"""Host overhead per call of an artifact's generated runner, on a GPU host; prints JSON.

For CUDA graphs on and off (``--graph on|off|both``): after a warm-up, a tight loop of N calls
(``time.perf_counter_ns``) measures

* ``host_us``: until ``runner.submit_feeds(feeds)`` returns (checks, staging, binding, enqueue: what
  ``trtflow bench`` reports as host time),
* ``wall_us``: ``submit_feeds`` + ``result_dict`` (outputs readable on the host),
* ``call_us``: the generated ``runner(**inputs)`` (keyword inputs, NamedTuple result),

as p50 / p90 / p99 / mean, then counts the CUDA runtime calls of one request (a counting proxy over
cuda-bindings, in a separate short pass so it does not skew the times). ``--timing`` runs with CUDA
event timing on, as ``trtflow bench`` does. ``--profile N`` prints a cProfile of N calls to stderr.
``primitives_us`` is the cost of single cuda-bindings calls on this host, for reference.

    python scripts/host_overhead.py artifacts/tiny                   # 5000 calls, graph on and off
    python scripts/host_overhead.py artifacts/tiny --graph on --iterations 20000 --cpu 2 --profile 2000

The same inputs are reused every call (``--rotate K`` cycles K input sets instead), so the numbers
are the runner's own cost, not numpy's allocator or cache misses on fresh data.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _stats(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {"p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "mean": round(float(a.mean()), 2),
            "min": round(float(a.min()), 2)}


def _load_class(artifact: Path) -> type:
    import trtflow

    return trtflow.load_runner(artifact)


def _inputs(runner: Any, rotate: int) -> list[dict[str, Any]]:
    """``rotate`` input sets keyed by tensor name (CUDA arrays for device-memory inputs)."""
    from trtflow.runtime.memory import np_dtype

    rng = np.random.default_rng(0)
    sets = []
    for _ in range(rotate):
        feeds: dict[str, Any] = {}
        for t in runner.plan.inputs:
            dt = np_dtype(t.dtype)
            if dt.kind == "f":
                x = rng.standard_normal(t.shape).astype(dt)
            else:
                x = rng.integers(0, 2, t.shape).astype(dt)
            if t.memory == "device" and runner.device == "cuda":
                import torch

                x = torch.from_numpy(x).cuda()
            feeds[t.name] = x
        sets.append(feeds)
    if any(t.memory == "device" for t in runner.plan.inputs):
        from trtflow.runtime import cuda

        cuda.device_synchronize()
    return sets


def _loop(n: int, fn: Callable[[int], None]) -> list[int]:
    out = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out[i] = clock() - t0
    return out


class _CountingRuntime:
    """Proxy over ``cuda.bindings.runtime`` counting each cuda* call by name."""

    def __init__(self, rt: Any) -> None:
        self._rt = rt
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rt, name)
        if not (name.startswith("cuda") and callable(attr)) or isinstance(attr, type):
            return attr
        calls = self.calls

        def counted(*args: Any) -> Any:
            calls.append(name)
            return attr(*args)

        return counted


def _count_calls(fn: Callable[[], Any]) -> list[str]:
    from trtflow.runtime import cuda

    real = cuda._runtime()
    proxy = _CountingRuntime(real)
    cuda._rt = proxy
    try:
        fn()
    finally:
        cuda._rt = real
    return proxy.calls


def _primitives(stream: int, n: int = 2000) -> dict[str, float]:
    """p50 (us) of single runtime calls through trtflow.runtime.cuda on this host."""
    from trtflow.runtime import cuda

    ev = cuda.event_create()
    src = cuda.host_alloc(256)
    dst = cuda.malloc(256)
    try:
        cuda.stream_synchronize(stream)
        res = {
            "stream_query": _stats(_loop(n, lambda i: cuda.stream_query(stream)))["p50"],
            "event_record": _stats(_loop(n, lambda i: cuda.event_record(ev, stream=stream)))["p50"],
            "stream_synchronize_idle": _stats(_loop(n, lambda i: cuda.stream_synchronize(stream)))["p50"],
            "memcpy_async_h2d_256B": _stats(_loop(n, lambda i: cuda.memcpy_async(dst, src, 256, "h2d",
                                                                                 stream=stream)))["p50"],
        }
        cuda.stream_synchronize(stream)
        return res
    finally:
        cuda.event_destroy(ev)
        cuda.free_host(src)
        cuda.free(dst)


def measure(cls: type, *, graph: bool, timing: bool, backend: str, iterations: int, warmup: int, rotate: int,
            profile: int) -> dict[str, Any]:
    r = cls(backend=backend, device="cuda", cuda_graph=graph, timing=timing)
    try:
        feeds = _inputs(r, rotate)
        kwargs = [{r.plan.tensor(k).ident: v for k, v in f.items()} for f in feeds]
        for i in range(warmup):
            r.submit_feeds(feeds[i % rotate]).result_dict()
            r(**kwargs[i % rotate])

        pend: list[Any] = [None]

        def submit(i: int) -> None:
            pend[0] = r.submit_feeds(feeds[i % rotate])

        hosts: list[int] = []
        walls: list[int] = []
        clock = time.perf_counter_ns
        gc.collect()
        for i in range(iterations):
            f = feeds[i % rotate]
            t0 = clock()
            p = r.submit_feeds(f)
            t1 = clock()
            p.result_dict()
            t2 = clock()
            hosts.append(t1 - t0)
            walls.append(t2 - t0)
        calls = _loop(iterations, lambda i: r(**kwargs[i % rotate]))

        r.submit_feeds(feeds[0]).result_dict()
        submit_calls = _count_calls(lambda: submit(1))
        result_calls = _count_calls(lambda: pend[0].result_dict())
        call_calls = _count_calls(lambda: r(**kwargs[0]))

        prof = None
        if profile:
            pr = cProfile.Profile()
            pr.enable()
            for i in range(profile):
                r(**kwargs[i % rotate])
            pr.disable()
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(25)
            prof = buf.getvalue()
        out = {
            "cuda_graph": graph, "timing": timing, "topology": r.topology, "backend": r.backend,
            "graph_status": r.graph_status, "graph_stats": dict(r.graph_stats),
            "memory": {t.name: t.memory for t in r.plan.tensors},
            "iterations": iterations, "warmup": warmup, "rotate": rotate,
            "host_us": _stats(hosts), "wall_us": _stats(walls), "call_us": _stats(calls),
            "cuda_calls": {"submit": len(submit_calls), "result": len(result_calls), "call": len(call_calls),
                           "call_names": dict(Counter(call_calls)), "submit_sequence": submit_calls},
        }
        if prof is not None:
            print(f"== cProfile, {profile} calls, cuda_graph={graph}\n{prof}", file=sys.stderr)
        out["primitives_us"] = _primitives(r.streams.get("main") or r.streams["compute"])
        return out
    finally:
        r.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path, help="artifact folder (plan.json, runner.py, engine)")
    ap.add_argument("--graph", choices=("on", "off", "both"), default="both")
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--rotate", type=int, default=1, help="input sets cycled through (1: the same arrays)")
    ap.add_argument("--timing", action="store_true", help="CUDA event timing on (what trtflow bench measures)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU core")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile N calls (to stderr)")
    args = ap.parse_args()

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    from trtflow.runtime import cuda
    from trtflow.runtime import runner as runner_mod

    if not cuda.cuda_available():
        print(json.dumps({"error": "no CUDA GPU is usable here (cuda-bindings missing or no device)"}))
        return 2
    cls = _load_class(args.artifact.resolve())
    graphs = {"on": [True], "off": [False], "both": [True, False]}[args.graph]
    results = [measure(cls, graph=g, timing=args.timing, backend=args.backend, iterations=args.iterations,
                       warmup=args.warmup, rotate=max(1, args.rotate), profile=args.profile) for g in graphs]
    report = {
        "artifact": str(args.artifact), "device": cuda.device_properties().name, "python": platform.python_version(),
        "numpy": np.__version__, "cpu": platform.processor() or platform.machine(), "pinned_cpu": args.cpu,
        "nvtx": runner_mod._nvtx is not None,
        "results": results,
        "targets_us": {"host_p50_graph": 25, "host_p50_eager": 60},
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
