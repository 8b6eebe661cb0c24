"""CUDA graphs: capture, cache, replay, and when a graph must be thrown away.

Per buffer set a small LRU of captured graphs (:class:`SetGraphs`), keyed by the input shapes and the
device addresses a graph bakes in; the runner's policy (:class:`Graphs`) decides whether graphs are
used at all, captures on a miss after one eager warm-up run (initialisation must not be captured; the
warm-up computes the request) if the engine still says it is ``capturable`` then, falls back to eager for good when a capture fails (saying why in
:attr:`Graphs.notes`), and drops every graph before the engine's input shapes change where a graph
bakes the execution context's state (``CudaEngine.graphs_outlive_shape_changes`` False: TensorRT;
trtexec and NVIDIA's guidance: one graph per context). Engines with their own allocator capture
through :meth:`CudaEngine.capture_graph` (torch); the others through the CUDA runtime here.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from trtflow.backends.base import CapturedGraph, CudaEngine
from trtflow.errors import TrtflowError
from trtflow.runtime import cuda

MAX_GRAPHS_PER_SET = 8


class GraphCaptureFailed(TrtflowError):
    """Capture did not produce a graph; the runner falls back to eager execution."""


class RawGraph:
    """A graph captured with the CUDA runtime (engines that allocate nothing during enqueue)."""

    def __init__(self, graph: int, graph_exec: int) -> None:
        self.graph, self.graph_exec = graph, graph_exec

    def launch(self, stream: int) -> None:
        cuda.graph_launch(self.graph_exec, stream=stream)

    def close(self) -> None:
        if self.graph_exec:
            cuda.graph_exec_destroy(self.graph_exec)
            self.graph_exec = 0
        if self.graph:
            cuda.graph_destroy(self.graph)
            self.graph = 0


def capture_raw(stream: int, body: Callable[[], None]) -> RawGraph:
    """Capture ``body``'s work on ``stream`` (thread-local mode) and instantiate it."""
    cuda.begin_capture(stream)
    try:
        body()
    except Exception as exc:
        left = cuda.abort_capture(stream)
        raise GraphCaptureFailed(f"{type(exc).__name__}: {exc}" + (f" ({left})" if left else "")) from exc
    try:
        graph = cuda.end_capture(stream)
    except Exception as exc:
        cuda.get_last_error()
        raise GraphCaptureFailed(str(exc)) from exc
    try:
        return RawGraph(graph, cuda.graph_instantiate(graph))
    except Exception as exc:
        cuda.graph_destroy(graph)
        raise GraphCaptureFailed(str(exc)) from exc


class SetGraphs:
    """The graphs captured on one buffer set (LRU by key), and the one its last request ran."""

    __slots__ = ("by_key", "last", "last_plan")

    def __init__(self) -> None:
        self.by_key: OrderedDict[tuple[Any, ...], CapturedGraph] = OrderedDict()
        self.last: CapturedGraph | None = None  # the next request at ``last_plan``'s shapes replays it
        self.last_plan: object | None = None     # the ShapePlan it ran at

    def __len__(self) -> int:
        return len(self.by_key)

    def close(self) -> list[BaseException]:
        """Destroy every graph (the caller synchronized the streams); returns the errors met."""
        errors: list[BaseException] = []
        for g in self.by_key.values():
            try:
                g.close()
            except BaseException as exc:  # noqa: BLE001 - keep releasing; the caller reports
                errors.append(exc)
        self.by_key.clear()
        self.last = self.last_plan = None
        return errors


class Graphs:
    """Whether and how one runner uses CUDA graphs, and what happened (:attr:`stats`, :meth:`status`)."""

    def __init__(self, *, wanted: bool, engine: CudaEngine | None, backend: str) -> None:
        self.wanted = wanted
        self.engine = engine
        self.backend = backend
        self.stats = {"captures": 0, "replays": 0, "failures": 0, "dropped": 0}
        self.notes: list[str] = []
        self.on = wanted and engine is not None
        if engine is not None and self.on and not engine.capturable:
            self.on = False
            self.notes.append(f"engine of backend {backend!r} cannot be captured")
            self.stats["failures"] += 1
        #: graphs bake the engine's execution context: kept for its current input shapes only
        self.bake_shapes = self.on and engine is not None and not engine.graphs_outlive_shape_changes
        if self.bake_shapes:
            self.notes.append("graphs are recaptured when the input shapes change (one context, "
                              "whose shapes a graph bakes in)")
        self._after_run_noted = False

    def status(self, device: str) -> str:
        """``off``, ``pending``, ``captured ...`` or ``eager: why``."""
        notes = "; ".join(self.notes)
        if not self.wanted:
            return "off"
        if device != "cuda":
            return "eager: CUDA graphs need a CUDA engine (running on the CPU)"
        if not self.on:
            return f"eager: {notes}" if notes else "eager"
        s = self.stats
        state = f"captured ({s['captures']} captures, {s['replays']} replays)" if s["captures"] else "pending (first call captures)"
        return f"{state}; {notes}" if notes else state

    def note_after_run(self, names: list[str]) -> None:
        """Requests whose output shapes only running tells cannot be captured: say so once."""
        if self.on and not self._after_run_noted:
            self._after_run_noted = True
            self.notes.append(f"outputs {names} have shapes known only after running: requests with them run eagerly")

    def run(self, sg: SetGraphs, key: tuple[Any, ...], body: Callable[[], None], stream: int,
            plan: object) -> bool:
        """Replay the graph of ``key``; on a miss run ``body`` eagerly (warm-up) and capture it.
        Remembers the graph as the set's last (with ``plan``) for the next request's shortcut.
        True when a graph was replayed, False when ``body`` ran eagerly."""
        graph = sg.by_key.get(key)
        if graph is not None:
            sg.by_key.move_to_end(key)
            graph.launch(stream)
            self.stats["replays"] += 1
            sg.last_plan, sg.last = plan, graph
            return True
        sg.last_plan = sg.last = None
        body()  # eager warm-up: initialisation must not be captured, and it computes this request
        cuda.stream_synchronize(stream)
        assert self.engine is not None
        if not self.engine.capturable:  # asked again now (TensorRT-RTX: is_stream_capturable of this stream)
            self.on = False
            self.stats["failures"] += 1
            self.notes.insert(0, f"engine of backend {self.backend!r} says, after the warm-up run, that its "
                              "stream cannot be captured: running eagerly")
            return False
        try:
            graph = self._capture(stream, body)
        except Exception as exc:  # noqa: BLE001 - any capture problem means: run eagerly, say why
            self.on = False
            self.stats["failures"] += 1
            self.notes.insert(0, f"capture failed, running eagerly: {exc}".split("\n  hint")[0])
            with contextlib.suppress(Exception):
                if cuda.is_capturing(stream):
                    cuda.abort_capture(stream)
            with contextlib.suppress(Exception):
                cuda.get_last_error()
            return False
        self.stats["captures"] += 1
        sg.by_key[key] = graph
        while len(sg.by_key) > MAX_GRAPHS_PER_SET:
            cuda.stream_synchronize(stream)
            sg.by_key.popitem(last=False)[1].close()
        sg.last_plan, sg.last = plan, graph
        return False

    def _capture(self, stream: int, body: Callable[[], None]) -> CapturedGraph:
        assert self.engine is not None
        graph = self.engine.capture_graph(stream, body)  # engines with their own allocator (torch)
        return graph if graph is not None else capture_raw(stream, body)

    def drop(self, sets: Sequence[SetGraphs]) -> None:
        """Destroy every graph of every buffer set (the caller synchronized the streams)."""
        for sg in sets:
            errors = sg.close()
            if errors:
                raise errors[0]

    def before_shape_change(self, sets: Sequence[SetGraphs], compute_stream: int) -> None:
        """An input shape of the engine is about to change: where graphs bake the context, drop them
        all (after the compute stream drained: one may still run); the next request recaptures."""
        if not self.bake_shapes:
            return
        n = sum(len(sg) for sg in sets)
        if not n:
            return
        cuda.stream_synchronize(compute_stream)
        self.drop(sets)
        self.stats["dropped"] += n


__all__ = ["MAX_GRAPHS_PER_SET", "GraphCaptureFailed", "Graphs", "RawGraph", "SetGraphs", "capture_raw"]
