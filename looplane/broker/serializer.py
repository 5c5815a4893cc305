"""Turning a `Task` into bytes and back.

`task_to_dict` and `dict_to_task` map a task to plain Python values and back; a `Serializer`
turns those into bytes. `dict_to_task` checks every field, because storage may hand back
bytes that no Looplane producer wrote (a corrupt record, another program, an older version),
and a bad record must become a clear error, never a crashed worker.
"""

from __future__ import annotations

import codecs
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from looplane import _codec
from looplane.errors import ConfigError, SerializationError
from looplane.task import (
    MAX_NAME_LENGTH,
    MAX_TIMEOUT_S,
    Backoff,
    BackoffKind,
    Task,
    _check_limits,
    is_text,
)

__all__ = ["FORMAT_VERSION", "JSONSerializer", "Serializer", "dict_to_task", "task_to_dict"]

FORMAT_VERSION = 1


def task_to_dict(task: Task) -> dict[str, Any]:
    """The task as a dict of plain values (arguments are left as they are)."""
    return {
        "v": FORMAT_VERSION,
        "id": task.id,
        "name": task.name,
        "args": list(task.args),
        "kwargs": task.kwargs,
        "max_retries": task.max_retries,
        "timeout": task.timeout,
        "backoff": task.backoff.to_dict(),
        "queue": task.queue,
        "priority": task.priority,
        "created_at": task.created_at.isoformat(),
    }


def dict_to_task(data: Any) -> Task:
    """Rebuild a task from `task_to_dict` output, checking every field.

    Raises:
        SerializationError: A field is missing or has the wrong type; the message names it.
    """
    task = _usual_task(data)
    if task is not None:
        return task
    if not isinstance(data, dict):
        raise SerializationError(f"task record is a {type(data).__name__}, not an object")
    _check_version(data)
    try:
        return Task(
            id=_text(data, "id"),
            name=_name(data),
            args=tuple(_field(data, "args", list)),
            kwargs=_kwargs(data),
            max_retries=_limit("max_retries", _field(data, "max_retries", int)),
            timeout=_limit("timeout", _optional_number(data, "timeout")),
            backoff=_backoff(data),
            queue=_text(data, "queue"),
            priority=_field(data, "priority", int),
            created_at=_created_at(data),
        )
    except SerializationError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"task record is malformed: {exc!r}") from None


def _usual_task(data: Any) -> Task | None:
    """The task of a record that passes every check at a glance, else None.

    Almost every record is one a Looplane producer wrote, so the checks `dict_to_task` makes
    one field at a time are made here in one expression of exact type tests (ASCII text is
    always valid text). Any record that fails one, even harmlessly (an int subclass, a
    non-ASCII name), takes the field-by-field path, which accepts or names the problem.
    """
    if type(data) is not dict:
        return None
    try:
        task_id, name, queue, args = data["id"], data["name"], data["queue"], data["args"]
        kwargs, backoff, created = data["kwargs"], data["backoff"], data["created_at"]
        retries, timeout, priority = data["max_retries"], data["timeout"], data["priority"]
    except KeyError:
        return None
    version = data.get("v", FORMAT_VERSION)
    if not (
        type(version) is int
        and version == FORMAT_VERSION
        and type(task_id) is str
        and task_id.isascii()
        and type(name) is str
        and name.isascii()
        and 0 < len(name) <= MAX_NAME_LENGTH
        and type(args) is list
        and type(kwargs) is dict
        and (not kwargs or all(type(key) is str for key in kwargs))
        and type(retries) is int
        and retries >= 0
        and (timeout is None or (type(timeout) in (int, float) and 0 < timeout <= MAX_TIMEOUT_S))
        and type(backoff) is dict
        and type(queue) is str
        and queue.isascii()
        and type(priority) is int
        and type(created) is str
    ):
        return None
    policy = _backoff(data)
    created_at = _read_time(created)
    if created_at is None:
        return None
    return Task(
        id=task_id,
        name=name,
        args=tuple(args),
        kwargs=kwargs,
        max_retries=retries,
        timeout=None if timeout is None else float(timeout),
        backoff=policy,
        queue=queue,
        priority=priority,
        created_at=created_at,
    )


# The tasks of one send share their `created_at`, so a received batch repeats one text: the
# last text read and its datetime (immutable, so tasks may share it) are kept. One tuple,
# replaced whole, so threads never see half an update.
_last_read: tuple[str, datetime | None] = ("", None)


def _read_time(text: str) -> datetime | None:
    global _last_read
    last_text, last = _last_read
    if text == last_text:
        return last
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    _last_read = (text, value)
    return value


def _field(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise SerializationError(f"task record has no {key!r} field")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SerializationError(
            f"task field {key!r} is a {type(value).__name__}, expected {kind.__name__}"
        )
    return value


def _text(data: dict[str, Any], key: str) -> str:
    value: str = _field(data, key, str)
    if not is_text(value):
        raise SerializationError(f"task field {key!r} holds a lone surrogate, which is not text")
    return value


def _limit(key: str, value: Any) -> Any:
    # The same ranges `send` enforces: a negative retry count or timeout, or a NaN one, from
    # bytes no producer checked, would otherwise reach the retry and timeout arithmetic.
    try:
        if key == "timeout":
            _check_limits(None, value)
        else:
            _check_limits(value, None)
    except ConfigError as exc:
        raise SerializationError(f"task field {key!r} is out of range: {exc}") from None
    return value


def _check_version(data: dict[str, Any]) -> None:
    # A record from a newer Looplane may mean something else by the same fields, so it is
    # refused rather than guessed at. Records without "v" are read as version 1.
    version = data.get("v", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        raise SerializationError(
            f"task record has format version {version!r}; this Looplane reads version "
            f"{FORMAT_VERSION}"
        )


def _kwargs(data: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[Any, Any] = _field(data, "kwargs", dict)
    for key in kwargs:
        if type(key) is not str:
            raise SerializationError(f"task field 'kwargs' has a non-string key {key!r}")
    return kwargs


# Nearly every task carries one of a few backoff policies, so checked ones are kept by their
# exact field values (types included: True must not pass for 1).
_BACKOFFS: dict[tuple[Any, ...], Backoff] = {}
_MAX_CACHED_BACKOFFS = 256


def _backoff(data: dict[str, Any]) -> Backoff:
    raw: dict[str, Any] = _field(data, "backoff", dict)
    get = raw.get
    kind, base_s, max_s, jitter = get("kind"), get("base_s"), get("max_s"), get("jitter")
    key = (kind, type(kind), base_s, type(base_s), max_s, type(max_s), jitter, type(jitter))
    cached = _BACKOFFS.get(key)
    if cached is not None and len(raw) == 4:
        return cached
    policy = _check_backoff(raw)
    if len(_BACKOFFS) < _MAX_CACHED_BACKOFFS:
        _BACKOFFS[key] = policy
    return policy


def _check_backoff(raw: dict[str, Any]) -> Backoff:
    kinds = [kind.value for kind in BackoffKind]
    if raw.get("kind") not in kinds:
        raise SerializationError(
            f"task field 'backoff' has kind {raw.get('kind')!r}, not one of: {', '.join(kinds)}"
        )
    for key in ("base_s", "max_s"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SerializationError(
                f"task field 'backoff' has {key}={value!r}, which is not a number"
            )
    if not isinstance(raw.get("jitter"), bool):
        raise SerializationError(
            f"task field 'backoff' has jitter={raw.get('jitter')!r}, which is not a boolean"
        )
    try:
        return Backoff.from_dict(raw)
    except ConfigError as exc:
        raise SerializationError(f"task field 'backoff' is invalid: {exc}") from None


def _created_at(data: dict[str, Any]) -> datetime:
    text: str = _field(data, "created_at", str)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise SerializationError(
            f"task field 'created_at' is {text[:40]!r}, not an ISO 8601 datetime"
        ) from None


def _name(data: dict[str, Any]) -> str:
    name = _text(data, "name")
    if not name:
        raise SerializationError("task field 'name' is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise SerializationError(
            f"task field 'name' is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
        )
    return name


def _optional_number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SerializationError(f"task field {key!r} is a {type(value).__name__}, not a number")
    return float(value)


def _task_text(task: Task) -> str:
    """The JSON text of `task_to_dict` with encoded arguments, written field by field.

    It is the text that encoding the dict writes, at half the cost: a worker pays it for
    every task it sends.
    """
    text_of = _codec.text_of
    ident, name, queue = task.id, task.name, task.queue
    if not (
        type(ident) is type(name) is type(queue) is str
        and ident.isascii()
        and name.isascii()
        and queue.isascii()
    ):
        _check_text_fields(task)
    args, kwargs = task.args, task.kwargs
    if type(args) is tuple and not args:
        args_text = "[]"
    else:
        args_text = _codec.dump_text(_codec.encode(list(args), "args"))
    if type(kwargs) is dict and not kwargs:
        kwargs_text = "{}"
    else:
        kwargs_text = _codec.dump_text(_codec.encode(kwargs, "kwargs"))
    return (
        f'{{"v":{FORMAT_VERSION},"id":{text_of(task.id, "id")}'
        f',"name":{text_of(task.name, "name")},"args":{args_text},"kwargs":{kwargs_text}'
        f"{_options_text(task)}"
    )


def _check_text_fields(task: Task) -> None:
    # Decoding refuses a lone surrogate in these (`_text`): a task that could not be read back
    # is refused at send time instead of being stored and set aside by the worker.
    for field, value in (("id", task.id), ("name", task.name), ("queue", task.queue)):
        if type(value) is str and not is_text(value):
            raise SerializationError(f"task field {field!r} holds a lone surrogate, not text")


# The fields after the arguments, as the last task wrote them, with the objects they were
# written from. The tasks of one send share those objects (one options tuple and one send
# time per task function), so most tasks reuse the text. Identity, not equality: 3 and 3.0
# are equal but written differently. All are immutable, and the tuple keeps them alive.
_last_options: tuple[Any, ...] = (*(object() for _ in range(6)), "")


def _options_text(task: Task) -> str:
    global _last_options
    retries, timeout, backoff, queue, priority, created_at = (
        task.max_retries,
        task.timeout,
        task.backoff,
        task.queue,
        task.priority,
        task.created_at,
    )
    last = _last_options
    if (
        retries is last[0]
        and timeout is last[1]
        and backoff is last[2]
        and queue is last[3]
        and priority is last[4]
        and created_at is last[5]
    ):
        text: str = last[6]
        return text
    text_of = _codec.text_of
    text = (
        f',"max_retries":{text_of(retries, "max_retries")}'
        f',"timeout":{text_of(timeout, "timeout")},"backoff":{_backoff_text(backoff)}'
        f',"queue":{text_of(queue, "queue")},"priority":{text_of(priority, "priority")}'
        f',"created_at":{_time_text(created_at)}}}'
    )
    _last_options = (retries, timeout, backoff, queue, priority, created_at, text)
    return text


# The last `created_at` written and its text, by identity: the tasks of one send share it.
_last_written: tuple[datetime | None, str] = (None, "")


def _time_text(value: datetime) -> str:
    global _last_written
    last, text = _last_written
    if value is last:
        return text
    text = _codec.text_of(value.isoformat(), "created_at")
    _last_written = (value, text)
    return text


# The text of each backoff policy in use, by identity (the entry keeps the policy alive, so
# its id is not reused). Equal policies can differ in text (base_s 1 or 1.0), so equality
# is not enough; nearly every task carries one of a few policy objects.
_BACKOFF_TEXTS: dict[int, tuple[Backoff, str]] = {}


def _backoff_text(backoff: Backoff) -> str:
    cached = _BACKOFF_TEXTS.get(id(backoff))
    if cached is not None and cached[0] is backoff:
        return cached[1]
    text = _codec.dump_text(backoff.to_dict())
    if len(_BACKOFF_TEXTS) < _MAX_CACHED_BACKOFFS:
        _BACKOFF_TEXTS[id(backoff)] = (backoff, text)
    return text


class Serializer(ABC):
    """Turns tasks into bytes for storage and back."""

    @abstractmethod
    def serialize(self, task: Task) -> bytes:
        """Encode `task`.

        Raises:
            SerializationError: An argument has a type this serializer cannot encode; the
                error names the argument (``args[1]``, ``kwargs['when']``) and its type.
        """

    @abstractmethod
    def deserialize(self, data: bytes) -> Task:
        """Decode bytes written by `serialize`.

        Raises:
            SerializationError: The bytes do not hold a valid task.
        """


class JSONSerializer(Serializer):
    """JSON, extended with tagged tuple, datetime, date, UUID, Decimal and bytes values.

    Arguments of any other type are refused at `serialize` time, so nothing is stored that
    a worker could not rebuild exactly.
    """

    def __init__(self, encoding: str = "utf-8") -> None:
        """Write and read JSON text in `encoding`.

        Raises:
            ConfigError: Python does not know `encoding`.
        """
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(f"unknown text encoding {encoding!r}") from None
        self.encoding = encoding

    def serialize(self, task: Task) -> bytes:
        """Encode `task` as JSON text in `encoding`."""
        try:
            text = _task_text(task)
        except RecursionError:
            raise SerializationError("task arguments are nested too deeply to encode") from None
        except ValueError as exc:
            # Only reachable when sys.set_int_max_str_digits() was lowered below the digits
            # of an int argument that the codec leaves untagged.
            raise SerializationError(f"task cannot be encoded: {exc}") from None
        return text.encode(self.encoding)

    # Limitation: a record with a duplicate key is read with its last value, as json.loads
    # reads it, rather than refused; another program could hide a field that way.
    # Lifted by: an object_pairs_hook that refuses duplicates, once its cost on every decoded
    # object is measured acceptable.
    def deserialize(self, data: bytes) -> Task:
        """Decode a task written by `serialize`."""
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise SerializationError(f"task bytes are not valid {self.encoding}: {exc}") from None
        return dict_to_task(_codec.loads(text))
