"""Converters of ours for ONNX ops onnx2torch (1.5.x) lacks, registered through its converter registry.

The torch engine runs ONNX models converted by onnx2torch. Where onnx2torch has no converter for an
op (``If``, ``LSTM``, ``Size``, the opset-18 forms of ``Reduce*``, ``Split`` and ``Pad``) or its converter
gives up on a case it could run (``BatchNormalization`` whose input rank shape inference could not tell;
``Pad`` in reflect/edge mode on a 2-D input such as audio), this module registers one with
``onnx2torch.node_converters.registry.add_converter``. Otherwise a converter onnx2torch has for an op
version is kept: ours fill gaps or catch its ``NotImplementedError``, so a newer onnx2torch that
implements an op wins (``Pad`` with a non-constant mode is one case ours always takes; ``NonZero`` the other:
onnx2torch 1.5's returns ``torch.nonzero``'s ``[N, rank]`` where ONNX defines ``[rank, N]``).

``If`` converts each branch to its own module with onnx2torch (recursively) and picks one per call:
the condition is read on the host (a device->host sync on the GPU, so such models do not capture
into CUDA graphs; the runner then runs them eagerly).

:func:`missing_ops` lists what still has no converter, so the backend fails once, naming every op.

Importing this module needs neither torch nor onnx2torch; :func:`load` imports them. onnx2torch
imports torchvision for its NMS and RoiAlign converters only: where torchvision is missing or does not
load beside the installed torch (a CUDA torchvision wheel next to a CPU torch), :func:`load` gives it a
stand-in for the length of the import, so models without those two ops still convert.
"""

from __future__ import annotations

import contextvars
import sys
import types
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

# The opsets of the model being converted: If branches become models of their own and need them.
_OPSETS: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("trtflow_onnx2torch_opsets", default=())
_REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSumSquare")


def load() -> Callable[..., Any]:
    """``onnx2torch.convert`` with our converters registered (once), wrapped so that ``If`` branches know
    the model's opsets."""
    convert = _import_onnx2torch()
    _register()

    def convert_model(model: Any) -> Any:
        token = _OPSETS.set(tuple(model.opset_import))
        try:
            return convert(model)
        finally:
            _OPSETS.reset(token)

    return convert_model


def missing_ops(model: Any) -> list[str]:
    """``op (opset N)`` for every op of ``model`` (If/Loop bodies included) no converter handles."""
    _import_onnx2torch()
    _register()
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain or "": o.version for o in model.opset_import}
    missing: dict[str, None] = {}
    for node in _nodes(model.graph):
        domain = node.domain if node.domain != "ai.onnx" else ""
        try:
            get_converter(operation_type=node.op_type, version=opsets.get(domain, 1), domain=domain)
        except NotImplementedError:
            missing[f"{(domain + '.') if domain else ''}{node.op_type} (opset {opsets.get(domain, '?')})"] = None
    return list(missing)


def _nodes(graph: Any) -> Iterator[Any]:
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


@cache
def _import_onnx2torch() -> Callable[..., Any]:
    try:
        import torchvision  # noqa: F401  - onnx2torch's NMS/RoiAlign converters import it at module level
        placeholder = False
    except Exception:  # noqa: BLE001 - missing, or a build for another torch (its C++ ops fail to register)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.__getattr__ = _no_torchvision  # type: ignore[method-assign]
        stand_in.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
        placeholder = True
    try:
        from onnx2torch import convert
    finally:
        if placeholder:  # only onnx2torch's modules keep the stand-in; everyone else imports the real thing
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.ops", None)
    return convert  # type: ignore[no-any-return]


def _no_torchvision(name: str) -> Callable[..., Any]:
    if name.startswith("__"):
        raise AttributeError(name)  # module protocol (__file__, __path__, ...): a plain module without them

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"torchvision.ops.{name} is needed here (onnx2torch's NMS/RoiAlign), but torchvision "
                           "does not import beside this torch; install the torchvision build of this torch")

    return unavailable


# -- registration -------------------------------------------------------------------------------------
@cache
def _register() -> None:
    from onnx2torch.node_converters import registry

    def add(op: str, versions: tuple[int, ...], fn: Callable[[Any, Any], Any]) -> None:
        for v in versions:
            key = registry.OperationDescription(domain="", operation_type=op, version=v)
            if key not in registry._CONVERTER_REGISTRY:  # never replace one onnx2torch has
                registry.add_converter(operation_type=op, version=v)(fn)

    def fallback(op: str, versions: tuple[int, ...], fn: Callable[[Any, Any], Any]) -> None:
        """Run onnx2torch's converter; where it raises NotImplementedError, ours."""
        for v in versions:
            key = registry.OperationDescription(domain="", operation_type=op, version=v)
            theirs = registry._CONVERTER_REGISTRY.get(key)
            if theirs is None:
                registry.add_converter(operation_type=op, version=v)(fn)
            elif not getattr(theirs, "_trtflow_fallback", False):
                def both(node: Any, graph: Any, _theirs: Any = theirs) -> Any:
                    try:
                        return _theirs(node, graph)
                    except NotImplementedError:
                        return fn(node, graph)

                both._trtflow_fallback = True  # type: ignore[attr-defined]
                registry._CONVERTER_REGISTRY[key] = both

    add("If", (1, 11, 13, 16, 19, 21), _convert_if)
    add("LSTM", (1, 7, 14, 22), _convert_lstm)
    add("Size", (1, 13, 19, 21), _convert_size)
    add("Split", (18,), _convert_split18)
    for op in _REDUCE_18:
        add(op, (18,), _convert_reduce18)
    fallback("BatchNormalization", (9, 14, 15), _convert_batchnorm)
    for v in (9, 13):  # onnx2torch 1.5's NonZero is transposed (torch.nonzero is [N, rank]): always ours
        registry._CONVERTER_REGISTRY[registry.OperationDescription(domain="", operation_type="NonZero", version=v)] = \
            _convert_nonzero
    for v in (2, 11, 13, 18, 19, 21):  # onnx2torch pads reflect/edge only on 3-5D input, no axes, no wrap
        key = registry.OperationDescription(domain="", operation_type="Pad", version=v)
        theirs = registry._CONVERTER_REGISTRY.get(key)
        if theirs is None or not getattr(theirs, "_trtflow_fallback", False):
            def pad(node: Any, graph: Any, _theirs: Any = theirs) -> Any:
                if _theirs is not None and node.attributes.get("mode", "constant") == "constant" \
                        and len(node.input_values) < 4:
                    return _theirs(node, graph)
                return _convert_pad(node, graph)

            pad._trtflow_fallback = True  # type: ignore[attr-defined]
            registry._CONVERTER_REGISTRY[key] = pad


# -- modules (defined on first use: they subclass torch.nn.Module) ------------------------------------
@cache
def _modules() -> dict[str, type]:
    import torch
    from torch import nn

    class OnnxIf(nn.Module):
        """Both branches as modules; the condition is read on the host."""

        def __init__(self, then_branch: nn.Module, else_branch: nn.Module, outputs: int) -> None:
            super().__init__()
            self.then_branch, self.else_branch, self.outputs = then_branch, else_branch, outputs

        def forward(self, cond: torch.Tensor, *captured: torch.Tensor) -> Any:
            out = (self.then_branch if bool(cond.reshape(-1)[0]) else self.else_branch)(*captured)
            if self.outputs == 1 and isinstance(out, (tuple, list)):
                return out[0]
            return out

    class OnnxLSTM(nn.Module):
        """ONNX LSTM (default activations, no peepholes, full sequences) on ``torch.nn.LSTM``."""

        def __init__(self, lstm: nn.LSTM, layout: int, reverse: bool) -> None:
            super().__init__()
            self.lstm, self.layout, self.reverse = lstm, layout, reverse

        def forward(self, x: torch.Tensor, initial_h: torch.Tensor | None = None,
                    initial_c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if self.layout == 1:  # [batch, seq, ...] -> [seq, batch, ...]
                x = x.transpose(0, 1)
                initial_h = None if initial_h is None else initial_h.transpose(0, 1)
                initial_c = None if initial_c is None else initial_c.transpose(0, 1)
            if self.reverse:
                x = torch.flip(x, (0,))
            state = None if initial_h is None or initial_c is None else (initial_h.contiguous(), initial_c.contiguous())
            if state is None and (initial_h is not None or initial_c is not None):
                zeros = torch.zeros_like(initial_h if initial_h is not None else initial_c)  # type: ignore[arg-type]
                state = (initial_h if initial_h is not None else zeros, initial_c if initial_c is not None else zeros)
            y, (h, c) = self.lstm(x, state)
            if self.reverse:
                y = torch.flip(y, (0,))
            dirs = 2 if self.lstm.bidirectional else 1
            y = y.reshape(y.shape[0], y.shape[1], dirs, self.lstm.hidden_size).permute(0, 2, 1, 3)  # [seq, dir, batch, h]
            if self.layout == 1:
                return y.permute(2, 0, 1, 3), h.transpose(0, 1), c.transpose(0, 1)
            return y, h, c

    class OnnxSize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)

    class OnnxNonZero(nn.Module):
        """ONNX NonZero: int64 indices ``[rank, N]`` (``torch.nonzero`` gives ``[N, rank]``)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nonzero(x).transpose(0, 1).contiguous()

    class OnnxSplit18(nn.Module):
        def __init__(self, axis: int, sizes: list[int] | None, num_outputs: int) -> None:
            super().__init__()
            self.axis, self.sizes, self.num_outputs = axis, sizes, num_outputs

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if self.sizes is not None:
                return tuple(torch.split(x, self.sizes, dim=self.axis))
            n = x.shape[self.axis]
            return tuple(torch.split(x, -(-n // self.num_outputs), dim=self.axis))  # ONNX: ceil, last one smaller

    class OnnxBatchNormAnyRank(nn.Module):
        """Inference BatchNorm over axis 1 of an input of any rank (statistics as buffers)."""

        scale: torch.Tensor
        bias: torch.Tensor
        mean: torch.Tensor
        var: torch.Tensor

        def __init__(self, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                     eps: float) -> None:
            super().__init__()
            for name, t in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
                self.register_buffer(name, t)
            self.eps = eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.batch_norm(x, self.mean, self.var, self.scale, self.bias, False, 0.0, self.eps)

    class OnnxPad(nn.Module):
        """ONNX Pad of any rank and mode; reflect/edge/wrap pad trailing dims (up to 3) as torch can."""

        def __init__(self, mode: str, pads: list[int] | None, axes: list[int] | None, value: float | None) -> None:
            super().__init__()
            self.mode, self.pads, self.axes, self.value = mode, pads, axes, value

        def forward(self, x: torch.Tensor, pads: torch.Tensor | None = None, constant_value: torch.Tensor | None = None,
                    axes: torch.Tensor | None = None) -> torch.Tensor:
            p = self.pads if self.pads is not None else [int(v) for v in pads.tolist()]  # type: ignore[union-attr]
            r = x.dim()
            ax = self.axes if self.axes is not None else (
                [int(v) for v in axes.tolist()] if axes is not None else list(range(r)))
            begin, end = [0] * r, [0] * r
            for i, a in enumerate(ax):
                begin[a % r], end[a % r] = p[i], p[i + len(ax)]
            if self.mode == "constant":
                value = self.value if self.value is not None else (
                    float(constant_value) if constant_value is not None else 0.0)
                flat = [v for d in reversed(range(r)) for v in (begin[d], end[d])]
                return torch.nn.functional.pad(x, flat, value=value)
            padded = [d for d in range(r) if begin[d] or end[d]]
            if not padded:
                return x
            k = r - min(padded)
            if k > 3:
                raise NotImplementedError(f"Pad mode {self.mode!r} on more than the last 3 dims")
            y = x.reshape(1, -1, *x.shape[r - k:])
            flat = [v for d in reversed(range(r - k, r)) for v in (begin[d], end[d])]
            mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[self.mode]
            y = torch.nn.functional.pad(y, flat, mode=mode)
            return y.reshape(*x.shape[:r - k], *y.shape[2:])

    return {"OnnxIf": OnnxIf, "OnnxLSTM": OnnxLSTM, "OnnxSize": OnnxSize, "OnnxNonZero": OnnxNonZero,
            "OnnxSplit18": OnnxSplit18,
            "OnnxBatchNormAnyRank": OnnxBatchNormAnyRank, "OnnxPad": OnnxPad}


def _result(module: Any, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs=inputs, outputs=outputs))


def _const(name: str, graph: Any) -> Any:
    """The torch tensor of a constant input, or None when it depends on a run-time value.

    Beyond initializers and Constant nodes, a short chain of ops over constants is evaluated here with
    onnx's reference evaluator: exporters wrap LSTM weights in Unsqueeze/Transpose inside If branches,
    where no folding pass reaches.
    """
    from onnx2torch.utils.common import get_const_value

    if not name:
        return None
    try:
        return get_const_value(name, graph)
    except KeyError:
        return _fold(name, graph)


_FOLD_MAX_NODES = 32


def _fold(name: str, graph: Any) -> Any:
    import numpy as np
    import torch
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    nodes: dict[str, Any] = {}
    leaves: dict[str, Any] = {}
    stack = [name]
    while stack:
        x = stack.pop()
        if not x or x in leaves or any(x in n.output for n in nodes.values()):
            continue
        if x in graph.initializers:
            leaves[x] = graph.initializers[x].proto
            continue
        try:
            node, _ = graph.value_as_node_output(x)
        except KeyError:
            return None  # a graph input, or a tensor captured from an enclosing graph
        if len(nodes) >= _FOLD_MAX_NODES or any(a.type in (5, 10) for a in node.proto.attribute):  # GRAPH(S)
            return None
        nodes[node.unique_name] = node.proto
        stack.extend(node.input_values)
    order = [n.proto for n in graph.nodes.values() if n.unique_name in nodes]
    g = helper.make_graph(order, "fold", [], [helper.make_empty_tensor_value_info(name)], list(leaves.values()))
    model = helper.make_model(g, opset_imports=list(_OPSETS.get()) or [helper.make_opsetid("", 17)])
    try:
        (value,) = ReferenceEvaluator(model).run(None, {})
    except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: treat as not constant
        return None
    return torch.from_numpy(np.array(value))


# -- converters ---------------------------------------------------------------------------------------
def _convert_if(node: Any, graph: Any) -> Any:
    import onnx

    branches = {a.name: a.g for a in node.proto.attribute if a.type == onnx.AttributeProto.GRAPH}
    then_g, else_g = branches["then_branch"], branches["else_branch"]
    outer = graph.proto
    inits = {i.name: i for i in outer.initializer}
    captured = sorted((_captured(then_g) | _captured(else_g)) - set(inits))
    convert = load()
    mods = [convert(_branch_model(g, captured, outer, inits)) for g in (then_g, else_g)]
    module = _modules()["OnnxIf"](mods[0], mods[1], len(node.output_values))
    return _result(module, (node.input_values[0], *captured), node.output_values)


def _captured(graph: Any) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    import onnx

    defined = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for n in graph.node:
        used.update(x for x in n.input if x)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= _captured(g)
        defined.update(n.output)
    used.update(o.name for o in graph.output)
    return used - defined


def _branch_model(branch: Any, captured: list[str], outer: Any, inits: dict[str, Any]) -> Any:
    """A branch as a model: outer tensors it reads become inputs (outer weights are copied in); outputs
    that are not made inside the branch get an Identity (onnx2torch converts nodes, not bare names)."""
    import onnx
    from onnx import helper

    known = {v.name: v for v in (*outer.input, *outer.value_info, *outer.output)}
    g = onnx.GraphProto()
    g.CopyFrom(branch)
    g.name = g.name or "branch"
    reads = _captured(branch)
    for name in sorted(reads & set(inits)):
        g.initializer.append(inits[name])
    for name in captured:
        vi = onnx.ValueInfoProto()
        if name in known:
            vi.CopyFrom(known[name])
        else:
            vi.name = name
            vi.type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
        g.input.append(vi)
    made = {x for n in g.node for x in n.output}
    for k, out in enumerate(g.output):
        if out.name not in made:
            inner = f"{out.name}__branch_out{k}"
            g.node.append(helper.make_node("Identity", [out.name], [inner]))
            out.name = inner
    model = helper.make_model(g, opset_imports=list(_OPSETS.get()) or [helper.make_opsetid("", 17)])
    return model


def _convert_lstm(node: Any, graph: Any) -> Any:
    import torch

    a = node.attributes
    ins = list(node.input_values) + [""] * (8 - len(node.input_values))
    x, w_name, r_name, b_name, seq_lens, h0, c0, peep = ins[:8]
    problems = []
    if a.get("activations") not in (None, ["Sigmoid", "Tanh", "Tanh"], ["Sigmoid", "Tanh", "Tanh"] * 2):
        problems.append(f"activations {a.get('activations')}")
    if a.get("clip") is not None:
        problems.append("clip")
    if a.get("input_forget", 0):
        problems.append("input_forget")
    if seq_lens:
        problems.append("sequence_lens")
    w, r, b = _const(w_name, graph), _const(r_name, graph), _const(b_name, graph)
    if w is None or r is None or (b_name and b is None):
        problems.append("weights computed at run time")
    p = _const(peep, graph) if peep else None
    if peep and (p is None or bool(torch.any(p != 0))):
        problems.append("peepholes")
    if problems:
        raise NotImplementedError(f"LSTM with {', '.join(problems)} has no torch converter "
                                  f"(operation_type='LSTM')")
    direction = a.get("direction", "forward")
    hidden = int(a["hidden_size"])
    dirs = 2 if direction == "bidirectional" else 1
    lstm = torch.nn.LSTM(input_size=int(w.shape[-1]), hidden_size=hidden, bidirectional=dirs == 2)
    order = torch.cat([torch.arange(k * hidden, (k + 1) * hidden) for k in (0, 2, 3, 1)])  # ONNX iofc -> torch ifgo
    if b is None:
        b = torch.zeros(dirs, 8 * hidden, dtype=w.dtype)
    with torch.no_grad():
        for d in range(dirs):
            suffix = "_reverse" if d == 1 else ""
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(w[d][order])
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(r[d][order])
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(b[d][:4 * hidden][order])
            getattr(lstm, f"bias_hh_l0{suffix}").copy_(b[d][4 * hidden:][order])
    lstm = lstm.to(w.dtype)
    module = _modules()["OnnxLSTM"](lstm, int(a.get("layout", 0)), direction == "reverse")
    return _result(module, (x, h0, c0), node.output_values)


def _convert_size(node: Any, graph: Any) -> Any:
    del graph
    return _result(_modules()["OnnxSize"](), (node.input_values[0],), node.output_values)


def _convert_nonzero(node: Any, graph: Any) -> Any:
    del graph
    return _result(_modules()["OnnxNonZero"](), (node.input_values[0],), node.output_values)


def _convert_split18(node: Any, graph: Any) -> Any:
    axis = int(node.attributes.get("axis", 0))
    split = node.input_values[1] if len(node.input_values) > 1 else ""
    sizes = _const(split, graph)
    if split and sizes is None:
        raise NotImplementedError("Split with split sizes computed at run time (operation_type='Split')")
    module = _modules()["OnnxSplit18"](axis, None if sizes is None else [int(s) for s in sizes.tolist()],
                                       int(node.attributes.get("num_outputs", len(node.output_values))))
    return _result(module, (node.input_values[0],), node.output_values)


def _convert_reduce18(node: Any, graph: Any) -> Any:
    """Opset 18 moved ``axes`` from an attribute to an input; a constant one runs onnx2torch's module."""
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from torch import nn

    axes_name = node.input_values[1] if len(node.input_values) > 1 else ""
    axes = _const(axes_name, graph)
    if axes_name and axes is None:
        raise NotImplementedError(f"{node.operation_type} with axes computed at run time "
                                  f"(operation_type='{node.operation_type}')")
    axes_list = None if axes is None else [int(v) for v in axes.reshape(-1).tolist()]
    if not axes_list and node.attributes.get("noop_with_empty_axes", 0):
        return _result(nn.Identity(), (node.input_values[0],), node.output_values)
    module = OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes_list or None,
                                  keepdims=int(node.attributes.get("keepdims", 1)))
    return _result(module, (node.input_values[0],), node.output_values)


def _convert_pad(node: Any, graph: Any) -> Any:
    a = node.attributes
    mode = str(a.get("mode", "constant"))
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise NotImplementedError(f"Pad mode {mode!r} (operation_type='Pad')")
    ins = list(node.input_values) + [""] * (4 - len(node.input_values))
    pads: list[int] | None
    value: float | None
    axes: list[int] | None
    if "pads" in a:  # opset 2: pads and value are attributes
        pads, value, axes = [int(v) for v in a["pads"]], float(a.get("value", 0.0)), None
    else:
        p, v, ax = _const(ins[1], graph), _const(ins[2], graph), _const(ins[3], graph)
        pads = None if p is None else [int(x) for x in p.reshape(-1).tolist()]
        value = None if v is None else float(v.reshape(-1)[0]) if v.numel() else 0.0
        axes = None if ax is None else [int(x) for x in ax.reshape(-1).tolist()]
        if ins[3] and axes is None:
            raise NotImplementedError("Pad with axes computed at run time (operation_type='Pad')")
    module = _modules()["OnnxPad"](mode, pads, axes, value)
    return _result(module, tuple(node.input_values[:3]), node.output_values)


def _convert_batchnorm(node: Any, graph: Any) -> Any:
    """Where onnx2torch needs the input's rank from shape inference and does not get it."""
    if len(node.output_values) != 1:
        raise NotImplementedError("BatchNormalization in training mode (operation_type='BatchNormalization')")
    params = [_const(n, graph) for n in node.input_values[1:5]]
    if any(p is None for p in params):
        from onnx2torch.node_converters.batch_norm import OnnxBatchNorm

        module = OnnxBatchNorm(momentum=0.1, epsilon=float(node.attributes.get("epsilon", 1e-5)))
        return _result(module, tuple(node.input_values), node.output_values)
    module = _modules()["OnnxBatchNormAnyRank"](*params, eps=float(node.attributes.get("epsilon", 1e-5)))
    return _result(module, (node.input_values[0],), node.output_values)
