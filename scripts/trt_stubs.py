"""Generate the type stubs in typings/ from NVIDIA's own pybind11 bindings (the subset trtflow calls).

    python scripts/trt_stubs.py rtx                         # the installed tensorrt_rtx
    python scripts/trt_stubs.py wheel tensorrt_cu13_bindings-11.4.0.106-cp311-...whl
    python scripts/trt_stubs.py wheel tensorrt_cu12_bindings-10.12.0.36-cp311-...whl

Full TensorRT cannot be installed on this project's machines (its libraries come from NVIDIA's own index),
but the bindings wheel from the package index can: its ``tensorrt.so`` needs only nine C entry points of
libnvinfer/libnvonnxparser/libnvinfer_plugin (``createInferBuilder_INTERNAL`` ...). Empty stand-ins for
those, compiled here with the system C compiler, let the extension module load, and pybind11 then states
every bound signature in the docstrings (``get_tensor_shape(self: tensorrt.ICudaEngine, name: str) ->
tensorrt.Dims``). Nothing is ever called. The stubs are written for the classes in :data:`CLASSES`; names
of other classes in a signature become ``Any``. A class, method or property the bindings do not have is
absent from the stub, so mypy flags code calling it: that is what the 11.x stubs are for
(``ICudaEngine.device_memory_size`` is gone in 11).

Writes ``typings/tensorrt-<major.minor>/tensorrt/__init__.pyi`` or ``typings/tensorrt_rtx/tensorrt_rtx/__init__.pyi``.
Regenerate when a supported version changes; the files are committed.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The classes trtflow touches (backends/_trt_common.py, tensorrt.py, tensorrt_rtx.py) and the types of
# their results that it uses in turn.
CLASSES = [
    "Builder", "BuilderFlag", "ComputeCapability", "CudaGraphStrategy", "DataType", "Dims",
    "DynamicShapesKernelSpecializationStrategy", "EngineInspector", "EngineInvalidityDiagnostics", "EngineValidity",
    "ExecutionContextAllocationStrategy", "HardwareCompatibilityLevel", "IBuilderConfig", "ICudaEngine",
    "IExecutionContext", "IHostMemory", "ILogger", "INetworkDefinition", "IOptimizationProfile", "IOutputAllocator",
    "IProgressMonitor", "IRuntimeCache", "IRuntimeConfig", "ITensor", "ITimingCache", "LayerInformationFormat",
    "Logger", "MemoryPoolType", "NetworkDefinitionCreationFlag", "OnnxParser", "ParserError", "ProfilingVerbosity",
    "Runtime", "TensorFormat", "TensorIOMode", "TensorLocation",
]
# Classes bound with py::buffer_protocol() (pyFoundationalTypes.cpp: IHostMemory); Python 3.11 cannot see it.
BUFFER_CLASSES = {"IHostMemory"}
BUILTIN_TYPES = {"int", "float", "str", "bool", "bytes", "None", "object", "list", "tuple", "dict", "set"}
FAKE_SYMBOLS = """
void* createInferBuilder_INTERNAL(void* a, int b) { return 0; }
void* createInferRefitter_INTERNAL(void* a, void* b, int c) { return 0; }
void* createInferRuntime_INTERNAL(void* a, int b) { return 0; }
void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c) { return 0; }
void* createNvOnnxParser_INTERNAL(void* a, void* b, int c) { return 0; }
void* getBuilderPluginRegistry(int a) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void* getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void* a, const char* b) { return 0; }
"""


# -- reading pybind11 signatures ------------------------------------------------------------------------

def _split(text: str) -> list[str]:
    """Split a parameter list at top-level commas (brackets and <...> reprs nest)."""
    depth, cur, out = 0, "", []
    for ch in text:
        depth += ch in "([{<"
        depth -= ch in ")]}>"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + ([cur.strip()] if cur.strip() else [])


class Types:
    """Rewrites a pybind11 type string into stub syntax: classes of the module by name, others Any."""

    def __init__(self, module_names: set[str]) -> None:
        self.module_names = module_names
        self.uses_typing = False

    def __call__(self, text: str) -> str:
        text = text.strip()

        def name(m: re.Match[str]) -> str:
            tok = m.group(0)
            last = tok.rsplit(".", 1)[-1].rsplit("::", 1)[-1]
            if "::" in tok:
                # a class bound after this function (pybind11 then prints the C++ name): the same type
                return last if tok.startswith("nvinfer1::") and last in CLASSES and last in self.module_names else "Any"
            parts = tok.split(".")
            for i, part in enumerate(parts[:-1]):  # a nested class: tensorrt.ILogger.Severity
                if part in CLASSES and part in self.module_names:
                    return ".".join(parts[i:])
            if tok.startswith(("typing.", "collections.abc.", "typing_extensions.")):
                self.uses_typing = True
                return {"Buffer": "Buffer", "Sequence": "Sequence", "SupportsInt": "SupportsInt",
                        "SupportsFloat": "SupportsFloat", "Callable": "Callable", "Iterator": "Iterator",
                        "Any": "Any"}.get(last, "Any")
            if "." in tok:
                return last if last in CLASSES and last in self.module_names else "Any"
            if tok in BUILTIN_TYPES or tok in ("Any",):
                return tok
            return last if last in CLASSES and last in self.module_names else "Any"

        return re.sub(r"[A-Za-z_][\w.]*(?:::[\w:]+)?", name, text)


def _signatures(doc: str | None, func: str) -> list[tuple[list[str], str]]:
    """(parameters, return type) of each overload a pybind11 docstring states for ``func``."""
    if not doc:
        return []
    out = []
    for line in doc.splitlines():
        line = re.sub(r"^\d+\. ", "", line.strip())
        m = re.match(rf"^{re.escape(func)}\((.*)\) -> (.+)$", line)
        if m and m.group(1) != "*args, **kwargs":
            out.append((_split(m.group(1)), m.group(2)))
    return out


def _param(p: str, types: Types, *, first: bool) -> str:
    if p in ("*", "/") or p.startswith("*"):
        return p if ":" not in p else p.split(":")[0] + ": Any"
    name, _, rest = p.partition(":")
    name = name.strip()
    ann, eq, _default = rest.partition("=")
    if first and name in ("self", "arg0"):
        return "self"
    if name in ("in", "from", "is", "lambda", "global", "def", "class"):
        name += "_"
    return f"{name}: {types(ann) if ann.strip() else 'Any'}" + (" = ..." if eq else "")


def _fix_defaults(params: list[str]) -> list[str]:
    """A parameter without default after one with: give it one (valid Python, same call sites)."""
    seen, out = False, []
    for p in params:
        if "=" in p:
            seen = True
        elif seen and not p.startswith("*") and p != "self":
            p += " = ..."
        out.append(p)
    return out


def _method(cls: str, name: str, obj: Any, types: Types, *, static: bool) -> list[str]:
    sigs = _signatures(getattr(obj, "__doc__", None), name)
    if not sigs:
        return [f"    def {name}(self, *args: Any, **kwargs: Any) -> {'None' if name == '__init__' else 'Any'}: ..."]
    lines: list[str] = []
    for params, ret in sigs:
        ps = _fix_defaults([_param(p, types, first=i == 0 and not static) for i, p in enumerate(params)])
        if len(sigs) > 1:
            lines.append("    @overload")
        if static:
            lines.append("    @staticmethod")
        lines.append(f"    def {name}({', '.join(ps)}) -> {types(ret)}: ...")
    return lines


def _property(name: str, prop: property, types: Types) -> list[str]:
    ret = "Any"
    doc = prop.fget.__doc__ if prop.fget else None
    if doc:
        m = re.match(r"^\((.*)\) -> (.+)$", doc.strip().splitlines()[0])
        if m:
            ret = types(m.group(2))
    if prop.fset is None:
        return ["    @property", f"    def {name}(self) -> {ret}: ..."]
    return [f"    {name}: {ret}"]


def _is_enum(cls: type) -> bool:
    return "__members__" in cls.__dict__ or "__entries" in cls.__dict__


def _class(name: str, cls: type, mod: ModuleType, types: Types, qualname: str = "") -> list[str]:
    qual = qualname or name
    bases = [b.__name__ for b in cls.__bases__ if b.__name__ in CLASSES and hasattr(mod, b.__name__)]
    lines = [f"class {name}({', '.join(bases)}):" if bases else f"class {name}:"]
    body: list[str] = []
    if _is_enum(cls):
        members = list(getattr(cls, "__members__", {}))
        body += [f"    {m}: ClassVar[{qual}]" for m in members]
        body += [f"    __members__: ClassVar[dict[str, {qual}]]",
                 "    def __init__(self, value: SupportsInt) -> None: ...",
                 "    @property", "    def name(self) -> str: ...",
                 "    @property", "    def value(self) -> int: ...",
                 "    def __int__(self) -> int: ...", "    def __index__(self) -> int: ...",
                 "    def __eq__(self, other: object) -> bool: ...", "    def __hash__(self) -> int: ..."]
        for attr, value in cls.__dict__.items():  # enum classes may bind methods too (DataType.itemsize)
            if isinstance(value, property) and not attr.startswith("_") and attr not in ("name", "value"):
                body += _property(attr, value, types)
    else:
        if name in BUFFER_CLASSES:
            body.append("    def __buffer__(self, flags: int, /) -> memoryview: ...")
        for attr, value in cls.__dict__.items():
            if attr.startswith("__") and attr not in ("__init__", "__len__", "__getitem__", "__setitem__", "__iter__",
                                                       "__enter__", "__exit__", "__buffer__"):
                continue
            if attr.startswith("_") and not attr.startswith("__"):
                continue
            if isinstance(value, property):
                body += _property(attr, value, types)
            elif isinstance(value, staticmethod):
                body += _method(name, attr, value.__func__, types, static=True)
            elif isinstance(value, type):
                if any(getattr(b, attr, None) is value for b in cls.__bases__):
                    continue  # inherited (Logger.Severity is ILogger.Severity)
                if attr in CLASSES or _is_enum(value):
                    inner = _class(attr, value, mod, types, qualname=f"{qual}.{attr}")
                    body += ["    " + ln for ln in inner]
                    if attr == "Severity":  # Logger.VERBOSE etc. are Severity values
                        body += [f"    {m}: ClassVar[{name}.Severity]" for m in getattr(value, "__members__", {})]
            elif callable(value):
                body += _method(name, attr, value, types, static=False)
            elif attr.isupper() and hasattr(value, "name"):
                continue  # enum values re-exported on a class (Logger.INFO): covered above
    return lines + (body or ["    ..."])


def write_stub(mod: ModuleType, version: str, out: Path, *, module_name: str) -> Path:
    names = {n for n in dir(mod) if not n.startswith("_")}
    types = Types(names)
    classes: list[str] = []
    for name in CLASSES:
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            classes += _class(name, cls, mod, types) + ["", ""]
    header = [
        f'"""{module_name} {version}: the subset trtflow calls, generated by scripts/trt_stubs.py from the',
        'bindings\' own pybind11 signatures. Do not edit; regenerate."""',
        "",
        "from collections.abc import Callable, Iterator, Sequence",
        "from typing import Any, ClassVar, SupportsFloat, SupportsInt, overload",
        "",
        "from typing_extensions import Buffer",
        "",
        f"__version__: str  # {version}",
        "",
        "",
    ]
    text = "\n".join(header + classes).rstrip() + "\n"
    compile(text, str(out), "exec")  # a valid module, or fail here
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


# -- loading the modules ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("rtx", help="the installed tensorrt_rtx")
    w = sub.add_parser("wheel", help="a tensorrt_cuXX_bindings wheel (full TensorRT)")
    w.add_argument("wheel", type=Path)
    w.add_argument("--child-so", type=Path, help=argparse.SUPPRESS)
    w.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.what == "rtx":
        import tensorrt_rtx

        out = ROOT / "typings" / "tensorrt_rtx" / "tensorrt_rtx" / "__init__.pyi"
        print(write_stub(tensorrt_rtx, tensorrt_rtx.__version__, out, module_name="tensorrt_rtx"))
        return 0
    version = re.search(r"-(\d+\.\d+\.\d+\.\d+)", args.wheel.name)
    ver = version.group(1) if version else "unknown"
    if args.child_so:  # in the child: LD_LIBRARY_PATH has the stand-in libraries
        spec = importlib.util.spec_from_file_location("tensorrt", args.child_so)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print(write_stub(mod, ver, args.child_out, module_name="tensorrt"))
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with zipfile.ZipFile(args.wheel) as z:
            z.extractall(tmp / "wheel")
        so = next((tmp / "wheel").rglob("tensorrt.so"))
        needed = subprocess.run(["ldd", str(so)], capture_output=True, text=True, check=False).stdout
        src = tmp / "fake.c"
        src.write_text(FAKE_SYMBOLS)
        for lib in sorted(set(re.findall(r"(lib(?:nvinfer|nvonnxparser|nvinfer_plugin)\.so\.\d+) => not found", needed))):
            subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp / lib), str(src)], check=True)
        major_minor = ".".join(ver.split(".")[:2])
        out = ROOT / "typings" / f"tensorrt-{major_minor}" / "tensorrt" / "__init__.pyi"
        env = {"LD_LIBRARY_PATH": str(tmp), "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, __file__, "wheel", str(args.wheel), "--child-so", str(so),
                               "--child-out", str(out)], env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
