"""TrtEngine, the execution side shared by TensorRT and TensorRT-RTX (backends/_trt_common.py).

No TensorRT runtime can execute on this project's machines, so the engine contract (scratch memory,
output shapes, data-dependent outputs, shape tensors, CUDA-graph capturability, the TensorRT-RTX runtime
config and cache) is pinned by ``test_contract_...`` tests against the faithful fake in tests/helpers/trt_fake.py
over the fake CUDA runtime. The runtime-cache *file* handling (keying, atomic write, corrupt or foreign
cache) is plain Python and tested for real, as is the IOutputAllocator subclass on the real
``tensorrt_rtx`` trampoline base.
"""

from __future__ import annotations

import ctypes
import importlib.util
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup
from helpers import trt_fake
from helpers.models import DYNAMIC_PROFILE, conv_bn_relu, plan_for

from trtflow.backends import _trt_common as common
from trtflow.backends.tensorrt import FLAVOR as TRT
from trtflow.backends.tensorrt_rtx import FLAVOR as RTX
from trtflow.errors import ArtifactError, CudaError, InputError, RunnerClosed, TrtflowError
from trtflow.plan.model import Plan
from trtflow.runtime import cuda

HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> sup.FakeCudart:
    return sup.install_with_backend(monkeypatch, seed=0)


def _plan(tmp_path: Path, model: trt_fake.Model, *, graphs: bool = False) -> Plan:
    tmp_path.mkdir(parents=True, exist_ok=True)
    conv_bn_relu(tmp_path / "m.onnx", batch="N")
    body = DYNAMIC_PROFILE + ("streams: {cuda_graph: true}\n" if graphs else "")
    plan = plan_for(tmp_path, "m.onnx", body)
    x, y = plan.inputs[0], plan.outputs[0]
    inputs, outputs = [x], [y]
    if model.dds:  # NonZero-like: at most every element of x, int64
        n = 8 * 3 * 256
        outputs.append(replace(y, name="idx", ident="idx", dtype="int64", shape=(n,), min_shape=(0,), max_shape=(n,),
                               bytes=n * 8, max_bytes=n * 8))
    if model.shape_input:
        inputs.append(replace(x, name="shape", ident="shape", dtype="int64", shape=(2,), min_shape=(2,),
                              max_shape=(2,), bytes=16, max_bytes=16))
        outputs.append(replace(y, name="r", ident="r", shape=(3, 256), min_shape=(3, 256), max_shape=(24, 256),
                               bytes=3 * 256 * 4, max_bytes=24 * 256 * 4))
    return replace(plan, inputs=tuple(inputs), outputs=tuple(outputs))


def _engine(tmp_path: Path, model: trt_fake.Model, *, rtx: bool = True, graphs: bool = False,
            cache: common.RuntimeCacheFile | None = None, env: str = "gpu-a") -> common.TrtEngine:
    fake = trt_fake.FakeTrt(rtx=rtx)
    engine = trt_fake.ICudaEngine(model, rtx=rtx, env=env)
    return common.TrtEngine(fake.module, RTX if rtx else TRT, object(), engine, common.LogSink(), object(),  # type: ignore[arg-type]
                            _plan(tmp_path, model, graphs=graphs), cache_file=cache)


class Buffers:
    """Device buffers at the max shape, as the runtime allocates them (fake CUDA memory)."""

    def __init__(self, engine: common.TrtEngine, *, scratch: bool = True) -> None:
        self.ptrs = {t.name: cuda.malloc(t.max_bytes) for t in engine.plan.tensors}
        self.engine = engine
        if scratch and engine.scratch_size:
            engine.set_scratch(cuda.malloc(engine.scratch_size))
        for name, ptr in self.ptrs.items():
            engine.set_address(name, ptr)

    def write(self, name: str, a: np.ndarray) -> None:
        ctypes.memmove(self.ptrs[name], a.ctypes.data, a.nbytes)

    def read(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = (ctypes.c_uint8 * n).from_address(self.ptrs[name])
        return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)


# -- item 1: scratch memory --------------------------------------------------------------------------------

@pytest.mark.parametrize("rtx", [False, True], ids=["tensorrt", "tensorrt_rtx"])
def test_contract_scratch_size_zero_runs_without_a_hand_over(fake_cuda: sup.FakeCudart, tmp_path: Path,
                                                             rtx: bool) -> None:
    e = _engine(tmp_path, trt_fake.Model(scratch=0), rtx=rtx)
    assert e.scratch_size == 0
    bufs = Buffers(e)
    e.set_input_shape("x", (2, 3, 16, 16))
    s = cuda.stream_create()
    e.enqueue(s)  # no set_scratch, and none needed
    cuda.stream_synchronize(s)
    assert e._ctx is not None and e._ctx.memory is None  # type: ignore[attr-defined]
    assert bufs.read("y", (2, 8, 16, 16), np.float32).shape == (2, 8, 16, 16)


def test_contract_scratch_above_zero_must_be_handed_over_first(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    e = _engine(tmp_path, trt_fake.Model(scratch=4096))
    assert e.scratch_size == 4096
    Buffers(e, scratch=False)
    e.set_input_shape("x", (1, 3, 16, 16))
    with pytest.raises(TrtflowError, match="enqueue before set_scratch") as exc:
        e.enqueue(cuda.stream_create())
    assert "4096" in (exc.value.hint or "")
    with pytest.raises(InputError, match="not 256-byte aligned"):
        e.set_scratch(1000)
    ptr = cuda.malloc(4096)
    e.set_scratch(ptr)
    assert e._ctx.memory == (ptr, 4096)  # type: ignore[union-attr,attr-defined]
    e.enqueue(cuda.stream_create())


def test_contract_context_is_user_managed_through_a_runtime_config(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    for rtx in (False, True):
        e = _engine(tmp_path / str(rtx), trt_fake.Model(), rtx=rtx)
        config = e._ctx.config  # type: ignore[union-attr,attr-defined]
        assert config.strategy == trt_fake.ExecutionContextAllocationStrategy.USER_MANAGED


# -- item 2: output shapes and data-dependent outputs ------------------------------------------------------

def test_contract_output_shape_comes_from_the_context_after_set_input_shape(fake_cuda: sup.FakeCudart,
                                                                           tmp_path: Path) -> None:
    e = _engine(tmp_path, trt_fake.Model())
    for n in (1, 3, 8):
        e.set_input_shape("x", (n, 3, 16, 16))
        assert e.output_shape("y") == (n, 8, 16, 16)
    with pytest.raises(InputError, match=r"outside the engine's profile \[\(1, 3, 16, 16\) .. \(8, 3, 16, 16\)\]"):
        e.set_input_shape("x", (9, 3, 16, 16))


def test_contract_data_dependent_output_reports_its_shape_and_lands_in_the_runtime_buffer(
        fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    e = _engine(tmp_path, trt_fake.Model(dds=True))
    bufs = Buffers(e)
    e.set_input_shape("x", (2, 3, 16, 16))
    assert e.output_shape("idx") is None and e.output_shape("y") == (2, 8, 16, 16)
    assert e.reported_shape("idx") is None
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    bufs.write("x", x)
    s = cuda.stream_create()
    e.enqueue(s)
    cuda.stream_synchronize(s)
    want = np.flatnonzero(x.reshape(-1) > 0)
    assert e.reported_shape("idx") == (want.size,)
    np.testing.assert_array_equal(bufs.read("idx", (want.size,), np.int64), want)
    assert e.reported_shape("y") is None  # a shape known before running is output_shape's
    assert not e.capturable  # the allocator runs inside the enqueue: no CUDA graph


def test_contract_output_allocator_grows_through_runtime_cuda_and_copies_back(fake_cuda: sup.FakeCudart,
                                                                              tmp_path: Path) -> None:
    mem = common._OutputMemory({"idx": 1024})
    mem.bound["idx"] = bound = cuda.malloc(1024)
    assert mem.reallocate("idx", bound, 1000, 256) == bound  # fits: the runtime's own buffer
    grown = mem.reallocate("idx", bound, 5000, 256)
    assert grown != bound and mem.grown["idx"] == (grown, 5000) and grown % 256 == 0
    assert mem.reallocate("idx", bound, 4000, 256) == grown  # big enough already: no new allocation
    bigger = mem.reallocate("idx", bound, 6000, 256)
    assert mem.grown["idx"] == (bigger, 10000)  # doubles
    live = cuda.live_handles().get("device", 0)
    mem.close()
    assert cuda.live_handles().get("device", 0) == live - 1 and not mem.grown


def test_contract_result_in_grown_memory_is_copied_into_the_runtime_buffer(fake_cuda: sup.FakeCudart,
                                                                           tmp_path: Path) -> None:
    """TensorRT asks for more than the runtime's buffer (an upper bound beyond the plan's): the engine grows its
    own memory, and the result (which fits) lands in the runtime's buffer anyway."""
    e = _engine(tmp_path, trt_fake.Model(dds=True, ask=1 << 20))
    bufs = Buffers(e)
    e.set_input_shape("x", (1, 3, 16, 16))
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    bufs.write("x", x)
    s = cuda.stream_create()
    e.enqueue(s)
    cuda.stream_synchronize(s)
    want = np.flatnonzero(x.reshape(-1) > 0)
    assert e._out_memory.grown["idx"][1] == 1 << 20
    np.testing.assert_array_equal(bufs.read("idx", (want.size,), np.int64), want)
    e.close()
    assert not e._out_memory.grown  # freed with the engine


def test_contract_allocator_error_surfaces_from_enqueue(fake_cuda: sup.FakeCudart, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    e = _engine(tmp_path, trt_fake.Model(dds=True))
    bufs = Buffers(e)
    e.set_input_shape("x", (1, 3, 16, 16))
    bufs.write("x", np.ones((1, 3, 16, 16), np.float32))
    monkeypatch.setitem(e._out_memory.capacity, "idx", 8)  # too small: the allocator must grow

    def oom(n: int) -> int:
        raise CudaError("cudaMalloc failed: cudaErrorMemoryAllocation")

    monkeypatch.setattr(cuda, "malloc", oom)
    with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
        e.enqueue(cuda.stream_create())


def test_real_rtx_output_allocator_subclasses_the_trampoline(fake_cuda: sup.FakeCudart) -> None:
    """The subclass made by make_output_allocator instantiates on the real pybind11 base class and is
    called with pyCore.cpp's arguments (name, current memory, size, alignment, stream)."""
    if not HAVE_RTX:
        pytest.skip("tensorrt_rtx is not installed")
    import tensorrt_rtx

    mem = common._OutputMemory({"idx": 4096})
    alloc = common.make_output_allocator(tensorrt_rtx, mem)
    assert isinstance(alloc, tensorrt_rtx.IOutputAllocator)
    mem.bound["idx"] = bound = cuda.malloc(4096)
    assert alloc.reallocate_output_async("idx", bound, 100, 256, 7) == bound
    alloc.notify_shape("idx", tensorrt_rtx.Dims([3, 4]))
    assert mem.shapes["idx"] == (3, 4)


# -- item 7: shape tensors ---------------------------------------------------------------------------------

def test_contract_shape_tensor_values_live_in_host_memory(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    e = _engine(tmp_path, trt_fake.Model(shape_input=True))
    assert e.host_inputs == {"shape"}
    bufs = Buffers(e)
    e.set_input_shape("x", (1, 3, 16, 16))
    assert e.output_shape("r") is None  # values not set yet: -1 dims
    with pytest.raises(InputError, match=r"shape-tensor input\(s\) \['shape'\]: values not set"):
        e.enqueue(cuda.stream_create())
    e.set_input_values("shape", [3, 256])
    assert e.output_shape("r") == (3, 256)
    addr = e._ctx.get_tensor_address("shape")  # type: ignore[union-attr]
    assert addr == e._host_values["shape"].ctypes.data and addr != bufs.ptrs["shape"]  # host, not the device copy
    x = np.arange(768, dtype=np.float32).reshape(1, 3, 16, 16)
    bufs.write("x", x)
    s = cuda.stream_create()
    e.enqueue(s)
    cuda.stream_synchronize(s)
    np.testing.assert_array_equal(bufs.read("r", (3, 256), np.float32), x.reshape(3, 256))
    e.set_input_values("shape", [6, 128])
    assert e.output_shape("r") == (6, 128) and e._ctx.get_tensor_address("shape") == addr  # type: ignore[union-attr]
    with pytest.raises(InputError, match="is not a shape tensor"):
        e.set_input_values("x", [1])


# -- items 5 and 8: CUDA graphs -----------------------------------------------------------------------------

def test_contract_no_output_allocator_before_the_input_shapes_are_set(fake_cuda: sup.FakeCudart,
                                                                      tmp_path: Path) -> None:
    """Before set_input_shape every dynamic dim reads -1: that is not data-dependence (the runner asks
    `capturable` right after opening)."""
    e = _engine(tmp_path, trt_fake.Model(scratch=0))
    assert e.capturable and not e._dynamic_outputs
    assert e._ctx.allocators == {}  # type: ignore[union-attr,attr-defined]
    e.set_input_shape("x", (2, 3, 16, 16))
    assert e.output_shape("y") == (2, 8, 16, 16) and not e._dynamic_outputs


def test_contract_capturable_asks_is_stream_capturable_for_the_enqueue_stream(fake_cuda: sup.FakeCudart,
                                                                              tmp_path: Path) -> None:
    e = _engine(tmp_path, trt_fake.Model(scratch=0))
    Buffers(e)
    e.set_input_shape("x", (1, 3, 16, 16))
    assert e.capturable  # no stream seen yet
    e.enqueue(1)  # the legacy default stream: the fake (like CUDA) cannot capture it
    assert not e.capturable
    e.enqueue(cuda.stream_create())
    assert e.capturable
    assert e.graphs_outlive_shape_changes is False  # one context: a graph is valid for one set of shapes


def test_contract_rtx_runtime_config_for_graphs(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    """With streams.cuda_graph: EAGER specialization (the warm-up enqueue compiles the shape-specialized
    kernels, so the capture that follows never bakes in a fallback kernel); RTX's own capture DISABLED
    (trtflow captures the whole request itself)."""
    S = trt_fake.DynamicShapesKernelSpecializationStrategy
    for graphs, want in ((True, S.EAGER), (False, S.LAZY)):
        e = _engine(tmp_path / str(graphs), trt_fake.Model(), graphs=graphs)
        config = e._ctx.config  # type: ignore[union-attr,attr-defined]
        assert config.dynamic_shapes_kernel_specialization_strategy == want
        assert config.cuda_graph_strategy == trt_fake.CudaGraphStrategy.DISABLED


# -- item 4: runtime cache -----------------------------------------------------------------------------------

def test_runtime_cache_key_names_gpu_driver_and_version() -> None:
    key = common.runtime_cache_key("NVIDIA GeForce RTX 4090", (8, 9), 13020, "1.7.1.116")
    assert key == "nvidia-geforce-rtx-4090-sm89-driver13020-1.7.1.116"
    # a GPU name never makes a path: no separators survive
    assert common.runtime_cache_key("../../etc", (8, 6), 1, "x") == "..-..-etc-sm86-driver1-x"
    assert "/" not in common.runtime_cache_key("a/b\\c", (1, 0), 1, "v")


def test_runtime_cache_file_is_keyed_by_the_current_gpu_and_driver(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    f = common.runtime_cache_file(tmp_path, "1.7.1.116")
    assert f is not None
    assert f.path == tmp_path / "runtime_cache" / "fake-gpu-sm90-driver13020-1.7.1.116.bin"


def test_runtime_cache_file_saves_atomically_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = common.RuntimeCacheFile(tmp_path / "runtime_cache", "k")
    assert f.load() is None
    assert f.save(b"one")
    assert f.load() == b"one"
    # an interrupted write leaves the previous file: the replace happens only after a full write
    import os

    def boom(*a: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        f.save(b"two")
    assert f.load() == b"one" and [p.name for p in f.folder.iterdir()] == ["k.bin"]


def test_runtime_cache_in_a_read_only_folder_is_a_warning(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "runtime_cache").write_text("a file where the folder should be")
    f = common.RuntimeCacheFile(ro / "runtime_cache", "k")
    with pytest.warns(RuntimeWarning, match="runtime cache not saved"):
        assert not f.save(b"data")


def test_contract_runtime_cache_is_loaded_used_and_saved_on_close(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    f = common.RuntimeCacheFile(tmp_path / "runtime_cache", "gpu-a")
    e = _engine(tmp_path / "1", trt_fake.Model(), cache=f)
    assert e.runtime_cache == "empty"
    config = e._ctx.config  # type: ignore[union-attr,attr-defined]
    assert config.cache is e._cache
    e._cache.entries = 5  # kernels JIT-compiled during the run
    e.close()
    assert f.load() == b"RTXCACHE:gpu-a:5"
    e2 = _engine(tmp_path / "2", trt_fake.Model(), cache=f)
    assert e2.runtime_cache == "loaded" and e2._cache.entries == 5  # warm start
    e2.close()


def test_contract_corrupt_runtime_cache_is_ignored_with_a_warning(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    f = common.RuntimeCacheFile(tmp_path / "runtime_cache", "gpu-a")
    f.save(b"\x00garbage")
    with pytest.warns(RuntimeWarning, match="rejected by TensorRT-RTX"):
        e = _engine(tmp_path, trt_fake.Model(), cache=f)
    assert e.runtime_cache == "rejected"
    e.close()
    assert f.load() == b"RTXCACHE:gpu-a:0"  # replaced by a valid one


def test_contract_foreign_gpu_cache_is_not_used(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    folder = tmp_path / "runtime_cache"
    common.RuntimeCacheFile(folder, "gpu-b").save(b"RTXCACHE:gpu-b:9")  # another GPU's cache, same folder
    mine = common.RuntimeCacheFile(folder, "gpu-a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = _engine(tmp_path, trt_fake.Model(), cache=mine)
    assert e.runtime_cache == "empty" and e._cache.entries == 0
    e.close()
    assert common.RuntimeCacheFile(folder, "gpu-b").load() == b"RTXCACHE:gpu-b:9"  # untouched
    # even under this GPU's name, a blob made elsewhere is refused by the library and not used
    mine.save(b"RTXCACHE:gpu-b:9")
    with pytest.warns(RuntimeWarning, match="rejected"):
        e = _engine(tmp_path / "x", trt_fake.Model(), cache=mine)
    assert e._cache.entries == 0
    e.close()


def test_contract_full_tensorrt_has_no_runtime_cache(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    e = _engine(tmp_path, trt_fake.Model(), rtx=False, cache=common.RuntimeCacheFile(tmp_path / "rc", "k"))
    assert e.runtime_cache == "n/a" and not e.save_runtime_cache()
    e.close()
    assert not (tmp_path / "rc").exists()


# -- lifecycle ------------------------------------------------------------------------------------------------

def test_contract_failed_enqueue_and_close(fake_cuda: sup.FakeCudart, tmp_path: Path) -> None:
    e = _engine(tmp_path, trt_fake.Model(scratch=0))
    e.set_input_shape("x", (1, 3, 16, 16))
    with pytest.raises(CudaError, match="execute_async_v3 failed"):
        e.enqueue(cuda.stream_create())  # no addresses bound
    with pytest.raises(InputError, match="not 256-byte aligned"):
        e.set_address("x", 1000)
    e.close()
    e.close()
    with pytest.raises(RunnerClosed):
        e.enqueue(7)


def test_contract_fake_names_exist_in_the_real_bindings() -> None:
    """The fake is faithful in its names: each one is bound by the real TensorRT-RTX module (and, for
    the names both libraries share, by TensorRT 10.12 and 11.4: the committed stubs)."""
    if not HAVE_RTX:
        pytest.skip("tensorrt_rtx is not installed")
    import tensorrt_rtx

    for names in (trt_fake.FAKE_NAMES, trt_fake.RTX_ONLY_NAMES):
        for cls, attrs in names.items():
            real = getattr(tensorrt_rtx, cls)
            missing = [a for a in attrs if not hasattr(real, a)]
            assert not missing, f"tensorrt_rtx.{cls} has no {missing}"
    assert ArtifactError  # (imported for the other tests' failure messages)
