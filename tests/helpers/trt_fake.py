"""A faithful fake of the TensorRT / TensorRT-RTX runtime objects :class:`TrtEngine` drives.

No TensorRT runtime executes on this project's machines (full TensorRT is not installable, TensorRT-RTX
refuses every GPU here), so what only a GPU would show is pinned by ``test_contract_...`` tests against
this fake. Faithful means: every name it defines is a name of the real bindings (checked against the
installed ``tensorrt_rtx`` and the committed TensorRT 10.12 / 11.4 stubs by
``test_contract_fake_names_exist_in_the_real_bindings``), and it behaves as NvInferRuntime.h and
pyCore.cpp say:

- ``create_execution_context(runtime_config)``; USER_MANAGED memory: ``execute_async_v3`` returns False
  when the scratch size is > 0 and ``set_device_memory`` was never called (size 0: nothing needed);
- ``get_tensor_shape`` of an output is exact once the input shapes are set, -1 for a data-dependent dim;
- a data-dependent output calls ``IOutputAllocator.reallocate_output_async(name, current, size,
  alignment, stream)`` and then ``notify_shape(name, dims)`` before ``execute_async_v3`` returns;
- a shape-tensor input (``is_shape_inference_io``, ``TensorLocation.HOST``) is read from host memory at
  ``set_tensor_address`` time for ``get_tensor_shape`` and at ``execute_async_v3``;
- TensorRT-RTX's ``IRuntimeCache.deserialize`` returns False for a blob of another environment.

The model: ``x`` [N, 3, 16, 16] float32 -> ``y`` [N, 8, 16, 16] (y = 2x, channels repeated), plus optional ``idx``
(int64 [-1], the flat indices where x > 0, like NonZero) and an optional shape input ``shape`` (int64 [2])
that reshapes x into ``r``. Kernels run on the fake CUDA runtime's streams (tests/helpers/runtime.py).
"""

from __future__ import annotations

import ctypes
import enum
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from trtflow.backends.base import Backend, CudaEngine
from trtflow.plan.model import BuildInfo, Plan


class TensorLocation(enum.IntEnum):
    DEVICE = 0
    HOST = 1


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class DynamicShapesKernelSpecializationStrategy(enum.IntEnum):
    LAZY = 0
    EAGER = 1
    NONE = 2


class CudaGraphStrategy(enum.IntEnum):
    DISABLED = 0
    WHOLE_GRAPH_CAPTURE = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    INT64 = 11


class IOutputAllocator:
    """pyCore.cpp's trampoline base: subclasses call ``IOutputAllocator.__init__(self)``."""

    def __init__(self) -> None:
        pass


class IRuntimeCache:
    """Accepts only blobs it serialized for the same environment (like RTX's own validation)."""

    def __init__(self, env: str) -> None:
        self.env, self.entries = env, 0

    def deserialize(self, blob: bytes) -> bool:
        head = f"RTXCACHE:{self.env}:".encode()
        data = bytes(blob)
        if not data.startswith(head):
            return False
        self.entries = int(data[len(head):] or b"0")
        return True

    def serialize(self) -> bytes:
        return f"RTXCACHE:{self.env}:{self.entries}".encode()

    def reset(self) -> bool:
        self.entries = 0
        return True


@dataclass
class IRuntimeConfig:
    rtx: bool
    env: str
    strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    cache: IRuntimeCache | None = None
    _cuda_graph: CudaGraphStrategy = CudaGraphStrategy.DISABLED
    _specialization: DynamicShapesKernelSpecializationStrategy = DynamicShapesKernelSpecializationStrategy.LAZY

    def set_execution_context_allocation_strategy(self, strategy: ExecutionContextAllocationStrategy) -> None:
        self.strategy = strategy

    def get_execution_context_allocation_strategy(self) -> ExecutionContextAllocationStrategy:
        return self.strategy


class RtxRuntimeConfig(IRuntimeConfig):
    """TensorRT-RTX's IRuntimeConfig: also runtime cache and the two strategies."""

    def create_runtime_cache(self) -> IRuntimeCache:
        return IRuntimeCache(self.env)

    def set_runtime_cache(self, cache: IRuntimeCache) -> bool:
        self.cache = cache
        return True

    def get_runtime_cache(self) -> IRuntimeCache | None:
        return self.cache

    @property
    def cuda_graph_strategy(self) -> CudaGraphStrategy:
        return self._cuda_graph

    @cuda_graph_strategy.setter
    def cuda_graph_strategy(self, v: CudaGraphStrategy) -> None:
        self._cuda_graph = v

    @property
    def dynamic_shapes_kernel_specialization_strategy(self) -> DynamicShapesKernelSpecializationStrategy:
        return self._specialization

    @dynamic_shapes_kernel_specialization_strategy.setter
    def dynamic_shapes_kernel_specialization_strategy(self, v: DynamicShapesKernelSpecializationStrategy) -> None:
        self._specialization = v


@dataclass
class Model:
    dds: bool = False            # add the NonZero-like output ``idx``
    shape_input: bool = False    # add the shape-tensor input ``shape`` and output ``r``
    scratch: int = 4096          # device_memory_size_v2
    ask: int | None = None       # bytes the allocator is asked for (None: the exact result size)
    max_batch: int = 8
    stream_capturable: bool = True  # what is_stream_capturable answers for a non-default stream

    @property
    def inputs(self) -> list[str]:
        return ["x"] + (["shape"] if self.shape_input else [])

    @property
    def outputs(self) -> list[str]:
        return ["y"] + (["idx"] if self.dds else []) + (["r"] if self.shape_input else [])


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, config: IRuntimeConfig) -> None:
        self.engine, self.config = engine, config
        self.shapes: dict[str, tuple[int, ...]] = {"x": (-1, 3, 16, 16)}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}
        self.memory: tuple[int, int] | None = None
        self.executions = 0

    # -- pyCore.cpp names ---------------------------------------------------------------------------------
    def set_device_memory(self, memory: int, size: int) -> None:
        self.memory = (int(memory), int(size))

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if name == "shape" and self.engine.model.shape_input:  # static: its one shape is accepted
            return tuple(shape) == (2,)
        if name != "x" or len(shape) != 4 or tuple(shape[1:]) != (3, 16, 16) or not 1 <= shape[0] <= self.engine.model.max_batch:
            return False
        self.shapes["x"] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine.model.inputs + self.engine.model.outputs:
            return False
        if self.engine.get_tensor_location(name) == TensorLocation.DEVICE and memory % 256:
            return False
        self.addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addresses.get(name, 0)

    def _shape_values(self) -> tuple[int, ...] | None:
        ptr = self.addresses.get("shape")
        if not ptr:
            return None
        return tuple(int(v) for v in np.ctypeslib.as_array((ctypes.c_int64 * 2).from_address(ptr)))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        n = self.shapes["x"][0]
        if name == "x":
            return self.shapes["x"]
        if name == "y":
            return (n, 8, 16, 16)
        if name == "idx":
            return (-1,)  # data-dependent
        if name == "shape":
            return (2,)
        if name == "r":
            return self._shape_values() or (-1, -1)
        raise KeyError(name)

    def set_output_allocator(self, name: str, output_allocator: Any) -> bool:
        if name not in self.engine.model.outputs:
            return False
        self.allocators[name] = output_allocator
        return True

    def get_output_allocator(self, name: str) -> Any:
        return self.allocators.get(name)

    def set_input_consumed_event(self, event: int) -> bool:
        return True

    def is_stream_capturable(self, stream: int) -> bool:
        m = self.engine.model
        return m.stream_capturable and not m.dds and stream not in (0, 1, 2)  # never the legacy default stream

    def execute_async_v3(self, stream_handle: int) -> bool:
        from helpers.runtime import FAKE, _Op

        assert FAKE is not None, "install the fake CUDA runtime first"
        m = self.engine.model
        if m.scratch and (self.memory is None or self.memory[1] < m.scratch):
            return False  # USER_MANAGED without device memory: TensorRT reports an error
        if -1 in self.shapes["x"]:
            return False
        n = self.shapes["x"][0]
        x_ptr, y_ptr = self.addresses.get("x"), self.addresses.get("y")
        if not x_ptr or not y_ptr:
            return False
        count = n * 3 * 256

        def x() -> np.ndarray:
            return np.ctypeslib.as_array((ctypes.c_float * count).from_address(x_ptr)).reshape(n, 3, 16, 16)

        def kernel() -> None:
            y = np.ctypeslib.as_array((ctypes.c_float * (count * 8 // 3)).from_address(y_ptr))
            y[:] = np.concatenate([2 * x()] * 3, axis=1)[:, :8].reshape(-1)

        FAKE.enqueue(stream_handle, _Op(kernel))
        if m.dds:
            alloc = self.allocators.get("idx")
            if alloc is None and not self.addresses.get("idx"):
                return False
            FAKE.run_until(lambda: not FAKE.stream(stream_handle).queue)  # TensorRT syncs to learn the size
            found = np.flatnonzero(x().reshape(-1) > 0).astype(np.int64)
            size = m.ask or max(found.nbytes, 1)
            ptr = alloc.reallocate_output_async("idx", self.addresses.get("idx", 0), size, 256, stream_handle)
            if not ptr:
                return False
            FAKE.enqueue(stream_handle, _Op(lambda: ctypes.memmove(ptr, found.ctypes.data, found.nbytes)))
            alloc.notify_shape("idx", (int(found.size),))
        if m.shape_input:
            values = self._shape_values()
            r_ptr = self.addresses.get("r")
            if values is None or not r_ptr or int(np.prod(values)) != count:
                return False
            FAKE.enqueue(stream_handle, _Op(lambda: ctypes.memmove(r_ptr, x_ptr, count * 4)))
        self.executions += 1
        return True


class ICudaEngine:
    def __init__(self, model: Model, *, rtx: bool, env: str = "gpu-a") -> None:
        self.model, self.rtx, self.env = model, rtx, env

    @property
    def num_io_tensors(self) -> int:
        return len(self.model.inputs) + len(self.model.outputs)

    def get_tensor_name(self, index: int) -> str:
        return (self.model.inputs + self.model.outputs)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.model.inputs else TensorIOMode.OUTPUT

    def is_shape_inference_io(self, name: str) -> bool:
        return name == "shape"

    def get_tensor_location(self, name: str) -> TensorLocation:
        return TensorLocation.HOST if name == "shape" else TensorLocation.DEVICE

    @property
    def device_memory_size_v2(self) -> int:
        return self.model.scratch

    def create_runtime_config(self) -> IRuntimeConfig:
        return (RtxRuntimeConfig if self.rtx else IRuntimeConfig)(self.rtx, self.env)

    def create_execution_context(self, runtime_config: IRuntimeConfig) -> IExecutionContext:
        return IExecutionContext(self, runtime_config)


@dataclass
class FakeTrt:
    """The module: the enums and the trampoline base TrtEngine looks up by name."""

    rtx: bool
    module: types.SimpleNamespace = field(init=False)

    def __post_init__(self) -> None:
        names: dict[str, Any] = {
            "TensorLocation": TensorLocation, "IOutputAllocator": IOutputAllocator, "TensorIOMode": TensorIOMode,
            "ExecutionContextAllocationStrategy": ExecutionContextAllocationStrategy, "DataType": DataType,
            "__version__": "1.7.1.116" if self.rtx else "11.4.0.106",
        }
        if self.rtx:
            names |= {"CudaGraphStrategy": CudaGraphStrategy,
                      "DynamicShapesKernelSpecializationStrategy": DynamicShapesKernelSpecializationStrategy}
        self.module = types.SimpleNamespace(**names)


# Real class -> the fake's names of it that TrtEngine uses (checked against the real bindings).
FAKE_NAMES: dict[str, list[str]] = {
    "ICudaEngine": ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "is_shape_inference_io",
                    "get_tensor_location", "device_memory_size_v2", "create_runtime_config",
                    "create_execution_context"],
    "IExecutionContext": ["set_device_memory", "set_input_shape", "set_tensor_address", "get_tensor_address",
                          "get_tensor_shape", "set_output_allocator", "get_output_allocator",
                          "set_input_consumed_event", "execute_async_v3"],
    "IRuntimeConfig": ["set_execution_context_allocation_strategy", "get_execution_context_allocation_strategy"],
    "TensorLocation": ["DEVICE", "HOST"],
    "ExecutionContextAllocationStrategy": ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"],
}
RTX_ONLY_NAMES: dict[str, list[str]] = {
    "IExecutionContext": ["is_stream_capturable"],
    "IRuntimeConfig": ["create_runtime_cache", "set_runtime_cache", "get_runtime_cache", "cuda_graph_strategy",
                       "dynamic_shapes_kernel_specialization_strategy"],
    "IRuntimeCache": ["deserialize", "serialize", "reset"],
    "CudaGraphStrategy": ["DISABLED", "WHOLE_GRAPH_CAPTURE"],
    "DynamicShapesKernelSpecializationStrategy": ["LAZY", "EAGER", "NONE"],
}


class FakeTrtBackend(Backend):
    """Backend ``faketrt`` for runner-level contract tests: opens the real :class:`TrtEngine` over this
    fake (TensorRT-RTX flavour) with the artifact's plan; the model comes from :attr:`model`."""

    name = "faketrt"
    extra = "dev"
    module = "onnxruntime"
    builds_engine = True
    rank = 0
    devices = ("cuda",)
    model: ClassVar[Model] = Model()
    opened: ClassVar[list[Any]] = []

    @classmethod
    def can_execute_here(cls) -> bool:
        return True

    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Any = None) -> BuildInfo:
        raise NotImplementedError("the fake TensorRT opens hand-made artifacts only")

    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> CudaEngine:
        from trtflow.backends import _trt_common as common
        from trtflow.backends.tensorrt_rtx import FLAVOR

        fake = FakeTrt(rtx=True)
        engine = common.TrtEngine(fake.module, FLAVOR, object(), ICudaEngine(self.model, rtx=True),  # type: ignore[arg-type]
                                  common.LogSink(), object(), plan)
        FakeTrtBackend.opened.append(engine)
        return engine
