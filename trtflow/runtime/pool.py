"""A pool of runners behind one dispatcher: several engine instances on one GPU, one runner per GPU, or both.

::

    from trtflow.runtime.pool import RunnerPool

    with RunnerPool(mod.SegRunner, instances=2, devices="all") as pool:   # or from the recipe's `serving:`
        out = pool(image=x)                       # sync, from any number of threads
        p = pool.submit(image=x); out = p.result()
        for out in pool.stream(requests): ...     # in order, every instance busy
        out = await pool.infer(image=x)           # asyncio

Every instance is a full runner of the same artifact, with its own buffer sets, streams, events and
lock; the instances on one device share one engine where the engine can (TensorRT: one deserialized
engine, an execution context per instance; torch and onnxruntime: a model per instance). A runner on
a chosen device makes that device current around each of its calls (:mod:`trtflow.runtime.devices`).

Dispatch: a request goes to the instance with the fewest requests outstanding (a free one when there
is one), decided under a small lock that is released before the request runs: requests on different
instances never wait for each other. At most ``max_queue`` requests wait for a busy pool; one more
raises :class:`~trtflow.errors.Overloaded` at once (back-pressure a server turns into HTTP 503), so
memory never grows without bound. A request that raises fails alone: its instance keeps serving.

Ordering: ``stream`` and every single caller get results in their own submission order. Results are
views into the serving instance's buffers, as with a runner: valid until that instance reuses the
buffer set, which, in a pool shared by threads, another thread's request can do at any time: pass
``copy=True`` there (asyncio: read the outputs before your next ``await``, or ``copy=True``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from trtflow.errors import Overloaded, RunnerClosed, TrtflowError
from trtflow.runtime import aio, cuda, devices
from trtflow.runtime.aio import LaneStats
from trtflow.runtime.runner import Closing, Pending, Runner

T = TypeVar("T")
DevicesSpec = str | int | Sequence[int] | None


@dataclass(frozen=True)
class InstanceStats:
    """What one instance of a pool did: completed requests (sync + asyncio), errors, in flight now."""

    index: int
    device: str          # "cpu", "cuda" (the current device) or "cuda:<index>"
    requests: int
    errors: int
    in_flight: int


class PoolPending(Generic[T]):
    """A request in flight on one instance of a pool (like :class:`~trtflow.runtime.runner.Pending`)."""

    __slots__ = ("_counted", "_pending", "_pool", "instance")

    def __init__(self, pool: RunnerPool, instance: int, pending: Pending[T]) -> None:
        self._pool, self.instance, self._pending = pool, instance, pending
        self._counted = True

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._pending.shapes

    @property
    def timing(self) -> Any:
        return self._pending.timing

    def done(self) -> bool:
        finished = self._pending.done()
        if finished:
            self._settle(None)
        return finished

    def wait(self) -> None:
        try:
            self._pending.wait()
        except BaseException as exc:
            self._settle(exc)
            raise
        self._settle(None)

    def result(self, *, copy: bool = False) -> T:
        try:
            out = self._pending.result(copy=copy)
        except BaseException as exc:
            self._settle(exc)
            raise
        self._settle(None)
        return out

    def result_dict(self, *, copy: bool = False) -> dict[str, Any]:
        try:
            out = self._pending.result_dict(copy=copy)
        except BaseException as exc:
            self._settle(exc)
            raise
        self._settle(None)
        return out

    def _settle(self, error: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._pool._release(self.instance, error)


class RunnerPool(Closing):
    """N runners of one artifact per device behind one dispatcher; the API of one runner.

    Parameters
    ----------
    runner: a generated runner class (``mod.SegRunner``), or an artifact folder (generic
        :class:`~trtflow.runtime.runner.Runner`, dict results).
    instances: runners per device (default: the recipe's ``serving.instances``, else 1).
    devices: ``"all"``, a GPU index or a list of them (default: the recipe's ``serving.devices``,
        else the current device). One engine per device; ``instances`` contexts on each.
    max_queue: requests allowed to wait for a busy pool before :class:`Overloaded` (default: the
        recipe's ``serving.max_queue``).
    batching: asyncio requests arriving within ``window_ms`` are run as one batch of up to
        ``max_batch`` samples (``{"window_ms": 2, "max_batch": 32}``; default: the recipe's
        ``serving.batching``, else off). Needs a batch profile (dim 0 of every input and output).
    runner_kwargs: passed to every runner (``backend``, ``timing``, ``topology``, ``depth``...).
    """

    def __init__(self, runner: type[Runner] | str | Path, *, instances: int | None = None,
                 devices: DevicesSpec = None, max_queue: int | None = None,
                 batching: Mapping[str, Any] | None = None, **runner_kwargs: Any) -> None:
        self._lock = threading.Lock()  # dispatch decisions and counters only, never held while a request runs
        self._closed = False
        self._aio: aio.Dispatcher | None = None
        self._batcher: aio.Batcher | None = None
        self._turn = 0
        self.runners: list[Runner] = []
        cls, args = (runner, ()) if isinstance(runner, type) else (Runner, (Path(runner),))
        plan = _plan_of(cls, args)
        serving = plan.serving
        self.batching = _batching(plan, batching if batching is not None else serving.batching)
        self.instances = int(instances if instances is not None else serving.instances)
        self.max_queue = int(max_queue if max_queue is not None else serving.max_queue)
        if self.instances < 1 or self.max_queue < 0:
            raise TrtflowError(f"instances must be >= 1 and max_queue >= 0, got {self.instances} and {self.max_queue}")
        spec = devices
        if spec is None and runner_kwargs.get("device") != "cpu" and cuda.cuda_available():
            spec = serving.devices  # the recipe's devices are GPUs: a CPU run ignores them
        self.devices: list[int | None] = [None] if spec is None else list(_resolve(spec))
        try:
            for d in self.devices:
                base: Runner | None = None  # the first instance on a device; the others share its engine
                for _ in range(self.instances):
                    r = cls(*args, device_index=d, share_engine=base, **runner_kwargs)
                    self.runners.append(r)
                    base = base or r
        except BaseException:
            self._close_runners()
            raise
        self._sync = [LaneStats() for _ in self.runners]
        self._async = [LaneStats() for _ in self.runners]
        self._capacity = [max(1, r.buffer_sets) if r.device == "cuda" else 1 for r in self.runners]
        head = self.runners[0]
        self.plan, self.Outputs, self.device, self.backend = head.plan, head.Outputs, head.device, head.backend
        self._convert = head.as_outputs

    # -- dispatch ------------------------------------------------------------------------------------
    def _reap(self) -> None:
        """Close the asyncio dispatcher of an event loop that is gone (its in-flight counts are stale)."""
        d = self._aio
        if d is not None and not d.closed and d.loop.is_closed():
            d.close()

    def _acquire(self) -> int:
        """The instance with the fewest requests outstanding; Overloaded when too many already wait."""
        self._reap()
        with self._lock:
            if self._closed:
                raise RunnerClosed("RunnerPool is closed", hint="create a new pool")
            best, load, total = 0, float("inf"), 0
            count = len(self.runners)
            self._turn = (self._turn + 1) % count  # ties rotate: sequential callers use every instance
            for k in range(count):
                i = (self._turn + k) % count
                n = self._sync[i].in_flight + self._async[i].in_flight
                total += n
                if n / self._capacity[i] < load:  # outstanding per buffer set: a free instance first
                    best, load = i, n / self._capacity[i]
            waiting = total - sum(self._capacity)
            if waiting >= self.max_queue:
                raise Overloaded(f"RunnerPool: {waiting} requests wait for {len(self.runners)} busy instance(s) "
                                 f"(max_queue {self.max_queue})",
                                 hint="retry later (HTTP 503), add instances, or raise max_queue")
            self._sync[best].in_flight += 1
            return best

    def _release(self, i: int, error: BaseException | None) -> None:
        with self._lock:
            s = self._sync[i]
            s.in_flight -= 1
            s.requests += 1
            if error is not None:
                s.errors += 1

    # -- the runner API ------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Run one request on a free (least loaded) instance and wait. Thread-safe; see the module doc on views."""
        i = self._acquire()
        try:
            out = self.runners[i].run(feeds, copy=copy)
        except BaseException as exc:
            self._release(i, exc)
            raise
        self._release(i, None)
        return out

    def __call__(self, *, copy: bool = False, **inputs: Any) -> Any:
        """Like the generated runner's call: keyword inputs (identifiers or names), typed outputs."""
        return self._convert(self.run(inputs, copy=copy))

    def submit_feeds(self, feeds: Mapping[str, Any]) -> PoolPending[dict[str, Any]]:
        """Start one request on the least loaded instance; ``.result()`` waits for it."""
        i = self._acquire()
        try:
            p = self.runners[i].submit_feeds(feeds)
        except BaseException as exc:
            self._release(i, exc)
            raise
        return PoolPending(self, i, p)

    def submit(self, **inputs: Any) -> PoolPending[Any]:
        i = self._acquire()
        try:
            p = self.runners[i].submit_with(inputs, self._convert)
        except BaseException as exc:
            self._release(i, exc)
            raise
        return PoolPending(self, i, p)

    def stream(self, requests: Iterable[Mapping[str, Any]], *, copy: bool = False) -> Iterator[Any]:
        """Run every request with every instance busy (each up to its depth); yield results in order.
        A yielded result (unless ``copy``) is valid until the iterator is advanced."""
        window = sum(self._capacity)
        inflight: deque[PoolPending[Any]] = deque()
        for feeds in requests:
            if len(inflight) >= window:
                yield inflight.popleft().result(copy=copy)
            inflight.append(self.submit(**feeds))
        while inflight:
            yield inflight.popleft().result(copy=copy)

    async def infer_feeds(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """asyncio: one request on a free instance (FIFO when all are busy), awaited without blocking the loop."""
        return await self._infer(feeds, copy=copy, convert=_identity)  # type: ignore[no-any-return]

    async def infer(self, *, copy: bool = False, **inputs: Any) -> Any:
        """asyncio with keyword inputs and typed outputs, like the generated runner's ``infer``."""
        return await self._infer(inputs, copy=copy, convert=self._convert)

    async def _infer(self, feeds: Mapping[str, Any], *, copy: bool, convert: Callable[[dict[str, Any]], Any]) -> Any:
        if self._closed:
            raise RunnerClosed("RunnerPool is closed", hint="create a new pool")
        d = self._aio
        if d is None or d.closed or d.loop is not aio._running_loop():
            d = aio.dispatcher_of(self, lambda: self.runners, max_queue=self.max_queue, stats=self._async,
                                  name="RunnerPool")
        if self.batching is not None:  # outputs are owned arrays: slices of one batch's result, copied
            if self._batcher is None or self._batcher.d is not d:
                self._batcher = aio.Batcher(d, self.plan, self.batching)
            return await self._batcher.infer(feeds, convert)
        return await d.run(feeds, copy=copy, convert=convert)

    # -- state ---------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """asyncio requests waiting for an instance now."""
        return self._aio.queued if self._aio is not None else 0

    def stats(self) -> list[InstanceStats]:
        """Per instance: completed requests, errors and requests in flight (sync and asyncio together)."""
        self._reap()
        out = []
        with self._lock:
            for i, (r, s, a) in enumerate(zip(self.runners, self._sync, self._async)):
                where = r.device if r.device_index is None else f"cuda:{r.device_index}"
                out.append(InstanceStats(i, where, s.requests + a.requests, s.errors + a.errors,
                                         s.in_flight + a.in_flight))
        return out

    def describe(self) -> str:
        lines = [(f"RunnerPool: {len(self.runners)} instance(s) of {self.plan.name!r} ({self.backend} on "
                  f"{self.device}), {self.instances} per device, devices {self.devices}, max_queue {self.max_queue}")]
        for i, r in enumerate(self.runners):
            place = f"; {r.placement.describe()}" if r.placement is not None else ""
            lines.append(f"  instance {i}: {r.topology}, {r.buffer_sets} buffer set(s){place}")
        return "\n".join(lines)

    def close(self) -> None:
        """Finish what is in flight, fail what is queued (RunnerClosed), close every runner; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._batcher is not None:
            self._batcher.close()
        if self._aio is not None:
            self._aio.close()
        self._close_runners()

    def _close_runners(self) -> None:
        errors: list[BaseException] = []
        for r in self.runners:
            try:
                r.close()
            except BaseException as exc:  # noqa: BLE001 - close the others; report the first
                errors.append(exc)
        if errors:
            raise errors[0]


def _identity(x: dict[str, Any]) -> dict[str, Any]:
    return x


def _batching(plan: Any, spec: Mapping[str, Any] | None) -> aio.Batching | None:
    """The batching settings for ``plan``, checked: every input and output has a dynamic batch (dim 0)."""
    if not spec:
        return None
    fixed = [t.name for t in plan.tensors if not t.shape or t.min_shape[0] == t.max_shape[0]]
    if fixed:
        raise TrtflowError(f"batching: tensors {fixed} have no dynamic batch dim (dim 0)",
                           hint="declare inputs.<name>.profile with min/opt/max batch, or turn batching off")
    limit = min(t.max_shape[0] for t in plan.inputs)
    max_batch = int(spec.get("max_batch") or limit)
    window = float(spec.get("window_ms", 2.0))
    if not 1 <= max_batch <= limit or window <= 0:
        raise TrtflowError(f"batching: max_batch {max_batch} must be in 1..{limit} (the profile's max batch) and "
                           f"window_ms {window} > 0")
    return aio.Batching(window, max_batch)


def _resolve(spec: DevicesSpec) -> list[int]:
    return devices.resolve(spec)


def _plan_of(cls: type[Runner], args: tuple[Any, ...]) -> Any:
    from trtflow import artifact as art

    folder = Path(args[0]) if args else cls.ARTIFACT_DIR
    if folder is None:
        raise TrtflowError("RunnerPool: no artifact folder", hint="pass a generated runner class or an artifact path")
    return art.load(Path(folder).resolve())[0]  # checked like the runner checks it


__all__ = ["InstanceStats", "PoolPending", "RunnerPool"]
