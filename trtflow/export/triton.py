"""``trtflow export triton``: a Triton Inference Server model repository from a built artifact.

Writes ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/1/model.plan`` (the artifact's TensorRT engine),
or ``1/model.onnx`` for Triton's onnxruntime backend when the artifact holds no plan Triton can load
(no TensorRT builder was installed, or the plan is a TensorRT-RTX one, which Triton's TensorRT backend
cannot deserialize). ``config.pbtxt`` is Triton's own ``ModelConfig`` message (tritonclient's
``model_config_pb2``), filled field by field and written by protobuf's ``text_format``: an unknown
field or enum fails here, and tensor names from the ONNX file are escaped by protobuf itself. The model
folder is assembled beside its final place and swapped in, like an artifact.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trtflow import __version__
from trtflow import artifact as art
from trtflow.errors import ArtifactError, OutputError, UsageError
from trtflow.plan.model import Plan, TensorPlan

TRITON_DTYPES: dict[str, str] = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
}
# Triton model names become folder names and URL path segments.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

Platform = Literal["tensorrt_plan", "onnxruntime"]


def _model_config() -> Any:
    """tritonclient's ``model_config_pb2`` (the `triton` extra), imported only when a config is written."""
    from trtflow import extras

    extras.require({"tritonclient": "writing Triton's config.pbtxt"})
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Batching:
    """Triton's batch dimension: ``max_batch_size`` > 0 when every tensor starts with one dynamic batch dim."""

    max_batch_size: int
    opt: int | None
    why_not: str | None


def batching(plan: Plan) -> Batching:
    if not plan.inputs:
        return Batching(0, None, "the model has no inputs")
    first = {(t.min_shape[0], t.shape[0], t.max_shape[0]) if t.shape else None for t in plan.tensors}
    if len(first) != 1 or None in first:
        return Batching(0, None, "not every input and output starts with the same dynamic batch dimension")
    lo, opt, hi = next(iter(first))  # type: ignore[misc]
    if lo == hi:
        return Batching(0, None, "dim 0 is fixed (no batch range in the profile)")
    if lo != 1:
        return Batching(0, None, f"the profile's batch starts at {lo}; Triton may send batches of 1")
    return Batching(hi, opt, None)


def _dims(t: TensorPlan, drop_batch: bool) -> list[int]:
    dims = [d if lo == hi else -1 for d, lo, hi in zip(t.shape, t.min_shape, t.max_shape)]
    return dims[1:] if drop_batch else dims


def triton_config(plan: Plan, *, name: str, platform: Platform, kind: Literal["gpu", "cpu"] = "gpu"
                  ) -> tuple[Any, list[str]]:
    """The ``ModelConfig`` message for ``plan`` and notes on the choices made."""
    mc = _model_config()
    notes: list[str] = []
    b = batching(plan)
    if b.why_not and any(t.dynamic for t in plan.inputs):
        notes.append(f"max_batch_size 0: {b.why_not}; dims carry -1 for dynamic dims")
    is_plan = platform == "tensorrt_plan"
    cfg = mc.ModelConfig(name=name, max_batch_size=b.max_batch_size)
    if is_plan:
        cfg.platform = "tensorrt_plan"
    else:
        cfg.backend = "onnxruntime"

    def tensor(t: TensorPlan, io: Any) -> None:
        dims = _dims(t, b.max_batch_size > 0)
        io.name = t.name
        io.data_type = mc.DataType.Value(TRITON_DTYPES[t.dtype])
        io.dims.extend(dims or [1])
        if not dims:  # one value per batch item ([batch] in the engine): Triton's documented [1] + empty reshape
            io.reshape.SetInParent()
        if is_plan and t.format != "linear":
            io.is_non_linear_format_io = True

    for t in plan.inputs:
        tensor(t, cfg.input.add())
    for t in plan.outputs:
        tensor(t, cfg.output.add())
    if not is_plan and any(t.format != "linear" for t in plan.tensors):
        notes.append("I/O formats other than linear apply to TensorRT plans only; the ONNX model takes "
                     "and returns linear (logical) arrays")
    streams = plan.streams
    count = streams.buffer_sets
    cfg.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_GPU if kind == "gpu"
                           else mc.ModelInstanceGroup.KIND_CPU)
    if count > 1:
        notes.append(f"instance_group count {count}: one execution context per pipelined buffer set "
                     "(streams.depth)")
    if streams.cuda_graph:
        if is_plan:
            cfg.optimization.cuda.graphs = True
            skip = 1 if b.max_batch_size else 0
            if any(lo != hi for t in plan.inputs for lo, hi in zip(t.min_shape[skip:], t.max_shape[skip:])):
                # Dynamic non-batch dims: capture the graph at the profile's opt shape.
                spec = cfg.optimization.cuda.graph_spec.add()
                if b.max_batch_size and b.opt:
                    spec.batch_size = b.opt
                for t in plan.inputs:
                    spec.input[t.name].dim.extend(_opt_dims(t, b.max_batch_size > 0))
        else:
            notes.append("streams.cuda_graph is not carried over: Triton's CUDA graphs apply to TensorRT plans")
    if b.max_batch_size and b.opt:
        cfg.dynamic_batching.preferred_batch_size.append(b.opt)
    return cfg, notes


def _opt_dims(t: TensorPlan, drop_batch: bool) -> list[int]:
    return list(t.shape[1:] if drop_batch else t.shape)


def config_text(cfg: Any, header: list[str]) -> str:
    """``config.pbtxt``: ``header`` as comment lines, then ``cfg`` in protobuf text format (ASCII, escaped)."""
    from google.protobuf import text_format

    comments = [f"# {line}" for h in header for line in h.splitlines()]
    return "\n".join([*comments, text_format.MessageToString(cfg, as_utf8=False).rstrip("\n")]) + "\n"


# ----------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class TritonExport:
    model_dir: Path
    config_path: Path
    model_file: Path
    platform: Platform
    notes: tuple[str, ...]


def _choose(report: dict[str, Any], prefer_onnx: bool) -> tuple[Platform, str | None]:
    backend, engine = report.get("backend"), report.get("engine_file")
    if prefer_onnx:
        return "onnxruntime", "--onnx: exporting the lowered ONNX model for Triton's onnxruntime backend"
    if backend == "tensorrt" and engine:
        return "tensorrt_plan", None
    if backend == "tensorrt_rtx" and engine:
        return "onnxruntime", ("the artifact's engine is a TensorRT-RTX plan, which Triton's TensorRT backend "
                               "cannot load: exporting the lowered model.onnx for the onnxruntime backend "
                               "(build with --backend tensorrt on a TensorRT host for a tensorrt_plan)")
    return "onnxruntime", (f"the artifact has no engine.plan (built with {backend}: no TensorRT builder was "
                           "installed): exporting the lowered model.onnx for Triton's onnxruntime backend")


def export_artifact(artifact: Path, repo: Path, *, name: str | None = None, force: bool = False,
                    prefer_onnx: bool = False, kind: Literal["gpu", "cpu"] = "gpu", version: int = 1
                    ) -> TritonExport:
    """Write ``repo/<name>/`` from the built ``artifact`` (hashes verified first)."""
    report = art.verify(artifact)
    try:
        plan = Plan.from_json((artifact / art.PLAN).read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{artifact / art.PLAN}: unreadable ({exc})", hint="rebuild with `trtflow build --force`") from None
    name = name or plan.name
    if not _MODEL_NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not usable as a Triton model name (a folder name)",
                            hint="pass --name with letters, digits, '_', '.', '-'")
    if version < 1:
        raise UsageError(f"model version must be >= 1, got {version}")
    platform, why = _choose(report, prefer_onnx)
    if platform == "tensorrt_plan" and kind == "cpu":
        raise UsageError("a TensorRT plan runs on a GPU only; --kind cpu needs --onnx")
    notes = [why] if why else []
    cfg, cfg_notes = triton_config(plan, name=name, platform=platform, kind=kind)
    notes += cfg_notes
    src_name = report["engine_file"] if platform == "tensorrt_plan" else art.MODEL
    dst_name = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
    versions = report.get("versions") or {}
    header = [(f"Written by trtflow {__version__} `trtflow export triton` from the artifact {plan.name!r} "
               f"(recipe {Path(plan.recipe_path).name!r}, sha256 {plan.recipe_sha256[:12]}...; model sha256 "
               f"{plan.model_sha256[:12]}...). Provenance: trtflow.json.")]
    if platform == "tensorrt_plan":
        header.append(f"The plan was built with TensorRT {versions.get('tensorrt') or '?'} for "
                      f"{report.get('target', '?')}: Triton must ship the same TensorRT version, and the GPU must "
                      "match unless build.hardware_compatibility was set.")
        notes.append(f"Triton must ship TensorRT {versions.get('tensorrt') or '?'} (the plan's version); "
                     "see the support matrix of the Triton release you deploy")
    dest = repo / name
    if dest.exists() and not force:
        raise OutputError(f"{dest} already exists", hint="pass --force to replace that model folder", file=dest)
    with art.locked(dest):  # concurrent exports of one model folder take turns
        tmp = art.staging_dir(dest)
        try:
            (tmp / str(version)).mkdir()
            art.atomic_write(tmp / "config.pbtxt", config_text(cfg, header))
            shutil.copyfile(artifact / src_name, tmp / str(version) / dst_name)
            copied = art.sha256_path(tmp / str(version) / dst_name)
            if copied != report["files"].get(src_name):
                raise ArtifactError(f"{artifact / src_name} changed while it was copied", hint="export again")
            provenance = {
                "trtflow": __version__, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "artifact": str(artifact.resolve()), "cache_key": report.get("cache_key"),
                "recipe_path": plan.recipe_path, "recipe_sha256": plan.recipe_sha256, "model_sha256": plan.model_sha256,
                "built_with": report.get("backend"), "versions": {k: v for k, v in versions.items() if v},
                "platform": platform, "files": {f"{version}/{dst_name}": copied}, "notes": notes,
            }
            art.atomic_write(tmp / "trtflow.json", json.dumps(provenance, indent=2) + "\n")
            art.commit_dir(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return TritonExport(model_dir=dest, config_path=dest / "config.pbtxt", model_file=dest / str(version) / dst_name,
                        platform=platform, notes=tuple(notes))


def is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / art.REPORT).is_file()


def export_recipe(recipe: Any, repo: Path, *, out_root: Path = art.DEFAULT_ROOT, backend: str | None = None,
                  rebuild: bool = False, allow_outside: bool = False, **kw: Any) -> tuple[TritonExport, Any]:
    """Build ``recipe`` (a path or a LoadedRecipe; a cache hit when nothing changed), then export its artifact."""
    from trtflow.build import build

    result = build(recipe, out_root=out_root, force=rebuild, backend=backend, allow_outside=allow_outside)
    return export_artifact(result.artifact, repo, **kw), result


__all__ = ["Batching", "TritonExport", "batching", "config_text", "export_artifact", "export_recipe",
           "is_artifact", "triton_config"]
