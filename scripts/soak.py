"""Soak test on a GPU host: N inferences through a pipelined runner and M create/close cycles.

Prints host RSS, device memory in use, open file descriptors and trtflow's live CUDA handles before
and after each phase, as JSON (docs/reliability.md quotes the figures). Exit 1 on growth.

    python scripts/soak.py artifacts/tiny [--inferences 100000] [--cycles 1000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def snapshot() -> dict[str, float]:
    from trtflow.runtime import cuda

    gc.collect()
    free, total = cuda.mem_get_info()
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"rss_mib": rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, "device_used_mib": (total - free) / 2**20,
            "open_fds": len(os.listdir("/proc/self/fd")), **{f"live_{k}": v for k, v in cuda.live_handles().items()},
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--inferences", type=int, default=100_000)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=3)
    args = ap.parse_args()

    from trtflow.plan.model import Plan
    from trtflow.runtime.runner import Runner

    plan = Plan.from_json((args.artifact / "plan.json").read_text())
    rng = np.random.default_rng(0)
    feeds = [{t.ident: rng.random(t.shape).astype(t.dtype) for t in plan.inputs} for _ in range(4)]
    report: dict[str, object] = {"artifact": str(args.artifact)}

    with Runner(args.artifact, topology="pipelined", depth=args.depth) as r:  # warm-up outside the count
        for _ in r.stream(feeds[i % 4] for i in range(200)):
            pass
        before = snapshot()
        t0 = time.perf_counter()
        n = 0
        for _ in r.stream(feeds[i % 4] for i in range(args.inferences)):
            n += 1
        secs = time.perf_counter() - t0
        after = snapshot()
    report["inferences"] = {"count": n, "seconds": secs, "per_s": n / secs, "before": before, "after": after}

    Runner(args.artifact, topology="pipelined", depth=args.depth).close()  # first-open costs outside the count
    before = snapshot()
    t0 = time.perf_counter()
    for _ in range(args.cycles):
        with Runner(args.artifact, topology="pipelined", depth=args.depth) as r:
            r.run(feeds[0])
    secs = time.perf_counter() - t0
    after = snapshot()
    report["cycles"] = {"count": args.cycles, "seconds": secs, "before": before, "after": after}

    growth = []
    for phase in ("inferences", "cycles"):
        b, a = report[phase]["before"], report[phase]["after"]  # type: ignore[index]
        if a["device_used_mib"] - b["device_used_mib"] > 8:
            growth.append(f"{phase}: device memory +{a['device_used_mib'] - b['device_used_mib']:.1f} MiB")
        if a["rss_mib"] - b["rss_mib"] > 64:
            growth.append(f"{phase}: host RSS +{a['rss_mib'] - b['rss_mib']:.1f} MiB")
        if a["open_fds"] > b["open_fds"]:
            growth.append(f"{phase}: open fds {b['open_fds']} -> {a['open_fds']}")
        for k in a:
            if k.startswith("live_") and a[k] > b.get(k, 0):
                growth.append(f"{phase}: {k} {b.get(k, 0)} -> {a[k]}")
    report["growth"] = growth
    print(json.dumps(report, indent=2))
    return 1 if growth else 0


if __name__ == "__main__":
    sys.exit(main())
