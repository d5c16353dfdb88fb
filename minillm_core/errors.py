"""The one exception hierarchy of MiniLLM: what went wrong, as data a caller can decide on.

Front ends and the orchestrator decide from the type, never from a message:
- `retryable` says whether running the same work again can succeed. A NaN loss at the same seed is
  deterministic (False); running out of memory or disk space, or a SIGTERM, is not (True).
- `DataError` carries `file`, `line` and `field`, so a report names where bad input sits.
- `ResourceError` carries `advice`: the one line a user needs (the flags to change, what to free).

Each class also derives from the builtin a plain-Python caller would expect (`ValueError` for bad
settings and data, `RuntimeError` for failures while running), so `except ValueError` still works.
"""

from __future__ import annotations


class MiniLLMError(Exception):
    """Base of every error MiniLLM raises on purpose."""

    retryable: bool = False


class ConfigError(MiniLLMError, ValueError):
    """Invalid settings; the message names each bad field and the rule it broke."""


class DataError(MiniLLMError, ValueError):
    """Bad input data, located: `file`, `line` (1-based) and `field`, each None where unknown."""

    def __init__(
        self,
        message: str,
        *,
        file: object = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.reason = message
        where = ":".join(str(p) for p in (self.file, line) if p is not None)
        super().__init__(f"{where}: {message}" if where else message)


class DeviceUnavailableError(ConfigError):
    """A setting names a device this machine does not have (cuda without CUDA); the message is
    one line that says what to run instead. Never retried: the machine will not grow a GPU."""


class ArtifactError(MiniLLMError, RuntimeError):
    """An artifact on disk is missing, corrupt, or was made from other inputs."""


class MissingArtifactError(ArtifactError):
    """An upstream artifact has not been built; the message says how to build it."""

    def __init__(self, path: object, what: str):
        from pathlib import Path

        self.path, self.what = Path(str(path)), what
        super().__init__(f"{what} not found at {self.path}")


class TokenizerMismatchError(ArtifactError):
    """Data was made with another tokenizer than the one in use (both hashes in the message)."""


class TrainingError(MiniLLMError, RuntimeError):
    """Training could not go on."""


class NonFiniteLossError(TrainingError):
    """The loss or gradient norm became inf/NaN. Deterministic at a given seed: never retried."""


class TrainingInterrupted(TrainingError):
    """SIGTERM arrived; the resume state was saved, so a retry continues from it."""

    retryable = True


class ResourceError(MiniLLMError, RuntimeError):
    """The machine ran out of something (memory, disk). A retry can succeed once it is freed or
    the settings change; `advice` is the one line that says how."""

    retryable = True

    def __init__(self, message: str, advice: str):
        self.advice = advice
        super().__init__(f"{message}: {advice}")


class OutOfMemoryError(ResourceError):
    """The device ran out of memory."""


class DiskFullError(ResourceError, ArtifactError):
    """The disk filled up while writing an artifact (nothing half-written is left behind)."""


def is_retryable(exc: BaseException) -> bool:
    """True when running the same work again can succeed (used by the orchestrator's retry policy).
    Errors that are not ours (a bug, a library failure) are not retried: a retry would repeat them."""
    return isinstance(exc, MiniLLMError) and exc.retryable
