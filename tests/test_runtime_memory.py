"""Memory strategies as compositions (trtflow/runtime/memory.py): a host staging kind, a device buffer and a
packer per strategy, one allocate-with-rollback helper. Run against the fake CUDA runtime
(tests/helpers/runtime.py), which records every call: the tests name the calls each strategy makes when
it allocates, per request, and when an allocation fails half way. The GPU suite runs every strategy for
real (tests/gpu/test_gpu_runtime.py::test_strategy_x_topology_matches_onnxruntime and friends).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup

from trtflow.errors import CudaError, InputError
from trtflow.plan.formats import nbytes, pack
from trtflow.plan.model import TensorPlan
from trtflow.runtime import cuda, memory

SHAPE, MAX = (1, 3, 4, 4), (2, 3, 4, 4)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    return sup.install(monkeypatch, seed=2)


def _tensor(role: str = "input", fmt: str = "linear", strategy: str = "pinned") -> TensorPlan:
    return TensorPlan(name="t", ident="t", role=role, dtype="float32", shape=SHAPE, min_shape=SHAPE,  # type: ignore[arg-type]
                      max_shape=MAX, format=fmt, memory=strategy, bytes=0, max_bytes=0, naive_bytes=0,
                      predicted_ms=0.0, naive_predicted_ms=0.0, source="t", model_dtype="float32", model_shape=SHAPE)


def _make(strategy: str, role: str = "input", fmt: str = "linear", *, graph: bool = False,
          registry: memory.HostRegistry | None = None) -> memory.TensorMemory:
    return memory.make_memory(_tensor(role, fmt, strategy), strategy, device="cuda",
                              registry=registry if registry is not None else memory.HostRegistry(), graph=graph)


def _calls(fake: Any, fn: Any) -> list[str]:
    fake.calls.clear()
    fn()
    return list(fake.calls)


# strategy, role, graph -> (class, staging kind, device part, the CUDA calls that allocate it)
PARTS = [
    ("pageable", "output", False, memory.StagedMemory, "pageable", "device buffer", ["cudaMalloc"]),
    ("pageable", "input", True, memory.StagedMemory, "pinned", "device buffer", ["cudaHostAlloc", "cudaMalloc"]),
    ("pinned", "input", False, memory.StagedMemory, "pinned", "device buffer", ["cudaHostAlloc", "cudaMalloc"]),
    ("write_combined", "input", False, memory.StagedMemory, "write_combined", "device buffer",
     ["cudaHostAlloc", "cudaMalloc"]),
    ("registered", "output", False, memory.RegisteredMemory, "registered", "device buffer",
     ["cudaHostRegister", "cudaMalloc"]),
    ("mapped", "input", False, memory.StagedMemory, "mapped", "zero copy", ["cudaHostAlloc", "cudaHostGetDevicePointer"]),
]


@pytest.mark.parametrize(("strategy", "role", "graph", "cls", "kind", "device", "calls"), PARTS,
                         ids=[f"{p[0]}-{p[1]}{'-graph' if p[2] else ''}" for p in PARTS])
def test_contract_each_strategy_is_a_staging_kind_a_device_part_and_a_packer(
        fake: Any, strategy: str, role: str, graph: bool, cls: type, kind: str, device: str, calls: list[str]) -> None:
    holder: list[memory.TensorMemory] = []
    assert _calls(fake, lambda: holder.append(_make(strategy, role, graph=graph))) == calls
    mem = holder[0]
    assert type(mem) is cls and isinstance(mem, memory.StagedMemory) and mem.strategy == strategy
    assert mem.staging.name == kind and mem.describe() == f"{strategy} ({kind} staging, {device}, linear)"
    assert isinstance(mem.packer, memory.LinearPacker)
    assert mem.zero_copy == (device == "zero copy")
    mem.close()
    assert fake.live() == {} and cuda.live_handles() == {}


def test_contract_borrowing_kinds_allocate_no_host_staging_for_linear_inputs(fake: Any) -> None:
    """pageable and registered linear inputs are the caller's arrays (as is / page-locked in place)."""
    for strategy in ("pageable", "registered"):
        assert _calls(fake, lambda s=strategy: _make(s).close()) == ["cudaMalloc", "cudaFree"]
        vec = _make(strategy, fmt="chw32")  # a vectorized format packs into staging of ours
        assert isinstance(vec.packer, memory.FormatPacker) and vec.host_view(SHAPE) is None
        vec.close()
    assert fake.live() == {}


def test_contract_device_and_cpu_memories(fake: Any) -> None:
    dev = _make("device")
    assert isinstance(dev, memory.DeviceMemory) and dev.bind_inputs and not dev.fixed_addresses
    graphed = _make("device", graph=True)  # graphs bake addresses: inputs are copied into our buffer
    assert isinstance(graphed, memory.DeviceMemory) and not graphed.bind_inputs and graphed.outside_graph and graphed.fixed_addresses
    with pytest.raises(InputError, match="format: linear"):
        _make("device", fmt="chw32")
    host = memory.make_memory(_tensor(strategy="mapped"), "mapped", device="cpu", registry=memory.HostRegistry())
    assert type(host) is memory.HostMemory and host.device_ptr == 0
    for m in (dev, graphed, host):
        m.close()
    assert fake.live() == {}


def test_contract_write_combined_outputs_are_refused_before_allocating(fake: Any) -> None:
    fake.calls.clear()
    with pytest.raises(InputError, match="write_combined memory is for inputs only"):
        _make("write_combined", "output")
    assert fake.calls == []


# strategy, role, graph, fmt, the CUDA call to fail -> the calls made (the failed one included), all released
FAILURES = [
    ("pinned", "input", False, "linear", "cudaMalloc", ["cudaHostAlloc", "cudaMalloc", "cudaFreeHost"]),
    ("pinned", "input", False, "linear", "cudaHostAlloc", ["cudaHostAlloc"]),
    ("pageable", "output", True, "linear", "cudaMalloc", ["cudaHostAlloc", "cudaMalloc", "cudaFreeHost"]),
    ("write_combined", "input", False, "chw32", "cudaMalloc", ["cudaHostAlloc", "cudaMalloc", "cudaFreeHost"]),
    ("mapped", "output", False, "linear", "cudaHostGetDevicePointer",
     ["cudaHostAlloc", "cudaHostGetDevicePointer", "cudaFreeHost"]),
    ("registered", "output", False, "linear", "cudaMalloc", ["cudaHostRegister", "cudaMalloc", "cudaHostUnregister"]),
    ("registered", "input", False, "chw32", "cudaHostRegister", ["cudaHostRegister"]),
    ("device", "input", False, "linear", "cudaMalloc", ["cudaMalloc"]),
]


@pytest.mark.parametrize(("strategy", "role", "graph", "fmt", "failing", "calls"), FAILURES,
                         ids=[f"{f[0]}-{f[1]}-{f[3]}-{f[4]}" for f in FAILURES])
def test_contract_allocation_failure_releases_what_was_allocated(
        fake: Any, monkeypatch: pytest.MonkeyPatch, strategy: str, role: str, graph: bool, fmt: str, failing: str,
        calls: list[str]) -> None:
    rt = cuda._runtime()
    monkeypatch.setattr(rt, failing, lambda *a: (sup.cudaError_t.cudaErrorMemoryAllocation, 0))
    registry = memory.HostRegistry()
    fake.calls.clear()
    with pytest.raises(CudaError, match=f"{failing} failed: cudaErrorMemoryAllocation"):
        _make(strategy, role, fmt, graph=graph, registry=registry)
    assert [c for c in fake.calls if c != "cudaGetErrorName"] == [c for c in calls if c != failing]
    assert fake.live() == {} and cuda.live_handles() == {} and len(registry) == 0


def test_contract_rollback_releases_last_first_and_keeps_on_success() -> None:
    import contextlib

    released: list[int] = []
    with pytest.raises(RuntimeError), memory._rollback() as undo:
        undo.callback(released.append, 1)
        undo.callback(released.append, 2)
        raise RuntimeError("the third allocation failed")
    assert released == [2, 1]
    owned = contextlib.ExitStack()
    with memory._rollback(owned) as undo:
        undo.callback(released.append, 3)
    assert released == [2, 1]  # success: nothing released until the owner closes
    owned.close()
    assert released == [2, 1, 3]


# -- per request: the calls each composition makes ---------------------------------------------------
# strategy, graph -> the calls of prepare + enqueue_in for a new input array
REQUEST_IN = [("pageable", False, ["cudaMemcpyAsync"]), ("pageable", True, ["cudaMemcpyAsync"]),
              ("pinned", False, ["cudaMemcpyAsync"]), ("write_combined", False, ["cudaMemcpyAsync"]),
              ("registered", False, ["cudaHostRegister", "cudaMemcpyAsync"]), ("mapped", False, [])]


@pytest.mark.parametrize("fmt", ["linear", "chw32"])
@pytest.mark.parametrize(("strategy", "graph", "calls"), REQUEST_IN,
                         ids=[f"{r[0]}{'-graph' if r[1] else ''}" for r in REQUEST_IN])
def test_contract_input_request_calls_and_the_bytes_the_engine_reads(fake: Any, strategy: str, graph: bool,
                                                                    calls: list[str], fmt: str) -> None:
    mem = _make(strategy, fmt=fmt, graph=graph)
    s = cuda.stream_create()
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    if strategy == "registered" and fmt != "linear":
        calls = [c for c in calls if c != "cudaHostRegister"]  # packed into registered staging of ours

    def request() -> None:
        mem.prepare(x, SHAPE, stream=s)
        mem.enqueue_in(SHAPE, stream=s)

    assert _calls(fake, request) == calls
    if strategy == "registered" and fmt == "linear":  # the same buffer again: registered already
        assert _calls(fake, lambda: mem.prepare(x, SHAPE, stream=s)) == []
    cuda.stream_synchronize(s)
    want = np.ascontiguousarray(x if fmt == "linear" else pack(x, fmt)).reshape(-1).view(np.uint8)
    got = np.empty(want.size, np.uint8)
    cuda.memcpy(int(got.ctypes.data), mem.device_ptr, got.size, "d2h")
    np.testing.assert_array_equal(got, want)
    mem.close()
    cuda.stream_destroy(s)
    assert fake.live() == {}


@pytest.mark.parametrize("strategy", ["pageable", "pinned", "registered", "mapped", "device"])
def test_contract_output_request_calls_and_result(fake: Any, strategy: str) -> None:
    mem = _make(strategy, "output")
    s = cuda.stream_create()
    y = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    cuda.memcpy(mem.device_ptr, int(y.ctypes.data), y.nbytes, "h2d")  # what the engine wrote
    zero_copy = strategy in ("mapped", "device")
    assert _calls(fake, lambda: mem.enqueue_out(SHAPE, stream=s)) == ([] if zero_copy else ["cudaMemcpyAsync"])
    cuda.stream_synchronize(s)
    out = mem.result(SHAPE, copy=False)
    np.testing.assert_array_equal(out.numpy() if isinstance(out, memory.DeviceArray) else out, y)
    mem.close()
    cuda.stream_destroy(s)
    assert fake.live() == {}


def test_contract_registered_output_lands_in_the_callers_buffer(fake: Any) -> None:
    registry = memory.HostRegistry()
    mem = _make("registered", "output", registry=registry)
    assert isinstance(mem, memory.RegisteredMemory) and not mem.fixed_addresses
    before = mem.graph_key()
    user = np.zeros(mem.nbytes // 4, np.float32)
    assert _calls(fake, lambda: mem.use(user)) == ["cudaHostRegister"]
    assert mem.graph_key() != before and len(registry) == 2  # staging of ours stays registered until close
    assert _calls(fake, lambda: mem.use(user)) == []
    assert _calls(fake, mem.close) == ["cudaHostUnregister", "cudaFree", "cudaHostUnregister"]
    assert _calls(fake, mem.close) == []  # idempotent
    assert len(registry) == 0


def test_format_packer_round_trips_and_has_no_in_place_view() -> None:
    """(The linear packer's skipped copy for the staging view: test_runtime_fastpath.py.)"""
    packer = memory.make_packer(np.dtype(np.float32), "chw32")
    x = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    host = memory.PAGEABLE.allocate(nbytes(MAX, "float32", "chw32"))
    packer.pack(x, host, SHAPE)
    np.testing.assert_array_equal(host.array[:nbytes(SHAPE, "float32", "chw32")].view(np.float32),
                                  pack(x, "chw32").reshape(-1))
    np.testing.assert_array_equal(packer.unpack(host.array, SHAPE, copy=True), x)
    assert packer.view(host.array, SHAPE) is None
