"""Orchestrates ``trtflow bench``: build (or hit the cache), measure the link, run configs, check budgets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtflow import artifact as art
from trtflow.bench import SWEEPS
from trtflow.bench.measure import BenchResult
from trtflow.bench.run import (
    IN_PLACE_SWEEP,
    MEMORY_TOPOLOGY_SWEEP,
    BenchReport,
    batch_sizes,
    bench_config,
    check_budgets,
    finish,
    knee,
    measure_start,
    write_best,
)
from trtflow.errors import BackendMissing, UsageError
from trtflow.plan.model import Plan
from trtflow.recipe import LoadedRecipe


def _card() -> tuple[str, bool]:
    from trtflow.runtime import cuda

    if not cuda.cuda_available():
        return "CPU (no CUDA GPU)", False
    from trtflow.bench.link import device_summary

    return device_summary(), True


def run_bench(loaded: LoadedRecipe, *, out: Path, backend: str, device: str, sweep: str | None, warmup: int,
              iterations: int, duration_s: float | None, measure_link_: bool, write_best_to: Path | None,
              build_progress: Callable[[LoadedRecipe], Any], allow_outside: bool = False,
              progress: Callable[[int, int], None] | None = None,
              concurrency: int | None = None) -> BenchReport:
    """``build_progress(loaded)`` builds (or hits the cache) and returns the BuildResult; overrides applied."""
    from trtflow import extras

    extras.require_device(device)
    card, gpu = _card()
    link: dict[str, float] = {}
    if gpu and measure_link_:
        from trtflow.bench.link import measure_link

        link = measure_link(seconds=1.0)
    kw: dict[str, Any] = {"backend": backend, "device": device, "link": link or None, "warmup": warmup,
                          "iterations": iterations, "duration_s": duration_s}

    res = build_progress(loaded)
    built = res.report
    artifact, plan = res.artifact, Plan.from_json((res.artifact / art.PLAN).read_text())
    results = _Results(progress, _n_configs(plan, sweep, gpu))
    rep = BenchReport(name=plan.name, card=card, link=link, results=results, gpu=gpu)
    if sweep in ("instances", "devices") or concurrency is not None:
        _load(rep, artifact, plan, sweep=sweep, concurrency=concurrency, gpu=gpu, backend=backend, device=device,
              warmup=warmup, iterations=iterations, duration_s=duration_s)
        return rep
    if sweep is None:
        results.append(bench_config(artifact, plan, label="recipe", memory=None, topology=None, cuda_graph=None, **kw))
        rep.start = measure_start(artifact, plan, backend=backend, device=device)
    elif sweep == "memory":
        configs = MEMORY_TOPOLOGY_SWEEP if gpu else MEMORY_TOPOLOGY_SWEEP[:1]
        for label, memory, topology, graph in configs:
            results.append(bench_config(artifact, plan, label=label, memory=memory, topology=topology,
                                        cuda_graph=graph, **kw))
        for label, memory, topology, graph in IN_PLACE_SWEEP if gpu else []:
            results.append(bench_config(artifact, plan, label=label, memory=memory, topology=topology,
                                        cuda_graph=graph, in_place=True, **kw))
    elif sweep == "batch":
        for b in batch_sizes(plan):
            r = bench_config(artifact, plan, label=f"batch {b}", memory=None, topology=None, cuda_graph=None,
                             batch=b, **kw)
            results.append(r)
        k = knee(results)
        rep.best = k
        for r in results:
            r.ratios = {"per_sample_ms": r.wall.p50 / r.batch}
            if r.label == k:
                r.diagnostics.append("knee: smallest batch within 90% of the best samples/s")
    elif sweep == "precision":
        from trtflow.build import build
        from trtflow.recipe.overrides import Overrides, apply_overrides

        for prec in ("fp32", "fp16"):
            variant = apply_overrides(loaded, Overrides(precision=prec, sets=(("name", f"{loaded.name}-{prec}"),)))
            res = build(variant, out_root=out, allow_outside=allow_outside)
            vplan = Plan.from_json((res.artifact / art.PLAN).read_text())
            results.append(bench_config(res.artifact, vplan, label=prec, memory=None, topology=None,
                                        cuda_graph=None, **kw))
    else:
        raise UsageError(f"unknown sweep {sweep!r}", hint="--sweep " + " | ".join(SWEEPS))
    if results:
        from trtflow.validate.run import describe_candidate

        rep.measured = describe_candidate(built, results[0].backend, results[0].device)[0].replace(
            "is NOT validated", "is NOT measured")
    if sweep != "batch":
        rep.best = finish(results)
    if gpu and (plan.streams.topology == "pipelined" or sweep == "memory"):
        from trtflow.bench.measure import timeline
        from trtflow.bench.run import _runner

        depth = max(plan.streams.depth, 2)
        with _runner(artifact, topology="pipelined", depth=depth, cuda_graph=False, backend=backend,
                     device=device) as r:
            timeline(r, plan, memory="pinned")  # warm-up window
            rep.timeline = timeline(r, plan, memory="pinned")
    for r in results:
        rep.budget_failures += check_budgets(plan, r) if (sweep is None or r.label == rep.best) else []
    if write_best_to and rep.best:
        best = next(r for r in results if r.label == rep.best)
        write_best(Path(plan.recipe_path), best, write_best_to, plan)
    return rep


class _Results(list[BenchResult]):
    """The results list of a report; each append reports progress(done, total) for the CLI's bar."""

    def __init__(self, progress: Callable[[int, int], None] | None, total: int) -> None:
        super().__init__()
        self.progress, self.total = progress, total

    def append(self, r: BenchResult) -> None:
        super().append(r)
        if self.progress is not None:
            self.progress(len(self), max(self.total, len(self)))


def _n_configs(plan: Plan, sweep: str | None, gpu: bool) -> int:
    if sweep == "memory":
        return len(MEMORY_TOPOLOGY_SWEEP) + len(IN_PLACE_SWEEP) if gpu else 1
    if sweep == "batch":
        return len(batch_sizes(plan))
    return 2 if sweep == "precision" else 1


def _load(rep: BenchReport, artifact: Path, plan: Plan, *, sweep: str | None, concurrency: int | None, gpu: bool,
          backend: str, device: str, warmup: int, iterations: int, duration_s: float | None) -> None:
    """Load mode (``--concurrency C``: the recipe's pool) or the instances / devices sweep, with ratios
    to the single-instance (single-GPU) row and to 1/max(stage) of one instance."""
    from trtflow.bench import load

    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    per_gpu = plan.serving.instances
    floor = load.stage_floor(artifact, plan, backend=backend, device=device, warmup=warmup,
                             iterations=min(iterations, 50)) if gpu else None
    common: dict[str, Any] = {"backend": backend, "device": device, "warmup": min(warmup, 3)}

    def row(label: str, instances: int, devices: list[int] | None, c: int, floor_per_s: float | None,
            **extra: Any) -> None:
        rep.load.append(load.run_load(artifact, plan, label=label, instances=instances, devices=devices,
                                      concurrency=c, requests=None if duration_s else max(iterations, 20 * c),
                                      duration_s=duration_s, floor_per_s=floor_per_s, **common, **extra))

    if sweep == "devices":
        if not gpu or device == "cpu":
            raise BackendMissing("--sweep devices needs CUDA GPUs", hint="run it on a GPU host")
        from trtflow.bench.link import measure_host_h2d, measure_links
        from trtflow.runtime import cuda

        every = list(range(cuda.device_count()))
        rep.links = measure_links(every)
        rep.host_h2d_gbps = measure_host_h2d(every)
        links_sum = sum(v["pinned_h2d"] for v in rep.links.values())
        rep.limit = (f"host: H2D to all {len(every)} GPU(s) at once {rep.host_h2d_gbps:.1f} GB/s < "
                     f"{links_sum:.1f} GB/s, the sum of the links" if rep.host_h2d_gbps < 0.9 * links_sum else
                     f"links: H2D to all {len(every)} GPU(s) at once {rep.host_h2d_gbps:.1f} GB/s ~ the sum of "
                     f"the links {links_sum:.1f} GB/s (each GPU's own link bounds it)")
        c = concurrency or 8
        for k in range(1, len(every) + 1):
            row(f"{k} GPU(s) x {per_gpu}", per_gpu, every[:k], c * k, floor * k if floor else None)
        load.compare(rep.load, per_device=True)
    elif sweep == "instances":
        c = concurrency or 8
        for n in load.INSTANCES:
            row(f"{n} instance(s)", n, None, c, floor)
        load.compare(rep.load, per_device=False)
        if all(t.shape and t.min_shape[0] < t.max_shape[0] for t in plan.tensors):
            # dynamic batching's trade-off: batch-1 requests, without and with a window (latency vs throughput)
            batched: list[Any] = []
            rep.load, single = batched, rep.load
            row("1 instance, batch-1 requests", 1, None, c, None, batch=1)
            for w in load.BATCH_WINDOWS_MS:
                row(f"batch-1 + {w:g} ms batching", 1, None, c, None, batch=1, batching={"window_ms": w})
            load.compare(batched, per_device=False)
            rep.load = single + batched
    else:
        assert concurrency is not None
        row(f"{per_gpu} instance(s), {concurrency} client(s)", per_gpu, None, concurrency, floor)
        load.compare(rep.load, per_device=False)
