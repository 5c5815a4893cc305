"""The result interface: the outcome of every attempt, kept for a time to live.

Results expire: a worker that runs for months must not grow its result store without bound
(https://github.com/celery/celery/issues/75). The default time to live is one day; keeping
results forever takes an explicit ``ttl_s=None``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from looplane import _codec
from looplane.errors import ConfigError, SerializationError, TaskTimeout

if TYPE_CHECKING:
    from datetime import datetime
    from types import TracebackType

__all__ = ["DEFAULT_RESULT_TTL_S", "ResultBackend", "TaskResult"]

DEFAULT_RESULT_TTL_S = 86_400.0

_VALUE_PATH = "result['value']"
# Ints below this in size are written as `repr` writes them, by both encoders.
_SMALL_INT = 1 << 62


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one attempt of a task.

    `attempt` counts from 1; ``max_retries`` is the number of retries the task was allowed
    after its first attempt. `will_retry` is True when another attempt follows this failed
    one, so the latest result with ``will_retry=False`` is the task's final outcome.
    `duration` is in seconds; the timestamps are timezone-aware UTC.
    """

    task_id: str
    func_name: str
    success: bool
    value: Any = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    attempt: int = 1
    max_retries: int = 0
    will_retry: bool = False
    duration: float = 0.0
    fetched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_retry(self) -> bool:
        """True for the second attempt and later."""
        return self.attempt > 1

    @property
    def is_final(self) -> bool:
        """True when no further attempt follows this one."""
        return not self.will_retry

    def to_bytes(self) -> bytes:
        """Encode the result for storage (once: the bytes are kept for later calls).

        Raises:
            SerializationError: `value` holds a type the codec cannot encode.
        """
        if self._encoded is None:
            text = self._usual_text()
            if text is None:
                text = self._text()
            object.__setattr__(self, "_encoded", text.encode("ascii"))
        assert self._encoded is not None
        return self._encoded

    def _text(self) -> str:
        # Written field by field: the keys are every init field, in field order (a test
        # checks it), as encoding them as one dict would write them, at half the cost.
        text_of, time_text = _codec.text_of, _codec.time_text
        return (
            f'{{"task_id":{text_of(self.task_id, "task_id")}'
            f',"func_name":{text_of(self.func_name, "func_name")}'
            f',"success":{text_of(self.success, "success")}'
            f',"value":{text_of(self.value, _VALUE_PATH)}'
            f',"error":{text_of(self.error, "error")}'
            f',"error_type":{text_of(self.error_type, "error_type")}'
            f',"traceback":{text_of(self.traceback, "traceback")}'
            f',"attempt":{text_of(self.attempt, "attempt")}'
            f',"max_retries":{text_of(self.max_retries, "max_retries")}'
            f',"will_retry":{text_of(self.will_retry, "will_retry")}'
            f',"duration":{text_of(self.duration, "duration")}'
            f',"fetched_at":{time_text(self.fetched_at, "fetched_at")}'
            f',"started_at":{time_text(self.started_at, "started_at", remember=False)}'
            f',"finished_at":{time_text(self.finished_at, "finished_at", remember=False)}}}'
        )

    def _usual_text(self) -> str | None:
        # The usual result (text ids, no error, plain counts and a finite duration) is
        # written without a call per field, in the same text as `_text`; any other returns
        # None. Exact type tests, because `text_of` writes a subclass's value differently.
        task_id, func_name, attempt, retries = (
            self.task_id,
            self.func_name,
            self.attempt,
            self.max_retries,
        )
        # Typed as object: the fields may hold anything a caller put there.
        success: object = self.success
        will_retry: object = self.will_retry
        if not (
            type(task_id) is str
            and type(func_name) is str
            and self.error is None
            and self.error_type is None
            and self.traceback is None
            and type(attempt) is int
            and type(retries) is int
            and -_SMALL_INT < attempt < _SMALL_INT
            and -_SMALL_INT < retries < _SMALL_INT
            and type(self.duration) is float
            and -math.inf < self.duration < math.inf
            and type(success) is bool
            and type(will_retry) is bool
        ):
            return None
        quote, time_text = _codec.quote, _codec.time_text
        return (
            f'{{"task_id":{quote(task_id)},"func_name":{quote(func_name)}'
            f',"success":{"true" if success else "false"}'
            f',"value":{_codec.text_of(self.value, _VALUE_PATH)}'
            ',"error":null,"error_type":null,"traceback":null'
            f',"attempt":{attempt!r},"max_retries":{retries!r}'
            f',"will_retry":{"true" if will_retry else "false"}'
            f',"duration":{self.duration!r}'
            f',"fetched_at":{time_text(self.fetched_at, "fetched_at")}'
            f',"started_at":{time_text(self.started_at, "started_at", remember=False)}'
            f',"finished_at":{time_text(self.finished_at, "finished_at", remember=False)}}}'
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskResult:
        """Decode a result written by `to_bytes`.

        Raises:
            SerializationError: The bytes are not an encoded result.
        """
        record = _codec.loads(data)
        if not isinstance(record, dict):
            raise SerializationError("stored result is not an object")
        try:
            return cls(**record)
        except TypeError as exc:
            raise SerializationError(f"stored result has bad fields: {exc}") from None


class ResultBackend(ABC):
    """Stores a `TaskResult` for every attempt and answers for it until it expires."""

    name: str = "results"

    @property
    def write_channel(self) -> object | None:
        """The single ordered writer this backend commits through, if it shares one.

        Backends that return the same channel commit writes in the order they were
        submitted, in as few transactions as possible: the orchestrator then submits a
        result and its ack together instead of waiting for one commit before the next.
        A backend that returns a channel must submit its write before its coroutine first
        suspends, so that submission order is call order.
        """
        return None

    @abstractmethod
    async def store(self, result: TaskResult) -> None:
        """Keep `result` for the backend's time to live.

        Raises:
            SerializationError: The result's value cannot be encoded; nothing is stored.
        """

    @abstractmethod
    async def results(self, *, limit: int | None = None) -> list[TaskResult]:
        """Every unexpired result, newest first (at most `limit`)."""

    @abstractmethod
    async def get(self, task_id: str) -> TaskResult | None:
        """The latest result of the task, or None if there is none (yet, or any more)."""

    @abstractmethod
    async def attempts(self, task_id: str) -> list[TaskResult]:
        """Every unexpired result of the task, first attempt first."""

    @abstractmethod
    async def wait(self, task_id: str, *, timeout: float = 30.0) -> TaskResult:
        """Wait for the task's final result (one with ``will_retry=False``) and return it.

        A result that is already stored returns at once. Cancelling the wait is safe.

        Raises:
            TaskTimeout: No final result arrived within `timeout` seconds.
        """

    async def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release the backend's resources."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def check_ttl(ttl_s: float | None) -> None:
    """Refuse a time to live that is not a positive finite number of seconds (or None)."""
    if ttl_s is not None and not 0 < ttl_s < math.inf:
        raise ConfigError(
            f"result ttl_s must be a positive number of seconds, or None to keep results "
            f"forever; got {ttl_s!r}"
        )


def check_limit(limit: int | None) -> None:
    """Refuse a negative listing limit."""
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be None or at least 0; got {limit!r}")


def check_timeout(timeout: float) -> None:
    """Refuse a wait timeout that is not a number of seconds >= 0 (waits are bounded)."""
    if timeout is None:
        raise ConfigError(
            "timeout=None is not allowed: waits are bounded; pass a number of "
            "seconds (30 by default)"
        )
    if not timeout >= 0:
        raise ConfigError(f"timeout must be a number of seconds of at least 0; got {timeout!r}")


def timeout_error(task_id: str, timeout: float) -> TaskTimeout:
    """The error of a wait that ran out."""
    return TaskTimeout(
        f"no final result for task {task_id} within {timeout:g} s",
        task_id=task_id,
        timeout_s=timeout,
    )
