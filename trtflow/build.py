"""Build orchestration: recipe -> plan -> lowered ONNX -> backend build -> runner -> report, atomically.

A build is keyed on its content (plan, model hash, builder and its version, target GPU); a second build
with the same key is a cache hit and rebuilds nothing. ``force=True`` rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtflow import __version__
from trtflow import artifact as art
from trtflow.backends.base import Backend, Progress, pick_builder
from trtflow.errors import ArtifactError
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
        return "cc:" + (",".join(plan.build["compute_capabilities"]) or "default")
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


def build(loaded: LoadedRecipe | str | Path, *, out_root: Path = Path("build"), force: bool = False,
          backend: str | None = None, progress: Progress | None = None, allow_outside: bool = False) -> BuildResult:
    """Build one recipe into ``out_root/<name>/``."""
    import onnx

    from trtflow.codegen import generate_runner
    from trtflow.passes import lower

    t0 = time.perf_counter()
    if not isinstance(loaded, LoadedRecipe):
        loaded = load_recipe(loaded)
    plan = make_plan(loaded, allow_outside=allow_outside)
    builder = pick_builder(backend or plan.build["backend"])
    final = artifact_dir(plan, out_root)
    key = cache_key(plan, builder)
    cached = None if force else _cached(final, key)
    if cached is not None:
        return BuildResult(plan.name, final, plan, builder.name, True, time.perf_counter() - t0, cached)

    timings: dict[str, float] = {}
    tmp = art.staging_dir(final)
    try:
        t = time.perf_counter()
        model = onnx.load(plan.model_path)
        lowered, passes = lower(model, plan)
        onnx.save(lowered, str(tmp / art.MODEL))
        timings["passes"] = time.perf_counter() - t

        t = time.perf_counter()
        info = builder().build(tmp / art.MODEL, plan, tmp, progress=progress)
        timings["backend_build"] = time.perf_counter() - t

        art.atomic_write(tmp / art.PLAN, plan.to_json())
        art.atomic_write(tmp / art.RUNNER, generate_runner(plan))
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        report: dict[str, Any] = {
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
            "backend_details": info.details,
            "versions": library_versions(),
            "platform": {"system": platform.platform(), "machine": platform.machine(), "python": sys.version.split()[0]},
            "timings_s": {**timings, "total": time.perf_counter() - t0},
            "warnings": list(plan.warnings),
            "overrides": sorted(set(loaded.overrides.values())),  # command-line flags that changed the recipe
            "files": {name: art.sha256_path(tmp / name) for name in files},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        art.atomic_write(tmp / art.REPORT, json.dumps(report, indent=2, default=str) + "\n")
        art.commit_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(plan.name, final, plan, builder.name, False, time.perf_counter() - t0, report)
