"""Task functions, their registry, and `Task`, one queued call of a task function.

A task function is registered under a name. The name, not the import path, travels with each
task, so a producer script run as ``__main__`` and a worker that imported the module agree on
it (https://github.com/coleifer/huey/issues/436 shows what path-derived names break).
"""

from __future__ import annotations

import contextvars
import inspect
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from looplane.errors import ConfigError, InvalidArguments, TaskNotFound

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = [
    "DEFAULT_RETRIES",
    "Backoff",
    "BackoffKind",
    "Task",
    "TaskContext",
    "TaskFunction",
    "TaskRegistry",
    "current_task",
    "register_task",
    "registry",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_RETRIES = 3
MAX_NAME_LENGTH = 200
MAX_TIMEOUT_S = 365 * 86_400.0


class BackoffKind(StrEnum):
    """How the delay before a retry grows with the attempt number."""

    NONE = "none"
    FIXED = "fixed"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before each retry of a failed attempt.

    ``exponential`` waits ``base_s * 2 ** (attempt - 1)`` seconds, capped at ``max_s``;
    ``fixed`` always waits ``base_s``; ``none`` retries at once. With ``jitter`` the delay
    is drawn uniformly from its upper half, so tasks that failed together do not all
    retry in the same instant. Jitter is on by default for ``exponential`` only: a
    ``fixed`` delay means what it says.
    """

    kind: BackoffKind = BackoffKind.EXPONENTIAL
    base_s: float = 1.0
    max_s: float = 300.0
    jitter: bool | None = None

    def __post_init__(self) -> None:
        # A plain string kind would fail every `is` check in `delay_s` and silently act as
        # exponential, so it is turned into the enum member here.
        kind: object = self.kind
        if not isinstance(kind, BackoffKind):
            object.__setattr__(self, "kind", _backoff_kind(kind))
        if self.jitter is None:
            object.__setattr__(self, "jitter", self.kind is BackoffKind.EXPONENTIAL)
        # Written as `not >=` so that NaN, which compares false with everything, is refused.
        if not (self.base_s >= 0 and self.max_s >= 0):
            raise ConfigError(
                f"backoff delays must be >= 0, got base_s={self.base_s} max_s={self.max_s}"
            )

    @classmethod
    def parse(cls, value: Backoff | str) -> Backoff:
        """Return `value` as a `Backoff`; a string names a kind with default delays."""
        if isinstance(value, Backoff):
            return value
        return cls(kind=_backoff_kind(value))

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before the attempt after `attempt` (which counts from 1)."""
        if self.kind is BackoffKind.NONE:
            return 0.0
        if self.kind is BackoffKind.FIXED:
            delay = min(self.base_s, self.max_s)
        else:
            delay = min(self.base_s * 2.0 ** min(attempt - 1, 64), self.max_s)
        # An infinite or astronomically long delay cannot be stored as a due time (storage
        # raises OverflowError), so no policy waits longer than the longest task timeout.
        delay = min(delay, MAX_TIMEOUT_S)
        if self.jitter:
            delay = random.uniform(delay / 2, delay)  # spreads load; no secrecy needed
        return delay

    def to_dict(self) -> dict[str, Any]:
        """The backoff as plain JSON types."""
        return {
            "kind": self.kind.value,
            "base_s": self.base_s,
            "max_s": self.max_s,
            "jitter": self.jitter,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backoff:
        """Rebuild a backoff written by `to_dict`."""
        return cls(
            kind=BackoffKind(data["kind"]),
            base_s=float(data["base_s"]),
            max_s=float(data["max_s"]),
            jitter=bool(data["jitter"]),
        )


def _backoff_kind(value: object) -> BackoffKind:
    if isinstance(value, str) and value in BackoffKind.__members__.values():
        return BackoffKind(value)
    kinds = ", ".join(k.value for k in BackoffKind)
    raise ConfigError(f"backoff {value!r} is not one of: {kinds}")


@dataclass(frozen=True, slots=True)
class TaskFunction:
    """A registered task function and its options."""

    name: str
    func: Callable[..., Any]
    retries: int | None = None
    timeout: float | None = None
    backoff: Backoff | None = None

    @property
    def module(self) -> str:
        """The module the function was defined in."""
        return str(getattr(self.func, "__module__", "?"))

    is_async: bool = field(init=False)
    """True for ``async def`` functions; plain functions run in a thread pool."""
    signature: inspect.Signature | None = field(init=False, repr=False, compare=False)
    """The function's signature, to check a call's arguments at send; None if unreadable."""
    _arity: int | None = field(init=False, repr=False, compare=False)
    # How many positional arguments fit the signature when it has only plain required
    # parameters (the usual case): such a call is checked without binding it.

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.func))
        try:
            signature: inspect.Signature | None = inspect.signature(self.func)
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            signature = None
        object.__setattr__(self, "signature", signature)
        object.__setattr__(self, "_arity", _plain_arity(signature))

    def check_call(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Refuse arguments the function could not be called with.

        Raises:
            InvalidArguments: The arguments do not fit the signature; the message says why.
        """
        if self.signature is None or (not kwargs and len(args) == self._arity):
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"task {self.name!r}: {exc}", name=self.name) from None


def _plain_arity(signature: inspect.Signature | None) -> int | None:
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if signature is None:
        return None
    for parameter in signature.parameters.values():
        if parameter.kind not in plain or parameter.default is not inspect.Parameter.empty:
            return None
    return len(signature.parameters)


class TaskRegistry:
    """Task functions by name. The module-level `registry` is the one workers use."""

    def __init__(self) -> None:
        self._by_name: dict[str, TaskFunction] = {}
        self._by_func: dict[Callable[..., Any], TaskFunction] = {}

    def add(self, entry: TaskFunction) -> None:
        """Register `entry`, refusing a second, different function under the same name.

        The same function loaded twice (as ``__main__`` and by import, or after a reload)
        replaces the first registration.

        Raises:
            ConfigError: Another function already holds the name.
        """
        old = self._by_name.get(entry.name)
        if old is not None and not _same_source(old.func, entry.func):
            raise ConfigError(
                f"task name {entry.name!r} is already registered by "
                f"{old.module}.{_qualname(old.func)}; cannot register "
                f"{entry.module}.{_qualname(entry.func)} under it (pass name=...)"
            )
        if old is not None:
            # The old function object stays usable: code that imported it (a script run as
            # __main__ that is also imported by name) still sends under the same name.
            self._by_func[old.func] = entry
        self._by_name[entry.name] = entry
        self._by_func[entry.func] = entry

    def get(self, name: str) -> TaskFunction:
        """The task function registered under `name`.

        Raises:
            TaskNotFound: No function is registered under `name`.
        """
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise TaskNotFound(f"task {name!r} is not registered", name=name) from None

    def lookup(self, func: Callable[..., Any] | str) -> TaskFunction:
        """The entry for a registered function object or name.

        Raises:
            TaskNotFound: The function or name is not registered.
        """
        if isinstance(func, str):
            return self.get(func)
        entry = self._by_func.get(func)
        if entry is None:
            qualname = _qualname(func)
            raise TaskNotFound(
                f"{qualname} is not a registered task function (decorate it with @register_task)",
                name=qualname,
            )
        return entry

    def remove(self, name: str) -> None:
        """Forget the task function registered under `name`, if any."""
        entry = self._by_name.pop(name, None)
        if entry is not None:
            self._forget_func(entry)

    def _forget_func(self, entry: TaskFunction) -> None:
        # One function may be registered under several names; the function-to-entry map
        # holds only the latest, so it is dropped only if it still points at `entry`.
        if self._by_func.get(entry.func) is entry:
            del self._by_func[entry.func]

    def __iter__(self) -> Iterator[TaskFunction]:
        return iter(sorted(self._by_name.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


def _same_source(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if a is b:
        return True
    if code_a is None or code_b is None:
        return False
    return bool(code_a.co_filename == code_b.co_filename and _qualname(a) == _qualname(b))


def _qualname(func: object) -> str:
    # functools.partial objects and callable instances have no __qualname__.
    return str(getattr(func, "__qualname__", repr(func)))


registry = TaskRegistry()


@overload
def register_task(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def register_task(
    *,
    name: str | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    backoff: Backoff | str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def register_task(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    backoff: Backoff | str | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a function as a task function, bare (``@register_task``) or with options.

    The function is returned unchanged, so it can still be called directly. Its name in the
    queue is `name`, or else the function's own ``__name__``. `retries`, `timeout` (seconds)
    and `backoff` are defaults that each ``send`` may override.

    Raises:
        ConfigError: The name is taken by another function, or an option is out of range.
    """
    _check_limits(retries, timeout)
    if name is not None:
        _check_name(name)
    policy = Backoff.parse(backoff) if backoff is not None else None

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if not callable(fn):
            raise ConfigError(f"@register_task needs a function, got {type(fn).__name__}")
        task_name = name if name is not None else getattr(fn, "__name__", None)
        if task_name is None:
            raise ConfigError(f"{fn!r} has no __name__; pass name=... to @register_task")
        _check_name(task_name)
        entry = TaskFunction(
            name=task_name, func=fn, retries=retries, timeout=timeout, backoff=policy
        )
        registry.add(entry)
        return fn

    if func is not None:
        return decorate(func)
    return decorate


def _check_name(name: object) -> None:
    # The serializer refuses longer names when decoding, so a longer one registered here
    # would be sent fine and then fail on every worker.
    if not isinstance(name, str) or not name:
        raise ConfigError(f"task name must be a non-empty string, got {name!r}")
    if not is_text(name):
        raise ConfigError(f"task name {name!r} holds a lone surrogate, which is not text")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"task name is {len(name)} characters long (at most {MAX_NAME_LENGTH})")


def is_text(value: str) -> bool:
    r"""True if `value` can be written as UTF-8, that is, holds no lone surrogate.

    Task names and ids go into logs, dead-letter reasons and storage keys, which are UTF-8;
    a lone surrogate (JSON can spell one as a ``\u`` escape) would make every such write fail.
    """
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_queue(queue: object) -> str:
    """`queue` if it can name a queue: text that storage keys and logs can hold.

    Raises:
        ConfigError: `queue` is not a str, or holds a lone surrogate; the message shows it.
    """
    if not isinstance(queue, str) or not is_text(queue):
        raise ConfigError(f"queue must be text without lone surrogates, got {queue!r}")
    return queue


def _check_limits(retries: object, timeout: object) -> None:
    # bool is an int subclass, but retries=True is a mistake, not one retry.
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise ConfigError(f"retries must be an int >= 0, got {retries!r}")
    # Written as `not >` so that NaN is refused too.
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if timeout is not None and timeout > MAX_TIMEOUT_S:
        raise ConfigError(
            f"timeout must be at most {MAX_TIMEOUT_S:g} seconds (a year), got "
            f"{timeout!r}; leave it unset for no limit"
        )


# The random part keeps 74 of its 80 bits: the version nibble and the variant bits are fixed.
_RANDOM_BITS = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
_LAYOUT_BITS = (0x7 << 76) | (0x2 << 62)  # version 7, RFC 4122 variant


def new_task_id() -> str:
    """A fresh task id: 32 hex digits of a time-ordered UUID (version 7 layout).

    The first 48 bits are the creation time in milliseconds and the other 74 free bits are
    random. Ids sent close together sort close together, so storage that keys records by
    task id touches a few B-tree pages per commit instead of one page per task.
    """
    noise = int.from_bytes(os.urandom(10), "big") & _RANDOM_BITS
    return f"{(time.time_ns() // 1_000_000) << 80 | _LAYOUT_BITS | noise:032x}"


def new_task_ids(count: int) -> list[str]:
    """`count` fresh task ids in `new_task_id`'s layout, from one read of the random source."""
    base = (time.time_ns() // 1_000_000) << 80 | _LAYOUT_BITS
    noise = os.urandom(10 * count)
    return [
        f"{base | (int.from_bytes(noise[i : i + 10], 'big') & _RANDOM_BITS):032x}"
        for i in range(0, 10 * count, 10)
    ]


@dataclass(slots=True)
class Task:
    """One queued call of a task function.

    `attempt` is 0 until a consumer receives the task; the consumer then sets it to the
    number of this delivery's attempt, counted from 1. ``max_retries`` retries follow the
    first attempt, so a task runs at most ``max_retries + 1`` times.
    """

    id: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_retries: int = DEFAULT_RETRIES
    timeout: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    queue: str = "default"
    priority: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    attempt: int = 0
    fetched_at: datetime | None = None

    @property
    def max_attempts(self) -> int:
        """How many attempts the task may use in all."""
        return self.max_retries + 1

    @property
    def is_retry(self) -> bool:
        """True once the task is on its second attempt or later."""
        return self.attempt > 1


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running task may read about itself through `current_task()`."""

    task_id: str
    name: str
    attempt: int
    max_retries: int

    @property
    def is_retry(self) -> bool:
        """True on the second attempt and later."""
        return self.attempt > 1

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now will not be retried."""
        return self.attempt >= self.max_retries + 1


# The running task's context, or the task itself: the orchestrator sets the task, and its
# context is built only when the task function asks for it (most never do).
_current: contextvars.ContextVar[TaskContext | Task] = contextvars.ContextVar("looplane_task")


def current_task() -> TaskContext:
    """The context of the task running in this coroutine or thread.

    Raises:
        LookupError: Called outside a running task.
    """
    try:
        value = _current.get()
    except LookupError:
        raise LookupError("current_task() was called outside a running task") from None
    if isinstance(value, TaskContext):
        return value
    return TaskContext(
        task_id=value.id, name=value.name, attempt=value.attempt, max_retries=value.max_retries
    )


def set_current_task(context: TaskContext) -> contextvars.Token[TaskContext | Task]:
    """Make `context` the current task for this coroutine."""
    return _current.set(context)


def _enter_task(task: Task) -> None:
    """Make `task` the current task for this coroutine (used by the orchestrator)."""
    _current.set(task)
