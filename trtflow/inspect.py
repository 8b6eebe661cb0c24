"""``trtflow inspect artifacts/<name>/``: what an artifact holds, what its engine reports, and whether it is stale.

Everything is read from the artifact folder (``plan.json``, ``report.json``) and needs no GPU. The engine
itself is asked only through its backend (``get_backend``) and only through optional, duck-typed engine
methods (``io()``, ``inspect()``), after :func:`trtflow.artifact.verify` has checked every file's hash: a
corrupt or replaced plan is never deserialized.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any

from trtflow import __version__
from trtflow import artifact as art
from trtflow.errors import ArtifactError, TrtflowError
from trtflow.plan.formats import FORMATS, ITEMSIZE, physical_shape
from trtflow.recipe.loader import LoadedRecipe
from trtflow.terminal import markup

# pip distribution of each backend's library (report.json "versions" is keyed by distribution)
BACKEND_DIST = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx", "onnxruntime": "onnxruntime",
                "torch": "torch"}


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements (scalars, not vectors, not bytes) of ``shape``."""
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def tensor_layout(t: dict[str, Any]) -> dict[str, Any]:
    """Physical layout of one plan tensor at its opt shape: buffer shape, element strides, padding."""
    shape = tuple(t["shape"])
    fmt = t["format"]
    phys = physical_shape(shape, fmt)
    rule = FORMATS[fmt]
    out: dict[str, Any] = {
        "physical_shape": list(phys),
        "strides": list(contiguous_strides(phys)),   # over physical_shape, in scalar elements
        "vector": rule.vector,
        "padded_elements": math.prod(phys) - math.prod(shape),
    }
    out["bytes_check"] = math.prod(phys) * ITEMSIZE[t["dtype"]] == t["bytes"]
    return out


def _sha256_text(path: Path) -> str | None:
    """The recipe loader's digest of the text (read the loader's way); None when it cannot be read."""
    from trtflow.recipe.loader import read_recipe_text

    try:
        return hashlib.sha256(read_recipe_text(path).encode()).hexdigest()
    except TrtflowError:
        return None


def _normalized(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


def check_staleness(report: dict[str, Any], plan_dict: dict[str, Any] | None, *,
                    loaded: LoadedRecipe | None = None) -> dict[str, Any]:
    """Is the artifact still what a build of its recipe would produce here?

    ``stale`` is True when the model, the resolved plan, trtflow or the builder's library version differ
    (a build would not be a cache hit); an edit of the recipe that leaves the plan identical (comments,
    formatting, defaults spelled out) is reported but is not stale. ``loaded``: compare with this recipe
    (as the command line loaded it, overrides applied) instead of the one the report names; an artifact
    built from another recipe file is then stale too.
    """

    reasons: list[str] = []
    notes: list[str] = []
    built_from = str(report.get("recipe_path") or "")
    recipe_path = loaded.path if loaded is not None else Path(built_from)
    model_path = Path(str(report.get("model_path", "")))
    recipe_sha = model_sha = None
    if loaded is not None:
        recipe_sha = loaded.text_sha256
        if built_from != str(loaded.path):
            reasons.append(f"built from {built_from or 'an unknown recipe'}, not from {loaded.path}")
    elif built_from and recipe_path.is_file():
        recipe_sha = _sha256_text(recipe_path)
    if recipe_sha is None:
        notes.append(f"recipe not found at {recipe_path}: cannot compare it")
    if report.get("model_path") and model_path.is_file():
        model_sha = art.sha256_path(model_path)
    else:
        notes.append(f"model not found at {model_path}: cannot compare it")
    changed = art.staleness(report, recipe_sha256=recipe_sha, model_sha256=model_sha)
    reasons += [r for r in changed if "model" in r]
    if loaded is not None or any("recipe" in r for r in changed):
        why = _replan_difference(loaded or recipe_path, plan_dict)
        if why is None:
            if any("recipe" in r for r in changed):
                notes.append("the recipe text changed since the build, but it resolves to the same plan "
                             "(a build is a cache hit)")
        else:
            reasons.append(f"the recipe changed since the build: {why}")
    built_versions = report.get("versions") or {}
    if built_versions.get("trtflow") and built_versions["trtflow"] != __version__:
        reasons.append(f"built by trtflow {built_versions['trtflow']}, this is trtflow {__version__}")
    dist = BACKEND_DIST.get(str(report.get("backend")))
    if dist:
        built = built_versions.get(dist)
        try:
            here: str | None = metadata.version(dist)
        except metadata.PackageNotFoundError:
            here = None
        if here is None:
            notes.append(f"{dist} is not installed here: the engine cannot be rebuilt or opened on this machine")
        elif built and built != here:
            reasons.append(f"built with {dist} {built}, {here} is installed here"
                           + (": the engine plan will not load" if report.get("engine_file") else ""))
    checked = recipe_sha is not None and model_sha is not None
    return {"stale": bool(reasons) if (checked or reasons) else None, "reasons": reasons, "notes": notes}


def _replan_difference(recipe: Path | LoadedRecipe, plan_dict: dict[str, Any] | None) -> str | None:
    """None if the recipe resolves to the plan of the artifact, else what differs."""
    from trtflow.build import _plan_key_material
    from trtflow.plan import Plan, make_plan
    from trtflow.recipe import load_recipe

    if plan_dict is None:
        return "plan.json is unreadable, so the plans cannot be compared"
    try:
        new = make_plan(recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe), allow_outside=True)
    except TrtflowError as exc:
        return f"it no longer plans ({str(exc).splitlines()[0]})"
    try:
        old_key = _normalized(_plan_key_material(Plan.from_dict(plan_dict)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "plan.json is not a valid plan, so the plans cannot be compared"
    new_key = _normalized(_plan_key_material(new))
    old_key.pop("trtflow_version", None)
    new_key.pop("trtflow_version", None)
    if old_key == new_key:
        return None
    diff = _diff(old_key, new_key, "")
    return "the resolved plan differs in " + ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6
                                                                    else "")


def _diff(a: Any, b: Any, path: str) -> list[str]:
    """Dotted paths where two JSON values differ (list items of named tensors are labelled by name)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            label = x.get("name") if isinstance(x, dict) and x.get("name") == (y or {}).get("name") else i
            out += _diff(x, y, f"{path}[{label}]")
        return out if all(isinstance(x, (dict, list)) for x in a) else [path]
    return [] if a == b else [path or "(plan)"]


def _files(artifact: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(report.get("files", {})):
        p = artifact / name
        out.append({"name": name, "bytes": p.stat().st_size if p.is_file() else None})
    return out


def _report_summary(report: dict[str, Any]) -> dict[str, Any]:
    details = report.get("backend_details") or {}
    passes = [{k: p.get(k) for k in ("name", "seconds", "nodes_before", "nodes_after", "nodes_added",
                                     "nodes_removed", "notes") if k in p}
              for p in report.get("passes") or [] if isinstance(p, dict)]
    return {
        "backend": report.get("backend"),
        "engine_file": report.get("engine_file"),
        "target": report.get("target"),
        "precision": report.get("precision"),
        "tf32": report.get("tf32"),
        "built_at": report.get("built_at"),
        "cache_key": report.get("cache_key"),
        "versions": {k: v for k, v in (report.get("versions") or {}).items() if v},
        "platform": report.get("platform"),
        "timings_s": report.get("timings_s") or {},
        "passes": passes,
        "mixed_precision": report.get("mixed_precision"),
        "warnings": list(report.get("warnings") or []) + [f"{report.get('backend')}: {w}"
                                                           for w in details.get("warnings") or []],
    }


def _engine_from_report(report: dict[str, Any]) -> dict[str, Any] | None:
    details = report.get("backend_details")
    if not details:
        return None
    keep = {k: v for k, v in details.items() if k not in ("warnings",)}
    return {"source": "build report", **keep}


def _engine_from_backend(artifact: Path, report: dict[str, Any], plan: Any) -> tuple[dict[str, Any] | None, str]:
    """Open the engine with its own backend and ask it, where it can execute here."""
    from trtflow.backends.base import get_backend

    name = str(report.get("backend"))
    try:
        backend = get_backend(name)
    except (TrtflowError, ImportError) as exc:
        return None, f"backend {name!r} cannot be loaded here ({exc})"
    try:
        if not backend.available():
            return None, f"{name} is not installed here: showing what the build recorded"
        if not backend.can_execute_here():
            return None, f"{name} cannot execute on this machine: showing what the build recorded"
    except Exception as exc:  # noqa: BLE001 - a half-installed library: report it, never crash inspect
        return None, f"{name}: availability check failed ({type(exc).__name__}: {exc})"
    io_fn_result: Any = None
    layers: Any = None
    try:
        engine = backend().open(artifact, plan, device="cuda" if backend.builds_engine else "cpu")
    except Exception as exc:  # noqa: BLE001 - any backend failure is a note: the report is still shown
        return None, f"{name} could not open the engine here ({type(exc).__name__}: {exc})"
    try:
        io_fn = getattr(engine, "io", None)
        if callable(io_fn):
            io_fn_result = io_fn()
        inspect_fn = getattr(engine, "inspect", None)
        if callable(inspect_fn):
            raw = inspect_fn()
            try:
                layers = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
            except json.JSONDecodeError:
                layers = raw
    except Exception as exc:  # noqa: BLE001 - same: inspect reports, the backend's own errors vary
        return None, f"{name} opened the engine but could not describe it ({type(exc).__name__}: {exc})"
    finally:
        engine.close()
    if io_fn_result is None and layers is None:
        return None, f"{name} does not report engine I/O or layers"
    out: dict[str, Any] = {"source": f"{name} (opened here)"}
    if io_fn_result is not None:
        out["io"] = io_fn_result
    if layers is not None:
        out["layer_information"] = layers
        entries = layers.get("Layers") if isinstance(layers, dict) else None
        if isinstance(entries, list):
            out["layer_names"] = [e if isinstance(e, str) else str(e.get("Name", "?")) for e in entries]
    return out, f"asked {name} on this machine"


def resolve_artifact(target: Path, out_root: Path = art.DEFAULT_ROOT) -> Path:
    """An artifact folder as given, or OUT/<name>/ for a recipe file."""
    if target.is_file() and target.suffix in (".yaml", ".yml"):
        from trtflow.recipe import load_recipe

        return out_root / load_recipe(target).name
    return target


def inspect_artifact(artifact: Path, *, open_engine: bool = True) -> dict[str, Any]:
    """Describe ``artifact``. Corruption is reported under ``integrity`` (the CLI exits 6 on it)."""
    if not artifact.is_dir():
        raise ArtifactError(f"{artifact}: no such artifact folder", hint="run `trtflow build <recipe>` first")
    report = art.read_report(artifact)
    integrity: dict[str, Any] = {"ok": True, "error": None}
    try:
        art.verify(artifact, report)
    except ArtifactError as exc:
        integrity = {"ok": False, "error": exc.args[0], "hint": exc.hint}
    plan_dict: dict[str, Any] | None = None
    plan_obj: Any = None
    notes: list[str] = []
    try:
        from trtflow.plan import Plan

        plan_dict = json.loads((artifact / art.PLAN).read_text())
        plan_obj = Plan.from_dict(plan_dict)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        notes.append(f"{art.PLAN} is unreadable: {type(exc).__name__}: {exc}")
        if integrity["ok"]:
            integrity = {"ok": False, "error": f"{artifact / art.PLAN}: unreadable ({exc})",
                         "hint": "rebuild with `trtflow build --force`"}
    io = []
    for t in (plan_dict or {}).get("inputs", []) + (plan_dict or {}).get("outputs", []):
        row = {k: t.get(k) for k in ("name", "role", "dtype", "format", "memory", "shape", "min_shape",
                                     "max_shape", "bytes", "max_bytes", "layout", "source", "reduce")}
        try:
            row.update(tensor_layout(t))
        except (KeyError, ValueError, TypeError) as exc:
            row["layout_error"] = f"{type(exc).__name__}: {exc}"
        io.append(row)
    engine: dict[str, Any] | None = _engine_from_report(report)
    if open_engine and integrity["ok"] and plan_obj is not None:
        live, note = _engine_from_backend(artifact, report, plan_obj)
        notes.append(note)
        if live is not None:
            engine = {**(engine or {}), **live}
    elif open_engine and not integrity["ok"]:
        notes.append("the engine was not opened: the artifact failed its integrity check")
    return {
        "artifact": str(artifact),
        "name": report.get("name") or (plan_dict or {}).get("name"),
        "integrity": integrity,
        "files": _files(artifact, report),
        "io": io,
        "streams": (plan_dict or {}).get("streams"),
        "engine": engine,
        "report": _report_summary(report),
        "staleness": check_staleness(report, plan_dict),
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------ rendering
def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"  # pragma: no cover


def _dims(shape: Any) -> str:
    return "x".join(str(d) for d in shape) if shape is not None else "-"


def render(info: dict[str, Any], console: Any, *, all_layers: bool = False) -> None:
    """Print ``info`` (from :func:`inspect_artifact`) as rich tables (every name through terminal.markup)."""
    from rich.table import Table

    rep = info["report"]
    ok = info["integrity"]["ok"]
    console.print(f"[bold]{markup(str(info['name']))}[/]  {markup(info['artifact'])}  "
                  + markup(f"backend {rep['backend']}, precision {rep['precision']}"
                           + (" (TF32 on)" if rep.get("tf32") else "") + f", built {rep.get('built_at') or '?'}"))
    console.print("integrity: " + ("[green]every file matches its hash[/]" if ok
                                   else f"[red]CORRUPT[/] {markup(str(info['integrity']['error']))}"))
    st = info["staleness"]
    state = {True: "[red]stale[/]", False: "[green]fresh[/]", None: "[yellow]unknown[/]"}[st["stale"]]
    console.print(f"staleness: {state}" + "".join(f"\n  - {markup(r)}" for r in st["reasons"])
                  + "".join(f"\n  [dim]note: {markup(n)}[/]" for n in st["notes"]))

    tbl = Table(title="I/O (plan.json; strides in elements over the physical buffer shape)", title_justify="left")
    for col in ("tensor", "io", "dtype", "format", "shape", "physical", "strides", "bytes", "max bytes", "memory"):
        tbl.add_column(col, justify="right" if "bytes" in col else "left")
    for t in info["io"]:
        shape = _dims(t["shape"])
        if t.get("min_shape") != t.get("max_shape"):
            shape += f" [{_dims(t['min_shape'])}..{_dims(t['max_shape'])}]"
        extra = [x for x in (t.get("layout"), (t.get("reduce") or {}).get("op")) if x]
        cells = [("in" if t["role"] == "input" else "out") + (f" [{', '.join(map(str, extra))}]" if extra else ""),
                 t["dtype"], t["format"], shape, _dims(t.get("physical_shape")),
                 "(" + ", ".join(map(str, t.get("strides") or [])) + ")", _fmt_bytes(t["bytes"]),
                 _fmt_bytes(t["max_bytes"]), t["memory"]]
        tbl.add_row(markup(t["name"]), *(markup(c) for c in cells))  # plan.json is data: every cell escaped
    console.print(tbl)

    eng = info.get("engine")
    if eng:
        _render_engine(eng, console, all_layers=all_layers)
    else:
        console.print("engine: the backend recorded no engine details")

    ftbl = Table(title="files", title_justify="left")
    ftbl.add_column("file")
    ftbl.add_column("bytes", justify="right")
    for f in info["files"]:
        ftbl.add_row(markup(f["name"]), _fmt_bytes(f["bytes"]))
    console.print(ftbl)

    console.print(markup("versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items())))
    if rep["timings_s"]:
        console.print(markup("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in rep["timings_s"].items()
                                                     if isinstance(v, (int, float)))))
    if rep["passes"]:
        ptbl = Table(title="graph passes", title_justify="left")
        for col in ("pass", "nodes", "added", "removed", "s", "notes"):
            ptbl.add_column(col)
        for p in rep["passes"]:
            ptbl.add_row(markup(str(p.get("name"))), markup(f"{p.get('nodes_before')} -> {p.get('nodes_after')}"),
                         markup(_counts(p.get("nodes_added"))), markup(_counts(p.get("nodes_removed"))),
                         f"{p.get('seconds', 0):.3f}", markup("; ".join(p.get("notes") or [])) or "-")
        console.print(ptbl)
    _render_mixed_precision(rep.get("mixed_precision"), console, all_layers=all_layers)
    for w in rep["warnings"]:
        console.print(f"[yellow]warning:[/] {markup(str(w))}")
    for n in info["notes"]:
        console.print(f"[dim]note: {markup(n)}[/]")


def _render_mixed_precision(mp: Any, console: Any, *, all_layers: bool) -> None:
    """The nodes fp16/bf16 lowering kept in fp32 and why (report.json ``mixed_precision``)."""
    from rich.table import Table

    from trtflow.display import mixed_precision_line, mixed_precision_reason, printable

    if not isinstance(mp, dict) or not mp.get("kept"):
        return
    tbl = Table(title=f"kept in fp32 - {mixed_precision_line(mp)}", title_justify="left")
    for col in ("node", "op", "why"):
        tbl.add_column(col)
    rows = sorted(mp["kept"], key=lambda k: k.get("rule") == "op_type")  # the range rules' choices first
    for k in rows if all_layers else rows[:15]:
        tbl.add_row(printable(k.get("node")), printable(k.get("op")), mixed_precision_reason(k))
    console.print(tbl)
    if len(rows) > 15 and not all_layers:
        console.print(f"  ... {len(rows) - 15} more (--layers lists all)")
    cal = mp.get("calibration") or {}
    console.print("  calibration: " + (f"{cal.get('samples')} sample(s) of {cal.get('inputs')}, {cal.get('tensors')} "
                                       f"tensors measured in {cal.get('seconds')} s" if cal.get("ran")
                                       else f"not run ({printable(cal.get('why'), 200)})"))


def _counts(d: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in (d or {}).items()) or "-"


def _render_engine(eng: dict[str, Any], console: Any, *, all_layers: bool) -> None:
    from rich.table import Table

    head = [f"engine ({markup(str(eng.get('source')))})"]
    for key in ("library", "library_version", "plan_bytes", "device_memory_bytes", "compute_capabilities",
                "optimization_level", "profiling_verbosity", "io_source"):
        if eng.get(key) is not None:
            head.append(f"{key} {markup(str(eng[key]))}")
    console.print(", ".join(head))
    layers = eng.get("layers")
    if isinstance(layers, dict):
        console.print(markup("layers: " + ", ".join(f"{k} {v}" for k, v in layers.items() if v is not None)))
    elif layers is not None:
        console.print(markup(f"layers: {layers}"))
    if eng.get("io"):
        tbl = Table(title="engine I/O (as the engine reports it)", title_justify="left")
        for col in ("tensor", "mode", "dtype", "format", "shape", "profile / allowed"):
            tbl.add_column(col)
        for t in eng["io"]:
            prof = t.get("profile")
            extra = (f"{_dims(prof['min'])} / {_dims(prof['opt'])} / {_dims(prof['max'])}" if prof
                     else ", ".join(t.get("allowed_formats") or []) or "-")
            tbl.add_row(markup(str(t.get("name"))), markup(t.get("mode", "-")), markup(t.get("dtype", "-")),
                        markup(str(t.get("format_desc") or t.get("format") or "-")), markup(_dims(t.get("shape"))),
                        markup(extra))
        console.print(tbl)
    names = eng.get("layer_names") or eng.get("engine_layers_log") or []
    if names:
        shown = names if all_layers else names[:15]
        console.print(f"layer list ({len(names)}" + ("" if all_layers or len(names) <= 15 else
                                                     ", first 15; --layers for all") + "):")
        for n in shown:
            console.print(f"  {markup(str(n))}")


def require_fresh(artifact: Path, loaded: LoadedRecipe) -> None:
    """Raise ArtifactError (exit 6) unless ``artifact`` is what building ``loaded`` would produce here
    (``validate --no-build``: an artifact of another recipe, or from before an edit, is not validated)."""
    report = art.read_report(artifact)
    try:
        plan_dict = json.loads((artifact / art.PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{artifact / art.PLAN}: unreadable ({exc})", hint="rebuild with `trtflow build`") from None
    st = check_staleness(report, plan_dict, loaded=loaded)
    if st["stale"]:
        raise ArtifactError(f"{artifact} is stale for {loaded.path}:\n  - " + "\n  - ".join(st["reasons"]),
                            hint="build it first (drop --no-build), or pass --allow-stale to use it as it is")


__all__ = [
    "check_staleness",
    "contiguous_strides",
    "inspect_artifact",
    "render",
    "require_fresh",
    "resolve_artifact",
    "tensor_layout",
]
