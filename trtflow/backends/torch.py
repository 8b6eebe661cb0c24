"""torch: runs the artifact's lowered ONNX model converted with onnx2torch (no engine file).

The GPU engine available where TensorRT is not: ``open(device="cuda")`` converts the model, moves it
to the GPU and runs it on the runner's own stream (``torch.cuda.ExternalStream``) over the runner's
own buffers: raw device addresses become torch tensors without a copy (``__cuda_array_interface__``).
Results are copied (device to device) into the bound output buffers, because torch allocates its
outputs itself. Precision is a property of the graph: an fp16 graph runs in fp16 as is. TF32 follows
``plan.tf32`` (torch turns it on for convolutions by default; that is a process-wide setting).

TensorRT I/O formats (hwc8, chw32...) are emulated on the device: the bound buffers hold the packed
layout, exactly as a TensorRT engine would read and write them.

CUDA graphs are captured through ``torch.cuda.graph`` (a private memory pool keeps the intermediate
tensors alive for replays). onnx2torch's Resize, TopK and Reshape read their sizes/k/shape on the host
every call (a device->host sync: no capture, no pipelining overlap); where those are constants of the
graph (the ``fold_shapes`` pass makes exported shape chains constants) :func:`make_static` swaps the
modules for sync-free ones at open time. One left reading device data makes the first capture fail:
:attr:`TorchCudaEngine.capturable` turns False and the runner runs eagerly.
"""

from __future__ import annotations

import importlib.util
import math
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trtflow.backends.base import Backend, CpuEngine, CudaEngine, Progress, write_result
from trtflow.errors import ArtifactError, BackendMissing, BuildError, InputError, RunnerClosed
from trtflow.plan.formats import FORMATS, ITEMSIZE, channel_dim, physical_shape
from trtflow.plan.model import BuildInfo, Plan, TensorPlan

MODEL_FILE = "model.onnx"
_OP = re.compile(r"operation_type='([^']+)'")
_OTHERS = "backend onnxruntime (CPU) and tensorrt/tensorrt_rtx implement it: build with --backend onnxruntime or tensorrt_rtx"


def _torch() -> Any:
    TorchBackend.require()
    import torch

    return torch


def _convert(path: Path) -> Any:
    """onnx2torch conversion (plus our converters, :mod:`trtflow.backends._torch_ops`); an op nothing
    converts becomes one BuildError naming every such op and the backends that run them."""
    if importlib.util.find_spec("onnx2torch") is None:
        raise BackendMissing("backend 'torch' needs onnx2torch, which is not installed", hint="pip install 'trtflow[torch]'")
    import onnx

    from trtflow.backends import _torch_ops

    convert = _torch_ops.load()
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own classes
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})", hint="rebuild the artifact") from None
    missing = _torch_ops.missing_ops(model)
    if missing:
        raise BuildError(f"the torch engine cannot run {path.name}: onnx2torch has no converter for "
                         f"{', '.join(missing)} (nor does trtflow)", hint=_OTHERS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = convert(model)
    except NotImplementedError as exc:
        text = str(exc)
        m = _OP.search(text)
        what = f"the op {m.group(1)!r}" if m else "an op"
        raise BuildError(f"the torch engine cannot run {what} of {path.name}: {text}", hint=_OTHERS) from None
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises plain exceptions for unsupported graphs
        raise BuildError(f"onnx2torch cannot convert {path.name}: {type(exc).__name__}: {exc}", hint=_OTHERS) from None
    _static("split_outputs", module, model)  # one tensor per graph output (TopK's values and indices apart)
    return module


def _static(fn: str, *args: Any) -> Any:
    """``trtflow.backends._torch_static.<fn>(*args)``; None where the installed onnx2torch is not one
    its stand-ins know (the model then runs as converted, with its host syncs)."""
    from trtflow.backends import _torch_static

    try:
        return getattr(_torch_static, fn)(*args)
    except ImportError as exc:
        warnings.warn(f"onnx2torch module left as converted ({fn} unavailable): {exc}", RuntimeWarning, stacklevel=2)
        return None


def _io_order(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def _torch_dtype(torch: Any, name: str) -> Any:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
            "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}[name]


def _set_tf32(torch: Any, on: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


# -- TensorRT I/O formats, emulated with torch ops (mirrors trtflow.plan.formats.pack/unpack) -------
def _pack(torch: Any, x: Any, fmt: str) -> Any:
    rule = FORMATS[fmt]
    if rule.kind == "linear":
        return x
    c = channel_dim(x.dim(), fmt)
    moved = torch.movedim(x, c, -1)
    if rule.kind == "channel_last":
        return moved
    ch = x.shape[c]
    groups = math.ceil(ch / rule.vector)
    pad = groups * rule.vector - ch
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    if rule.kind == "vector_minor":
        return moved
    split = moved.reshape(*moved.shape[:-1], groups, rule.vector)
    return torch.movedim(split, -2, c)


def _unpack(torch: Any, phys: Any, shape: tuple[int, ...], fmt: str) -> Any:
    rule = FORMATS[fmt]
    if rule.kind == "linear":
        return phys
    c = channel_dim(len(shape), fmt)
    moved = phys
    if rule.kind == "vector_major":
        moved = torch.movedim(phys, c, -2)
        moved = moved.reshape(*moved.shape[:-2], -1)
    return torch.movedim(moved[..., :shape[c]], -1, c).contiguous()


class _RawCuda:
    """A device address as ``__cuda_array_interface__`` bytes, so torch can wrap it without a copy."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "strides": None, "version": 3, "stream": None}


class _TorchGraph:
    """A torch-captured graph. Replays through its raw cudaGraphExec_t where torch exposes it: a plain
    cudaGraphLaunch costs a few us, ``with torch.cuda.stream(s): graph.replay()`` ~30 us (measured on the
    H100). torch's replay also advances the RNG offset, which only graphs with random ops need."""

    def __init__(self, torch: Any, graph: Any, stream: Any) -> None:
        self._torch, self._graph, self._stream = torch, graph, stream
        self._exec: int | None = None
        raw = getattr(graph, "raw_cuda_graph_exec", None)
        if callable(raw):
            try:
                self._exec = int(raw())
            except Exception:  # noqa: BLE001 - older torch or no handle: replay() below
                self._exec = None

    def launch(self, stream: int) -> None:
        if self._exec:
            from trtflow.runtime import cuda

            try:
                cuda.graph_launch(self._exec, stream=stream)
                return
            except Exception:  # noqa: BLE001 - a handle the bindings refuse: replay from now on
                self._exec = None
        with self._torch.cuda.stream(self._stream):
            self._graph.replay()

    def close(self) -> None:
        if self._graph is not None:
            self._graph.reset()
            self._graph = None


class TorchCudaEngine(CudaEngine):
    """The converted module on the GPU, computing over the runner's buffers on the runner's stream.

    Output shapes are known only after running (:meth:`reported_shape`, for every output): each result
    is written at its own shape into the front of the runner's max-shape buffer. A graph captured
    through :meth:`capture_graph` owns its memory pool and every tensor it replays, so graphs of other
    input shapes stay valid (``graphs_outlive_shape_changes``).
    """

    graphs_outlive_shape_changes = True

    def __init__(self, torch: Any, module: Any, plan: Plan, order: tuple[list[str], list[str]],
                 device: Any = None) -> None:
        self._torch = torch
        self._module: Any = module
        self.plan = plan
        self._device = device if device is not None else torch.device("cuda", torch.cuda.current_device())
        self._in_order, self._out_order = order
        missing = (set(self._in_order) | set(self._out_order)) ^ {t.name for t in plan.tensors}
        if missing:
            raise ArtifactError(f"model.onnx I/O {sorted(self._in_order + self._out_order)} is not the plan's "
                                f"{[t.name for t in plan.tensors]}", hint="rebuild the artifact")
        self._ptrs: dict[str, int] = {}
        self._tensor_plans: dict[str, TensorPlan] = {t.name: t for t in plan.tensors}
        self._shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.shape) for t in plan.inputs}
        self._max_bytes: dict[str, int] = {t.name: int(t.max_bytes) for t in plan.outputs}
        self._reported: dict[str, tuple[int, ...]] = {}  # output shapes of the last enqueue
        self._views: dict[tuple[str, int, tuple[int, ...]], Any] = {}
        self._streams: dict[int, Any] = {}
        self._capturable = True
        self.static_modules: dict[str, int] = {}  # onnx2torch modules made sync-free at open, by op

    def _live(self) -> Any:
        if self._module is None:
            raise RunnerClosed("torch engine used after close()")
        return self._module

    # -- Engine protocol --------------------------------------------------------------------------------
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        self._shapes[name] = tuple(int(d) for d in shape)

    def set_address(self, name: str, ptr: int) -> None:
        self._ptrs[name] = int(ptr)

    @property
    def capturable(self) -> bool:
        return self._capturable

    def reported_shape(self, name: str) -> tuple[int, ...] | None:
        return self._reported.get(name)

    def _stream(self, handle: int) -> Any:
        s = self._streams.get(handle)
        if s is None:
            s = self._streams[handle] = self._torch.cuda.ExternalStream(handle, device=self._device)
        return s

    def _view(self, t: TensorPlan, shape: tuple[int, ...]) -> Any:
        """The bound buffer of ``t`` at ``shape`` as a torch tensor in its engine (physical) layout, zero-copy."""
        if t.name not in self._ptrs:
            raise InputError(f"no device address set for {t.role} {t.name!r}")
        ptr, phys = self._ptrs[t.name], physical_shape(shape, t.format)
        key = (t.name, ptr, phys)
        v = self._views.get(key)
        if v is None:
            torch = self._torch
            nbytes = math.prod(phys) * ITEMSIZE[t.dtype]
            raw = torch.as_tensor(_RawCuda(ptr, nbytes), device=self._device)
            v = raw.view(_torch_dtype(torch, t.dtype)).view(phys)
            if len(self._views) > 64:
                self._views.clear()
            self._views[key] = v
        return v

    def enqueue(self, stream: int) -> None:
        torch, module = self._torch, self._live()
        tensors = self._tensor_plans
        with torch.cuda.stream(self._stream(int(stream))), torch.inference_mode():
            args = []
            for name in self._in_order:
                t = tensors[name]
                shape = self._shapes[name]
                args.append(_unpack(torch, self._view(t, shape), shape, t.format))
            result = module(*args)
            outs = result if isinstance(result, (tuple, list)) else (result,)
            for name, res in zip(self._out_order, outs):
                t = tensors[name]
                shape = tuple(int(d) for d in res.shape)
                if math.prod(physical_shape(shape, t.format)) * ITEMSIZE[t.dtype] > self._max_bytes[name]:
                    raise ArtifactError(f"output {name!r}: the model produced shape {list(shape)}, larger than "
                                        f"the runner's buffer ({list(t.max_shape)})",
                                        hint="the plan's output shapes disagree with the model: rebuild")
                self._reported[name] = shape
                self._view(t, shape).copy_(_pack(torch, res, t.format))  # D2D into the runner's buffer

    def capture_graph(self, stream: int, body: Callable[[], None]) -> _TorchGraph:
        """Capture ``body`` (copies + :meth:`enqueue`) on ``stream`` with torch's graph machinery."""
        from trtflow.runtime.graphs import GraphCaptureFailed

        torch = self._torch
        s = self._stream(int(stream))
        graph = torch.cuda.CUDAGraph()
        previous = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, stream=s, capture_error_mode="thread_local"):
                body()
        except Exception as exc:
            self._capturable = False
            torch.cuda.set_stream(previous)
            with_reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraphCaptureFailed(f"torch graph capture failed ({type(exc).__name__}: {with_reason})",
                                     hint="an op reads device data on the host (onnx2torch's Resize/TopK/Reshape do where their "
                                          "sizes/k/shape are computed at run time)") from exc
        return _TorchGraph(torch, graph, s)

    def close(self) -> None:
        if self._module is None:
            return
        self._module = None
        self._views.clear()
        self._streams.clear()
        # torch keeps a cuBLAS workspace per (handle, stream) and freed blocks per stream; every runner has
        # its own streams, so without this a create/close loop grows device memory each cycle (~27-34 MiB
        # per cycle measured on the H100, most of it the workspace). Both are re-created lazily when needed.
        clear_workspaces = getattr(self._torch._C, "_cuda_clearCublasWorkspaces", None)
        if callable(clear_workspaces):
            clear_workspaces()
        self._torch.cuda.empty_cache()


class TorchCpuEngine(CpuEngine):
    """The converted module on the CPU, over host arrays (tests and CPU-only machines)."""

    def __init__(self, torch: Any, module: Any, plan: Plan, order: tuple[list[str], list[str]]) -> None:
        self._torch, self._module, self.plan = torch, module, plan
        self._in_order, self._out_order = order
        self.static_modules: dict[str, int] = {}  # onnx2torch modules made sync-free at open, by op

    def infer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        if self._module is None:
            raise RunnerClosed("torch engine used after close()")
        torch = self._torch
        with torch.inference_mode():
            result = self._module(*(torch.from_numpy(np.require(feeds[n], requirements="C")) for n in self._in_order))
        outs = result if isinstance(result, (tuple, list)) else (result,)
        shapes: dict[str, tuple[int, ...]] = {}
        for name, res in zip(self._out_order, outs):
            dst = outputs[name]
            if tuple(res.shape) == dst.shape:
                torch.from_numpy(dst).copy_(res)
                shapes[name] = dst.shape
            else:
                shapes[name] = write_result(name, dst, res.numpy(), exact=not self.plan.tensor(name).shape_after_run)
        return shapes

    def close(self) -> None:
        self._module = None


class TorchBackend(Backend):
    name = "torch"
    extra = "torch"
    module = "torch"
    builds_engine = False
    rank = 20
    devices = ("cuda", "cpu")

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("onnx2torch") is not None

    @classmethod
    def require(cls) -> None:
        if not cls.available():
            raise BackendMissing("backend 'torch' needs torch and onnx2torch, which are not both installed",
                                 hint="pip install 'trtflow[torch]'")

    @classmethod
    def can_execute_here(cls) -> bool:
        if not cls.available():
            return False
        try:
            import torch

            return bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - a broken CUDA install answers like "no GPU"
            return False

    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Progress | None = None) -> BuildInfo:
        """Nothing to compile: check that onnx2torch converts the lowered model (writes no file)."""
        torch = _torch()
        t0 = time.perf_counter()
        if progress is not None:
            progress("convert", 0, 1)
        _convert(onnx_path)
        if progress is not None:
            progress("convert", 1, 1)
        import onnx2torch

        version = str(getattr(onnx2torch, "__version__", "unknown"))
        return BuildInfo(backend=self.name, engine_file=None, library_version=str(torch.__version__),
                         seconds=time.perf_counter() - t0, details={"onnx2torch": version})

    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> CudaEngine | CpuEngine:
        torch = _torch()
        path = Path(artifact_dir) / MODEL_FILE
        if not path.is_file():
            raise ArtifactError(f"{artifact_dir} has no {MODEL_FILE}", hint="rebuild: trtflow build <recipe>")
        order = _io_order(path)
        module = _convert(path).eval()
        static = dict(_static("make_static", module) or {})  # on the CPU, before .to(): reading costs no sync
        engine: TorchCudaEngine | TorchCpuEngine
        if device == "cuda":
            if not torch.cuda.is_available():
                raise BackendMissing("torch sees no CUDA GPU", hint="open with device='cpu'")
            _set_tf32(torch, bool(plan.tf32))
            # the runner made its device current (Runner(device_index=i)): the module lives there
            dev = torch.device("cuda", torch.cuda.current_device())
            engine = TorchCudaEngine(torch, module.to(dev), plan, order, dev)
        else:
            engine = TorchCpuEngine(torch, module, plan, order)
        engine.static_modules = static
        return engine
