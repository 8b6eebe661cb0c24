"""``trtflow bench --sweep encoding``: JPEG bytes on the host -> mask on the host, five ways, in one run.

| key | configuration |
|---|---|
| a | the hand-written baseline: Pillow decode, numpy normalize to fp32 NCHW, pageable H2D, engine, fp32 scores D2H, argmax on the CPU |
| b | the best host-decode path: OpenCV decode straight into the runner's pinned input view (BGR->RGB written there), uint8 contract |
| c | GPU decode (nvImageCodec) into the engine's input buffer, sync topology |
| d | GPU decode, pipelined (decode of request i+1 overlaps the engine of request i) |
| e | a batch of 8 files per request (one batched decode; the engine at batch 8) |
| f, g | c with a threshold mask out as uint8 (f) and bit-packed (g, ``pack: bits``): D2H bytes and time |
| h | d with ``cuda_graph: true``: the engine's launches replayed from a CUDA graph (the decode stays outside) |

Every row reports wall latency p50/p99 per request (and per image), images/s over a back-to-back run,
bytes over the bus per image (H2D and D2H apart, and their total), host CPU time per image (process CPU
time / images: what the host is freed from) and its floors: the sum of its measured stages (decode +
transfers + compute: the latency with nothing else on the critical path) and 1/max(stage) for throughput.
Stage times come from the runner's CUDA events (for c-g the input stage, i.e. staging + GPU decode, is the
``h2d`` stage); host decode times from the host clock. The host CPU time of the back-to-back run is also
split by phase (:func:`trtflow.runtime.trace.cpu_phases`: input checks, staging, the H2D copy or GPU decode
call, the engine's enqueue, D2H, the wait, and the benchmark's own host decode/argmax; ``other`` is the
rest: Python around the calls), as the calling thread's CPU time and the whole process's (library worker
threads included). Each configuration runs ``iterations`` requests, fewer when they take more than
:data:`ROW_SECONDS` (the baseline (a) needs ~0.7 s a request); a configuration that would start after
:data:`SWEEP_SECONDS` is skipped with the reason, so the sweep fits a fixed time. The report so far is
written to ``<variants_dir>/encoding.json`` after every row. :func:`targets` checks the issue's targets
against one run.

The variants are built from the recipe: (a) drops the I/O contract (fp32 in and out, pageable), (b)
drops the encoding (uint8 NHWC pinned), (e) uses a copy of the model with a symbolic batch dim when
the model's batch is fixed (checked by ONNX shape inference; skipped with the reason otherwise), (f)/(g)
replace the reducer.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import TrtflowError
from trtflow.plan.model import Plan
from trtflow.recipe.loader import LoadedRecipe

BATCH = 8
LABELS = {
    "a": "baseline: Pillow, numpy fp32, pageable, CPU argmax",
    "b": "OpenCV into pinned view, uint8",
    "c": "GPU decode, sync",
    "d": "GPU decode, pipelined",
    "e": f"GPU decode, batch of {BATCH}",
    "f": "GPU decode, threshold mask uint8",
    "g": "GPU decode, threshold mask pack: bits",
    "h": "GPU decode, pipelined, CUDA graph",
}
ROW_SECONDS = 5.0     # timed requests of one configuration stop after this long (and so does its throughput run)
SWEEP_SECONDS = 90.0  # configurations that would start later are skipped (builds and warm-ups included)
#: span names of the request path (trtflow.runtime.trace) and of this benchmark -> phase names in the report
PHASES = {"trtflow.check": "check", "trtflow.stage_in": "stage_in", "trtflow.h2d": "h2d_or_decode",
          "trtflow.enqueue": "enqueue", "trtflow.d2h": "d2h", "trtflow.wait": "wait",
          "bench.host_decode": "host_decode", "bench.post": "host_post"}


@dataclass
class Row:
    key: str
    label: str
    batch: int
    wall_p50_ms: float
    wall_p99_ms: float
    per_image_ms: float
    images_per_s: float
    cpu_ms_per_image: float
    bytes_in: int            # per image, over the bus
    bytes_out: int
    input_ms: float | None = None    # JPEG bytes on the host -> the engine's input ready on the GPU
    decode_ms: float | None = None   # host decode (a, b) or the GPU input stage (c-g)
    h2d_ms: float | None = None
    compute_ms: float | None = None
    d2h_ms: float | None = None
    host_post_ms: float | None = None  # argmax on the CPU (a)
    stage_sum_ms: float = 0.0          # latency floor: every measured stage, nothing else
    pipe_floor_per_s: float | None = None  # images/s floor 1/max(stage)
    transfer_floor_ms: float | None = None  # bytes / measured pinned bandwidth
    decoder: str = ""
    notes: list[str] = field(default_factory=list)
    #: host ms per image by phase: {phase: {"thread": CPU ms, "process": CPU ms, "wall": ms}}, + "other", "total"
    cpu_phases: dict[str, dict[str, float]] = field(default_factory=dict)
    wait: str = ""   # how the host waited for the GPU (streams.wait)


@dataclass
class EncodingReport:
    name: str
    card: str
    file: str
    file_bytes: int
    link: dict[str, float]
    rows: list[Row]
    skipped: dict[str, str]
    targets: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"sweep": "encoding", **asdict(self)}


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# -- variants of the recipe ------------------------------------------------------------------------------------
def _variant(loaded: LoadedRecipe, tag: str, edit: Callable[[dict[str, Any]], None]) -> LoadedRecipe:
    from trtflow.recipe.schema import Recipe

    data = loaded.recipe.model_dump(by_alias=True, exclude_unset=True)
    data["name"] = f"{loaded.name}-{tag}"
    edit(data)
    return type(loaded)(Recipe.model_validate(data), loaded.path, loaded.text_sha256 + tag, loaded.marks)


def _image_input(loaded: LoadedRecipe) -> str:
    names = [n for n, s in loaded.recipe.inputs.items() if s.encoding != "raw"]
    if len(names) != 1:
        raise TrtflowError(f"--sweep encoding needs a recipe with exactly one encoded input, {loaded.path.name} has "
                           f"{len(names)}", hint="e.g. recipes/seg_hd_jpeg.yaml")
    return names[0]


def _naive(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["inputs"] = {name: {"memory": "pageable"}}
        d["outputs"] = {o: {"memory": "pageable"} for o in d.get("outputs", {})}
        d["streams"] = {"topology": "sync"}
    return edit


def _raw(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        spec = dict(d["inputs"][name])
        for k in ("encoding", "sample", "typical_bytes"):
            spec.pop(k, None)
        d["inputs"][name] = {**spec, "dtype": "uint8", "layout": "NHWC", "memory": "pinned"}
        d["streams"] = {"topology": "sync"}
    return edit


def _reducer(out: str, reduce: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["outputs"] = {**d.get("outputs", {}), out: {**d.get("outputs", {}).get(out, {}), "reduce": reduce}}
    return edit


def batched_model(model: Path, dest: Path, batch: int) -> Path | str:
    """A copy of ``model`` with dim 0 of every input and output symbolic, if shape inference at ``batch``
    gives batch-``batch`` outputs; else the reason (a string)."""
    import onnx

    m = onnx.load(str(model))
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            return f"{vi.name} has no shape"
        dims[0].Clear()
        dims[0].dim_param = "batch"
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    for vi in probe.graph.input:
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    del probe.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - any failure: the model does not batch
        return f"shape inference at batch {batch} failed: {exc}"
    for vi in inferred.graph.output:
        d0 = vi.type.tensor_type.shape.dim[0]
        if d0.HasField("dim_value") and d0.dim_value != batch:
            return f"output {vi.name} keeps batch {d0.dim_value}"
    from trtflow.artifact import atomic_write

    atomic_write(dest, m.SerializeToString())
    return dest


# -- measuring ---------------------------------------------------------------------------------------------------
def _runner(art: Path, *, topology: str, depth: int = 1, backend: str, decoder: str = "auto",
            cuda_graph: bool | None = None) -> Any:
    from trtflow import load_runner

    return load_runner(art)(backend=backend, device="cuda", timing=True, topology=topology, depth=depth,
                            decoder=decoder, cuda_graph=cuda_graph)


class _Clock:
    """Wall per request, process CPU time, and the stage timings of a runner's requests."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.stages: dict[str, list[float]] = {"decode": [], "h2d": [], "compute": [], "d2h": [], "host_in": [],
                                               "post": []}

    def stage(self, key: str, v: float | None) -> None:
        if v is not None:
            self.stages[key].append(v)

    def timing(self, t: Any, *, input_is_decode: bool) -> None:
        if t is None:
            return
        self.stage("decode" if input_is_decode else "h2d", t.h2d_ms)
        self.stage("compute", t.compute_ms)
        self.stage("d2h", t.d2h_ms)
        self.stage("host_in", t.host_in_ms)


@dataclass
class _Run:
    """A back-to-back run: requests/s, process CPU seconds per request, host CPU per phase (ms per request)."""

    rps: float
    cpu_s: float
    phases: dict[str, dict[str, float]]


def _back_to_back(run_all: Callable[[], int]) -> _Run:
    """Time ``run_all`` (returns how many requests it ran) with host CPU accounted per phase."""
    from trtflow.runtime import trace

    with trace.cpu_phases() as acc:
        c0, th0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
        n = run_all()
        wall, cpu, thread = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - th0
    n = max(n, 1)
    phases = {PHASES.get(k, k): {"thread": acc.thread_ms[k] / n, "process": acc.process_ms[k] / n,
                                 "wall": acc.wall_ms[k] / n} for k in acc.calls}
    phases["other"] = {c: total / n - sum(v[c] for v in phases.values())
                       for c, total in (("thread", thread * 1e3), ("process", cpu * 1e3), ("wall", wall * 1e3))}
    phases["total"] = {"thread": thread * 1e3 / n, "process": cpu * 1e3 / n, "wall": wall * 1e3 / n}
    return _Run(n / wall, cpu / n, phases)


def _throughput(run_one: Callable[[int], None], n: int) -> _Run:
    """``n`` back-to-back requests (fewer if they take more than ROW_SECONDS, at least 3)."""
    def run_all() -> int:
        t0 = time.perf_counter()
        for i in range(n):
            run_one(i)
            if i >= 2 and time.perf_counter() - t0 > ROW_SECONDS:
                return i + 1
        return n
    return _back_to_back(run_all)


def _row(key: str, clock: _Clock, run: _Run, *, batch: int, bytes_in: int, bytes_out: int,
         link: dict[str, float], decoder: str, host_input: bool, wait: str = "") -> Row:
    st = {k: _med(v) for k, v in clock.stages.items()}
    if host_input:  # host decode, staging and H2D
        input_ms = sum(x for x in (st["decode"], st["host_in"], st["h2d"]) if x is not None)
    else:  # staging (host_in) + GPU input stage (event-timed, includes the decode call)
        input_ms = sum(x for x in (st["host_in"], st["decode"]) if x is not None)
    stages = [x for x in (st["decode"], st["h2d"], st["compute"], st["d2h"], st["post"]) if x is not None]
    walls = clock.walls
    r = Row(key=key, label=LABELS[key], batch=batch, wall_p50_ms=_pct(walls, 0.5), wall_p99_ms=_pct(walls, 0.99),
            per_image_ms=_pct(walls, 0.5) / batch, images_per_s=run.rps * batch,
            cpu_ms_per_image=run.cpu_s * 1e3 / batch, wait=wait,
            cpu_phases={k: {c: v / batch for c, v in d.items()} for k, d in run.phases.items()},
            bytes_in=bytes_in, bytes_out=bytes_out, input_ms=input_ms, decode_ms=st["decode"], h2d_ms=st["h2d"],
            compute_ms=st["compute"], d2h_ms=st["d2h"], host_post_ms=st["post"], stage_sum_ms=sum(stages),
            pipe_floor_per_s=1e3 / max(stages) * batch if stages else None, decoder=decoder)
    if link:
        r.transfer_floor_ms = (bytes_in / (link["pinned_h2d"] * 1e9) + bytes_out / (link["pinned_d2h"] * 1e9)) * 1e3 * batch
    return r


def sweep_encoding(loaded: LoadedRecipe, *, build: Callable[[LoadedRecipe], Any], backend: str, warmup: int,
                   iterations: int, link: dict[str, float], card: str, variants_dir: Path,
                   only: str = "abcdefgh") -> EncodingReport:
    """Build the variants and measure every configuration on the recipe's ``sample`` file."""
    from trtflow import artifact as art
    from trtflow.runtime import trace

    started = time.perf_counter()
    name = _image_input(loaded)
    spec = loaded.recipe.inputs[name]
    if spec.sample is None:
        raise TrtflowError("--sweep encoding decodes the recipe's sample file, and this recipe has none",
                           hint=f"add inputs.{name}.sample: path/to/a.jpg (e.g. ../data/street_1600x2560.jpg)")
    sample = loaded.resolve(spec.sample, ("inputs", name, "sample"), allow_outside=True)
    data = sample.read_bytes()
    res = build(loaded)
    plan = Plan.from_json((res.artifact / art.PLAN).read_text())
    t = plan.tensor(name)
    out_t = plan.outputs[0]
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    n_tp = max(iterations, 20)
    raw_bytes = t.decoded_bytes // t.shape[0]
    pre = t.preprocess or {}
    rep = EncodingReport(name=plan.name, card=card, file=sample.name, file_bytes=len(data), link=link, rows=rows,
                         skipped=skipped)
    partial = variants_dir / "encoding.json"

    def save() -> None:  # the report so far: a sweep cut short by a timeout still leaves its rows
        rep.targets = targets(rep)
        art.atomic_write(partial, json.dumps(rep.to_dict(), indent=1, default=str))

    def wanted(key: str) -> bool:
        if key not in only:
            return False
        spent = time.perf_counter() - started
        if spent > SWEEP_SECONDS:
            skipped[key] = f"time budget: {spent:.0f} s spent, the sweep stops starting configurations at {SWEEP_SECONDS:.0f} s"
            return False
        return True

    def timed(once: Callable[[], Any], clock: _Clock, warm: int) -> None:
        for _ in range(warm):
            once()
        clock.walls.clear()
        for k in clock.stages:
            clock.stages[k].clear()
        t_row = time.perf_counter()
        for i in range(iterations):
            t0 = time.perf_counter()
            once()
            clock.walls.append((time.perf_counter() - t0) * 1e3)
            if i >= 2 and time.perf_counter() - t_row > ROW_SECONDS:
                break

    def measure(key: str, once: Callable[[], Any], clock: _Clock, *, batch: int = 1, bytes_in: int,
                bytes_out: int, decoder: str, host_input: bool, wait: str, warm: int | None = None) -> None:
        timed(once, clock, warmup if warm is None else warm)
        run = _throughput(lambda i: once(), n_tp)
        rows.append(_row(key, clock, run, batch=batch, bytes_in=bytes_in, bytes_out=bytes_out, link=link,
                         decoder=decoder, host_input=host_input, wait=wait))
        save()

    # (a) the hand-written baseline
    if wanted("a"):
        from PIL import Image

        ra = build(_variant(loaded, "naive", _naive(name)))
        mean = np.asarray(pre.get("mean") or [0.0], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(pre.get("std") or [1.0], np.float32).reshape(1, -1, 1, 1)
        scale = np.float32(pre.get("scale", 1.0))
        axis = int((out_t.reduce or {}).get("axis", 1))
        with _runner(ra.artifact, topology="sync", backend=backend) as r:
            clock = _Clock()

            def once_a() -> Any:
                t0 = time.perf_counter()
                with trace.span("bench.host_decode"):  # decode + normalize on the host
                    px = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    x = np.ascontiguousarray(((px[None].astype(np.float32) * scale).transpose(0, 3, 1, 2) - mean) / std)
                clock.stage("decode", (time.perf_counter() - t0) * 1e3)
                outs = r.run({name: x})
                clock.timing(r.last_timing, input_is_decode=False)
                t1 = time.perf_counter()
                with trace.span("bench.post"):
                    mask = np.argmax(outs[out_t.source], axis=axis).astype(np.uint8)
                clock.stage("post", (time.perf_counter() - t1) * 1e3)
                return mask

            measure("a", once_a, clock, bytes_in=x_bytes(r, name), bytes_out=out_bytes(r), decoder="host (Pillow)",
                    host_input=True, wait=r.wait, warm=min(warmup, 2))

    # (b) OpenCV straight into the runner's pinned input view
    if wanted("b"):
        rb = build(_variant(loaded, "raw", _raw(name)))
        try:
            import cv2
        except ImportError:
            cv2 = None
        with _runner(rb.artifact, topology="sync", backend=backend) as r:
            clock = _Clock()
            buf = np.frombuffer(data, np.uint8)

            def once_b() -> Any:
                t0 = time.perf_counter()
                view = r.input_view(name)
                with trace.span("bench.host_decode"):
                    if cv2 is not None:
                        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=view[0])
                    else:
                        view[0] = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(data)).convert("RGB"))
                clock.stage("decode", (time.perf_counter() - t0) * 1e3)
                outs = r.run({name: view})
                clock.timing(r.last_timing, input_is_decode=False)
                return outs

            measure("b", once_b, clock, bytes_in=raw_bytes, bytes_out=out_t.bytes // out_t.shape[0],
                    decoder="host (OpenCV)" if cv2 is not None else "host (Pillow: OpenCV not installed)",
                    host_input=True, wait=r.wait)
            if cv2 is None:
                rows[-1].notes.append("opencv-python-headless not installed: Pillow decoded")

    # (c), (d), (h): the recipe itself, GPU decode
    def gpu_rows(key: str, artifact: Path, topology: str, *, batch: int = 1, files: Any = data,
                 out_bytes_: int | None = None, cuda_graph: bool | None = None) -> None:
        depth = 3 if topology == "pipelined" else 1
        with _runner(artifact, topology=topology, depth=depth, backend=backend, decoder="gpu",
                     cuda_graph=cuda_graph) as r:
            clock = _Clock()

            def once() -> Any:
                outs = r.run({name: files})
                clock.timing(r.last_timing, input_is_decode=True)
                return outs

            bytes_out = out_bytes_ or out_t.bytes // out_t.shape[0]
            if topology == "pipelined":
                timed(once, clock, warmup)

                def run_all() -> int:
                    t0, n = time.perf_counter(), 0
                    for _ in r.stream({name: files} for _ in range(n_tp)):
                        n += 1
                        if n >= 3 and time.perf_counter() - t0 > ROW_SECONDS:
                            break
                    return n

                rows.append(_row(key, clock, _back_to_back(run_all), batch=batch, bytes_in=len(data),
                                 bytes_out=bytes_out, link=link, decoder=r.decoder, host_input=False, wait=r.wait))
                save()
            else:
                measure(key, once, clock, batch=batch, bytes_in=len(data), bytes_out=bytes_out, decoder=r.decoder,
                        host_input=False, wait=r.wait)
            extra = sum(getattr(m, "extra_copies", 0) for bs in r._sets for m in bs.mems.values())
            rows[-1].notes.append(f"extra D2D copies after decode: {extra}; CUDA graph: {r.graph_status}; "
                                  f"host waits: {r.wait}")

    if wanted("c"):
        gpu_rows("c", res.artifact, "sync")
    if wanted("d"):
        gpu_rows("d", res.artifact, "pipelined")
    if wanted("e"):
        lo, hi = t.min_shape[0], t.max_shape[0]
        if lo <= BATCH <= hi:
            variant = _variant(loaded, f"b{BATCH}", lambda d: None)
        else:
            model = Path(plan.model_path)
            got = batched_model(model, variants_dir / f"{model.stem}_batch.onnx", BATCH)
            if isinstance(got, str):
                skipped["e"] = f"the model's batch is fixed at {lo} and cannot be made symbolic: {got}"
                variant = None
            else:
                shape = [BATCH, *t.model_shape[1:]]

                def edit(d: dict[str, Any]) -> None:
                    d["model"] = str(got)
                    d["inputs"][name] = {**d["inputs"][name], "shape": shape}
                variant = _variant(loaded, f"b{BATCH}", edit)
        if variant is not None:
            rv = build(variant)
            gpu_rows("e", rv.artifact, "sync", batch=BATCH, files=[data] * BATCH)
            if lo > BATCH or hi < BATCH:
                rows[-1].notes.append(f"a copy of the model with a symbolic batch (shape inference checked at {BATCH})")
    red = out_t.reduce or {}
    if red.get("op") in ("argmax", "threshold"):
        for key, reduce in (("f", {"op": "threshold", "value": 0.0}), ("g", {"op": "threshold", "value": 0.0, "pack": "bits"})):
            if wanted(key):
                rv = build(_variant(loaded, f"thr{key}", _reducer(out_t.source, reduce)))
                vplan = Plan.from_json((rv.artifact / art.PLAN).read_text())
                o = vplan.outputs[0]
                gpu_rows(key, rv.artifact, "sync", out_bytes_=o.bytes // o.shape[0])
    if wanted("h"):
        gpu_rows("h", res.artifact, "pipelined", cuda_graph=True)
    save()
    return rep


def x_bytes(r: Any, name: str) -> int:
    t = r.plan.tensor(name)
    return int(t.bytes // t.shape[0])


def out_bytes(r: Any) -> int:
    return int(sum(t.bytes // t.shape[0] for t in r.plan.outputs))


# -- the issue's targets -------------------------------------------------------------------------------------------
def targets(rep: EncodingReport) -> list[dict[str, Any]]:
    by = {r.key: r for r in rep.rows}
    out: list[dict[str, Any]] = []

    def add(what: str, got: float | None, want: str, ok: bool | None, note: str = "") -> None:
        out.append({"target": what, "measured": got, "want": want, "met": ok, "note": note})

    a, b, c, d = by.get("a"), by.get("b"), by.get("c"), by.get("d")
    if b and c and b.input_ms and c.input_ms:
        k = b.input_ms / c.input_ms
        add("input stage (c) vs (b), one image", k, ">= 5x lower", k >= 5,
            f"(b) {b.input_ms:.2f} ms, (c) {c.input_ms:.2f} ms")
    if a and c:
        k = a.wall_p50_ms / c.wall_p50_ms
        add("end to end (c) vs (a)", k, ">= 10x lower", k >= 10, f"(a) {a.wall_p50_ms:.2f} ms, (c) {c.wall_p50_ms:.2f} ms")
    if c and c.stage_sum_ms:
        k = c.wall_p50_ms / c.stage_sum_ms
        add("(c) wall / (decode + compute + transfers)", k, "<= 1.15", k <= 1.15,
            f"wall {c.wall_p50_ms:.2f} ms, stages {c.stage_sum_ms:.2f} ms")
    if d and c:
        stages = [x for x in (c.decode_ms, c.compute_ms, c.d2h_ms) if x]
        if stages:
            floor = 1e3 / max(stages)
            k = d.images_per_s / floor
            add("throughput (d) vs 1/max(decode, compute, transfers)", k, ">= 0.95", k >= 0.95,
                f"(d) {d.images_per_s:.1f} img/s, floor {floor:.1f} img/s (max stage {max(stages):.2f} ms, from c)")
    h = by.get("h")
    if b:
        for row in (c, d, h):
            if row and row.cpu_ms_per_image:
                k = b.cpu_ms_per_image / row.cpu_ms_per_image
                extra = " (extra row: not an issue target)" if row.key == "h" else ""
                add(f"host CPU time per image ({row.key}) vs (b){extra}", k, ">= 10x lower", k >= 10,
                    f"(b) {b.cpu_ms_per_image:.2f} ms, ({row.key}) {row.cpu_ms_per_image:.2f} ms; "
                    f"({row.key}) by phase: {top_phases(row)}")
        if c:
            k = b.bytes_in / c.bytes_in
            add("H2D bytes per image (c) vs (b): the input the GPU decode saves", k, ">= 15x fewer", k >= 15,
                f"(b) {b.bytes_in} B of uint8 pixels, (c) {c.bytes_in} B of JPEG")
            tb, tc = b.bytes_in + b.bytes_out, c.bytes_in + c.bytes_out
            add("total bytes over the bus per image (c) vs (b), H2D + D2H", tb / tc, "(shown, no target)", None,
                f"(b) {tb} B, (c) {tc} B: the same {c.bytes_out} B mask crosses back in both")
    g = by.get("g")
    if b and g:
        tb, tg = b.bytes_in + b.bytes_out, g.bytes_in + g.bytes_out
        add("total bytes over the bus per image (g) bit-packed masks vs (b)", tb / tg, "(shown, no target)", None,
            f"(b) {tb} B (uint8 argmax mask out), (g) {tg} B ({g.bytes_out} B: every class's mask, 1 bit a pixel)")
    f = by.get("f")
    if f and g:
        k = f.bytes_out / g.bytes_out
        add("D2H bytes, threshold mask uint8 (f) vs pack: bits (g)", k, "8x fewer", k >= 7.99,
            f"D2H {f.d2h_ms or 0:.3f} -> {g.d2h_ms or 0:.3f} ms")
    return out


def top_phases(row: Row | dict[str, Any], n: int = 4) -> str:
    """The largest host CPU phases of a row (process CPU ms per image), e.g. ``enqueue 3.10, wait 0.20``."""
    phases = row["cpu_phases"] if isinstance(row, dict) else row.cpu_phases
    items = sorted(((k, v["process"]) for k, v in phases.items() if k != "total"), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.2f}" for k, v in items[:n]) or "not measured"


def render(rep: dict[str, Any]) -> str:
    """Markdown tables of a report (``to_dict``): the rows side by side, then the targets."""
    lines = [f"## Encoded inputs: {rep['name']} on {rep['card']}, file {rep['file']} ({rep['file_bytes']} B)", "",
             ("| config | batch | wall p50 ms | p99 ms | per image ms | images/s | CPU ms/image | H2D B/img | "
              "D2H B/img | total B/img | input stage ms | decode ms | H2D ms | compute ms | D2H ms | stage sum ms | "
              "pipe floor img/s |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: Any, p: int = 2) -> str:
        return "-" if v is None else f"{v:.{p}f}" if isinstance(v, float) else str(v)

    for r in rep["rows"]:
        lines.append(f"| ({r['key']}) {r['label']} | {r['batch']} | {f(r['wall_p50_ms'])} | {f(r['wall_p99_ms'])} | "
                     f"{f(r['per_image_ms'])} | {f(r['images_per_s'], 1)} | {f(r['cpu_ms_per_image'])} | "
                     f"{r['bytes_in']} | {r['bytes_out']} | {r['bytes_in'] + r['bytes_out']} | "
                     f"{f(r['input_ms'])} | {f(r['decode_ms'])} | "
                     f"{f(r['h2d_ms'], 3)} | {f(r['compute_ms'])} | {f(r['d2h_ms'], 3)} | {f(r['stage_sum_ms'])} | "
                     f"{f(r['pipe_floor_per_s'], 1)} |")
    for key, why in rep.get("skipped", {}).items():
        lines.append(f"| ({key}) skipped: {why} |")
    phased = [r for r in rep["rows"] if r.get("cpu_phases")]
    if phased:
        names = [p for p in ("check", "stage_in", "h2d_or_decode", "enqueue", "d2h", "wait", "host_decode",
                             "host_post", "other", "total") if any(p in r["cpu_phases"] for r in phased)]
        lines += ["", "Host CPU ms per image by phase, process (calling thread) -- back-to-back run:", "",
                  "| config | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for r in phased:
            cells = [(f"{r['cpu_phases'][p]['process']:.2f} ({r['cpu_phases'][p]['thread']:.2f})"
                      if p in r["cpu_phases"] else "-") for p in names]
            lines.append(f"| ({r['key']}) | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | want | met | note |", "|---|---|---|---|---|"]
    for t in rep.get("targets", []):
        met = "-" if t["met"] is None else "yes" if t["met"] else "NO"
        lines.append(f"| {t['target']} | {f(t['measured'])} | {t['want']} | {met} | {t['note']} |")
    lines += ["", ("- Bytes: H2D is what crosses to the GPU per image (JPEG file bytes for c-h, decoded pixels for b, "
              "fp32 for a); the issue's 1/15 target is applied to H2D, the input the GPU decode saves. The total "
              "(H2D + D2H) is shown as well: the output mask crosses back alike with any decoder."),
              ("- CPU: process CPU time / images over the back-to-back run (every thread: nvImageCodec's decode "
              "threads included); phases from trtflow.runtime.trace spans, 'other' = Python around the calls. "
              "h2d_or_decode is the H2D copy call (b) or the nvImageCodec decode call, which blocks the calling "
              "thread until the decode is done (GIL released). Host waits: see each row's note (streams.wait).")]
    notes = [f"({r['key']}) {n}" for r in rep["rows"] for n in r.get("notes", [])]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


if __name__ == "__main__":  # python3 -m trtflow.bench.encoding report.json: print the tables again
    import sys

    print(render(json.loads(Path(sys.argv[1]).read_text())))
