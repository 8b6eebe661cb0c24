"""Pass ``precision``: lower the compute graph to fp16 or bf16 in the ONNX graph itself.

With strong typing (TensorRT 10.12+, 11.x, TensorRT-RTX) precision is a property of the graph, not a
builder flag, and onnxruntime and torch read it the same way. fp32 and tf32 change nothing here (tf32
is a build flag).

The pass runs BEFORE the I/O contract passes and lowers every float graph input and output too
(``keep_io_types=False``). The contract passes then add exactly the boundary casts the plan asks for,
from whatever dtype the graph ends up with: a uint8 input becomes one ``Cast(uint8 -> fp16)`` rather
than ``Cast(uint8 -> fp32)`` followed by the converter's ``Cast(fp32 -> fp16)``, normalization runs in
fp16 right before the first conv (so TensorRT can fold it into the conv), and an argmax reads the fp16
logits instead of an fp32 copy of them. It also avoids a converter bug: with ``keep_io_types=True`` an
output produced by a blocked op (LRASPP ends in Resize) comes out fp16 anyway.

fp16 uses ``onnxconverter_common.float16`` plus fixes for its gaps: ``Cast(to=float)`` nodes are not
retargeted; an initializer shared by a blocked and an unblocked node stays fp32 for both; unnamed
nodes give colliding cast names; and inputs ONNX always types float32 (Resize ``roi``/``scales``) are
lowered too, which is why it blocks Resize altogether. The converter also lowers If/Loop bodies, so
every fix applies inside them too. Float math on integer values (shape, index and counter arithmetic:
:func:`index_arithmetic`) stays fp32 in both precisions. bf16 has no converter there: :func:`to_bf16`
is a small schema-driven lowering of our own, checked against TensorRT-RTX's parser.
"""

from __future__ import annotations

import fnmatch
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import BackendMissing, ModelError, TrtflowError
from trtflow.extras import install_hint
from trtflow.passes._graph import NameGen, cast_node, note, opset_of, rename_tensor, subgraphs
from trtflow.passes.normalize import drop_unused_initializers, infer_shapes
from trtflow.plan.model import MixedPrecisionPlan, Plan

# Kept in fp32 on top of the converter's defaults (Resize, TopK, Range, CumSum, Min, Max, NMS, ...):
# ops whose fp16 result overflows (65504) for ordinary inputs.
FP16_EXTRA_BLOCK = frozenset({"Pow", "Exp", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd"})
# The converter blocks Resize only because its `roi`/`scales` inputs are float32 in every opset;
# keep_float_slots keeps exactly those inputs fp32, so Resize itself (LRASPP's full-resolution
# upsample, the biggest tensor of the net) runs in fp16.
FP16_UNBLOCK = frozenset({"Resize"})
# fp16 weights: the converter's default clamp of 1e4 would cut representable values; 65504 is fp16's max.
FP16_MAX = 65504.0
FP16_MIN_KEPT = 1e-7  # the converter raises smaller non-zero magnitudes to this (its min_positive_val)
FP16_MIN_NORMAL = 6.103515625e-05  # 2^-14: below it fp16 is subnormal
UNDERFLOW_MAX = 0.01  # a weight whose fp16 copy moves more than 1 % of its sum |x| stays fp32

# bf16 has fp32's range, so only ops that compute indices/geometry or draw random numbers stay fp32.
BF16_BLOCK = frozenset({"NonMaxSuppression", "RoiAlign", "Range", "CumSum", "RandomNormal", "RandomUniform",
                        "RandomNormalLike", "RandomUniformLike", "EyeLike", "Multinomial", "Bernoulli"})
BF16_MIN_OPSET = 22  # Conv, pooling, HardSwish, ... accept bfloat16 from opset 22 on
_BF16 = "tensor(bfloat16)"
_Kinds = tuple[list[str | None], list[str | None]]  # per input, per output: 'bf16', 'fp32' or None


def precision(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Lower to ``plan.precision`` (fp16/bf16); fp32 and tf32 leave the graph as it is."""
    if plan.precision == "fp16":
        return to_fp16(model, plan)
    if plan.precision == "bf16":
        return to_bf16(model, plan)
    return model


# -- which nodes stay fp32, and why -------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """The plan's ``mixed_precision`` section, in the form the rules ask it (no defaults here: the plan's)."""

    keep_ops: frozenset[str]
    keep_nodes: tuple[str, ...]
    init_max: float
    data_max: float | None
    calibrate: bool

    @classmethod
    def of(cls, plan: Plan | None) -> Policy:
        mp = plan.mixed_precision if plan is not None else MixedPrecisionPlan()
        return cls(keep_ops=frozenset(mp.keep_fp32_ops), keep_nodes=mp.keep_fp32_nodes, init_max=mp.init_max,
                   data_max=mp.data_max, calibrate=mp.calibrate)

    def names(self, node: onnx.NodeProto) -> bool:
        return node.op_type in self.keep_ops or any(fnmatch.fnmatchcase(node.name, p) for p in self.keep_nodes)

    def to_dict(self) -> dict[str, Any]:
        return {"keep_fp32_ops": sorted(self.keep_ops), "keep_fp32_nodes": list(self.keep_nodes),
                "init_max": self.init_max, "data_max": self.data_max, "calibrate": self.calibrate}


def all_nodes(graph: onnx.GraphProto) -> Iterator[tuple[onnx.GraphProto, onnx.NodeProto]]:
    """(graph, node) for every node, subgraphs (If/Loop bodies) included, outer graph first."""
    for node in graph.node:
        yield graph, node
        for g in subgraphs(node):
            yield from all_nodes(g)


def all_graphs(graph: onnx.GraphProto, skip: Blocked | None = None) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop bodies), parents first; not the bodies of nodes in ``skip``
    (the fp16 converter does not enter the bodies of nodes it keeps fp32)."""
    yield graph
    for node in graph.node:
        if skip is None or node not in skip:
            for g in subgraphs(node):
                yield from all_graphs(g, skip)


def model_types(graph: onnx.GraphProto) -> dict[str, int]:
    """:func:`value_types` of ``graph`` and all its subgraphs (tensor names are unique across scopes)."""
    types: dict[str, int] = {}
    for g in all_graphs(graph):
        types.update(value_types(g))
    return types


def weight_problem(t: TensorProto, init_max: float) -> tuple[str, float, float] | None:
    """Why a float32 weight cannot go to fp16 as the converter would store it, as (rule, value, limit).

    Overflow: a finite |x| above ``init_max`` (the converter clamps to 65504: a BatchNorm variance of
    9.8e7 becomes 65504). Underflow: the converter raises |x| < 1e-7 to 1e-7 and fp16 flushes what is
    below 6e-8; when that moves more than UNDERFLOW_MAX of the tensor's magnitude (sum of |x|) the
    weight is wrong, not rounded (plain fp16 rounding moves at most 2^-11 = 0.05 %).
    """
    if t.data_type != TensorProto.FLOAT or t.data_location == TensorProto.EXTERNAL:
        return None
    a = numpy_helper.to_array(t).astype(np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return None
    peak = float(np.abs(a).max())
    if peak > init_max:
        return "initializer_overflow", peak, init_max
    mass = float(np.abs(a).sum())
    if not mass:
        return None
    small = a[np.abs(a) < FP16_MIN_NORMAL]  # where fp16 stores fewer bits (subnormal), raises or flushes
    lifted = np.where((small > 0) & (small < FP16_MIN_KEPT), FP16_MIN_KEPT,
                      np.where((small < 0) & (small > -FP16_MIN_KEPT), -FP16_MIN_KEPT, small))
    lost = float(np.abs(lifted.astype(np.float16).astype(np.float64) - small).sum()) / mass
    if lost > UNDERFLOW_MAX:
        return "initializer_underflow", lost, UNDERFLOW_MAX
    return None


def weights_out_of_range(model: onnx.ModelProto, policy: Policy, block: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Nodes reading a float weight (initializer or attribute tensor) fp16 cannot hold, by node name."""
    kept: dict[str, dict[str, Any]] = {}
    checked: dict[str, tuple[str, float, float] | None] = {}
    scopes: dict[int, dict[str, TensorProto]] = {}

    def scope_of(graph: onnx.GraphProto) -> dict[str, TensorProto]:
        found = scopes.get(id(graph))
        if found is None:
            found = scopes[id(graph)] = {i.name: i for i in graph.initializer}
        return found

    outer = scope_of(model.graph)
    for graph, node in all_nodes(model.graph):
        if node.op_type in block or node.name in kept:
            continue
        local = scope_of(graph)
        for x in node.input:
            t = local.get(x) or outer.get(x)
            if t is None:
                continue
            key = f"{id(graph)}:{x}"
            if key not in checked:
                checked[key] = weight_problem(t, policy.init_max)
            if checked[key] is not None:
                rule, value, limit = checked[key]  # type: ignore[misc]
                kept[node.name] = _reason(node, rule, x, value, limit)
                break
        else:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and (hit := weight_problem(attr.t, policy.init_max)):
                    kept[node.name] = _reason(node, hit[0], f"{node.name}.{attr.name}", hit[1], hit[2])
                    break
    return kept


def index_arithmetic(model: onnx.ModelProto, block: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Nodes doing float math on integer values that end up as integers again: shape, index and counter
    arithmetic, which must stay in the model's fp32 (fp16 holds integers exactly only up to 2048, bf16
    up to 256), by node name.

    Exporters compute shapes and indices in float: YOLOv8's anchors are ``Range(0, Cast(Gather(Shape(x)),
    float), 1)``; Paddle2ONNX counts decoder steps with ``Cast(int64->float) -> Add(1.0) -> Cast(->int64)``
    inside a Loop. A node is such arithmetic when (forward) every input that is not a constant is an
    integer tensor or such a float, and (backward) its float result reaches, through such nodes only, a
    reader that turns it into an index: a node whose outputs are all non-float (Cast to an integer,
    comparisons), a Range, or an input ONNX types float32 whatever T is (Resize ``roi``/``scales``).
    Float tensors of data (activations, an int32 input cast to float and fed to a dense layer) never
    qualify: they do not return to integers. Constant nodes feeding such a node stay fp32 with it.
    Subgraphs (If/Loop bodies) included: tensor names are unique across scopes in a valid model.
    """
    from trtflow.passes.normalize import infer_shapes

    opset = opset_of(model)
    probe = infer_shapes(_copy(model))  # the converter re-infers too: same types as it sees
    types = model_types(probe.graph)
    const = {i.name for g in all_graphs(probe.graph) for i in g.initializer}
    nodes = [n for _, n in all_nodes(probe.graph)]
    arith: list[onnx.NodeProto] = []
    derived: set[str] = set()  # float tensors computed from integers (and constants) only
    for node in nodes:
        inputs = [x for x in node.input if x]
        if any(True for _ in subgraphs(node)) or node.op_type in ("Shape", "Size"):
            continue
        if node.op_type == "Constant" or (inputs and all(x in const for x in inputs)):
            const.update(node.output)
            continue
        varying = [x for x in inputs if x not in const]
        floats = [x for x in (*inputs, *node.output) if types.get(x) == TensorProto.FLOAT]
        if floats and varying and all(x in derived or types.get(x) in _INDEX_TYPES for x in varying):
            derived.update(x for x in node.output if types.get(x) == TensorProto.FLOAT)
            arith.append(node)
    consumed: set[str] = set()  # float tensors read as an index
    readers: dict[str, str] = {}  # node -> the float tensor it reads as an index
    for node in nodes:
        float_in = [x for x in node.input if x and types.get(x) == TensorProto.FLOAT]
        if not float_in or node.op_type in ("Shape", "Size") or any(True for _ in subgraphs(node)):
            continue
        if node.op_type == "Range" or all(types.get(x, TensorProto.FLOAT) in _INDEX_TYPES
                                          for x in node.output if x):
            consumed.update(float_in)
            readers[node.name] = float_in[0]
        else:
            consumed.update(node.input[k] for k in fixed_float_slots(node, opset))
    kept: dict[str, dict[str, Any]] = {}
    read: set[str] = set()  # what the kept nodes read
    for node in reversed(arith):  # the reader itself too: a Cast(float -> int64) of such a float stays fp32
        hit = next((x for x in node.output if x in consumed), None) or readers.get(node.name)
        if hit is None:
            continue
        if node.op_type not in block:
            kept[node.name] = _reason(node, "index_arithmetic", hit, None, None)
        inputs_f = {x for x in node.input if x and types.get(x) == TensorProto.FLOAT}
        consumed |= inputs_f
        read |= inputs_f
    for node in nodes:  # the float Constant nodes they read (initializers of fp32 nodes stay fp32 anyway)
        if node.op_type == "Constant" and node.output[0] in read and types.get(node.output[0]) == TensorProto.FLOAT:
            kept[node.name] = _reason(node, "index_arithmetic", node.output[0], None, None)
    return {n.name: kept[n.name] for n in nodes if n.name in kept}  # in graph order


_INDEX_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8,
                          TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8,
                          TensorProto.BOOL})


def _reason(node: onnx.NodeProto, rule: str, tensor: str | None, value: float | None,
            limit: float | None) -> dict[str, Any]:
    return {"node": node.name, "op": node.op_type, "rule": rule, "tensor": tensor, "value": value, "limit": limit}


def activation_ranges(model: onnx.ModelProto, plan: Plan) -> tuple[dict[str, float], dict[str, Any]]:
    """max |x| (finite values) of every float tensor of the top-level graph over the validation inputs.

    The fp32 model runs once per validation sample on onnxruntime CPU, with a ``ReduceMax`` and a
    ``ReduceMin`` added per tensor as extra outputs (so no activation is kept in memory). Inputs come from the recipe's
    ``validate`` section (generators or data) at the opt shape: the same inputs validation uses.
    """
    from trtflow.passes.reference import reference_input
    from trtflow.validate.inputs import generate_inputs

    t0 = time.perf_counter()
    probe = infer_shapes(_copy(model))
    g = probe.graph
    types = value_types(g)
    tensors = [x for n in g.node for x in n.output if x and types.get(x) == TensorProto.FLOAT]
    names = NameGen(g)
    outputs = []
    for x in tensors:  # max and min, not max(|x|): two reductions and no full-size temporaries
        for op in ("ReduceMax", "ReduceMin"):
            r = names(f"{x}__{op}")
            g.node.append(helper.make_node(op, [x], [r], name=names(f"{op}_range"), keepdims=0))
            g.output.append(helper.make_tensor_value_info(r, TensorProto.FLOAT, []))
            outputs.append(r)
    v = plan.validate
    folder = Path(plan.recipe_path).parent
    n = len(load_data_samples(plan, folder)) if v.data else v.samples
    caller = [generate_inputs(plan, i, folder) for i in range(n)]
    feeds = [{t.source: reference_input(t, c[t.name]) for t in plan.inputs} for c in caller]
    from trtflow.backends.onnxruntime import run_model

    runs = run_model(probe, feeds, outputs)
    ranges = {x: max(max(_finite_abs(r[2 * k]), _finite_abs(r[2 * k + 1])) for r in runs) for k, x in enumerate(tensors)}
    for f in feeds:
        for name, arr in f.items():
            if arr.dtype == np.float32 and arr.size:
                finite = np.abs(arr[np.isfinite(arr)])
                ranges[name] = max(ranges.get(name, 0.0), float(finite.max()) if finite.size else 0.0)
    info = {"ran": True, "samples": n, "tensors": len(tensors), "seconds": round(time.perf_counter() - t0, 3),
            "inputs": "validate.data" if v.data else "validate generators, opt shape"}
    return ranges, info


def _finite_abs(v: Any) -> float:
    """|v| of a reduced max/min; an inf (or NaN) the fp32 model already has is no fp16 range problem."""
    f = float(v)
    return abs(f) if np.isfinite(f) else 0.0


def load_data_samples(plan: Plan, folder: Path) -> list[dict[str, np.ndarray]]:
    from trtflow.validate.inputs import load_data

    return load_data(plan, folder)


def activations_out_of_range(model: onnx.ModelProto, ranges: dict[str, float], data_max: float,
                             skip: set[str], block: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Top-level nodes with a float input or output whose measured max |x| is above ``data_max``."""
    inits = {i.name for i in model.graph.initializer}
    kept: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.name in skip or node.op_type in block:
            continue
        worst = max(((ranges[x], x) for x in (*node.input, *node.output) if x in ranges and x not in inits),
                    default=None)
        if worst is not None and worst[0] > data_max:
            kept[node.name] = _reason(node, "activation", worst[1], worst[0], data_max)
    return kept


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def fp32_nodes(model: onnx.ModelProto, plan: Plan | None, policy: Policy,
               block: frozenset[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every node fp16 lowering must keep in fp32 beyond the op block list, with its reason; and what the
    calibration run did. Rules in order (the first that applies is the one reported): named in the
    recipe, shape/index arithmetic, a weight out of range, an activation out of range on the calibration run."""
    kept = {n.name: _reason(n, "recipe", None, None, None) for _, n in all_nodes(model.graph)
            if n.op_type not in block and policy.names(n)}
    for name, why in index_arithmetic(model, block).items():
        kept.setdefault(name, why)
    for name, why in weights_out_of_range(model, policy, block).items():
        kept.setdefault(name, why)
    calibration: dict[str, Any] = {"ran": False, "why": "mixed_precision.calibrate is false"}
    if policy.data_max is None:
        calibration = {"ran": False, "why": "mixed_precision.data_max is null"}
    elif policy.calibrate and plan is not None:
        try:
            ranges, calibration = activation_ranges(model, plan)
        except TrtflowError as exc:  # no onnxruntime, an op it lacks, bad validation data
            calibration = {"ran": False, "why": str(exc).splitlines()[0]}
        else:
            found = activations_out_of_range(model, ranges, float(policy.data_max), set(kept), block)
            kept.update(found)
            if any(True for n in model.graph.node for _ in subgraphs(n)):
                calibration["note"] = "activations inside If/Loop/Scan bodies are not measured"
    elif plan is None:
        calibration = {"ran": False, "why": "no plan (no validation inputs)"}
    return kept, calibration


# -- shared -------------------------------------------------------------------------------------------
def refuse_external_data(model: onnx.ModelProto, precision: str) -> None:
    """Lowering rewrites weights; weights left in side files would silently keep their old dtype."""
    ext = [i.name for i in model.graph.initializer
           if i.data_location == TensorProto.EXTERNAL and i.data_type == TensorProto.FLOAT]
    if ext:
        raise ModelError(f"{precision} lowering needs the weights, but {len(ext)} float initializers are in "
                         f"external data (e.g. {ext[0]!r})",
                         hint="load the model with its external data before lowering, or export it at "
                              f"{precision} already")


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name: the converter derives cast names from node names, so two unnamed
    blocked nodes would otherwise both produce a tensor called ``_input_cast_0``."""
    names = NameGen(graph)
    seen: set[str] = set()
    for i, (_, node) in enumerate(all_nodes(graph)):  # subgraphs too: node_block_list matches by name
        if not node.name or node.name in seen:
            node.name = names(f"{node.op_type}_{i}")
        seen.add(node.name)


def value_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every typed tensor name in ``graph`` (inputs, value_info, outputs, initializers)."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*graph.input, *graph.value_info, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


# -- fp16 ---------------------------------------------------------------------------------------------
def to_fp16(model: onnx.ModelProto, plan: Plan | None = None) -> onnx.ModelProto:
    """fp16 with onnxconverter-common, float boundaries lowered too (see the module docstring); the nodes
    :func:`fp32_nodes` finds go to the converter's ``node_block_list``."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise BackendMissing("fp16 lowering needs onnxconverter-common",
                             hint=install_hint("lower")) from None
    refuse_external_data(model, "fp16")
    name_nodes(model.graph)
    policy = Policy.of(plan)
    block = frozenset((set(float16.DEFAULT_OP_BLOCK_LIST) - FP16_UNBLOCK) | FP16_EXTRA_BLOCK)
    kept, calibration = fp32_nodes(model, plan, policy, block)
    blocked = Blocked(block, frozenset(kept))
    counted = Counter(n.op_type for _, n in all_nodes(model.graph))
    op_kept = [_reason(n, "op_type", None, None, None) for _, n in all_nodes(model.graph) if n.op_type in block]
    opset = opset_of(model)
    float_weights = {k: v for g in all_graphs(model.graph, blocked)
                     for k, v in fixed_float_initializers(g, blocked, opset).items()}
    made_by = {x: (n.name, k) for n in model.graph.node for k, x in enumerate(n.output) if x}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = float16.convert_float_to_float16(model, keep_io_types=False, op_block_list=sorted(block),
                                               node_block_list=sorted(kept), max_finite_val=FP16_MAX,
                                               check_fp16_ready=False)
    # The converter warns per weight holding values it moves: tiny ones raised to 1e-7 (each such weight
    # passed the 1 % underflow rule above) and, for weights it converts anyway, huge ones cut to 65504.
    clamped = [str(w.message) for w in caught if "truncated" in str(w.message)]
    restore_captured_casts(out.graph, made_by)
    types, names = model_types(out.graph), NameGen(out.graph)
    for g in all_graphs(out.graph, blocked):  # the converter lowers If/Loop bodies too: fix them alike
        feed_blocked_bodies_fp32(g, blocked, types, names)
    toposort(out.graph)
    types = model_types(out.graph)
    for g in all_graphs(out.graph, blocked):
        retarget_casts(g, TensorProto.FLOAT16, types)
        split_shared_initializers(g, blocked, names)
        keep_float_slots(g, float_weights, blocked, opset, types, names)
    bypass_cast_roundtrips(out.graph)
    drop_unused_initializers(out.graph)  # fp16 copies of weights that only fed fixed-float slots
    summary = {
        "precision": "fp16", "policy": policy.to_dict(), "nodes": sum(counted.values()),
        "kept_fp32": len(kept) + len(op_kept),
        "by_rule": dict(Counter(k["rule"] for k in (*kept.values(), *op_kept))),
        "kept": [*kept.values(), *op_kept], "calibration": calibration,
        "clamped_weights": len(clamped),
    }
    message = _summary_line(summary)
    if clamped:
        message += (f"; {len(clamped)} weights in fp16 have tiny values raised to 1e-7 or huge ones cut to 65504, "
                    f"each under the kept-fp32 thresholds (e.g. {clamped[0]})")
    note(message, mixed_precision=summary)
    return out


@dataclass(frozen=True)
class Blocked:
    """Nodes the converter leaves fp32: by op type, or by name."""

    ops: frozenset[str]
    nodes: frozenset[str] = frozenset()

    def __contains__(self, node: object) -> bool:
        return isinstance(node, onnx.NodeProto) and (node.op_type in self.ops or node.name in self.nodes)


def _summary_line(summary: dict[str, Any]) -> str:
    from trtflow.display import mixed_precision_line

    line = mixed_precision_line(summary)
    cal = summary["calibration"]
    if cal.get("ran"):
        line += f"; calibration: {cal['samples']} sample(s), {cal['tensors']} tensors, {cal['seconds']:.2f} s"
    else:
        line += f"; activation ranges not measured ({cal.get('why')})"
    return line


def bypass_cast_roundtrips(graph: onnx.GraphProto) -> None:
    """Keep fp32 tensors fp32 between fp32 nodes, and at the graph boundary next to them.

    The converter wraps each blocked node in Cast(fp32->fp16) after it and Cast(fp16->fp32) before the
    next; two blocked nodes in a row pass their tensor through fp16 (it removes the pair only when the
    tensor has a single reader), which defeats keeping them fp32: 9.8e7 overflows on the way. Here a
    Cast(to=fp32) of a Cast(to=fp16) of an fp32 tensor reads the fp32 tensor; a graph input read only
    through Cast(to=fp32) stays fp32; a graph output made by Cast(to=fp16) of an fp32 tensor becomes
    that fp32 tensor. The I/O contract passes then add the one boundary cast the plan asks for.
    """
    types, names = model_types(graph), NameGen(graph)
    producer = {x: n for g in all_graphs(graph) for n in g.node for x in n.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto | None, to: int) -> bool:
        return node is not None and node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)

    for g in all_graphs(graph):  # interior, If/Loop bodies included: fp32 -> fp16 -> fp32
        body_outputs = {o.name for o in g.output}
        for node in g.node:
            if not cast_to(node, TensorProto.FLOAT) or node.output[0] in body_outputs:
                continue
            inner = producer.get(node.input[0])
            if cast_to(inner, TensorProto.FLOAT16) and types.get(inner.input[0]) == TensorProto.FLOAT:  # type: ignore[union-attr]
                replace_uses(g, node.output[0], inner.input[0])  # type: ignore[union-attr]
    for vi in graph.input:  # inputs read only as fp32
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        readers = [n for n in graph.node if vi.name in n.input]
        if readers and all(cast_to(n, TensorProto.FLOAT) for n in readers) and not _captured(graph, vi.name):
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
            for n in readers:
                replace_uses(graph, n.output[0], vi.name)
    for vi in graph.output:  # outputs made fp16 from an fp32 tensor
        cast = producer.get(vi.name)
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT16 or not cast_to(cast, TensorProto.FLOAT16):
            continue
        src = cast.input[0]  # type: ignore[union-attr]
        if types.get(src) != TensorProto.FLOAT or src in outputs or any(i.name == src for i in graph.input):
            continue
        low = names(f"{vi.name}__fp16")
        cast.output[0] = low  # type: ignore[union-attr]
        replace_uses(graph, vi.name, low)  # fp16 readers inside the graph keep their fp16 copy
        rename_tensor(graph, src, vi.name)
        for k in reversed([k for k, v in enumerate(graph.value_info) if v.name == vi.name]):
            del graph.value_info[k]
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for g in all_graphs(graph):
        _drop_dead_casts(g)


def restore_captured_casts(graph: onnx.GraphProto, made_by: dict[str, tuple[str, int]]) -> None:
    """Put back the Cast(fp32->fp16) after a blocked node that an If/Loop body still reads.

    The converter renames a blocked node's output ``x`` to ``<node>_output_cast_<k>`` and casts it back
    to ``x``; when the only top-level reader of ``x`` is another blocked node it drops that cast pair,
    not seeing that a subgraph captures ``x`` too, which leaves the body reading a tensor nobody makes.
    """
    from trtflow.passes.normalize import used_names

    made = {x for n in graph.node for x in n.output} | {v.name for v in graph.input} | {i.name for i in graph.initializer}
    captured = {x for n in graph.node for g in subgraphs(n) for x in used_names(g)}
    names = NameGen(graph)
    for x in sorted(captured - made):
        if x not in made_by:
            continue
        node, k = made_by[x]
        src = f"{node}_output_cast_{k}"
        if src in made:
            graph.node.append(cast_node(src, x, TensorProto.FLOAT16, names(f"{node}_output_cast{k}")))


def feed_blocked_bodies_fp32(graph: onnx.GraphProto, blocked: Blocked, types: dict[str, int] | None = None,
                             names: NameGen | None = None) -> None:
    """An If/Loop kept fp32 keeps its bodies fp32 (the converter does not enter them), but the outer
    tensors they capture were lowered: cast those back to fp32 for them."""
    from trtflow.passes.normalize import used_names

    types, names = types or value_types(graph), names or NameGen(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        bodies = list(subgraphs(node)) if node in blocked else []
        for x in sorted({x for g in bodies for x in used_names(g)}):
            if types.get(x) != TensorProto.FLOAT16 or any(_declares_name(g, x) for g in bodies):
                continue
            wide = names(f"{x}__fp32")
            nodes.append(cast_node(x, wide, TensorProto.FLOAT, names(f"Cast_{wide}")))
            for g in bodies:
                replace_uses(g, x, wide)
        nodes.append(node)
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)


def _declares_name(graph: onnx.GraphProto, name: str) -> bool:
    return (any(v.name == name for v in graph.input) or any(i.name == name for i in graph.initializer)
            or any(name in n.output for n in graph.node))


def toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after the producers of what it reads, tensors its subgraphs capture from
    the outer scope included (the converter's sort looks at ``node.input`` only, and can put an ``If``
    before the node making a tensor one of its branches reads). Stable: sorted graphs keep their order."""
    from trtflow.passes.normalize import used_names

    for node in graph.node:
        for g in subgraphs(node):
            toposort(g)
    nodes = list(graph.node)
    producer = {x: i for i, n in enumerate(nodes) for x in n.output if x}
    needs = []
    for i, n in enumerate(nodes):
        reads = set(n.input) | {x for g in subgraphs(n) for x in used_names(g)}
        needs.append({producer[x] for x in reads if x in producer and producer[x] != i})
    done: set[int] = set()
    order: list[int] = []
    while len(order) < len(nodes):
        ready = [i for i in range(len(nodes)) if i not in done and needs[i] <= done]
        if not ready:  # a cycle (or a tensor read before any producer): leave the rest as it was
            order += [i for i in range(len(nodes)) if i not in done]
            break
        order.append(ready[0])
        done.add(ready[0])
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every reader of ``old`` (subgraphs that capture it included) reads ``new``; producers untouched."""
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new
        for g in subgraphs(node):
            if not any(v.name == old for v in g.input) and not any(old in n.output for n in g.node):
                replace_uses(g, old, new)


def _captured(graph: onnx.GraphProto, name: str) -> bool:
    """Whether a subgraph reads ``name`` from the outer scope."""
    from trtflow.passes.normalize import used_names

    return any(name in used_names(g) for n in graph.node for g in subgraphs(n))


def _drop_dead_casts(graph: onnx.GraphProto) -> None:
    from trtflow.passes.normalize import used_names

    while True:
        used = used_names(graph)
        dead = [k for k, n in enumerate(graph.node) if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return
        for k in reversed(dead):
            del graph.node[k]


def fixed_float_slots(node: onnx.NodeProto, opset: int) -> list[int]:
    """Positions of the node's inputs that ONNX types as float32 whatever T is (Resize roi/scales)."""
    if node.domain not in ("", "ai.onnx"):
        return []
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return []
    slots = _formal_types(schema.inputs, len(node.input))
    return [k for k, t in enumerate(slots) if t == "tensor(float)" and node.input[k]]


def fixed_float_initializers(graph: onnx.GraphProto, block: Blocked, opset: int) -> dict[str, TensorProto]:
    """Copies of the fp32 weights feeding fixed-float slots of unblocked nodes, taken before conversion."""
    inits = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    wanted = {node.input[k] for node in graph.node if node not in block
              for k in fixed_float_slots(node, opset)}
    out = {}
    for name in wanted & set(inits):
        out[name] = TensorProto()
        out[name].CopyFrom(inits[name])
    return out


def keep_float_slots(graph: onnx.GraphProto, originals: dict[str, TensorProto], block: Blocked, opset: int,
                     types: dict[str, int] | None = None, names: NameGen | None = None) -> None:
    """Feed fixed-float slots the converter turned fp16: the original fp32 weight, or a Cast.
    ``types``/``names``: the whole model's, for a subgraph (its captures are typed outside it)."""
    types, names = types or value_types(graph), names or NameGen(graph)
    fp32: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for k in fixed_float_slots(node, opset) if node not in block else []:
            x = node.input[k]
            if types.get(x) != TensorProto.FLOAT16:
                continue
            if x not in fp32:
                fp32[x] = names(f"{x}__fp32")
                if x in originals:
                    weight = TensorProto()
                    weight.CopyFrom(originals[x])
                    weight.name = fp32[x]
                    graph.initializer.append(weight)
                else:
                    nodes.append(cast_node(x, fp32[x], TensorProto.FLOAT, names(f"Cast_{fp32[x]}")))
            node.input[k] = fp32[x]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def retarget_casts(graph: onnx.GraphProto, low: int, types: dict[str, int] | None = None) -> None:
    """``Cast(to=float)`` whose output the converter retyped to fp16 must cast to fp16 (the converter
    retypes value_info, never a Cast's ``to``; in If/Loop bodies as at the top)."""
    types = types or value_types(graph)
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        to = next(a for a in node.attribute if a.name == "to")
        if to.i == TensorProto.FLOAT and types.get(node.output[0]) == low:
            to.i = low


def split_shared_initializers(graph: onnx.GraphProto, block: Blocked, names: NameGen | None = None) -> None:
    """Give unblocked consumers of an fp32 initializer (left fp32 for a blocked consumer) an fp16 copy."""
    fp32 = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    names = names or NameGen(graph)
    copies: dict[str, str] = {}
    for node in graph.node:
        if node in block or node.op_type == "Cast":
            continue
        for k, x in enumerate(node.input):
            if x not in fp32:
                continue
            if x not in copies:
                copies[x] = names(f"{x}__fp16")
                arr = numpy_helper.to_array(fp32[x]).clip(-FP16_MAX, FP16_MAX).astype("float16")
                graph.initializer.append(numpy_helper.from_array(arr, copies[x]))
            node.input[k] = copies[x]


# -- bf16 ---------------------------------------------------------------------------------------------
def to_bf16(model: onnx.ModelProto, plan: Plan | None = None) -> onnx.ModelProto:
    """bf16 lowering: every op whose ONNX schema accepts bfloat16 runs in bf16, the rest stay fp32.

    The schema decides per node and per input slot (e.g. Resize's ``scales`` is always float), so the
    result passes ``onnx.checker`` by construction. Models below opset 22 are upgraded first, because
    Conv and pooling accept bfloat16 only from opset 22. onnxruntime's CPU provider has almost no bf16
    kernels: a bf16 model is meant for TensorRT, and checked here with onnx's reference evaluator.
    """
    refuse_external_data(model, "bf16")
    if any(True for n in model.graph.node for _ in subgraphs(n)):
        raise ModelError("bf16 lowering does not handle control flow (If/Loop/Scan) yet",
                         hint="use precision: fp16, or fp32")
    if opset_of(model) < BF16_MIN_OPSET:
        model = upgrade_opset(model, BF16_MIN_OPSET)
    decompose_hardswish(model.graph)
    model = infer_shapes(model)
    name_nodes(model.graph)
    return _Bf16Lowering(model, Policy.of(plan)).run()


def decompose_hardswish(graph: onnx.GraphProto) -> None:
    """HardSwish(x) -> Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5)), its ONNX definition.

    TensorRT's (and TensorRT-RTX 1.7's) ONNX importer refuses bf16 HardSwish but takes bf16
    HardSigmoid and Mul; decomposing keeps MobileNetV3-style nets in bf16 instead of casting around
    every activation.
    """
    names = NameGen(graph)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if node.op_type != "HardSwish" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        gate = names(f"{node.output[0]}__hardsigmoid")
        nodes.append(helper.make_node("HardSigmoid", [node.input[0]], [gate], name=names(f"{node.name}__gate"),
                                      alpha=1.0 / 6.0, beta=0.5))
        nodes.append(helper.make_node("Mul", [node.input[0], gate], [node.output[0]], name=node.name or names("Mul")))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        note(f"{count} HardSwish decomposed into HardSigmoid * x (no bf16 HardSwish in TensorRT's importer)")


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    before = opset_of(model)
    try:
        out = version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001 - the converter raises several types
        raise ModelError(f"could not upgrade the model from opset {before} to {opset} for bf16: {exc}",
                         hint=f"export the model at opset {opset}, or use precision: fp16") from None
    note(f"opset upgraded {before} -> {opset} (bfloat16 Conv/pooling need opset {opset})")
    return out


class _Bf16Lowering:
    """One use: decides a dtype per (node, slot), converts weights, inserts the casts between."""

    def __init__(self, model: onnx.ModelProto, policy: Policy) -> None:
        self.model, self.graph, self.policy = model, model.graph, policy
        self.opset = opset_of(model)
        self.types = value_types(self.graph)
        self.names = NameGen(self.graph)
        self.index = index_arithmetic(model, BF16_BLOCK)  # bf16 holds integers exactly only up to 256

    def slot_kinds(self, node: onnx.NodeProto) -> _Kinds:
        """Per actual input/output: 'bf16' or 'fp32' for float tensors, None for anything else."""
        ins = [self.types.get(x) == TensorProto.FLOAT if x else False for x in node.input]
        outs = [self.types.get(x) == TensorProto.FLOAT if x else False for x in node.output]
        missing = [x for x in (*node.input, *node.output) if x and x not in self.types]
        if missing:
            raise ModelError(f"bf16 lowering needs the dtype of every tensor; shape inference could not type "
                             f"{missing[0]!r} (node {node.name!r}, {node.op_type})",
                             hint="fix the model's value_info, or use precision: fp16")
        schema = self.schema(node)
        if schema is None:
            return [("fp32" if f else None) for f in ins], [("fp32" if f else None) for f in outs]
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        in_slots = _formal_types(schema.inputs, len(node.input))
        out_slots = _formal_types(schema.outputs, len(node.output))
        symbols = {s for s, f in zip(in_slots + out_slots, ins + outs) if f and s in allowed}
        lowers = bool(symbols) and all(_BF16 in allowed[s] for s in symbols)

        def kind(slot: str, is_float: bool) -> str | None:
            if not is_float:
                return None
            return "bf16" if lowers and slot in allowed else "fp32"

        return [kind(s, f) for s, f in zip(in_slots, ins)], [kind(s, f) for s, f in zip(out_slots, outs)]

    def schema(self, node: onnx.NodeProto) -> onnx.defs.OpSchema | None:
        """The node's schema at the model's opset, or None when it must stay fp32 as a whole."""
        if (node.op_type in BF16_BLOCK or node.domain not in ("", "ai.onnx") or self.policy.names(node)
                or node.name in self.index):
            return None
        if any(a.name == "dtype" for a in node.attribute):
            return None  # output type fixed by an attribute we would have to rewrite
        try:
            return onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return None

    def run(self) -> onnx.ModelProto:
        g = self.graph
        kinds = [self.slot_kinds(n) for n in g.node]  # by position: protobuf wrappers have no stable id
        home = self.homes(kinds)
        self.convert_initializers(kinds, home)
        new_nodes: list[onnx.NodeProto] = []
        casts: dict[tuple[str, int], str] = {}
        for node, (ins, outs) in zip(g.node, kinds):
            for k, (x, kind) in enumerate(zip(node.input, ins)):
                want = _elem(kind)
                if want is not None and home.get(x, want) != want:
                    key = (x, want)
                    if key not in casts:
                        casts[key] = self.names(f"{x}__to_{'bf16' if want == TensorProto.BFLOAT16 else 'fp32'}")
                        new_nodes.append(cast_node(x, casts[key], want, self.names(f"Cast_{casts[key]}")))
                    node.input[k] = casts[key]
            self.retarget_attributes(node, outs)
            new_nodes.append(node)
        del g.node[:]
        g.node.extend(new_nodes)
        for vi in (*g.input, *g.value_info, *g.output):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT and home.get(vi.name) == TensorProto.BFLOAT16:
                vi.type.tensor_type.elem_type = TensorProto.BFLOAT16
        lowered = sum(1 for _, outs in kinds if "bf16" in outs)
        kept = [self.index.get(node.name) or _reason(node, "recipe" if self.policy.names(node) else "op_type",
                                                     None, None, None)
                for node, (ins, outs) in zip(g.node, kinds)
                if "fp32" in (*ins, *outs) and "bf16" not in (*ins, *outs)
                and (node.op_type != "Cast" or node.name in self.index)]
        summary = {"precision": "bf16", "policy": self.policy.to_dict(), "nodes": len(g.node) - len(casts),
                   "kept_fp32": len(kept), "by_rule": dict(Counter(k["rule"] for k in kept)), "kept": kept,
                   "calibration": {"ran": False, "why": "bf16 has fp32's range: no range rules"}}
        note(f"{lowered} nodes run in bf16; {len(casts)} casts inserted; " + _summary_line(summary).split("; ")[0],
             mixed_precision=summary)
        return self.model

    def homes(self, kinds: list[_Kinds]) -> dict[str, int]:
        """The dtype each float tensor has after lowering: graph inputs bf16, node outputs by slot."""
        home: dict[str, int] = {vi.name: TensorProto.BFLOAT16 for vi in self.graph.input
                if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
        for node, (_, outs) in zip(self.graph.node, kinds):
            for x, kind in zip(node.output, outs):
                if kind is not None:
                    home[x] = _elem(kind)  # type: ignore[assignment]
        return home

    def convert_initializers(self, kinds: list[_Kinds], home: dict[str, int]) -> None:
        """fp32 weights read by bf16 slots become bf16; a weight read by both kinds gets a bf16 copy."""
        fp32 = {i.name: i for i in self.graph.initializer if i.data_type == TensorProto.FLOAT}
        readers: dict[str, set[str]] = {}
        for node, (ins, _) in zip(self.graph.node, kinds):
            for x, kind in zip(node.input, ins):
                if x in fp32 and kind is not None:
                    readers.setdefault(x, set()).add(kind)
        for name, who in readers.items():
            if "bf16" not in who:
                home[name] = TensorProto.FLOAT
                continue
            bf16 = _bf16_tensor(fp32[name], name if who == {"bf16"} else self.names(f"{name}__bf16"))
            if who == {"bf16"}:
                fp32[name].CopyFrom(bf16)
                home[name] = TensorProto.BFLOAT16
            else:
                self.graph.initializer.append(bf16)
                home[name] = TensorProto.FLOAT
                home[bf16.name] = TensorProto.BFLOAT16
                for node, (ins, _) in zip(self.graph.node, kinds):
                    for k, (x, kind) in enumerate(zip(node.input, ins)):
                        if x == name and kind == "bf16":
                            node.input[k] = bf16.name

    @staticmethod
    def retarget_attributes(node: onnx.NodeProto, outs: list[str | None]) -> None:
        """Cast's ``to`` and ConstantOfShape/Constant ``value`` decide the output type: follow the slot."""
        if not outs or outs[0] != "bf16":
            return
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.BFLOAT16
            elif attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(_bf16_tensor(attr.t, attr.t.name))


def _formal_types(formals: Sequence[onnx.defs.OpSchema.FormalParameter], n: int) -> list[str]:
    """Type string of each of ``n`` actual parameters (the last formal may be variadic)."""
    if not formals:
        return [""] * n
    return [formals[min(i, len(formals) - 1)].type_str for i in range(n)]


def _elem(kind: str | None) -> int | None:
    return {"bf16": TensorProto.BFLOAT16, "fp32": TensorProto.FLOAT}.get(kind or "")


def _bf16_tensor(t: TensorProto, name: str) -> TensorProto:
    import ml_dtypes  # onnx depends on it; numpy has no bfloat16

    return numpy_helper.from_array(numpy_helper.to_array(t).astype(ml_dtypes.bfloat16), name)
