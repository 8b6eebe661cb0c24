"""The artifact folder on disk: atomic writes, content hashes, and the checks made before loading.

An artifact is complete or absent: it is assembled in a temporary sibling folder and swapped in with
renames under a per-artifact lock (:func:`locked`), so an interrupted build leaves the previous artifact
intact and concurrent builds never interleave their swaps. ``report.json`` records the sha256 of every
file (:func:`seal`); :func:`load` is what every reader calls (the generated runner, validate, bench):
it checks the report's shape, that every required file is present and listed, re-hashes them, and
range-checks the plan before anything is deserialized.

Hashing costs ~9 ms for a 13 MB model here (1.5 GB/s); a digest is cached per process, keyed on
the file's (device, inode, size, mtime_ns, ctime_ns), so a second runner of the same artifact hashes
nothing and any rewrite of the file (ctime cannot be set back) is hashed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtflow.errors import ArtifactError, OutputError

if TYPE_CHECKING:
    from trtflow.plan.model import Plan

REPORT = "report.json"
PLAN = "plan.json"
MODEL = "model.onnx"
ENGINE = "engine.plan"
RUNNER = "runner.py"
REQUIRED = (PLAN, MODEL, RUNNER)  # plus the report's engine_file, when it names one
MAX_DEPTH = 16  # buffer sets of a pipelined runner: the recipe's streams.depth bound
MAX_DIM = (1 << 31) - 1
MAX_BYTES = 1 << 48  # 256 TiB per tensor: beyond any machine; the planner refuses far less (memory_limits)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REBUILD = "rebuild with `trtflow build --force`"
# The default folder of artifact folders (`--out`). Not `build/`: setuptools writes `build/lib` there on
# `pip install .`, and PyPA's `build` package would shadow `from build.x.runner import ...`.
DEFAULT_ROOT = Path("artifacts")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_digests: dict[tuple[int, int, int, int, int], str] = {}
_digests_lock = threading.Lock()


def _cached_sha256(path: Path) -> str:
    """sha256 of ``path``, hashed once per process while the file's identity and times are unchanged."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _digests_lock:
        hit = _digests.get(key)
    if hit is None:
        hit = sha256_path(path)
        with _digests_lock:
            _digests[key] = hit
    return hit


def atomic_write(path: Path, data: bytes | bytearray | memoryview | str) -> None:
    """THE file writer of trtflow: ``data`` goes to a temporary file in ``path``'s folder, is fsynced, and
    replaces ``path`` (``os.replace``); the folder is fsynced after. A reader sees the old file or the whole
    new one, never a part, also after a crash. Folders of files (artifacts, exports) are staged and swapped
    whole by :func:`staging_dir` / :func:`commit_dir`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # write() failures (disk full) name no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened for it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every regular file under ``folder`` (files a library or a copy wrote) and the folders."""
    for root, _, files in os.walk(folder):
        for name in files:
            f = Path(root) / name
            if f.is_symlink() or not f.is_file():
                continue
            fd = os.open(f, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_held: set[Path] = set()  # artifact folders whose lock this process holds


@contextlib.contextmanager
def locked(final: Path, *, waiting: Any = None) -> Iterator[None]:
    """Hold the lock of artifact folder ``final`` (``.<name>.lock`` beside it; flock, so a killed holder
    releases it). Builds hold it from the cache check to the swap: a concurrent build of the same
    artifact waits, then finds a cache hit. ``waiting(pid)`` is called once if another process holds it.
    The lock file is removed on release; a waiter that locked a removed file retries on the new one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_umask())
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    waiting(int(holder) if holder.isdigit() else None)
                    waiting = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed this file while we waited: lock the current one
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            _clean_leftovers(final)
            _held.add(final.resolve())
            try:
                yield
            finally:
                _held.discard(final.resolve())
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return
        finally:
            os.close(fd)


def _clean_leftovers(final: Path) -> None:
    """Under the lock: remove what killed builds left beside ``final`` (their temporary folders), and put
    back the previous artifact a swap had moved aside when the killed process had not put the new one in."""
    for stale in (*final.parent.glob(f".{final.name}.tmp-*"), *final.parent.glob(f".{final.name}.old-*")):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if ".old-" in stale.name and not final.exists():
            os.replace(stale, final)
        else:
            shutil.rmtree(stale, ignore_errors=True)


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final`` (call under :func:`locked`)."""
    _check_held(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _check_held(final: Path) -> None:
    if final.resolve() not in _held:
        raise RuntimeError(f"{final}: staging and swapping an artifact need `with artifact.locked(final):`")


def check_replaceable(final: Path) -> None:
    """``final`` may be swapped away only when it is absent or a trtflow artifact: a build never deletes a
    folder of the user's that happens to carry the artifact's name."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        raise OutputError(f"{final} exists and is not an artifact folder; refusing to replace it",
                          hint="pass another --out, or give the recipe another `name:`", file=final)
    if not (final / REPORT).is_file() and any(final.iterdir()):
        raise OutputError(f"{final} is a folder that is not a trtflow artifact (no {REPORT}); refusing to replace it",
                          hint="pass another --out, or give the recipe another `name:`", file=final)


def commit_dir(tmp: Path, final: Path) -> None:
    """Swap ``tmp`` in as ``final`` (call under :func:`locked`): the old artifact stays until the new one
    is in place, then is removed."""
    _check_held(final)
    _fsync_tree(tmp)  # what is swapped in is on disk first (model.onnx, copied files: not via atomic_write)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def seal(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Record the sha256 of every file in ``folder`` (report.json aside) under ``report["files"]`` and
    write report.json. Builds, bench variants and hand-made test artifacts all seal this way."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != REPORT and not p.name.startswith("."))
    report = {**report, "files": {name: sha256_path(folder / name) for name in files}}
    atomic_write(folder / REPORT, json.dumps(report, indent=2, default=str) + "\n")
    return report


def read_report(artifact: Path) -> dict[str, Any]:
    """report.json, checked for the shape every reader relies on (a mapping whose ``files`` maps plain
    file names to sha256 hex digests and lists every required file)."""
    path = artifact / REPORT
    if not path.is_file():
        raise ArtifactError(f"{artifact}: no {REPORT}; this is not a trtflow artifact (or its build never finished)",
                            hint=f"run `trtflow build <recipe>` to create {artifact}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable build report ({exc})", hint=_REBUILD) from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: the build report is a JSON {type(data).__name__}, not an object", hint=_REBUILD)
    files = data.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _HEX64.fullmatch(v) for k, v in files.items()):
        raise ArtifactError(f"{path}: `files` must map file names to sha256 hex digests", hint=_REBUILD)
    for name in files:
        if name in ("", ".", "..") or "/" in name or "\\" in name or name == REPORT:
            raise ArtifactError(f"{path}: `files` lists {name!r}, which is not a file of the artifact folder",
                                hint=_REBUILD)
    engine = data.get("engine_file")
    if engine is not None and not isinstance(engine, str):
        raise ArtifactError(f"{path}: `engine_file` must be a file name or null", hint=_REBUILD)
    missing = [n for n in (*REQUIRED, *([engine] if engine else [])) if n not in files]
    if missing:
        raise ArtifactError(f"{path}: the build report does not list {', '.join(missing)}; its hashes cannot be "
                            "checked", hint=_REBUILD)
    return data


def verify(artifact: Path, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-hash every file the report lists; a mismatch (truncated, corrupt, edited, swapped) or a missing
    file is an ArtifactError. Required files are always among them (see :func:`read_report`)."""
    report = read_report(artifact) if report is None else report
    for name, want in report["files"].items():
        path = artifact / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing from the artifact", hint=_REBUILD)
        try:
            got = _cached_sha256(path)
        except OSError as exc:
            raise ArtifactError(f"{path}: unreadable ({exc.strerror})", hint=_REBUILD) from None
        if got != want:
            raise ArtifactError(f"{path}: content hash {got[:12]}... does not match the build report ({want[:12]}...); "
                                "the file is truncated, corrupt or was replaced", hint=_REBUILD)
    return report


def load(artifact: Path) -> tuple[Plan, dict[str, Any]]:
    """The one check every reader makes before using an artifact: :func:`verify`, then plan.json parsed
    and range-checked (:func:`check_plan`). Returns the plan and the report."""
    from trtflow.plan.model import Plan

    report = verify(artifact)
    path = artifact / PLAN
    try:
        plan = Plan.from_json(path.read_text(encoding="utf-8"))
    except ArtifactError as exc:  # another plan version: rebuild
        raise ArtifactError(f"{path}: {exc.message}", hint=exc.hint) from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a valid plan ({type(exc).__name__}: {exc})", hint=_REBUILD) from None
    check_plan(plan, path)
    return plan, report


def check_depth(depth: object, where: str) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise ArtifactError(f"{where}: pipeline depth must be an integer from 1 to {MAX_DEPTH}, got {depth!r}",
                            hint="streams.depth in the recipe; rebuild")
    return depth


def check_plan(plan: Plan, where: Path | str = PLAN) -> None:
    """Range-check the values of a loaded plan the runtime acts on (a hand-edited or hostile plan.json
    gets an ArtifactError naming the field, never a hang, a huge allocation or a silent default)."""
    from trtflow.plan.formats import FORMATS, ITEMSIZE
    from trtflow.plan.model import MEMORY_STRATEGIES, PLAN_VERSION, TOPOLOGIES

    def bad(field: str, why: str) -> ArtifactError:
        return ArtifactError(f"{where}: {field}: {why}", hint=f"plan.json is written by the build: {_REBUILD}")

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if plan.plan_version != PLAN_VERSION:
        raise bad("plan_version", f"{plan.plan_version!r} is not a plan version this trtflow reads ({PLAN_VERSION})")
    for field in ("name", "class_name", "precision", "model_path"):
        if not isinstance(getattr(plan, field), str):
            raise bad(field, f"must be a string, got {getattr(plan, field)!r}")
    streams = plan.streams
    if streams.topology not in TOPOLOGIES:
        raise bad("streams.topology", f"{streams.topology!r} is not one of {', '.join(TOPOLOGIES)}")
    check_depth(streams.depth, f"{where}: streams.depth")
    if not isinstance(streams.cuda_graph, bool):
        raise bad("streams.cuda_graph", f"must be true or false, got {streams.cuda_graph!r}")
    if not isinstance(plan.build.backend, str):
        raise bad("build.backend", "must be a string")
    names: set[str] = set()
    for role, tensors in (("input", plan.inputs), ("output", plan.outputs)):
        for i, t in enumerate(tensors):
            at = f"{role}s[{i}]"
            if not isinstance(t.name, str) or not isinstance(t.ident, str):
                raise bad(at, "name and ident must be strings")
            if t.name in names:
                raise bad(at, f"tensor name {t.name!r} appears twice")
            names.add(t.name)
            if t.role != role:
                raise bad(f"{at}.role", f"{t.role!r} in the {role}s list")
            if t.dtype not in ITEMSIZE or t.format not in FORMATS or t.memory not in MEMORY_STRATEGIES:
                raise bad(at, f"dtype {t.dtype!r}, format {t.format!r} or memory {t.memory!r} is not known")
            shapes = (t.min_shape, t.shape, t.max_shape)
            if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for s in shapes for d in s):
                raise bad(f"{at}.shape", f"dims must be integers from 0 to {MAX_DIM}, got {[list(s) for s in shapes]}")
            if not len(t.min_shape) == len(t.shape) == len(t.max_shape) or not all(
                    lo <= mid <= hi for lo, mid, hi in zip(*shapes)):
                raise bad(f"{at}.shape", f"need min <= shape <= max of one rank, got {[list(s) for s in shapes]}")
            for field in ("bytes", "max_bytes"):
                if not is_int(getattr(t, field)) or not 0 <= getattr(t, field) <= MAX_BYTES:
                    raise bad(f"{at}.{field}", f"must be an integer from 0 to {MAX_BYTES}, got {getattr(t, field)!r}")
    ranks = {t.ident: len(t.shape) for t in plan.inputs}
    for i, group in enumerate(plan.dim_ties):
        refs = [re.fullmatch(r"(\w+)\[(\d+)\]", r) if isinstance(r, str) else None for r in group]
        if len(group) < 2 or not all(m and m[1] in ranks and int(m[2]) < ranks[m[1]] for m in refs):
            raise bad(f"dim_ties[{i}]", f"must list two or more input dims 'ident[axis]', got {list(group)!r}")


def staleness(report: dict[str, Any], *, recipe_sha256: str | None, model_sha256: str | None) -> list[str]:
    """Reasons the artifact no longer matches the recipe/model (empty = fresh)."""
    reasons = []
    if recipe_sha256 and report.get("recipe_sha256") != recipe_sha256:
        reasons.append("the recipe changed since the build")
    if model_sha256 and report.get("model_sha256") != model_sha256:
        reasons.append("the model file changed since the build")
    return reasons
