"""Output dims as expressions of the input dims, by symbolic shape inference (plan time only).

The engine is onnxruntime's ``SymbolicShapeInference`` (``onnxruntime.tools.symbolic_shape_infer``,
sympy-based): it follows Shape -> Gather -> Concat -> Reshape chains, Resize, Slice, Conv/Pool
arithmetic, If/Loop bodies and LSTMs with symbolic dims, where ONNX's own inference (even with
``data_prop``) gives up and invents unknown dims. We add what it lacks (ConvTranspose; a negative
Concat axis on shape vectors), drive it without its write-a-temp-file-on-failure entry point, and
translate each output dim from sympy (``floor``, ``ceiling``, ``Mod``, ``Max``, rationals) into the
integer grammar of :mod:`trtflow.plan.shape_expr`, checked against sympy at the profile corners.

Every dynamic input dim gets its own symbol (dims fixed by the recipe become literals first), so an
output dim is exact for any shape inside the profile. A dim inference cannot tie to the inputs is
reported with the node that made it: data-dependent ops (NonZero, NMS, an If on a runtime value, ...)
need ``outputs.<name>.max_shape``; anything else is a missing rule, named as such.

sympy and onnxruntime are imported here, lazily: only ``trtflow plan`` of a dynamic model needs them.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trtflow.errors import BackendMissing, ModelError
from trtflow.plan.shape_expr import DATA_DEPENDENT, ShapeExprError, parse

# Ops whose output dims depend on tensor values (or on which branch runs), not only on input shapes.
DATA_DEPENDENT_OPS = frozenset({
    "NonZero", "NonMaxSuppression", "Compress", "Unique", "If", "Loop", "Scan", "TopK", "Range",
    "Reshape", "Expand", "Tile", "ConstantOfShape", "Resize", "Upsample", "Slice", "Pad", "OneHot",
    "Squeeze", "Unsqueeze", "StringSplit", "RandomNormalLike", "CenterCropPad", "Col2Im",
})
_SYMBOL = "__trtflow_in{k}_d{axis}"
_SYMBOL_RE = re.compile(r"^__trtflow_in(?P<k>\d+)_d(?P<axis>\d+)$")
_NEW_DIM = re.compile(r"^(?P<op>[A-Za-z][A-Za-z0-9]*?)(?P<prefix>(?:_\d+)*)_(?P<index>\d+)_o(?P<out>\d+)__d(?P<dim>\d+)$")


@dataclass(frozen=True)
class InputDims:
    """One model input as the planner resolved it: model-layout profile and caller-facing naming."""

    name: str
    ident: str
    min_shape: tuple[int, ...]       # model layout
    max_shape: tuple[int, ...]
    caller_axis: tuple[int, ...]     # model axis -> caller-facing axis (NHWC moves C last)


@dataclass(frozen=True)
class Unresolved:
    """A dim inference could not express in the input dims, and why."""

    op: str                          # op type that produced it ("" when unknown)
    node: str                        # node name (or "#index" of an unnamed one)
    data_dependent: bool             # True: the op's output size depends on values, not shapes

    def describe(self) -> str:
        where = f"node {self.node!r} (op {self.op})" if self.op else "an unknown node"
        if self.data_dependent:
            return f"depends on tensor values at {where}"
        return f"has no symbolic rule at {where}"


Dim = str | Unresolved


@dataclass(frozen=True)
class Inferred:
    outputs: dict[str, tuple[Dim, ...] | None]   # model output -> dims (None: rank unknown)
    # (lhs, rhs) shape_expr texts the model needs equal to run at all: two dims it adds or concatenates
    # (e.g. an upsampled and a lateral feature map: H a multiple of 32). Inference assumed them equal.
    constraints: tuple[tuple[str, str], ...]
    # If nodes whose condition is a shape test that holds one way at every shape of the profile:
    # node name -> True (then branch) / False (else). The fold pass builds only that branch.
    branches: dict[str, bool] = field(default_factory=dict)


def _imports() -> tuple[Any, Any]:
    try:
        import sympy
        from onnxruntime.tools import symbolic_shape_infer as ssi
    except ImportError as exc:
        raise BackendMissing(f"planning a model with dynamic shapes needs symbolic shape inference ({exc.name} "
                             "is not installed)", hint="pip install 'trtflow[ort]' (onnxruntime and sympy)") from None
    return sympy, ssi


class ShapeConditionError(ModelError):
    """An If/Where condition on input shapes that is true at some shapes of the profile and false at
    others: the model runs a different branch there, and an engine built for both is not what it runs.

    ``dim`` is the caller-facing ``(ident, axis)`` the condition depends on when it is one dim, and
    ``stretches`` its ``(first, last, value)`` runs over the profile range (``trtflow init`` narrows
    its guesses with them)."""

    def __init__(self, message: str, *, hint: str, dim: tuple[str, int] | None = None,
                 stretches: tuple[tuple[int, int, bool], ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.dim, self.stretches = dim, stretches


class ConditionFlips(Exception):
    """Raised inside inference (carries the ShapeConditionError to raise outside it)."""


_COMPARE = {"Equal": "Eq", "Less": "Lt", "LessOrEqual": "Le", "Greater": "Gt", "GreaterOrEqual": "Ge"}
_LOGIC = {"Not": "Not", "And": "And", "Or": "Or", "Xor": "Xor"}
MAX_POINTS = 1 << 22   # profile points a shape condition is evaluated at (every one of them)


def _subclass(ssi: Any, sympy: Any, box: dict[str, tuple[int, int]], names: dict[str, str],
              switch_inputs: dict[str, str]) -> type:
    """onnxruntime's inference class with our rules. ``box``: symbol -> (min, max) over the profile;
    ``names``: symbol -> caller-facing ``ident[axis]`` for messages; ``switch_inputs``: If node -> the
    input whose value it tests."""
    base = ssi.SymbolicShapeInference
    get_attribute = ssi.get_attribute
    decide = _Decider(sympy, box, names, switch_inputs)

    class _Inference(base):  # type: ignore[misc, valid-type]
        """onnxruntime's inference plus the rules it lacks; records the node being inferred."""

        current: Any = None
        branches: ClassVar[dict[str, bool]] = {}   # If node -> then (True) / else, decided over the profile box

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.decided_if = False   # inferring an If that goes one way at every shape of the profile
            concat = self.dispatcher_["Concat"]

            def concat_positive_axis(node: Any) -> None:
                axis = get_attribute(node, "axis")
                if axis is not None and axis < 0:
                    rank = len(self._get_shape(node, 0) or [])
                    if rank:
                        for a in node.attribute:
                            if a.name == "axis":
                                a.i = axis + rank  # same tensor: Concat's axis may be negative since opset 11
                concat(node)

            self.dispatcher_["Concat"] = concat_positive_axis
            self.dispatcher_["ConvTranspose"] = self._infer_conv_transpose
            # Shape tests (``Equal(Shape(x)[-1], 1)`` feeding an If): onnxruntime compares sympy
            # expressions with ``==`` (structural: a symbolic dim "equals" 1 never) and then takes the
            # else branch for every shape. We keep the comparison symbolic and decide it over the profile.
            for op in (*_COMPARE, *_LOGIC):
                self.dispatcher_[op] = self._infer_condition
            self.dispatcher_["Where"] = self._infer_where
            self.dispatcher_["If"] = self._infer_if
            for op in list(self.dispatcher_):
                self.dispatcher_[op] = self._recording(self.dispatcher_[op])

        def _onnx_infer_single_node(self, node: Any) -> None:
            super()._onnx_infer_single_node(node)
            if node.op_type in ("LSTM", "GRU", "RNN"):
                self._merge_rnn_batch(node)

        def _merge_rnn_batch(self, node: Any) -> None:
            """An RNN's initial state has the batch of its input X (ONNX's rule; onnxruntime's inference
            takes the output batch from X alone): silero's spox export names no dim, and the LSTM is
            where its audio batch and its state batch meet."""
            layout = get_attribute(node, "layout", 0)
            x = self._get_shape(node, 0)
            if not x or len(x) != 3:
                return
            batch = x[1 - layout]                  # X: [seq, batch, in] (layout 0) or [batch, seq, in]
            for k in (5, 6) if node.op_type == "LSTM" else (5,):   # initial_h, initial_c
                if len(node.input) <= k or not node.input[k]:
                    continue
                h = self._get_shape(node, k)
                if not h or len(h) != 3:
                    continue
                h_batch = h[1 - layout]            # [dirs, batch, hidden] (layout 0) or [batch, dirs, hidden]
                if all(type(d) is str and d in self.symbolic_dims_ for d in (batch, h_batch)) and \
                        self.suggested_merge_.get(batch, batch) != self.suggested_merge_.get(h_batch, h_batch):
                    self._add_suggested_merge([batch, h_batch], apply=True)

        def _onnx_infer_subgraph(self, node: Any, subgraph: Any, use_node_input: bool = True,
                                 inc_subgraph_id: bool = True) -> Any:
            inner = super()._onnx_infer_subgraph(node, subgraph, use_node_input, inc_subgraph_id)
            # A branch that runs at every shape: the dims it needs equal, the model needs equal (silero's
            # spox export: its LSTM sits in the If on `sr`). onnxruntime keeps a subgraph's merges there.
            if self.decided_if:
                for a, b in sorted(inner.suggested_merge_.items(), key=lambda kv: kv[0]):
                    if a in self.symbolic_dims_ and (ssi.is_literal(b) or b in self.symbolic_dims_) and \
                            self.suggested_merge_.get(a, a) != self.suggested_merge_.get(b, b):
                        self._add_suggested_merge([a, b], apply=True)
            return inner

        def _add_suggested_merge(self, symbols: Any, apply: bool = False) -> None:
            """onnxruntime's merge of dims inference found equal, in a canonical direction. Its own picks the
            first input symbol of a ``set`` (string-hash order: PYTHONHASHSEED), so a plan in another process
            named silero's batch ``input[0]`` or ``state[1]``: another cache key, a "stale" artifact. Here a
            merged class is named after a literal, else the earliest input dim (input order, then axis), else
            a plain symbol, else the shortest expression, ties broken by name."""
            assert all((type(s) is str and s in self.symbolic_dims_) or ssi.is_literal(s) for s in symbols)
            merged = {self.suggested_merge_.get(s, s) if not ssi.is_literal(s) else s for s in symbols}
            order = sorted(merged, key=self._merge_rank)
            map_to = order[0]
            for s in order[1:]:
                if ssi.is_literal(s):
                    assert ssi.is_literal(map_to) and int(map_to) == int(s)
                    continue
                if s == map_to:
                    continue
                self.suggested_merge_[s] = int(map_to) if ssi.is_literal(map_to) else map_to
                for k, v in list(self.suggested_merge_.items()):
                    if v == s:
                        self.suggested_merge_[k] = map_to
            if apply and self.auto_merge_:
                self._apply_suggested_merge()

        def _merge_rank(self, s: Any) -> tuple[Any, ...]:
            if ssi.is_literal(s):
                return (0, int(s))
            m = _SYMBOL_RE.match(s)
            if s in self.input_symbols_:
                return (1, (int(m["k"]), int(m["axis"]), "") if m else (1 << 30, 0, s))
            if type(self.symbolic_dims_[s]) is sympy.Symbol:
                return (2, s)
            return (3, len(s), s)

        def _recording(self, fn: Any) -> Any:
            def run(node: Any) -> None:
                _Inference.current = node
                fn(node)
            return run

        def _infer_condition(self, node: Any) -> None:
            """sympy data of a comparison or logic op (its shape came from ONNX inference already)."""
            fn = getattr(sympy, _COMPARE.get(node.op_type) or _LOGIC[node.op_type])
            if node.op_type in _LOGIC:
                self._compute_on_sympy_data(node, lambda vs: decide.simplify(fn(*[decide.boolean(v) for v in vs])))
            else:
                self._compute_on_sympy_data(node, lambda vs: decide.simplify(fn(*vs)))

        def _infer_where(self, node: Any) -> None:
            def pick(vs: list[Any]) -> Any:
                taken = decide.over_profile(vs[0], node)
                return vs[1] if taken else vs[2]
            if node.input[0] in self.sympy_data_ or node.input[0] in self.initializers_:
                cond = self._get_value(node, 0)
                if decide.undecidable(cond):
                    return  # a runtime value: the result's value is unknown (its shape is ONNX's)
            self._compute_on_sympy_data(node, pick)

        def _infer_if(self, node: Any) -> None:
            cond = self._try_get_value(node, 0)
            name = node.input[0]
            if cond is None or decide.undecidable(cond):
                saved = self.sympy_data_.pop(name, None)
                decide.runtime_ifs.append(node.name)
                try:
                    base._infer_If(self, node)  # a runtime condition: both branches, shapes fused
                finally:
                    decide.runtime_ifs.pop()
                    if saved is not None:
                        self.sympy_data_[name] = saved
                return
            taken = decide.over_profile(cond, node)
            if node.name:  # a shape test (or a constant): the same at every shape of the profile
                _Inference.branches[node.name] = taken
            had, saved = name in self.sympy_data_, self.sympy_data_.get(name)
            self.sympy_data_[name] = int(taken)
            outer, self.decided_if = self.decided_if, True  # onnxruntime infers the taken branch alone
            try:
                base._infer_If(self, node)
            finally:
                self.decided_if = outer
                if had:
                    self.sympy_data_[name] = saved
                else:
                    del self.sympy_data_[name]

        def _infer_conv_transpose(self, node: Any) -> None:
            x = self._get_sympy_shape(node, 0)
            w = self._get_sympy_shape(node, 1)
            rank = len(w) - 2
            group = get_attribute(node, "group", 1)
            strides = get_attribute(node, "strides", [1] * rank)
            dilations = get_attribute(node, "dilations", [1] * rank)
            out_pad = get_attribute(node, "output_padding", [0] * rank)
            kernel = get_attribute(node, "kernel_shape", w[2:])
            pads = get_attribute(node, "pads", [0] * (2 * rank))
            out_shape = get_attribute(node, "output_shape")
            auto_pad = get_attribute(node, "auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            spatial = []
            for i in range(rank):
                if out_shape:
                    spatial.append(sympy.Integer(out_shape[-rank + i]))
                elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                    spatial.append(x[2 + i] * strides[i])
                else:
                    spatial.append(strides[i] * (x[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
                                   - pads[i] - pads[i + rank])
            shape = [x[0], w[1] * group, *spatial]
            self._update_computed_dims(shape)
            vi = self.known_vi_[node.output[0]]
            elem = self.known_vi_[node.input[0]].type.tensor_type.elem_type
            vi.CopyFrom(ssi.helper.make_tensor_value_info(node.output[0], elem, ssi.get_shape_from_sympy_shape(shape)))

    return _Inference


class _Decider:
    """Decides a shape condition (a sympy boolean over input-dim symbols) for the whole profile box."""

    def __init__(self, sympy: Any, box: dict[str, tuple[int, int]], names: dict[str, str],
                 switch_inputs: dict[str, str]) -> None:
        self.sp, self.box, self.names = sympy, box, names
        self.switch_inputs = switch_inputs   # If node -> the model input whose value its condition reads
        self.runtime_ifs: list[str] = []     # Ifs on runtime values being inferred (both branches), innermost last

    def context(self) -> str:
        for name in reversed(self.runtime_ifs):
            inp = self.switch_inputs.get(name)
            if inp is not None:
                return (f"; it sits in a branch of If {name!r}, which tests the value of input {inp!r}: fixing "
                        f"that input (`inputs.{inp}.value: ...`) builds only the branch you serve")
        return ""

    def boolean(self, v: Any) -> Any:
        sp = self.sp
        v = v[0] if isinstance(v, list) and len(v) == 1 else v
        if not isinstance(v, sp.Basic) and hasattr(v, "item"):  # numpy scalars and 1-element arrays
            v = v.item()
        if isinstance(v, (bool, int, float)) or getattr(v, "is_Integer", False) or getattr(v, "is_Float", False):
            return sp.true if v else sp.false
        if isinstance(v, sp.logic.boolalg.Boolean):
            return v
        return sp.Ne(v, 0)  # Cast(int dim, bool)

    def simplify(self, v: Any) -> Any:
        """sympy.true/false become 1/0, as onnxruntime's own data are ints."""
        if v is self.sp.true:
            return 1
        if v is self.sp.false:
            return 0
        return v

    def undecidable(self, cond: Any) -> bool:
        """True when the condition depends on something other than input dims (a runtime value)."""
        if isinstance(cond, list):
            if len(cond) != 1:
                return True
            cond = cond[0]
        free: set[Any] = getattr(cond, "free_symbols", set())
        return any(s.name not in self.box for s in free)

    def over_profile(self, cond: Any, node: Any) -> bool:
        """The condition's value at every point of the profile box; ConditionFlips if it is not one value."""
        import numpy as np

        sp = self.sp
        b = self.boolean(cond)
        if b is sp.true or b is sp.false:
            return bool(b)
        syms = sorted(b.free_symbols, key=lambda x: x.name)
        sizes = [self.box[x.name][1] - self.box[x.name][0] + 1 for x in syms]
        what = f"{node.op_type} node {node.name!r}: its condition {self._text(b)}"
        if int(np.prod(sizes, dtype=np.float64)) > MAX_POINTS:
            raise ConditionFlips(ShapeConditionError(
                f"symbolic shape inference: {what} depends on {len(syms)} dims over "
                f"{int(np.prod(sizes, dtype=np.float64))} profile points, too many to check",
                hint="narrow the profile of those dims (or fix one of them with `shape:`)"))
        axes = np.meshgrid(*[np.arange(self.box[x.name][0], self.box[x.name][1] + 1, dtype=np.int64) for x in syms],
                           indexing="ij", sparse=True)
        values = np.broadcast_to(np.asarray(sp.lambdify(syms, b, modules="numpy")(*axes), dtype=bool), sizes)
        if values.all() or not values.any():
            return bool(values.flat[0])
        dim: tuple[str, int] | None = None
        stretches: tuple[tuple[int, int, bool], ...] = ()
        if len(syms) == 1:
            lo = self.box[syms[0].name][0]
            ref = self.names.get(syms[0].name, syms[0].name)
            flips = [0, *(np.flatnonzero(values[1:] != values[:-1]) + 1).tolist(), len(values)]
            stretches = tuple((lo + a, lo + b - 1, bool(values[a])) for a, b in itertools.pairwise(flips))

            def runs(v: bool) -> str:
                return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b, w in stretches if w == v)
            where = f"true at {ref} in {runs(True)}, false at {runs(False)}"
            m = re.match(r"^(\w+)\[(\d+)\]$", ref)
            dim = (m[1], int(m[2])) if m else None
        else:
            t = np.unravel_index(int(np.argmax(values)), sizes)
            f = np.unravel_index(int(np.argmin(values)), sizes)

            def point(ix: Any) -> str:
                return ", ".join(f"{self.names.get(x.name, x.name)}={self.box[x.name][0] + int(i)}" for x, i in zip(syms, ix))
            where = f"true at {point(t)}, false at {point(f)}"
        raise ConditionFlips(ShapeConditionError(
            f"symbolic shape inference: {what} changes within the profile: {where}",
            hint="narrow the profile to sizes where it holds one way (the branch the model runs at the sizes "
                 "you serve)" + self.context(), dim=dim, stretches=stretches))

    def _text(self, b: Any) -> str:
        ops = {"Equality": "==", "Unequality": "!=", "StrictLessThan": "<", "LessThan": "<=",
               "StrictGreaterThan": ">", "GreaterThan": ">="}
        op = ops.get(type(b).__name__)
        if op is not None and {x.name for x in b.free_symbols} <= set(self.names):
            emit = _Emitter(self.sp, self.names)
            try:
                return f"{emit.emit(b.lhs)} {op} {emit.emit(b.rhs)}"
            except _Untranslatable:
                pass
        text = str(b)
        for sym, ref in sorted(self.names.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(sym, ref)
        return text


@contextmanager
def _patched(ssi: Any, cls: type) -> Iterator[None]:
    """Subgraphs (If/Loop bodies) are inferred by a fresh ``SymbolicShapeInference(...)`` looked up in
    the module: point that name at our subclass for the duration of one run."""
    old = ssi.SymbolicShapeInference
    ssi.SymbolicShapeInference = cls
    try:
        yield
    finally:
        ssi.SymbolicShapeInference = old


def _prepared_model(path: Path, inputs: Sequence[InputDims], fixed: Mapping[str, Any]
                    ) -> tuple[Any, dict[str, tuple[int, int]]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))  # initializers are needed: shape constants live there
    graph = model.graph
    index = {spec.name: k for k, spec in enumerate(inputs)}
    symbols: dict[str, tuple[int, int]] = {}
    init_names = {i.name for i in graph.initializer}
    for vi in list(graph.input):
        if vi.name in init_names:
            continue
        if vi.name in fixed:  # recipe `value:`: a constant, as the fix_inputs pass makes it
            graph.input.remove(vi)
            graph.initializer.append(numpy_helper.from_array(fixed[vi.name], vi.name))
            continue
        k = index.get(vi.name)
        if k is None:
            continue
        spec = inputs[k]
        dims = vi.type.tensor_type.shape.dim
        for axis, (lo, hi) in enumerate(zip(spec.min_shape, spec.max_shape)):
            d = dims[axis]
            d.Clear()
            if lo == hi:
                d.dim_value = lo
            else:
                d.dim_param = _SYMBOL.format(k=k, axis=axis)
                symbols[d.dim_param] = (k, axis)
    # The declared output shapes and intermediate value_info are the exporter's claims: infer afresh.
    # ClearField, not shape.Clear(): a cleared-but-present shape means rank 0 (the bug this replaces).
    for vi in graph.output:
        vi.type.tensor_type.ClearField("shape")
    del graph.value_info[:]
    return model, symbols


def infer(path: Path, inputs: Sequence[InputDims], output_names: Sequence[str],
          fixed: Mapping[str, Any] | None = None) -> Inferred:
    """Each output's dims as shape_expr strings over the caller-facing input dims, or Unresolved.

    ``inputs``: the model inputs the caller hands over; ``fixed``: model inputs the recipe fixes to a
    value (name -> numpy array), constants here as in the engine, so Ifs on them take one branch.
    """
    sympy, ssi = _imports()
    model, symbols = _prepared_model(path, inputs, fixed or {})
    names = _ref_names(inputs, symbols)
    box = {sym: (inputs[k].min_shape[axis], inputs[k].max_shape[axis]) for sym, (k, axis) in symbols.items()}
    from trtflow.plan.onnxmeta import switches

    cls = _subclass(ssi, sympy, box, names, {sw.node: sw.input for sw in switches(model)})
    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.ERROR)
    node_names = [n.name or f"#{i}" for i, n in enumerate(model.graph.node)]
    try:
        with _patched(ssi, cls):
            inf = cls(2**31 - 1, True, False, 0)
            inf._preprocess(model)
            while inf.run_:
                inf._infer_impl()
            inf._update_output_from_vi()
    except ConditionFlips as exc:
        raise exc.args[0] from None
    except Exception as exc:  # noqa: BLE001 - the tool asserts; name the node it stopped at
        node = getattr(cls, "current", None)
        where = f"node {node.name!r} (op {node.op_type})" if node is not None else "the graph"
        raise ModelError(f"symbolic shape inference failed at {where}: {type(exc).__name__} {exc}".rstrip(),
                         hint="the model's output shapes cannot be derived from its input shapes; "
                              "fix the dims that vary (e.g. a `shape:` instead of a profile), or report the model") from None
    constraints = _constraints(sympy, inf, names)
    outputs: dict[str, tuple[Dim, ...] | None] = {}
    graph_out = {o.name: o for o in inf.out_mp_.graph.output}
    for name in output_names:
        vi = graph_out[name]
        if not vi.type.tensor_type.HasField("shape"):
            outputs[name] = None
            continue
        dims: list[Dim] = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(str(int(d.dim_value)))
            elif d.HasField("dim_param"):
                expr = inf.symbolic_dims_.get(d.dim_param)
                if expr is None:  # a merged name: follow the merge
                    target = inf.suggested_merge_.get(d.dim_param, d.dim_param)
                    expr = sympy.Integer(int(target)) if str(target).lstrip("-").isdigit() else \
                        inf.symbolic_dims_.get(target, sympy.Symbol(str(target), integer=True, nonnegative=True))
                dims.append(_translate(sympy, expr, names, node_names))
            else:
                dims.append(Unresolved("", "", False))
        outputs[name] = tuple(dims)
    _self_check(sympy, inf, inputs, symbols, names, outputs, graph_out)
    return Inferred(outputs=outputs, constraints=constraints, branches=dict(cls.branches))  # type: ignore[attr-defined]


def _ref_names(inputs: Sequence[InputDims], symbols: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Symbol -> caller-facing reference ``ident[axis]``."""
    out = {}
    for sym, (k, axis) in symbols.items():
        spec = inputs[k]
        out[sym] = f"{spec.ident}[{spec.caller_axis[axis]}]"
    return out


def _constraints(sympy: Any, inf: Any, names: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The merges inference made (``auto_merge``) that involve input dims, as shape_expr pairs."""
    pairs = []
    emit = _Emitter(sympy, names)
    for a, b in inf.suggested_merge_.items():
        sides = []
        for side in (a, b):
            expr = inf.symbolic_dims_.get(side)
            if expr is None:
                expr = sympy.sympify(side, locals={n: sympy.Symbol(n, integer=True, nonnegative=True) for n in names})
            sides.append(expr)
        if not all(s.free_symbols and {x.name for x in s.free_symbols} <= set(names) or s.is_Integer for s in sides):
            continue
        if not any(s.free_symbols for s in sides):
            continue
        try:
            pair = (emit.emit(sympy.nsimplify(sides[0])), emit.emit(sympy.nsimplify(sides[1])))
        except _Untranslatable:
            continue
        if pair[0] != pair[1]:
            pairs.append(pair)
    return tuple(sorted(set(pairs)))


def _unresolved(symbol: str, node_names: list[str]) -> Unresolved:
    m = _NEW_DIM.match(symbol)
    if not m:
        return Unresolved("", "", False)
    op = m["op"]
    node = node_names[int(m["index"])] if not m["prefix"] and int(m["index"]) < len(node_names) else \
        f"#{m['index']} of a subgraph"
    return Unresolved(op, node, op in DATA_DEPENDENT_OPS)


class _Untranslatable(Exception):
    pass


def _translate(sympy: Any, expr: Any, names: dict[str, str], node_names: list[str]) -> Dim:
    expr = sympy.sympify(expr)
    for s in sorted(expr.free_symbols, key=str):
        if s.name not in names:
            return _unresolved(s.name, node_names)
    try:
        text = _Emitter(sympy, names).emit(expr)
    except _Untranslatable as exc:
        return Unresolved(str(exc), "", False)
    parse(text)  # our grammar, or an internal error here rather than in the runtime
    return text


class _Emitter:
    """sympy integer expression -> shape_expr text (``floor(p/q)`` -> ``p // q`` and so on)."""

    def __init__(self, sympy: Any, names: dict[str, str]) -> None:
        self.sp, self.names = sympy, names

    def emit(self, e: Any) -> str:
        sp = self.sp
        if e.is_Integer:
            return str(int(e))
        if e.is_Symbol:
            return self.names[e.name]
        if isinstance(e, (sp.floor, sp.ceiling)):
            arg = sp.cancel(sp.together(e.args[0]))
            num, den = sp.fraction(arg)
            if isinstance(e, sp.ceiling):  # ceil(p/q) == -((-p) // q)
                return f"-({self.emit(sp.expand(-num))} // {self._atom(den)})" if den != 1 else self.emit(num)
            return f"{self._atom(num)} // {self._atom(den)}" if den != 1 else self.emit(num)
        num, den = sp.fraction(sp.together(e))
        if den != 1:  # an integer-valued rational expression (a dim): exact division
            return f"{self._atom(sp.expand(num))} // {self._atom(den)}"
        if isinstance(e, sp.Mod):
            return f"{self._atom(e.args[0])} % {self._atom(e.args[1])}"
        if isinstance(e, (sp.Max, sp.Min)):
            fn = "max" if isinstance(e, sp.Max) else "min"
            args = list(e.args)
            if fn == "min":  # Slice ends clamp with INT_MAX-like literals (1e9, 2**31-1): no dim comes near (recipes cap at 2**20)
                args = [a for a in args if not (a.is_Integer and int(a) >= 1 << 24)] or args
            if len(args) == 1:
                return self.emit(args[0])
            return f"{fn}({', '.join(self.emit(a) for a in args)})"
        if e.is_Add:
            terms = sorted(e.args, key=lambda t: (t.is_Number, sp.default_sort_key(t)))
            text = self.emit(terms[0])
            for t in terms[1:]:
                neg = t.could_extract_minus_sign()
                text += f" - {self._factor(-t)}" if neg else f" + {self._factor(t)}"
            return text
        if e.is_Mul:
            coeff, rest = e.as_coeff_Mul()
            factors = [self._atom(f) for f in sp.Mul.make_args(rest)]
            if coeff == -1:
                return "-" + self._atom_text(" * ".join(factors))
            if coeff != 1:
                factors.insert(0, self.emit(coeff))
            return " * ".join(factors)
        if e.is_Pow and e.exp.is_Integer and e.exp > 0:
            return " * ".join([self._atom(e.base)] * int(e.exp))
        raise _Untranslatable(type(e).__name__)

    def _factor(self, e: Any) -> str:
        return self._atom(e) if e.is_Add else self.emit(e)

    def _atom(self, e: Any) -> str:
        return self._atom_text(self.emit(e))

    @staticmethod
    def _atom_text(text: str) -> str:
        return text if re.fullmatch(r"-?[\w\[\]]+", text) else f"({text})"


def _self_check(sympy: Any, inf: Any, inputs: Sequence[InputDims], symbols: dict[str, tuple[int, int]],
                names: dict[str, str], outputs: dict[str, tuple[Dim, ...] | None], graph_out: dict[str, Any]) -> None:
    """The translated text equals sympy's value at the profile's min and max corner (a translation
    bug must fail the plan, never size a buffer wrongly)."""
    for corner in (0, 1):
        point: dict[str, int] = {}
        shapes: dict[str, list[int]] = {}
        for sym, (k, axis) in symbols.items():
            spec = inputs[k]
            v = (spec.min_shape, spec.max_shape)[corner][axis]
            point[sym] = v
            shapes.setdefault(spec.ident, [0] * len(spec.min_shape))[spec.caller_axis[axis]] = v
        subs = {inf.symbolic_dims_.get(s, sympy.Symbol(s, integer=True, nonnegative=True)): v for s, v in point.items()}
        for name, dims in outputs.items():
            for d, proto in zip(dims or (), graph_out[name].type.tensor_type.shape.dim):
                if isinstance(d, Unresolved) or d == DATA_DEPENDENT or not proto.HasField("dim_param"):
                    continue
                want = sympy.sympify(inf.symbolic_dims_.get(proto.dim_param, proto.dim_param)).subs(subs)
                try:
                    got = parse(d)(shapes)
                except ShapeExprError:
                    continue  # negative at a corner: the planner reports it against the profile
                if want.is_Integer and int(want) != got:  # pragma: no cover - a translation bug
                    raise ModelError(f"internal: output {name!r} dim {d!r} gives {got}, sympy {want} at {point}")


__all__ = ["DATA_DEPENDENT_OPS", "Inferred", "InputDims", "ShapeConditionError", "Unresolved", "infer"]
