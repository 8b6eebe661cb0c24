"""The ``trtflow`` command line. Heavy libraries are imported inside commands, never at module level."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from trtflow import __version__
from trtflow.artifact import DEFAULT_ROOT as DEFAULT_ARTIFACTS
from trtflow.errors import TrtflowError
from trtflow.terminal import markup, plain

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
    verbose = 0
    json_emitted = False  # the command printed its JSON document; an error after it adds no second one


RecipeArg = Annotated[Path, typer.Argument(help="A recipe YAML file, or a folder of them.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder that holds one artifact folder per recipe.")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", "-b", help="Override the recipe's backend: tensorrt, tensorrt_rtx, onnxruntime, torch.")]
AllowOutsideOpt = Annotated[bool, typer.Option(
    "--allow-outside", help="Allow model and validate.data paths that resolve outside the project folder "
    "(see docs/getting-started.md, 'The project root').")]
AllowStaleOpt = Annotated[bool, typer.Option(
    "--allow-stale", help="Use an artifact that no longer matches its recipe, model or libraries "
    "(otherwise stale is exit 6).")]
AllowHostCodeOpt = Annotated[bool, typer.Option(
    "--allow-host-code", help="Load plans that embed host code (TensorRT version-compatible plans). "
    "Only for plans you trust.")]


# --------------------------------------------------------------- options of every recipe command
_OVERRIDES = "Recipe overrides"
_SHAPE_HELP = ("(trtexec syntax name:1x3x640x800[,other:AxB]; the model's layout, like the recipe's shape:)")
_RECIPE_PARAMS: list[tuple[str, Any, Any]] = [
    ("allow_outside", AllowOutsideOpt, False),
    ("precision", Annotated[str | None, typer.Option(
        "--precision", help="Override the recipe's precision: fp32, tf32, fp16 or bf16.",
        rich_help_panel=_OVERRIDES, show_default=False)], None),
    ("fp16", Annotated[bool, typer.Option("--fp16", help="Same as --precision fp16 (trtexec's flag).",
                                          rich_help_panel=_OVERRIDES)], False),
    ("shapes", Annotated[list[str] | None, typer.Option(
        "--shapes", help="Shapes to run at " + _SHAPE_HELP + ": an input without a profile gets this fixed "
        "shape; with a profile it must lie inside it. Repeatable.", rich_help_panel=_OVERRIDES,
        show_default=False)], None),
    ("min_shapes", Annotated[list[str] | None, typer.Option(
        "--min-shapes", "--minShapes", help="Profile minimum " + _SHAPE_HELP + ".", rich_help_panel=_OVERRIDES,
        show_default=False)], None),
    ("opt_shapes", Annotated[list[str] | None, typer.Option(
        "--opt-shapes", "--optShapes", help="Profile optimum (the engine is tuned for it).",
        rich_help_panel=_OVERRIDES, show_default=False)], None),
    ("max_shapes", Annotated[list[str] | None, typer.Option(
        "--max-shapes", "--maxShapes", help="Profile maximum.", rich_help_panel=_OVERRIDES,
        show_default=False)], None),
    ("set_", Annotated[list[str] | None, typer.Option(
        "--set", help="Set any recipe field: key.path=value (value in YAML, e.g. streams.depth=3, "
        "inputs.image.memory=device). Repeatable; checked like the recipe file.", rich_help_panel=_OVERRIDES,
        show_default=False)], None),
]


@dataclass(frozen=True)
class RecipeOptions:
    """The options every command that reads a recipe takes (added by :func:`recipe_command`)."""

    allow_outside: bool = False
    overrides: Any = None          # trtflow.recipe.overrides.Overrides
    run_shapes: tuple[dict[str, tuple[int, ...]], ...] = ()   # each --shapes, parsed

    def load(self, path: Path) -> Any:
        """The recipe at ``path`` with the command line's overrides applied (a LoadedRecipe)."""
        from trtflow.recipe import load_recipe
        from trtflow.recipe.overrides import apply_overrides

        loaded = load_recipe(path)
        return apply_overrides(loaded, self.overrides) if self.overrides else loaded


def _recipe_options(allow_outside: bool = False, precision: str | None = None, fp16: bool = False,
                    shapes: list[str] | None = None, min_shapes: list[str] | None = None,
                    opt_shapes: list[str] | None = None, max_shapes: list[str] | None = None,
                    set_: list[str] | None = None, extra_sets: tuple[tuple[str, Any], ...] = ()) -> RecipeOptions:
    from trtflow.errors import UsageError
    from trtflow.recipe.overrides import Overrides, parse_set, parse_shapes

    if fp16 and precision not in (None, "fp16"):
        raise UsageError(f"--fp16 and --precision {precision} contradict each other")

    def merged(flag: str, texts: list[str] | None) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for text in texts or []:
            for name, dims in parse_shapes(text, flag=flag).items():
                if name in out:
                    raise UsageError(f"{flag}: input {name!r} is given twice")
                out[name] = dims
        return out

    runs = tuple(parse_shapes(t) for t in shapes or [])
    ov = Overrides(precision="fp16" if fp16 else precision, shapes=runs,
                   min_shapes=merged("--min-shapes", min_shapes), opt_shapes=merged("--opt-shapes", opt_shapes),
                   max_shapes=merged("--max-shapes", max_shapes),
                   sets=extra_sets + tuple(parse_set(t) for t in set_ or []))
    return RecipeOptions(allow_outside=allow_outside, overrides=ov, run_shapes=runs)


def recipe_command(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the recipe options (declared once, above) and hand them over as ``ropts``."""
    sig = inspect.signature(func, eval_str=True)
    names = [n for n, _, _ in _RECIPE_PARAMS]

    @functools.wraps(func)
    def command(**kw: Any) -> None:
        ropts = _recipe_options(**{n: kw.pop(n) for n in names})
        func(**kw, ropts=ropts)

    params = [p for p in sig.parameters.values() if p.name != "ropts"]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
               for n, a, d in _RECIPE_PARAMS]
    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return command


def _say(message: str) -> None:
    """A status line on stderr (built, wrote, next step); --quiet drops it. Message is Rich markup."""
    if not _State.quiet:
        err_console.print(message, highlight=False)


def _warn(message: str) -> None:
    _say(f"  [yellow]warning:[/] {markup(message)}")


def _version(value: bool) -> None:
    if value:
        print(f"trtflow {__version__}")
        raise typer.Exit()


class _LogFormatter(logging.Formatter):
    """Builder messages quote layer and tensor names from the model: control codes are shown, never sent."""

    def format(self, record: logging.LogRecord) -> str:
        return plain(super().format(record), newlines=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors: no progress, "
                                        "status lines, warnings or notes.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Stream the builder's log: -v info, "
                                         "-vv everything (TensorRT's VERBOSE).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    from trtflow.errors import UsageError

    if quiet and verbose:
        raise UsageError("--quiet and --verbose contradict each other")
    _State.debug, _State.quiet, _State.verbose = debug, quiet, verbose
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LogFormatter("[%(name)s] %(levelname)s %(message)s"))
        root = logging.getLogger("trtflow")
        root.addHandler(handler)
        root.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)


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


@dataclass
class _Outcome:
    """One recipe of a command: its result, or the error it failed with (folders of recipes only)."""

    path: Path
    result: Any = None
    error: TrtflowError | None = None
    summary: str = ""


def _each(target: Path, run: Callable[[Path], tuple[Any, str]]) -> list[_Outcome]:
    """Run ``run(path) -> (result, summary)`` on every recipe of ``target``.

    One recipe file: its error propagates as is. A folder: every recipe runs even when some fail; each
    error is printed as it happens, a summary table follows, and :func:`_batch_done` raises
    :class:`~trtflow.errors.BatchFailed` (exit code of the first failure) once the command has printed
    its output. An internal error in one recipe is reported as such (exit 70) and the rest still run.
    """
    from trtflow.errors import INTERNAL, from_os_error

    def outcome(p: Path) -> _Outcome:
        result, summary = run(p)
        return _Outcome(p, result, summary=summary)

    paths = _recipes(target)
    if not target.is_dir():
        return [outcome(p) for p in paths]
    outcomes = []
    for p in paths:
        try:
            outcomes.append(outcome(p))
        except Exception as exc:  # noqa: BLE001 - one recipe's failure must not stop the others
            err = from_os_error(exc) if isinstance(exc, OSError) and not isinstance(exc, TrtflowError) else exc
            if not isinstance(err, TrtflowError):
                err = TrtflowError(f"internal error: {type(exc).__name__}: {exc}",
                                   hint="this is a trtflow bug: run with --debug for the traceback and report it")
                err.exit_code = INTERNAL
                if _State.debug:
                    import traceback

                    traceback.print_exception(exc)
            print(plain(f"error: {p.name}: {err}", newlines=True), file=sys.stderr)
            outcomes.append(_Outcome(p, error=err, summary=f"error {err.exit_code}: {err.message.splitlines()[0]}"))
    tbl = Table(title=f"{len(outcomes)} recipe(s) in {markup(target)}", title_justify="left")
    for col in ("recipe", "result"):
        tbl.add_column(col)
    for o in outcomes:
        tbl.add_row(markup(o.path.name), ("[red]" if o.error else "[green]") + markup(o.summary) + "[/]")
    if not _State.quiet:
        err_console.print(tbl)
    return outcomes


def _batch_json(outcomes: list[_Outcome], ok: Callable[[Any], Any]) -> list[Any]:
    """The --json list of a folder: each recipe's document, or ``{"recipe": path, "error": {...}}``."""
    from trtflow.errors import error_object

    return [ok(o.result) if o.error is None else {"recipe": str(o.path), **error_object(o.error)} for o in outcomes]


def _batch_done(outcomes: list[_Outcome]) -> None:
    from trtflow.errors import BatchFailed

    failures = [(str(o.path), o.error) for o in outcomes if o.error is not None]
    if failures:
        raise BatchFailed(failures, len(outcomes))


# --------------------------------------------------------------------------------------- plan
@app.command()
@recipe_command
def plan(
    recipe: RecipeArg,
    json_out: JsonOpt = False,
    h2d_gbps: Annotated[float | None, typer.Option(help="Override the link's pinned H2D GB/s "
                                                         "(= --set link.h2d_gbps=N).")] = None,
    d2h_gbps: Annotated[float | None, typer.Option(help="Override the link's pinned D2H GB/s.")] = None,
    *, ropts: RecipeOptions,
) -> None:
    """Resolve a recipe against its model and show every I/O tensor, its bytes and predicted transfer time.

    Builds nothing. Bytes include the padding of vectorized formats; "naive" is the fp32, linear,
    unreduced contract a hand-written deployment moves, predicted at pageable bandwidth.
    """
    from dataclasses import replace

    from trtflow.plan import make_plan

    link = tuple((f"link.{k}", v) for k, v in (("h2d_gbps", h2d_gbps), ("d2h_gbps", d2h_gbps)) if v is not None)
    if link:
        ropts = replace(ropts, overrides=replace(ropts.overrides, sets=link + ropts.overrides.sets))
    def one(path: Path) -> tuple[Any, str]:
        p = make_plan(ropts.load(path), allow_outside=ropts.allow_outside)
        if not json_out:
            _print_plan(p)
        return p, f"{p.name}: planned, {_fmt_bytes(p.bytes_in + p.bytes_out)} per inference"

    outcomes = _each(recipe, one)
    if json_out:
        docs = _batch_json(outcomes, lambda p: p.to_dict() | {"totals": _totals(p)})
        _print_json(docs if len(docs) > 1 or recipe.is_dir() else docs[0])
    _batch_done(outcomes)


def _totals(p: Any) -> dict[str, Any]:
    return {"bytes_in": p.bytes_in, "bytes_out": p.bytes_out, "bytes": p.bytes_in + p.bytes_out,
            "naive_bytes": p.naive_bytes, "ratio": (p.bytes_in + p.bytes_out) / p.naive_bytes if p.naive_bytes else 1.0,
            "predicted_ms": p.predicted_ms, "naive_predicted_ms": p.naive_predicted_ms,
            "encoded": [{"name": t.name, "encoding": t.encoding, "encoded_bytes": t.encoded_bytes,
                         "decoded_bytes": t.decoded_bytes, "naive_bytes": t.naive_bytes, "bus_bytes": t.bytes,
                         "source": t.encoded_source} for t in p.inputs if t.encoding]}


def _encoded_note(t: Any) -> str:
    """One line per encoded input: file bytes next to the decoded uint8 and naive fp32 bytes."""
    enc, raw, naive = t.encoded_bytes or 0, t.decoded_bytes, t.naive_bytes
    where = ("decoded on the GPU (nvImageCodec): the files cross the bus" if t.bytes == enc else
             "PNG decodes on the host: the decoded uint8 pixels cross the bus")
    return (f"  {t.name}: {t.encoding} files {_fmt_bytes(enc)} per inference ({t.encoded_source}) vs "
            f"{_fmt_bytes(raw)} decoded uint8 ({raw / max(enc, 1):.1f}x) and {_fmt_bytes(naive)} naive fp32 "
            f"({naive / max(enc, 1):.1f}x); {where}")


def _fixed_note(f: Any) -> str:
    """One line per input the recipe fixed: what the engine holds and what that folds."""
    return (f"  {f.name}: fixed to {f.value!r} inside the engine (inputs.{f.name}.value; {f.why}); "
            "the runner does not take it")


def _print_plan(p: Any) -> None:
    tbl = Table(title=f"{markup(p.name)}: {markup(Path(p.model_path).name)}, precision {p.precision}"
                + (" (TF32 on)" if p.tf32 else ""), title_justify="left")
    for col in ("tensor", "io", "shape", "dtype", "format", "memory", "bytes", "naive bytes", "pred. ms", "naive ms"):
        tbl.add_column(col, justify="right" if col in ("bytes", "naive bytes", "pred. ms", "naive ms") else "left")
    for t in p.tensors:
        extra = []
        if t.layout:
            extra.append(t.layout)
        if t.preprocess:
            extra.append("norm")
        if t.encoding:
            extra.insert(0, t.encoding)
        if t.resize:
            extra.append(f"resize {t.resize['mode']} to {t.resize['to'][0]}x{t.resize['to'][1]}")
        if t.reduce:
            extra.append(t.reduce["op"] + (" packed bits" if t.packed_bits else ""))
        tbl.add_row(markup(t.name), markup(("in " if t.role == "input" else "out") + (f" [{', '.join(extra)}]" if extra else "")),
                    _shape(t), t.dtype, t.format, t.memory, _fmt_bytes(t.bytes), _fmt_bytes(t.naive_bytes),
                    f"{t.predicted_ms:.3f}", f"{t.naive_predicted_ms:.3f}")
    tot = _totals(p)
    tbl.add_section()
    tbl.add_row("total", "", "", "", "", "", _fmt_bytes(tot["bytes"]), _fmt_bytes(tot["naive_bytes"]),
                f"{tot['predicted_ms']:.3f}", f"{tot['naive_predicted_ms']:.3f}")
    console.print(tbl)
    link = p.link
    console.print(f"  moves {tot['ratio']:.1%} of the naive bytes; predicted at H2D {link.h2d_gbps} GB/s, "
                  f"D2H {link.d2h_gbps} GB/s pinned, {link.pageable_gbps} GB/s pageable. "
                  f"Streams: {p.streams.topology}"
                  + (f" depth {p.streams.depth}" if p.streams.topology == "pipelined" else "")
                  + (", CUDA graph" if p.streams.cuda_graph else ""))
    for t in p.inputs:
        if t.encoding:
            console.print(markup(_encoded_note(t)))
    for f in p.fixed_inputs:
        console.print(markup(_fixed_note(f)))
    if p.if_branches:
        console.print(f"  {len(p.if_branches)} If node(s) test input shapes and go one way at every shape of the "
                      "profile: the engine holds only the branch taken (plan.if_branches)")
    for w in p.warnings:
        console.print(f"  [yellow]warning:[/] {markup(w)}")


# -------------------------------------------------------------------------------------- build
@app.command()
@recipe_command
def build(
    recipe: RecipeArg,
    out: OutOpt = DEFAULT_ARTIFACTS,
    force: Annotated[bool, typer.Option("--force", "-f", help="Rebuild even when the cache is fresh.")] = False,
    backend: BackendOpt = None,
    json_out: JsonOpt = False,
    *, ropts: RecipeOptions,
) -> None:
    """Build one recipe (or a folder of them) into OUT/<name>/: lowered ONNX, engine, plan.json, runner.py, report.

    A second build with nothing changed is a cache hit (keyed on model, recipe, builder version and
    target GPU); --force rebuilds. An interrupted build leaves the previous artifact intact.
    """
    def one(path: Path) -> tuple[Any, str]:
        r = _build_one(ropts.load(path), out, ropts, force=force, backend=backend, json_out=json_out)
        return r, f"{r.name}: " + ("cache hit" if r.cache_hit else f"built in {r.seconds:.1f} s") + f" with {r.backend}"

    outcomes = _each(recipe, one)
    if json_out:
        _print_json(_batch_json(outcomes, _result_json))
    _batch_done(outcomes)


def _result_json(r: Any) -> dict[str, Any]:
    return {"name": r.name, "artifact": str(r.artifact), "backend": r.backend, "cache_hit": r.cache_hit,
            "seconds": round(r.seconds, 3), "engine_file": r.report.get("engine_file")}


def _show_progress(json_out: bool) -> bool:
    """Progress bars only for a person: a terminal, not --quiet, not --json, not streaming a log (-v)."""
    return err_console.is_terminal and not (json_out or _State.quiet or _State.verbose)


@contextlib.contextmanager
def _steps(label: str, json_out: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar for long loops (samples, benchmark configurations) on a terminal; None elsewhere.

    The bar starts at the first step, so a build before it (with its own bar) is not overlapped."""
    if not _show_progress(json_out):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True)
    task = bar.add_task(label, total=None)

    def step(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield step
    finally:
        bar.stop()


def _build_one(loaded: Any, out: Path, ropts: RecipeOptions, *, force: bool = False, backend: str | None = None,
               json_out: bool = False) -> Any:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from trtflow.build import build as do_build

    label = markup(loaded.path.name)
    if not _show_progress(json_out):
        result = do_build(loaded, out_root=out, force=force, backend=backend, allow_outside=ropts.allow_outside)
    else:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task(f"building {label}", total=None)

            def progress(phase: str, step: int, total: int) -> None:
                bar.update(task, description=f"{label}: {markup(phase)}", completed=step, total=total or None)

            result = do_build(loaded, out_root=out, force=force, backend=backend, allow_outside=ropts.allow_outside,
                              progress=progress)
    state = "cache hit, nothing rebuilt" if result.cache_hit else f"built in {result.seconds:.1f} s"
    _say(f"[green]{markup(result.name)}[/]: {state} with {result.backend} -> {markup(str(result.artifact))}/")
    if not result.cache_hit:
        for f in result.plan.fixed_inputs:
            _say(markup(_fixed_note(f)))
    for w in () if result.cache_hit else result.plan.warnings:
        _warn(w)
    if not result.cache_hit:
        _print_mixed_precision(result.report.get("mixed_precision"))
    return result


def _print_mixed_precision(mp: dict[str, Any] | None, limit: int = 8) -> None:
    """What fp16/bf16 lowering kept in fp32 and why (the nodes the range rules or the recipe chose)."""
    from trtflow.display import mixed_precision_line, mixed_precision_reason, printable

    if not mp or not mp.get("kept"):
        return
    _say(f"  [yellow]{mixed_precision_line(mp)}[/]")
    chosen = [k for k in mp["kept"] if k.get("rule") != "op_type"]
    for k in chosen[:limit]:
        _say(f"    {printable(k['node'])} ({printable(k['op'])}): {mixed_precision_reason(k)}")
    if len(chosen) > limit:
        _say(f"    ... and {len(chosen) - limit} more: report.json `mixed_precision`, `trtflow inspect`")
    ops = sorted({k["op"] for k in mp["kept"] if k.get("rule") == "op_type"})
    if ops:
        _say(f"    by op type: {printable(', '.join(ops), 200)}")
    cal = mp.get("calibration") or {}
    if not cal.get("ran") and mp.get("precision") == "fp16":
        _say(f"    activation ranges not measured: {printable(cal.get('why'), 200)}")


# ----------------------------------------------------------------------------------- validate
@app.command()
@recipe_command
def validate(
    recipe: RecipeArg,
    out: OutOpt = DEFAULT_ARTIFACTS,
    backend: BackendOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda: where the runner executes.")] = "auto",
    samples: Annotated[int | None, typer.Option(min=1, help="Override the recipe's number of samples.")] = None,
    report: Annotated[Path | None, typer.Option(help="JSON report path (default OUT/<name>/validation.json).")] = None,
    build_first: Annotated[bool, typer.Option("--build/--no-build", help="Build (or hit the cache) first.")] = True,
    json_out: JsonOpt = False,
    allow_host_code: AllowHostCodeOpt = False,
    allow_stale: AllowStaleOpt = False,
    *, ropts: RecipeOptions,
) -> None:
    """Run the artifact's generated runner and the fp32 onnxruntime reference; compare every output.

    Exits 4 when an output fails its tolerance or task metric. The table names the formula used. With
    --no-build the artifact must be what building the recipe would produce (else exit 6, stale), unless
    --allow-stale. A folder of recipes validates each one, then exits non-zero if any failed.
    Dynamic profiles are validated at opt, min, max and a mixed non-square shape unless the recipe's
    validate.shapes or --shapes (one shape set per --shapes, repeatable) say otherwise; the table says what
    decides each output.
    """
    from trtflow import extras
    from trtflow.inspect import require_fresh
    from trtflow.plan import make_plan
    from trtflow.validate.run import validate_artifact, write_report

    extras.require({"onnxruntime": "validate's fp32 reference"})
    extras.require_device(device)

    def one(path: Path) -> tuple[Any, str]:
        loaded = ropts.load(path)
        if build_first:
            artifact = _build_one(loaded, out, ropts, json_out=json_out).artifact
        else:  # planning checks the recipe's paths (model, validate.data) under the project policy
            artifact = out / make_plan(loaded, allow_outside=ropts.allow_outside).name
            if not allow_stale:
                require_fresh(artifact, loaded)
        dest = report or artifact / "validation.json"
        _check_writable(dest)  # before the run: a result computed and then lost helps nobody
        with _steps(f"validating {markup(path.name)}", json_out) as step:
            rep = validate_artifact(artifact, backend=backend or "auto", device=device, samples=samples,
                                    allow_host_code=allow_host_code, progress=step,
                                    shapes=list(ropts.run_shapes) or None)
        if not json_out:
            _print_validation(rep)
        write_report(rep, dest)
        return rep, f"{rep.name}: " + ("pass" if rep.passed else "FAIL") + f" ({rep.backend} on {rep.device})"

    outcomes = _each(recipe, one)
    failed = [o.result.name for o in outcomes if o.error is None and not o.result.passed]
    from trtflow.errors import AccuracyFailure

    error = AccuracyFailure(f"validation failed for {', '.join(failed)}",
                            hint="see the table above; loosen tolerances in the recipe only if the error is "
                            "expected") if failed else None
    if json_out:
        docs = _batch_json(outcomes, lambda r: r.to_dict())
        _print_json(docs if len(docs) > 1 or recipe.is_dir() else docs[0], error=error)
    if any(o.error for o in outcomes):
        for o in outcomes:  # an accuracy failure in a folder counts as that recipe's failure (code 4)
            if o.error is None and not o.result.passed:
                o.error = AccuracyFailure(f"validation failed for {o.result.name}")
        _batch_done(outcomes)
    if error:
        raise error


def _check_writable(path: Path) -> None:
    """Refuse early when ``path`` (a report to write later) cannot be written: OutputError, exit 10."""
    import os

    from trtflow.errors import OutputError

    folder = path.parent if path.parent != Path("") else Path(".")
    if path.is_dir():
        raise OutputError(f"{path} is a folder; the report is a file", hint="pass --report FILE", file=path)
    if not folder.is_dir() or not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"cannot write the report {path}: its folder is missing or read-only",
                          hint="pass --report with a writable path", file=path)


def _print_validation(rep: Any) -> None:
    from trtflow.display import mixed_precision_line, printable

    several = len(rep.cases) > 1
    title = (f"{markup(rep.name)}: {markup(rep.candidate or f'{rep.backend} on {rep.device}')} vs {rep.reference}, "
             f"{rep.samples} sample(s)" + (f" at each of {len(rep.cases)} shape sets" if several else ""))
    if rep.engine_file and not rep.engine_validated:
        title = f"[yellow]{title}[/]"
    tbl = Table(title=title, title_justify="left")
    cols = ["output"] + (["shapes"] if several else []) + ["dtype", "decided by", "max abs", "mean abs",
                                                           "p99 abs", "max rel", "p99 rel", "failing", "result"]
    for col in cols:
        tbl.add_column(col)
    by_metric = False
    for o in rep.outputs:
        by_metric |= not o.numeric_gate
        failing = f"{o.failing}/{o.total}" + ("" if o.numeric_gate else " differ")
        bad = [m for m in o.metrics if not m.passed]
        if o.passed:
            result = "[green]pass[/]" if o.numeric_gate else "[green]pass[/] by " + ", ".join(m.label for m in o.metrics)
        else:
            result = "[red]FAIL[/]" + (": " + ", ".join(f"{m.label} {m.value:.4f} < {m.min}" for m in bad) if bad else "")
        tbl.add_row(printable(o.name), *([printable(o.case)] if several else []), o.dtype, markup(o.decided_by),
                    f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.p99_abs:.3g}", f"{o.max_rel:.3g}",
                    f"{o.p99_rel:.3g}", failing, result)
    console.print(tbl)
    for d in getattr(rep, "decoders", []):
        ok = "[green]pass[/]" if d["passed"] else "[red]FAIL[/]"
        console.print(f"  decoded input {markup(d['input'])} vs the host decoder (libjpeg-turbo/libpng): max "
                      f"|diff| {d['max_abs']} (<= {d['max_abs_allowed']}), {d['fraction_differing']:.3%} of values "
                      f"differ (<= {d['fraction_allowed']:.0%}): {ok}; outputs are compared on the decoded pixels")
    own = sorted({(o.name, o.statistic) for o in rep.outputs if o.statistic != rep.statistic})
    console.print(f"  formula: {rep.formula_text}; statistic: {rep.statistic}"
                  + "".join(f"; {s} for {printable(n)} (a probability: its decision is gated)" for n, s in own))
    if by_metric:
        console.print("  integer outputs (class ids, masks, top-k indices) are decided by their task metric; their "
                      "abs/rel columns are shown, not gated")
    mp = rep.mixed_precision
    if mp and mp.get("kept"):
        console.print(f"  {mixed_precision_line(mp)} (`trtflow inspect` lists them)")


# -------------------------------------------------------------------------------------- bench
@app.command()
@recipe_command
def bench(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML file.", show_default=False)],
    out: OutOpt = DEFAULT_ARTIFACTS,
    backend: BackendOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    sweep: Annotated[str | None, typer.Option(
        help="memory (strategies x topologies, with the hand-written baseline), batch, precision (fp32 vs fp16), "
             "encoding (JPEG bytes -> mask: host vs GPU decode, configurations a-h), "
             "instances (1, 2, 4 engine instances under load) or devices (1..N GPUs, links measured).",
        show_default=False)] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up requests per configuration.")] = 10,
    iterations: Annotated[int, typer.Option(min=1, help="Timed requests per configuration (at least).")] = 100,
    duration: Annotated[float | None, typer.Option(min=0.001, help="Seconds per configuration (at least).")] = None,
    json_out: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG: stage bars per config + a pipelined timeline.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Fail (exit 9) when a recipe budget is not met.")] = False,
    write_best: Annotated[Path | None, typer.Option(help="Write the recipe with the best config of a sweep.")] = None,
    link: Annotated[bool, typer.Option("--link/--no-link", help="Measure pinned/pageable bandwidth in the same run.")] = True,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Load mode: C concurrent asyncio clients against a RunnerPool (the recipe's serving section); "
             "with --sweep instances/devices: clients (per GPU) of each row.")] = None,
    *, ropts: RecipeOptions,
) -> None:
    """Measure the generated runner: CUDA-event stage times, wall clock, host overhead, p50/p90/p99, throughput.

    Each result is printed against its physical floor (bytes / measured pinned bandwidth; 1/max(stage)
    for pipelined throughput). --sweep compares configurations side by side in one run, with ratios to
    the hand-written baseline (pageable numpy, synchronous copies, a sync per call).
    """
    from trtflow import extras
    from trtflow.bench import SWEEPS
    from trtflow.bench.report import run_bench
    from trtflow.errors import UsageError

    if sweep is not None and sweep not in SWEEPS:  # before the build, not after it
        raise UsageError(f"--sweep {sweep!r} is not a sweep", hint="--sweep " + " | ".join(SWEEPS))
    given = {"--duration": duration is not None, "--plot": plot is not None, "--check": check,
             "--write-best": write_best is not None, "--concurrency": concurrency is not None,
             "--device": device != "auto"}
    refused = ([f for f, on in given.items() if on] if sweep == "encoding" else
               ["--concurrency"] if sweep in ("memory", "batch", "precision") and concurrency is not None else [])
    if refused:  # an option the run would ignore is refused, not dropped
        raise UsageError(f"--sweep {sweep} does not take {', '.join(refused)}",
                         hint="--concurrency is load mode, alone or with --sweep instances/devices; --sweep encoding "
                         "takes --iterations, --warmup and --no-link (see `trtflow bench --help`)")
    extras.require({**({"matplotlib": "--plot"} if plot else {}),
                    **(extras.for_precision("fp16") if sweep == "precision" else {})})
    if sweep == "encoding":
        _bench_encoding(ropts.load(recipe), out, ropts, backend=backend or "auto", warmup=warmup,
                        iterations=iterations, link=link, json_out=json_out)
        return
    with _steps(f"benchmarking {markup(recipe.name)}", json_out) as step:
        rep = run_bench(ropts.load(recipe), out=out, backend=backend or "auto", device=device, sweep=sweep,
                        warmup=warmup, iterations=iterations, duration_s=duration, measure_link_=link,
                        write_best_to=write_best, allow_outside=ropts.allow_outside,
                        build_progress=lambda loaded: _build_one(loaded, out, ropts, json_out=json_out),
                        concurrency=concurrency, progress=step)
    if plot:
        from trtflow.bench.plot import plot_report

        plot_report(rep, plot)
        _say(f"wrote {markup(str(plot))}")
    from trtflow.errors import BudgetExceeded

    error = BudgetExceeded("performance budget not met:\n  " + "\n  ".join(rep.budget_failures),
                           hint="see the table; budgets live in the recipe's `budgets:` section") if (
        check and rep.budget_failures) else None
    if json_out:
        _print_json(rep.to_dict(), error=error)
    else:
        _print_bench(rep)
    if error:
        raise error


def _bench_encoding(loaded: Any, out: Path, ropts: Any, *, backend: str, warmup: int, iterations: int, link: bool,
                    json_out: bool) -> None:
    """--sweep encoding (trtflow.bench.encoding): JPEG bytes -> mask, configurations (a)-(h) side by side."""
    from trtflow.bench.encoding import render, sweep_encoding
    from trtflow.bench.report import _card
    from trtflow.errors import BackendMissing

    card, gpu = _card()
    if not gpu:
        raise BackendMissing("--sweep encoding compares GPU decoding with host decoding: it needs a CUDA GPU",
                             hint="run it on the GPU machine; on the CPU, `trtflow validate` runs the encoded path")
    measured: dict[str, float] = {}
    if link:
        from trtflow.bench.link import measure_link

        measured = measure_link(seconds=1.0)
    rep = sweep_encoding(loaded, build=lambda v: _build_one(v, out, ropts, json_out=json_out), backend=backend,
                         warmup=warmup, iterations=iterations, link=measured, card=card,
                         variants_dir=out / ".variants")
    if json_out:
        _print_json(rep.to_dict())
    else:
        console.print(markup(render(rep.to_dict())))


def _ms(st: Any, attr: str = "mean") -> str:
    return "-" if st is None else f"{getattr(st, attr):.3f}"


def _print_bench(rep: Any) -> None:
    if rep.load:
        _print_load(rep)
        return
    link = rep.link
    title = f"{markup(rep.name)} on {rep.card}" + (
        f"  (link: pinned H2D {link['pinned_h2d']:.1f} / D2H {link['pinned_d2h']:.1f} GB/s, pageable H2D "
        f"{link['pageable_h2d']:.1f} / D2H {link['pageable_d2h']:.1f} GB/s)" if link else "")
    if rep.measured:
        title += f"\n{'' if rep.gpu else '[yellow]'}measured: {markup(rep.measured)}{'' if rep.gpu else '[/]'}"
    tbl = Table(title=title, title_justify="left")
    # On the CPU there are no copies and no CUDA events: only the host-timed columns mean something.
    cols = (("config", "batch", "H2D ms", "compute ms", "D2H ms", "stage sum", "wall p50", "wall p99", "host ms",
             "samples/s", "xfer floor ms", "pipe floor/s", "io ms", "vs baseline") if rep.gpu else
            ("config", "batch", "run ms", "wall p50", "wall p99", "samples/s", "vs baseline"))
    for col in cols:
        tbl.add_column(col, justify="left" if col == "config" else "right")
    for r in rep.results:
        ratio = r.ratios.get("wall_speedup")
        label = r.label + (" *" if r.label == rep.best else "") + (" [graph]" if r.cuda_graph and rep.gpu else "")
        vs = "-" if ratio is None else f"{ratio:.2f}x"
        if not rep.gpu:
            tbl.add_row(label, str(r.batch), _ms(r.compute), _ms(r.wall, "p50"), _ms(r.wall, "p99"),
                        f"{r.samples_per_s:.1f}", vs)
            continue
        tbl.add_row(label, str(r.batch), _ms(r.h2d), _ms(r.compute), _ms(r.d2h), f"{r.stage_sum_ms:.3f}",
                    _ms(r.wall, "p50"), _ms(r.wall, "p99"), _ms(r.host, "p50"), f"{r.samples_per_s:.1f}",
                    "-" if r.transfer_floor_ms is None else f"{r.transfer_floor_ms:.3f}",
                    "-" if r.pipeline_floor_per_s is None else f"{r.pipeline_floor_per_s * r.batch:.1f}",
                    "-" if r.io_ms is None else f"{r.io_ms:.3f}", vs)
    console.print(tbl)
    if rep.gpu:
        console.print("  * best by samples/s. stage times: CUDA events; wall: as the caller sees it; host: until "
                      "submit returns; floors: bytes / measured pinned bandwidth and 1/max(stage).")
    else:
        console.print("  * best by samples/s. On the CPU: run = the engine call (host timer), wall = as the caller "
                      "sees it; nothing crosses a PCIe link, so transfer columns, floors and GPU advice are left out. "
                      "Run on a GPU host for the numbers that matter for deployment.")
    for r in rep.results:
        for d in r.diagnostics:
            console.print(f"  [yellow]{markup(r.label)}:[/] {markup(d)}")
        if r.graph_status and r.cuda_graph and rep.gpu:
            console.print(f"  {markup(r.label)}: CUDA graph: {markup(r.graph_status)}")
    if rep.start:
        st = rep.start
        console.print(f"  start (open + first inference): cold {st['cold_ms']:.1f} ms, warm {st['warm_ms']:.1f} ms "
                      f"(runtime cache: {markup(str(st['runtime_cache']))})")
    for f in rep.budget_failures:
        console.print(f"  [red]budget:[/] {markup(f)}")


def _print_load(rep: Any) -> None:
    tbl = Table(title=markup(f"{rep.name} on {rep.card}: closed-loop load (asyncio clients against a RunnerPool)"),
                title_justify="left")
    for col in ("config", "clients", "requests", "req/s", "samples/s", "p50 ms", "p99 ms", "vs single",
                "vs N x single", "floor/s", "vs floor", "per instance"):
        tbl.add_column(col, justify="left" if col == "config" else "right")

    def ratio(r: Any, key: str) -> str:
        return f"{r.ratios[key]:.2f}x" if key in r.ratios else "-"

    for r in rep.load:
        tbl.add_row(markup(r.label), str(r.concurrency), str(r.requests), f"{r.requests_per_s:.1f}", f"{r.samples_per_s:.1f}",
                    _ms(r.latency, "p50"), _ms(r.latency, "p99"), ratio(r, "vs_single"), ratio(r, "vs_linear"),
                    "-" if r.floor_per_s is None else f"{r.floor_per_s:.1f}", ratio(r, "vs_floor"),
                    "/".join(str(n) for n in r.per_instance))
    console.print(tbl)
    console.print("  latency: call to outputs on the host, queueing included; floor: 1/max(stage) of one instance "
                  "(CUDA events) x GPUs.")
    for gpu, lk in rep.links.items():
        console.print(f"  GPU {gpu} link: pinned H2D {lk['pinned_h2d']:.1f} / D2H {lk['pinned_d2h']:.1f} GB/s")
    if rep.limit:
        console.print(markup(f"  limit: {rep.limit}"))
    for r in rep.load:
        for d in r.diagnostics:
            console.print(f"  [yellow]{markup(r.label)}:[/] {markup(d)}")


# ------------------------------------------------------------------------------- schema, docs
def _generated(text: str, out: Path | None, check: bool, default: Path, command: str) -> None:
    """Maintainer commands: print ``text``; ``--out`` writes it; ``--check`` compares it with the file."""
    if check:
        path = out or default
        if (path.read_text(encoding="utf-8") if path.is_file() else "") != text:
            from trtflow.errors import CheckFailed

            raise CheckFailed(f"{path} is stale", hint=f"run `trtflow {command} --out {path}` and commit the result",
                              file=path)
        _say(f"{markup(str(path))} is up to date")
        return
    if out is None:
        print(text, end="")
        return
    from trtflow.artifact import atomic_write

    atomic_write(out, text)
    _say(f"wrote {markup(str(out))}")


GenOutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file (default: print to stdout).",
                                                show_default=False)]
CheckOpt = Annotated[bool, typer.Option("--check", help="Exit 1 if the file (--out, default: the repository's) "
                                                        "differs from what would be written (for CI).")]


@app.command()
def schema(out: GenOutOpt = None, check: CheckOpt = False) -> None:
    """Print the recipe JSON Schema (for editors: `# yaml-language-server: $schema=...`). Maintainers: --out.

    The repository keeps it at schemas/recipe.schema.json (`make schema` checks it is fresh).
    """
    from trtflow.recipe.jsonschema import recipe_json_schema

    _generated(recipe_json_schema(), out, check, Path("schemas/recipe.schema.json"), "schema")


@app.command("docs")
def docs(out: GenOutOpt = None, check: CheckOpt = False) -> None:
    """Print the recipe reference (every field, type, default, allowed values) as Markdown. Maintainers: --out.

    The repository keeps it at docs/recipe-reference.md (a test checks it is fresh).
    """
    from trtflow.docs_gen import recipe_reference

    _generated(recipe_reference(), out, check, Path("docs/recipe-reference.md"), "docs")


# ------------------------------------------------------------------------------------- doctor
@app.command()
def doctor(json_out: JsonOpt = False) -> None:
    """Report the environment: Python, GPU, CUDA, and which backends import (and how to install the rest)."""
    from trtflow.doctor import collect

    info = collect()
    if json_out:
        _print_json(info)
        return
    console.print(markup(f"trtflow {info['trtflow']} on Python {info['python']} ({info['platform']})"))
    gpu = info["gpu"]
    console.print(markup(f"GPU: {gpu.get('summary') or 'none'}" + (f"  ({gpu['why']})" if gpu.get("why") else "")))
    tbl = Table(title="backends", title_justify="left")
    for col in ("backend", "installed", "version", "builds", "executes here", "install"):
        tbl.add_column(col)
    for b in info["backends"]:
        tbl.add_row(b["name"], "yes" if b["installed"] else "no", markup(b["version"] or "-"),
                    "engine" if b["builds_engine"] else "runs ONNX", "yes" if b["executes_here"] else "no",
                    markup(b["install"]))
    console.print(tbl)
    for note in info["notes"]:
        console.print(f"  {markup(note)}")
    if info.get("bandwidth"):
        bw = info["bandwidth"]
        console.print("link: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw.items()))


# --- ecosystem commands (init, inspect, export, docs) ---
@app.command("init")
def init_(
    model: Annotated[Path, typer.Argument(help="The ONNX model to write a recipe for.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Recipe file to write (default recipes/<model stem>.yaml).")] = None,
    name: Annotated[str | None, typer.Option(help="Recipe name (default: the recipe file's stem).")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing recipe file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a starter recipe from the model's inputs and outputs, with a comment on every choice.

    Dynamic dims become a profile (batch 1/4/16; other dims get a guess marked CHECK). The recipe plans
    as written; edit it, then `trtflow plan` shows what each choice costs.
    """
    from trtflow.init import init_recipe

    res = init_recipe(model, out, force=force, name=name)
    if json_out:
        _print_json({"recipe": str(res.path), "schema_written": res.schema_written and str(res.schema_written),
                     "notes": list(res.notes), "plan_error": res.plan_error})
        return
    _say(f"wrote {markup(str(res.path))}")
    if res.schema_written:
        _say(f"wrote {markup(str(res.schema_written))} (for the editor's `yaml-language-server` line)")
    for note in res.notes:
        _say(f"  [yellow]check:[/] {markup(note)}")
    if res.plan_error:  # not an error of init's: the recipe was written; say why it does not plan yet
        err_console.print(f"  [yellow]`trtflow plan {markup(str(res.path))}` fails as written:[/]", highlight=False)
        print(res.plan_error, file=sys.stderr)
    else:
        _say(f"next: trtflow plan {markup(str(res.path))}")


@app.command("inspect")
def inspect_(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder (artifacts/<name>/), or a recipe.",
                                             show_default=False)],
    out: OutOpt = DEFAULT_ARTIFACTS,
    json_out: JsonOpt = False,
    open_engine: Annotated[bool, typer.Option(
        "--open/--no-open", help="Ask the engine's backend for its I/O and layers where it can run here.")] = True,
    layers: Annotated[bool, typer.Option("--layers", help="List every layer, not the first 15.")] = False,
    allow_stale: AllowStaleOpt = False,
) -> None:
    """Show an artifact's I/O (shapes, formats, strides, bytes), its engine, build report and staleness.

    Exits 6 when a file of the artifact is missing or does not match its hash in report.json, or when the
    artifact is stale (its recipe, model or builder changed), unless --allow-stale.
    """
    from trtflow.errors import ArtifactError
    from trtflow.inspect import inspect_artifact, render, resolve_artifact

    info = inspect_artifact(resolve_artifact(artifact, out), open_engine=open_engine)
    st = info["staleness"]
    error = ArtifactError(
        str(info["integrity"]["error"]), hint=info["integrity"].get("hint") or "rebuild with `trtflow build --force`"
    ) if not info["integrity"]["ok"] else ArtifactError(
        f"{info['artifact']} is stale: " + "; ".join(st["reasons"]),
        hint="rebuild it (trtflow build), or pass --allow-stale") if st["stale"] and not allow_stale else None
    if json_out:
        _print_json(info, error=error)
    else:
        render(info, console, all_layers=layers)
    if error:
        raise error


export_app = typer.Typer(name="export", help="Export a built artifact to a serving system.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("triton")
@recipe_command
def export_triton(
    target: Annotated[Path, typer.Argument(
        help="A recipe (built first; a cache hit when nothing changed), a folder of recipes, or an artifact folder.",
        show_default=False)],
    repo: Annotated[Path, typer.Option("--out", "-o", help="The Triton model repository to write into.")] = Path(
        "model_repository"),
    name: Annotated[str | None, typer.Option(help="Triton model name (default: the recipe's name).")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing model folder.")] = False,
    onnx: Annotated[bool, typer.Option("--onnx", help="Export the lowered ONNX (onnxruntime backend) even "
                                                      "when a TensorRT plan exists.")] = False,
    kind: Annotated[str, typer.Option(help="Instance kind: gpu or cpu (cpu needs the ONNX export).")] = "gpu",
    build_out: Annotated[Path, typer.Option("--build-out", help="Where recipes are built.")] = DEFAULT_ARTIFACTS,
    backend: BackendOpt = None,
    json_out: JsonOpt = False,
    *, ropts: RecipeOptions,
) -> None:
    """Write REPO/<name>/config.pbtxt and REPO/<name>/1/model.plan (or model.onnx) for Triton Inference Server.

    max_batch_size comes from the profile's batch range, instance_group from the pipelining depth, CUDA
    graphs from the recipe; tensors with non-linear formats are flagged is_non_linear_format_io.
    """
    from trtflow import extras
    from trtflow.errors import UsageError
    from trtflow.export.triton import export_artifact, export_recipe, is_artifact

    extras.require({"tritonclient": "writing Triton's config.pbtxt"})  # before building anything

    if kind not in ("gpu", "cpu"):
        raise UsageError(f"--kind must be gpu or cpu, not {kind!r}")
    opts: dict[str, Any] = {"name": name, "force": force, "prefer_onnx": onnx, "kind": kind}
    if is_artifact(target):
        results = [export_artifact(target, repo, **opts)]
    else:
        paths = _recipes(target)
        if name and len(paths) > 1:
            raise UsageError("--name applies to one recipe, not a folder of them")
        results = []
        for path in paths:
            exp, built = export_recipe(ropts.load(path), repo, out_root=build_out, backend=backend,
                                       allow_outside=ropts.allow_outside, **opts)
            _say(f"{markup(built.name)}: " + ("cache hit" if built.cache_hit else f"built in {built.seconds:.1f} s")
                 + f" with {built.backend}")
            results.append(exp)
    if json_out:
        _print_json([{"model_dir": str(e.model_dir), "config": str(e.config_path), "model_file": str(e.model_file),
                      "platform": e.platform, "notes": list(e.notes)} for e in results])
        return
    for exp in results:
        _say(f"[green]{markup(exp.model_dir.name)}[/]: wrote {markup(str(exp.config_path))} and "
             f"{markup(str(exp.model_file))} ({exp.platform})")
        for note in exp.notes:
            _say(f"  note: {markup(note)}")


def _print_json(obj: Any, *, error: TrtflowError | None = None) -> None:
    """Print the command's one JSON document; a failed check (``error``) carries the error object in it."""
    from trtflow.errors import error_object

    if error is not None and isinstance(obj, dict):
        obj = obj | error_object(error)
    print(json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False))
    _State.json_emitted = True


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy scalars
        return _finite(v.item())
    return str(v)


def _finite(v: Any) -> Any:
    """JSON has no NaN/Infinity: they become null, so every document parses with any JSON reader."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _usage_error(exc: BaseException) -> bool:
    """typer's click usage errors (bad option, missing argument), duck-typed: typer may vendor click."""
    return callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)


def _fail(exc: BaseException, *, want_json: bool) -> int:
    """The one error handler: message + hint (+ traceback with --debug) on stderr, JSON on stdout; the code."""
    import traceback

    from trtflow.errors import INTERNAL, INTERRUPTED, USAGE, error_object, from_os_error

    if isinstance(exc, OSError) and not isinstance(exc, TrtflowError):
        exc = from_os_error(exc) or exc
    if isinstance(exc, TrtflowError):
        code = exc.exit_code
        text = f"error: {exc}"
    elif isinstance(exc, (KeyboardInterrupt,)) or type(exc).__name__ == "Abort":
        code, text = INTERRUPTED, "interrupted"
    elif _usage_error(exc):
        code = USAGE
        if not want_json or _State.debug:
            exc.show()  # type: ignore[attr-defined]  # usage line + "Error: ..." as click prints it
        text = ""
    else:
        code = INTERNAL
        text = (f"internal error: {type(exc).__name__}: {exc}\n  hint: this is a trtflow bug; "
                + ("the traceback is above" if _State.debug else "run with --debug for a traceback") + " and report it")
    if _State.debug:
        traceback.print_exception(exc)
    if text:  # messages quote names from models and files: control codes are shown, never sent
        print(plain(text, newlines=True), file=sys.stderr)
    if want_json and not _State.json_emitted:
        obj = error_object(exc, code=code)
        if _usage_error(exc):
            fmt = getattr(exc, "format_message", None)
            obj["error"].update({"class": "UsageError", "message": fmt() if callable(fmt) else str(exc),
                                 "hint": "see `trtflow COMMAND --help`"})
        elif code == INTERRUPTED:
            obj["error"].update({"class": "Interrupted", "hint": None})
        print(json.dumps(obj, indent=2, default=str))
        if _usage_error(exc):
            print(getattr(exc, "format_message", lambda: str(exc))(), file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> None:
    """Entry point (``trtflow``, ``python -m trtflow``): run the app; every error leaves through :func:`_fail`."""
    args = sys.argv[1:] if argv is None else list(argv)
    want_json = "--json" in args
    _State.debug = "--debug" in args  # set again by the callback; known here for errors before it runs
    _State.json_emitted = False
    try:
        rc = app(args=args, prog_name="trtflow", standalone_mode=False)
    except SystemExit:
        raise
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        sys.exit(_fail(exc, want_json=want_json))
    # standalone_mode=False: click returns typer.Exit's code (and help's 0) instead of raising it; typer
    # turns Ctrl-C into such a return of 130.
    from trtflow.errors import INTERRUPTED

    if rc == INTERRUPTED:
        sys.exit(_fail(KeyboardInterrupt(), want_json=want_json))
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
