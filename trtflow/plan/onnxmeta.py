"""Read an ONNX model's I/O metadata (names, shapes, dtypes, opset) without running anything.

External weights are never loaded here (``load_external_data=False``): planning a 10 GB model reads
only its graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from trtflow.artifact import sha256_path
from trtflow.errors import ModelError

# onnx TensorProto enum -> numpy-style dtype name (kept literal so the core needs no onnx import here)
ONNX_DTYPES: dict[int, str] = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool",
                               10: "float16", 16: "bfloat16"}
DTYPE_TO_ONNX: dict[str, int] = {v: k for k, v in ONNX_DTYPES.items()}

Dim = int | str | None  # int, symbolic name, or unknown


# Placeholders exporters write for "some dynamic dim": each is its own dim, never a name shared by inputs.
_PLACEHOLDER = re.compile(r"^(\?|-1|None|unk__\d+|(p2o\.)?DynamicDimension\.\d+)?$")


def is_named_dim(d: Dim) -> bool:
    """A dim name the model author chose (``batch``): only such names tie dims of several inputs together."""
    return isinstance(d, str) and not _PLACEHOLDER.match(d)


@dataclass(frozen=True)
class IOInfo:
    name: str
    dtype: str
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class Switch:
    """An ``If`` whose condition reads the VALUE of a model input (a mode input such as a sample rate)."""

    input: str                       # the model input
    node: str                        # the If node's name
    equals: int | float | None       # the constant the condition compares the input with, if that simple


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    sha256: str
    opset: int
    inputs: tuple[IOInfo, ...]
    outputs: tuple[IOInfo, ...]
    op_types: frozenset[str]
    has_external_data: bool
    switches: tuple[Switch, ...] = ()
    # outputs that are probabilities: output name -> ("sigmoid", None) or ("softmax", its axis counted from
    # the last dim): validate's policy gates them by their decision in reduced precision (validate/policy.py)
    probabilities: dict[str, tuple[str, int | None]] = field(default_factory=dict)


def _io(vi: object) -> IOInfo:
    t = vi.type.tensor_type  # type: ignore[attr-defined]
    if t.elem_type not in ONNX_DTYPES:
        raise ModelError(f"tensor {vi.name!r} has ONNX element type {t.elem_type}, which trtflow does not handle")  # type: ignore[attr-defined]
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_value"):  # Paddle writes -1 for "dynamic": an unnamed dynamic dim, never a size
            dims.append(None)
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return IOInfo(name=vi.name, dtype=ONNX_DTYPES[t.elem_type], dims=tuple(dims))  # type: ignore[attr-defined]


MAX_PROTOBUF = (1 << 31) - 1


def check_external_data(model: object, path: Path) -> None:
    """Every external weight file must lie in the model's folder (no ``..``, absolute path or symlink out of
    it) and hold the bytes the tensor says: a ModelError naming tensor and file, found while planning,
    instead of onnx's error (or a read of /etc/passwd) in the middle of a build."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    folder = path.parent.resolve()
    for t in model.graph.initializer:  # type: ignore[attr-defined]
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(t)
        where = f"{path}: tensor {t.name!r} keeps its data in {info.location!r}"
        target = (folder / info.location).resolve()
        if Path(info.location).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(f"{where}, outside the model's folder {folder}",
                             hint="external data files must sit beside the model (re-save it with onnx)")
        if not target.is_file():
            raise ModelError(f"{where}, which is missing (looked at {target})",
                             hint="copy the model's external data files next to it")
        need = (info.offset or 0) + (info.length or 0)
        if target.stat().st_size < need:
            raise ModelError(f"{where}, which has {target.stat().st_size} bytes; the tensor needs bytes up to {need}",
                             hint="the external data file is truncated or belongs to another model")


def read_model_info(path: Path) -> ModelInfo:
    """Parse ``path`` and describe its graph inputs/outputs; a clear ModelError for a bad file."""
    import onnx

    if not path.is_file():
        raise ModelError(f"model file not found: {path}", hint="check `model:` in the recipe (relative to the recipe file)")
    size = path.stat().st_size
    if size > MAX_PROTOBUF:  # protobuf cannot parse it anyway: refuse before reading gigabytes into memory
        raise ModelError(f"{path}: {size:,} bytes; an ONNX protobuf file is at most 2 GiB",
                         hint="larger models keep their weights in external data files (onnx.save(..., "
                         "save_as_external_data=True))")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})",
                         hint="the file may be truncated or not ONNX; re-export it") from None
    if not model.graph.node:
        raise ModelError(f"{path}: the ONNX graph has no nodes (truncated or empty file?)",
                         hint="re-export the model")
    init_names = {i.name for i in model.graph.initializer}
    ext = any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    if ext:
        check_external_data(model, path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelInfo(
        path=path,
        sha256=sha256_path(path),
        opset=opset,
        inputs=tuple(_io(i) for i in model.graph.input if i.name not in init_names),
        outputs=tuple(_io(o) for o in model.graph.output),
        op_types=frozenset(n.op_type for n in model.graph.node),
        has_external_data=ext,
        switches=switches(model),
        probabilities=probabilities(model, opset),
    )


_LAYOUT_ONLY = ("Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def probabilities(model: object, opset: int) -> dict[str, tuple[str, int | None]]:
    """Graph outputs made by a Sigmoid (elementwise probabilities) or a Softmax, seen through ops that only
    move elements (Reshape, Transpose, ...). A Softmax keeps its axis only through Identity/Cast; before
    opset 13 Softmax normalizes over the flattened trailing dims, so there only a last-axis Softmax counts."""
    graph = model.graph  # type: ignore[attr-defined]
    producer = {o: n for n in graph.node for o in n.output}
    rank = {o.name: len(o.type.tensor_type.shape.dim) for o in graph.output}
    found: dict[str, tuple[str, int | None]] = {}
    for out in graph.output:
        name, moved = out.name, False
        while name in producer and producer[name].op_type in _LAYOUT_ONLY:
            moved |= producer[name].op_type not in ("Identity", "Cast")
            name = producer[name].input[0]
        node = producer.get(name)
        if node is None or node.op_type not in ("Sigmoid", "Softmax"):
            continue
        if node.op_type == "Sigmoid":
            found[out.name] = ("sigmoid", None)
            continue
        axis = next((int(a.i) for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        r = rank[out.name]
        neg = axis - r if axis >= 0 else axis
        if not moved and r and (opset >= 13 or neg == -1):  # else its decision (the argmax) is not known here
            found[out.name] = ("softmax", neg)
    return found


_PASS_THROUGH = ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Gather")
_SHAPE_OF = ("Shape", "Size")  # read a tensor's shape, not its values: a shape test is no mode switch


def switches(model: object) -> tuple[Switch, ...]:
    """Every If (in any subgraph) whose condition depends on a graph input's value."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    producer: dict[str, object] = {}
    consts: dict[str, object] = {i.name: i for i in graph.initializer}
    ifs = []

    def walk(g: object) -> None:
        for n in g.node:  # type: ignore[attr-defined]
            for y in n.output:
                producer[y] = n
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                consts[n.output[0]] = n.attribute[0].t
            if n.op_type == "If":
                ifs.append(n)
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    consts.update({i.name: i for i in sub.initializer})
                    walk(sub)

    walk(graph)

    def source(name: str) -> str:
        while name in producer and producer[name].op_type in _PASS_THROUGH:  # type: ignore[attr-defined]
            name = producer[name].input[0]  # type: ignore[attr-defined]
        return name

    def scalar(name: str) -> int | float | None:
        t = consts.get(source(name))
        if t is None:
            return None
        v = numpy_helper.to_array(t)  # type: ignore[arg-type]
        return v.reshape(-1)[0].item() if v.size == 1 else None

    out = []
    for n in ifs:
        seen, todo, reads = set(), [n.input[0]], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in inputs:
                reads.add(name)
            elif name in producer and producer[name].op_type not in _SHAPE_OF:  # type: ignore[attr-defined]
                todo.extend(x for x in producer[name].input if x)  # type: ignore[attr-defined]
        eq = producer.get(source(n.input[0]))
        for name in sorted(reads):
            equals = None
            if eq is not None and eq.op_type == "Equal":  # type: ignore[attr-defined]
                a, b = eq.input  # type: ignore[attr-defined]
                if source(a) == name:
                    equals = scalar(b)
                elif source(b) == name:
                    equals = scalar(a)
            out.append(Switch(input=name, node=n.name, equals=equals))
    return tuple(out)
