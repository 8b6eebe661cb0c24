"""Build orchestration: recipe -> plan -> lowered ONNX -> backend build -> runner -> report, atomically.

A build is keyed on its content (plan, model hash, builder and its version, target GPU); a second build
with the same key is a cache hit and rebuilds nothing. ``force=True`` rebuilds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtflow import __version__, extras
from trtflow import artifact as art
from trtflow.backends.base import Backend, Progress, pick_builder
from trtflow.errors import ArtifactError, OutputError, RecipeError, TrtflowError
from trtflow.plan import Plan, make_plan
from trtflow.recipe import LoadedRecipe, load_recipe


@dataclass
class BuildResult:
    name: str
    artifact: Path
    plan: Plan
    backend: str
    cache_hit: bool
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


def library_versions() -> dict[str, str | None]:
    """Versions of every library a build may involve (None = not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "trtflow": __version__}
    for dist in ("numpy", "onnx", "onnxruntime", "onnxconverter-common", "pydantic", "tensorrt",
                 "tensorrt-rtx", "torch", "onnx2torch", "cuda-bindings"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _plan_key_material(plan: Plan) -> dict[str, Any]:
    d = plan.to_dict()
    for k in ("recipe_path", "model_path", "recipe_sha256"):  # location-independent; content is in the plan
        d.pop(k, None)
    return d


def _lowering_fingerprint() -> str:
    """Hash of the graph passes' source: a change to how models are lowered invalidates cached builds."""
    from trtflow import passes

    h = hashlib.sha256()
    for path in sorted(Path(passes.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(plan: Plan, builder: type[Backend]) -> str:
    material = {
        "plan": _plan_key_material(plan),
        "lowering": _lowering_fingerprint(),
        "builder": builder.name,
        "builder_version": builder.version(),
        "target": builder_target(builder, plan),
        "trtflow": __version__,
    }
    return art.sha256_bytes(json.dumps(material, sort_keys=True).encode())


def builder_target(builder: type[Backend], plan: Plan) -> str:
    """What the engine is specific to: the GPU for TensorRT, compute capabilities for RTX, nothing for ONNX."""
    if builder.name == "tensorrt_rtx":
        return "cc:" + (",".join(plan.build.compute_capabilities) or "default")
    if builder.name == "tensorrt":
        from trtflow.bench.link import device_summary
        from trtflow.runtime import cuda

        return device_summary() if cuda.cuda_available() else "no-gpu"
    return "any"


def artifact_dir(plan: Plan, out_root: Path) -> Path:
    return out_root / plan.name


def _cached(final: Path, key: str) -> dict[str, Any] | None:
    try:
        report = art.read_report(final)
        if report.get("cache_key") != key:
            return None
        art.verify(final, report)
    except ArtifactError:
        return None
    return report


@contextlib.contextmanager
def _cancel_on_sigint(progress: Progress | None) -> Iterator[Progress]:
    """Ctrl-C during a backend build cancels it; the previous artifact stays (nothing is committed).

    A KeyboardInterrupt cannot be relied on inside the builder: Python raises it at the next bytecode,
    which may be the first line of the progress monitor's callback, outside any ``try``, and TensorRT
    swallows exceptions that escape a callback, so the build ran to the end and was committed. Instead a
    SIGINT handler only sets a flag; the progress callback (always installed, so quiet builds cancel
    too) raises at the builder's next step, which the TensorRT monitor turns into step_complete() ->
    False; and the flag is checked again when the builder returns. Main thread only (where Python can
    install signal handlers); elsewhere the caller's progress is used as is.
    """
    flag = threading.Event()

    def cancellable(phase: str, step: int, total: int) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        if progress is not None:
            progress(phase, step, total)

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, None):
        yield cancellable if progress is None else progress
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield cancellable
    finally:
        signal.signal(signal.SIGINT, previous)
    if flag.is_set():  # interrupted after the builder's last step: still nothing is committed
        raise KeyboardInterrupt


def _check_out_root(out_root: Path) -> None:
    if out_root.exists() and not out_root.is_dir():
        raise OutputError(f"--out {out_root} is a file, not a folder", hint="pass a folder (it is created if missing)",
                          file=out_root)


def _check_name_collision(final: Path, loaded: LoadedRecipe) -> str | None:
    """An artifact of this name built from ANOTHER recipe that still exists and still has this name is a
    collision (two recipes would overwrite each other's artifact). Returns the other recipe's path."""
    try:
        other = Path(str(art.read_report(final).get("recipe_path") or ""))
    except ArtifactError:
        return None
    if not other.name or other == loaded.path or not other.is_file():
        return None
    try:
        still = load_recipe(other).name == loaded.name
    except TrtflowError:
        still = False
    return str(other) if still else None


def build(loaded: LoadedRecipe | str | Path, *, out_root: Path = art.DEFAULT_ROOT, force: bool = False,
          backend: str | None = None, progress: Progress | None = None, allow_outside: bool = False) -> BuildResult:
    """Build one recipe into ``out_root/<name>/``.

    Under the artifact's lock (:func:`trtflow.artifact.locked`): a concurrent build of the same artifact
    waits for this one and then hits the cache. A second recipe with the same ``name:`` is refused
    (``force`` replaces the other's artifact), and a folder there that is not an artifact is never replaced.
    """
    t0 = time.perf_counter()
    if not isinstance(loaded, LoadedRecipe):
        loaded = load_recipe(loaded)
    plan = make_plan(loaded, allow_outside=allow_outside)
    builder = pick_builder(backend or plan.build.backend)
    _check_out_root(out_root)
    extras.require(extras.for_precision(plan.precision))  # before any work, not halfway through the passes
    final = artifact_dir(plan, out_root)
    key = cache_key(plan, builder)

    def waiting(pid: int | None) -> None:
        if progress is not None:
            progress(f"waiting for another build of {plan.name}" + (f" (pid {pid})" if pid else ""), 0, 0)

    with art.locked(final, waiting=waiting):
        art.check_replaceable(final)
        other = _check_name_collision(final, loaded)
        if other and not force:
            raise RecipeError(f"{loaded.where(('name',))} name: {plan.name!r} is also the name of {other}, whose "
                              f"artifact is {final}; building this recipe would overwrite it",
                              hint="give one of the recipes another `name:` (or pass --force to replace it)")
        cached = None if force else _cached(final, key)
        if cached is not None:
            return BuildResult(plan.name, final, plan, builder.name, True, time.perf_counter() - t0, cached)
        report = _build_into(final, plan, builder, key, progress, t0, overrides=loaded.overrides.values())
    return BuildResult(plan.name, final, plan, builder.name, False, time.perf_counter() - t0, report)


def _build_into(final: Path, plan: Plan, builder: type[Backend], key: str, progress: Progress | None,
                t0: float, *, overrides: Iterable[str]) -> dict[str, Any]:
    import onnx

    from trtflow.codegen import write_runner
    from trtflow.passes import lower, pass_detail

    timings: dict[str, float] = {}
    tmp = art.staging_dir(final)
    try:
        t = time.perf_counter()
        model = onnx.load(plan.model_path)
        lowered, passes = lower(model, plan)
        onnx.save(lowered, str(tmp / art.MODEL))
        timings["passes"] = time.perf_counter() - t

        t = time.perf_counter()
        with _cancel_on_sigint(progress) as cancellable:
            info = builder().build(tmp / art.MODEL, plan, tmp, progress=cancellable)
        timings["backend_build"] = time.perf_counter() - t

        art.atomic_write(tmp / art.PLAN, plan.to_json())
        write_runner(plan, tmp)
        report = art.seal(tmp, {
            "name": plan.name,
            "backend": builder.name,
            "engine_file": info.engine_file,
            "cache_key": key,
            "target": builder_target(builder, plan),
            "recipe_path": plan.recipe_path,
            "recipe_sha256": plan.recipe_sha256,
            "model_path": plan.model_path,
            "model_sha256": plan.model_sha256,
            "precision": plan.precision,
            "tf32": plan.tf32,
            "passes": passes,
            "mixed_precision": pass_detail(passes, "mixed_precision"),  # what fp16/bf16 lowering kept in fp32, why
            "backend_details": info.details,
            "versions": library_versions(),
            "platform": {"system": platform.platform(), "machine": platform.machine(), "python": sys.version.split()[0]},
            "timings_s": {**timings, "total": time.perf_counter() - t0},
            "warnings": list(plan.warnings),
            "overrides": sorted(set(overrides)),  # command-line flags that changed the recipe
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        art.commit_dir(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _disk_full(exc, final, tmp, plan) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _disk_full(exc: OSError, final: Path, tmp: Path, plan: Plan) -> OutputError:
    """The disk filled up while the artifact was written: say where, how much was written, what is free."""
    written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else 0
    model = Path(plan.model_path).stat().st_size if Path(plan.model_path).is_file() else 0
    free = shutil.disk_usage(final.parent).free

    def human(n: float) -> str:
        return next(f"{n / k:.1f} {u}" for k, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1, "B")) if n >= k or k == 1)

    return OutputError(
        f"{final}: {exc.strerror} while writing the artifact ({human(written)} written, {human(free)} free on that "
        f"file system; the model alone is {human(model)})",
        hint=f"free at least {human(max(2 * model, written))} there (old artifacts in {final.parent} can go), "
        "or pass another --out; the previous artifact is untouched", file=final)
