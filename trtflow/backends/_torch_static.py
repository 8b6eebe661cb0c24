"""Sync-free stand-ins for onnx2torch modules that read constant tensors on the host every call.

onnx2torch's Resize calls ``sizes.tolist()``/``scales.tolist()``, TopK hands a 0-d tensor to
``torch.topk(k=...)`` and Reshape tests ``torch.any(shape == 0)`` in every forward. On the GPU each is
a device->host sync inside the enqueue: it serializes the host with the GPU (a pipelined runner gets
no overlap) and breaks CUDA graph capture. Where that argument is a constant of the converted graph
(a ``get_attr`` node: an initializer, e.g. a shape the ``fold_shapes`` pass folded), the value is read
once here, at open time on the CPU, and the module is replaced by one that takes plain Python values.
Arguments computed at run time are left to onnx2torch as they are.

:func:`split_outputs` fixes onnx2torch's graph outputs: it returns one entry per *producing node*, so
a TopK whose values are a graph output hands back its whole (values, indices) tuple as that output.

Importing this module needs neither torch nor onnx2torch (trtflow imports with its core only): they
are imported on first use, and an ImportError then means the installed onnx2torch is not one these
stand-ins know.
"""

from __future__ import annotations

import inspect
import operator
from collections import Counter
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

_LAZY = ("StaticResize", "StaticTopK", "StaticReshape")


@cache
def _classes() -> dict[str, Any]:
    """The stand-in modules, defined on first use (they subclass ``torch.nn.Module``)."""
    import torch
    from torch import nn

    class StaticResize(nn.Module):
        """``interpolate`` with the sizes/scales of a constant Resize, as onnx2torch's OnnxResize would
        call it: batch and channel entries dropped (sizes: checked against the input's, a Python
        comparison of ``x.shape``; scales: checked to be 1 at open time)."""

        def __init__(self, mode: str, align_corners: bool | None, size: list[int] | None,
                     scale_factor: list[float] | None, lead: list[int] | None) -> None:
            super().__init__()
            self.mode, self.align_corners = mode, align_corners
            self.size, self.scale_factor, self.lead = size, scale_factor, lead

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.lead is not None and list(x.shape[:2]) != self.lead:
                raise NotImplementedError("Pytorch's interpolate cannot resize channel or batch dimensions.")
            return torch.nn.functional.interpolate(x, size=self.size, scale_factor=self.scale_factor, mode=self.mode,
                                                   align_corners=self.align_corners)

        def extra_repr(self) -> str:
            what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
            return f"{what}, mode={self.mode!r}, align_corners={self.align_corners}"


    class StaticTopK(nn.Module):
        """``torch.topk`` with the constant ``k`` as a Python int."""

        def __init__(self, k: int, dim: int, largest: bool, sorted_: bool) -> None:
            super().__init__()
            self.k, self.dim, self.largest, self.sorted = k, dim, largest, sorted_

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            top = torch.topk(x, k=self.k, dim=self.dim, largest=self.largest, sorted=self.sorted)
            return top.values, top.indices

        def extra_repr(self) -> str:
            return f"k={self.k}, dim={self.dim}"


    class StaticReshape(nn.Module):
        """``torch.reshape`` to a constant ONNX shape (0 copies the input's dim: allowzero=0, the only
        mode onnx2torch converts)."""

        def __init__(self, shape: list[int]) -> None:
            super().__init__()
            self.shape = shape
            self.zeros = [i for i, d in enumerate(shape) if d == 0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.zeros:
                return torch.reshape(x, self.shape)
            return torch.reshape(x, [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)])

        def extra_repr(self) -> str:
            return f"shape={self.shape}"

    return {"StaticResize": StaticResize, "StaticTopK": StaticTopK, "StaticReshape": StaticReshape}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _onnx2torch() -> dict[str, Any]:
    """onnx2torch's module classes the rules replace (and its Resize mode mapping)."""
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.resize import OnnxResize, OnnxResizeV10, _onnx_mode_to_torch_mode
    from onnx2torch.node_converters.topk import OnnxTopK

    return {"Reshape": OnnxReshape, "Resize": OnnxResize, "ResizeV10": OnnxResizeV10, "TopK": OnnxTopK,
            "mode": _onnx_mode_to_torch_mode}


def _constant(gm: fx.GraphModule, arg: Any) -> tuple[bool, torch.Tensor | None]:
    """(is it constant, its value): None and get_attr nodes are constants; other nodes are not."""
    import torch
    from torch import fx

    if arg is None:
        return True, None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        obj: Any = gm
        for part in str(arg.target).split("."):
            obj = getattr(obj, part)
        return (True, obj.detach().cpu()) if isinstance(obj, torch.Tensor) else (False, None)
    return False, None


def _bind(module: nn.Module, node: fx.Node) -> dict[str, Any] | None:
    try:
        bound = inspect.signature(module.forward).bind(*node.args, **node.kwargs)
    except TypeError:
        return None
    return dict(bound.arguments)


def _resize(gm: fx.GraphModule, module: Any, node: fx.Node) -> tuple[nn.Module, fx.Node] | None:
    args = _bind(module, node)
    if args is None:
        return None
    o2t = _onnx2torch()
    inner = module._resize if isinstance(module, o2t["ResizeV10"]) else module
    x = args.get("input_tensor")
    consts = {k: _constant(gm, args.get(k)) for k in ("roi", "scales", "sizes")}
    if x is None or not all(is_const for is_const, _ in consts.values()):
        return None
    roi, scales, sizes = (consts[k][1] for k in ("roi", "scales", "sizes"))
    if not getattr(inner, "ignore_roi", False) and roi is not None and roi.nelement() != 0:
        return None  # onnx2torch raises for it at run time; keep that
    size = lead = factor = None
    if sizes is not None and sizes.nelement() != 0:
        full = [int(v) for v in sizes.tolist()]
        size, lead = full[2:], (None if getattr(inner, "ignore_bs_ch_size", False) else full[:2])
    if scales is not None and scales.nelement() != 0:
        full_f = [float(v) for v in scales.tolist()]
        if full_f[:2] != [1, 1]:
            return None  # onnx2torch raises for it at run time; keep that
        factor = full_f[2:]
    rank = len(size if size is not None else factor if factor is not None else [])
    if rank == 0:
        return None
    try:
        mode = o2t["mode"](inner.onnx_mode, rank)
    except NotImplementedError:
        return None
    return _classes()["StaticResize"](mode, inner.align_corners, size, factor, lead), x


def _topk(gm: fx.GraphModule, module: Any, node: fx.Node) -> tuple[nn.Module, fx.Node] | None:
    from torch import fx

    args = _bind(module, node)
    if args is None or not isinstance(args.get("k"), fx.Node):
        return None
    is_const, k = _constant(gm, args["k"])
    if not is_const or k is None or k.nelement() != 1:
        return None
    top_k = _classes()["StaticTopK"]
    return top_k(int(k.reshape(-1)[0]), module.dim, module.largest, module.sorted), args["input_tensor"]


def _reshape(gm: fx.GraphModule, module: Any, node: fx.Node) -> tuple[nn.Module, fx.Node] | None:
    args = _bind(module, node)
    if args is None:
        return None
    is_const, shape = _constant(gm, args.get("shape"))
    if not is_const or shape is None or shape.dim() != 1:
        return None
    return _classes()["StaticReshape"]([int(v) for v in shape.tolist()]), args["input_tensor"]


_RULES = (("Resize", "Resize", _resize), ("ResizeV10", "Resize", _resize), ("TopK", "TopK", _topk),
          ("Reshape", "Reshape", _reshape))  # onnx2torch class (key of _onnx2torch()), op counted, rule


def _set_module(gm: fx.GraphModule, target: str, new: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, leaf, new)


def make_static(gm: nn.Module) -> Counter[str]:
    """Replace, in place, every onnx2torch module of :data:`_RULES` whose value arguments are constants
    by its sync-free stand-in; returns how many of each op were replaced."""
    from torch import fx

    replaced: Counter[str] = Counter()
    if not isinstance(gm, fx.GraphModule):
        return replaced
    o2t = _onnx2torch()
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        rule = next(((op, fn) for cls, op, fn in _RULES if type(module) is o2t[cls]), None)
        if rule is None:
            continue
        made = rule[1](gm, module, node)
        if made is None:
            continue
        new, x = made
        _set_module(gm, str(node.target), new)
        dropped = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node) and a is not x]
        node.args, node.kwargs = (x,), {}
        for a in dropped:
            if a.op == "get_attr" and not a.users:
                gm.graph.erase_node(a)
        replaced[rule[0]] += 1
    if replaced:
        gm.graph.lint()
        gm.recompile()
    return replaced


def split_outputs(gm: nn.Module, model: Any) -> bool:
    """Make ``gm`` return exactly one tensor per ONNX graph output, in the graph's order.

    onnx2torch outputs each producing node once, whole: a multi-output node (TopK -> values, indices)
    gives its tuple, and a graph output read from it lands one level too deep. Here each output of
    such a node is picked with ``getitem``. Returns whether the output changed.
    """
    from torch import fx

    if not isinstance(gm, fx.GraphModule):
        return False
    nodes = list(model.graph.node)
    producer = {y: i for i, n in enumerate(nodes) for y in n.output if y}
    names = [o.name for o in model.graph.output]
    if not names or not all(n in producer for n in names):
        return False
    order = list(dict.fromkeys(producer[n] for n in names))  # onnx2torch's layout: producers, deduplicated
    if all(len(nodes[i].output) == 1 for i in order) and len(order) == len(names):
        return False
    out = next(n for n in gm.graph.nodes if n.op == "output")
    given = out.args[0]
    given = list(given) if isinstance(given, (list, tuple)) else [given]
    if len(given) != len(order) or not all(isinstance(g, fx.Node) for g in given):
        return False
    fx_of = dict(zip(order, given))
    picked: list[fx.Node] = []
    with gm.graph.inserting_before(out):
        for name in names:
            i = producer[name]
            node, outs = fx_of[i], list(nodes[i].output)
            picked.append(gm.graph.call_function(operator.getitem, (node, outs.index(name))) if len(outs) > 1 else node)
    out.args = (picked if len(picked) > 1 else picked[0],)
    gm.graph.lint()
    gm.recompile()
    return True
