"""Every exception and warning Looplane raises.

The tree::

    LooplaneError
    ├── ConfigError (also ValueError) ── AppImportError
    ├── SerializationError (also TypeError)
    ├── StorageError ── StorageUnavailable, StorageFull
    ├── BrokerError ── LeaseLost
    └── TaskError ── TaskNotFound, InvalidArguments (also TypeError),
                     TaskTimeout (also TimeoutError), RetriesExhausted
    Retry, Cancel: raised by task code to steer the orchestrator; not errors
    LooplaneWarning(UserWarning), LooplaneDeprecationWarning(DeprecationWarning)

Errors carry their data as keyword-only attributes and build their message from it, so
handlers branch on fields rather than on message text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


class LooplaneError(Exception):
    """Base class of every error Looplane raises."""


class ConfigError(LooplaneError, ValueError):
    """A setting or a pluggable component is invalid.

    Attributes:
        problems: One line per problem, each naming the setting, what is wrong, the bad value
            (masked when secret) and where it came from. The message joins them, one a line.
    """

    def __init__(self, message: str | None = None, *, problems: Sequence[str] = ()):
        self.problems: list[str] = list(problems) if problems else [message or "invalid setting"]
        super().__init__(message if message is not None else "\n".join(self.problems))


class AppImportError(ConfigError):
    """An app module (``app`` setting, ``-A``) could not be imported.

    Attributes:
        module: The dotted name of the module.
        reason: Whether the module itself was not found, an import inside it failed, or it
            raised while being imported, with the original error; that error is also the
            ``__cause__``.
    """

    def __init__(self, *, module: str, reason: str):
        super().__init__(f"cannot import app module {module!r}: {reason}")
        self.module = module
        self.reason = reason


class SerializationError(LooplaneError, TypeError):
    """A value cannot be encoded, or bytes cannot be decoded into a task.

    Attributes:
        path: Where in the task the bad value sits, such as ``args[1]`` or ``kwargs['when']``.
        type_name: The qualified type name of the value that could not be encoded.
    """

    def __init__(self, message: str, *, path: str | None = None, type_name: str | None = None):
        super().__init__(message)
        self.path = path
        self.type_name = type_name


class StorageError(LooplaneError):
    """The storage backend failed or refused an operation."""

    def __init__(self, message: str, *, backend: str | None = None):
        super().__init__(message)
        self.backend = backend


class StorageUnavailable(StorageError):
    """The storage backend did not answer or is closed."""


class StorageFull(StorageError):
    """The storage has no room for more tasks; nothing of the refused write was stored.

    Raised by `send` when an LMDB map reached ``storage.max_map_size`` or the disk refused to
    grow the file. Acks, retries and results keep working, so draining the queue, freeing
    disk space or raising ``storage.max_map_size`` makes sends succeed again.

    Attributes:
        path: The LMDB directory.
        map_size: The map size in bytes when the write was refused.
        max_map_size: The configured cap in bytes.
    """

    def __init__(self, message: str, *, path: str, map_size: int, max_map_size: int):
        super().__init__(message, backend="lmdb")
        self.path = path
        self.map_size = map_size
        self.max_map_size = max_map_size


class BrokerError(LooplaneError):
    """A producer or consumer operation failed."""


class LeaseLost(BrokerError):
    """The consumer no longer holds the lease on a task, so it may not ack, nack or renew it.

    Another consumer may already be running the task; the state was left unchanged.
    """

    def __init__(self, *, task_id: str, operation: str):
        super().__init__(f"lease on task {task_id} was lost; {operation} refused")
        self.task_id = task_id
        self.operation = operation


class TaskError(LooplaneError):
    """A problem with one task or task function."""


class TaskNotFound(TaskError, LookupError):
    """No task function is registered under a name, or no task has the given id."""

    def __init__(self, message: str, *, name: str | None = None, task_id: str | None = None):
        super().__init__(message)
        self.name = name
        self.task_id = task_id


class InvalidArguments(TaskError, TypeError):
    """A call's arguments do not fit the task function's signature; refused at send."""

    def __init__(self, message: str, *, name: str):
        super().__init__(message)
        self.name = name


class TaskTimeout(TaskError, TimeoutError):
    """An attempt ran longer than its timeout, or a wait for a result ran out."""

    def __init__(self, message: str, *, task_id: str | None = None, timeout_s: float):
        super().__init__(message)
        self.task_id = task_id
        self.timeout_s = timeout_s


class RetriesExhausted(TaskError):
    """The last allowed attempt of a task failed."""

    def __init__(self, *, task_id: str, attempts: int):
        super().__init__(f"task {task_id} failed after {attempts} attempts")
        self.task_id = task_id
        self.attempts = attempts


class Retry(Exception):
    """Raised by task code to ask for another attempt, optionally after ``delay_s`` seconds.

    The retry uses up an attempt like any failure; when none are left the task fails.
    """

    def __init__(self, reason: str = "retry requested", *, delay_s: float | None = None):
        if delay_s is not None and not _is_duration(delay_s):
            raise ConfigError(f"Retry delay_s must be a number of seconds >= 0, got {delay_s!r}")
        super().__init__(reason)
        self.delay_s = delay_s


def _is_duration(value: object) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and 0 <= value < float("inf")  # type: ignore[operator]  # number checked


class Cancel(Exception):
    """Raised by task code to fail the task at once, without further attempts."""


class LooplaneWarning(UserWarning):
    """A setting or situation that works but is probably not what was meant."""


class LooplaneDeprecationWarning(DeprecationWarning):
    """A feature that will be removed in a later release."""
