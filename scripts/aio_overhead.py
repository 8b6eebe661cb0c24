"""asyncio host overhead per request against the synchronous ``submit`` path, and the floor that
asyncio itself imposes on this host (issue 16: an awaited request within 1.5x of ``submit``).

Per request, wall time / CPU time of the calling (event-loop) thread / CPU time of the process (the
watcher thread included), all in microseconds, for

* ``sync``: ``runner.submit_feeds(x).result_dict()`` in a loop (the baseline),
* ``stream``: ``runner.stream(...)``, up to ``depth`` in flight,
* ``await``: one asyncio client awaiting ``runner.infer_feeds(x)`` in a loop,
* ``await1000``: 1,000 awaits in flight at once (``asyncio.gather``), in batches of 1,000;

and ``floor``: the same two asyncio shapes with no runner at all (a future created on the loop, handed
to a thread through a ``queue.SimpleQueue``, resolved with ``loop.call_soon_threadsafe``; ``batched``:
the thread hands everything it finds queued to the loop in one call), i.e. what any thread-completed
asyncio request costs here. The ratio that matters is the loop-thread CPU of ``await1000`` over
``sync``; the floor says how far down it can go: ``(sync + floor) / sync``.

    python scripts/aio_overhead.py artifacts/tiny --backend torch       # the GPU machine (a built tiny)
    python scripts/aio_overhead.py --fake                               # CPU: the fake CUDA runtime
    python scripts/aio_overhead.py --fake --profile 2000                # + cProfile of the loop thread

``--fake`` runs the runner's real CUDA code path (checks, staging, events, polling, watcher thread) over
``tests/helpers/runtime.py``'s ``NullCudart`` with a no-op kernel: every CUDA call costs one Python
call and the "GPU" is done at once, so the figures are host overhead only (an upper bound on the
runner's own Python cost, a lower bound on wall time). ``--backend onnxruntime`` on a real artifact
measures the CPU engine (its worker thread) instead. Prints JSON (``--json``) or a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import platform
import pstats
import queue
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Self

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

Triple = tuple[float, ...]  # per request: wall, thread CPU, process CPU (us); thread, process context switches
KEYS = ("sync", "stream", "await", "await1000")
FIELDS = ("wall_us", "cpu_us", "proc_us", "csw", "proc_csw")


def _now() -> tuple[float, ...]:
    t, p = resource.getrusage(resource.RUSAGE_THREAD), resource.getrusage(resource.RUSAGE_SELF)
    return (time.perf_counter(), time.thread_time(), time.process_time(), t.ru_nvcsw + t.ru_nivcsw,
            p.ru_nvcsw + p.ru_nivcsw)


class _Clock:
    """Per request over ``n`` requests: wall, this thread's and the process's CPU (us), and context
    switches of this thread and of the process (getrusage: voluntary + involuntary)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> Self:
        self.t = _now()
        return self

    def __exit__(self, *exc: object) -> None:
        scale = (1e6, 1e6, 1e6, 1.0, 1.0)
        self.result: Triple = tuple((b - a) / self.n * k for a, b, k in zip(self.t, _now(), scale))


def _best(rows: list[Triple]) -> Triple:
    """The run with the least thread CPU: best of N, as timeit (noise on a shared host only adds)."""
    return min(rows, key=lambda r: r[1])


def _put(row: dict[str, Any], key: str, t: Triple) -> None:
    row.update({f"{key}_{f}": v for f, v in zip(FIELDS, t)})


def _wakeups(runner: Any) -> int:
    """How often the runner's watcher thread has woken the event loop (CUDA lanes; 0 on the CPU)."""
    d = getattr(runner, "_aio", None)
    return sum(lane.stats.wakeups for lane in d.lanes) if d is not None else 0


def measure(runner: Any, n: int, *, repeat: int = 3, profile: int = 0) -> dict[str, Any]:
    """The four figures of one runner, each the best of ``repeat`` rounds of ``n`` requests; the
    rounds interleave the four (slow phases of a shared host hit them alike). ``profile``: a cProfile
    (thread CPU time) of that many awaits in flight, 1,000 at a time."""
    t = runner.plan.inputs[0]
    x = np.random.default_rng(0).standard_normal(t.shape).astype(np.float32)
    feeds = {t.name: x}

    async def many(k: int) -> None:
        for i in range(0, k, 1000):
            await asyncio.gather(*(runner.infer_feeds(feeds) for _ in range(min(1000, k - i))))

    async def rounds() -> tuple[list[list[Triple]], str | None]:
        for _ in range(200):
            runner.submit_feeds(feeds).result_dict()
            await runner.infer_feeds(feeds)
        await many(1000)
        await asyncio.sleep(0.3)  # threads an engine starts when it opens (onnxruntime's, torch's) go idle
        got: list[list[Triple]] = [[] for _ in KEYS]
        wakes = [0, 0]  # watcher wake-ups of the loop: 1 client, 1,000 in flight (all rounds)
        for _ in range(repeat):
            with _Clock(n) as c:
                for _ in range(n):
                    runner.submit_feeds(feeds).result_dict()
            got[0].append(c.result)
            with _Clock(n) as c:
                for _ in runner.stream(feeds for _ in range(n)):
                    pass
            got[1].append(c.result)
            w = _wakeups(runner)
            with _Clock(n) as c:
                for _ in range(n):
                    await runner.infer_feeds(feeds)
            got[2].append(c.result)
            w1 = _wakeups(runner)
            with _Clock(n) as c:
                await many(n)
            got[3].append(c.result)
            wakes[0] += w1 - w
            wakes[1] += _wakeups(runner) - w1
        prof = None
        if profile:
            pr = cProfile.Profile(time.thread_time)  # CPU time of the loop thread, not wall time
            pr.enable()
            await many(profile)
            pr.disable()
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(25)
            prof = buf.getvalue()
        return got, prof, wakes

    got, prof, wakes = asyncio.run(rounds())
    best = [_best(g) for g in got]
    row: dict[str, Any] = {"topology": runner.topology, "depth": runner.depth, "backend": runner.backend, "n": n,
                           "repeat": repeat}
    for key, b in zip(KEYS, best):
        _put(row, key, b)
    sync, conc = best[0], best[3]
    row["ratio_cpu"] = conc[1] / sync[1] if sync[1] else None  # loop-thread CPU per request vs sync submit
    row["ratio_proc"] = conc[2] / sync[2] if sync[2] else None
    row["ratio_wall"] = conc[0] / sync[0] if sync[0] else None
    row["await_wakeups"], row["await1000_wakeups"] = (k / (n * repeat) for k in wakes)  # per request
    if prof:
        row["profile"] = prof
    return row


FLOORS = {"loop": "resolved on the loop (call_soon; no thread)",
          "thread": "from a thread, one call_soon_threadsafe per request",
          "batched": "from a thread, one call_soon_threadsafe per wake-up (all it finds queued)"}


def floor(n: int, *, repeat: int = 3) -> dict[str, Any]:
    """Pure asyncio, no trtflow: what one awaited request costs when its future is resolved on the loop
    itself, or from a thread (the shape of a thread-completed request), for one client and 1,000 in flight."""

    def worker(jobs: queue.SimpleQueue[Any], loop: asyncio.AbstractEventLoop, batched: bool) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            if not batched:
                loop.call_soon_threadsafe(_resolve, job)
                continue
            batch = [job]
            with contextlib.suppress(queue.Empty):
                while True:
                    job = jobs.get_nowait()
                    if job is None:
                        loop.call_soon_threadsafe(_resolve_all, batch)
                        return
                    batch.append(job)
            loop.call_soon_threadsafe(_resolve_all, batch)

    async def run(kind: str) -> tuple[Triple, Triple]:
        loop = asyncio.get_running_loop()
        jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        th = threading.Thread(target=worker, args=(jobs, loop, kind == "batched"), daemon=True)
        th.start()
        submit = (lambda fut: loop.call_soon(_resolve, fut)) if kind == "loop" else jobs.put

        async def request() -> None:
            fut = loop.create_future()
            submit(fut)
            await fut

        async def many(k: int) -> None:
            for i in range(0, k, 1000):
                await asyncio.gather(*(request() for _ in range(min(1000, k - i))))

        for _ in range(200):
            await request()
        await many(1000)
        ones, concs = [], []
        for _ in range(repeat):
            with _Clock(n) as one:
                for _ in range(n):
                    await request()
            ones.append(one.result)
            with _Clock(n) as conc:
                await many(n)
            concs.append(conc.result)
        jobs.put(None)
        th.join()
        return _best(ones), _best(concs)

    out: dict[str, Any] = {"n": n, "repeat": repeat}
    for kind in FLOORS:
        one, conc = asyncio.run(run(kind))
        _put(out, f"{kind}_await", one)
        _put(out, f"{kind}_await1000", conc)
    return out


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


def _resolve_all(futs: list[asyncio.Future[Any]]) -> None:
    for f in futs:
        if not f.done():
            f.set_result(None)


@contextlib.contextmanager
def fake_runners() -> Iterator[Callable[[str], Any]]:
    """Runners of a tiny MLP artifact (the tiny recipe's I/O: pinned, CUDA graph) over the fake CUDA
    runtime with no-op stream work (tests/helpers/runtime.py NullCudart, FakeBackend null_kernel)."""
    import pytest

    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from helpers import runtime as sup

    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        sup.install_with_backend(mp, seed=0, cls=sup.NullCudart, count=False)
        mp.setattr(sup.FakeBackend, "options", {"null_kernel": True})
        model = sup.mlp_model(Path(tmp) / "mlp.onnx")
        recipe = {"inputs": {"x": {"memory": "pinned"}}, "outputs": {"y": {"memory": "pinned"}},
                  "streams": {"topology": "sync", "cuda_graph": True}}
        art, _ = sup.make_artifact(Path(tmp), model, recipe, backend="fakecuda")
        from trtflow.runtime.runner import Runner

        yield lambda topology: Runner(art, topology=topology, depth=3 if topology == "pipelined" else None)


def overhead_rows(make: Callable[[str], Any], n: int, *, repeat: int, profile: int = 0) -> list[dict[str, Any]]:
    rows = []
    for topo in ("sync", "pipelined"):
        with make(topo) as r:
            rows.append(measure(r, n, repeat=repeat, profile=profile))
    return rows


def run_all(artifact: Path | None, backend: str, n: int, *, repeat: int = 3, profile: int = 0) -> dict[str, Any]:
    """Everything this script measures, as one JSON-able dict (also called by scripts/gpu_serving.py)."""
    rep: dict[str, Any] = {"host": {"python": platform.python_version(), "machine": platform.machine(),
                                    "cpus": _cpus(), "switchinterval_s": sys.getswitchinterval()}}
    if artifact is None:
        rep["engine"] = "fake CUDA runtime (NullCudart, no-op kernel)"
        with fake_runners() as make:
            rep["overhead"] = overhead_rows(make, n, repeat=repeat, profile=profile)
    else:
        from trtflow.runtime.runner import Runner

        rep["engine"] = backend
        depth = {"pipelined": 3}
        rep["overhead"] = overhead_rows(
            lambda topo: Runner(artifact, topology=topo, depth=depth.get(topo), backend=backend), n, repeat=repeat,
            profile=profile)
    rep["floor"] = floor(n, repeat=repeat)
    return rep


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _cell(o: dict[str, Any], k: str) -> str:
    csw = o.get(k + "_proc_csw")
    return (f"{o[k + '_wall_us']:.1f} / {o[k + '_cpu_us']:.1f} / {o[k + '_proc_us']:.1f}"
            + ("" if csw is None else f" ({csw:.2f})"))


def print_tables(rep: dict[str, Any]) -> None:
    h = rep.get("host", {})
    print(f"asyncio host overhead per request ({rep.get('engine')}; Python {h.get('python')}, {h.get('cpus')} CPUs), us: "
          "wall / CPU of the calling (event-loop) thread / CPU of the process (context switches of the process per "
          f"request); best of {rep['overhead'][0].get('repeat', 1)} interleaved rounds:\n")
    print("| topology | sync submit().result() | stream() | 1 awaiting client | 1,000 awaits in flight "
          "| loop-thread CPU ratio (target <= 1.5) | process CPU ratio | watcher wake-ups per request (1 client, 1,000) |")
    print("|---|---|---|---|---|---|---|---|")
    for o in rep["overhead"]:
        wk = ("-" if "await_wakeups" not in o  # a run saved before the counter
              else f"{o['await_wakeups']:.2f}, {o['await1000_wakeups']:.2f}")
        print(f"| {o['topology']} | {' | '.join(_cell(o, k) for k in KEYS)} | {_ratio(o.get('ratio_cpu'))} "
              f"| {_ratio(o.get('ratio_proc'))} | {wk} |")
    f = rep.get("floor")
    if f:
        print("\nthe asyncio floor on this host (no trtflow: an awaited future, resolved as said), us per request:\n")
        print("| future resolved | 1 awaiting client | 1,000 awaits in flight |")
        print("|---|---|---|")
        for kind, what in FLOORS.items():
            print(f"| {what} | {_cell(f, kind + '_await')} | {_cell(f, kind + '_await1000')} |")
        for o in rep["overhead"]:
            s = o["sync_cpu_us"]
            if not s:
                continue
            one = f["thread_await_cpu_us"]
            # one buffer set: one request in flight, so every request is a full thread round trip even with
            # 1,000 awaits queued; with more sets completions can share wake-ups (the batched floor)
            conc = one if o.get("depth") == 1 else min(f["thread_await1000_cpu_us"], f["batched_await1000_cpu_us"])
            print(f"- {o['topology']} (depth {o.get('depth')}): best loop-thread ratio possible here = (sync + floor) / "
                  f"sync: 1,000 in flight ({s:.1f} + {conc:.1f}) / {s:.1f} = {(s + conc) / s:.2f}x, "
                  f"1 client ({s:.1f} + {one:.1f}) / {s:.1f} = {(s + one) / s:.2f}x; "
                  f"measured {_ratio(o.get('ratio_cpu'))} and {_ratio(o['await_cpu_us'] / s)}")
    for o in rep["overhead"]:
        if o.get("profile"):
            print(f"\ncProfile of the loop thread, {o['topology']}, awaits in flight:\n{o['profile']}")


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("artifact", nargs="?", type=Path, help="a built artifact (tiny); omit with --fake")
    ap.add_argument("--fake", action="store_true", help="the fake CUDA runtime (CPU host overhead only)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("-n", "--requests", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3, help="rounds per figure (the best is reported)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile N awaits in flight (loop thread)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if (args.artifact is None) != args.fake:
        ap.error("give an artifact or --fake")
    rep = run_all(None if args.fake else args.artifact, args.backend, args.requests, repeat=args.repeat,
                  profile=args.profile)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2))
    print_tables(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
