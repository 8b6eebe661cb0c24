"""onnxruntime: runs the artifact's lowered ONNX model (no engine file); also the fp32 validation reference.

CPU engines write straight into the runner's preallocated output arrays through an IOBinding of
OrtValues that wrap those arrays, so results land in the runner's buffers without a copy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trtflow.backends.base import Backend, CpuEngine, CudaEngine, Progress, write_result
from trtflow.errors import BackendMissing, BuildError, InputError, ModelError
from trtflow.plan.model import BuildInfo, Plan

MODEL_FILE = "model.onnx"

# onnxruntime type strings -> plan dtype names
ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _ort() -> Any:
    OnnxRuntimeBackend.require()
    import onnxruntime

    return onnxruntime


def session_options(ort: Any, *, optimize: bool = True) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 4  # fatal only: every error reaches the caller as an exception
    return so  # intra-op threads: onnxruntime's default (one per physical core)


def _session(ort: Any, path: Path, providers: list[Any], *, optimize: bool = True) -> Any:
    try:
        return ort.InferenceSession(str(path), session_options(ort, optimize=optimize), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... classes
        text = str(exc).strip()
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "is not a registered" in text:
            raise BuildError(f"onnxruntime {ort.__version__} cannot run {path.name}: {text}",
                             hint="the model uses an op onnxruntime does not implement (a custom-domain op?): "
                             "replace it, or register a custom op library") from None
        raise BuildError(f"onnxruntime cannot load {path.name}: {text}",
                         hint="check the model with onnx.checker; re-export it if it is corrupt") from None


def reference_session(model_path: Path) -> Any:
    """An onnxruntime CPU session of the ORIGINAL model in fp32, for validation.

    Graph optimizations are off: the reference should compute the ONNX graph as written (no fusions
    that reorder float math). onnxruntime's CPU provider has no TF32, so fp32 math stays fp32.
    """
    ort = _ort()
    if not Path(model_path).is_file():
        raise ModelError(f"reference model not found: {model_path}")
    return _session(ort, Path(model_path), ["CPUExecutionProvider"], optimize=False)


def run_model(model: Any, feeds_list: list[dict[str, np.ndarray]], outputs: list[str]) -> list[list[np.ndarray]]:
    """Run an in-memory ONNX model (a ``ModelProto``) on onnxruntime CPU, graph optimizations off, once
    per feed dict; returns ``outputs`` per run. For build-time analysis (the fp16 calibration run)."""
    ort = _ort()
    try:
        sess = ort.InferenceSession(model.SerializeToString(), session_options(ort, optimize=False),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... classes
        raise BuildError(f"onnxruntime cannot load the model: {str(exc).strip()}") from None
    try:
        return [list(sess.run(outputs, feeds)) for feeds in feeds_list]
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"onnxruntime cannot run the model: {str(exc).strip()}") from None


def _io(sess: Any) -> list[dict[str, Any]]:
    out = []
    for mode, args in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        for a in args:
            out.append({"name": a.name, "mode": mode, "dtype": ORT_DTYPES.get(a.type, a.type),
                        "shape": [d if isinstance(d, int) else -1 for d in a.shape]})
    return out


def _check_io(io: list[dict[str, Any]], plan: Plan, where: str, error: type[Exception]) -> None:
    got = {t["name"]: t["dtype"] for t in io}
    want = {t.name: t.dtype for t in plan.tensors}
    if got != want:
        raise error(f"{where}: the model's I/O {got} is not the plan's {want}")


class OrtCpuEngine(CpuEngine):
    """Runs the lowered model on onnxruntime's CPU provider, writing into the caller's output arrays."""

    def __init__(self, sess: Any, plan: Plan) -> None:
        import onnxruntime as ort

        self._ort = ort
        self._sess: Any = sess
        self.plan = plan
        self._inputs = [t.name for t in plan.inputs]
        self._out_names = [o.name for o in sess.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        if self._sess is None:
            from trtflow.errors import RunnerClosed

            raise RunnerClosed("onnxruntime engine used after close()")
        binding = self._sess.io_binding()
        for name in self._inputs:
            if name not in feeds:
                raise InputError(f"missing input {name!r}")
            binding.bind_cpu_input(name, np.require(feeds[name], requirements="C"))
        copies: list[str] = []
        for t in self.plan.outputs:
            arr = outputs[t.name]
            try:
                # The OrtValue wraps ``arr``'s memory: onnxruntime writes the result there. Outputs of
                # data-dependent shape (``arr`` is an upper bound) are allocated by onnxruntime instead.
                if t.shape_after_run or not arr.flags.c_contiguous:
                    raise ValueError("not a buffer of the result's shape")
                binding.bind_ortvalue_output(t.name, self._ort.OrtValue.ortvalue_from_numpy(arr))
            except Exception:  # noqa: BLE001 - dtypes OrtValue cannot wrap (ml_dtypes bfloat16): copy below
                binding.bind_output(t.name, "cpu")
                copies.append(t.name)
        try:
            self._sess.run_with_iobinding(binding)
        except Exception as exc:
            text = str(exc).strip()
            if "invalid dimensions" in text or "Got invalid dimensions" in text or "shape" in text.lower():
                raise InputError(f"onnxruntime: {text}",
                                 hint="input and output arrays must have the shapes of this inference") from None
            raise
        shapes = {name: tuple(outputs[name].shape) for name in outputs}
        if copies:
            results = dict(zip(self._out_names, binding.copy_outputs_to_cpu()))
            for name in copies:
                src = np.asarray(results[name])
                shapes[name] = write_result(name, outputs[name], src, exact=not self.plan.tensor(name).shape_after_run)
        return shapes

    def close(self) -> None:
        self._sess = None


class OrtCudaEngine(CudaEngine):
    """Runs the lowered model on onnxruntime's CUDA provider with device addresses bound by the runtime.

    onnxruntime runs on the stream it was created with, so the session is created at the first
    :meth:`enqueue` with that stream (``user_compute_stream``) and recreated if the stream changes.
    ``run_with_iobinding`` returns when the work is done: this engine blocks and cannot be captured.
    Outputs must have static shapes (the engine is not told output shapes); dynamic plans run on the CPU.
    """

    def __init__(self, ort: Any, path: Path, plan: Plan) -> None:
        self._ort, self._path, self.plan = ort, path, plan
        self._sess: Any = None
        self._stream: int | None = None
        self._shapes = {t.name: tuple(t.shape) for t in plan.inputs}
        self._ptrs: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        self._shapes[name] = tuple(int(d) for d in shape)

    def set_address(self, name: str, ptr: int) -> None:
        self._ptrs[name] = int(ptr)

    def enqueue(self, stream: int) -> None:
        if self._sess is None or self._stream != int(stream):
            opts = {"device_id": 0, "user_compute_stream": str(int(stream)), "has_user_compute_stream": "1"}
            self._sess = _session(self._ort, self._path, [("CUDAExecutionProvider", opts)])
            self._stream = int(stream)
        binding = self._sess.io_binding()
        for t in self.plan.tensors:
            if t.name not in self._ptrs:
                raise InputError(f"no device address set for {t.role} {t.name!r}")
            shape = self._shapes[t.name] if t.role == "input" else t.shape
            bind = binding.bind_input if t.role == "input" else binding.bind_output
            bind(t.name, "cuda", 0, np.dtype(t.dtype), list(shape), self._ptrs[t.name])
        self._sess.run_with_iobinding(binding)

    def close(self) -> None:
        self._sess = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    extra = "ort"
    module = "onnxruntime"
    builds_engine = False
    rank = 10

    def build(self, onnx_path: Path, plan: Plan, out_dir: Path, *, progress: Progress | None = None) -> BuildInfo:
        """Nothing to compile: check that the lowered model loads and matches the plan."""
        ort = _ort()
        t0 = time.perf_counter()
        if progress is not None:
            progress("load session", 0, 1)
        sess = _session(ort, onnx_path, ["CPUExecutionProvider"])
        io = _io(sess)
        _check_io(io, plan, onnx_path.name, BuildError)
        if progress is not None:
            progress("load session", 1, 1)
        details = {
            "library": "onnxruntime", "library_version": ort.__version__,
            "providers": sess.get_providers(), "provider_options": sess.get_provider_options(),
            "available_providers": ort.get_available_providers(),
            "graph_optimization_level": "ORT_ENABLE_ALL", "io": io,
        }
        return BuildInfo(backend=self.name, engine_file=None, library_version=ort.__version__,
                         seconds=time.perf_counter() - t0, details=details)

    def open(self, artifact_dir: Path, plan: Plan, *, device: Literal["cpu", "cuda"],
             allow_host_code: bool = False) -> CudaEngine | CpuEngine:
        ort = _ort()
        path = artifact_dir / MODEL_FILE
        if not path.is_file():
            from trtflow.errors import ArtifactError

            raise ArtifactError(f"{artifact_dir} has no {MODEL_FILE}", hint="rebuild: trtflow build <recipe>")
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendMissing("this onnxruntime has no CUDAExecutionProvider "
                                     f"(has {', '.join(ort.get_available_providers())})",
                                     hint="pip install onnxruntime-gpu, or open with device='cpu'")
            if any(t.dynamic for t in plan.tensors):
                raise BackendMissing("the onnxruntime CUDA engine needs static shapes; this plan has dynamic ones",
                                     hint="open with device='cpu', or use backend torch on the GPU")
            return OrtCudaEngine(ort, path, plan)
        sess = _session(ort, path, ["CPUExecutionProvider"])
        from trtflow.errors import ArtifactError

        _check_io(_io(sess), plan, str(path), ArtifactError)
        return OrtCpuEngine(sess, plan)
