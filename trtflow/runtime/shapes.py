"""Output shapes: what one combination of input shapes implies, computed once and cached.

Every output buffer is allocated at the profile's max shape. For the input shapes of a request, each
output's exact shape comes, in this order of preference, from

1. the plan, when the output is static (``min_shape == max_shape``);
2. the engine, where it can say before running (:meth:`CudaEngine.output_shape`; TensorRT
   ``context.get_tensor_shape`` after ``set_input_shape``);
3. the plan's shape expression (``TensorPlan.shape_expr``, compiled once per runner by
   :func:`trtflow.plan.shape_expr.compile_shape`);
4. the engine after running, for a data-dependent dim (``"?"``) or a dynamic output the plan has no
   expression for: the buffer stays an upper bound and the request takes the shape the engine
   reports (:meth:`CudaEngine.reported_shape`, or what :meth:`CpuEngine.infer` returns).

Where the engine reads inputs on the host (:attr:`CudaEngine.host_inputs`, TensorRT shape tensors),
output shapes depend on those inputs' VALUES too: the key of a :class:`ShapePlan` then ends with
them, and the engine is handed them (:meth:`CudaEngine.set_input_values`) before it is asked.

There is no guessing: a shape that exceeds the buffer, or an engine report that contradicts the
plan, is an :class:`~trtflow.errors.ArtifactError` (the artifact is stale or its plan is wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from trtflow.backends.base import CudaEngine
from trtflow.errors import ArtifactError, TrtflowError
from trtflow.plan.model import Plan, TensorPlan
from trtflow.plan.shape_expr import ShapeFn, compile_shape

if TYPE_CHECKING:
    from trtflow.runtime.topology import EngineBinding

Shape = tuple[int, ...]
#: input shapes in plan order, then (engines with host inputs) the flat values of each host input, in plan order
ShapeKey = tuple[Shape, ...]


class ShapePlan:
    """What one combination of input shapes implies (the runner caches these per :data:`ShapeKey`)."""

    __slots__ = ("after_run", "checked", "gkey", "in_shapes", "key", "out_items", "out_shapes", "shapes", "values")

    def __init__(self, key: ShapeKey, shapes: dict[str, Shape], out_shapes: dict[str, Shape],
                 after_run: tuple[int, ...], values: dict[str, Shape] | None = None) -> None:
        self.key = key
        self.in_shapes = key[:len(shapes)]                  # input shapes, in plan order
        self.shapes = shapes                                # input name -> shape
        self.values = values or {}                          # host input name -> its flat values
        self.out_shapes = out_shapes                        # output name -> shape (never mutated)
        self.out_items = tuple(out_shapes.items())
        self.gkey = tuple(shapes.items()) + tuple(self.values.items())  # the shape part of a graph's key
        #: outputs (indices in plan order) whose shape the engine reports after running; their
        #: ``out_shapes`` entry is the upper bound (max shape)
        self.after_run = after_run
        #: the engine's reported shapes were compared with ``out_shapes`` once (first run)
        self.checked = False


class OutputShapes:
    """The output-shape rules of one runner: expressions compiled once, one :meth:`plan` per new key."""

    def __init__(self, plan: Plan, *, where: str) -> None:
        self._inputs = plan.inputs
        self._outputs = plan.outputs
        ranks = {t.ident: len(t.shape) for t in plan.inputs}
        fns: list[ShapeFn | None] = []
        for o in plan.outputs:
            fn = None
            if o.shape_expr is not None and (o.dynamic or o.data_dependent):
                try:
                    fn = compile_shape(o.shape_expr, ranks)
                except TrtflowError as exc:
                    raise ArtifactError(f"{where}: output {o.name!r}: {exc}", hint="rebuild the artifact") from None
                if len(fn.exprs) != len(o.max_shape):
                    raise ArtifactError(f"{where}: output {o.name!r} has {len(fn.exprs)} shape expressions for "
                                        f"rank {len(o.max_shape)}", hint="rebuild the artifact")
            fns.append(fn)
        self._fns = tuple(fns)
        self._names = tuple(t.name for t in plan.inputs)

    def plan(self, key: ShapeKey, binding: EngineBinding | None = None) -> ShapePlan:
        """The :class:`ShapePlan` of ``key``; a CUDA engine is told the input shapes and host values
        first (through ``binding``, which skips unchanged ones) so it can answer. No binding: the CPU."""
        n = len(self._names)
        shapes = dict(zip(self._names, key[:n]))
        engine = None
        values: dict[str, Shape] = {}
        if binding is not None:
            engine = binding.engine
            values = dict(zip(binding.value_names, key[n:]))
            for name, shape in shapes.items():
                binding.set_input_shape(name, shape)
            for name, flat in values.items():
                binding.set_input_values(name, flat, shapes[name])
        by_ident = {t.ident: shape for t, shape in zip(self._inputs, key)}
        out: dict[str, Shape] = {}
        after: list[int] = []
        for i, (o, fn) in enumerate(zip(self._outputs, self._fns)):
            exact = self._exact(o, fn, by_ident, engine)
            if exact is None:
                after.append(i)
            out[o.name] = o.max_shape if exact is None else exact
        return ShapePlan(key, shapes, out, tuple(after), values)

    def _exact(self, o: TensorPlan, fn: ShapeFn | None, by_ident: Mapping[str, Shape],
               engine: CudaEngine | None) -> Shape | None:
        if not o.dynamic and not o.data_dependent:
            return o.shape
        told = engine.output_shape(o.name) if engine is not None else None
        if told is not None:
            return check_fits(o, tuple(int(d) for d in told), "the engine says")
        if fn is not None:
            dims = fn(by_ident)
            if all(d is not None for d in dims):
                return check_fits(o, tuple(int(d) for d in dims if d is not None), "its shape expression gives")
        return None  # known only after running


def host_values(values: Sequence[Any], index: tuple[int, ...]) -> ShapeKey:
    """The part of a :data:`ShapeKey` made of host inputs' values: inputs ``index`` (plan order) flattened."""
    return tuple(tuple(np.asarray(values[i]).reshape(-1).tolist()) for i in index)


def check_fits(o: TensorPlan, shape: Sequence[int], source: str) -> Shape:
    """``shape`` when it fits ``o``'s buffer (the profile's max shape), else an ArtifactError."""
    shape = tuple(shape)
    if len(shape) != len(o.max_shape) or any(d < 0 or d > hi for d, hi in zip(shape, o.max_shape)):
        raise ArtifactError(f"output {o.name!r}: {source} shape {list(shape)}, outside its buffer "
                            f"(max shape {list(o.max_shape)})",
                            hint="the artifact's plan disagrees with its engine: rebuild it (trtflow build --force)")
    return shape


def reported_items(plan: ShapePlan, outputs: Sequence[TensorPlan],
                   report: Callable[[str], Sequence[int] | None], *, backend: str) -> tuple[tuple[str, Shape], ...]:
    """The output shapes of a request that just ran: ``plan.out_items`` with the engine's reported
    shapes for the outputs known only after running. On a plan's first run the engine's reports
    for the other outputs are compared with the plan (``plan.checked``)."""
    items = list(plan.out_items)
    after = plan.after_run
    for i, (name, shape) in enumerate(plan.out_items):
        got = report(name)
        if i in after:
            if got is None:
                raise ArtifactError(f"output {name!r}: its shape is known only after running, and backend "
                                    f"{backend!r} reported none",
                                    hint="rebuild the artifact so that its plan records the output's shape expression")
            items[i] = (name, check_fits(outputs[i], got, f"backend {backend!r} reported"))
        elif got is not None and not plan.checked and tuple(got) != shape:
            raise ArtifactError(f"output {name!r}: backend {backend!r} computed shape {list(got)} for inputs "
                                f"{dict(plan.shapes)}, the plan says {list(shape)}",
                                hint="the artifact's plan disagrees with its model: rebuild it (trtflow build --force)")
    plan.checked = True
    return tuple(items)


__all__ = ["OutputShapes", "Shape", "ShapeKey", "ShapePlan", "check_fits", "host_values",
           "reported_items"]
