#!/usr/bin/env python3
"""Per-memory-strategy stage times of the generated runner on one 1x3x1600x2560 fp32 input.

H2D / compute / D2H come from CUDA events around each stage of each request (sync topology, torch
engine); host = staging on the host before the first copy (copy into pinned memory, registering...);
wall = the whole call measured on the host. Medians over --iters requests after --warmup.
A last row runs pinned memory pipelined (depth 2) and reports wall time per request.

Usage (GPU machine, repository root): python3 scripts/gpu_timing.py [--out timing.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trtflow.artifact import seal
from trtflow.codegen import write_runner
from trtflow.plan.model import MEMORY_STRATEGIES
from trtflow.plan.planner import make_plan
from trtflow.recipe.loader import parse_recipe

STRATEGIES = list(MEMORY_STRATEGIES)


def artifact(root: Path, model: Path, memory: str, streams: dict[str, Any], name: str) -> Path:
    src = root / f"{name}_src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "pyproject.toml").write_text("[project]\nname='x'\n")
    link = src / "model.onnx"
    if not link.exists():
        link.symlink_to(model)
    from trtflow.plan.onnxmeta import read_model_info

    info = read_model_info(model)
    recipe = {"model": "model.onnx", "name": name, "streams": streams,
              "inputs": {i.name: {"memory": memory} for i in info.inputs},
              "outputs": {o.name: {"memory": "pinned" if memory == "write_combined" else memory} for o in info.outputs}}
    plan = make_plan(parse_recipe(json.dumps(recipe), src / "recipe.yaml"), allow_outside=True)
    art = root / name
    art.mkdir(parents=True, exist_ok=True)
    (art / "plan.json").write_text(plan.to_json())
    if not (art / "model.onnx").exists():
        (art / "model.onnx").symlink_to(model)
    write_runner(plan, art)
    seal(art, {"backend": "torch"})
    return art


def load(art: Path) -> Any:
    """The artifact's generated module (trtflow.load_runner: verified first)."""
    import trtflow

    return sys.modules[trtflow.load_runner(art).__module__]


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def measure(mod: Any, memory: str, x: np.ndarray, iters: int, warmup: int, *, in_place: bool = False) -> dict[str, Any]:
    import torch

    runner_cls = next(v for k, v in vars(mod).items() if k.endswith("Runner") and k != "Runner")
    with runner_cls(backend="torch", timing=True) as r:
        name = r.plan.inputs[0].name
        feed = torch.from_numpy(x).cuda() if memory == "device" else x
        if memory == "registered":
            r.register(name, x)
        if in_place:  # the caller produces its data straight into the runner's staging (no host copy)
            feed = r.input_view(name)
            feed[...] = x
        rows = []
        for i in range(warmup + iters):
            r.run({name: feed})
            if i >= warmup:
                rows.append(r.last_timing)
        out = {
            "h2d_ms": med([t.h2d_ms for t in rows]), "compute_ms": med([t.compute_ms for t in rows]),
            "d2h_ms": med([t.d2h_ms for t in rows]), "host_ms": med([t.host_in_ms for t in rows]),
            "wall_ms": med([t.wall_ms for t in rows]),
        }
        out["stage_sum_ms"] = sum(v for k, v in out.items() if k in ("h2d_ms", "compute_ms", "d2h_ms") and v)
        out["bytes_in"], out["bytes_out"] = r.plan.bytes_in, r.plan.bytes_out
        return out


def measure_pipelined(mod: Any, x: np.ndarray, n: int) -> dict[str, Any]:
    runner_cls = next(v for k, v in vars(mod).items() if k.endswith("Runner") and k != "Runner")
    with runner_cls(backend="torch") as r:
        name = r.plan.inputs[0].name
        for _ in r.stream({name: x} for _ in range(3)):
            pass
        t0 = time.perf_counter()
        for _ in r.stream({name: x} for _ in range(n)):
            pass
        return {"wall_ms": (time.perf_counter() - t0) * 1e3 / n, "depth": r.depth}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "lraspp_mobilenet_v3_hd.onnx"))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = Path(args.model).resolve()
    if not model.is_file():
        print(f"no model at {model}", file=sys.stderr)
        return 2
    import torch

    from trtflow.runtime import cuda

    dev = cuda.device_properties()
    root = Path(tempfile.mkdtemp(prefix="trtflow_timing_"))
    x = np.random.default_rng(0).standard_normal((1, 3, 1600, 2560)).astype(np.float32)
    results: dict[str, Any] = {"device": dev.name, "torch": torch.__version__, "model": model.name, "rows": {}}
    try:
        for memory in STRATEGIES:
            t0 = time.perf_counter()
            try:
                results["rows"][memory] = measure(load(artifact(root, model, memory, {"topology": "sync"}, memory)),
                                                  memory, x, args.iters, args.warmup)
            except Exception as exc:  # noqa: BLE001 - one failing strategy must not hide the others
                results["rows"][memory] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"[timing] {memory}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        try:
            results["rows"]["pinned in place"] = measure(load(artifact(root, model, "pinned", {"topology": "sync"},
                                                                       "pinned_in_place")),
                                                         "pinned", x, args.iters, args.warmup, in_place=True)
        except Exception as exc:  # noqa: BLE001
            results["rows"]["pinned in place"] = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            art = artifact(root, model, "pinned", {"topology": "pipelined", "depth": 2}, "pinned_pipelined2")
            results["pipelined"] = measure_pipelined(load(art), x, args.iters)
        except Exception as exc:  # noqa: BLE001
            results["pipelined"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:7.2f}"

    row0 = next(iter(results["rows"].values()))
    print(f"\n{results['device']} | torch {results['torch']} | {model.name} 1x3x1600x2560 fp32 "
          f"({row0.get('bytes_in', 0) / 1e6:.0f} MB in, {row0.get('bytes_out', 0) / 1e6:.0f} MB out) | "
          f"medians of {args.iters}, ms")
    print(f"{'strategy':<16}{'H2D':>8}{'compute':>9}{'D2H':>8}{'sum':>8}{'host':>8}{'wall':>8}")
    for memory, r in results["rows"].items():
        if "error" in r:
            print(f"{memory:<16} ERROR {r['error'][:90]}")
            continue
        print(f"{memory:<16}{f(r['h2d_ms']):>8}{f(r['compute_ms']):>9}{f(r['d2h_ms']):>8}{f(r['stage_sum_ms']):>8}"
              f"{f(r['host_ms']):>8}{f(r['wall_ms']):>8}")
    p = results.get("pipelined", {})
    if "error" in p:
        print(f"pinned pipelined: ERROR {p['error'][:90]}")
    else:
        print(f"{'pinned, pipelined depth ' + str(p['depth']) + ': wall per request':<48}{f(p['wall_ms']):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
