"""Full TensorRT backend: cannot be installed on this project's machines, so it is checked two ways.

1. Type-checked against the ``tensorrt-stubs`` package (10.13): mypy verifies every TensorRT call in
   ``tensorrt.py`` and ``_trt_common.py``. The stubs as shipped are not PEP 561 compliant (a bare
   ``tensorrt/__init__.pyi``, no ``-stubs`` folder) and have a few syntax errors, so mypy silently
   ignores them; :func:`write_typings` makes a fixed copy and mypy is pointed at it (``mypy_path``).
   Run ``python tests/test_backend_trt.py typings`` to write that copy for a project-wide mypy run.
2. The code is shared with TensorRT-RTX, whose builder runs here for real (tests/test_backend_rtx.py).
A real build/open test runs only where ``tensorrt`` is installed.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from trtflow.errors import ArtifactError, BuildError

ROOT = Path(__file__).resolve().parents[1]
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")


def _stubs_dir() -> Path | None:
    site = Path(sysconfig.get_paths()["purelib"])
    return site if all((site / p / "__init__.pyi").is_file() for p in STUB_PACKAGES) else None


def _split_params(text: str) -> list[str]:
    depth, cur, parts = 0, "", []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _fix_def(line: str) -> str:
    """Repair the two kinds of broken ``def`` lines in tensorrt-stubs 10.13: a parameter named ``in``
    and a parameter without default after ones with defaults."""
    try:
        ast.parse(line.strip() + "\n    ...")
        return line
    except SyntaxError:
        pass
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:\s*)$", line)
    if not m:
        return line
    fixed, defaulted = [], False
    for p in (p.strip() for p in _split_params(m.group(2))):
        p = re.sub(r"^(in|from|is|not|and|or|lambda)(\s*:)", r"\1_\2", p)
        if "=" in p:
            defaulted = True
        elif defaulted and not p.startswith("*") and p != "/":
            p += " = ..."
        fixed.append(p)
    return m.group(1) + ", ".join(fixed) + m.group(3)


def write_typings(out: Path) -> Path:
    """Copy the tensorrt stubs into ``out`` with their syntax errors repaired; return ``out``."""
    site = _stubs_dir()
    if site is None:
        raise FileNotFoundError("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    for pkg in STUB_PACKAGES:
        shutil.rmtree(out / pkg, ignore_errors=True)
        (out / pkg).mkdir(parents=True)
        for f in sorted((site / pkg).glob("*.pyi")):
            text = "\n".join(_fix_def(line) for line in f.read_text().split("\n"))
            ast.parse(text)  # the copy must be valid Python
            (out / pkg / f.name).write_text(text)
    return out


@pytest.fixture(scope="module")
def mypy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixed stubs and one mypy cache shared by the mypy runs of this module."""
    tmp = tmp_path_factory.mktemp("mypy")
    write_typings(tmp / "typings")
    return tmp


def _mypy(tmp_path: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    typings = tmp_path / "typings"
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(f"""[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
mypy_path = {typings}
cache_dir = {tmp_path / "cache"}
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
""")
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(cfg), *files],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)


needs_mypy_and_stubs = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None or _stubs_dir() is None,
    reason="mypy or tensorrt-stubs missing (pip install mypy; pip install --no-deps tensorrt-stubs)")


@pytest.mark.slow  # mypy reads the 500 KB stubs: about 10 s
@needs_mypy_and_stubs
def test_tensorrt_backend_typechecks_against_stubs(mypy_dir: Path) -> None:
    res = _mypy(mypy_dir, ["trtflow/backends/tensorrt.py", "trtflow/backends/_trt_common.py"])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
@needs_mypy_and_stubs
def test_stub_typecheck_catches_tensorrt_api_misuse(mypy_dir: Path) -> None:
    """Control: the same setup flags a wrong TensorRT call, so a pass above means the stubs were used."""
    bad = mypy_dir / "bad.py"
    bad.write_text("import tensorrt\n"
                   "from trtflow.backends import _trt_common\n"
                   "b = tensorrt.Builder(tensorrt.Logger())\n"
                   "b.create_network_v2(0)\n"
                   "cfg = b.create_builder_config()\n"
                   "cfg.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE, 'big')\n"
                   "_trt_common.make_logger(object())\n")
    res = _mypy(mypy_dir, [str(bad)])
    assert res.returncode == 1
    assert 'has no attribute "create_network_v2"' in res.stdout
    assert "set_memory_pool_limit" in res.stdout
    assert 'expected "TrtModule"' in res.stdout


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

    with pytest.raises(BuildError, match="compute_capabilities applies to TensorRT-RTX") as exc:
        common._check_settings(FLAVOR, {"compute_capabilities": ["8.6"]})
    assert "ampere_plus" in (exc.value.hint or "")
    assert common._check_settings(FLAVOR, {"hardware_compatibility": "ampere_plus", "version_compatible": True,
                                           "timing_cache": "t.cache"}) == []


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
    from test_backend_models import conv_bn_relu, plan_for

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


if __name__ == "__main__":
    print(write_typings(Path(sys.argv[1] if len(sys.argv) > 1 else "typings")))
