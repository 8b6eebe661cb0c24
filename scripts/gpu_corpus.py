#!/usr/bin/env python3
"""The corpus on the GPU machine: every GPU model through init -> build (backend torch) -> validate on CUDA.

    python3 scripts/corpus.py fetch --gpu --dest .corpus-gpu     # here, before the call (~14 MB)
    python3 scripts/gpu_corpus.py --out $OUT/corpus_gpu.json      # there (scripts/gpu_suite.sh runs it)

For each model of ``scripts/corpus.py`` marked ``gpu`` that is present (``--corpus``, default
``$TRTFLOW_CORPUS``, else ``.corpus-gpu/`` or ``.corpus/``; repository models always are): ``trtflow init``
writes the recipe into a scratch project, the corpus tier's ``sets`` apply, then for fp32 and fp16 the
recipe is built with the torch backend (onnx2torch) and validated by ``validate_artifact`` on CUDA (the
generated runner, torch engine on the GPU, against onnxruntime CPU running the original model) at the
profile's min, max and a non-square shape (``mixed``; ``opt`` instead for models with several inputs,
whose ``mixed`` would give a state another batch than its audio). One sample per shape.

Prints a Markdown table (model, precision, result, worst error per shape, seconds) and writes every
detail to ``--out`` (JSON). A model that fails to convert or validate is a row with the error, not a
crash; the exit code is 1 when any row failed. ``--budget-s`` stops starting new models after that
many seconds (the GPU suite shares one call): the rest are rows marked "skipped (time)".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import corpus


def _corpus_dir(arg: str | None) -> Path:
    if arg or os.environ.get("TRTFLOW_CORPUS"):
        return Path(arg or os.environ["TRTFLOW_CORPUS"])
    gpu = ROOT / ".corpus-gpu"
    return gpu if gpu.is_dir() else ROOT / ".corpus"


def _shape_sets(plan: Any) -> list[str]:
    dynamic = [t for t in plan.inputs if t.dynamic]
    if not dynamic:
        return ["opt"]
    return ["min", "max", "mixed"] if len(plan.inputs) == 1 else ["min", "max", "opt"]


def run_one(m: corpus.Model, src: Path, precision: str, project: Path, device: str) -> dict[str, Any]:
    from trtflow.build import build
    from trtflow.errors import TrtflowError
    from trtflow.init import init_recipe
    from trtflow.recipe import load_recipe
    from trtflow.recipe.overrides import Overrides, apply_overrides, parse_set
    from trtflow.validate.run import validate_artifact

    row: dict[str, Any] = {"model": m.id, "precision": precision, "source": m.source, "exporter": m.exporter}
    t0 = time.perf_counter()
    try:
        model = project / "models" / src.name
        if not model.exists():
            model.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, model)
        recipe = project / "recipes" / f"{m.id}.yaml"
        if not recipe.exists():
            init_recipe(model, recipe)
        sets = tuple(parse_set(s) for s in m.sets) + (("validate.samples", 1),)
        loaded = apply_overrides(load_recipe(recipe), Overrides(precision=precision, sets=sets))
        result = build(loaded, out_root=project / "artifacts" / precision, backend="torch")
        row["build_s"] = round(time.perf_counter() - t0, 2)
        shapes = _shape_sets(result.plan)
        rep = validate_artifact(result.artifact, backend="torch", device=device, samples=1, shapes=shapes)
        row.update(passed=rep.passed, device=rep.device, candidate=rep.candidate, shapes=rep.cases,
                   outputs=[o.to_dict() for o in rep.outputs])
        worst: dict[str, float] = {}
        for o in rep.outputs:
            if o.numeric_gate:
                worst[o.case] = max(worst.get(o.case, 0.0), min(o.max_abs, o.max_rel))
        row["worst"] = worst
        row["failing"] = sorted({f"{o.name}@{o.case}" for o in rep.outputs if not o.passed})
    except TrtflowError as exc:
        row.update(passed=False, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one model's failure is a row of the table, not the end of the run
        row.update(passed=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| model | precision | result | worst min(abs, rel) error per shape | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            result, errs = r["skipped"], "-"
        elif "error" in r:
            result, errs = "**fails**: " + r["error"].splitlines()[0][:160].replace("|", "/"), "-"
        else:
            result = "pass" if r["passed"] else "**fails** (" + ", ".join(r["failing"])[:120] + ")"
            errs = ", ".join(f"{k} {v:.2g}" for k, v in r["worst"].items()) or "-"
        out.append(f"| {r['model']} | {r['precision']} | {result} | {errs} | {r.get('seconds', '-')} |")
    return "\n".join(out)


GPU_BEGIN = "<!-- gpu corpus table: generated by `python scripts/gpu_corpus.py --render out/corpus_gpu.json --write docs/models.md` -->"
GPU_END = "<!-- end of gpu corpus table -->"


def render(doc: dict[str, Any]) -> str:
    """The GPU table of a run (``--out`` JSON) between its doc markers."""
    versions = ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items())
    return (f"{GPU_BEGIN}\n\non {doc.get('gpu') or 'cpu'} (torch engine; {versions}), {doc.get('seconds')} s for the "
            f"whole run\n\n{table(doc['rows'])}\n\n{GPU_END}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/corpus_gpu.json", help="JSON results (default out/corpus_gpu.json)")
    ap.add_argument("--corpus", default=None, help="folder of fetched models (default: see above)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run without a GPU)")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--budget-s", type=float, default=170.0, help="start no model after this many seconds")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="run nothing: print the table of a saved run (with --write, into a doc)")
    ap.add_argument("--write", default=None, metavar="DOC", help="with --render: replace the GPU table in DOC")
    ap.add_argument("ids", nargs="*", help="model ids (default: every gpu model present)")
    args = ap.parse_args(argv)
    if args.render:
        text = render(json.loads(Path(args.render).read_text()))
        if args.write:
            doc = Path(args.write)
            body = doc.read_text()
            a, b = body.find(GPU_BEGIN), body.find(GPU_END)
            if a < 0 or b < 0:
                raise SystemExit(f"{doc}: no GPU table markers ({GPU_BEGIN!r} ... {GPU_END!r})")
            doc.write_text(body[:a] + text + body[b + len(GPU_END):])
        else:
            print(text)
        return 0

    folder = _corpus_dir(args.corpus)
    models = [m for m in corpus.MODELS if (m.id in args.ids if args.ids else m.gpu)]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trtflow-gpu-corpus-") as tmp:
        project = Path(tmp)
        (project / "pyproject.toml").write_text("[project]\nname = 'gpu-corpus'\n")
        for m in models:
            src = corpus.model_path(m, str(folder))
            for precision in args.precisions.split(","):
                if not src.is_file():
                    rows.append({"model": m.id, "precision": precision, "skipped": f"not fetched ({src})"})
                    continue
                if time.perf_counter() - start > args.budget_s:
                    rows.append({"model": m.id, "precision": precision, "skipped": "skipped (time budget)"})
                    continue
                row = run_one(m, src, precision, project, args.device)
                rows.append(row)
                print(f"{m.id} {precision}: {'pass' if row.get('passed') else 'FAIL'} in {row['seconds']} s",
                      file=sys.stderr, flush=True)
    from importlib import metadata

    versions: dict[str, str] = {}
    for lib in ("torch", "onnx2torch", "onnxruntime", "onnx"):
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    gpu = None
    if args.device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    doc = {"gpu": gpu, "versions": versions, "corpus": str(folder), "seconds": round(time.perf_counter() - start, 1),
           "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print("\n## Corpus " + render(doc).split("\n", 2)[2])
    ran = [r for r in rows if not r.get("skipped")]
    return 0 if ran and all(r.get("passed") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
