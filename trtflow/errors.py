"""One exception hierarchy; the CLI maps each class to an exit code and prints its hint."""

from __future__ import annotations


class TrtflowError(Exception):
    """Base of every error trtflow raises on purpose. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


class RecipeError(TrtflowError):
    """The recipe (YAML or its contents) is wrong. Message starts with ``file:line:col field:``."""

    exit_code = 2


class ModelError(TrtflowError):
    """The ONNX model is unreadable, corrupt, or contradicts the recipe."""

    exit_code = 2


class BackendMissing(TrtflowError):
    """A backend's library is not installed; the hint names the pip extra."""

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


class AccuracyFailure(TrtflowError):
    """Validation compared outputs and at least one failed its tolerance."""

    exit_code = 4


class BudgetExceeded(TrtflowError):
    """A performance budget from the recipe was not met."""

    exit_code = 9
