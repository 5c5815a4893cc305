"""Bad input from storage: the decoder refuses it with a reason, the worker sets it aside.

Storage may hold bytes no Looplane producer wrote: a corrupt record, another program's, a
truncated write. Three levels are fuzzed: the serializer's decode (any bytes give a `Task`
or a `SerializationError`), an orchestrator fed bad records between good ones (each bad one
is dead-lettered with the decoder's reason, each good one succeeds, receiving goes on), and
a real ``looplane worker`` process (it does not exit, and the good tasks complete).
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import signal
import tempfile
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looplane import LMDBResultBackend, LMDBStorage, StorageProducer
from looplane._codec import TAG
from looplane.broker.consumer import storable_reason
from looplane.broker.serializer import JSONSerializer
from looplane.errors import ConfigError, SerializationError
from looplane.storage.base import NewTask
from looplane.task import MAX_TIMEOUT_S, Backoff, Task, register_task, registry
from tests._rig import Rig, until_async
from tests.cli._process import start_looplane
from tests.conftest import REDIS_MARKS, REDIS_URL, eventually

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SERIALIZER = JSONSerializer()
ECHO = "test.bad_input.ok"

if ECHO not in registry:

    @register_task(name=ECHO)
    async def _ok(*args: Any, **kwargs: Any) -> int:
        return len(args) + len(kwargs)


def _valid_record(task_id: str = "0" * 32, **fields: Any) -> dict[str, Any]:
    task = Task(id=task_id, name=ECHO, args=(1, "two"), kwargs={"k": [3.5]}, timeout=10.0)
    record: dict[str, Any] = json.loads(SERIALIZER.serialize(task))
    record.update(fields)
    return record


def _dumps(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=True).encode("ascii")


# Strategies ------------------------------------------------------------------------------

# Every JSON value Python's decoder accepts, including NaN, the infinities, lone
# surrogates (as \u escapes) and tag-shaped objects. (Ints past the 4300-digit limit are
# in FIXED_BAD: json.dumps cannot write them.)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([TAG, "tuple", "dict", "int", "bytes", "datetime", "os.system", "v"])
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
FIELDS = [*_valid_record(), "missing"]


@st.composite
def mutated_records(draw: st.DrawFn, task_id: str = "0" * 32) -> bytes:
    """A valid task record with one field given a wrong value or removed."""
    record = _valid_record(task_id)
    key = draw(st.sampled_from(FIELDS))
    if key == "missing":
        del record[draw(st.sampled_from(list(record)))]
    else:
        record[key] = draw(JSON_VALUES)
    return _dumps(record)


@st.composite
def truncated_records(draw: st.DrawFn, task_id: str = "0" * 32) -> bytes:
    """A valid task record cut short."""
    payload = _dumps(_valid_record(task_id))
    return payload[: draw(st.integers(min_value=0, max_value=len(payload) - 1))]


@st.composite
def bad_tags(draw: st.DrawFn, task_id: str = "0" * 32) -> bytes:
    """A valid task record whose argument is a tagged value with a wrong payload."""
    tag = draw(st.sampled_from([*_TAGS, "pickle", "os.system", "builtins.eval"]))
    tagged = {TAG: tag, "v": draw(JSON_VALUES)}
    return _dumps(_valid_record(task_id, args=[tagged]))


_TAGS = ["tuple", "dict", "int", "datetime", "date", "uuid", "decimal", "bytes"]

FIXED_BAD = {
    "deep-list": b"[" * 300_000,  # over 256 KiB: decoded in a thread
    "deep-object": b'{"a":' * 100_000,
    "deep-args": _dumps(_valid_record(args="@")).replace(b'"@"', b"[" * 50_000 + b"]" * 50_000),
    "huge-int": b'{"v":1,"id":' + b"9" * 100_000 + b"}",
    "nan-timeout": _dumps(_valid_record(timeout=math.nan)),
    "inf-timeout": _dumps(_valid_record(timeout=math.inf)),
    "negative-timeout": _dumps(_valid_record(timeout=-1)),
    "negative-retries": _dumps(_valid_record(max_retries=-1)),
    "bool-retries": _dumps(_valid_record(max_retries=True)),
    "float-retries": _dumps(_valid_record(max_retries=2.0)),
    "args-object": _dumps(_valid_record(args={"0": 1})),
    "kwargs-list": _dumps(_valid_record(kwargs=[["a", 1]])),
    "kwargs-int-keys": _dumps(_valid_record(kwargs={TAG: "dict", "v": [[1, 2]]})),
    "id-int": _dumps(_valid_record(id=7)),
    "name-missing": _dumps({k: v for k, v in _valid_record().items() if k != "name"}),
    "name-surrogate": _dumps(_valid_record(name="\ud800")),
    "name-huge": _dumps(_valid_record(name="n" * 100_000)),
    "version-2": _dumps(_valid_record(v=2)),
    "not-an-object": b"[1, 2, 3]",
    "invalid-utf8": b'{"v":1,"id":"\xff\xfe"}',
    "pickle": pickle.dumps(_valid_record(), protocol=4),
    "empty": b"",
}


# Level 1: the serializer -----------------------------------------------------------------

# No example database: the examples replay from the seed alone, and the suite writes nothing
# into the working tree.
_FUZZ = settings(database=None, deadline=None)


def _decode(payload: bytes) -> Task | SerializationError:
    """The serializer's answer: a task, or the error it raised (anything else fails)."""
    try:
        task = SERIALIZER.deserialize(payload)
    except SerializationError as exc:
        return exc
    _assert_well_formed(task)
    return task


def _assert_well_formed(task: Task) -> None:
    """What the orchestrator relies on in a decoded task."""
    assert [type(task.id), type(task.name), type(task.queue)] == [str, str, str]
    assert 0 < len(task.name) <= 200
    assert (type(task.args), type(task.kwargs)) == (tuple, dict)
    assert all(type(key) is str for key in task.kwargs)
    assert type(task.max_retries) is int
    assert task.max_retries >= 0
    assert task.timeout is None or 0 < task.timeout <= MAX_TIMEOUT_S
    assert isinstance(task.backoff, Backoff)
    assert 0 <= task.backoff.delay_s(10_000) <= MAX_TIMEOUT_S


@settings(_FUZZ, max_examples=300)
@given(payload=st.binary(max_size=400))
def test_decode_of_random_bytes_gives_a_task_or_serialization_error(payload: bytes) -> None:
    _decode(payload)


@settings(_FUZZ, max_examples=300)
@given(payload=mutated_records() | truncated_records() | bad_tags())
def test_decode_of_damaged_records_gives_a_task_or_serialization_error(payload: bytes) -> None:
    _decode(payload)


@settings(_FUZZ, max_examples=100)
@given(payload=truncated_records())
def test_decode_refuses_every_truncated_record(payload: bytes) -> None:
    assert isinstance(_decode(payload), SerializationError)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param("deep-list", "cannot decode JSON: maximum recursion depth", id="deep-list"),
        pytest.param("deep-object", "cannot decode JSON: maximum recursion", id="deep-object"),
        pytest.param("deep-args", "cannot decode JSON: maximum recursion", id="deep-args"),
        pytest.param("huge-int", "cannot decode JSON: Exceeds the limit", id="huge-int"),
        pytest.param("nan-timeout", "'timeout' is out of range.*got nan", id="nan-timeout"),
        pytest.param("inf-timeout", "'timeout' is out of range.*got inf", id="inf-timeout"),
        pytest.param("negative-timeout", "'timeout' is out of range", id="negative-timeout"),
        pytest.param("negative-retries", "'max_retries' is out of range", id="negative-retries"),
        pytest.param("bool-retries", "'max_retries' is a bool, expected int", id="bool-retries"),
        pytest.param("float-retries", "'max_retries' is a float", id="float-retries"),
        pytest.param("args-object", "'args' is a dict, expected list", id="args-object"),
        pytest.param("kwargs-list", "'kwargs' is a list, expected dict", id="kwargs-list"),
        pytest.param("kwargs-int-keys", "'kwargs' has a non-string key 1", id="kwargs-int-keys"),
        pytest.param("id-int", "'id' is a int, expected str", id="id-int"),
        pytest.param("name-missing", "has no 'name' field", id="name-missing"),
        pytest.param("name-surrogate", "'name' holds a lone surrogate", id="name-surrogate"),
        pytest.param("name-huge", "'name' is 100000 characters long", id="name-huge"),
        pytest.param("version-2", "format version 2", id="version-2"),
        pytest.param("not-an-object", "task record is a list, not an object", id="not-an-object"),
        pytest.param("invalid-utf8", "not valid utf-8", id="invalid-utf8"),
        pytest.param("pickle", "not valid utf-8", id="pickle"),
        pytest.param("empty", "cannot decode JSON: Expecting value", id="empty"),
    ],
)
def test_decode_names_what_is_wrong(case: str, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        SERIALIZER.deserialize(FIXED_BAD[case])


@pytest.mark.parametrize("tag", _TAGS)
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(None, id="null"),
        pytest.param(12, id="int"),
        pytest.param("not valid \u00e9", id="bad-text"),
        pytest.param([[1], 2], id="list"),
        pytest.param({"a": 1}, id="object"),
    ],
)
def test_decode_refuses_a_tag_with_a_wrong_payload(tag: str, raw: Any) -> None:
    payload = _dumps(_valid_record(args=[{TAG: tag, "v": raw}]))
    if tag == "tuple" and isinstance(raw, list):
        assert SERIALIZER.deserialize(payload).args == (([1], 2),)
        return
    with pytest.raises(SerializationError, match=rf"^bad tagged value '{tag}': "):
        SERIALIZER.deserialize(payload)


def test_decode_keeps_the_last_of_duplicate_keys() -> None:
    payload = _dumps(_valid_record())[:-1] + b',"name":"other.name","args":[9]}'

    task = SERIALIZER.deserialize(payload)

    assert (task.name, task.args) == ("other.name", (9,))


def test_decode_of_deep_nesting_uses_bounded_memory() -> None:
    payload = b"[" * 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(SerializationError, match="recursion"):
            SERIALIZER.deserialize(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def test_huge_backoff_delays_are_capped_at_the_longest_timeout() -> None:
    """An infinite delay made LMDB and Redis raise OverflowError when requeueing a retry."""
    record = _valid_record(
        backoff={"kind": "fixed", "base_s": math.inf, "max_s": math.inf, "jitter": False}
    )
    task = SERIALIZER.deserialize(_dumps(record))

    assert task.backoff.delay_s(1) == MAX_TIMEOUT_S


# Level 2: an orchestrator fed bad records --------------------------------------------------


@st.composite
def bad_batches(draw: st.DrawFn, max_size: int) -> list[bytes]:
    """Payloads for records ``bad0..badN``; the record's id sits in each templated one."""
    count = draw(st.integers(min_value=1, max_value=max_size))
    payloads = []
    for i in range(count):
        task_id = _bad_id(i)
        kind = draw(st.sampled_from(["bytes", "fixed", "mutated", "truncated", "tag"]))
        if kind == "bytes":
            payloads.append(draw(st.binary(max_size=200)))
        elif kind == "fixed":
            payloads.append(FIXED_BAD[draw(st.sampled_from(sorted(FIXED_BAD)))])
        elif kind == "mutated":
            payloads.append(draw(mutated_records(task_id)))
        elif kind == "truncated":
            payloads.append(draw(truncated_records(task_id)))
        else:
            payloads.append(draw(bad_tags(task_id)))
    return payloads


def _bad_id(i: int) -> str:
    return f"bad{i:029x}"


def _expected(task_id: str, payload: bytes) -> tuple[bool | None, str]:
    """(succeeds, dead-letter reason) as the serializer and the registry decide it.

    None: the record is valid but its timeout is so short that it may or may not time out.
    """
    try:
        task = SERIALIZER.deserialize(payload)
    except SerializationError as exc:
        return False, storable_reason(f"undecodable payload: {exc}")
    if task.id != task_id:
        return False, storable_reason(
            f"undecodable payload: payload holds task id {task.id[:80]!r}"
        )
    if task.name not in registry:
        return False, storable_reason(f"unknown task {task.name!r}: no loaded module registered it")
    if task.timeout is not None and task.timeout < 1:
        return None, ""
    return True, ""


async def _feed_orchestrator(kind: str, payloads: list[bytes], tmp: Path) -> None:
    rig = Rig.open(kind, tmp, redis_url=REDIS_URL)
    try:
        good: list[Task] = []
        for i, payload in enumerate(payloads):
            good.append(await rig.producer.send(ECHO, i))
            await rig.storage.enqueue([NewTask(_bad_id(i), payload, max_attempts=2)])
        good.append(await rig.producer.send(ECHO, "last"))
        orchestrator = rig.orchestrator(4)
        await orchestrator.start()
        try:
            outcomes = [await rig.outcome(task, timeout=20) for task in good]
            bad = [await rig.results.wait(_bad_id(i), timeout=20) for i in range(len(payloads))]
            assert orchestrator.is_running
            after = await rig.producer.send(ECHO, "after")
            assert (await rig.outcome(after, timeout=20)).success
        finally:
            await orchestrator.stop()
        dead = {d.task_id: d.reason for d in await rig.storage.dead_tasks(limit=1000)}
    finally:
        await rig.close()

    assert [(r.success, r.value) for r in outcomes] == [(True, 1)] * len(good)
    for i, (payload, result) in enumerate(zip(payloads, bad, strict=True)):
        succeeds, reason = _expected(_bad_id(i), payload)
        assert succeeds is None or result.success is succeeds, payload[:200]
        if succeeds is False:
            assert (result.error, dead.get(_bad_id(i))) == (reason, reason)


_LEVEL2 = settings(
    _FUZZ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("lmdb", id="lmdb"),
    pytest.param("redis", id="redis", marks=REDIS_MARKS),
]


@pytest.mark.parametrize("kind", _KINDS)
@settings(_LEVEL2, max_examples=6)
@given(payloads=bad_batches(max_size=10))
def test_orchestrator_sets_aside_bad_records_and_runs_the_good_ones(
    kind: str, payloads: list[bytes]
) -> None:
    with tempfile.TemporaryDirectory(prefix="lq-bad-") as tmp:
        asyncio.run(_feed_orchestrator(kind, payloads, Path(tmp)))


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", _KINDS)
@settings(_LEVEL2, max_examples=150)
@given(payloads=bad_batches(max_size=40))
def test_orchestrator_sets_aside_bad_records_long(kind: str, payloads: list[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="lq-bad-") as tmp:
        asyncio.run(_feed_orchestrator(kind, payloads, Path(tmp)))


@pytest.mark.parametrize("kind", _KINDS)
async def test_every_fixed_bad_record_is_set_aside_with_its_reason(
    kind: str, tmp_path: Path
) -> None:
    await _feed_orchestrator(kind, [FIXED_BAD[key] for key in sorted(FIXED_BAD)], tmp_path)


# Level 3: a real worker process ------------------------------------------------------------

APP_MODULE = "tests.cli.app_tasks"


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_worker_process_survives_bad_records_and_runs_the_good_ones(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"
    worker = start_looplane(
        ["worker", "-A", APP_MODULE, "-c", "4", "--db-path", str(db)],
        cwd=tmp_path,
        out_dir=tmp_path / "out",
    )
    try:
        await asyncio.to_thread(worker.wait_ready)
        async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
            producer = StorageProducer(storage)
            names = sorted(FIXED_BAD)
            good = []
            for i, key in enumerate(names):
                await storage.enqueue([NewTask(_bad_id(i), FIXED_BAD[key], max_attempts=2)])
                good.append(await producer.send("cli_tests.add", i, 1))
            outcomes = [await results.wait(task.id, timeout=30) for task in good]
            bad = [await results.wait(_bad_id(i), timeout=30) for i in range(len(names))]

            async def all_dead() -> None:
                assert (await storage.counts()).dead == len(names)

            await eventually(all_dead, timeout=30)
        assert worker.process.poll() is None, worker.describe()
    finally:
        worker.signal(signal.SIGINT)
        rc = await asyncio.to_thread(worker.wait_exit)

    assert rc == 0, worker.describe()
    assert [(r.success, r.value) for r in outcomes] == [(True, i + 1) for i in range(len(names))]
    for i, key in enumerate(names):
        assert (bad[i].success, bad[i].error) == (False, _expected(_bad_id(i), FIXED_BAD[key])[1])
    assert "Traceback" not in worker.stderr()


# Regressions ------------------------------------------------------------------------------

FAILS = "test.bad_input.fails"

if FAILS not in registry:

    @register_task(name=FAILS)
    async def _fails() -> None:
        raise ValueError("always")


def _own_id_record(task_id: str, **fields: Any) -> bytes:
    return _dumps(_valid_record(task_id, **fields))


@pytest.mark.parametrize("kind", _KINDS)
async def test_records_that_stopped_a_worker_are_set_aside(kind: str, tmp_path: Path) -> None:
    """Each of these once ended the receive loop or a task runner with an exception.

    A lone surrogate in a name or id went into a dead-letter reason that Redis could not
    encode; a NaN or negative timeout ran the task with a meaningless limit; an infinite
    backoff made LMDB and Redis raise OverflowError when requeueing the retry.
    """
    payloads = {
        "name": _own_id_record(_bad_id(0), name="\ud800"),
        "id": _own_id_record(_bad_id(1), id="\udfff"),
        "timeout": _own_id_record(_bad_id(2), timeout=-1.0),
        "backoff": _own_id_record(
            _bad_id(3),
            name=FAILS,
            args=[],
            kwargs={},
            backoff={"kind": "fixed", "base_s": math.inf, "max_s": math.inf, "jitter": False},
        ),
    }
    rig = Rig.open(kind, tmp_path, redis_url=REDIS_URL)
    try:
        await rig.storage.enqueue(
            [
                NewTask(_bad_id(i), payload, max_attempts=2)
                for i, payload in enumerate(payloads.values())
            ]
        )
        orchestrator = rig.orchestrator(4)
        await orchestrator.start()
        try:
            bad = [await rig.results.wait(_bad_id(i), timeout=20) for i in range(3)]
            first = await until_async(lambda: rig.results.get(_bad_id(3)), timeout=20)
            await until_async(_delayed(rig), timeout=20)
            assert orchestrator.is_running
            good = await rig.producer.send(ECHO, "after")
            assert (await rig.outcome(good, timeout=20)).success
        finally:
            await orchestrator.stop()
        counts = await rig.storage.counts()
        dead = {d.task_id: d.reason for d in await rig.storage.dead_tasks()}
    finally:
        await rig.close()

    assert [r.error for r in bad] == [
        "undecodable payload: task field 'name' holds a lone surrogate, which is not text",
        "undecodable payload: task field 'id' holds a lone surrogate, which is not text",
        "undecodable payload: task field 'timeout' is out of range: timeout must be a number "
        "of seconds > 0, got -1.0",
    ]
    assert [dead[_bad_id(i)] for i in range(3)] == [r.error for r in bad]
    assert (first.success, first.will_retry) == (False, True)
    assert counts.delayed == 1


def _delayed(rig: Rig) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return (await rig.storage.counts()).delayed == 1

    return probe


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class _BrokenSerializer(JSONSerializer):
    """A third-party serializer that fails with its own exception types on some payloads."""

    def deserialize(self, data: bytes) -> Task:
        if data.startswith(b"boom"):
            raise RuntimeError("boom\nsecond line")
        if data.startswith(b"mute"):
            raise _UnprintableError
        if data.startswith(b"none"):
            return None  # type: ignore[return-value]  # a buggy serializer, on purpose
        return super().deserialize(data)


async def test_any_exception_from_a_serializer_sets_the_record_aside(tmp_path: Path) -> None:
    """A RuntimeError from a custom serializer ended the orchestrator's receive loop; so did
    a serializer that returned something other than a Task."""
    from looplane.broker import StorageConsumer
    from looplane.orchestrator import Orchestrator

    rig = Rig.open("memory", tmp_path)
    try:
        await rig.storage.enqueue(
            [
                NewTask(_bad_id(0), b"boom", max_attempts=2),
                NewTask(_bad_id(1), b"mute", max_attempts=2),
                NewTask(_bad_id(2), b"none", max_attempts=2),
            ]
        )
        good = await rig.producer.send(ECHO, 1)
        consumer = StorageConsumer(rig.storage, serializer=_BrokenSerializer())
        orchestrator = Orchestrator(consumer, rig.results, 2)
        await orchestrator.start()
        try:
            assert (await rig.outcome(good)).success
            bad = [await rig.results.wait(_bad_id(i)) for i in range(3)]
            assert orchestrator.is_running
        finally:
            await orchestrator.stop()
    finally:
        await rig.close()

    assert [r.error for r in bad] == [
        "undecodable payload: RuntimeError while decoding: boom",
        "undecodable payload: _UnprintableError while decoding: <message could not be read>",
        "undecodable payload: the serializer returned a NoneType, not a Task",
    ]


def test_storable_reason_is_bounded_utf8_text() -> None:
    reason = storable_reason("bad \ud800 " + "x" * 5000)

    assert reason.startswith("bad \\ud800 xxx")
    assert len(reason) == 1000
    assert reason.endswith("...")
    reason.encode("utf-8")


def test_a_task_name_that_is_not_text_cannot_be_registered() -> None:
    with pytest.raises(ConfigError, match="holds a lone surrogate"):
        register_task(name="bad\ud800")(lambda: None)
