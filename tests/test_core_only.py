"""With only the core dependencies, every submodule imports and every command's --help works.

Optional libraries are made unimportable in a subprocess (a meta-path finder refuses them), which is
what a fresh `pip install trtflow` without extras looks like to Python.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ["tensorrt", "tensorrt_rtx", "onnxruntime", "torch", "onnx2torch", "cuda", "cupy",
            "onnxconverter_common", "matplotlib", "nvtx", "tritonclient", "hypothesis"]

PRELUDE = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {OPTIONAL!r}
    class Hide(importlib.abc.MetaPathFinder):  # wraps every finder: blocked packages are not found
        def __init__(self, inner):
            self.inner = inner
        def __getattr__(self, attr):
            return getattr(self.inner, attr)
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return None
            return self.inner.find_spec(name, path, target)
    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
""")


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_every_submodule_imports_with_core_only() -> None:
    r = run("""
        import pkgutil, importlib, trtflow
        names = [m.name for m in pkgutil.walk_packages(trtflow.__path__, "trtflow.")]
        for n in names:
            importlib.import_module(n)
        heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not heavy, heavy
        print(len(names), "modules")
    """)
    assert r.returncode == 0, r.stderr
    assert "modules" in r.stdout


def test_every_help_and_plan_work_with_core_only() -> None:
    r = run("""
        from typer.testing import CliRunner
        from trtflow.cli import app
        runner = CliRunner()
        res = runner.invoke(app, ["--help"])
        assert res.exit_code == 0, res.output
        commands = [[c.name or c.callback.__name__] for c in app.registered_commands]
        for g in app.registered_groups:
            group = g.name or g.typer_instance.info.name
            commands.append([group])
            commands += [[group, c.name or c.callback.__name__] for c in g.typer_instance.registered_commands]
        for c in commands:
            res = runner.invoke(app, [*c, "--help"])
            assert res.exit_code == 0, (c, res.output)
        res = runner.invoke(app, ["plan", "recipes/seg.yaml"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["schema"])
        assert res.exit_code == 0 and '"title": "trtflow recipe"' in res.output
        print("ok", len(commands))
    """)
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.startswith("ok")


def test_missing_backend_names_the_extra() -> None:
    r = run("""
        from trtflow.backends.base import get_backend
        from trtflow.errors import BackendMissing
        try:
            get_backend("onnxruntime").require()
        except BackendMissing as e:
            print(e)
    """)
    assert "pip install 'trtflow[ort]'" in r.stdout, r.stderr


def test_runtime_needs_neither_pydantic_nor_yaml() -> None:
    """A generated runner in production reads plan.json: numpy and the engine's library suffice."""
    r = subprocess.run([sys.executable, "-c", PRELUDE.replace("BLOCKED = ", "BLOCKED = ['pydantic', 'yaml'] + ")
                        + "import trtflow.runtime.runner, trtflow.codegen\nprint('ok')"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
