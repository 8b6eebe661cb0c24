"""Buffer sets: the memories of one request in flight, and the events that order its stages.

A runner owns ``depth`` buffer sets (1 for sync/async, N for pipelined) and uses them in turn. Each
holds one :class:`~trtflow.runtime.memory.TensorMemory` per engine I/O tensor, the CUDA events its
stages record (H2D done, compute done, D2H done, inputs consumed; three start markers with
``timing``), its captured graphs, and what the request path remembers about its last request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trtflow.runtime import cuda
from trtflow.runtime.graphs import SetGraphs
from trtflow.runtime.memory import TensorMemory

if TYPE_CHECKING:
    from trtflow.runtime.pending import Pending


class BufferSet:
    """The memories of one request in flight, and the events that order its stages."""

    def __init__(self, index: int, mems: dict[str, TensorMemory]) -> None:
        self.index = index
        self.mems = mems
        self.used = False
        self.pending: Pending[Any] | None = None  # the last request of this set (snapshotted before reuse)
        self.ev_h2d = self.ev_compute = self.ev_d2h = self.ev_consumed = 0
        self.t_h2d = self.t_compute = self.t_d2h = 0  # start markers (timing only)
        self.consumed_ok = False
        self.has_mapped_input = False
        self.graphs = SetGraphs()
        # -- request path state (see trtflow.runtime.topology) --
        self.idle = True        # the host saw every request launched on this set complete
        self.done_event = 0     # what the last request recorded last (0: no events, its stream completes it)
        self.graph_ran = False  # the last request ran as one graph on one stream (only ev_d2h follows it)
        self.done_only = False  # the last request recorded ev_d2h only (one stream, the host waits blocking)
        self.in_mems: tuple[TensorMemory, ...] = ()
        self.out_mems: tuple[TensorMemory, ...] = ()
        self.volatile: tuple[tuple[str, TensorMemory], ...] = ()  # addresses may change between requests
        self.outside_in: tuple[int, ...] = ()  # inputs copied eagerly ahead of a whole-request graph

    def index_tensors(self, in_names: tuple[str, ...], out_names: tuple[str, ...]) -> None:
        """Precompute per request: memories in plan order, those whose addresses may change, and the
        inputs copied eagerly ahead of a whole-request graph."""
        self.in_mems = tuple(self.mems[n] for n in in_names)
        self.out_mems = tuple(self.mems[n] for n in out_names)
        self.volatile = tuple((n, m) for n, m in self.mems.items() if not m.fixed_addresses)
        self.outside_in = tuple(i for i, m in enumerate(self.in_mems) if m.outside_graph)

    def create_events(self, *, timing: bool, blocking: bool = False) -> None:
        """``blocking``: the events the host waits on put it to sleep until the GPU reaches them
        (``cudaEventBlockingSync``, ``streams.wait: block``) instead of spinning on a core."""
        self.ev_h2d = cuda.event_create(timing=timing, blocking=blocking)
        self.ev_compute = cuda.event_create(timing=timing, blocking=blocking)
        self.ev_d2h = cuda.event_create(timing=timing, blocking=blocking)
        if timing:
            self.t_h2d, self.t_compute, self.t_d2h = (cuda.event_create(timing=True) for _ in range(3))
        self.has_mapped_input = any(m.strategy == "mapped" and m.is_input for m in self.mems.values())

    def enable_consumed_event(self, *, blocking: bool = False) -> None:
        """The engine fires an event once it has read the inputs: the next H2D into this set may start then."""
        self.ev_consumed = cuda.event_create(blocking=blocking)
        self.consumed_ok = True

    @property
    def events(self) -> list[int]:
        return [e for e in (self.ev_h2d, self.ev_compute, self.ev_d2h, self.ev_consumed,
                            self.t_h2d, self.t_compute, self.t_d2h) if e]

    def host_free_event(self) -> int:
        """After this event the host may rewrite this set's input staging."""
        if self.graph_ran or self.done_only:  # one graph / one stream followed by ev_d2h only
            return self.ev_d2h
        if self.has_mapped_input:
            return self.ev_consumed if self.consumed_ok else self.ev_compute
        return self.ev_h2d

    def device_inputs_free_event(self) -> int:
        return self.ev_consumed if self.consumed_ok else self.ev_compute

    def wait_host_free(self, in_stream: int) -> None:
        """Until the host may rewrite this set's input staging (its previous request read it)."""
        if self.idle:
            return  # the host saw that request complete
        if self.done_event:
            cuda.event_synchronize(self.host_free_event())
        else:  # it recorded no events: one stream, which holds nothing but that request
            cuda.stream_synchronize(in_stream)

    def close(self) -> list[BaseException]:
        """Destroy graphs, memories and events (the caller synchronized the streams); returns the errors met."""
        errors = self.graphs.close()
        for mem in self.mems.values():
            try:
                mem.close()
            except BaseException as exc:  # noqa: BLE001 - keep releasing; the caller reports
                errors.append(exc)
        for ev in self.events:
            try:
                cuda.event_destroy(ev)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        self.ev_h2d = self.ev_compute = self.ev_d2h = self.ev_consumed = self.t_h2d = self.t_compute = self.t_d2h = 0
        return errors


__all__ = ["BufferSet"]
