#!/usr/bin/env python3
"""Load test of the HTTP example from a second process, next to the runner's own figures.

    python examples/serve/loadtest.py artifacts/cls_u8 --concurrency 1 8 32 --requests 300 --seconds 20
    python examples/serve/loadtest.py artifacts/seg_hd_jpeg --image data/street_1600x2560.jpg

The body of every request is the input's raw array (seeded random pixels) or, for an artifact whose input
is encoded (``encoding: jpeg|png|image``), an image file: ``--image FILE``, else the recipe's ``sample``
file, else a seeded photo-like image encoded as the recipe declares (``trtflow validate``'s inputs), sent
as ``image/jpeg`` or ``image/png``.

1. starts ``app.py ARTIFACT`` as a separate process on 127.0.0.1 (a free port) and waits for it;
2. checks one answer against an in-process runner of the same artifact (the same array or file bytes,
   the same outputs);
3. per concurrency C: C client threads, each with one keep-alive HTTP/1.1 connection, send the input
   back to back until ``--requests`` answers or ``--seconds`` passed (whichever first); latency is
   send to last byte received;
4. stops the server, then drives a RunnerPool of the same artifact in this process with C asyncio
   clients (``trtflow.bench.load``, what ``trtflow bench --concurrency C`` measures) on the same body:
   the difference is the cost of the HTTP layer (parsing, copying the body, the response);
5. prints a markdown table (docs/benchmarks.md) and, with ``--json FILE``, writes every figure.

Traffic goes to 127.0.0.1 only; every loop is bounded in requests and time. Exit status 1 when an
answer was wrong or a request failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _post(conn: http.client.HTTPConnection, body: bytes,
          content_type: str = "application/octet-stream") -> tuple[int, bytes, Any]:
    """POST /infer; returns status, body and the headers (case-insensitive ``.get``)."""
    conn.request("POST", "/infer", body=body, headers={"Content-Type": content_type})
    r = conn.getresponse()
    return r.status, r.read(), r.headers


def start_server(artifact: Path, port: int, extra: list[str], *, timeout: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "app.py"), str(artifact), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
        with contextlib.suppress(OSError):
            if _get(port, "/stats", timeout=1.0)[0] == 200:
                return proc
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"the server did not answer on {HOST}:{port} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def http_load(port: int, body: bytes, content_type: str, *, concurrency: int, requests: int,
              seconds: float) -> dict[str, Any]:
    """``concurrency`` threads, one keep-alive connection each, until ``requests`` answers or ``seconds``."""
    lat: list[float] = []
    status: dict[int, int] = {}
    lock = threading.Lock()
    issued = [0]
    deadline = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if issued[0] >= requests:
                        return
                    issued[0] += 1
                t0 = time.perf_counter()
                try:
                    code, _, _ = _post(conn, body, content_type)
                except (OSError, http.client.HTTPException):
                    code = 0
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=60)
                dt = (time.perf_counter() - t0) * 1e3
                with lock:
                    status[code] = status.get(code, 0) + 1
                    if code == 200:
                        lat.append(dt)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return _summary(lat, wall, concurrency, status)


def _summary(lat: list[float], wall: float, concurrency: int, status: dict[int, int]) -> dict[str, Any]:
    a = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"concurrency": concurrency, "requests": len(lat), "seconds": round(wall, 3),
            "per_s": len(lat) / wall if wall else 0.0, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "status": {str(k): v for k, v in sorted(status.items())}}


def request_body(plan: Any, image: Path | None) -> tuple[Any, bytes, str]:
    """(the runner's feed, the HTTP body, its content type) of the plan's single input: a seeded random
    array as raw bytes, or for an encoded input an image file's bytes (both the feed and the body)."""
    from trtflow.decode import sniff
    from trtflow.runtime.memory import np_dtype
    from trtflow.validate.run import encoded_files

    t = plan.inputs[0]
    if not t.encoding:
        if image is not None:
            raise SystemExit(f"--image: input {t.name!r} of {plan.name} takes a raw array, not a file "
                             "(serve an artifact whose input declares `encoding: image`)")
        x = np.random.default_rng(0).integers(0, 256, t.shape).astype(np_dtype(t.dtype))
        return x, x.tobytes(), "application/octet-stream"
    data = image.read_bytes() if image is not None else encoded_files(t, 0)
    if not isinstance(data, bytes):
        raise SystemExit(f"input {t.name!r} takes a batch of {t.shape[0]} files; this example sends one per request")
    codec = sniff(data)
    return data, data, f"image/{codec}" if codec in ("jpeg", "png") else "application/octet-stream"


def check_answer(port: int, artifact: Path, feed: Any, body: bytes, content_type: str,
                 runner_kwargs: dict[str, Any]) -> str | None:
    """One request against the server and the same input through an in-process runner; None when equal."""
    from trtflow.runtime.runner import Runner

    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        code, data, headers = _post(conn, body, content_type)
    finally:
        conn.close()
    if code != 200:
        return f"HTTP {code}: {data[:300]!r}"
    with Runner(artifact, **runner_kwargs) as r:
        ref = r.run({r.plan.inputs[0].name: feed}, copy=True)
        outs = r.plan.outputs
    if headers.get("Content-Type", "").startswith("application/json"):
        got = json.loads(data)
        for t in outs:
            part = "values" if t.name.endswith("_values") else "indices"
            if not np.allclose(np.asarray(got[t.source][part]), ref[t.name], rtol=1e-4, atol=1e-5):
                return f"{t.name}: server {got[t.source][part]} != runner {ref[t.name].tolist()}"
        return None
    y = np.frombuffer(data, dtype=headers.get("X-Dtype")).reshape([int(d) for d in headers.get("X-Shape").split(",")])
    want = ref[outs[0].name]
    return None if np.array_equal(y, want) else f"{outs[0].name}: {int((y != want).sum())} values differ"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=300, help="answers per concurrency level (at most)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time per concurrency level (at most)")
    ap.add_argument("--image", type=Path, default=None,
                    help="encoded inputs: the image file to send (default: the recipe's sample, else a synthetic one)")
    ap.add_argument("--instances", type=int, default=None)
    ap.add_argument("--devices", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--startup", type=float, default=180.0, help="seconds to wait for the server")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing
    from trtflow.plan.model import Plan
    from trtflow.runtime.memory import np_dtype

    plan = Plan.from_json((args.artifact / "plan.json").read_text())
    t = plan.inputs[0]
    feed, body, ctype = request_body(plan, args.image)
    pixel_bytes = int(np.prod(t.shape)) * np_dtype(t.dtype).itemsize  # the array the engine reads
    extra = ["--backend", args.backend, "--device", args.device]
    if args.instances:
        extra += ["--instances", str(args.instances)]
    if args.devices:
        extra += ["--devices", args.devices]
    port = _free_port()
    proc = start_server(args.artifact, port, extra, timeout=args.startup)
    report: dict[str, Any] = {"model": plan.name, "input_bytes": len(body), "content_type": ctype,
                              "pixel_bytes": pixel_bytes, "http": [], "runner": []}
    try:
        report["server"] = json.loads(_get(port, "/stats")[1])
        runner_kwargs = {"backend": args.backend, "device": args.device}
        report["check"] = check_answer(port, args.artifact, feed, body, ctype, runner_kwargs) or "ok"
        for c in args.concurrency:
            report["http"].append(http_load(port, body, ctype, concurrency=c, requests=args.requests,
                                            seconds=args.seconds))
        report["server_stats"] = json.loads(_get(port, "/stats")[1])
    finally:
        log = stop_server(proc)
    if log.strip():
        report["server_log"] = log[-2000:]
    from trtflow.bench.load import run_load

    devices: Any = args.devices if args.devices in (None, "all") else [int(d) for d in args.devices.split(",")]
    instances = args.instances or plan.serving.instances
    for c in args.concurrency:  # the runner's own figures, the server stopped (nothing else on the device)
        r = run_load(args.artifact, plan, label=f"pool c={c}", instances=instances, devices=devices, concurrency=c,
                     requests=args.requests, duration_s=args.seconds, warmup=2, backend=args.backend,
                     device=args.device, feeds=[{t.ident: feed}])
        report["runner"].append({"concurrency": c, "requests": r.requests, "per_s": r.requests_per_s,
                                 "p50_ms": r.latency.p50, "p99_ms": r.latency.p99})
    decoded = f", decoded to {pixel_bytes:,} B of pixels by the runner: {report['server']['input']['decoder']}" \
        if t.encoding else ""
    print(f"\n{plan.name}: HTTP ({report['server']['backend']} on {report['server']['device']}, "
          f"{len(report['server']['instances'])} instance(s), {len(body):,} B of {ctype} per request{decoded}) "
          "vs the runner pool in process")
    print("| clients | HTTP img/s | HTTP p50 ms | HTTP p99 ms | runner img/s | runner p50 ms | runner p99 ms | HTTP cost p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for h, r in zip(report["http"], report["runner"]):
        print(f"| {h['concurrency']} | {h['per_s']:.1f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {r['per_s']:.1f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {h['p50_ms'] - r['p50_ms']:.2f} |")
    failed = sum(v for h in report["http"] for k, v in h["status"].items() if k != "200")
    print(f"check: {report['check']}; non-200 answers: {failed}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["check"] == "ok" and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
