"""Generate an artifact's ``runner.py`` from its :class:`~trtflow.plan.model.Plan`.

The generated module imports only trtflow and numpy, finds ``plan.json`` next to itself, and holds
one :class:`~trtflow.runtime.runner.Runner` subclass with typed keyword-only inputs, a NamedTuple of
outputs, and an ``allocate(alloc)`` that spells out every stream and buffer the class owns. It calls
only public methods of its base class. :func:`generate_runner` assembles named sections (module
docstring, imports, outputs class, input-views class, runner class: allocate, request methods, inputs).

Tensor names come from ONNX files and are untrusted: in code they only ever appear as ``ascii()``
literals (a ``repr`` that is pure ASCII), in comments and docstrings only escaped the same way.
Python names are the plan's ``ident``s, which are checked here before use.
"""

from __future__ import annotations

import keyword
from pathlib import Path

from trtflow import __version__
from trtflow.plan.formats import FORMATS, ITEMSIZE, physical_shape
from trtflow.plan.model import MEMORY_STRATEGIES, TOPOLOGIES, Plan, TensorPlan

# Names the generated module binds at top level or uses inside methods: no class or parameter may shadow them.
_MODULE_NAMES = frozenset({"annotations", "Any", "Iterable", "Iterator", "Mapping", "NamedTuple", "Path", "np",
                           "Allocator", "Pending", "Runner"})
#: identifiers no tensor may take: names the generated methods use (the planner avoids them too)
RESERVED_IDENTS = frozenset({"self", "cls", "np", "copy", "of"})

_STRATEGY_NOTE = {
    "pageable": "the caller's array, copied as is from pageable memory (driver-staged)",
    "pinned": "pinned staging (cudaHostAlloc) + device buffer",
    "write_combined": "write-combined pinned staging + device buffer",
    "registered": "the caller's buffer, page-locked in place (cudaHostRegister) + device buffer",
    "mapped": "mapped pinned memory the engine reads/writes directly (no copy)",
    "device": "device buffer; CUDA arrays are bound zero-copy",
}


class CodegenError(ValueError):
    """The plan cannot be turned into safe code (a name, identifier or value is out of bounds)."""


def _lit(s: str) -> str:
    """A Python string literal for ``s``: ASCII only, so no raw name byte ever reaches the code."""
    if not isinstance(s, str):
        raise CodegenError(f"expected a string, got {type(s).__name__}")
    return ascii(s)


def _doc(s: str) -> str:
    """``s`` quoted for a docstring or comment: ascii() with backslashes and double quotes escaped."""
    return _lit(s).replace("\\", "\\\\").replace('"', '\\"')


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _dims(t: TensorPlan) -> str:
    """``[1, 3, 520, 520]`` or ``[1..8, 3, 224, 224]`` for a profile."""
    if not t.dynamic:
        return _shape(t.shape)
    return "[" + ", ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in zip(t.min_shape, t.max_shape)) + "]"


def _check_plan(plan: Plan) -> None:
    cls = plan.class_name
    if not (isinstance(cls, str) and cls.isidentifier() and not keyword.iskeyword(cls) and not cls.startswith("_")
            and cls not in _MODULE_NAMES):
        raise CodegenError(f"class name {_lit(str(cls))} is not a usable Python class name")
    seen: set[str] = set()
    for t in plan.tensors:
        ident = t.ident
        if not (isinstance(ident, str) and ident.isidentifier() and not keyword.iskeyword(ident)
                and not ident.startswith("_") and ident not in RESERVED_IDENTS):
            raise CodegenError(f"tensor {_lit(str(t.name))}: identifier {_lit(str(ident))} is not usable",
                               )
        if ident in seen:
            raise CodegenError(f"identifier {ident!r} is used by two tensors")
        seen.add(ident)
        if t.memory not in MEMORY_STRATEGIES:
            raise CodegenError(f"tensor {_lit(t.name)}: unknown memory strategy {_lit(str(t.memory))}")
        if t.format not in FORMATS:
            raise CodegenError(f"tensor {_lit(t.name)}: unknown format {_lit(str(t.format))}")
        if t.dtype not in ITEMSIZE:
            raise CodegenError(f"tensor {_lit(t.name)}: unknown dtype {_lit(str(t.dtype))}")
        for shape in (t.shape, t.min_shape, t.max_shape):
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise CodegenError(f"tensor {_lit(t.name)}: bad shape {shape!r}")
    if plan.streams.topology not in TOPOLOGIES:
        raise CodegenError(f"unknown topology {_lit(str(plan.streams.topology))}")
    if (not isinstance(plan.streams.depth, int) or isinstance(plan.streams.depth, bool)
            or not isinstance(plan.streams.cuda_graph, bool)):
        raise CodegenError("streams.depth must be an int and streams.cuda_graph a bool")


def _names(plan: Plan) -> tuple[str, str]:
    base = plan.class_name[:-len("Runner")] if plan.class_name.endswith("Runner") and plan.class_name != "Runner" else plan.class_name
    outputs, views = base + "Outputs", base + "InputViews"
    for n in (outputs, views):
        if n in _MODULE_NAMES or n == plan.class_name:
            raise CodegenError(f"derived class name {n!r} collides with a module name")
    return outputs, views


def _topology_text(plan: Plan) -> list[str]:
    topo, depth, graph = plan.streams.topology, plan.streams.buffer_sets, plan.streams.cuda_graph
    streams = "h2d, compute, d2h" if topo == "pipelined" else "main"
    lines = [
        f"Topology: {topo}" + (f", depth {depth}" if topo == "pipelined" else "") +
        f" -> {depth} buffer set(s); stream(s): {streams} (non-blocking).",
        "Events per buffer set: h2d_done, compute_done, d2h_done, plus inputs_consumed where the engine",
        "supports it, plus 3 timing events with timing=True.",
        "CUDA graph: " + ("on: after one eager warm-up, copy-in + enqueue + copy-out are captured and replayed"
                          if graph and topo != "pipelined" else
                          "on: the enqueue of each buffer set is captured and replayed" if graph else "off") + ".",
    ]
    return lines


def _table(plan: Plan) -> list[str]:
    rows = [("tensor", "role", "shape", "dtype", "format", "bytes/inference", "buffer bytes", "strategy")]
    for t in plan.tensors:
        rows.append((_doc(t.name), t.role, _dims(t), t.dtype, t.format, f"{int(t.bytes):,}", f"{int(t.max_bytes):,}",
                     t.memory))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        out.append("    " + "  ".join(c.rjust(w) if i in (5, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return out


LINE = 110


def _wrap(head: str, items: list[str], tail: str, *, tuple_: bool = False) -> str:
    """``head + items + tail`` on one line if it fits, else one item per line (black/ruff style)."""
    one = head + ", ".join(items) + ("," if tuple_ and len(items) == 1 else "") + tail
    if len(one) <= LINE:
        return one
    indent = " " * (len(head) - len(head.lstrip()) + 4)
    close_indent = " " * (len(head) - len(head.lstrip()))
    return "\n".join([head] + [f"{indent}{item}," for item in items] + [close_indent + tail.lstrip()])


def _param_type(t: TensorPlan) -> str:
    if t.encoding:  # one file's bytes (bytes, bytearray, memoryview, 1-D uint8 array) or a list of them
        return "bytes | bytearray | memoryview | np.ndarray | list[Any]"
    return "Any" if t.memory == "device" else "np.ndarray"


def _note(t: TensorPlan) -> str:
    if t.encoding:
        return (f"{t.encoding} files, decoded into a device buffer ({t.memory} staging of the bytes); "
                "JPEG on the GPU (nvImageCodec), PNG on the host")
    return _STRATEGY_NOTE[t.memory]


def _tensor_note(t: TensorPlan) -> str:
    fmt = "" if t.format == "linear" else f", format {t.format} (engine layout {_shape(physical_shape(t.max_shape, t.format))})"
    if t.encoding:
        return f"{_doc(t.name)}: {t.encoding} file bytes (or a list: a batch), decoded to uint8 {_dims(t)}"
    if t.packed_bits:
        return f"{_doc(t.name)}: uint8 {_dims(t)}, a mask packed 8 per byte (run.unpack({_lit(t.name)}, x))"
    return f"{_doc(t.name)}: {t.dtype} {_dims(t)}, {t.memory}{fmt}"


def generate_runner(plan: Plan) -> str:
    """Source of the artifact's ``runner.py`` for ``plan`` (formatted, typed, ASCII only)."""
    _check_plan(plan)
    out_cls, views_cls = _names(plan)
    head = [_module_docstring(plan), _imports()]  # one blank line apart
    body = [_outputs_class(plan, out_cls), _input_views_class(plan, views_cls), _runner_class(plan, out_cls, views_cls)]
    src = "\n\n".join("\n".join(lines) for lines in head) + "\n\n\n" + \
        "\n\n\n".join("\n".join(lines) for lines in body) + "\n"
    if any(ord(c) > 127 for c in src):  # defensive: everything is ASCII by construction
        raise CodegenError("generated source is not ASCII")
    return src


# -- the sections of the generated module, in order ----------------------------------------------------
def _module_docstring(plan: Plan) -> list[str]:
    """What the class is, from where (file names only: no path of the build machine), its memory and
    streams, and how to load it."""
    cls, first_in = plan.class_name, (plan.inputs[0] if plan.inputs else None)
    recipe, model = _doc(Path(plan.recipe_path).name), _doc(Path(plan.model_path).name)
    lines = [
        f'"""{cls}: generated by trtflow {_doc(__version__)[1:-1]} from the recipe {recipe}. Do not edit:',
        "regenerate with `trtflow build`.",
        "",
        f"Model {model} (sha256 {_doc(plan.model_sha256)[1:13]}...), precision {_doc(plan.precision)[1:-1]}.",
        "The engine is opened from plan.json / report.json next to this file.",
        "",
        "Memory layout (per inference; every buffer is allocated once, at the max shape):",
        "",
        *_table(plan),
        "",
        *(f"- {_doc(t.name)}: {_note(t)}." for t in plan.tensors),
        "",
        *_topology_text(plan),
        "",
        "Results are views into the runner's buffers, valid until their buffer set is reused (the next call;",
        "`depth` calls later when pipelined) or the runner is closed; pass copy=True for owned arrays.",
        "One lock serializes calls: a runner may be shared by threads (requests run one at a time).",
        "",
        "Usage:",
        "",
        "    import trtflow",
        "",
        f'    {cls} = trtflow.load_runner("artifacts/{_doc(plan.name)[1:-1]}")   # this folder, from any directory',
        f"    with {cls}() as run:",
    ]
    if first_in is not None:
        lines.append(f"        outputs = run({first_in.ident}=x)")
    return [*lines, '"""']


def _imports() -> list[str]:
    return [
        "from __future__ import annotations",
        "",
        "from collections.abc import Iterable, Iterator, Mapping",
        "from pathlib import Path",
        "from typing import Any, NamedTuple",
        "",
        "import numpy as np",
        "",
        "from trtflow.runtime.runner import Allocator, Pending, Runner",
    ]


def _outputs_class(plan: Plan, out_cls: str) -> list[str]:
    lines = [
        f"class {out_cls}(NamedTuple):",
        f'    """Outputs of {plan.class_name}: numpy arrays (DeviceArray for device memory), views unless copy=True."""',
        "",
    ]
    for t in plan.outputs:
        kind = "Any" if t.memory == "device" else "np.ndarray"
        lines.append(f"    {t.ident}: {kind}  # {_tensor_note(t)}")
    return [
        *lines,
        "",
        "    @classmethod",
        f"    def of(cls, outputs: dict[str, Any]) -> {out_cls}:",
        '        """From the runner\'s outputs by tensor name (in plan order)."""',
        "        return cls(*outputs.values())",
    ]


def _input_views_class(plan: Plan, views_cls: str) -> list[str]:
    lines = [
        f"class {views_cls}(NamedTuple):",
        '    """Host staging of each input for in-place writes (None where the strategy has none)."""',
        "",
    ]
    lines += [f"    {t.ident}: np.ndarray | None  # {_doc(t.name)}" for t in plan.inputs] or ["    pass"]
    return lines


def _runner_class(plan: Plan, out_cls: str, views_cls: str) -> list[str]:
    topo = plan.streams.topology
    return [
        f"class {plan.class_name}(Runner):",
        (f'    """Runs {_doc(plan.name)}: {len(plan.inputs)} input(s), {len(plan.outputs)} output(s), '
         f'topology {topo}."""'),
        "",
        "    ARTIFACT_DIR = Path(__file__).resolve().parent",
        f"    Outputs = {out_cls}",
        _wrap("    INPUT_NAMES = (", [_lit(t.name) for t in plan.inputs], ")", tuple_=True),
        _wrap("    OUTPUT_NAMES = (", [_lit(t.name) for t in plan.outputs], ")", tuple_=True),
        "",
        *_allocate_method(plan),
        "",
        *_request_methods(plan, out_cls),
        "",
        *_inputs_property(plan, views_cls),
    ]


def _allocate_method(plan: Plan) -> list[str]:
    """The streams and buffer sets the class owns, one line per tensor."""
    topo, depth = plan.streams.topology, plan.streams.buffer_sets
    streams = "h2d, compute, d2h" if topo == "pipelined" else "main"
    lines = [
        "    def allocate(self, alloc: Allocator) -> None:",
        '        """Every stream and buffer this runner owns (on the CPU: host arrays only)."""',
        f"        alloc.streams()  # plan.json: {topo} -> stream(s) {streams}",
        "        alloc.scratch()  # device scratch the engine asks for (TensorRT); none for torch",
        f"        for _ in range(alloc.depth):  # buffer sets: {depth} (one per request in flight)",
        "            alloc.buffer_set({",
    ]
    for t in plan.tensors:
        lines.append(f"                # {_doc(t.name)}: {t.role}, {int(t.max_bytes):,} B, {_note(t)}")
        lines.append(f"                {_lit(t.name)}: alloc.memory({_lit(t.name)}, {_lit(t.memory)}),")
    lines.append("            })  # the base class adds each set's events: h2d/compute/d2h done (+ inputs consumed)")
    return lines


def _request_methods(plan: Plan, out_cls: str) -> list[str]:
    """``__call__``, ``submit``, ``infer`` (asyncio) and ``stream``: typed keyword inputs, typed outputs."""
    params = [f"{t.ident}: {_param_type(t)}" for t in plan.inputs]
    feeds = _wrap("        feeds = {", [f"{_lit(t.name)}: {t.ident}" for t in plan.inputs], "}")
    return [
        _wrap("    def __call__(", ["self", "*", *params, "copy: bool = False"], f") -> {out_cls}:"),
        '        """Run one inference and wait for it.',
        "",
        "        Args:",
        *(f"            {t.ident}: {_tensor_note(t)}" for t in plan.inputs),
        "            copy: return owned arrays instead of views into the runner's buffers.",
        "",
        f"        Returns {out_cls}:",
        *(f"            {t.ident}: {t.dtype} {_dims(t)}" for t in plan.outputs),
        '        """',
        feeds,
        f"        return self.run_with(feeds, {out_cls}.of, copy=copy)",
        "",
        _wrap("    def submit(", ["self", "*", *params] if plan.inputs else ["self"], f") -> Pending[{out_cls}]:"),
        '        """Start one inference and return at once: .result() waits, .done() polls."""',
        feeds,
        f"        return self.submit_with(feeds, {out_cls}.of)",
        "",
        _wrap("    async def infer(", ["self", "*", *params, "copy: bool = False"], f") -> {out_cls}:"),
        '        """asyncio: run one inference and await it without blocking the event loop. Up to `depth`',
        "        requests run at once, the rest queue in order; outputs are views valid until your next",
        '        await (copy=True: owned arrays). Inputs must stay unchanged until the await returns."""',
        feeds,
        f"        return await self.infer_with(feeds, {out_cls}.of, copy=copy)",
        "",
        _wrap("    def stream(", ["self", "requests: Iterable[Mapping[str, Any]]", "*", "copy: bool = False"],
              f") -> Iterator[{out_cls}]:"),
        '        """Run every request (dicts keyed by tensor name or identifier), up to `depth` in flight,',
        '        yielding results in order; a result is valid until the iterator advances (or copy=True)."""',
        "        return super().stream(requests, copy=copy)",
    ]


def _inputs_property(plan: Plan, views_cls: str) -> list[str]:
    return [
        "    @property",
        f"    def inputs(self) -> {views_cls}:",
        '        """Staging views of the next request: write into them, then pass them as the inputs."""',
        _wrap(f"        return {views_cls}(", [f"self.input_view_or_none({_lit(t.name)})" for t in plan.inputs], ")"),
    ]


def write_runner(plan: Plan, artifact_dir: str | Path) -> Path:
    """Write ``artifact_dir/runner.py`` atomically (:func:`trtflow.artifact.atomic_write`), after
    checking that it compiles."""
    from trtflow.artifact import RUNNER, atomic_write

    src = generate_runner(plan)
    path = Path(artifact_dir) / RUNNER
    compile(src, str(path), "exec")  # never leave a module that does not compile
    atomic_write(path, src)
    return path


__all__ = ["RESERVED_IDENTS", "CodegenError", "generate_runner", "write_runner"]
