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
lowered too, which is why it blocks Resize altogether. bf16 has no converter there: :func:`to_bf16`
is a small schema-driven lowering of our own, checked against TensorRT-RTX's parser.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import BackendMissing, ModelError
from trtflow.extras import install_hint
from trtflow.passes._graph import NameGen, cast_node, note, opset_of, subgraphs
from trtflow.passes.normalize import drop_unused_initializers, infer_shapes
from trtflow.plan.model import Plan

# Kept in fp32 on top of the converter's defaults (Resize, TopK, Range, CumSum, Min, Max, NMS, ...):
# ops whose fp16 result overflows (65504) for ordinary inputs.
FP16_EXTRA_BLOCK = frozenset({"Pow", "Exp", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd"})
# The converter blocks Resize only because its `roi`/`scales` inputs are float32 in every opset;
# keep_float_slots keeps exactly those inputs fp32, so Resize itself (LRASPP's full-resolution
# upsample, the biggest tensor of the net) runs in fp16.
FP16_UNBLOCK = frozenset({"Resize"})
# fp16 weights: the converter's default clamp of 1e4 would cut representable values; 65504 is fp16's max.
FP16_MAX = 65504.0

# bf16 has fp32's range, so only ops that compute indices/geometry or draw random numbers stay fp32.
BF16_BLOCK = frozenset({"NonMaxSuppression", "RoiAlign", "Range", "CumSum", "RandomNormal", "RandomUniform",
                        "RandomNormalLike", "RandomUniformLike", "EyeLike", "Multinomial", "Bernoulli"})
BF16_MIN_OPSET = 22  # Conv, pooling, HardSwish, ... accept bfloat16 from opset 22 on
_BF16 = "tensor(bfloat16)"
_Kinds = tuple[list[str | None], list[str | None]]  # per input, per output: 'bf16', 'fp32' or None


def precision(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Lower to ``plan.precision`` (fp16/bf16); fp32 and tf32 leave the graph as it is."""
    if plan.precision == "fp16":
        return to_fp16(model)
    if plan.precision == "bf16":
        return to_bf16(model)
    return model


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
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = names(f"{node.op_type}_{i}")
        seen.add(node.name)


def value_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every typed tensor name in ``graph`` (inputs, value_info, outputs, initializers)."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*graph.input, *graph.value_info, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


# -- fp16 ---------------------------------------------------------------------------------------------
def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 with onnxconverter-common, float boundaries lowered too (see the module docstring)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise BackendMissing("fp16 lowering needs onnxconverter-common",
                             hint=install_hint("lower")) from None
    refuse_external_data(model, "fp16")
    name_nodes(model.graph)
    block = sorted((set(float16.DEFAULT_OP_BLOCK_LIST) - FP16_UNBLOCK) | FP16_EXTRA_BLOCK)
    opset = opset_of(model)
    float_weights = fixed_float_initializers(model.graph, frozenset(block), opset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = float16.convert_float_to_float16(model, keep_io_types=False, op_block_list=block,
                                               max_finite_val=FP16_MAX, check_fp16_ready=False)
    clamped = [str(w.message) for w in caught if "truncated" in str(w.message)]
    if clamped:
        note(f"{len(clamped)} weight tensors had values clamped into fp16's range (e.g. {clamped[0]})")
    retarget_casts(out.graph, TensorProto.FLOAT16)
    split_shared_initializers(out.graph, frozenset(block))
    keep_float_slots(out.graph, float_weights, frozenset(block), opset)
    drop_unused_initializers(out.graph)  # fp16 copies of weights that only fed fixed-float slots
    kept = sorted({n.op_type for n in out.graph.node if n.op_type in block})
    if kept:
        note(f"kept in fp32: {', '.join(kept)}")
    return out


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


def fixed_float_initializers(graph: onnx.GraphProto, block: frozenset[str], opset: int) -> dict[str, TensorProto]:
    """Copies of the fp32 weights feeding fixed-float slots of unblocked nodes, taken before conversion."""
    inits = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    wanted = {node.input[k] for node in graph.node if node.op_type not in block
              for k in fixed_float_slots(node, opset)}
    out = {}
    for name in wanted & set(inits):
        out[name] = TensorProto()
        out[name].CopyFrom(inits[name])
    return out


def keep_float_slots(graph: onnx.GraphProto, originals: dict[str, TensorProto], block: frozenset[str],
                     opset: int) -> None:
    """Feed fixed-float slots the converter turned fp16: the original fp32 weight, or a Cast."""
    types, names = value_types(graph), NameGen(graph)
    fp32: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for k in fixed_float_slots(node, opset) if node.op_type not in block else []:
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


def retarget_casts(graph: onnx.GraphProto, low: int) -> None:
    """``Cast(to=float)`` whose output the converter retyped to fp16 must cast to fp16."""
    types = value_types(graph)
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        to = next(a for a in node.attribute if a.name == "to")
        if to.i == TensorProto.FLOAT and types.get(node.output[0]) == low:
            to.i = low


def split_shared_initializers(graph: onnx.GraphProto, block: frozenset[str]) -> None:
    """Give unblocked consumers of an fp32 initializer (left fp32 for a blocked consumer) an fp16 copy."""
    fp32 = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    names = NameGen(graph)
    copies: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in block or node.op_type == "Cast":
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
def to_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
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
    return _Bf16Lowering(model).run()


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

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.graph = model, model.graph
        self.opset = opset_of(model)
        self.types = value_types(self.graph)
        self.names = NameGen(self.graph)

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
        if node.op_type in BF16_BLOCK or node.domain not in ("", "ai.onnx"):
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
        note(f"{lowered} nodes run in bf16; {len(casts)} casts inserted")
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
