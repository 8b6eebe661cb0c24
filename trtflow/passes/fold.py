"""Pass ``fold_shapes``: shape arithmetic on static shapes becomes constants.

Exporters write ``Resize(x, sizes=Concat(Slice(Shape(x), 0, 2), [65, 65]))`` even when every shape
is static. Engines that run such a chain on the device and read the result on the host (onnx2torch's
Resize calls ``sizes.tolist()``) sync the host with the GPU inside every enqueue and cannot be
captured into a CUDA graph. Folding the chain leaves them plain constants.

* A ``Shape`` becomes an int64 initializer when every dim it returns is a number in the inferred
  shape of its input (``start``/``end`` honoured, opset 15+: ``Shape(x, start=1)`` of an
  ``[N,3,4,4]`` tensor folds to ``[3,4,4]``). A symbolic or unknown dim is never folded, so a
  dynamic-batch model keeps its ``Shape`` on the batch dim.
* Then, in graph order, every node whose inputs are all initializers is evaluated once with
  ``onnx.reference.ReferenceEvaluator`` and replaced by its results, unless: it is random or
  quantization (Q/DQ must stay for TensorRT's int8), has a subgraph, is not in the default domain,
  produces a graph output, reads a tensor whose data lives in an external file, or would produce more
  than :data:`MAX_ELEMENTS` elements.
* An ``If`` whose condition became a constant (a shape test on static dims, a comparison with an
  input the recipe fixed) is replaced by the nodes of the branch taken, and folding runs again on them.
* Nodes nothing reads any more and unused initializers are removed; shapes are re-inferred.

What was folded (counts per op) goes into the pass record as a note.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from trtflow.passes._graph import DimValue, all_names, const, note, opset_of, subgraphs, value_info_dims
from trtflow.passes.normalize import (
    constants_to_initializers,
    drop_unused_initializers,
    infer_shapes,
    used_names,
)
from trtflow.plan.model import Plan

MAX_ELEMENTS = 1 << 20  # a folded result larger than this stays computed (weights would balloon)
NON_DETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})
# DequantizeLinear(int8 weight) must stay: TensorRT builds int8 kernels from the Q/DQ pattern.
KEEP = NON_DETERMINISTIC | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant"}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def known_dims(graph: onnx.GraphProto) -> dict[str, list[DimValue]]:
    """Tensor name -> its dims (int, symbolic name or None), for tensors of known rank."""
    dims: dict[str, list[DimValue]] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims[vi.name] = value_info_dims(vi)
    for init in graph.initializer:
        dims[init.name] = [int(d) for d in init.dims]
    return dims


def shape_slice(dims: list[DimValue], node: onnx.NodeProto, opset: int) -> np.ndarray | None:
    """What ``Shape(x)`` returns for x of ``dims`` (``start``/``end`` from opset 15 on), or None when a
    dim in that range is symbolic or unknown."""
    rank = len(dims)
    start, end = 0, rank
    if opset >= 15:
        for attr in node.attribute:
            if attr.name == "start":
                start = int(attr.i)
            elif attr.name == "end":
                end = int(attr.i)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    picked = dims[start:end]
    if not all(isinstance(d, int) for d in picked):
        return None
    return np.array(picked, dtype=np.int64)


def _evaluate(node: onnx.NodeProto, inputs: dict[str, TensorProto], model: onnx.ModelProto) -> list[np.ndarray] | None:
    """Run ``node`` alone on its constant inputs with the reference evaluator; None when it cannot."""
    from onnx.reference import ReferenceEvaluator

    names = [x for x in node.input if x]
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(x, inputs[x].data_type, list(inputs[x].dims)) for x in dict.fromkeys(names)],
        [helper.make_empty_tensor_value_info(y) for y in node.output if y])
    one = helper.make_model(graph, opset_imports=list(model.opset_import))
    one.ir_version = model.ir_version
    try:
        feeds = {x: numpy_helper.to_array(inputs[x]) for x in dict.fromkeys(names)}
        results = ReferenceEvaluator(one).run(None, feeds)
    except Exception:  # noqa: BLE001 - an op the reference cannot run is simply left in the graph
        return None
    return [np.asarray(r) for r in results]


def fold_shapes(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Static ``Shape`` -> initializer, constant-fold what depends only on initializers, inline Ifs
    whose condition folded; repeated while an inlined branch gives more to fold."""
    decided = {name: branch == "then" for name, branch in (plan.if_branches if plan is not None else {}).items()}
    folded: Counter[str] = Counter()
    inlined: list[str] = []
    for _ in range(8):  # If nesting depth we follow; each round inlines one level
        step = _fold_once(model)
        folded += step
        taken = inline_constant_ifs(model.graph, decided)
        inlined += taken
        if not taken:
            break
        constants_to_initializers(model.graph)
        model = infer_shapes(model)
    if not folded and not inlined:
        return model
    graph = model.graph
    dead = drop_dead_nodes(graph)
    unused = drop_unused_initializers(graph)
    consts = {i.name for i in graph.initializer}
    known = {x for n in graph.node for x in (*n.input, *n.output)} | consts
    stale = [vi for vi in graph.value_info if vi.name not in known or vi.name in consts]
    for vi in stale:
        graph.value_info.remove(vi)
    if folded:
        note("folded to constants: " + ", ".join(f"{op} {n}" for op, n in sorted(folded.items())) +
             f"; dead nodes removed: {sum(dead.values())}; unused initializers dropped: {unused}")
    if inlined:
        note(f"If with a constant condition replaced by the branch taken: {', '.join(inlined[:6])}"
             + (f" and {len(inlined) - 6} more" if len(inlined) > 6 else ""))
    return infer_shapes(model)


def _fold_once(model: onnx.ModelProto) -> Counter[str]:
    graph = model.graph
    opset = opset_of(model)
    shapes = known_dims(graph)
    elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.value_info
                  if vi.type.HasField("tensor_type")}
    consts = {i.name: i for i in graph.initializer if not uses_external_data(i)}
    outputs = {o.name for o in graph.output}
    folded: Counter[str] = Counter()
    keep: list[onnx.NodeProto] = []
    for node in graph.node:  # graph order is topological: a folded result is seen by its readers
        values = _fold(node, consts, shapes, elem_types, outputs, opset, model)
        if values is None:
            keep.append(node)
            continue
        for name, value in zip([y for y in node.output if y], values):
            tensor = const(name, value)
            graph.initializer.append(tensor)
            consts[name] = tensor
        folded[node.op_type] += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
    return folded


def inline_constant_ifs(graph: onnx.GraphProto, decided: dict[str, bool] | None = None) -> list[str]:
    """Replace each top-level ``If`` whose condition is an initializer, or which the planner decided for
    the whole profile (``decided``: node name -> then?, from ``plan.if_branches``), by the taken branch's
    nodes (outputs renamed where they would collide with the graph's names); returns the Ifs' names."""
    consts = {i.name: i for i in graph.initializer if not uses_external_data(i)}
    decided = decided or {}
    counts = Counter(n.name for n in graph.node)
    taken: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "If" or not node.input:
            nodes.append(node)
            continue
        cond = consts.get(node.input[0])
        value = numpy_helper.to_array(cond).reshape(-1) if cond is not None else None
        if value is not None and value.size == 1:
            then = bool(value[0])
        elif node.name in decided and counts[node.name] == 1:
            then = decided[node.name]
        else:
            nodes.append(node)
            continue
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if then else "else_branch"))
        nodes += _inlined(branch, node, graph)
        taken.append(node.name or node.output[0])
    if taken:
        del graph.node[:]
        graph.node.extend(nodes)
    return taken


def _inlined(branch: onnx.GraphProto, node: onnx.NodeProto, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The branch's nodes for the outer graph, then one Identity per If output."""
    outer = {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)} | {i.name for i in graph.initializer}
    for other in graph.node:
        if other is not node:
            outer |= {*other.input, *other.output} | {x for g in subgraphs(other) for x in all_names(g)}
    local = {i.name for i in branch.initializer} | {y for n in branch.node for y in n.output if y}
    rename = {}
    for name in sorted(local & outer):
        new, k = f"{name}__{node.name or 'if'}", 1
        while new in outer or new in local:
            new, k = f"{name}__{node.name or 'if'}_{k}", k + 1
        rename[name] = new
    out: list[onnx.NodeProto] = []
    for init in branch.initializer:
        t = TensorProto()
        t.CopyFrom(init)
        t.name = rename.get(t.name, t.name)
        graph.initializer.append(t)
    for n in branch.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        for i, x in enumerate(m.input):
            m.input[i] = rename.get(x, x)
        for i, y in enumerate(m.output):
            m.output[i] = rename.get(y, y)
        for g in subgraphs(m):
            _rename_reads(g, rename)
        out.append(m)
    for src, dst in zip(branch.output, node.output):
        out.append(helper.make_node("Identity", [rename.get(src.name, src.name)], [dst],
                                    name=f"{node.name or 'if'}/{dst}/taken"))
    return out


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Outer-scope names a nested subgraph reads follow the rename (names it defines itself shadow)."""
    own = {i.name for i in (*graph.input, *graph.initializer)} | {y for n in graph.node for y in n.output}
    local = {k: v for k, v in rename.items() if k not in own}
    for n in graph.node:
        for i, x in enumerate(n.input):
            n.input[i] = local.get(x, x)
        for g in subgraphs(n):
            _rename_reads(g, local)
    for o in graph.output:
        o.name = local.get(o.name, o.name)


def _fold(node: onnx.NodeProto, consts: dict[str, TensorProto], shapes: dict[str, list[DimValue]],
          elem_types: dict[str, int], outputs: set[str], opset: int,
          model: onnx.ModelProto) -> list[np.ndarray] | None:
    if node.domain not in _DEFAULT_DOMAINS or node.op_type in KEEP or any(True for _ in subgraphs(node)):
        return None
    if not node.input or any(y in outputs for y in node.output):
        return None
    if node.op_type == "Shape":
        dims = shapes.get(node.input[0])
        value = None if dims is None else shape_slice(dims, node, opset)
        return None if value is None else [value]
    if not all(x in consts for x in node.input if x):
        return None
    if sum(int(np.prod(consts[x].dims, dtype=np.int64)) for x in set(node.input) if x) > 16 * MAX_ELEMENTS:
        return None  # don't decode huge weights just to find the result is too big
    values = _evaluate(node, consts, model)
    if values is None or len(values) != len([y for y in node.output if y]):
        return None
    for name, value in zip((y for y in node.output if y), values):
        if value.size > MAX_ELEMENTS or value.dtype == object:
            return None
        want = elem_types.get(name)
        if want and helper.np_dtype_to_tensor_dtype(value.dtype) != want:
            return None  # the reference disagrees with inference on the dtype: leave the node be
    return values


def drop_dead_nodes(graph: onnx.GraphProto) -> Counter[str]:
    """Remove nodes none of whose outputs is read (by a node, a subgraph or a graph output)."""
    removed: Counter[str] = Counter()
    while True:
        used = used_names(graph)
        keep = [n for n in graph.node if any(y and y in used for y in n.output)]
        if len(keep) == len(graph.node):
            return removed
        removed.update(n.op_type for n in graph.node if not any(y and y in used for y in n.output))
        del graph.node[:]
        graph.node.extend(keep)
