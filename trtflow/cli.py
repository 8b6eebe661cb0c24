"""The ``trtflow`` command line. Heavy libraries are imported inside commands, never at module level."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from trtflow import __version__
from trtflow.errors import TrtflowError

app = typer.Typer(
    name="trtflow",
    help="Recipe -> TensorRT engine + generated runner. Measure first, then move fewer bytes, then hide the rest.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Tables stay readable in CI logs and pipes, where rich would otherwise assume 80 columns.
console = Console(width=None if Console().is_terminal else 160)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 160)


class _State:
    debug = False
    quiet = False


RecipeArg = Annotated[Path, typer.Argument(help="A recipe YAML file, or a folder of them.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder that holds one artifact folder per recipe.")]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", "-b", help="Override the recipe's backend: tensorrt, tensorrt_rtx, onnxruntime, torch.")]
AllowOutsideOpt = Annotated[bool, typer.Option(
    "--allow-outside", help="Allow model/data paths that resolve outside the project folder.")]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"trtflow {__version__}")
        raise typer.Exit()
    _State.debug, _State.quiet = debug, quiet


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def _shape(t: Any) -> str:
    if t.min_shape == t.max_shape:
        return "x".join(map(str, t.shape))
    dims = [str(o) if lo == hi else f"[{lo}..{hi}]" for lo, o, hi in zip(t.min_shape, t.shape, t.max_shape)]
    return "x".join(dims) + f" (opt {'x'.join(map(str, t.shape))})"


def _recipes(target: Path) -> list[Path]:
    from trtflow.recipe import discover_recipes

    return discover_recipes(target)


# --------------------------------------------------------------------------------------- plan
@app.command()
def plan(
    recipe: RecipeArg,
    json_out: JsonOpt = False,
    h2d_gbps: Annotated[Optional[float], typer.Option(help="Override the link's pinned H2D GB/s.")] = None,
    d2h_gbps: Annotated[Optional[float], typer.Option(help="Override the link's pinned D2H GB/s.")] = None,
    allow_outside: AllowOutsideOpt = False,
) -> None:
    """Resolve a recipe against its model and show every I/O tensor, its bytes and predicted transfer time.

    Builds nothing. Bytes include the padding of vectorized formats; "naive" is the fp32, linear,
    unreduced contract a hand-written deployment moves, predicted at pageable bandwidth.
    """
    from trtflow.plan import make_plan
    from trtflow.recipe import load_recipe

    plans = []
    for path in _recipes(recipe):
        loaded = load_recipe(path)
        if h2d_gbps or d2h_gbps:
            link = loaded.recipe.link.model_copy(update={k: v for k, v in
                                                          (("h2d_gbps", h2d_gbps), ("d2h_gbps", d2h_gbps)) if v})
            loaded = type(loaded)(loaded.recipe.model_copy(update={"link": link}), loaded.path,
                                  loaded.text_sha256, loaded.marks)
        plans.append(make_plan(loaded, allow_outside=allow_outside))
    if json_out:
        print(json.dumps([p.to_dict() | {"totals": _totals(p)} for p in plans] if len(plans) > 1
                         else plans[0].to_dict() | {"totals": _totals(plans[0])}, indent=2))
        return
    for p in plans:
        _print_plan(p)


def _totals(p: Any) -> dict[str, Any]:
    return {"bytes_in": p.bytes_in, "bytes_out": p.bytes_out, "bytes": p.bytes_in + p.bytes_out,
            "naive_bytes": p.naive_bytes, "ratio": (p.bytes_in + p.bytes_out) / p.naive_bytes if p.naive_bytes else 1.0,
            "predicted_ms": p.predicted_ms, "naive_predicted_ms": p.naive_predicted_ms}


def _print_plan(p: Any) -> None:
    tbl = Table(title=f"{p.name}: {Path(p.model_path).name}, precision {p.precision}"
                + (" (TF32 on)" if p.tf32 else ""), title_justify="left")
    for col in ("tensor", "io", "shape", "dtype", "format", "memory", "bytes", "naive bytes", "pred. ms", "naive ms"):
        tbl.add_column(col, justify="right" if col in ("bytes", "naive bytes", "pred. ms", "naive ms") else "left")
    for t in p.tensors:
        extra = []
        if t.layout:
            extra.append(t.layout)
        if t.preprocess:
            extra.append("norm")
        if t.reduce:
            extra.append(t.reduce["op"])
        tbl.add_row(t.name, ("in " if t.role == "input" else "out") + (f" [{', '.join(extra)}]" if extra else ""),
                    _shape(t), t.dtype, t.format, t.memory, _fmt_bytes(t.bytes), _fmt_bytes(t.naive_bytes),
                    f"{t.predicted_ms:.3f}", f"{t.naive_predicted_ms:.3f}")
    tot = _totals(p)
    tbl.add_section()
    tbl.add_row("total", "", "", "", "", "", _fmt_bytes(tot["bytes"]), _fmt_bytes(tot["naive_bytes"]),
                f"{tot['predicted_ms']:.3f}", f"{tot['naive_predicted_ms']:.3f}")
    console.print(tbl)
    link = p.link
    console.print(f"  moves {tot['ratio']:.1%} of the naive bytes; predicted at H2D {link['h2d_gbps']} GB/s, "
                  f"D2H {link['d2h_gbps']} GB/s pinned, {link['pageable_gbps']} GB/s pageable. "
                  f"Streams: {p.streams['topology']}"
                  + (f" depth {p.streams['depth']}" if p.streams["topology"] == "pipelined" else "")
                  + (", CUDA graph" if p.streams["cuda_graph"] else ""))
    for w in p.warnings:
        console.print(f"  [yellow]warning:[/] {w}")


# -------------------------------------------------------------------------------------- build
@app.command()
def build(
    recipe: RecipeArg,
    out: OutOpt = Path("build"),
    force: Annotated[bool, typer.Option("--force", "-f", help="Rebuild even when the cache is fresh.")] = False,
    backend: BackendOpt = None,
    json_out: JsonOpt = False,
    allow_outside: AllowOutsideOpt = False,
) -> None:
    """Build one recipe (or a folder of them) into OUT/<name>/: lowered ONNX, engine, plan.json, runner.py, report.

    A second build with nothing changed is a cache hit (keyed on model, recipe, builder version and
    target GPU); --force rebuilds. An interrupted build leaves the previous artifact intact.
    """
    results = [_build_one(path, out, force, backend, allow_outside, json_out) for path in _recipes(recipe)]
    if json_out:
        print(json.dumps([_result_json(r) for r in results], indent=2, default=str))


def _result_json(r: Any) -> dict[str, Any]:
    return {"name": r.name, "artifact": str(r.artifact), "backend": r.backend, "cache_hit": r.cache_hit,
            "seconds": round(r.seconds, 3), "engine_file": r.report.get("engine_file")}


def _build_one(path: Path, out: Path, force: bool, backend: Optional[str], allow_outside: bool, quiet: bool) -> Any:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from trtflow.build import build as do_build

    quiet = quiet or _State.quiet or not console.is_terminal
    if quiet:
        result = do_build(path, out_root=out, force=force, backend=backend, allow_outside=allow_outside)
    else:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task(f"building {path.name}", total=None)

            def progress(phase: str, step: int, total: int) -> None:
                bar.update(task, description=f"{path.name}: {phase}", completed=step, total=total or None)

            result = do_build(path, out_root=out, force=force, backend=backend, allow_outside=allow_outside,
                              progress=progress)
    state = "cache hit, nothing rebuilt" if result.cache_hit else f"built in {result.seconds:.1f} s"
    err_console.print(f"[green]{result.name}[/]: {state} with {result.backend} -> {result.artifact}/")
    for w in () if result.cache_hit else result.plan.warnings:
        err_console.print(f"  [yellow]warning:[/] {w}")
    return result


# ----------------------------------------------------------------------------------- validate
@app.command()
def validate(
    recipe: RecipeArg,
    out: OutOpt = Path("build"),
    backend: BackendOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda: where the runner executes.")] = "auto",
    samples: Annotated[Optional[int], typer.Option(help="Override the recipe's number of samples.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="JSON report path (default OUT/<name>/validation.json).")] = None,
    build_first: Annotated[bool, typer.Option("--build/--no-build", help="Build (or hit the cache) first.")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Run the artifact's generated runner and the fp32 onnxruntime reference; compare every output.

    Exits 4 when an output fails its tolerance or task metric. The table names the formula used.
    """
    from trtflow.validate.run import validate_artifact, write_report

    failed = []
    reports = []
    for path in _recipes(recipe):
        result = _build_one(path, out, False, None, False, json_out) if build_first else None
        artifact = result.artifact if result else out / _name_of(path)
        rep = validate_artifact(artifact, backend=backend or "auto", device=device, samples=samples)
        write_report(rep, report or artifact / "validation.json")
        reports.append(rep)
        if not json_out:
            _print_validation(rep)
        if not rep.passed:
            failed.append(rep.name)
    if json_out:
        print(json.dumps([r.to_dict() for r in reports] if len(reports) > 1 else reports[0].to_dict(), indent=2,
                         default=float))
    if failed:
        from trtflow.errors import AccuracyFailure

        raise AccuracyFailure(f"validation failed for {', '.join(failed)}",
                              hint="see the table above; loosen tolerances in the recipe only if the error is expected")


def _name_of(path: Path) -> str:
    from trtflow.recipe import load_recipe

    return load_recipe(path).name


def _print_validation(rep: Any) -> None:
    tbl = Table(title=f"{rep.name}: {rep.backend} on {rep.device} vs {rep.reference}, {rep.samples} sample(s)",
                title_justify="left")
    for col in ("output", "max abs", "mean abs", "p99 abs", "max rel", "p99 rel", "failing", "atol/rtol",
                "metrics", "result"):
        tbl.add_column(col)
    for o in rep.outputs:
        metrics = ", ".join(f"{m.kind} {m.value:.4f} (>= {m.min})" for m in o.metrics) or "-"
        gate = f"{o.atol:g}/{o.rtol:g}" if o.numeric_gate else "(metrics only)"
        tbl.add_row(o.name, f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.p99_abs:.3g}", f"{o.max_rel:.3g}",
                    f"{o.p99_rel:.3g}", f"{o.failing}/{o.total}", gate, metrics,
                    "[green]pass[/]" if o.passed else "[red]FAIL[/]")
    console.print(tbl)
    console.print(f"  formula: {rep.formula_text}; statistic: {rep.statistic}")


# ------------------------------------------------------------------------------------- schema
@app.command()
def schema(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the JSON Schema.")] = Path(
        "schemas/recipe.schema.json"),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the file on disk is stale (for CI).")] = False,
    print_: Annotated[bool, typer.Option("--print", help="Print the schema instead of writing it.")] = False,
) -> None:
    """Write the recipe JSON Schema (for editors: `# yaml-language-server: $schema=...`)."""
    from trtflow.recipe.jsonschema import recipe_json_schema

    text = recipe_json_schema()
    if print_:
        print(text, end="")
        return
    if check:
        current = out.read_text() if out.is_file() else ""
        if current != text:
            err_console.print(f"[red]{out} is stale[/]: run `trtflow schema` and commit the result")
            raise typer.Exit(1)
        err_console.print(f"{out} is up to date")
        return
    from trtflow.artifact import atomic_write

    atomic_write(out, text)
    err_console.print(f"wrote {out}")


# ------------------------------------------------------------------------------------- doctor
@app.command()
def doctor(json_out: JsonOpt = False) -> None:
    """Report the environment: Python, GPU, CUDA, and which backends import (and how to install the rest)."""
    from trtflow.doctor import collect

    info = collect()
    if json_out:
        print(json.dumps(info, indent=2, default=str))
        return
    console.print(f"trtflow {info['trtflow']} on Python {info['python']} ({info['platform']})")
    gpu = info["gpu"]
    console.print(f"GPU: {gpu.get('summary') or 'none'}" + (f"  ({gpu['why']})" if gpu.get("why") else ""))
    tbl = Table(title="backends", title_justify="left")
    for col in ("backend", "installed", "version", "builds", "executes here", "install"):
        tbl.add_column(col)
    for b in info["backends"]:
        tbl.add_row(b["name"], "yes" if b["installed"] else "no", b["version"] or "-",
                    "engine" if b["builds_engine"] else "runs ONNX", "yes" if b["executes_here"] else "no",
                    b["install"])
    console.print(tbl)
    for note in info["notes"]:
        console.print(f"  {note}")
    if info.get("bandwidth"):
        bw = info["bandwidth"]
        console.print("link: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw.items()))


def main() -> None:
    """Entry point: run the app, map trtflow errors to exit codes, traceback only with --debug."""
    try:
        app(standalone_mode=False)
    except TrtflowError as exc:
        if _State.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors and friends
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if _State.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", file=sys.stderr)
        sys.exit(70)


if __name__ == "__main__":
    main()
