"""Full TensorRT backend: cannot be installed on this project's machines, so it is checked two ways.

1. Type-checked against stubs generated from NVIDIA's own bindings (scripts/trt_stubs.py, committed in
   typings/): mypy verifies every TensorRT call in ``tensorrt.py`` and ``_trt_common.py`` against
   TensorRT 10.12 (the oldest supported) and against 11.4, where names such as
   ``ICudaEngine.device_memory_size`` are gone. ``make typecheck`` runs both; these tests pin that the
   check is real (it flags misuse) and that it fails, not passes silently, without the stubs.
2. The code is shared with TensorRT-RTX, whose builder runs here for real (tests/test_backend_rtx.py).
A real build/open test runs only where ``tensorrt`` is installed.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trtflow.errors import ArtifactError, BuildError

ROOT = Path(__file__).resolve().parents[1]
TYPINGS = ROOT / "typings"
BACKEND = ["trtflow/backends/tensorrt.py", "trtflow/backends/_trt_common.py"]

needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")


def _mypy(tmp_path: Path, files: list[str], stubs: str | None) -> subprocess.CompletedProcess[str]:
    """mypy with the project's settings, the TensorRT stubs of ``stubs`` (a typings/ folder, or None)."""
    cfg = tmp_path / f"mypy-{stubs}.ini"
    path = f"{TYPINGS / stubs}:{TYPINGS / 'tensorrt_rtx'}" if stubs else str(tmp_path / "empty")
    (tmp_path / "empty").mkdir(exist_ok=True)
    cfg.write_text(f"""[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
mypy_path = {path}
cache_dir = {tmp_path / ("cache-" + str(stubs))}
[mypy-tensorrt,tensorrt_rtx]
ignore_missing_imports = False
ignore_errors = True
""")
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(cfg), *files],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a few seconds per mypy run; `make typecheck` (CI) runs the passing check itself
@needs_mypy
def test_stub_typecheck_catches_misuse_and_names_removed_in_11(tmp_path: Path) -> None:
    """The setup of `make typecheck` flags wrong TensorRT calls against both stubs, so its pass means the
    stubs were used; and 10.x-only names pass against 10.12 but fail against 11.4."""
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorrt\n"
                   "from trtflow.backends import _trt_common\n"
                   "b = tensorrt.Builder(tensorrt.Logger())\n"
                   "b.create_network_v2(0)\n"
                   "cfg = b.create_builder_config()\n"
                   "cfg.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE, 'big')\n"
                   "_trt_common.make_logger(object())\n"
                   "def scratch(e: tensorrt.ICudaEngine, c: tensorrt.IExecutionContext) -> int:\n"
                   "    return int(e.device_memory_size) + int(c.all_shape_inputs_specified)\n")
    removed = ('has no attribute "device_memory_size"', 'has no attribute "all_shape_inputs_specified"')
    for stubs in ("tensorrt-10.12", "tensorrt-11.4"):
        res = _mypy(tmp_path, [str(bad)], stubs)
        assert res.returncode == 1
        assert 'has no attribute "create_network_v2"' in res.stdout
        assert "set_memory_pool_limit" in res.stdout
        assert 'expected "TrtModule"' in res.stdout
        assert all((r in res.stdout) == (stubs == "tensorrt-11.4") for r in removed), res.stdout


@pytest.mark.slow
@needs_mypy
def test_typecheck_fails_without_the_stubs(tmp_path: Path) -> None:
    """Missing stubs are an error (tensorrt is never silently Any), in mypy and in `make typecheck`."""
    res = _mypy(tmp_path, BACKEND, None)
    assert res.returncode == 1
    assert re.search(r'error: (Cannot find implementation or library stub for module named|Skipping analyzing) '
                     r'"tensorrt"', res.stdout), res.stdout
    make = subprocess.run(["make", "-s", "-o", ".venv/bin/trtflow", "typecheck", "TRT_STUBS=typings/none/__init__.pyi"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert make.returncode != 0 and "typings/none/__init__.pyi is missing" in make.stderr


def test_committed_rtx_stub_matches_the_installed_module(tmp_path: Path) -> None:
    """typings/tensorrt_rtx is what scripts/trt_stubs.py makes from the installed tensorrt_rtx (not stale)."""
    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("tensorrt_rtx is not installed")
    import tensorrt_rtx
    from helpers import scripts

    trt_stubs = scripts.load("trt_stubs")
    out = trt_stubs.write_stub(tensorrt_rtx, tensorrt_rtx.__version__, tmp_path / "s.pyi", module_name="tensorrt_rtx")
    assert out.read_text() == (TYPINGS / "tensorrt_rtx" / "tensorrt_rtx" / "__init__.pyi").read_text()
    for stubs in ("tensorrt-10.12", "tensorrt-11.4"):
        text = (TYPINGS / stubs / "tensorrt" / "__init__.pyi").read_text()
        assert f"__version__: str  # {stubs.split('-')[1]}." in text


def test_tensorrt_not_available_when_only_stubs_are_installed() -> None:
    """tensorrt-stubs installs a bare ``tensorrt/`` folder that imports as an empty namespace package."""
    from trtflow.backends.tensorrt import TensorRTBackend

    real = _full_tensorrt_installed()
    assert TensorRTBackend.available() is real
    if not real:
        assert not TensorRTBackend.can_execute_here()



def test_tensorrt_flavor_refuses_rtx_only_settings() -> None:
    from trtflow.backends import _trt_common as common
    from trtflow.backends.tensorrt import FLAVOR
    from trtflow.plan.model import BuildPlan

    with pytest.raises(BuildError, match="compute_capabilities applies to TensorRT-RTX") as exc:
        common._check_settings(FLAVOR, BuildPlan(compute_capabilities=("8.6",)))
    assert "ampere_plus" in (exc.value.hint or "")
    assert common._check_settings(FLAVOR, BuildPlan(hardware_compatibility="ampere_plus", version_compatible=True,
                                                    timing_cache="t.cache")) == []


def test_tensorrt_header_check_on_synthetic_plans(tmp_path: Path) -> None:
    """Header rules for full TensorRT: magic 'ftrt', version in bytes 24..26 (NVIDIA/TensorRT#3073)."""
    from trtflow.backends import _trt_common as common
    from trtflow.backends.tensorrt import FLAVOR

    path = tmp_path / "engine.plan"
    plan = bytearray(b"ftrt" + bytes(200))
    plan[24:28] = bytes([10, 13, 0, 35])
    kw = {"path": path}
    assert common.check_plan_header(FLAVOR, bytes(plan), "10.13.0.35", version_compatible=False, **kw).version
    with pytest.raises(ArtifactError, match="built by TensorRT 10.13.0.35; this is 10.14.1.48"):
        common.check_plan_header(FLAVOR, bytes(plan), "10.14.1.48", version_compatible=False, **kw)
    # version-compatible plans are meant to load in a newer TensorRT
    common.check_plan_header(FLAVOR, bytes(plan), "10.14.1.48", version_compatible=True, **kw)
    with pytest.raises(ArtifactError, match="built by TensorRT-RTX"):
        common.check_plan_header(FLAVOR, b"vtrt" + bytes(plan[4:]), "10.13.0.35", version_compatible=False, **kw)
    # unknown first bytes: the full-TensorRT header layout is not verified here, deserialization decides
    assert common.check_plan_header(FLAVOR, b"xxxx" + bytes(200), "10.13.0.35", version_compatible=False,
                                    **kw).library is None


def _full_tensorrt_installed() -> bool:
    spec = importlib.util.find_spec("tensorrt")
    return spec is not None and spec.origin is not None  # the stubs' bare folder has no origin


@pytest.mark.skipif(not _full_tensorrt_installed(),
                    reason="full TensorRT is not installable on this machine; the code path is shared "
                    "with tensorrt_rtx which is tested for real")
def test_tensorrt_builds_conv_bn_relu_for_real(tmp_path: Path) -> None:
    import tensorrt
    from helpers.models import conv_bn_relu, plan_for

    from trtflow.backends.tensorrt import TensorRTBackend

    model = conv_bn_relu(tmp_path / "m.onnx")
    plan = plan_for(tmp_path, "m.onnx", "build: {timing_cache: t.cache}\n")
    out = tmp_path / "art"
    out.mkdir()
    info = TensorRTBackend().build(model, plan, out)
    assert (out / "engine.plan").stat().st_size > 1000
    assert info.library_version == tensorrt.__version__ and (tmp_path / "t.cache").is_file()
    assert {t["name"]: t["dtype"] for t in info.details["io"]} == {"x": "float32", "y": "float32"}
    if TensorRTBackend.can_execute_here():
        engine = TensorRTBackend().open(out, plan, device="cuda")
        assert engine.scratch_size >= 0 and '"Layers"' in engine.inspect()
        engine.close()
