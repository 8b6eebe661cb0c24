"""``trtflow bench``: one configuration, or a sweep side by side in one run, with the link measured alongside.

Every sweep includes the hand-written baseline (pageable numpy in, synchronous copies, a sync per call)
so each speedup is relative to something real, and a device-resident run so the I/O share of the
wall time (``io_ms``) is visible.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trtflow import artifact as art
from trtflow.bench.load import LoadResult
from trtflow.bench.measure import BenchResult, measure
from trtflow.errors import RecipeError
from trtflow.plan.model import Plan

BASELINE = ("baseline", "pageable", "sync", False)
# (label, memory, topology, cuda_graph); `pipelined` uses the recipe's depth (>= 2)
MEMORY_TOPOLOGY_SWEEP = [
    BASELINE,
    ("pinned", "pinned", "sync", False),
    ("write_combined", "write_combined", "sync", False),
    ("registered", "registered", "sync", False),
    ("mapped", "mapped", "sync", False),
    ("pinned+async", "pinned", "async", False),
    ("pinned+pipelined", "pinned", "pipelined", False),
    ("pinned+graph", "pinned", "sync", True),
    ("device", "device", "sync", False),
]
# The producer writes straight into the runner's pinned staging (`runner.input_view(name)`), as a decoder
# can: no host staging copy. The producer's own writes are not timed.
IN_PLACE_SWEEP = [
    ("pinned+in-place", "pinned", "sync", False),
    ("pinned+in-place+pipelined", "pinned", "pipelined", False),
]


@dataclass
class BenchReport:
    name: str
    card: str
    link: dict[str, float]
    results: list[BenchResult]
    best: str | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    budget_failures: list[str] = field(default_factory=list)
    load: list[LoadResult] = field(default_factory=list)     # load mode / instances and devices sweeps
    links: dict[int, dict[str, float]] = field(default_factory=dict)  # devices sweep: each GPU's link
    host_h2d_gbps: float | None = None                       # devices sweep: H2D to every GPU at once
    limit: str | None = None                                  # devices sweep: what bounds the total
    start: dict[str, Any] = field(default_factory=dict)       # cold vs warm start (measure_start)
    gpu: bool = True                                          # False: measured on the CPU engine
    measured: str = ""                                        # what ran, said plainly (engine or model.onnx)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "card": self.card, "link_gbps": self.link, "best": self.best,
                "results": [r.to_dict() for r in self.results], "timeline": self.timeline,
                "budget_failures": self.budget_failures, "load": [r.to_dict() for r in self.load],
                "links_gbps": {str(k): v for k, v in self.links.items()}, "host_h2d_gbps": self.host_h2d_gbps,
                "limit": self.limit, "start": self.start, "gpu": self.gpu, "measured": self.measured}


def measure_start(artifact: Path, plan: Plan, *, backend: str, device: str) -> dict[str, Any]:
    """Cold and warm start: open a runner and run one inference, twice, in this process.

    TensorRT-RTX compiles its kernels when a context is created and at new shapes (JIT); its runtime cache,
    saved in the artifact on close, skips that next time. Cold: the artifact's cache moved aside; warm: the
    cache the cold run just saved. Other engines have no such cache (``runtime_cache: n/a``): their two
    rows differ only by what the process and the OS keep warm.
    """
    import time

    from trtflow import load_runner
    from trtflow.backends._trt_common import RUNTIME_CACHE_DIR
    from trtflow.bench.measure import input_sets

    feeds = input_sets(plan, 1)[0]
    cache = artifact / RUNTIME_CACHE_DIR
    aside = cache.with_name(f".{RUNTIME_CACHE_DIR}.bench")
    if cache.exists():
        shutil.rmtree(aside, ignore_errors=True)
        cache.rename(aside)
    out: dict[str, Any] = {}
    try:
        for kind in ("cold", "warm"):
            t0 = time.perf_counter()
            with load_runner(artifact)(backend=backend, device=device) as r:
                r.submit_feeds(feeds).result_dict()
                out[f"{kind}_ms"] = (time.perf_counter() - t0) * 1e3
                out["runtime_cache"] = str(getattr(r._engine, "runtime_cache", "n/a"))
    finally:
        if aside.exists():  # the cold run saved a fresh cache for this GPU; an old one is not needed
            shutil.rmtree(aside, ignore_errors=True) if cache.exists() else aside.rename(cache)
    return out


def variant_artifact(artifact: Path, memory: str) -> Path:
    """The same engine with every tensor's memory strategy replaced (only the plan and runner differ)."""
    from trtflow.codegen import write_runner

    plan = Plan.from_json((artifact / art.PLAN).read_text())
    out_mem = "pinned" if memory == "write_combined" else memory
    tensors = {t.name: replace(t, memory=memory if t.role == "input" else out_mem) for t in plan.tensors}
    vplan = replace(plan, inputs=tuple(tensors[t.name] for t in plan.inputs),
                    outputs=tuple(tensors[t.name] for t in plan.outputs))
    folder = artifact.parent / ".variants" / f"{artifact.name}-{memory}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    report = art.read_report(artifact)
    for name in report.get("files", {}):
        if name not in (art.PLAN, art.RUNNER):
            (folder / name).symlink_to((artifact / name).resolve())
    art.atomic_write(folder / art.PLAN, vplan.to_json())
    write_runner(vplan, folder)
    art.seal(folder, {**report, "variant_of": str(artifact)})
    return folder


def _runner(artifact: Path, *, topology: str, depth: int, cuda_graph: bool, backend: str, device: str) -> Any:
    """The artifact's generated runner (what users ship: the bench never runs a parallel code path)."""
    from trtflow import load_runner

    return load_runner(artifact)(backend=backend, device=device, timing=True, topology=topology, depth=depth,
                                 cuda_graph=cuda_graph)


def bench_config(artifact: Path, plan: Plan, *, label: str, memory: str | None, topology: str | None,
                 cuda_graph: bool | None, backend: str, device: str, link: dict[str, float] | None,
                 warmup: int, iterations: int, duration_s: float | None, batch: int | None = None,
                 in_place: bool = False) -> BenchResult:
    mems = {t.memory for t in plan.tensors}
    folder = variant_artifact(artifact, memory) if memory and mems != {memory} else artifact
    topo = topology or plan.streams.topology
    depth = max(plan.streams.depth, 2) if topo == "pipelined" else 1
    graph = plan.streams.cuda_graph if cuda_graph is None else cuda_graph
    with _runner(folder, topology=topo, depth=depth, cuda_graph=graph, backend=backend, device=device) as r:
        return measure(r, Plan.from_json((folder / art.PLAN).read_text()), label=label,
                       memory=memory or "/".join(sorted(mems)), warmup=warmup, iterations=iterations,
                       duration_s=duration_s, batch=batch, link=link, in_place=in_place)


def finish(results: list[BenchResult]) -> str | None:
    """Ratios to the baseline, I/O time against the device-resident run; returns the best label."""
    base = next((r for r in results if r.label == "baseline"), results[0] if results else None)
    dev = next((r for r in results if r.memory == "device"), None)
    for r in results:
        if dev is not None:
            r.io_ms = max(r.wall.p50 - dev.wall.p50, 0.0)
        if base is not None:
            r.ratios = {"wall_speedup": base.wall.p50 / r.wall.p50 if r.wall.p50 else 0.0,
                        "throughput": r.samples_per_s / base.samples_per_s if base.samples_per_s else 0.0}
            if base.io_ms and r.io_ms is not None:
                r.ratios["io_reduction"] = base.io_ms / r.io_ms if r.io_ms > 0 else float("inf")
    host_results = [r for r in results if r.memory != "device"]  # device-resident inputs are a reference
    best = max(host_results or results, key=lambda r: r.samples_per_s, default=None)
    return best.label if best else None


def check_budgets(plan: Plan, r: BenchResult) -> list[str]:
    b = plan.budgets
    fails = []
    checks = [("p99_latency_ms", r.wall.p99, "p99 latency", "<="), ("p50_latency_ms", r.wall.p50, "p50 latency", "<="),
              ("h2d_ms", r.h2d.mean if r.h2d else None, "H2D", "<="),
              ("d2h_ms", r.d2h.mean if r.d2h else None, "D2H", "<="),
              ("min_throughput", r.samples_per_s, "throughput (samples/s)", ">=")]
    for key, got, what, op in checks:
        want = getattr(b, key)
        if want is None or got is None:
            continue
        ok = got <= want if op == "<=" else got >= want
        if not ok:
            fails.append(f"{what} {got:.3f} {'>' if op == '<=' else '<'} budget {want} ({key}) in config {r.label}")
    return fails


def batch_sizes(plan: Plan) -> list[int]:
    t = plan.inputs[0]
    lo, hi = t.min_shape[0], t.max_shape[0]
    if lo == hi:
        raise RecipeError(f"{plan.name}: input {t.name!r} has a fixed batch of {lo}; a batch sweep needs a profile",
                           hint="declare inputs.<name>.profile with min/opt/max batch")
    sizes, b = [], 1
    while b <= hi:
        if b >= lo:
            sizes.append(b)
        b *= 2
    return sorted(set(sizes + [lo, hi]))


def knee(results: list[BenchResult]) -> str | None:
    """Smallest batch reaching 90% of the best samples/s: past it, batching buys little."""
    if not results:
        return None
    top = max(r.samples_per_s for r in results)
    return next(r.label for r in results if r.samples_per_s >= 0.9 * top)


def write_best(recipe_path: Path, r: BenchResult, out: Path, plan: Plan | None = None) -> str:
    """Write the recipe with the best memory strategy and topology applied; returns the new recipe's name.

    A ruamel.yaml round trip: comments, the ``$schema`` line, key order and quoting survive; only the
    changed values differ. The copy gets its own ``name:`` (the output file's stem, else ``<name>-best``)
    so building it never replaces the input's artifact, and paths relative to the recipe (model,
    validate.data, build.timing_cache, the ``$schema`` line) are rewritten when ``out`` is in another folder.
    """
    import io
    import os

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    from trtflow.errors import OutputError
    from trtflow.recipe.schema import name_problem

    if out.resolve() == recipe_path.resolve():
        raise OutputError(f"--write-best {out}: that is the input recipe", hint="write the best config to a new file",
                          file=out)
    text = recipe_path.read_text(encoding="utf-8")
    rt = YAML()  # round-trip mode; block sequences indented under their key, as trtflow's recipes are
    rt.preserve_quotes = True
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)
    data = rt.load(text)

    def put(m: Any, key: str, value: Any) -> None:
        """Set ``m[key]``; a changed value's end-of-line comment (it described the old value) says so."""
        old = m.get(key)
        m[key] = value
        token = (m.ca.items.get(key) or [None, None, None])[2]
        if old is not None and old != value and token is not None and token.value.lstrip(" ").startswith("#"):
            shown = str(old).lower() if isinstance(old, bool) else old
            _, nl, rest = token.value.partition("\n")  # keep the blank lines that follow the comment
            token.value = f"# set by `trtflow bench --write-best` (was {shown}){nl}{rest}"
    old_name = str(data.get("name") or recipe_path.stem)
    new_name = out.stem if out.stem != old_name and not name_problem(out.stem) else f"{old_name}-best"[:64]
    if "name" in data:
        data["name"] = new_name
    else:
        data.insert(list(data).index("model") if "model" in data else 0, "name", new_name)
    for section, names in (("inputs", [t.name for t in plan.inputs] if plan else []),
                           ("outputs", list(dict.fromkeys(t.source for t in plan.outputs)) if plan else [])):
        if data.get(section) is None:
            data[section] = CommentedMap()
        specs = data[section]
        for key in dict.fromkeys([*specs, *names]):
            if specs.get(key) is None:
                specs[key] = CommentedMap()
            put(specs[key], "memory", "pinned" if (r.memory == "write_combined" and section == "outputs")
                else r.memory)
    if data.get("streams") is None:
        data["streams"] = CommentedMap()
    put(data["streams"], "topology", r.topology)
    put(data["streams"], "cuda_graph", r.cuda_graph)
    if r.topology == "pipelined":
        put(data["streams"], "depth", r.depth)
    src, dst = recipe_path.resolve().parent, out.resolve().parent
    buf = io.StringIO()
    rt.dump(data, buf)
    written = buf.getvalue()
    if src != dst:
        def moved(rel: str) -> str:
            return rel if os.path.isabs(rel) or "://" in rel else Path(os.path.relpath(src / rel, dst)).as_posix()

        if isinstance(data.get("model"), str):
            data["model"] = moved(data["model"])
        elif isinstance(data.get("model"), dict) and "path" in data["model"]:
            data["model"]["path"] = moved(data["model"]["path"])
        for section, key in (("validate", "data"), ("build", "timing_cache")):
            if isinstance(data.get(section), dict) and isinstance(data[section].get(key), str):
                data[section][key] = moved(data[section][key])
        buf = io.StringIO()
        rt.dump(data, buf)
        written = buf.getvalue()
        first, sep, rest = written.partition("\n")
        marker = "# yaml-language-server: $schema="
        if first.startswith(marker):
            written = marker + moved(first[len(marker):].strip()) + sep + rest
    art.atomic_write(out, written)
    return new_name
