"""The Runner: lifecycle, lock and the public API of one artifact's runtime.

A generated ``runner.py`` subclasses :class:`Runner` and declares, in its ``allocate(alloc)`` hook
(through an :class:`Allocator`), exactly which streams and buffer sets it owns. The parts it is made of, each in its own module:

| module | what |
|---|---|
| :mod:`~trtflow.runtime.inputs` | checks of what a request hands over (cached fast path) |
| :mod:`~trtflow.runtime.shapes` | output shapes per combination of input shapes: engine, plan expression, or reported |
| :mod:`~trtflow.runtime.memory` | memory strategies: host staging + device buffer per tensor |
| :mod:`~trtflow.runtime.buffers` | a buffer set: the memories of one request in flight and its events |
| :mod:`~trtflow.runtime.topology` | sync/async (one stream), pipelined (three streams), the CPU; engine binding |
| :mod:`~trtflow.runtime.graphs` | CUDA graphs: capture, cache, replay, when to drop them |
| :mod:`~trtflow.runtime.pending` | a request in flight, stage timing |
| :mod:`~trtflow.runtime.cuda` | the only module that calls cuda-bindings |

Like Polygraphy's runners, the public methods check (the runner is open, the inputs are valid) and
then hand over to the topology; the same code path runs on a CPU-only machine (a CPU engine, plain
numpy memory whatever the strategy, ``engine.infer``).

Topologies (``plan.streams``): ``sync`` (one stream; H2D, enqueue, D2H, synchronize); ``async`` (one
stream, one buffer set; :meth:`Runner.submit_feeds` returns a :class:`Pending` at once); ``pipelined``
(depth N: N buffer sets, three streams chained by events; :meth:`Runner.stream` keeps N requests in
flight and yields results in order).

CUDA graphs (``cuda_graph: true``): after one eager warm-up run, copy-in + enqueue + copy-out are
captured on the stream (pipelined: the enqueue of each buffer set) and replayed; a change of a bound
address recaptures. A failed capture falls back to eager, and :attr:`Runner.graph_status` says why.
Shapes: a TensorRT graph bakes the state of the execution context it was captured from, so one
replayed after that context's input shapes changed is undefined. The runner has one context per
engine and is safe by construction: when an input shape changes, every graph is dropped (after the
compute stream drained) and the new shape is warmed up and recaptured (trtexec's "one graph per
context"); steady shapes replay. Engines whose graphs own their state
(``CudaEngine.graphs_outlive_shape_changes``: torch) keep a small cache of graphs per shape.

Output shapes: buffers are allocated at the profile's max shape; each request's output shape comes
from the engine where it can say before running, else from the plan's shape expression, else
(data-dependent dims) from what the engine reports after running. Never guessed.

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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import numpy as np
from typing_extensions import Self

from trtflow import artifact as art
from trtflow.backends.base import Backend, CpuEngine, CudaEngine, Device, pick_executor
from trtflow.errors import ArtifactError, BackendMissing, InputError, RunnerClosed
from trtflow.plan.model import TOPOLOGIES, WAITS
from trtflow.runtime import cuda, devices, trace
from trtflow.runtime.buffers import BufferSet
from trtflow.runtime.devices import DeviceLock
from trtflow.runtime.encoded import Decoders, make_encoded_memory
from trtflow.runtime.graphs import Graphs
from trtflow.runtime.inputs import Inputs, describe
from trtflow.runtime.memory import HostRegistry, RegisteredMemory, TensorMemory, make_memory, np_dtype
from trtflow.runtime.pending import Pending, StageTiming
from trtflow.runtime.shapes import OutputShapes, ShapeKey, ShapePlan, host_values
from trtflow.runtime.topology import (
    CudaSchedule,
    EngineBinding,
    HostRun,
    cuda_schedule,
    stream_roles,
)

T = TypeVar("T")


class Closing:
    """A context manager over ``close()`` (idempotent), also closed when collected while still open."""

    _closed: bool

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not getattr(self, "_closed", True):
                self.close()


class Runner(Closing):
    """Runs one artifact. Subclassed by every generated ``runner.py``; usable directly too.

    Parameters
    ----------
    artifact_dir: the artifact folder (default: ``ARTIFACT_DIR``, the generated module's folder).
    backend: executor to use (``auto``: the builder's runtime where it can execute, else torch/onnxruntime).
    device: ``auto`` (CUDA when available and the executor supports it), ``cuda`` or ``cpu``.
    check_finite: reject inputs holding NaN or Inf (host arrays only; costs one pass over the data).
    timing: record CUDA events around H2D / compute / D2H of every request (see ``last_timing``).
    topology, depth, cuda_graph, wait: override ``plan.streams`` (experiments, benchmarks). ``wait``: how the
        host waits for the GPU: ``block`` (sleep on blocking-sync events, trtexec's default) or ``spin``
        (busy-wait on a core: a few microseconds sooner, one core per waiting thread; trtexec ``--useSpinWait``).
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
                 device_index: int | None = None, share_engine: Runner | None = None,
                 decoder: str = "auto", wait: str | None = None) -> None:
        self.device_index = device_index
        self._lock: Any = threading.RLock() if device_index is None else DeviceLock(device_index)
        self._before_close: list[Callable[[], None]] = []  # run first by close(), outside the lock
        self.placement: devices.DevicePlacement | None = None  # NUMA placement of a chosen device
        self._closed = False
        self._engine: CudaEngine | CpuEngine | None = None
        self._cuda: CudaEngine | None = None  # the engine as what it is (exactly one of the two is set)
        self._cpu: CpuEngine | None = None
        self._streams: dict[str, int] = {}
        self._sets: list[BufferSet] = []
        self._allocated: list[TensorMemory] = []
        self._registry = HostRegistry()
        self._user_keys: dict[str, tuple[int, int]] = {}
        self._seq = 0
        self._scratch = 0
        self._plans: dict[ShapeKey, ShapePlan] = {}
        self._launcher: CudaSchedule | None = None  # the topology of a CUDA engine
        self._host: HostRun | None = None           # ... or the CPU's
        self._binding: EngineBinding | None = None
        self._value_index: tuple[int, ...] = ()  # inputs the engine reads on the host (shape tensors)
        self.check_finite = check_finite
        self.timing = timing
        self.last_timing: StageTiming | None = None

        folder = artifact_dir if artifact_dir is not None else self.ARTIFACT_DIR
        if folder is None:
            raise ArtifactError("no artifact folder given", hint="Runner(artifact_dir) or use the generated runner")
        self.artifact_dir = Path(folder).resolve()
        # report present and listing every file, hashes match, plan values in range (artifact.load)
        self.plan, self.report = art.load(self.artifact_dir)
        self._out_shapes = OutputShapes(self.plan, where=str(self.artifact_dir / "plan.json"))
        streams = self.plan.streams
        self.topology = topology or streams.topology
        if self.topology not in TOPOLOGIES:
            raise ArtifactError(f"unknown stream topology {self.topology!r}", hint=f"one of {', '.join(TOPOLOGIES)}")
        chosen = replace(streams, topology=self.topology, depth=streams.depth if depth is None else depth)
        self.depth = art.check_depth(chosen.buffer_sets, "Runner(depth=...)")  # 1 unless pipelined
        self.cuda_graph = streams.cuda_graph if cuda_graph is None else bool(cuda_graph)
        self.wait = streams.wait if wait is None else str(wait)
        if self.wait not in WAITS:
            raise ArtifactError(f"unknown wait mode {self.wait!r}", hint=f"one of {', '.join(WAITS)}")
        self._check_declared_names()

        builder = str(self.report.get("backend") or self.plan.build.backend)
        if builder == "auto":
            builder = "onnxruntime"  # every artifact carries the lowered ONNX model
        self._executor = pick_executor(builder, prefer=backend)
        self.backend = self._executor.name
        self.device = _pick_device(self._executor, device)
        if device_index is not None and self.device != "cuda":
            raise BackendMissing(f"device_index={device_index}: the {self.backend} engine runs on the {self.device}",
                                 hint="device_index chooses a GPU; leave it out on the CPU")
        self._inputs = Inputs(self.plan, cuda=self.device == "cuda")
        self._decoder_choice = decoder
        self._decoders: Decoders | None = None  # encoded inputs: made with the buffers (the device is current)
        self._out_names = tuple(t.name for t in self.plan.outputs)
        self._graphs = Graphs(wanted=self.cuda_graph, engine=None, backend=self.backend)

        try:
            with self._lock:  # a chosen device is current while the engine opens and buffers are allocated
                self._engine = self._open_engine(allow_host_code, share_engine)
                self._cuda, self._cpu = _engine_kind(self._engine, self.device, self.backend)
                self._graphs = Graphs(wanted=self.cuda_graph, engine=self._cuda, backend=self.backend)
                self.placement = devices.placement(device_index) if device_index is not None else None
                with devices.local_allocation(self.placement) if self.placement else contextlib.nullcontext():
                    self.allocate(Allocator(self))
                self._check_allocation()
                self._setup_request_path()
        except BaseException:
            self.close()
            raise

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
    def allocate(self, alloc: Allocator) -> None:
        """The hook a runner declares what it owns in: streams, the engine's scratch, ``depth`` buffer
        sets of one memory per tensor. Called once by ``__init__``; generated runners spell it out."""
        alloc.streams()
        alloc.scratch()
        for _ in range(alloc.depth):
            alloc.buffer_set({t.name: alloc.memory(t.name, t.memory) for t in self.plan.tensors})

    def _create_streams(self) -> None:
        """sync/async: one stream ``main``; pipelined: ``h2d``, ``compute``, ``d2h``. None on the CPU."""
        if self.device != "cuda":
            return
        for role in stream_roles(self.topology):
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

    def _memory(self, name: str, strategy: str) -> TensorMemory:
        """The memory of tensor ``name`` with ``strategy``, at its max shape (see trtflow.runtime.memory)."""
        tensor = self.plan.tensor(name)
        if strategy != tensor.memory:
            raise ArtifactError(f"runner.py allocates {name!r} as {strategy}, plan.json says {tensor.memory}",
                                hint="runner.py is stale: regenerate it (trtflow build)")
        if tensor.encoding:
            if self._decoders is None:
                self._decoders = Decoders(self._decoder_choice, device=self.device)
            mem = make_encoded_memory(tensor, device=self.device, decoders=self._decoders)
        else:
            try:
                mem = make_memory(tensor, strategy, device=self.device, registry=self._registry,
                                  graph=self.cuda_graph)
            except (MemoryError, OverflowError):  # host memory: numpy's raw MemoryError names nothing
                raise ArtifactError(
                    f"tensor {name!r}: cannot allocate {tensor.max_bytes:,} bytes of host memory ({strategy}, max "
                    f"shape {list(tensor.max_shape)}) for buffer set {len(self._sets) + 1} of {self.depth}",
                    hint="this machine has too little memory for the artifact's profile: rebuild with a smaller "
                    "profile max or streams.depth (or run it where build.max_io_mib was meant)") from None
        # Tracked from birth: if a later allocation of the same set fails (out of memory), the set never
        # reaches _add_buffer_set, and close() must still free this one.
        self._allocated.append(mem)
        return mem

    def _add_buffer_set(self, mems: Mapping[str, TensorMemory]) -> None:
        self._sets.append(BufferSet(len(self._sets), dict(mems)))

    # == construction checks ===========================================================================
    def _check_declared_names(self) -> None:
        names_in = tuple(t.name for t in self.plan.inputs)
        names_out = tuple(t.name for t in self.plan.outputs)
        for declared, actual, what in ((self.INPUT_NAMES, names_in, "inputs"), (self.OUTPUT_NAMES, names_out, "outputs")):
            if declared is not None and tuple(declared) != actual:
                raise ArtifactError(f"runner.py declares {what} {list(declared)}, plan.json has {list(actual)}",
                                    hint="runner.py is stale: regenerate it (trtflow build)")

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
            roles = set(stream_roles(self.topology))
            if set(self._streams) != roles:
                raise ArtifactError(f"runner.py created streams {sorted(self._streams)}, {self.topology} needs {sorted(roles)}")
        if self.cuda_graph and self.device == "cuda":
            staged = [t.name for t in self.plan.tensors if t.memory == "pageable"]
            if staged:
                self._graphs.notes.append(f"pageable tensors {staged} are staged through pinned buffers "
                                          "(pageable copies cannot be captured)")
            decoded = [t.name for t in self.plan.inputs if t.encoding]
            if decoded:
                self._graphs.notes.append(f"encoded inputs {decoded} are decoded before each replay, outside the "
                                          "graph (nvImageCodec does host work per call and cannot be captured)")
            copied = [t.name for t in self.plan.inputs if t.memory == "device"]
            if copied:
                self._graphs.notes.append(f"device inputs {copied} are copied D2D into the runner's buffers "
                                          "before each replay (a graph bakes in addresses)")

    def _setup_request_path(self) -> None:
        """Events per buffer set, their memories indexed in plan order, and the topology's strategy."""
        in_names = self._inputs.names
        for bs in self._sets:
            bs.index_tensors(in_names, self._out_names)
        if self._cpu is not None:
            self._host = HostRun(self._cpu, in_names, self.plan.outputs, timing=self.timing, backend=self.backend)
            return
        engine = self._cuda
        assert engine is not None
        blocking = self.wait == "block"
        for bs in self._sets:
            bs.create_events(timing=self.timing, blocking=blocking)
        # Inputs-consumed events let the next H2D into a buffer set start before its compute ends.
        probe = cuda.event_create()
        supported = bool(engine.set_input_consumed_event(probe))
        cuda.event_destroy(probe)
        if supported:
            for bs in self._sets:
                bs.enable_consumed_event(blocking=blocking)
        compute = self._streams.get("compute", self._streams.get("main", 0))
        sets = [bs.graphs for bs in self._sets]
        self._binding = EngineBinding(engine, self.plan.inputs,
                                      functools.partial(self._graphs.before_shape_change, sets, compute))
        self._value_index = self._binding.value_index
        stray = sorted(set(engine.host_inputs) - set(self._binding.value_names))
        if stray:
            raise ArtifactError(f"backend {self.backend!r} reads tensors {stray} on the host, which are not inputs "
                                "of plan.json", hint="the artifact's plan disagrees with its engine: rebuild it")
        for t in self.plan.inputs:
            if t.name in engine.host_inputs and (t.memory == "device" or t.encoding):
                raise ArtifactError(f"input {t.name!r} is a shape tensor (its values are read on the host): it cannot "
                                    f"use {'memory: device' if t.memory == 'device' else 'encoding: ' + str(t.encoding)}",
                                    hint=f"give it a host memory strategy in the recipe (inputs.{t.name}.memory: pinned)")
        self._launcher = cuda_schedule(self.topology, engine, self._binding, self._graphs, self._streams,
                                       timing=self.timing, outputs=self.plan.outputs, backend=self.backend,
                                       blocking=blocking)

    # == public API =====================================================================================
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def graph_status(self) -> str:
        """Why and how CUDA graphs are (not) used: ``off``, ``pending``, ``captured ...`` or ``eager: why``."""
        return self._graphs.status(self.device)

    @property
    def graph_stats(self) -> dict[str, int]:
        """Counts of graph captures, replays, capture failures and graphs dropped on a shape change."""
        return self._graphs.stats

    @property
    def streams(self) -> dict[str, int]:
        return dict(self._streams)

    @property
    def buffer_sets(self) -> int:
        return len(self._sets)

    def run(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Run one request and wait. ``feeds`` maps tensor names (or identifiers) to arrays; the
        outputs come back as a dict by tensor name, in plan order."""
        return self._call(feeds, copy=copy, convert=_identity)  # type: ignore[no-any-return]

    def run_with(self, feeds: Mapping[str, Any], convert: Callable[[dict[str, Any]], T], *, copy: bool = False) -> T:
        """:meth:`run`, its outputs passed through ``convert`` (generated runners: their NamedTuple)."""
        return self._call(feeds, copy=copy, convert=convert)  # type: ignore[no-any-return]

    def submit_feeds(self, feeds: Mapping[str, Any]) -> Pending[dict[str, Any]]:
        """Start one request; returns at once with a :class:`Pending` (``.result()``, ``.done()``)."""
        return self._submit(feeds, convert=_identity)

    def submit_with(self, feeds: Mapping[str, Any], convert: Callable[[dict[str, Any]], T]) -> Pending[T]:
        """:meth:`submit_feeds`, the result passed through ``convert``."""
        return self._submit(feeds, convert=convert)

    def as_outputs(self, outs: dict[str, Any]) -> Any:
        """Outputs by name as the runner's ``Outputs`` type (generated runners), else the dict itself."""
        if self.Outputs is None:
            return outs
        return self.Outputs(*[outs[n] for n in self._out_names])

    def stream(self, requests: Iterable[Mapping[str, Any]], *, copy: bool = False) -> Iterator[Any]:
        """Run every request, keeping up to ``depth`` in flight; yield results in order.

        A yielded result (unless ``copy``) is valid until the iterator is advanced.
        """
        inflight: deque[Pending[Any]] = deque()
        for feeds in requests:
            if len(inflight) >= self.depth:
                yield inflight.popleft().result(copy=copy)
            inflight.append(self._submit(feeds, convert=self.as_outputs))
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
            tensor = self._inputs.tensor(name, "input")
            bs = self._sets[self._seq % len(self._sets)]
            if bs.used and self._launcher is not None:
                bs.wait_host_free(self._launcher.s_in)
            view = bs.mems[tensor.name].host_view(tuple(shape or tensor.shape))
            if view is None:
                raise InputError(f"input {tensor.name!r} ({tensor.memory}, format {tensor.format}) has no "
                                 "runner-owned host staging to write into",
                                 hint="pass your own array; pinned/mapped/write_combined linear tensors have views")
            return view

    def input_view_or_none(self, name: str) -> np.ndarray | None:
        """:meth:`input_view` at the plan shape, or None where the strategy has no host staging."""
        try:
            return self.input_view(name)
        except InputError:
            return None

    def register(self, name: str, array: np.ndarray) -> None:
        """Page-lock ``array`` in place for tensor ``name`` (strategy ``registered``).

        Input: registered now, so the first call with it is fast. Output (sync/async topologies):
        D2H lands in ``array`` (C-contiguous, dtype of the tensor, at least its max bytes).
        Unregistered when another buffer replaces it or on close.
        """
        with self._lock:
            self._check_open()
            name = self._inputs.ident_to_name.get(name, name)
            tensor = self.plan.tensor(name)
            if tensor.memory != "registered":
                raise InputError(f"tensor {name!r} uses {tensor.memory} memory, not registered")
            if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
                raise InputError(f"register({name!r}): expected a C-contiguous numpy array, got {describe(array)}")
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
            self._graphs.drop([bs.graphs for bs in self._sets])  # they copy into the old buffer, unregistered below
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

    @property
    def decoder(self) -> str:
        """Where encoded inputs (``encoding: jpeg|png|image``) are decoded, and why; ``none`` without any."""
        return self._decoders.status if self._decoders is not None else "none (no encoded inputs)"

    def decoded(self, name: str) -> np.ndarray:
        """A host copy of what encoded input ``name`` decoded to in the last request (uint8 NHWC, as the
        engine read it): the GPU decoder's output for comparisons with a host decoder. Waits for it."""
        with self._lock:
            self._check_open()
            tensor = self._inputs.tensor(name, "input")
            if not tensor.encoding:
                raise InputError(f"input {tensor.name!r} is not an encoded input (encoding: raw)")
            bs = self._sets[(self._seq - 1) % len(self._sets)]
            mem = bs.mems[tensor.name]
            files = getattr(mem, "last_files", None)
            if files is None:
                raise InputError(f"input {tensor.name!r}: nothing decoded yet", hint="run a request first")
            self._wait_idle()
            return mem.decoded(files.shape)  # type: ignore[attr-defined, no-any-return]

    def unpack(self, name: str, packed: np.ndarray) -> np.ndarray:
        """The boolean mask of output ``name`` from its bit-packed bytes (``reduce: {op: threshold,
        pack: bits}``): 8 values per byte along the last axis, MSB first, padding dropped."""
        tensor = self._inputs.tensor(name, "output")
        if not tensor.packed_bits:
            raise InputError(f"output {tensor.name!r} is not bit-packed", hint="only threshold masks with pack: bits are")
        width = tensor.unpacked_shape[-1]
        return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=width).view(bool)

    def describe(self) -> str:
        """What this runner owns: streams, buffer sets, events, bytes per memory strategy."""
        lines = [(f"{type(self).__name__}: backend {self.backend} on {self.device}, topology {self.topology}, "
                  f"{len(self._sets)} buffer set(s), streams {list(self._streams) or ['(cpu)']}, "
                  f"cuda_graph {self.graph_status}")]
        if self._decoders is not None:
            lines.append(f"  encoded inputs decoded on the {self.decoder}")
        for bs in self._sets[:1]:
            for name, mem in bs.mems.items():
                lines.append(f"  {name!r}: {mem.describe()} {mem.nbytes} B x {len(self._sets)}")
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
            if self._binding is not None:
                self._binding.bound = None
            for bs in self._sets:
                errors.extend(bs.close())
            for mem in self._allocated:  # memories of a set whose construction failed midway
                attempt(mem.close)
            self._allocated.clear()
            if self._decoders is not None:
                self._decoders.close()
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
        return await _aio().infer(self, feeds, copy=copy, convert=None)  # no convert: one call less per request

    async def infer_with(self, feeds: Mapping[str, Any], convert: Callable[[dict[str, Any]], T], *,
                         copy: bool = False) -> T:
        """:meth:`infer_feeds`, the outputs passed through ``convert``."""
        return await _aio().infer(self, feeds, copy=copy, convert=convert)

    # == the request path: check, then hand over to the topology ======================================
    def _check_open(self) -> None:
        if self._closed:
            raise RunnerClosed(f"{type(self).__name__} is closed", hint="create a new runner")

    def _call(self, feeds: Mapping[str, Any], *, copy: bool, convert: Callable[[dict[str, Any]], Any] | None = None) -> Any:
        with self._lock:  # the one acquisition of this request
            t0 = time.perf_counter() if self.timing else 0.0
            pending = self._submit_locked(feeds, convert or self.as_outputs)
            outs = pending._result(copy)
            if pending.timing is not None:
                pending.timing = self.last_timing = pending.timing.with_wall((time.perf_counter() - t0) * 1e3)
            return pending._convert(outs)

    def _submit(self, feeds: Mapping[str, Any], *, convert: Callable[[dict[str, Any]], T] | None = None) -> Pending[T]:
        with self._lock:
            return self._submit_locked(feeds, convert or self.as_outputs)

    def _submit_locked(self, feeds: Mapping[str, Any], conv: Callable[[dict[str, Any]], Any]) -> Pending[Any]:
        if self._closed:
            self._check_open()
        t_submit = time.perf_counter()
        if not trace.on:
            values, key = self._inputs.check(feeds, check_finite=self.check_finite)
        else:
            with trace.span("trtflow.check"):
                values, key = self._inputs.check(feeds, check_finite=self.check_finite)
        if self._value_index:  # shape tensors: the output shapes depend on their values too
            key += host_values(values, self._value_index)
        bs = self._next_set()
        plan = self._plans.get(key)
        if plan is None:
            plan = self._shape_plan(key)
        p: Pending[Any]
        launcher = self._launcher
        if launcher is not None:
            host_in, graph, items = launcher.launch(bs, values, plan, t_submit)
            p = Pending(self, bs, items, conv, host_in_ms=host_in, graph=graph, event=bs.done_event,
                        stream=launcher.s_out)
        else:
            assert self._host is not None
            host_in, items, timing = self._host.run(bs, values, plan)
            if timing is not None:
                self.last_timing = timing
            p = Pending(self, bs, items, conv, host_in_ms=host_in, graph=False, complete=True, timing=timing)
        bs.pending = p
        bs.used = True
        return p

    def _shape_plan(self, key: ShapeKey) -> ShapePlan:
        plan = self._out_shapes.plan(key, self._binding)
        if plan.after_run:
            self._graphs.note_after_run([self._out_names[i] for i in plan.after_run])
        if len(self._plans) >= 64:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _next_set(self) -> BufferSet:
        sets = self._sets
        bs = sets[self._seq % len(sets)]
        self._seq += 1
        if bs.pending is not None:
            bs.pending._take_snapshot()  # an unread result must survive the reuse of its buffers
            bs.pending = None
        return bs

    def _wait_idle(self) -> None:
        for s in self._streams.values():
            cuda.stream_synchronize(s)


class Allocator:
    """What a runner's :meth:`Runner.allocate` hook declares with: one instance per runner, during
    ``__init__``. Everything it creates is the runner's, released by :meth:`Runner.close`."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self.depth = runner.depth  # buffer sets the topology needs

    def streams(self) -> None:
        """sync/async: one stream ``main``; pipelined: ``h2d``, ``compute``, ``d2h``. None on the CPU."""
        self._runner._create_streams()

    def scratch(self) -> None:
        """Device scratch the engine asks for (TensorRT user-managed memory); none when its size is 0."""
        self._runner._engine_scratch()

    def memory(self, name: str, strategy: str) -> TensorMemory:
        """The memory of tensor ``name`` with ``strategy`` at its max shape (checked against plan.json)."""
        return self._runner._memory(name, strategy)

    def buffer_set(self, mems: Mapping[str, TensorMemory]) -> None:
        """One buffer set: a memory per engine tensor (its events are added by the runner)."""
        self._runner._add_buffer_set(mems)


# == helpers =========================================================================================
_AIO: ModuleType | None = None


def _aio() -> ModuleType:
    """trtflow.runtime.aio, imported on the first asyncio request (it imports asyncio); an import
    statement on every request costs a few microseconds (importlib's fromlist path)."""
    global _AIO
    if _AIO is None:
        from trtflow.runtime import aio

        _AIO = aio
    return _AIO


def _identity(x: dict[str, Any]) -> dict[str, Any]:
    return x


def _pick_device(executor: type[Backend], requested: str) -> Device:
    where = executor.devices
    if requested == "auto":
        if "cuda" in where and cuda.cuda_available():
            return "cuda"
        if "cpu" in where:
            return "cpu"
        raise BackendMissing(f"backend {executor.name!r} needs a CUDA GPU and none is usable here",
                             hint="run on a GPU machine, or backend='onnxruntime' for the CPU")
    if requested != "cuda" and requested != "cpu":
        raise BackendMissing(f"unknown device {requested!r}", hint="auto, cuda or cpu")
    if requested not in where:
        raise BackendMissing(f"backend {executor.name!r} does not run on {requested}",
                             hint=f"it runs on: {', '.join(where)}")
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


__all__ = ["Allocator", "Pending", "Runner", "StageTiming"]
