"""asyncio for runners and pools: ``await runner.infer(...)`` without blocking the event loop.

How a completion reaches the loop (decided by measuring on the H200, see docs/serving.md):

- CUDA engines: the loop thread submits (the same checks, staging and enqueue as ``submit``, which
  return without waiting), then **polls**: a callback on the loop asks CUDA whether the oldest
  requests in flight are done (``cudaEventQuery``, no wait) and finishes every one that is, in order.
  While polling finds work done, the loop keeps going by itself (the GPU is ahead of the host: the
  usual case with many requests in flight); no other thread touches the GIL. Only when a poll finds
  nothing done does the lane's **watcher thread** step in: it waits for the oldest request
  (``cudaEventSynchronize``, GIL released) and wakes the loop once (``loop.call_soon_threadsafe``),
  which polls again. With ``streams.wait: spin`` the loop polls again at once instead (it burns its
  core while requests are in flight, as spinning on an event does). A CUDA host function
  (``cudaLaunchHostFunc``) was not taken: it runs a Python callback on the driver's thread while the
  stream waits for it, so the stream would stall on the GIL whenever the loop holds it.
- CPU engines (onnxruntime, torch on the CPU): inference blocks, so the runner's worker thread runs
  the request (onnxruntime releases the GIL while it computes) and resolves the future the same way.

A :class:`Dispatcher` belongs to one event loop and feeds one or more runners (lanes): requests wait
in one FIFO queue (bounded: :class:`~trtflow.errors.Overloaded` when full, never unbounded memory) and
go to the lane with a free buffer set and the fewest requests in flight. A lane keeps at most its
buffer sets' worth of requests in flight (``depth``; 1 on the CPU) and completes them in submission
order, so every buffer set is reused only after its previous request completed: a cancelled request
keeps its slot until the GPU is done with its buffers, and never corrupts the next one's.

Buffer lifetime, as for ``submit``: the awaited outputs are views into the runner's buffers, valid
until that buffer set is reused; in asyncio other tasks run at every ``await``, so a view is safe to
read until the caller's next ``await`` (``copy=True`` for owned arrays). Inputs must stay unchanged
until the await returns (the request may start later than the call, when a buffer set frees up).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trtflow.errors import InputError, Overloaded, RunnerClosed, TrtflowError

if TYPE_CHECKING:
    from trtflow.runtime.runner import Pending, Runner

DEFAULT_MAX_QUEUE = 1024


@dataclass
class LaneStats:
    """Per-runner counters of a dispatcher (the pool adds its synchronous calls)."""

    requests: int = 0   # completed, with a result or an error
    errors: int = 0
    in_flight: int = 0
    wakeups: int = 0    # CUDA: times the lane's watcher thread woke the loop (a poll had found nothing done)


class _Lane:
    """One runner as seen from one event loop: up to ``capacity`` requests in flight, completed in
    submission order. Touched on the loop thread only, except :meth:`_watch` and :meth:`_work` (its
    thread). CUDA: the loop submits and polls (:meth:`reap`); the thread only wakes the loop when a
    poll found nothing done (:meth:`watch`). CPU: the thread runs each request."""

    __slots__ = ("_armed", "_batch", "_inflight", "_jobs", "_post", "_runner", "_thread", "capacity", "cpu",
                 "spin", "stats")

    def __init__(self, runner: Runner, post: Callable[[_Done | _Lane], None], stats: LaneStats) -> None:
        self._runner = weakref.ref(runner)  # the thread must not keep an unclosed runner alive
        self.cpu = runner.device != "cuda"
        self.spin = runner.wait == "spin"
        self.capacity = 1 if self.cpu else max(1, runner.buffer_sets)
        self.stats = stats
        self._post = post
        self._batch: list[tuple[Any, asyncio.Future[Any]]] = []  # CPU: started, not yet handed to the thread
        self._inflight: deque[tuple[Pending[Any], asyncio.Future[Any]]] = deque()  # CUDA: oldest first
        self._armed = False  # CUDA: the thread waits for a request and will wake the loop
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work if self.cpu else self._watch, daemon=True,
                                        name=f"trtflow-{'worker' if self.cpu else 'watcher'}-{id(runner):x}")
        self._thread.start()

    def start(self, feeds: Mapping[str, Any], fut: asyncio.Future[Any]) -> None:
        """Start one request (loop thread; the lane has a free slot). CPU: :meth:`flush` hands it to
        the thread; CUDA: it is enqueued now and a later :meth:`reap` finishes it."""
        self.stats.in_flight += 1
        if self.cpu:
            self._batch.append((feeds, fut))
            return
        runner = self._runner()
        try:
            if runner is None:
                raise RunnerClosed("the runner was garbage-collected")
            pending = runner.submit_feeds(feeds)  # enqueues and returns; a set is free (see the module doc)
        except BaseException as exc:  # noqa: BLE001 - a bad request fails alone, the lane keeps serving
            self.finish(fut, None, exc)
            return
        self._inflight.append((pending, fut))

    def flush(self) -> None:
        """CPU: hand the requests started since the last flush to the thread: one queue operation (at
        most one wake-up of the thread) per batch, not per request."""
        if self._batch:
            self._jobs.put(self._batch)
            self._batch = []

    def reap(self) -> int:
        """CUDA, loop thread: finish the requests at the head that the GPU has done (``cudaEventQuery``,
        no wait), in order; how many."""
        q, n = self._inflight, 0
        while q:
            pending, fut = q[0]
            try:
                if not pending.ready():
                    break
            except BaseException as exc:  # noqa: BLE001 - a failed request (CUDA error, closed runner) fails alone
                q.popleft()
                self.finish(fut, None, exc)
                n += 1
                continue
            q.popleft()
            self.finish(fut, pending, None)
            n += 1
        return n

    def watch(self) -> None:
        """CUDA, loop thread, a poll found nothing done: the thread waits for the oldest request and
        wakes the loop (once per arming)."""
        if self._inflight and not self._armed:
            self._armed = True
            self._jobs.put(self._inflight[0][0])

    def _watch(self) -> None:
        """The CUDA lane's thread: wait for the request it is given (GIL released), then post the lane
        itself to the dispatcher, which disarms it and polls."""
        jobs, post = self._jobs, self._post
        while True:
            pending = jobs.get()
            if pending is None:
                return
            with contextlib.suppress(BaseException):  # the loop's poll reports a failure, with its request
                pending.block()
            del pending  # nothing of a finished request stays alive here
            post(self)

    def _work(self) -> None:
        """The CPU lane's thread: runs each request in order and posts each completion to the
        dispatcher. It takes no dispatcher lock: it appends to the dispatcher's inbox."""
        jobs, post = self._jobs, self._post
        while True:
            batch = jobs.get()
            if batch is None:
                return
            for feeds, fut in batch:
                pending: Pending[Any] | None = None
                error: BaseException | None = None
                try:
                    runner = self._runner()
                    if runner is None:
                        raise RunnerClosed("the runner was garbage-collected")
                    pending = runner.submit_feeds(feeds)
                    del runner
                except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting task
                    error = exc
                post((self, fut, pending, error))
                del feeds, fut, pending, error  # nothing of a finished request stays alive here
            del batch

    def finish(self, fut: asyncio.Future[Any], pending: Pending[Any] | None, error: BaseException | None) -> None:
        """Loop thread: free the slot, resolve the future (unless cancelled)."""
        stats = self.stats
        stats.in_flight -= 1
        stats.requests += 1
        if error is not None:
            stats.errors += 1
            if not fut.done():
                fut.set_exception(error)
            return
        assert pending is not None
        if not self.cpu:
            pending.mark_complete()  # the set is idle: its next request needs no waits on its events
        if not fut.done():
            fut.set_result(pending)

    def settle(self) -> None:
        """CUDA, loop thread: wait for every request in flight (the GPU finishes them) and finish them
        (closing)."""
        if self._inflight:
            with contextlib.suppress(BaseException):  # reap reports it, per request
                self._inflight[-1][0].block()  # one stream completes them in order: the last is the latest
            while self._inflight and self.reap():
                pass

    def stop(self) -> None:
        """Let the thread finish what it has, then end it (any thread)."""
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()


_Done = tuple[_Lane, "asyncio.Future[Any]", "Pending[Any] | None", "BaseException | None"]


class Dispatcher:
    """Requests of one event loop to one or more runners: one FIFO queue, a free lane with the fewest
    requests in flight first, at most ``max_queue`` waiting. No lock: everything runs on the loop.

    One callback, :meth:`_step`, starts queued requests and polls the CUDA lanes; it is scheduled
    when a request starts and again while polling finds work done. The lanes' threads (CPU lanes'
    completions, CUDA lanes' wake-ups when a poll found nothing done) append to one inbox: the first
    one of a batch schedules :meth:`_drain` with ``call_soon_threadsafe`` (one loop wake-up), the others
    that arrive before it ran ride along."""

    def __init__(self, runners: Sequence[Runner], loop: asyncio.AbstractEventLoop, *,
                 max_queue: int = DEFAULT_MAX_QUEUE, stats: Sequence[LaneStats] | None = None,
                 name: str = "runner") -> None:
        if max_queue < 0:
            raise TrtflowError(f"max_queue must be >= 0, got {max_queue}")
        self.loop = loop
        self.max_queue = max_queue
        self.name = name
        self.closed = False
        self._queue: deque[tuple[Mapping[str, Any], asyncio.Future[Any]]] = deque()
        self._inbox: deque[_Done | _Lane] = deque()  # CPU completions and CUDA wake-ups, from the lanes' threads
        self._woken = False    # a _drain is scheduled (set by a lane thread, cleared on the loop)
        self._stepping = False  # a _step is scheduled
        counters = list(stats) if stats is not None else [LaneStats() for _ in runners]
        self.lanes = [_Lane(r, self._post, s) for r, s in zip(runners, counters)]
        self._gpu = [lane for lane in self.lanes if not lane.cpu]
        self._one = self.lanes[0] if len(self.lanes) == 1 else None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return sum(lane.stats.in_flight for lane in self.lanes)

    def _free_lane(self) -> _Lane | None:
        one = self._one
        if one is not None:
            return one if one.stats.in_flight < one.capacity else None
        best: _Lane | None = None
        for lane in self.lanes:
            n = lane.stats.in_flight
            if n < lane.capacity and (best is None or n < best.stats.in_flight):
                best = lane
        return best

    async def run(self, feeds: Mapping[str, Any], *, copy: bool = False,
                  convert: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        """Await one request; returns its outputs (``Pending.result_dict(copy=)``, through ``convert``)."""
        if self.closed:
            raise RunnerClosed(f"{self.name} is closed", hint="create a new one")
        fut: asyncio.Future[Any] = self.loop.create_future()
        one = self._one
        if self._queue:
            lane = None
        elif one is not None:  # one lane (a runner's own dispatcher): no scan
            lane = one if one.stats.in_flight < one.capacity else None
        else:
            lane = self._free_lane()
        entry = None
        if lane is not None:
            lane.start(feeds, fut)  # in flight: its lane finishes it even when this await is cancelled
            if lane.cpu:
                lane.flush()
            else:
                self._schedule()  # polls it
        else:
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{self.name}: {len(self._queue)} requests are queued (max_queue {self.max_queue}) "
                                 f"and {self.in_flight} are in flight",
                                 hint="retry later (HTTP 503), add instances, or raise max_queue")
            entry = (feeds, fut)
            self._queue.append(entry)
        try:
            pending = await fut
        except asyncio.CancelledError:
            if entry is not None:
                with contextlib.suppress(ValueError):  # still queued: it never starts
                    self._queue.remove(entry)
            raise
        outs = pending.result_dict(copy=copy)  # before any other task runs: see _step
        return outs if convert is None else convert(outs)

    def _post(self, done: _Done | _Lane) -> None:
        """A lane's thread: hand a CPU completion, or a CUDA lane's wake-up, to the loop; wakes the loop
        only when no drain is scheduled."""
        self._inbox.append(done)
        if not self._woken:
            self._woken = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits any more
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """Loop thread: finish every CPU completion in the inbox, in arrival order (each lane's in
        order), and disarm the CUDA lanes whose thread woke the loop; then :meth:`_step` (at once
        when nothing was finished here, else after the tasks these futures wake)."""
        self._woken = False  # first: a completion appended from now on schedules another drain
        inbox = self._inbox
        woke_tasks = False
        while inbox:
            done = inbox.popleft()
            if isinstance(done, _Lane):
                done._armed = False
                done.stats.wakeups += 1
            else:
                lane, fut, pending, error = done
                lane.finish(fut, pending, error)
                woke_tasks = True
        if woke_tasks or self._stepping:
            self._schedule()  # after the woken tasks
        else:
            self._step()  # no task is woken and unread (a step follows every reap): one loop pass less

    def _schedule(self) -> None:
        if not self._stepping:
            self._stepping = True
            self.loop.call_soon(self._step)

    def _step(self) -> None:
        """Loop thread, scheduled after the tasks that the last completions woke (they read their
        outputs, views into their buffer sets, before a new request reuses a set: no snapshot copy,
        ``Pending._take_snapshot``): start queued requests while a lane is free, then finish the CUDA
        requests the GPU has done. Some were: step again after their tasks. None were: each lane with
        requests in flight has its thread wake the loop (``wait: spin``: step again at once)."""
        self._stepping = False
        q = self._queue
        while q:
            lane = self._free_lane()
            if lane is None:
                break
            feeds, fut = q.popleft()
            if not fut.done():  # a cancelled request is dropped here at the latest
                lane.start(feeds, fut)
        done = 0
        for lane in self.lanes:
            if lane.cpu:
                lane.flush()
            else:
                done += lane.reap()
        if done:
            self._schedule()
            return
        for lane in self._gpu:
            if lane._inflight:
                if lane.spin:
                    self._schedule()
                else:
                    lane.watch()

    def close(self) -> None:
        """Refuse new requests, fail the queued ones with RunnerClosed, let the in-flight ones finish
        their GPU work and end the lanes' threads (any thread; idempotent)."""
        if self.closed:
            return
        self.closed = True

        def fail_queued() -> None:
            while self._queue:
                _, fut = self._queue.popleft()
                if not fut.done():
                    fut.set_exception(RunnerClosed(f"{self.name} was closed while this request was queued"))

        def settle() -> None:
            for lane in self._gpu:
                lane.settle()

        if _running_loop() is self.loop:
            fail_queued()
            settle()
        elif not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                self.loop.call_soon_threadsafe(fail_queued)
                self.loop.call_soon_threadsafe(settle)
        for lane in self.lanes:
            lane.stop()
            if self.loop.is_closed():  # completions that could not reach a closed loop: nothing is in flight now
                lane.stats.in_flight = 0
                lane._inflight.clear()


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: requests arriving within ``window_ms`` of the first one are concatenated along
    the batch dim (dim 0 of every input) up to ``max_batch`` samples and run as one request."""

    window_ms: float
    max_batch: int


@dataclass
class _Member:
    arrays: list[Any]
    n: int
    fut: asyncio.Future[Any]


class Batcher:
    """Joins the requests of one event loop into batches in front of a :class:`Dispatcher`.

    Each request is checked alone (dtype, rank, one batch size for all inputs, at most ``max_batch``),
    so a bad one fails alone; requests whose other dims differ go into separate batches. A batch is
    sent when it is full or its window has passed; its outputs (dim 0 = the batch) are split back
    and each caller gets owned arrays (slices of one result are shared: they are copied).
    """

    def __init__(self, dispatcher: Dispatcher, plan: Any, batching: Batching) -> None:
        from trtflow.runtime.memory import np_dtype

        self.d = dispatcher
        self.window_s = batching.window_ms / 1e3
        self.max_batch = batching.max_batch
        self._inputs = [(t.name, np_dtype(t.dtype), len(t.shape)) for t in plan.inputs]
        self._names = {**{t.ident: t.name for t in plan.inputs}, **{t.name: t.name for t in plan.inputs}}
        self._members: list[_Member] = []
        self._key: tuple[Any, ...] | None = None
        self._total = 0
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # sent so far (statistics)

    def _split(self, feeds: Mapping[str, Any]) -> tuple[list[Any], int, tuple[Any, ...]]:
        byname = {self._names.get(k, k): v for k, v in feeds.items()}
        if set(byname) != {n for n, _, _ in self._inputs}:
            raise InputError(f"inputs: got {sorted(byname)}, expected {[n for n, _, _ in self._inputs]}")
        arrays, n = [], -1
        for name, dtype, rank in self._inputs:
            x = byname[name]
            if not isinstance(x, np.ndarray) or x.dtype != dtype or x.ndim != rank:
                got = f"{x.dtype}{list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
                raise InputError(f"input {name!r}: batching expects a host array {dtype} of rank {rank}, got {got}")
            if n not in (-1, x.shape[0]):
                raise InputError(f"input {name!r}: batch {x.shape[0]}, the other inputs have {n}")
            n = x.shape[0]
            arrays.append(x)
        if not 1 <= n <= self.max_batch:
            raise InputError(f"batch of {n} samples; batching takes 1..{self.max_batch} per request")
        return arrays, n, tuple(a.shape[1:] for a in arrays)

    async def infer(self, feeds: Mapping[str, Any], convert: Callable[[dict[str, Any]], Any]) -> Any:
        arrays, n, key = self._split(feeds)
        if self._members and (key != self._key or self._total + n > self.max_batch):
            self._flush()
        fut: asyncio.Future[Any] = self.d.loop.create_future()
        self._members.append(_Member(arrays, n, fut))
        self._key = key
        self._total += n
        if self._total >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = self.d.loop.call_later(self.window_s, self._flush)
        return convert(await fut)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        members, self._members, self._total = [m for m in self._members if not m.fut.done()], [], 0
        if not members:
            return
        feeds = {name: (members[0].arrays[i] if len(members) == 1 else np.concatenate([m.arrays[i] for m in members]))
                 for i, (name, _, _) in enumerate(self._inputs)}
        self.batches += 1
        asyncio.ensure_future(self._run(feeds, members))

    async def _run(self, feeds: dict[str, Any], members: list[_Member]) -> None:
        """One batch: its outputs (dim 0 = the batch) are split back and copied before the next
        ``await``, while they are still this batch's (views into a buffer set)."""
        try:
            outs = await self.d.run(feeds)
            total = sum(m.n for m in members)
            bad = [k for k, v in outs.items() if not v.shape or v.shape[0] != total]
            if bad:
                raise InputError(f"outputs {bad} do not have the batch ({total}) as dim 0: batching cannot split them")
            parts, off = [], 0
            for m in members:
                parts.append({k: np.array(v[off:off + m.n]) for k, v in outs.items()})
                off += m.n
        except BaseException as exc:  # every member of the batch gets it
            error = RunnerClosed("the batch was cancelled") if isinstance(exc, asyncio.CancelledError) else exc
            for m in members:
                if not m.fut.done():
                    m.fut.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for m, part in zip(members, parts):
            if not m.fut.done():
                m.fut.set_result(part)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for m in self._members:
            if not m.fut.done():
                m.fut.set_exception(RunnerClosed(f"{self.d.name} was closed while this request waited for its batch"))
        self._members = []


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def dispatcher_of(owner: Any, runners: Callable[[], Sequence[Runner]], *, max_queue: int = DEFAULT_MAX_QUEUE,
                  stats: Sequence[LaneStats] | None = None, name: str = "runner") -> Dispatcher:
    """The dispatcher ``owner`` (a runner or a pool) keeps for the running loop; a new one when the
    loop changed (e.g. successive ``asyncio.run`` calls) and the old one has nothing in flight."""
    loop = asyncio.get_running_loop()
    current: Dispatcher | None = getattr(owner, "_aio", None)
    if current is not None and current.loop is loop and not current.closed:
        return current
    if current is not None and not current.closed:
        if not current.loop.is_closed() and (current.in_flight or current.queued):
            raise TrtflowError(f"{name} has requests in flight on another event loop",
                               hint="use one event loop per runner (or one runner per loop)")
        current.close()
    d = Dispatcher(runners(), loop, max_queue=max_queue, stats=stats, name=name)
    owner._aio = d
    return d


def infer(runner: Runner, feeds: Mapping[str, Any], *, copy: bool,
          convert: Callable[[dict[str, Any]], Any] | None) -> Awaitable[Any]:
    """``await runner.infer_feeds(feeds)``: through the runner's own one-lane dispatcher (a plain
    function returning the dispatcher's coroutine: one coroutine frame less per request). Called
    from the runner's coroutine, so a loop is running."""
    if runner._closed:
        runner._check_open()
    d = getattr(runner, "_aio", None)
    if d is None or d.loop is not asyncio.get_running_loop() or d.closed:
        d = dispatcher_of(runner, lambda: [runner], name=type(runner).__name__)
        runner._before_close.append(d.close)
    return d.run(feeds, copy=copy, convert=convert)


__all__ = ["DEFAULT_MAX_QUEUE", "Batcher", "Batching", "Dispatcher", "LaneStats", "dispatcher_of", "infer"]
