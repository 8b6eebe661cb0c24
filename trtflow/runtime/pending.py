"""A request in flight (:class:`Pending`, future-like) and its stage times (:class:`StageTiming`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from trtflow.runtime import cuda, trace

if TYPE_CHECKING:
    from trtflow.runtime.buffers import BufferSet
    from trtflow.runtime.runner import Runner

T = TypeVar("T")
OutItems = tuple[tuple[str, tuple[int, ...]], ...]  # (output name, shape of this request), in plan order


@dataclass(frozen=True)
class StageTiming:
    """Per-request stage times. GPU stages come from CUDA events (None where not measured: a CUDA
    graph replays H2D, compute and D2H as one unit, reported as ``compute_ms``)."""

    h2d_ms: float | None
    compute_ms: float | None
    d2h_ms: float | None
    host_in_ms: float          # host work before the first copy: checks, copy/pack into staging
    wall_ms: float | None      # submit -> result ready, measured on the host (sync calls only)
    graph: bool = False

    @property
    def stage_sum_ms(self) -> float:
        return sum(x for x in (self.h2d_ms, self.compute_ms, self.d2h_ms) if x is not None)

    def with_wall(self, wall_ms: float) -> StageTiming:
        return replace(self, wall_ms=wall_ms)


def event_timing(bs: BufferSet, *, graph: bool, host_in_ms: float) -> StageTiming:
    """The stage times of the request that just completed on ``bs``, from its timing events."""
    if graph:
        return StageTiming(None, cuda.event_elapsed_ms(bs.t_compute, bs.ev_d2h), None, host_in_ms, None, True)
    return StageTiming(cuda.event_elapsed_ms(bs.t_h2d, bs.ev_h2d), cuda.event_elapsed_ms(bs.t_compute, bs.ev_compute),
                       cuda.event_elapsed_ms(bs.t_d2h, bs.ev_d2h), host_in_ms, None, False)


class Pending(Generic[T]):
    """A request in flight (future-like). :meth:`result` waits for it; :meth:`done` polls;
    :meth:`wait` blocks without holding the runner's lock."""

    __slots__ = (
        "_complete",
        "_convert",
        "_event",
        "_graph",
        "_host_in_ms",
        "_out_items",
        "_retrieved",
        "_runner",
        "_set",
        "_snapshot",
        "_stream",
        "timing",
    )

    def __init__(self, runner: Runner, bs: BufferSet, out_items: OutItems, convert: Callable[[dict[str, Any]], T], *,
                 host_in_ms: float, graph: bool, complete: bool = False, event: int | None = None,
                 stream: int = 0, timing: StageTiming | None = None) -> None:
        # out_items: the request's output shapes, in the order of the set's out_mems
        self._runner, self._set, self._out_items, self._convert = runner, bs, out_items, convert
        self._host_in_ms, self._graph = host_in_ms, graph
        self._complete = complete
        self._retrieved = False
        self._snapshot: dict[str, Any] | None = None
        self.timing = timing  # CUDA requests: measured once complete (with timing=True)
        # completion: this event, or (0) everything enqueued on ``stream`` so far (one stream, no events)
        self._event = bs.ev_d2h if event is None else event
        self._stream = stream

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every output of this request."""
        return dict(self._out_items)

    def done(self) -> bool:
        with self._runner._lock:
            if self._complete or self._snapshot is not None:
                return True
            self._runner._check_open()
            self._complete = cuda.event_query(self._event) if self._event else cuda.stream_query(self._stream)
            if self._complete and self._set.pending is self:
                self._set.idle = True
            return self._complete

    def result(self, *, copy: bool = False) -> T:
        """Wait and return the outputs (views into the buffer set unless ``copy``)."""
        return self._convert(self.result_dict(copy=copy))

    def result_dict(self, *, copy: bool = False) -> dict[str, Any]:
        with self._runner._lock:
            return self._result(copy)

    def wait(self) -> None:
        """Block until the request completed, WITHOUT holding the runner's lock, so other threads keep
        submitting meanwhile (:meth:`result` then returns at once). The GIL is released while CUDA waits."""
        self.block()
        self.mark_complete()

    def block(self) -> None:
        """The waiting half of :meth:`wait`: CUDA waits (GIL released), no lock is taken and nothing is
        recorded; :meth:`mark_complete` records it later (asyncio's watcher threads block here and
        the event loop marks, so the thread never contends for the runner's lock with the loop's
        submits). The event of a request is fixed when it is created; close() synchronizes every
        stream before it destroys events."""
        if self._complete or self._snapshot is not None:
            return
        runner = self._runner
        if runner._closed:
            runner._check_open()
        if self._event:
            cuda.event_synchronize(self._event)
        else:
            cuda.stream_synchronize(self._stream)

    def ready(self) -> bool:
        """Poll without the runner's lock (asyncio's loop polls its requests in flight): True once the
        GPU is done with it. :meth:`mark_complete` records it."""
        if self._complete or self._snapshot is not None:
            return True
        runner = self._runner
        if runner._closed:
            runner._check_open()
        return cuda.event_query(self._event) if self._event else cuda.stream_query(self._stream)

    def mark_complete(self) -> None:
        """Record that the request completed (after :meth:`block` returned): its buffer set is idle."""
        with self._runner._lock:
            self._complete = True
            if self._set.pending is self:
                self._set.idle = True

    # -- runner side (lock held) ---------------------------------------------------------------------
    def _result(self, copy: bool) -> dict[str, Any]:
        if self._snapshot is not None:
            return dict(self._snapshot)
        if self._runner._closed:
            self._runner._check_open()
        self._wait()
        self._retrieved = True
        return self._outputs(copy)

    def _outputs(self, copy: bool) -> dict[str, Any]:
        return {n: mem.result(s, copy=copy) for (n, s), mem in zip(self._out_items, self._set.out_mems)}

    def _wait(self) -> None:
        if not self._complete:
            if not trace.on:
                self._sync()
            else:
                with trace.span("trtflow.wait"):
                    self._sync()
            self._complete = True
            if self._set.pending is self:
                self._set.idle = True
        if self.timing is None and self._runner.timing:
            self.timing = self._runner.last_timing = event_timing(self._set, graph=self._graph,
                                                                  host_in_ms=self._host_in_ms)

    def _sync(self) -> None:
        if self._event:
            cuda.event_synchronize(self._event)
        else:
            cuda.stream_synchronize(self._stream)

    def _take_snapshot(self) -> None:
        """Copy unread outputs out before the buffer set is reused."""
        if self._retrieved or self._snapshot is not None:
            return
        self._wait()
        self._snapshot = self._outputs(True)


__all__ = ["OutItems", "Pending", "StageTiming", "event_timing"]
