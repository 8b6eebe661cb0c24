"""The Runner base class: input checks, memory strategies, stream topologies and CUDA graphs.

A generated ``runner.py`` subclasses :class:`Runner` and declares, in ``_allocate()``, exactly which
streams and buffer sets it owns; everything else (checks, staging, event plan, graphs) lives here,
once. The same code path runs on a CPU-only machine: the engine is then a CPU engine, every memory
strategy is plain numpy memory, and the runner calls ``engine.infer``.

Topologies (``plan.streams``):

- ``sync``: one stream; H2D, enqueue, D2H, synchronize.
- ``async``: one stream, one buffer set; :meth:`submit_feeds` returns a :class:`Pending` at once.
- ``pipelined`` (depth N): N buffer sets and three streams (H2D, compute, D2H) chained by events,
  trtexec style: the H2D of request i+1 and the D2H of request i-1 overlap the compute of request i.
  :meth:`stream` keeps N requests in flight and yields results in order.
- ``cuda_graph: true``: after one eager warm-up run, copy-in + enqueue + copy-out are captured on the
  stream (pipelined: the enqueue of each buffer set) and replayed; a change of a bound address
  recaptures. A failed capture falls back to eager, and :attr:`Runner.graph_status` says why.
  Shapes: a TensorRT graph bakes the state of the execution context it was captured from, so one
  replayed after that context's input shapes changed is undefined. The runner has one context per
  engine and is safe by construction: when an input shape changes, every graph is dropped (after the
  compute stream drained) and the new shape is warmed up and recaptured (trtexec's "one graph per
  context"); steady shapes replay. Engines whose graphs own their state
  (``CudaEngine.graphs_outlive_shape_changes``: torch) keep a small cache of graphs per shape.

Output shapes (:mod:`trtflow.runtime.shapes`): buffers are allocated at the profile's max shape; each
request's output shape comes from the engine where it can say before running, else from the plan's
shape expression, else (data-dependent dims) from what the engine reports after running. Never guessed.

Output arrays are views into the runner's buffers, valid until their buffer set is reused (the next
call for sync/async, N calls later for pipelined) or the runner is closed; pass ``copy=True`` for
owned arrays. A result that was never read is copied out before its buffer set is reused.

Thread safety: one lock serializes every public method, so a runner may be shared by threads
(requests then run one at a time; use one runner per thread for parallel engines).

The request path is kept lean, as its host time is the floor of every small model's latency: the
lock is taken once per call; per-tensor expectations (dtype, valid shapes), the feed key order and
per-shape data (output shapes, byte counts, host views) are cached; engine bindings and the graph
lookup are skipped when shapes and addresses equal the previous request's; no closure is made per
call; and with one stream and ``timing=False`` no event is recorded at all (the stream orders the
request and synchronizing it completes it, since a set holds one request at a time). Pipelined
topologies record the three stage events their streams wait on; waits on a buffer set whose previous
request the host already saw complete are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from typing_extensions import Self

from trtflow import artifact as art
from trtflow.backends.base import (
    Backend,
    CapturedGraph,
    CpuEngine,
    CudaEngine,
    Device,
    get_backend,
    pick_executor,
)
from trtflow.errors import ArtifactError, BackendMissing, InputError, RunnerClosed, TrtflowError
from trtflow.plan.model import TensorPlan
from trtflow.runtime import cuda, devices
from trtflow.runtime.devices import DeviceLock
from trtflow.runtime.memory import (
    HostRegistry,
    RegisteredMemory,
    TensorMemory,
    cuda_array_info,
    make_memory,
    np_dtype,
)
from trtflow.runtime.shapes import OutputShapes, ShapePlan, reported_items

T = TypeVar("T")
R = TypeVar("R", bound="Runner")
TOPOLOGIES = ("sync", "async", "pipelined")
MAX_GRAPHS_PER_SET = 8

def _load_nvtx() -> Any:
    """The optional ``nvtx`` package (ranges show up in Nsight Systems); None when absent or broken."""
    if importlib.util.find_spec("nvtx") is None:
        return None
    try:
        return importlib.import_module("nvtx")
    except Exception:  # noqa: BLE001 - a broken install must not break inference
        return None


_nvtx: Any = _load_nvtx()
_NO_RANGE = contextlib.nullcontext()
_ranges: dict[str, Any] = {}


def _range(name: str) -> contextlib.AbstractContextManager[Any]:
    """NVTX range ``name`` (domain trtflow), built once and reused; a shared no-op without nvtx.
    The request path checks ``_nvtx is None`` itself and enters no context at all then."""
    if _nvtx is None:
        return _NO_RANGE
    r = _ranges.get(name)
    if r is None:
        r = _ranges[name] = _nvtx.annotate(name, domain="trtflow")
    return r  # type: ignore[no-any-return]


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


class GraphCaptureFailed(TrtflowError):
    """Capture did not produce a graph; the runner falls back to eager execution."""


class _RawGraph:
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


def capture_raw(stream: int, body: Callable[[], None]) -> _RawGraph:
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
        return _RawGraph(graph, cuda.graph_instantiate(graph))
    except Exception as exc:
        cuda.graph_destroy(graph)
        raise GraphCaptureFailed(str(exc)) from exc


class _BufferSet:
    """The memories of one request in flight, and the events that order its stages."""

    def __init__(self, index: int, mems: dict[str, TensorMemory]) -> None:
        self.index = index
        self.mems = mems
        self.used = False
        self.pending: Pending[Any] | None = None
        self.ev_h2d = self.ev_compute = self.ev_d2h = self.ev_consumed = 0
        self.t_h2d = self.t_compute = self.t_d2h = 0  # start markers (timing only)
        self.consumed_ok = False
        self.has_mapped_input = False
        self.graphs: OrderedDict[tuple[Any, ...], CapturedGraph] = OrderedDict()
        # -- request path state (see Runner._index_sets / _launch) --
        self.idle = True        # the host saw every request launched on this set complete
        self.done_event = 0     # what the last request recorded last (0: no events, its stream completes it)
        self.graph_ran = False  # the last request ran as one graph on one stream (only ev_d2h follows it)
        self.in_mems: tuple[TensorMemory, ...] = ()
        self.out_mems: tuple[TensorMemory, ...] = ()
        self.volatile: tuple[tuple[str, TensorMemory], ...] = ()  # addresses may change between requests
        self.outside_in: tuple[int, ...] = ()  # inputs copied eagerly ahead of a whole-request graph
        self.last_plan: ShapePlan | None = None  # shapes of the last graph run on this set, and that graph
        self.last_graph: CapturedGraph | None = None

    @property
    def events(self) -> list[int]:
        return [e for e in (self.ev_h2d, self.ev_compute, self.ev_d2h, self.ev_consumed,
                            self.t_h2d, self.t_compute, self.t_d2h) if e]

    def host_free_event(self) -> int:
        """After this event the host may rewrite this set's input staging."""
        if self.graph_ran:  # copies, compute and D2H ran as one graph, followed by ev_d2h only
            return self.ev_d2h
        if self.has_mapped_input:
            return self.ev_consumed if self.consumed_ok else self.ev_compute
        return self.ev_h2d

    def device_inputs_free_event(self) -> int:
        return self.ev_consumed if self.consumed_ok else self.ev_compute


class _InputSpec:
    """What a valid host array for one input looks like, for the one-compare-each fast check."""

    __slots__ = ("device", "dtype", "shapes_ok", "t")

    def __init__(self, t: TensorPlan, *, device: bool) -> None:
        self.t = t
        self.dtype = np_dtype(t.dtype)
        self.device = device  # a CUDA array is expected: always the full check
        self.shapes_ok: set[tuple[int, ...]] = set()  # shapes that passed the full check (profile bounds)


class Pending(Generic[T]):
    """A request in flight (future-like). :meth:`result` waits for it; :meth:`done` polls."""

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
        "_t_submit",
        "timing",
    )

    def __init__(self, runner: Runner, bs: _BufferSet, out_items: tuple[tuple[str, tuple[int, ...]], ...],
                 convert: Callable[[dict[str, Any]], T], *, host_in_ms: float, t_submit: float,
                 graph: bool, complete: bool = False, event: int | None = None, stream: int = 0) -> None:
        # out_items: (output name, shape of this request) in plan order, the set's out_mems' order
        self._runner, self._set, self._out_items, self._convert = runner, bs, out_items, convert
        self._host_in_ms, self._t_submit, self._graph = host_in_ms, t_submit, graph
        self._complete = complete
        self._retrieved = False
        self._snapshot: dict[str, Any] | None = None
        self.timing: StageTiming | None = None
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
            if _nvtx is None:
                self._sync()
            else:
                with _range("trtflow.wait"):
                    self._sync()
            self._complete = True
            if self._set.pending is self:
                self._set.idle = True
        if self.timing is None and self._runner.timing:
            self.timing = self._runner._timing_of(self, wall=None)

    def wait(self) -> None:
        """Block until the request completed, WITHOUT holding the runner's lock, so other threads keep
        submitting meanwhile (a completion thread waits here; :meth:`result` then returns at once).
        The GIL is released while CUDA waits."""
        runner = self._runner
        with runner._lock:
            if self._complete or self._snapshot is not None:
                return
            runner._check_open()
            event, stream = self._event, self._stream
        if event:  # outside the lock; close() synchronizes every stream before it destroys events
            cuda.event_synchronize(event)
        else:
            cuda.stream_synchronize(stream)
        with runner._lock:
            self._complete = True
            if self._set.pending is self:
                self._set.idle = True

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


class Runner:
    """Runs one artifact. Subclassed by every generated ``runner.py``; usable directly too.

    Parameters
    ----------
    artifact_dir: the artifact folder (default: ``ARTIFACT_DIR``, the generated module's folder).
    backend: executor to use (``auto``: the builder's runtime where it can execute, else torch/onnxruntime).
    device: ``auto`` (CUDA when available and the executor supports it), ``cuda`` or ``cpu``.
    check_finite: reject inputs holding NaN or Inf (host arrays only; costs one pass over the data).
    timing: record CUDA events around H2D / compute / D2H of every request (see ``last_timing``).
    topology, depth, cuda_graph: override ``plan.streams`` (experiments, benchmarks).
    allow_host_code: let the engine run host code embedded in the plan (TensorRT version-compatible
        plans carry a lean runtime). Off by default: loading such a plan is refused with a hint.
    device_index: run on this GPU (default: the caller's current device). The runner then makes it
        current around every call and allocates its pinned staging NUMA-local to it
        (:mod:`trtflow.runtime.devices`); a pool of runners on several GPUs uses this.
    share_engine: another open runner of the same artifact and device whose engine this one shares
        (TensorRT: a second execution context of the same deserialized engine); engines that cannot
        share open their own. Each runner keeps its own buffer sets, streams and lock.
    """

    ARTIFACT_DIR: ClassVar[Path | None] = None
    #: NamedTuple type of the outputs (generated runners); None: results are dicts keyed by name
    Outputs: ClassVar[Any] = None
    INPUT_NAMES: ClassVar[tuple[str, ...] | None] = None
    OUTPUT_NAMES: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, artifact_dir: str | Path | None = None, *, backend: str = "auto", device: str = "auto",
                 check_finite: bool = False, timing: bool = False, topology: str | None = None,
                 depth: int | None = None, cuda_graph: bool | None = None, allow_host_code: bool = False,
                 device_index: int | None = None, share_engine: Runner | None = None) -> None:
        self.device_index = device_index
        self._lock: Any = threading.RLock() if device_index is None else DeviceLock(device_index)
        self._before_close: list[Callable[[], None]] = []  # run first by close(), outside the lock
        self.placement: devices.DevicePlacement | None = None  # NUMA placement of a chosen device
        self._closed = False
        self._engine: CudaEngine | CpuEngine | None = None
        self._cuda: CudaEngine | None = None  # the engine as what it is (exactly one of the two is set)
        self._cpu: CpuEngine | None = None
        self._streams: dict[str, int] = {}
        self._sets: list[_BufferSet] = []
        self._allocated: list[TensorMemory] = []
        self._registry = HostRegistry()
        self._user_keys: dict[str, tuple[int, int]] = {}
        self._seq = 0
        self._engine_shapes: dict[str, tuple[int, ...]] = {}
        self._engine_addrs: dict[str, int] = {}
        self._engine_consumed = 0
        self._scratch = 0
        self.check_finite = check_finite
        self.timing = timing
        self.last_timing: StageTiming | None = None
        self.graph_stats = {"captures": 0, "replays": 0, "failures": 0, "dropped": 0}
        self._graph_notes: list[str] = []
        self._graphs_bake_shapes = False
        self._after_run_noted = False
        # request path caches (filled by _index_sets and on first use)
        self._in_names: tuple[str, ...] = ()
        self._out_names: tuple[str, ...] = ()
        self._specs: tuple[_InputSpec, ...] = ()
        self._feed_orders: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._plans: dict[tuple[tuple[int, ...], ...], ShapePlan] = {}
        self._bound: tuple[_BufferSet, ShapePlan] | None = None  # what the engine is bound to now
        self._s_in = self._s_c = self._s_out = 0
        self._pipelined = False
        self._in_name_set: frozenset[str] = frozenset()

        folder = artifact_dir if artifact_dir is not None else self.ARTIFACT_DIR
        if folder is None:
            raise ArtifactError("no artifact folder given", hint="Runner(artifact_dir) or use the generated runner")
        self.artifact_dir = Path(folder).resolve()
        # report present and listing every file, hashes match, plan values in range (artifact.load)
        self.plan, self.report = art.load(self.artifact_dir)
        self._out_shapes = OutputShapes(self.plan, where=str(self.artifact_dir / "plan.json"))
        streams = self.plan.streams
        self.topology = topology or str(streams.get("topology", "sync"))
        if self.topology not in TOPOLOGIES:
            raise ArtifactError(f"unknown stream topology {self.topology!r}", hint=f"one of {', '.join(TOPOLOGIES)}")
        self.depth = (art.check_depth(streams.get("depth", 2) if depth is None else depth, "Runner(depth=...)")
                      if self.topology == "pipelined" else 1)
        self.cuda_graph = bool(streams.get("cuda_graph", False) if cuda_graph is None else cuda_graph)
        self._check_declared_names()

        builder = str(self.report.get("backend") or self.plan.build.get("backend") or "auto")
        if builder == "auto":
            builder = "onnxruntime"  # every artifact carries the lowered ONNX model
        self._executor = pick_executor(builder, prefer=backend)
        self.backend = self._executor.name
        self.device = _pick_device(self._executor, device)
        if device_index is not None and self.device != "cuda":
            raise BackendMissing(f"device_index={device_index}: the {self.backend} engine runs on the {self.device}",
                                 hint="device_index chooses a GPU; leave it out on the CPU")

        try:
            with self._lock:  # a chosen device is current while the engine opens and buffers are allocated
                self._engine = self._open_engine(allow_host_code, share_engine)
                self._cuda, self._cpu = _engine_kind(self._engine, self.device, self.backend)
                self.placement = devices.placement(device_index) if device_index is not None else None
                with devices.local_allocation(self.placement) if self.placement else contextlib.nullcontext():
                    self._allocate()
                self._check_allocation()
                self._setup_events()
                self._index_sets()
        except BaseException:
            self.close()
            raise
        self._graph_on = self.cuda_graph and self._cuda is not None
        if self._cuda is not None and self._graph_on and not self._cuda.capturable:
            self._graph_on = False
            self._graph_notes.append(f"engine of backend {self.backend!r} cannot be captured")
            self.graph_stats["failures"] += 1
        # graphs of an engine whose execution context they bake are kept for its current shapes only
        self._graphs_bake_shapes = (self._graph_on and self._cuda is not None
                                    and not self._cuda.graphs_outlive_shape_changes)
        if self._graphs_bake_shapes:
            self._graph_notes.append("graphs are recaptured when the input shapes change (one context, "
                                     "whose shapes a graph bakes in)")

    def _open_engine(self, allow_host_code: bool, share: Runner | None) -> CudaEngine | CpuEngine:
        """A new engine, or a new instance of ``share``'s engine where the engine can make one."""
        if share is not None:
            if (share.artifact_dir, share.backend, share.device, share.device_index) != (
                    self.artifact_dir, self.backend, self.device, self.device_index):
                raise ArtifactError("share_engine: the other runner runs another artifact, backend or device",
                                    hint="share engines only between runners of one artifact on one device")
            share._check_open()
            assert share._engine is not None
            instance = share._engine.new_instance()
            if isinstance(instance, (CudaEngine, CpuEngine)):
                return instance
        return self._executor().open(self.artifact_dir, self.plan, device=self.device,
                                     allow_host_code=allow_host_code)

    # == what a generated runner declares ==============================================================
    def _allocate(self) -> None:
        """Create the streams and buffer sets this runner owns. Generated runners spell this out."""
        self._create_streams()
        self._engine_scratch()
        for _ in range(self.depth):
            self._add_buffer_set({t.name: self._memory(t.name, t.memory) for t in self.plan.tensors})

    def _create_streams(self) -> None:
        """sync/async: one stream ``main``; pipelined: ``h2d``, ``compute``, ``d2h``. None on the CPU."""
        if self.device != "cuda":
            return
        roles = ("h2d", "compute", "d2h") if self.topology == "pipelined" else ("main",)
        for role in roles:
            self._streams[role] = cuda.stream_create(non_blocking=True)

    def _engine_scratch(self) -> None:
        """Device scratch memory the engine asks for (TensorRT user-managed memory), once; an engine
        whose ``scratch_size`` is 0 gets nothing and needs nothing."""
        engine = self._cuda
        if engine is None:
            return
        size = int(engine.scratch_size)
        if size > 0:
            self._scratch = cuda.malloc(size)  # cudaMalloc returns 256-byte aligned memory
            engine.set_scratch(self._scratch)

    def _view_or_none(self, name: str) -> np.ndarray | None:
        """:meth:`input_view` at the plan shape, or None where the strategy has no host staging."""
        try:
            return self.input_view(name)
        except InputError:
            return None

    def _memory(self, name: str, strategy: str) -> TensorMemory:
        """The memory of tensor ``name`` with ``strategy``, at its max shape (see trtflow.runtime.memory)."""
        tensor = self.plan.tensor(name)
        if strategy != tensor.memory:
            raise ArtifactError(f"runner.py allocates {name!r} as {strategy}, plan.json says {tensor.memory}",
                                hint="runner.py is stale: regenerate it (trtflow build)")
        mem = make_memory(tensor, strategy, device=self.device, registry=self._registry, graph=self.cuda_graph)
        # Tracked from birth: if a later allocation of the same set fails (out of memory), the set never
        # reaches _add_buffer_set, and close() must still free this one.
        self._allocated.append(mem)
        return mem

    def _add_buffer_set(self, mems: Mapping[str, TensorMemory]) -> None:
        self._sets.append(_BufferSet(len(self._sets), dict(mems)))

    # == construction checks ===========================================================================
    def _check_declared_names(self) -> None:
        names_in = tuple(t.name for t in self.plan.inputs)
        names_out = tuple(t.name for t in self.plan.outputs)
        for declared, actual, what in ((self.INPUT_NAMES, names_in, "inputs"), (self.OUTPUT_NAMES, names_out, "outputs")):
            if declared is not None and tuple(declared) != actual:
                raise ArtifactError(f"runner.py declares {what} {list(declared)}, plan.json has {list(actual)}",
                                    hint="runner.py is stale: regenerate it (trtflow build)")
        self._ident_to_name = {t.ident: t.name for t in self.plan.tensors}

    def _check_allocation(self) -> None:
        if len(self._sets) != self.depth:
            raise ArtifactError(f"runner.py allocated {len(self._sets)} buffer sets, topology needs {self.depth}")
        want = {t.name for t in self.plan.tensors}
        for bs in self._sets:
            if set(bs.mems) != want:
                missing, extra = sorted(want - set(bs.mems)), sorted(set(bs.mems) - want)
                raise ArtifactError(f"buffer set {bs.index}: missing {missing}, unknown {extra}",
                                    hint="runner.py is stale: regenerate it (trtflow build)")
        if self.device == "cuda":
            roles = {"h2d", "compute", "d2h"} if self.topology == "pipelined" else {"main"}
            if set(self._streams) != roles:
                raise ArtifactError(f"runner.py created streams {sorted(self._streams)}, {self.topology} needs {sorted(roles)}")
        if self.cuda_graph and self.device == "cuda":
            staged = [t.name for t in self.plan.tensors if t.memory == "pageable"]
            if staged:
                self._graph_notes.append(f"pageable tensors {staged} are staged through pinned buffers "
                                         "(pageable copies cannot be captured)")
            copied = [t.name for t in self.plan.inputs if t.memory == "device"]
            if copied:
                self._graph_notes.append(f"device inputs {copied} are copied D2D into the runner's buffers "
                                         "before each replay (a graph bakes in addresses)")

    def _setup_events(self) -> None:
        engine = self._cuda
        if engine is None:
            return
        for bs in self._sets:
            bs.ev_h2d = cuda.event_create(timing=self.timing)
            bs.ev_compute = cuda.event_create(timing=self.timing)
            bs.ev_d2h = cuda.event_create(timing=self.timing)
            if self.timing:
                bs.t_h2d, bs.t_compute, bs.t_d2h = (cuda.event_create(timing=True) for _ in range(3))
            bs.has_mapped_input = any(m.strategy == "mapped" and m.is_input for m in bs.mems.values())
        # Inputs-consumed events let the next H2D into a buffer set start before its compute ends.
        probe = cuda.event_create()
        supported = bool(engine.set_input_consumed_event(probe))
        cuda.event_destroy(probe)
        if supported:
            for bs in self._sets:
                bs.ev_consumed = cuda.event_create()
                bs.consumed_ok = True

    def _index_sets(self) -> None:
        """Precompute what every request needs: names, input expectations, streams, and per buffer
        set its memories in plan order, those whose addresses may change, eager-before-graph inputs."""
        self._in_names = tuple(t.name for t in self.plan.inputs)
        self._out_names = tuple(t.name for t in self.plan.outputs)
        self._in_name_set = frozenset(self._in_names)
        self._specs = tuple(_InputSpec(t, device=t.memory == "device" and self.device == "cuda")
                            for t in self.plan.inputs)
        self._pipelined = self.topology == "pipelined"
        if self.device == "cuda":
            if self._pipelined:
                self._s_in, self._s_c, self._s_out = (self._streams["h2d"], self._streams["compute"],
                                                      self._streams["d2h"])
            else:
                self._s_in = self._s_c = self._s_out = self._streams["main"]
        for bs in self._sets:
            bs.in_mems = tuple(bs.mems[n] for n in self._in_names)
            bs.out_mems = tuple(bs.mems[n] for n in self._out_names)
            bs.volatile = tuple((n, m) for n, m in bs.mems.items() if not m.fixed_addresses)
            bs.outside_in = tuple(i for i, m in enumerate(bs.in_mems) if m.outside_graph)

    # == public API =====================================================================================
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def graph_status(self) -> str:
        """Why and how CUDA graphs are (not) used: ``off``, ``pending``, ``captured ...`` or ``eager: why``."""
        notes = "; ".join(self._graph_notes)
        if not self.cuda_graph:
            return "off"
        if self.device != "cuda":
            return "eager: CUDA graphs need a CUDA engine (running on the CPU)"
        if not self._graph_on:
            return f"eager: {notes}" if notes else "eager"
        s = self.graph_stats
        state = f"captured ({s['captures']} captures, {s['replays']} replays)" if s["captures"] else "pending (first call captures)"
        return f"{state}; {notes}" if notes else state

    @property
    def streams(self) -> dict[str, int]:
        return dict(self._streams)

    @property
    def buffer_sets(self) -> int:
        return len(self._sets)

    def run(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Run one request and wait. ``feeds`` maps tensor names (or identifiers) to arrays."""
        return self._call(feeds, copy=copy, convert=_identity)  # type: ignore[no-any-return]

    def submit_feeds(self, feeds: Mapping[str, Any]) -> Pending[dict[str, Any]]:
        """Start one request; returns at once with a :class:`Pending` (``.result()``, ``.done()``)."""
        return self._submit(feeds, convert=_identity)

    def stream(self, requests: Iterable[Mapping[str, Any]], *, copy: bool = False) -> Iterator[Any]:
        """Run every request, keeping up to ``depth`` in flight; yield results in order.

        A yielded result (unless ``copy``) is valid until the iterator is advanced.
        """
        inflight: deque[Pending[Any]] = deque()
        for feeds in requests:
            if len(inflight) >= self.depth:
                yield inflight.popleft().result(copy=copy)
            inflight.append(self._submit(feeds, convert=self._convert_outputs))
        while inflight:
            yield inflight.popleft().result(copy=copy)

    def input_view(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Host staging of input ``name`` for the next request, to write into in place.

        Pass the view itself as the input of the next call: no host copy is made. Only strategies
        with runner-owned host memory have one (pinned, write_combined, mapped; registered: the
        registered buffer; CPU: a host array); vectorized formats have none (staging is packed).
        """
        with self._lock:
            self._check_open()
            name = self._ident_to_name.get(name, name)
            tensor = self._tensor(name, "input")
            bs = self._sets[self._seq % len(self._sets)]
            if bs.used and self.device == "cuda":
                self._wait_host_free(bs)
            view = bs.mems[name].host_view(tuple(shape or tensor.shape))
            if view is None:
                raise InputError(f"input {name!r} ({tensor.memory}, format {tensor.format}) has no "
                                 "runner-owned host staging to write into",
                                 hint="pass your own array; pinned/mapped/write_combined linear tensors have views")
            return view

    def output_view(self, name: str, shape: tuple[int, ...] | None = None, *, buffer_set: int = 0) -> np.ndarray | None:
        """Host side of output ``name`` in a buffer set (None for device outputs)."""
        with self._lock:
            self._check_open()
            name = self._ident_to_name.get(name, name)
            tensor = self._tensor(name, "output")
            return self._sets[buffer_set].mems[name].host_view(tuple(shape or tensor.shape))

    def register(self, name: str, array: np.ndarray) -> None:
        """Page-lock ``array`` in place for tensor ``name`` (strategy ``registered``).

        Input: registered now, so the first call with it is fast. Output (sync/async topologies):
        D2H lands in ``array`` (C-contiguous, dtype of the tensor, at least its max bytes).
        Unregistered when another buffer replaces it or on close.
        """
        with self._lock:
            self._check_open()
            name = self._ident_to_name.get(name, name)
            tensor = self.plan.tensor(name)
            if tensor.memory != "registered":
                raise InputError(f"tensor {name!r} uses {tensor.memory} memory, not registered")
            if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
                raise InputError(f"register({name!r}): expected a C-contiguous numpy array, got {_describe(array)}")
            if array.dtype != np_dtype(tensor.dtype):
                raise InputError(f"register({name!r}): expected dtype {tensor.dtype}, got {array.dtype}")
            if self.device != "cuda":
                return
            if tensor.role == "input":
                key = self._registry.acquire(array)
                self._registry.release(self._user_keys.pop(name, None))
                self._user_keys[name] = key
                return
            if len(self._sets) > 1:
                raise InputError(f"register({name!r}): outputs of a pipelined runner land in one buffer per "
                                 "buffer set; read them from the results instead")
            mem = self._sets[0].mems[name]
            assert isinstance(mem, RegisteredMemory)
            if array.nbytes < mem.nbytes:
                raise InputError(f"register({name!r}): needs at least {mem.nbytes} bytes (max shape "
                                 f"{tensor.max_shape}), got {array.nbytes}")
            self._wait_idle()
            self._drop_graphs()  # graphs copy into the old buffer, which is unregistered below
            mem.use(array)

    def fill_outputs(self, value: float = float("nan")) -> None:
        """Poison every output buffer (host and device) of every buffer set, e.g. with NaN."""
        with self._lock:
            self._check_open()
            self._wait_idle()
            stream = self._streams.get("d2h", self._streams.get("main", 0))
            for bs in self._sets:
                for mem in bs.mems.values():
                    if not mem.is_input:
                        mem.fill(value, stream=stream)
            if self.device == "cuda":
                cuda.stream_synchronize(stream)

    def synchronize(self) -> None:
        """Wait until every request in flight has completed."""
        with self._lock:
            self._check_open()
            self._wait_idle()

    def describe(self) -> str:
        """What this runner owns: streams, buffer sets, events, bytes per memory strategy."""
        lines = [(f"{type(self).__name__}: backend {self.backend} on {self.device}, topology {self.topology}, "
                  f"{len(self._sets)} buffer set(s), streams {list(self._streams) or ['(cpu)']}, "
                  f"cuda_graph {self.graph_status}")]
        for bs in self._sets[:1]:
            for name, mem in bs.mems.items():
                lines.append(f"  {name!r}: {type(mem).__name__} {mem.nbytes} B x {len(self._sets)}")
            lines.append(f"  events per buffer set: {len(bs.events)}")
        return "\n".join(lines)

    def close(self) -> None:
        """Release every buffer, registration, event, graph, stream and the engine; idempotent.

        Requests awaited through :meth:`infer_feeds` that are in flight complete first; queued ones
        fail with :class:`~trtflow.errors.RunnerClosed`."""
        hooks, self._before_close = getattr(self, "_before_close", []), []
        for hook in hooks:
            hook()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            errors: list[BaseException] = []

            def attempt(fn: Callable[[], Any]) -> None:
                try:
                    fn()
                except BaseException as exc:  # noqa: BLE001 - keep releasing; report the first failure
                    errors.append(exc)

            for s in self._streams.values():
                attempt(functools.partial(cuda.stream_synchronize, s))
            self._bound = None
            for bs in self._sets:
                for g in bs.graphs.values():
                    attempt(g.close)
                bs.graphs.clear()
                bs.last_plan = bs.last_graph = None
                for mem in bs.mems.values():
                    attempt(mem.close)
                for ev in bs.events:
                    attempt(functools.partial(cuda.event_destroy, ev))
                bs.ev_h2d = bs.ev_compute = bs.ev_d2h = bs.ev_consumed = bs.t_h2d = bs.t_compute = bs.t_d2h = 0
            for mem in self._allocated:  # memories of a set whose construction failed midway
                attempt(mem.close)
            self._allocated.clear()
            self._user_keys.clear()
            if self.device == "cuda":
                attempt(self._registry.close)
            if self._engine is not None:
                attempt(self._engine.close)
            if self._scratch:
                attempt(functools.partial(cuda.free, self._scratch))
                self._scratch = 0
            for s in self._streams.values():
                attempt(functools.partial(cuda.stream_destroy, s))
            self._streams.clear()
            if errors:
                raise errors[0]

    async def infer_feeds(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """asyncio: run one request and await it without blocking the event loop (see
        :mod:`trtflow.runtime.aio`). Up to ``depth`` requests run, the rest queue in order; outputs
        are views valid until your next ``await`` (``copy=True``: owned arrays)."""
        return await self._infer(feeds, copy=copy, convert=_identity)  # type: ignore[no-any-return]

    async def _infer(self, feeds: Mapping[str, Any], *, copy: bool,
                     convert: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        from trtflow.runtime import aio

        return await aio.infer(self, feeds, copy=copy, convert=convert or self._convert_outputs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not getattr(self, "_closed", True):
                self.close()

    # == the request path ===============================================================================
    def _check_open(self) -> None:
        if self._closed:
            raise RunnerClosed(f"{type(self).__name__} is closed", hint="create a new runner")

    def _tensor(self, name: str, role: str) -> TensorPlan:
        try:
            t = self.plan.tensor(name)
        except KeyError:
            raise InputError(f"no tensor named {name!r}; {role}s: "
                             f"{[x.name for x in (self.plan.inputs if role == 'input' else self.plan.outputs)]}") from None
        if t.role != role:
            raise InputError(f"tensor {name!r} is an {t.role}, not an {role}")
        return t

    def _convert_outputs(self, outs: dict[str, Any]) -> Any:
        if self.Outputs is None:
            return outs
        return self.Outputs(*[outs[n] for n in self._out_names])

    def _call(self, feeds: Mapping[str, Any], *, copy: bool, convert: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        with self._lock:  # the one acquisition of this request
            t0 = time.perf_counter() if self.timing else 0.0
            pending = self._submit_locked(feeds, convert or self._convert_outputs)
            outs = pending._result(copy)
            if pending.timing is not None:
                wall = (time.perf_counter() - t0) * 1e3
                pending.timing = self.last_timing = _with_wall(pending.timing, wall)
            return pending._convert(outs)

    def _submit(self, feeds: Mapping[str, Any], *, convert: Callable[[dict[str, Any]], T] | None = None) -> Pending[T]:
        with self._lock:
            return self._submit_locked(feeds, convert or self._convert_outputs)

    def _submit_locked(self, feeds: Mapping[str, Any], conv: Callable[[dict[str, Any]], Any]) -> Pending[Any]:
        if self._closed:
            self._check_open()
        t_submit = time.perf_counter()
        values, key = self._inputs(feeds)
        bs = self._next_set()
        plan = self._plans.get(key)
        if plan is None:
            plan = self._shape_plan(key)
        p: Pending[Any]
        if self.device == "cpu":
            host_in, items = self._run_cpu(bs, values, plan)
            p = Pending(self, bs, items, conv, host_in_ms=host_in, t_submit=t_submit, graph=False, complete=True)
        else:
            host_in, graph, items = self._launch(bs, values, plan, t_submit)
            p = Pending(self, bs, items, conv, host_in_ms=host_in, t_submit=t_submit, graph=graph,
                        event=bs.done_event, stream=self._s_out)
        bs.pending = p
        bs.used = True
        return p

    def _inputs(self, feeds: Mapping[str, Any]) -> tuple[list[Any], tuple[tuple[int, ...], ...]]:
        """The inputs of ``feeds`` in plan order, checked, and their shapes.

        Same checks and errors as :meth:`_normalize` + :meth:`_validate`, answered from caches: the
        key order of a feeds mapping seen before, and per input one type, dtype, contiguity and shape
        compare (shapes that passed the full check once). Anything else takes the full check.
        """
        try:
            order = self._feed_orders.get(tuple(feeds))
        except TypeError:
            order = None
        if order is None:
            order = self._feed_order(feeds)
        values = [feeds[k] for k in order]
        shapes: list[tuple[int, ...]] = []
        finite = self.check_finite
        for spec, x in zip(self._specs, values):
            if type(x) is np.ndarray and not spec.device:
                dt = x.dtype
                if ((dt is spec.dtype or dt == spec.dtype) and x.shape in spec.shapes_ok and x.flags.c_contiguous
                        and not (finite and dt.kind == "f")):
                    shapes.append(x.shape)
                    continue
            shape = self._check_input(spec.t, x)
            ok = spec.shapes_ok
            if len(ok) >= 64:
                ok.clear()
            ok.add(shape)
            shapes.append(shape)
        return values, tuple(shapes)

    def _feed_order(self, feeds: Mapping[str, Any]) -> tuple[Any, ...]:
        """The keys of ``feeds`` in plan input order (full normalization; remembered per key tuple)."""
        self._normalize(feeds)  # raises on unknown, missing or doubled inputs
        by_name = {self._name_of_key(k): k for k in feeds}
        order = tuple(by_name[n] for n in self._in_names)
        try:
            keys = tuple(feeds)
            if len(self._feed_orders) >= 16:
                self._feed_orders.clear()
            self._feed_orders[keys] = order
        except TypeError:
            pass
        return order

    def _name_of_key(self, key: Any) -> Any:
        return key if key in self._in_name_set else self._ident_to_name.get(key, key)

    def _shape_plan(self, key: tuple[tuple[int, ...], ...]) -> ShapePlan:
        plan = self._out_shapes.plan(key, self._cuda, self._set_engine_shape)
        if plan.after_run and self._graph_on and not self._after_run_noted:
            self._after_run_noted = True
            names = [self._out_names[i] for i in plan.after_run]
            self._graph_notes.append(f"outputs {names} have shapes known only after running: "
                                     "requests with them run eagerly")
        if len(self._plans) >= 64:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _normalize(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in feeds.items():
            name = self._name_of_key(key)
            if name in out:
                raise InputError(f"input {name!r} given twice (by name and by identifier)")
            out[name] = value
        expected = [t.name for t in self.plan.inputs]
        unknown = [k for k in out if k not in expected]
        missing = [n for n in expected if n not in out]
        if unknown or missing:
            parts = ([f"unknown {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
            raise InputError(f"inputs: {', '.join(parts)}; expected {expected}")
        return out

    def _validate(self, feeds: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for t in self.plan.inputs:
            shapes[t.name] = self._check_input(t, feeds[t.name])
        return shapes

    def _check_input(self, t: TensorPlan, x: Any) -> tuple[int, ...]:
        want_dtype = np_dtype(t.dtype)
        on_device = t.memory == "device" and self.device == "cuda"
        if on_device:
            if isinstance(x, np.ndarray):
                raise InputError(f"input {t.name!r}: expected a CUDA array (memory: device), got a numpy array "
                                 "on the host", hint="pass a torch/cupy CUDA tensor, or use a host memory strategy")
            info = cuda_array_info(x)
            if info is None:
                raise InputError(f"input {t.name!r}: expected a CUDA array with __cuda_array_interface__, got {_describe(x)}")
            shape, dtype, contiguous = info.shape, info.dtype, info.contiguous
        else:
            if not isinstance(x, np.ndarray):
                where = "a CUDA array" if hasattr(x, "__cuda_array_interface__") else _describe(x)
                raise InputError(f"input {t.name!r}: expected a numpy array in host memory ({t.memory}), got {where}",
                                 hint="copy it to the host (e.g. tensor.cpu().numpy()), or declare memory: device")
            shape, dtype, contiguous = tuple(x.shape), x.dtype, bool(x.flags.c_contiguous)
        if dtype != want_dtype:
            raise InputError(f"input {t.name!r}: expected dtype {t.dtype}, got {dtype} (no implicit casts)",
                             hint=f"convert it first, e.g. x.astype(np.{want_dtype.name})")
        _check_shape(t, shape)
        if not contiguous:
            raise InputError(f"input {t.name!r}: array is not C-contiguous",
                             hint="pass np.ascontiguousarray(x) (or tensor.contiguous())")
        if self.check_finite and not on_device and dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(x.size - np.isfinite(x).sum())
            raise InputError(f"input {t.name!r}: {bad} NaN/Inf value(s) (check_finite is on)")
        return shape

    def _next_set(self) -> _BufferSet:
        sets = self._sets
        bs = sets[self._seq % len(sets)]
        self._seq += 1
        if bs.pending is not None:
            bs.pending._take_snapshot()  # an unread result must survive the reuse of its buffers
            bs.pending = None
        return bs

    def _drop_graphs(self) -> None:
        for bs in self._sets:
            for g in bs.graphs.values():
                g.close()
            bs.graphs.clear()
            bs.last_plan = bs.last_graph = None

    def _wait_idle(self) -> None:
        for s in self._streams.values():
            cuda.stream_synchronize(s)

    def _wait_host_free(self, bs: _BufferSet) -> None:
        """Until the host may rewrite ``bs``'s input staging (its previous request read it)."""
        if bs.idle:
            return  # the host saw that request complete
        if bs.done_event:
            cuda.event_synchronize(bs.host_free_event())
        else:  # it recorded no events: one stream, which holds nothing but that request
            cuda.stream_synchronize(self._s_in)

    # -- CPU -------------------------------------------------------------------------------------------
    def _run_cpu(self, bs: _BufferSet, values: list[Any], plan: ShapePlan) -> tuple[float, tuple[tuple[str, tuple[int, ...]], ...]]:
        engine = self._cpu
        assert engine is not None
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
        with _range("trtflow.infer"):
            got = engine.infer(dict(zip(self._in_names, values)), outs)
        if self.timing:
            self.last_timing = StageTiming(None, (time.perf_counter() - t1) * 1e3, None, host_in, None)
        items = plan.out_items
        if plan.after_run or not plan.checked:
            items = reported_items(plan, self.plan.outputs, got.get, backend=self.backend)
        return host_in, items

    # -- CUDA ------------------------------------------------------------------------------------------
    def _set_engine_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self._engine_shapes.get(name) != shape:
            assert self._cuda is not None
            if self._graphs_bake_shapes and name in self._engine_shapes:
                self._drop_context_graphs()  # they were captured at the context's previous shapes
            self._cuda.set_input_shape(name, shape)
            self._engine_shapes[name] = shape

    def _drop_context_graphs(self) -> None:
        """Every graph of the execution context, before its input shapes change: a TensorRT graph bakes
        the context's state at capture, so one replayed after a shape change is undefined (trtexec and
        NVIDIA's guidance: one graph per context). The next request at any shape recaptures."""
        n = sum(len(bs.graphs) for bs in self._sets)
        if not n:
            return
        cuda.stream_synchronize(self._s_c)  # a graph may still be running on the compute stream
        self._drop_graphs()
        self.graph_stats["dropped"] += n

    def _bind(self, bs: _BufferSet, shapes: dict[str, tuple[int, ...]]) -> None:
        engine = self._cuda
        assert engine is not None
        for name, shape in shapes.items():
            self._set_engine_shape(name, shape)
        for name, mem in bs.mems.items():
            ptr = mem.device_ptr
            if self._engine_addrs.get(name) != ptr:
                engine.set_address(name, ptr)
                self._engine_addrs[name] = ptr
        if bs.consumed_ok and self._engine_consumed != bs.ev_consumed:
            engine.set_input_consumed_event(bs.ev_consumed)
            self._engine_consumed = bs.ev_consumed

    def _bind_request(self, bs: _BufferSet, plan: ShapePlan) -> None:
        """:meth:`_bind`, skipped when the engine is bound to this set at these shapes already (only
        the addresses that can move are compared then)."""
        bound = self._bound
        if bound is not None and bound[0] is bs and bound[1] is plan:
            if bs.volatile:
                engine = self._cuda
                assert engine is not None
                addrs = self._engine_addrs
                for name, mem in bs.volatile:
                    ptr = mem.device_ptr
                    if addrs.get(name) != ptr:
                        engine.set_address(name, ptr)
                        addrs[name] = ptr
            return
        self._bound = None  # a failure half way leaves the engine in an unknown state
        self._bind(bs, plan.shapes)
        self._bound = (bs, plan)

    def _launch(self, bs: _BufferSet, values: list[Any], plan: ShapePlan,
                t_submit: float) -> tuple[float, bool, tuple[tuple[str, tuple[int, ...]], ...]]:
        """Enqueue one request on the streams; returns (host staging ms, whether a graph ran, the
        request's output shapes).

        Events: pipelined topologies record h2d/compute/d2h done (the streams wait on them); one
        stream records them only with ``timing`` (plus the timing markers); without, it records none:
        stream order sequences the stages, and :class:`Pending` synchronizes the stream.
        """
        engine = self._cuda
        assert engine is not None
        pipelined, timing = self._pipelined, self.timing
        s_in, s_c, s_out = self._s_in, self._s_c, self._s_out
        fresh = bs.idle or not bs.used  # nothing of this set is in flight: its events are all complete
        if not fresh:  # host staging of this set may still be read by its previous request
            self._wait_host_free(bs)
        events = pipelined or timing
        bs.idle = False
        bs.graph_ran = False
        bs.done_event = bs.ev_d2h if events else 0
        in_mems = bs.in_mems
        shapes = plan.in_shapes
        if _nvtx is None:
            for mem, x, shape in zip(in_mems, values, shapes):
                mem.prepare(x, shape, stream=s_in)
        else:
            with _range("trtflow.stage_in"):
                for mem, x, shape in zip(in_mems, values, shapes):
                    mem.prepare(x, shape, stream=s_in)
        host_in = (time.perf_counter() - t_submit) * 1e3 if timing else 0.0
        self._bind_request(bs, plan)

        graph_on = self._graph_on and not plan.after_run  # shapes known after running: eager
        if graph_on and not pipelined:  # copy-in + enqueue + copy-out as one graph
            if timing:
                cuda.event_record(bs.t_compute, stream=s_c)
            for i in bs.outside_in:  # copies from memory the caller owns stay eager, ahead of the graph
                in_mems[i].enqueue_in(shapes[i], stream=s_in)
            graph = bs.last_graph if bs.last_plan is plan and not bs.volatile else None
            if graph is not None:  # the graph of the previous request: same shapes, same addresses
                graph.launch(s_c)
                self.graph_stats["replays"] += 1
            else:
                key: tuple[Any, ...] = (plan.gkey, tuple(mem.graph_key() for mem in bs.mems.values()))
                if not self._run_graph(bs, key, functools.partial(self._whole_request, bs, plan), s_c, plan) \
                        and not plan.checked:  # the body ran eagerly: the engine's reports are this request's
                    reported_items(plan, self.plan.outputs, engine.reported_shape, backend=self.backend)
            if timing:  # stages ran as one unit (graph or its eager warm-up): timed as one
                cuda.event_record(bs.ev_d2h, stream=s_c)
                bs.graph_ran = True
            return host_in, True, plan.out_items

        if not fresh and s_in != s_c:  # device inputs of this set are free once its last compute read them
            cuda.stream_wait_event(s_in, bs.device_inputs_free_event())
        if timing:
            cuda.event_record(bs.t_h2d, stream=s_in)
        if _nvtx is None:
            for mem, shape in zip(in_mems, shapes):
                mem.enqueue_in(shape, stream=s_in)
        else:
            with _range("trtflow.h2d"):
                for mem, shape in zip(in_mems, shapes):
                    mem.enqueue_in(shape, stream=s_in)
        if events:
            cuda.event_record(bs.ev_h2d, stream=s_in)
        if s_in != s_c:
            cuda.stream_wait_event(s_c, bs.ev_h2d)
        if not fresh and s_out != s_c:  # outputs of this set are free once their last D2H finished
            cuda.stream_wait_event(s_c, bs.ev_d2h)
        if timing:
            cuda.event_record(bs.t_compute, stream=s_c)
        ran_graph = False
        with _range("trtflow.enqueue"):
            if graph_on:  # pipelined: only the enqueue is captured; its key is the device addresses
                graph = bs.last_graph if bs.last_plan is plan and not bs.volatile else None
                if graph is not None:
                    graph.launch(s_c)
                    self.graph_stats["replays"] += 1
                    ran_graph = True
                else:
                    key = (plan.gkey, tuple(mem.device_ptr for mem in bs.mems.values()))
                    ran_graph = self._run_graph(bs, key, functools.partial(engine.enqueue, s_c), s_c, plan)
            else:
                engine.enqueue(s_c)
        items = plan.out_items
        if (plan.after_run or not plan.checked) and not ran_graph:  # shapes the engine reported
            items = reported_items(plan, self.plan.outputs, engine.reported_shape, backend=self.backend)
        if events:
            cuda.event_record(bs.ev_compute, stream=s_c)
        if s_out != s_c:
            cuda.stream_wait_event(s_out, bs.ev_compute)
        if timing:
            cuda.event_record(bs.t_d2h, stream=s_out)
        if _nvtx is None:
            for mem, (_, out_shape) in zip(bs.out_mems, items):
                mem.enqueue_out(out_shape, stream=s_out)
        else:
            with _range("trtflow.d2h"):
                for mem, (_, out_shape) in zip(bs.out_mems, items):
                    mem.enqueue_out(out_shape, stream=s_out)
        if events:
            cuda.event_record(bs.ev_d2h, stream=s_out)
        return host_in, ran_graph, items

    def _whole_request(self, bs: _BufferSet, plan: ShapePlan) -> None:
        """Copy-in (but the eager-before-graph inputs) + enqueue + copy-out on the one stream: the
        body of a whole-request graph, run eagerly once before it is captured."""
        engine = self._cuda
        assert engine is not None
        s = self._s_c
        for mem, shape in zip(bs.in_mems, plan.in_shapes):
            if not mem.outside_graph:
                mem.enqueue_in(shape, stream=s)
        engine.enqueue(s)
        for mem, (_, shape) in zip(bs.out_mems, plan.out_items):
            mem.enqueue_out(shape, stream=s)

    def _run_graph(self, bs: _BufferSet, key: tuple[Any, ...], body: Callable[[], None], stream: int,
                   plan: ShapePlan | None = None) -> bool:
        """Replay the graph of ``key``; on a miss run ``body`` eagerly (warm-up) and capture it.
        Remembers the graph as the set's last (with ``plan``) for the next request's shortcut."""
        graph = bs.graphs.get(key)
        if graph is not None:
            bs.graphs.move_to_end(key)
            graph.launch(stream)
            self.graph_stats["replays"] += 1
            bs.last_plan, bs.last_graph = plan, graph
            return True
        bs.last_plan = bs.last_graph = None
        body()  # eager warm-up: initialisation must not be captured, and it computes this request
        cuda.stream_synchronize(stream)
        try:
            graph = self._capture(stream, body)
        except Exception as exc:  # noqa: BLE001 - any capture problem means: run eagerly, say why
            self._graph_on = False
            self.graph_stats["failures"] += 1
            self._graph_notes.insert(0, f"capture failed, running eagerly: {exc}".split("\n  hint")[0])
            with contextlib.suppress(Exception):
                if cuda.is_capturing(stream):
                    cuda.abort_capture(stream)
            with contextlib.suppress(Exception):
                cuda.get_last_error()
            return False
        self.graph_stats["captures"] += 1
        bs.graphs[key] = graph
        while len(bs.graphs) > MAX_GRAPHS_PER_SET:
            cuda.stream_synchronize(stream)
            bs.graphs.popitem(last=False)[1].close()
        bs.last_plan, bs.last_graph = plan, graph
        return False

    def _capture(self, stream: int, body: Callable[[], None]) -> CapturedGraph:
        assert self._cuda is not None
        graph = self._cuda.capture_graph(stream, body)  # engines with their own allocator (torch)
        return graph if graph is not None else capture_raw(stream, body)

    def _timing_of(self, p: Pending[Any], *, wall: float | None) -> StageTiming | None:
        if not self.timing or self.device != "cuda":
            return self.last_timing if self.device != "cuda" else None
        bs = p._set
        if p._graph:
            t = StageTiming(None, cuda.event_elapsed_ms(bs.t_compute, bs.ev_d2h), None, p._host_in_ms, wall, True)
        else:
            t = StageTiming(cuda.event_elapsed_ms(bs.t_h2d, bs.ev_h2d), cuda.event_elapsed_ms(bs.t_compute, bs.ev_compute),
                            cuda.event_elapsed_ms(bs.t_d2h, bs.ev_d2h), p._host_in_ms, wall, False)
        self.last_timing = t
        return t


# == helpers =========================================================================================
def _identity(x: dict[str, Any]) -> dict[str, Any]:
    return x


def _with_wall(t: StageTiming, wall: float) -> StageTiming:
    return StageTiming(t.h2d_ms, t.compute_ms, t.d2h_ms, t.host_in_ms, wall, t.graph)


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"numpy array {x.dtype}{list(x.shape)}"
    return type(x).__module__ + "." + type(x).__qualname__


def _check_shape(t: TensorPlan, shape: tuple[int, ...]) -> None:
    if len(shape) != len(t.shape):
        raise InputError(f"input {t.name!r}: expected rank {len(t.shape)} {_expected(t)}, got shape {list(shape)}")
    if not t.dynamic:
        if shape != t.shape:
            raise InputError(f"input {t.name!r}: expected shape {list(t.shape)}, got {list(shape)}")
        return
    for i, (lo, d, hi) in enumerate(zip(t.min_shape, shape, t.max_shape)):
        if not lo <= d <= hi:
            raise InputError(f"input {t.name!r}: dimension {i} is {d}, outside the profile {_expected(t)} "
                             f"(got shape {list(shape)})",
                             hint="rebuild with a wider profile: inputs.<name>.profile in the recipe")


def _expected(t: TensorPlan) -> str:
    if not t.dynamic:
        return str(list(t.shape))
    return "[" + ", ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in zip(t.min_shape, t.max_shape)) + "]"


def _pick_device(executor: type[Backend], requested: str) -> Device:
    devices = executor.devices
    if requested == "auto":
        if "cuda" in devices and cuda.cuda_available():
            return "cuda"
        if "cpu" in devices:
            return "cpu"
        raise BackendMissing(f"backend {executor.name!r} needs a CUDA GPU and none is usable here",
                             hint="run on a GPU machine, or backend='onnxruntime' for the CPU")
    if requested != "cuda" and requested != "cpu":
        raise BackendMissing(f"unknown device {requested!r}", hint="auto, cuda or cpu")
    if requested not in devices:
        raise BackendMissing(f"backend {executor.name!r} does not run on {requested}",
                             hint=f"it runs on: {', '.join(devices)}")
    if requested == "cuda" and not cuda.cuda_available():
        raise BackendMissing("device='cuda' but no CUDA GPU is usable (cuda-bindings missing or no device)",
                             hint="pip install 'trtflow[cuda]' on a machine with an NVIDIA GPU")
    return requested


def _engine_kind(engine: CudaEngine | CpuEngine, device: str, backend: str) -> tuple[CudaEngine | None, CpuEngine | None]:
    """The engine as a CUDA or a CPU engine, checked against the device it was opened for."""
    if isinstance(engine, CudaEngine) and device == "cuda":
        return engine, None
    if isinstance(engine, CpuEngine) and device == "cpu":
        return None, engine
    raise BackendMissing(f"backend {backend!r} opened a {type(engine).__name__} for device {device!r}",
                         hint="the backend's open() must return a CudaEngine for cuda and a CpuEngine for cpu")


def available_executor(name: str) -> bool:
    """Whether backend ``name`` can execute here (helper for tests and tools)."""
    try:
        return get_backend(name).can_execute_here()
    except Exception:  # noqa: BLE001 - a broken backend install is "not available"
        return False


__all__ = ["CapturedGraph", "GraphCaptureFailed", "Pending", "Runner", "StageTiming", "available_executor",
           "capture_raw"]
