"""Producers: the sending side of a queue."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from looplane.broker.serializer import JSONSerializer, Serializer
from looplane.errors import (
    BrokerError,
    ConfigError,
    InvalidArguments,
    SerializationError,
    TaskNotFound,
)
from looplane.storage.base import NewTask, StorageBackend
from looplane.task import (
    DEFAULT_RETRIES,
    Backoff,
    Task,
    TaskFunction,
    _check_limits,
    check_queue,
    new_task_id,
    new_task_ids,
    registry,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "Call", "Producer", "StorageProducer"]

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

# Arguments whose top-level sizes add up past this are encoded in a thread, so one big send
# does not stall every other coroutine (https://github.com/celery/celery/issues/318).
_ENCODE_IN_THREAD_AT = 256 * 1024

Call = tuple[Callable[..., Any] | str, Sequence[Any], Mapping[str, Any]]
"""One call in a `send_batch` list: ``(func, args, kwargs)``."""


class Producer(ABC):
    """Sends calls of task functions to a queue.

    Subclasses implement `send_batch`; they build each task with `_create_task`, which
    applies the task function's registered options and checks the limits. The defaults
    below apply where neither the send nor the task function sets an option.
    """

    retries: int = DEFAULT_RETRIES
    timeout: float | None = None
    backoff: Backoff = Backoff()

    async def send(
        self,
        func: Callable[..., Any] | str,
        *args: Any,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | str | None = None,
        **kwargs: Any,
    ) -> Task:
        """Send one call of `func` and return the stored task.

        `func` is a registered task function or the name of one (a name need not be
        registered in the sending process). `retries` is the number of retries after the
        first attempt (default: the task function's option, else 3); `timeout` is the
        longest an attempt may run, in seconds; `backoff` sets the delay between attempts.
        The task is durable once this returns. A task function parameter named `retries`,
        `timeout` or `backoff` can be passed through `send_batch`.

        Raises:
            SerializationError: An argument cannot be encoded; nothing is stored.
            TaskNotFound: `func` is a function that was never registered.
            ConfigError: `retries` or `timeout` is out of range.
        """
        tasks = await self.send_batch(
            [(func, args, kwargs)], retries=retries, timeout=timeout, backoff=backoff
        )
        return tasks[0]

    @abstractmethod
    async def send_batch(
        self,
        calls: Iterable[Call],
        *,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | str | None = None,
    ) -> list[Task]:
        """Send every ``(func, args, kwargs)`` call in one write: all are stored, or none."""

    def _create_task(
        self,
        func: Callable[..., Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | str | None = None,
    ) -> Task:
        """Build the `Task` for one call, with send options over registered options."""
        known = self._options(func, args, kwargs, retries, timeout, backoff)
        return known.task(new_task_id(), args, kwargs, datetime.now(UTC))

    def _create_tasks(
        self,
        calls: Sequence[Any],
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | str | None = None,
    ) -> list[Task]:
        """Build the tasks of a batch as `_create_task` builds each one.

        The tasks share their send time, and each task function's options are resolved once
        per batch, not once per call: most batches repeat one function.

        Raises:
            SerializationError, InvalidArguments: A call is refused; the message names its
                position in a batch of several.
        """
        if len(calls) == 1:
            func, args, kwargs = _unpack(calls[0])
            return [self._create_task(func, args, kwargs, retries, timeout, backoff)]
        created_at = datetime.now(UTC)
        ids = new_task_ids(len(calls))
        options: dict[Any, _Options] = {}
        tasks: list[Task] = []
        try:
            for call in calls:
                func, args, kwargs = _unpack(call)
                known = options.get(func)
                if known is None:
                    known = options[func] = self._options(
                        func, args, kwargs, retries, timeout, backoff
                    )
                elif known.entry is not None:
                    known.entry.check_call(args, kwargs)
                tasks.append(known.task(ids[len(tasks)], args, kwargs, created_at))
        except (SerializationError, InvalidArguments) as exc:
            if len(calls) == 1:
                raise
            raise _in_batch(exc, len(tasks)) from None
        return tasks

    def _options(
        self,
        func: Callable[..., Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        retries: int | None,
        timeout: float | None,
        backoff: Backoff | str | None,
    ) -> _Options:
        """Check one call and resolve its options: send options over registered options."""
        _check_limits(retries, timeout)
        name, entry = _resolve(func)
        if entry is not None:
            entry.check_call(args, kwargs)
        if retries is None:
            retries = entry.retries if entry and entry.retries is not None else self.retries
        if timeout is None:
            timeout = entry.timeout if entry and entry.timeout is not None else self.timeout
        if backoff is not None:
            policy = Backoff.parse(backoff)
        else:
            policy = entry.backoff if entry and entry.backoff else self.backoff
        return _Options(name, entry, retries, timeout, policy)

    async def close(self) -> None:  # noqa: B027 - producers without resources need nothing
        """Stop sending; further sends raise `BrokerError`."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Options(NamedTuple):
    """What every call of one task function in a send shares."""

    name: str
    entry: TaskFunction | None
    retries: int
    timeout: float | None
    backoff: Backoff

    def task(
        self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any], created_at: datetime
    ) -> Task:
        """The task of one call with these options."""
        return Task(
            id=task_id,
            name=self.name,
            args=tuple(args),
            kwargs=dict(kwargs),
            max_retries=self.retries,
            timeout=self.timeout,
            backoff=self.backoff,
            created_at=created_at,
        )


def _resolve(func: Callable[..., Any] | str) -> tuple[str, Any]:
    if isinstance(func, str):
        if not func:
            raise ConfigError("task name must not be empty")
        try:
            entry = registry.get(func)
        except TaskNotFound:
            return func, None
        return entry.name, entry
    entry = registry.lookup(func)
    return entry.name, entry


def _unpack(call: Any) -> Call:
    if not isinstance(call, tuple | list) or len(call) != 3:
        raise ConfigError(f"send_batch takes (func, args, kwargs) tuples, got {call!r:.80}")
    return call[0], call[1], call[2]


def _in_batch(exc: SerializationError | InvalidArguments, index: int) -> Exception:
    """`exc` again, its message prefixed with the position of its call in the batch."""
    if isinstance(exc, SerializationError):
        return SerializationError(
            f"call {index} of the batch: {exc}", path=exc.path, type_name=exc.type_name
        )
    return InvalidArguments(f"call {index} of the batch: {exc}", name=exc.name)


def _rough_size(task: Task) -> int:
    if not task.args and not task.kwargs:
        return 0
    sized = [*task.args, *task.kwargs.values()]
    return sum(len(v) for v in sized if isinstance(v, str | bytes | list | dict | tuple))


class StorageProducer(Producer):
    """Sends tasks into a `StorageBackend`.

    Payloads larger than `max_payload_bytes` (16 MiB by default) are refused at send time
    with a `SerializationError` that names the limit.
    """

    def __init__(
        self,
        storage: StorageBackend,
        *,
        serializer: Serializer | None = None,
        queue: str = "default",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retries: int = DEFAULT_RETRIES,
        timeout: float | None = None,
        backoff: Backoff | str | None = None,
    ) -> None:
        _check_limits(retries, timeout)
        self.retries = retries
        self.timeout = timeout
        self.backoff = Backoff.parse(backoff) if backoff is not None else Backoff()
        self.storage = storage
        self.serializer = serializer or JSONSerializer()
        self.queue = check_queue(queue)
        self.max_payload_bytes = max_payload_bytes
        self._closed = False

    async def send_batch(
        self,
        calls: Iterable[Call],
        *,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | str | None = None,
    ) -> list[Task]:
        """Send every call in one storage write; see `Producer.send` for the options."""
        if self._closed:
            raise BrokerError("producer is closed")
        tasks = self._create_tasks(list(calls), retries, timeout, backoff)
        for task in tasks:
            task.queue = self.queue
        if sum(_rough_size(t) for t in tasks) > _ENCODE_IN_THREAD_AT:
            records = await asyncio.to_thread(self._encode_all, tasks)
        else:
            records = self._encode_all(tasks)
        await self.storage.enqueue(records)
        return tasks

    def _encode_all(self, tasks: list[Task]) -> list[NewTask]:
        # A loop, not a comprehension: on failure, the records made so far count the call.
        records: list[NewTask] = []
        try:
            for task in tasks:
                records.append(self._encode(task))  # noqa: PERF401 - see above
        except SerializationError as exc:
            if len(tasks) == 1:
                raise
            raise _in_batch(exc, len(records)) from None
        return records

    def _encode(self, task: Task) -> NewTask:
        payload = self.serializer.serialize(task)
        if len(payload) > self.max_payload_bytes:
            raise SerializationError(
                f"task {task.name!r} encodes to {len(payload)} bytes, over the limit of "
                f"{self.max_payload_bytes} bytes (raise max_payload_bytes to allow it)"
            )
        return NewTask(
            task_id=task.id,
            payload=payload,
            max_attempts=task.max_attempts,
            timeout_s=task.timeout,
            queue=task.queue,
            priority=task.priority,
        )

    async def close(self) -> None:
        """Stop sending. The storage stays open: whoever created it closes it."""
        self._closed = True
