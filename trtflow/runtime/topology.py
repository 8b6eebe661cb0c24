"""Stream topologies: how one request travels through streams, events and the engine.

Small strategies, one per topology, behind one call (``launch``):

- :class:`SingleStream` (``sync``, ``async``): one stream orders H2D, enqueue and D2H. Without
  ``timing`` it records no event at all: a buffer set holds one request at a time, so synchronizing
  the stream completes it. With CUDA graphs, copy-in + enqueue + copy-out are one graph.
- :class:`Pipelined` (``pipelined``, depth N): three streams (H2D, compute, D2H) chained by each buffer
  set's events, trtexec style: the H2D of request i+1 and the D2H of request i-1 overlap the compute
  of request i. Waits on a set whose previous request the host saw complete are skipped. With CUDA
  graphs, the enqueue of each buffer set is captured.
- :class:`HostRun` (the CPU): the engine runs on host arrays, synchronously.

:class:`EngineBinding` tells the CUDA engine shapes, addresses and the inputs-consumed event, and
only what changed since it last did.
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trtflow.backends.base import CpuEngine, CudaEngine
from trtflow.plan.model import TensorPlan
from trtflow.runtime import cuda, trace
from trtflow.runtime.buffers import BufferSet
from trtflow.runtime.graphs import Graphs
from trtflow.runtime.memory import HostMemory, TensorMemory, np_dtype
from trtflow.runtime.pending import OutItems, StageTiming
from trtflow.runtime.shapes import Shape, ShapePlan, reported_items


def stream_roles(topology: str) -> tuple[str, ...]:
    """The streams a topology needs, by role."""
    return ("h2d", "compute", "d2h") if topology == "pipelined" else ("main",)


class EngineBinding:
    """What the CUDA engine was told last (shapes, host values, addresses, consumed event), so a request
    tells it only what changed; ``before_shape_change`` runs before an input shape or a host input's
    values change (graphs bake both)."""

    def __init__(self, engine: CudaEngine, inputs: Sequence[TensorPlan], before_shape_change: Callable[[], None]) -> None:
        self.engine = engine
        self._before_shape_change = before_shape_change
        host = engine.host_inputs
        #: inputs whose values the engine reads on the host (their values end each ShapeKey), plan order
        self.value_names = tuple(t.name for t in inputs if t.name in host)
        self.value_index = tuple(i for i, t in enumerate(inputs) if t.name in host)
        self._dtypes = {t.name: np_dtype(t.dtype) for t in inputs if t.name in host}
        self.shapes: dict[str, Shape] = {}
        self.values: dict[str, Shape] = {}
        self.addrs: dict[str, int] = {}
        self.consumed = 0
        self.bound: tuple[BufferSet, ShapePlan] | None = None  # what the engine is bound to now

    def set_input_shape(self, name: str, shape: Shape) -> None:
        if self.shapes.get(name) != shape:
            if name in self.shapes:
                self._before_shape_change()
            self.engine.set_input_shape(name, shape)
            self.shapes[name] = shape

    def set_input_values(self, name: str, flat: Shape, shape: Shape) -> None:
        """The values of host input ``name`` (``flat``, C order) at ``shape``, when they changed."""
        if self.values.get(name) != flat:
            if name in self.values:
                self._before_shape_change()
            self.engine.set_input_values(name, np.asarray(flat, dtype=self._dtypes[name]).reshape(shape))
            self.values[name] = flat

    def bind(self, bs: BufferSet, plan: ShapePlan) -> None:
        """Shapes, addresses and consumed event of ``bs`` at ``plan``; skipped when the engine is bound
        to this set at these shapes already (only the addresses that can move are compared then)."""
        bound = self.bound
        if bound is not None and bound[0] is bs and bound[1] is plan:
            if bs.volatile:
                engine, addrs = self.engine, self.addrs
                for name, mem in bs.volatile:
                    ptr = mem.device_ptr
                    if addrs.get(name) != ptr:
                        engine.set_address(name, ptr)
                        addrs[name] = ptr
            return
        self.bound = None  # a failure half way leaves the engine in an unknown state
        engine = self.engine
        for name, shape in plan.shapes.items():
            self.set_input_shape(name, shape)
        for name, flat in plan.values.items():
            self.set_input_values(name, flat, plan.shapes[name])
        for name, mem in bs.mems.items():
            ptr = mem.device_ptr
            if self.addrs.get(name) != ptr:
                engine.set_address(name, ptr)
                self.addrs[name] = ptr
        if bs.consumed_ok and self.consumed != bs.ev_consumed:
            engine.set_input_consumed_event(bs.ev_consumed)
            self.consumed = bs.ev_consumed
        self.bound = (bs, plan)


class CudaSchedule(ABC):
    """What both CUDA topologies share: staging, the copies, the engine's reported shapes."""

    def __init__(self, engine: CudaEngine, binding: EngineBinding, graphs: Graphs, streams: dict[str, int], *,
                 timing: bool, outputs: Sequence[TensorPlan], backend: str, blocking: bool = False) -> None:
        self.engine, self.binding, self.graphs, self.timing = engine, binding, graphs, timing
        self.blocking = blocking  # streams.wait: block -- the host waits on (blocking-sync) events, never on streams
        self.outputs, self.backend = tuple(outputs), backend
        if "main" in streams:
            self.s_in = self.s_c = self.s_out = streams["main"]
        else:
            self.s_in, self.s_c, self.s_out = streams["h2d"], streams["compute"], streams["d2h"]

    @abstractmethod
    def launch(self, bs: BufferSet, values: list[Any], plan: ShapePlan, t_submit: float) -> tuple[float, bool, OutItems]:
        """Enqueue one request; returns (host staging ms, whether a graph ran, its output shapes)."""

    def _stage(self, bs: BufferSet, values: list[Any], plan: ShapePlan, t_submit: float) -> float:
        """Host work of a request: staging (never captured), then bind; the host ms with timing."""
        shapes, s = plan.in_shapes, self.s_in
        if not trace.on:
            for mem, x, shape in zip(bs.in_mems, values, shapes):
                mem.prepare(x, shape, stream=s)
        else:
            with trace.span("trtflow.stage_in"):
                for mem, x, shape in zip(bs.in_mems, values, shapes):
                    mem.prepare(x, shape, stream=s)
        host_in = (time.perf_counter() - t_submit) * 1e3 if self.timing else 0.0
        self.binding.bind(bs, plan)
        return host_in

    def _copies_in(self, bs: BufferSet, shapes: tuple[Shape, ...]) -> None:
        s = self.s_in
        if not trace.on:
            for mem, shape in zip(bs.in_mems, shapes):
                mem.enqueue_in(shape, stream=s)
        else:
            with trace.span("trtflow.h2d"):
                for mem, shape in zip(bs.in_mems, shapes):
                    mem.enqueue_in(shape, stream=s)

    def _copies_out(self, bs: BufferSet, items: OutItems) -> None:
        s = self.s_out
        if not trace.on:
            for mem, (_, shape) in zip(bs.out_mems, items):
                mem.enqueue_out(shape, stream=s)
        else:
            with trace.span("trtflow.d2h"):
                for mem, (_, shape) in zip(bs.out_mems, items):
                    mem.enqueue_out(shape, stream=s)

    def _reported(self, plan: ShapePlan) -> OutItems:
        """The request's output shapes after an eager enqueue (engine reports; checked on first run)."""
        if plan.after_run or not plan.checked:
            return reported_items(plan, self.outputs, self.engine.reported_shape, backend=self.backend)
        return plan.out_items


class SingleStream(CudaSchedule):
    """``sync`` / ``async``: one stream, one buffer set. Events: all with ``timing``; else ev_d2h alone with
    ``streams.wait: block`` (the host sleeps on it), else none (the host synchronizes the stream)."""

    def launch(self, bs: BufferSet, values: list[Any], plan: ShapePlan, t_submit: float) -> tuple[float, bool, OutItems]:
        s, timing = self.s_c, self.timing
        done = timing or self.blocking  # ev_d2h is recorded: it completes the request
        if not (bs.idle or not bs.used):  # host staging of this set may still be read by its previous request
            bs.wait_host_free(s)
        bs.idle = False
        bs.graph_ran = False
        bs.done_only = done and not timing
        bs.done_event = bs.ev_d2h if done else 0
        host_in = self._stage(bs, values, plan, t_submit)
        graphs = self.graphs
        if graphs.on and not plan.after_run:  # copy-in + enqueue + copy-out as one graph
            if timing:
                cuda.event_record(bs.t_compute, stream=s)
            for i in bs.outside_in:  # copies from memory the caller owns stay eager, ahead of the graph
                bs.in_mems[i].enqueue_in(plan.in_shapes[i], stream=s)
            sg = bs.graphs
            graph = sg.last if sg.last_plan is plan and not bs.volatile else None
            if graph is not None:  # the graph of the previous request: same shapes, same addresses
                graph.launch(s)
                graphs.stats["replays"] += 1
            else:
                key: tuple[Any, ...] = (plan.gkey, tuple(mem.graph_key() for mem in bs.mems.values()))
                if not graphs.run(sg, key, functools.partial(self._whole_request, bs, plan), s, plan):
                    self._reported(plan)  # the body ran eagerly: check the engine's reports once
            if done:  # stages ran as one unit (graph or its eager warm-up): timed as one
                cuda.event_record(bs.ev_d2h, stream=s)
                bs.graph_ran = True
            return host_in, True, plan.out_items
        if timing:
            cuda.event_record(bs.t_h2d, stream=s)
        self._copies_in(bs, plan.in_shapes)
        if timing:
            cuda.event_record(bs.ev_h2d, stream=s)
            cuda.event_record(bs.t_compute, stream=s)
        with trace.span("trtflow.enqueue"):
            self.engine.enqueue(s)
        items = self._reported(plan)
        if timing:
            cuda.event_record(bs.ev_compute, stream=s)
            cuda.event_record(bs.t_d2h, stream=s)
        self._copies_out(bs, items)
        if done:
            cuda.event_record(bs.ev_d2h, stream=s)
        return host_in, False, items

    def _whole_request(self, bs: BufferSet, plan: ShapePlan) -> None:
        """Copy-in (but the eager-before-graph inputs) + enqueue + copy-out on the one stream: the
        body of a whole-request graph, run eagerly once before it is captured."""
        s = self.s_c
        for mem, shape in zip(bs.in_mems, plan.in_shapes):
            if not mem.outside_graph:
                mem.enqueue_in(shape, stream=s)
        self.engine.enqueue(s)
        for mem, (_, shape) in zip(bs.out_mems, plan.out_items):
            mem.enqueue_out(shape, stream=s)


class Pipelined(CudaSchedule):
    """``pipelined``: H2D, compute and D2H streams chained by the buffer set's events."""

    def launch(self, bs: BufferSet, values: list[Any], plan: ShapePlan, t_submit: float) -> tuple[float, bool, OutItems]:
        s_in, s_c, s_out, timing = self.s_in, self.s_c, self.s_out, self.timing
        fresh = bs.idle or not bs.used  # nothing of this set is in flight: its events are all complete
        if not fresh:  # host staging of this set may still be read by its previous request
            bs.wait_host_free(s_in)
        bs.idle = False
        bs.graph_ran = False
        bs.done_event = bs.ev_d2h
        host_in = self._stage(bs, values, plan, t_submit)
        if not fresh:  # device inputs of this set are free once its last compute read them
            cuda.stream_wait_event(s_in, bs.device_inputs_free_event())
        if timing:
            cuda.event_record(bs.t_h2d, stream=s_in)
        self._copies_in(bs, plan.in_shapes)
        cuda.event_record(bs.ev_h2d, stream=s_in)
        cuda.stream_wait_event(s_c, bs.ev_h2d)
        if not fresh:  # outputs of this set are free once their last D2H finished
            cuda.stream_wait_event(s_c, bs.ev_d2h)
        if timing:
            cuda.event_record(bs.t_compute, stream=s_c)
        ran_graph = False
        graphs = self.graphs
        with trace.span("trtflow.enqueue"):
            if graphs.on and not plan.after_run:  # only the enqueue is captured; its key is the device addresses
                sg = bs.graphs
                graph = sg.last if sg.last_plan is plan and not bs.volatile else None
                if graph is not None:
                    graph.launch(s_c)
                    graphs.stats["replays"] += 1
                    ran_graph = True
                else:
                    key = (plan.gkey, tuple(mem.device_ptr for mem in bs.mems.values()))
                    ran_graph = graphs.run(sg, key, functools.partial(self.engine.enqueue, s_c), s_c, plan)
            else:
                self.engine.enqueue(s_c)
        items = plan.out_items if ran_graph else self._reported(plan)
        cuda.event_record(bs.ev_compute, stream=s_c)
        cuda.stream_wait_event(s_out, bs.ev_compute)
        if timing:
            cuda.event_record(bs.t_d2h, stream=s_out)
        self._copies_out(bs, items)
        cuda.event_record(bs.ev_d2h, stream=s_out)
        return host_in, ran_graph, items


def cuda_schedule(topology: str, engine: CudaEngine, binding: EngineBinding, graphs: Graphs, streams: dict[str, int],
                  *, timing: bool, outputs: Sequence[TensorPlan], backend: str, blocking: bool = False) -> CudaSchedule:
    cls = Pipelined if topology == "pipelined" else SingleStream
    return cls(engine, binding, graphs, streams, timing=timing, outputs=outputs, backend=backend, blocking=blocking)


class HostRun:
    """The CPU: stage the inputs, run the engine on host arrays (synchronously), read its shapes."""

    def __init__(self, engine: CpuEngine, in_names: tuple[str, ...], outputs: Sequence[TensorPlan], *,
                 timing: bool, backend: str) -> None:
        self.engine, self.in_names, self.outputs = engine, in_names, tuple(outputs)
        self.timing, self.backend = timing, backend

    def run(self, bs: BufferSet, values: list[Any], plan: ShapePlan) -> tuple[float, OutItems, StageTiming | None]:
        """Run one request; returns (host staging ms, its output shapes, its timing with ``timing``)."""
        t0 = time.perf_counter()
        for mem, x, shape in zip(bs.in_mems, values, plan.in_shapes):
            mem.prepare(x, shape, stream=0)
        host_in = (time.perf_counter() - t0) * 1e3
        outs = {}
        for (name, shape), mem in zip(plan.out_items, bs.out_mems):
            view = mem.host_view(shape)
            assert view is not None
            outs[name] = view
        t1 = time.perf_counter()
        with trace.span("trtflow.infer"):
            # the arrays each memory staged: the caller's own, or what an encoded input decoded
            got = self.engine.infer({n: _feed(m) for n, m in zip(self.in_names, bs.in_mems)}, outs)
        timing = StageTiming(None, (time.perf_counter() - t1) * 1e3, None, host_in, None) if self.timing else None
        items = plan.out_items
        if plan.after_run or not plan.checked:
            items = reported_items(plan, self.outputs, got.get, backend=self.backend)
        return host_in, items, timing


def _feed(mem: TensorMemory) -> Any:
    assert isinstance(mem, HostMemory), "a CPU runner stages every input in HostMemory"
    return mem.feed()


__all__ = ["CudaSchedule", "EngineBinding", "HostRun", "Pipelined", "SingleStream", "cuda_schedule",
           "stream_roles"]
