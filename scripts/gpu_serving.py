#!/usr/bin/env python3
"""Serving measurements on the GPU machine (called by scripts/gpu_suite.sh; about 4-5 minutes).

1. asyncio host overhead against the synchronous ``submit`` path (tiny recipe, torch engine;
   scripts/aio_overhead.py): per request, wall time and CPU time of the calling / event-loop thread
   and of the process, for ``submit().result()``, ``stream()``, one awaiting client and 1,000
   concurrent awaits; sync and pipelined topologies; and the floor pure asyncio imposes on the host.
2. ``trtflow bench --sweep instances`` (1, 2, 4 instances under C concurrent clients) on the tiny, the
   classifier and the seed recipes, each row against the single instance and 1/max(stage).
3. ``trtflow bench --sweep devices`` on the seed recipe: 1..N GPUs, each GPU's link and the host's
   total H2D measured in the same run, and which of them limits.
4. The HTTP example on the seed scenario (examples/serve/loadtest.py) at concurrency 1, 8 and 32,
   next to the runner pool's own figures: ``http``, the 1600x2560x3 uint8 pixels as the body
   (recipes/seg_hd.yaml, 12.3 MB per request), and ``http_jpeg``, the JPEG file as the body
   (recipes/seg_hd_jpeg.yaml and its sample data/street_1600x2560.jpg, ~0.74 MB; the runner decodes it
   on the GPU with nvImageCodec), bounded at ~60 s.

Prints markdown tables last (the serving section of docs/benchmarks.md) and writes $OUT/serving.json.

    python3 scripts/gpu_serving.py --out out/serving.json [--quick]
    python3 scripts/gpu_serving.py --only overhead --out out/overhead.json   # section 1 alone, ~30 s
    python3 scripts/gpu_serving.py --only http http_jpeg --out out/http.json  # section 4 alone, ~2 min
    python3 scripts/gpu_serving.py --render out/serving.json     # the tables of a run (saved after each section)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import aio_overhead

CLI = [sys.executable, "-m", "trtflow.cli"]
ART = ROOT / "artifacts"  # where the builds and benches of this script put their artifacts
SECTIONS = ("overhead", "instances", "http", "http_jpeg", "devices")
# section -> the recipes it builds first (recipes/<name>.yaml into ART)
BUILDS = {"overhead": ("tiny",), "instances": ("tiny", "cls", "seg_hd"), "http": ("seg_hd",),
          "http_jpeg": ("seg_hd_jpeg",), "devices": ()}
# the HTTP rows: section -> (artifact, the image file sent as the body or None for the raw array, seconds a level);
# http_jpeg: 6 levels (HTTP and the pool at 1, 8, 32 clients) of at most 4 s, the section within ~60 s
HTTP = {"http": ("seg_hd", None, 15.0), "http_jpeg": ("seg_hd_jpeg", ROOT / "data" / "street_1600x2560.jpg", 4.0)}


def sh(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(args), flush=True)
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode:
        print(r.stdout[-3000:], r.stderr[-3000:], sep="\n", flush=True)
    return r


def async_overhead(artifact: Path, backend: str = "torch", n: int = 5000, repeat: int = 3) -> dict[str, Any]:
    """asyncio host overhead against sync ``submit`` (scripts/aio_overhead.py): both topologies, the floor."""
    return aio_overhead.run_all(artifact, backend, n, repeat=repeat)


def http_rows(artifact: Path, json_out: Path, *, image: Path | None, concurrency: tuple[int, ...] = (1, 8, 32),
              requests: int = 300, seconds: float = 15.0, extra: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The HTTP example's load test (examples/serve/loadtest.py, server in a second process) on ``artifact``:
    its report (loadtest --json), or None when it wrote none. ``image``: the file sent as the body (an
    encoded-input artifact); ``extra``: more loadtest options (``--backend onnxruntime`` on a CPU)."""
    json_out.unlink(missing_ok=True)
    cmd = [sys.executable, "examples/serve/loadtest.py", str(artifact), "--concurrency", *map(str, concurrency),
           "--requests", str(requests), "--seconds", str(seconds), "--json", str(json_out), *extra]
    if image is not None:
        cmd += ["--image", str(image)]
    # at most 2 x len(concurrency) timed levels of `seconds`, plus the server's start and the pools' opening
    r = sh(cmd, 2 * len(concurrency) * seconds + 300)
    print(r.stdout[-2500:])
    return json.loads(json_out.read_text()) if json_out.is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("out/serving.json"))
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the script)")
    ap.add_argument("--backend", default="torch", help="engine of the overhead rows (onnxruntime: a CPU smoke test)")
    ap.add_argument("--render", type=Path, default=None, metavar="JSON", help="print the tables of a saved run")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=None, metavar="SECTION",
                    help=f"run only these sections ({', '.join(SECTIONS)}): overhead = the asyncio overhead rows "
                         "(build tiny + scripts/aio_overhead.py, ~30 s); http / http_jpeg = the HTTP example with "
                         "raw-pixel / JPEG bodies on the seed scenario (~2 min / ~60 s after the build)")
    args = ap.parse_args()
    if args.render:
        print_tables(json.loads(args.render.read_text()))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dur = "1" if args.quick else "3"
    rep: dict[str, Any] = {"overhead": None, "instances": {}, "devices": None, "http": None, "http_jpeg": None}
    want = [s for s in SECTIONS if args.only is None or s in args.only]

    def save() -> None:  # after every section: a run cut short by the suite's timeout keeps what it measured
        args.out.write_text(json.dumps(rep, indent=2, default=float))

    for recipe in dict.fromkeys(name for s in want for name in BUILDS[s]):
        sh([*CLI, "build", f"recipes/{recipe}.yaml", "--out", str(ART)], 600)

    if "overhead" in want:
        rep["overhead"] = async_overhead(ART / "tiny", backend=args.backend, n=2000 if args.quick else 5000)
        save()
    if "instances" in want:
        for recipe, c in (("tiny", 16), ("cls", 16), ("seg_hd", 8)):
            r = sh([*CLI, "bench", f"recipes/{recipe}.yaml", "--sweep", "instances", "--concurrency", str(c),
                    "--duration", dur, "--warmup", "3", "--out", str(ART), "--json"], 600)
            if r.returncode == 0:
                rep["instances"][recipe] = json.loads(r.stdout)
                save()
    for section, (name, image, seconds) in HTTP.items():
        if section in want:
            rep[section] = http_rows(ART / name, args.out.with_name(f"serving_{section}.json"), image=image,
                                     requests=100 if args.quick else 300, seconds=seconds / 2 if args.quick else seconds)
            save()
    if "devices" in want:
        r = sh([*CLI, "bench", "recipes/seg_hd.yaml", "--sweep", "devices", "--concurrency", "8", "--duration", dur,
                "--warmup", "3", "--out", str(ART), "--json"], 900)
        if r.returncode == 0:
            rep["devices"] = json.loads(r.stdout)
        save()
    print_tables(rep)
    return 0


def _f(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_tables(rep: dict[str, Any]) -> None:
    print("\n## Serving (scripts/gpu_serving.py)\n")
    over = rep.get("overhead")
    if isinstance(over, dict):
        aio_overhead.print_tables(over)
    elif over:  # a run saved before scripts/aio_overhead.py: a list of rows
        aio_overhead.print_tables({"overhead": over, "engine": "torch"})
    if rep.get("instances"):
        _instances(rep["instances"])
    if rep.get("devices"):
        _devices(rep["devices"])
    _http(rep)


def _instances(instances: dict[str, Any]) -> None:
    print("\ninstances (closed loop, asyncio clients; target: best N >= 1.5x one instance on tiny and cls; the "
          "batching rows send batch-1 requests and compare with the first of them):\n")
    print("| recipe | config | clients | req/s | samples/s | p50 ms | p99 ms | vs first row | floor/s (1/max stage) | "
          "vs floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for recipe, data in instances.items():
        for row in data["load"]:
            rt = row["ratios"]
            print(f"| {recipe} | {row['label']} | {row['concurrency']} | {row['requests_per_s']:.1f} | "
                  f"{row['samples_per_s']:.1f} | "
                  f"{row['latency']['p50']:.3f} | {row['latency']['p99']:.3f} | {_x(rt.get('vs_single'))} | "
                  f"{_f(row['floor_per_s'])} | {_x(rt.get('vs_floor'))} |")


def _devices(dev: dict[str, Any]) -> None:
    print("\ndevices (seg_hd; target on 2 GPUs: >= 1.8x one GPU):\n")
    print("| GPUs | clients | img/s | p50 ms | p99 ms | vs 1 GPU | vs N x 1 GPU | per GPU |")
    print("|---|---|---|---|---|---|---|---|")
    for row in dev["load"]:
        rt = row["ratios"]
        print(f"| {len(row['devices'] or [0])} | {row['concurrency']} | {row['samples_per_s']:.1f} | "
              f"{row['latency']['p50']:.2f} | {row['latency']['p99']:.2f} | {_x(rt.get('vs_single'))} | "
              f"{_x(rt.get('vs_linear'))} | {'/'.join(map(str, row['per_instance']))} |")
    for gpu, lk in dev.get("links_gbps", {}).items():
        print(f"- GPU {gpu}: pinned H2D {lk['pinned_h2d']:.1f} GB/s, D2H {lk['pinned_d2h']:.1f} GB/s")
    print(f"- all GPUs at once: H2D {_f(dev.get('host_h2d_gbps'))} GB/s; limit: {dev.get('limit')}")


def _http(rep: dict[str, Any]) -> None:
    """One table for the HTTP rows: raw pixels (http) and the JPEG file (http_jpeg) as the body."""
    rows = [(label, rep[k]) for k, label in (("http", "raw pixels"), ("http_jpeg", "JPEG file")) if rep.get(k)]
    if not rows:
        return
    print("\nHTTP example on the seed scenario (examples/serve/loadtest.py, the server in a second process on "
          "127.0.0.1) next to the runner pool in process on the same body:\n")
    for label, h in rows:  # runs saved before http_jpeg have no content_type / input
        print(f"- {label}: {h['model']}, {h['input_bytes']:,} B of {h.get('content_type', 'application/octet-stream')} "
              f"per request, {h['server']['backend']} on {h['server']['device']}, decoder "
              f"{h['server'].get('input', {}).get('decoder', 'none')}; check: {h['check']}")
    print("\n| body | B per request | clients | HTTP img/s | HTTP p50 ms | HTTP p99 ms | runner img/s | runner p50 ms | "
          "runner p99 ms | HTTP cost p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, h in rows:
        for x, r in zip(h["http"], h["runner"]):
            print(f"| {label} | {h['input_bytes']:,} | {x['concurrency']} | {x['per_s']:.1f} | {x['p50_ms']:.2f} | "
                  f"{x['p99_ms']:.2f} | {r['per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{x['p50_ms'] - r['p50_ms']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
