"""Tests for turning tasks into bytes and back (`looplane.broker.serializer`)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looplane import _codec
from looplane.broker import StorageConsumer, StorageProducer
from looplane.broker.serializer import (
    FORMAT_VERSION,
    JSONSerializer,
    dict_to_task,
    task_to_dict,
)
from looplane.errors import ConfigError, SerializationError
from looplane.storage import InMemoryStorage
from looplane.task import MAX_NAME_LENGTH, MAX_TIMEOUT_S, Backoff, BackoffKind, Task
from tests.test_codec import assert_same, codec_values, offsets, texts

backoffs = st.builds(
    Backoff,
    kind=st.sampled_from(BackoffKind),
    base_s=st.floats(min_value=0.0, max_value=1e6),
    max_s=st.floats(min_value=0.0, max_value=1e6),
    jitter=st.booleans(),
)
tasks = st.builds(
    Task,
    id=st.uuids().map(lambda u: u.hex),
    name=st.text(min_size=1, max_size=MAX_NAME_LENGTH),
    args=st.lists(codec_values, max_size=4).map(tuple),
    kwargs=st.dictionaries(texts, codec_values, max_size=4),
    max_retries=st.integers(min_value=0, max_value=1000),
    timeout=st.none() | st.floats(min_value=0.001, max_value=MAX_TIMEOUT_S),
    backoff=backoffs,
    # Text as storage keys hold it: a lone surrogate is refused (see the test below).
    queue=st.text(),
    priority=st.integers(min_value=-(2**63), max_value=2**63),
    created_at=st.datetimes(timezones=offsets),
)


def assert_same_task(actual: Task, expected: Task) -> None:
    """Compare two tasks field by field, with exact argument types."""
    assert_same(actual.args, expected.args, "args")
    assert_same(actual.kwargs, expected.kwargs, "kwargs")
    assert_same(actual.created_at, expected.created_at, "created_at")
    assert dataclasses.replace(actual, args=(), kwargs={}) == dataclasses.replace(
        expected, args=(), kwargs={}
    )


@settings(deadline=None)
@given(tasks)
def test_json_serializer_round_trips_task(task: Task) -> None:
    serializer = JSONSerializer()
    data = serializer.serialize(task)

    assert data.isascii()
    assert_same_task(serializer.deserialize(data), task)


@settings(deadline=None)
@given(tasks)
def test_task_to_dict_dict_to_task_round_trips(task: Task) -> None:
    assert_same_task(dict_to_task(task_to_dict(task)), task)


@settings(deadline=None)
@given(tasks)
def test_json_serializer_utf16_round_trips_task(task: Task) -> None:
    serializer = JSONSerializer(encoding="utf-16")
    data = serializer.serialize(task)

    assert data.decode("utf-16").isascii()
    assert_same_task(serializer.deserialize(data), task)


@pytest.mark.parametrize("field", ["id", "name", "queue"])
def test_json_serializer_refuses_a_lone_surrogate_it_could_not_read_back(field: str) -> None:
    task = dataclasses.replace(Task(id="t1", name="lp_test.ok"), **{field: "q\ud800"})

    with pytest.raises(SerializationError, match=f"task field '{field}' holds a lone surrogate"):
        JSONSerializer().serialize(task)


def test_producer_and_consumer_refuse_a_queue_storage_cannot_hold() -> None:
    storage = InMemoryStorage()

    with pytest.raises(ConfigError, match="queue must be text without lone surrogates"):
        StorageProducer(storage, queue="\ud800")
    with pytest.raises(ConfigError, match="queue must be text without lone surrogates"):
        StorageConsumer(storage, queue="\ud800")


def test_json_serializer_round_trips_awkward_arguments() -> None:
    task = Task(
        id="t1",
        name="lp_test.émoji-😀",
        args=(10**5000, -0.0, b"\x00", ("nested", (1,)), "\udcff"),
        kwargs={"__lp__": {1: "int key"}, "when": datetime(2024, 1, 1, tzinfo=UTC)},
        timeout=5,
        created_at=datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=-3))),
    )
    serializer = JSONSerializer()

    assert_same_task(serializer.deserialize(serializer.serialize(task)), task)


def test_json_serializer_utf16_bytes_are_not_utf8() -> None:
    data = JSONSerializer(encoding="utf-16").serialize(Task(id="t1", name="lp_test.task"))

    with pytest.raises(SerializationError, match=r"^task bytes are not valid utf-8: "):
        JSONSerializer().deserialize(data)


def test_json_serializer_unknown_encoding_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^unknown text encoding 'no-such-codec'$"):
        JSONSerializer(encoding="no-such-codec")


def test_task_to_dict_writes_format_version_and_plain_fields() -> None:
    created_at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    task = Task(id="t1", name="lp_test.task", args=(1,), created_at=created_at)

    record = task_to_dict(task)

    assert record["v"] == FORMAT_VERSION
    assert record["args"] == [1]
    assert record["created_at"] == "2024-01-02T03:04:05+00:00"
    assert record["backoff"] == task.backoff.to_dict()


@pytest.mark.parametrize(
    ("task", "path", "type_name"),
    [
        pytest.param(Task(id="t1", name="x", args=(1, {2})), "args[1]", "set", id="arg"),
        pytest.param(
            Task(id="t1", name="x", kwargs={"when": object()}),
            "kwargs['when']",
            "object",
            id="kwarg",
        ),
        pytest.param(
            Task(id="t1", name="x", args=([bytearray()],)), "args[0][0]", "bytearray", id="nested"
        ),
    ],
)
def test_json_serializer_refuses_unsupported_argument_naming_it(
    task: Task, path: str, type_name: str
) -> None:
    escaped = path.replace("[", r"\[").replace("]", r"\]")

    with pytest.raises(SerializationError, match=rf"^{escaped} has type {type_name}, ") as info:
        JSONSerializer().serialize(task)
    assert (info.value.path, info.value.type_name) == (path, type_name)


def test_json_serializer_refuses_too_deep_arguments_without_crashing() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]

    with pytest.raises(SerializationError, match=r"^task arguments are nested too deeply"):
        JSONSerializer().serialize(Task(id="t1", name="x", args=(deep,)))


_MISSING = object()
_GOOD_BACKOFF = Backoff().to_dict()


def _record(**changes: Any) -> dict[str, Any]:
    """A valid task record as `task_to_dict` writes it, with `changes` applied.

    A field changed to `_MISSING` is removed.
    """
    record = task_to_dict(Task(id="t1", name="lp_test.task"))
    for key, value in changes.items():
        if value is _MISSING:
            del record[key]
        else:
            record[key] = value
    return record


def _encode(record: Any) -> bytes:
    return json.dumps(record).encode()


CORRUPT = [
    pytest.param(b"\xff\xfe\xfd", r"^task bytes are not valid utf-8: ", id="not-utf8"),
    pytest.param(b"not json", r"^cannot decode JSON: ", id="not-json"),
    pytest.param(b"", r"^cannot decode JSON: ", id="empty"),
    pytest.param(b"[1, 2]", r"^task record is a list, not an object$", id="json-list"),
    pytest.param(b'"task"', r"^task record is a str, not an object$", id="json-string"),
    pytest.param(
        _encode(_record(name=_MISSING)), r"^task record has no 'name' field$", id="name-missing"
    ),
    pytest.param(
        _encode(_record(name=None)),
        r"^task field 'name' is a NoneType, expected str$",
        id="name-none",
    ),
    pytest.param(_encode(_record(name="")), r"^task field 'name' is empty$", id="name-empty"),
    pytest.param(
        _encode(_record(name="n" * 10_000)),
        rf"^task field 'name' is 10000 characters long \(at most {MAX_NAME_LENGTH}\)$",
        id="name-10000-chars",
    ),
    pytest.param(
        _encode(_record(id=7)), r"^task field 'id' is a int, expected str$", id="id-number"
    ),
    pytest.param(
        _encode(_record(max_retries="3")),
        r"^task field 'max_retries' is a str, expected int$",
        id="max-retries-str",
    ),
    pytest.param(
        _encode(_record(max_retries=True)),
        r"^task field 'max_retries' is a bool, expected int$",
        id="max-retries-bool",
    ),
    pytest.param(
        _encode(_record(max_retries=2.0)),
        r"^task field 'max_retries' is a float, expected int$",
        id="max-retries-float",
    ),
    pytest.param(
        _encode(_record(priority=False)),
        r"^task field 'priority' is a bool, expected int$",
        id="priority-bool",
    ),
    pytest.param(
        _encode(_record(timeout="5")),
        r"^task field 'timeout' is a str, not a number$",
        id="timeout-str",
    ),
    pytest.param(
        _encode(_record(args={"a": 1})),
        r"^task field 'args' is a dict, expected list$",
        id="args-object",
    ),
    pytest.param(
        _encode(_record(kwargs={"__lp__": "dict", "v": [[1, "x"]]})),
        r"^task field 'kwargs' has a non-string key 1$",
        id="kwargs-int-key",
    ),
    pytest.param(
        _encode(_record(backoff="exponential")),
        r"^task field 'backoff' is a str, expected dict$",
        id="backoff-str",
    ),
    pytest.param(
        _encode(_record(backoff={**_GOOD_BACKOFF, "kind": "bogus"})),
        r"^task field 'backoff' has kind 'bogus', not one of: none, fixed, exponential$",
        id="backoff-unknown-kind",
    ),
    pytest.param(
        _encode(_record(backoff={"base_s": 1.0, "max_s": 2.0, "jitter": True})),
        r"^task field 'backoff' has kind None, not one of: ",
        id="backoff-kind-missing",
    ),
    pytest.param(
        _encode(_record(backoff={**_GOOD_BACKOFF, "base_s": "1"})),
        r"^task field 'backoff' has base_s='1', which is not a number$",
        id="backoff-base-str",
    ),
    pytest.param(
        _encode(_record(backoff={**_GOOD_BACKOFF, "max_s": None})),
        r"^task field 'backoff' has max_s=None, which is not a number$",
        id="backoff-max-null",
    ),
    pytest.param(
        _encode(_record(backoff={**_GOOD_BACKOFF, "jitter": "false"})),
        r"^task field 'backoff' has jitter='false', which is not a boolean$",
        id="backoff-jitter-str",
    ),
    pytest.param(
        _encode(_record(backoff={**_GOOD_BACKOFF, "base_s": -1})),
        r"^task field 'backoff' is invalid: backoff delays must be >= 0",
        id="backoff-negative",
    ),
    pytest.param(
        _encode(_record(created_at="yesterday")),
        r"^task field 'created_at' is 'yesterday', not an ISO 8601 datetime$",
        id="created-at-bad",
    ),
    pytest.param(
        _encode(_record(v=2)),
        r"^task record has format version 2; this Looplane reads version 1$",
        id="newer-version",
    ),
    pytest.param(
        _encode(_record(args=[{"__lp__": "uuid", "v": 5}])),
        r"^bad tagged value 'uuid': ",
        id="corrupt-tagged-arg",
    ),
]


@pytest.mark.parametrize(("data", "message"), CORRUPT)
def test_json_serializer_deserialize_corrupt_bytes_raises_serialization_error(
    data: bytes, message: str
) -> None:
    with pytest.raises(SerializationError, match=message):
        JSONSerializer().deserialize(data)


def test_dict_to_task_record_without_version_reads_as_version_1() -> None:
    task = dict_to_task(_record(v=_MISSING))

    assert task.name == "lp_test.task"


def test_dict_to_task_missing_timeout_means_none() -> None:
    assert dict_to_task(_record(timeout=_MISSING)).timeout is None


@settings(deadline=None)
@given(tasks)
def test_json_serializer_writes_the_encoded_task_record(task: Task) -> None:
    # The serializer writes the record field by field; it must be the text that encoding
    # the record of `task_to_dict` as one dict writes.
    record = task_to_dict(task)
    record["args"] = _codec.encode(record["args"], "args")
    record["kwargs"] = _codec.encode(record["kwargs"], "kwargs")

    assert JSONSerializer().serialize(task) == _codec.dump_text(record).encode()


def test_json_serializer_writes_each_task_of_a_send_with_its_own_options() -> None:
    # Tasks of one send share their option objects, and the text written for them is
    # reused; equal values of another type (3 and 3.0, 1 and True) must not reuse it.
    created_at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    shared = Task(id="t1", name="lp_test.task", timeout=3.0, created_at=created_at)
    tasks = [
        shared,
        dataclasses.replace(shared, id="t2"),
        dataclasses.replace(shared, id="t3", timeout=3),
        dataclasses.replace(shared, id="t4", priority=True),
        dataclasses.replace(shared, id="t5", created_at=created_at.replace(microsecond=1)),
    ]
    serializer = JSONSerializer()

    for task in tasks:
        record = task_to_dict(task)
        record["args"] = _codec.encode(record["args"], "args")
        assert serializer.serialize(task) == _codec.dump_text(record).encode()


@pytest.mark.parametrize(
    ("changes", "dropped"),
    [
        pytest.param({"name": "lp_test.émoji"}, (), id="non-ascii-name"),
        pytest.param({"kwargs": {"a": 1}}, (), id="kwargs"),
        pytest.param({"timeout": 5}, (), id="int-timeout"),
        pytest.param({}, ("v",), id="no-version"),
    ],
)
def test_dict_to_task_reads_records_on_either_path(
    changes: dict[str, Any], dropped: tuple[str, ...]
) -> None:
    record = task_to_dict(Task(id="t1", name="lp_test.task")) | changes
    for key in dropped:
        del record[key]

    task = dict_to_task(record)

    assert (task.name, task.kwargs) == (record["name"], record["kwargs"])
    assert task.timeout == (None if record["timeout"] is None else float(record["timeout"]))
