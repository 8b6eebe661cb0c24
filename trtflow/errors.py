"""One exception hierarchy and the one table of exit codes; the CLI maps each class to its code.

Every error trtflow raises on purpose is a :class:`TrtflowError` subclass whose ``exit_code`` comes from
:data:`EXIT_CODES`. The CLI's single handler (``trtflow.cli.main``) prints the message and its hint (a
traceback too with ``--debug``, which never changes the code), or with ``--json`` one JSON error object
(:func:`error_object`). Anything else that escapes is a trtflow bug: exit 70.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExitCode:
    code: int
    name: str         # the error class that carries it ("-" when no class does)
    meaning: str


# The table the README documents (tests/test_errors.py keeps the two in step). Codes 64 and 70 are the
# BSD sysexits values for a usage error and an internal software error.
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "-", "success"),
    ExitCode(1, "CheckFailed", "a `--check` found a difference (`schema --check`, `docs --check`)"),
    ExitCode(2, "RecipeError / ModelError", "the recipe or the ONNX model is wrong (file:line:col field: fix), "
             "or an override (`--set`, `--shapes`, `--precision`) does not fit it"),
    ExitCode(3, "BackendMissing", "a backend, an optional library (names the pip extra) or a CUDA GPU is not "
             "available here"),
    ExitCode(4, "AccuracyFailure", "validation ran and an output failed its tolerance or task metric"),
    ExitCode(5, "BuildError", "the backend failed to build (an unsupported op names the backends that can)"),
    ExitCode(6, "ArtifactError", "the artifact is missing, stale, corrupt, or built for another library or GPU"),
    ExitCode(7, "InputError", "an array handed to a runner does not match its contract (tensor, expected, got)"),
    ExitCode(8, "CudaError", "a CUDA call failed (names the call and the CUDA error)"),
    ExitCode(9, "BudgetExceeded", "`bench --check`: a performance budget of the recipe was not met"),
    ExitCode(10, "OutputError", "an output cannot be written: it exists (pass --force), the folder is "
             "read-only, the disk is full, or the path is not a folder"),
    ExitCode(64, "UsageError", "the command line is wrong: unknown option, missing argument, bad option value"),
    ExitCode(70, "-", "internal error: a trtflow bug (run with --debug for the traceback and report it)"),
    ExitCode(130, "-", "interrupted (Ctrl-C); an interrupted build keeps the previous artifact"),
)
USAGE = 64
INTERNAL = 70
INTERRUPTED = 130


class TrtflowError(Exception):
    """Base of every error trtflow raises on purpose. ``hint`` says what to do about it.

    ``file``/``line``/``column``/``field`` locate the cause where it is known (recipe errors);
    ``details`` holds one such location dict per cause when there are several.
    """

    exit_code = INTERNAL

    def __init__(self, message: str, *, hint: str | None = None, file: str | Path | None = None,
                 line: int | None = None, column: int | None = None, field: str | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.file = None if file is None else str(file)
        self.line, self.column, self.field = line, column, field
        self.details = details or []

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


class CheckFailed(TrtflowError):
    """A ``--check`` found the file on disk different from what would be written."""

    exit_code = 1


class RecipeError(TrtflowError):
    """The recipe (YAML or its contents) is wrong. Message starts with ``file:line:col field:``."""

    exit_code = 2


class ModelError(TrtflowError):
    """The ONNX model is unreadable, corrupt, or contradicts the recipe."""

    exit_code = 2


class BackendMissing(TrtflowError):
    """A backend's library, an optional library or a CUDA device is missing; the hint names the pip extra."""

    exit_code = 3


class BuildError(TrtflowError):
    """A backend failed to build, or an op is unsupported (message names op and backends that can)."""

    exit_code = 5


class ArtifactError(TrtflowError):
    """The artifact folder is missing, stale, corrupt, or was built for another library or GPU."""

    exit_code = 6


class InputError(TrtflowError, ValueError):
    """A run-time array does not match the runner's contract (names tensor, expected and got)."""

    exit_code = 7


class CudaError(TrtflowError, RuntimeError):
    """A CUDA call failed; message names the call and the CUDA error."""

    exit_code = 8


class RunnerClosed(TrtflowError, RuntimeError):
    """The runner was used after ``close()``."""

    exit_code = 7


class Overloaded(TrtflowError, RuntimeError):
    """A dispatcher's bounded queue is full (serving): retry later, e.g. answer HTTP 503."""

    exit_code = 7


class AccuracyFailure(TrtflowError):
    """Validation compared outputs and at least one failed its tolerance."""

    exit_code = 4


class BudgetExceeded(TrtflowError):
    """A performance budget from the recipe was not met."""

    exit_code = 9


class OutputError(TrtflowError):
    """An output path cannot be written: it exists without --force, is read-only, the disk is full, ..."""

    exit_code = 10


class BatchFailed(TrtflowError):
    """Some recipes of a folder failed (each was reported as it happened, the rest still ran). The exit
    code is the first failing recipe's; ``details`` lists every failure (file, code, class, message)."""

    def __init__(self, failures: list[tuple[str, TrtflowError]], total: int) -> None:
        names = ", ".join(f"{Path(f).name} ({e.exit_code})" for f, e in failures)
        super().__init__(f"{len(failures)} of {total} recipes failed: {names}",
                         hint="each error is printed above, with the summary table",
                         details=[{"file": f, "code": e.exit_code, "class": type(e).__name__, "message": e.message,
                                   "line": e.line, "column": e.column, "field": e.field} for f, e in failures])
        self.exit_code = failures[0][1].exit_code if failures else INTERNAL


class UsageError(TrtflowError):
    """The command line is wrong (an option value out of range, options that exclude each other)."""

    exit_code = USAGE


_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full: free space there, or pass another --out",
                 errno.EDQUOT: "the disk quota is used up: free space, or pass another --out",
                 errno.EROFS: "the file system is read-only: pass a writable --out",
                 errno.EACCES: "permission denied: pass a writable --out or fix the folder's permissions",
                 errno.EPERM: "operation not permitted: pass a writable --out or fix the folder's permissions",
                 errno.ENOTDIR: "a path component is a file, not a folder",
                 errno.EISDIR: "the path is a folder, not a file",
                 errno.EEXIST: "the path exists: pass --force or another --out"}


def from_os_error(exc: OSError) -> OutputError | None:
    """An :class:`OutputError` for a file-system failure a user can fix (disk full, read-only, ...); else None."""
    hint = _WRITE_ERRNOS.get(exc.errno or -1)
    if hint is None:
        return None
    path = exc.filename or "(a path)"
    return OutputError(f"{path}: {exc.strerror or exc}", hint=hint, file=str(path))


_LOCATED = re.compile(r"^(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?P<col>\d+) (?P<field>[^\s:]+): (?P<msg>.*)$")


def _located(message: str) -> list[dict[str, Any]]:
    """``file:line:col field: message`` lines, parsed (recipe errors are written that way)."""
    out = []
    for text in message.splitlines():
        m = _LOCATED.match(text)
        if m:
            out.append({"file": m["file"], "line": int(m["line"]), "column": int(m["col"]), "field": m["field"],
                        "message": m["msg"]})
    return out


def error_object(exc: BaseException, *, code: int | None = None) -> dict[str, Any]:
    """The JSON error object ``--json`` prints on any error: ``{"error": {code, class, message, hint, ...}}``.

    ``file``/``line``/``column``/``field`` are present where known (null otherwise); ``details`` lists
    every located cause when a recipe has several errors.
    """
    if isinstance(exc, TrtflowError):
        details = exc.details or _located(exc.message)
        first = details[0] if details else {}
        body: dict[str, Any] = {
            "code": exc.exit_code if code is None else code, "class": type(exc).__name__, "message": exc.message,
            "hint": exc.hint, "file": exc.file or first.get("file"), "line": exc.line or first.get("line"),
            "column": exc.column or first.get("column"), "field": exc.field or first.get("field"),
            "details": details,
        }
    else:
        body = {"code": INTERNAL if code is None else code, "class": type(exc).__name__, "message": str(exc),
                "hint": "this is a trtflow bug: run with --debug for the traceback and report it",
                "file": None, "line": None, "column": None, "field": None, "details": []}
    return {"error": body}


__all__ = ["EXIT_CODES", "INTERNAL", "INTERRUPTED", "USAGE", "AccuracyFailure", "ArtifactError", "BackendMissing",
           "BatchFailed", "BudgetExceeded", "BuildError", "CheckFailed", "CudaError", "ExitCode", "InputError", "ModelError",
           "OutputError", "RecipeError", "RunnerClosed", "TrtflowError", "UsageError", "error_object",
           "from_os_error"]
