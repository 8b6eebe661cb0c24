"""Optional libraries: which pip extra installs each, and checks that run before any work starts.

A command that will need an optional library checks for it first (``require``), so a missing one is an
exit 3 naming the extra within a second, not after a build or a benchmark. Checks use
``importlib.util.find_spec`` and import nothing heavy.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from trtflow.errors import BackendMissing


@dataclass(frozen=True)
class Library:
    modules: tuple[str, ...]   # import names that must all be present
    dist: str                  # the package to install
    extra: str                 # trtflow's pip extra that installs it (the machine-kind extras include it too)


LIBRARIES: dict[str, Library] = {
    "onnxruntime": Library(("onnxruntime",), "onnxruntime", "ort"),
    "onnxconverter_common": Library(("onnxconverter_common",), "onnxconverter-common", "lower"),
    "matplotlib": Library(("matplotlib",), "matplotlib", "plot"),
    "tritonclient": Library(("tritonclient", "grpc", "google.protobuf"), "tritonclient[grpc]", "triton"),
    "tensorrt_rtx": Library(("tensorrt_rtx",), "tensorrt-rtx", "rtx"),
    "tensorrt": Library(("tensorrt",), "tensorrt", "trt"),
    "torch": Library(("torch", "onnx2torch"), "torch + onnx2torch", "torch"),
    "cuda": Library(("cuda.bindings",), "cuda-bindings", "cuda"),
}
# The extras per machine kind (pyproject.toml): the one to suggest for a CPU-only or a GPU machine.
MACHINE_EXTRAS = {"cpu": ("ort", "rtx", "lower", "plot", "triton"),
                  "gpu": ("ort", "rtx", "lower", "plot", "triton", "trt", "cuda")}


def _present(module: str) -> bool:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    # a bare folder (tensorrt-stubs' `tensorrt/`) imports as an empty namespace package: not installed
    return spec is not None and (spec.origin is not None or module.count(".") > 0)


def available(name: str) -> bool:
    return all(_present(m) for m in LIBRARIES[name].modules)


def install_hint(*extras: str) -> str:
    kinds = [k for k, inc in MACHINE_EXTRAS.items() if set(extras) <= set(inc)]
    alt = f" (or 'trtflow[{kinds[0]}]', everything a {kinds[0].upper()} machine can use)" if kinds else ""
    return f"pip install 'trtflow[{','.join(extras)}]'{alt}"


def require(needs: dict[str, str]) -> None:
    """Raise one :class:`BackendMissing` naming every missing library of ``needs`` ({library: what for})."""
    missing = [(LIBRARIES[name], why) for name, why in needs.items() if not available(name)]
    if not missing:
        return
    what = "; ".join(f"{why} needs {lib.dist}" for lib, why in missing)
    raise BackendMissing(f"{what}, which is not installed",
                         hint=install_hint(*dict.fromkeys(lib.extra for lib, _ in missing)))


def require_device(device: str) -> None:
    """``device`` (auto, cpu, cuda) is usable here: `--device cuda` without a GPU fails before any build."""
    from trtflow.errors import UsageError

    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {device!r}: one of auto, cpu, cuda")
    if device == "cuda":
        from trtflow.runtime import cuda

        if not cuda.cuda_available():
            raise BackendMissing("device='cuda' but no CUDA GPU is usable (cuda-bindings missing or no device)",
                                 hint="run on a GPU host, or use --device cpu")


def for_precision(precision: str) -> dict[str, str]:
    """What lowering to ``precision`` needs (fp16 uses onnxconverter-common; bf16 and fp32 nothing)."""
    return {"onnxconverter_common": f"precision {precision}"} if precision == "fp16" else {}


__all__ = ["LIBRARIES", "MACHINE_EXTRAS", "Library", "available", "for_precision", "install_hint", "require", "require_device"]
