"""The result backend contract, run on every backend, plus LMDB's sharing and doorbell cases.

Waits are proven to wake on a store, not on the LMDB backend's once-a-second fallback look:
an autouse fixture stretches that fallback past every timeout used here. Redis waits look
again only every few seconds, longer than `WAKE_S`.

Redis expires results on its own clock, which a `FakeClock` cannot move, so the expiry
cases move time through a `Timeline`: the fake clock's ``advance`` for memory and LMDB, real
time with a short time to live for Redis. The Redis cases run against the server named by
``LOOPLANE_TEST_REDIS_URL``, each under its own key prefix, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import multiprocessing
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looplane import _codec
from looplane._lmdb_env import LMDBEnv
from looplane.errors import ConfigError, SerializationError, StorageUnavailable, TaskTimeout
from looplane.result import lmdb as lmdb_results
from looplane.result.base import DEFAULT_RESULT_TTL_S, ResultBackend, TaskResult
from looplane.result.lmdb import LMDBResultBackend
from looplane.result.memory import InMemoryResultBackend
from looplane.result.redis import RedisResultBackend
from tests.test_codec import assert_same, codec_values, datetimes, floats, texts

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from multiprocessing.sharedctypes import Synchronized
    from pathlib import Path

    from looplane._clock import FakeClock

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("lmdb", id="lmdb"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]
REDIS_URL_ENV = "LOOPLANE_TEST_REDIS_URL"
TTL_S = 10.0
WAKE_S = 2.0
"""How soon a store must wake a waiter whose own timeout is `LONG_S`."""
LONG_S = 25.0


class OpenResults(Protocol):
    timeline: Timeline

    def __call__(self, *, ttl_s: float | None = ...) -> ResultBackend: ...


class Timeline:
    """How expiry cases let time pass: a fake clock's advance, or real time on a server."""

    def __init__(self, clock: FakeClock | None) -> None:
        self.clock = clock
        self.ttl_s = TTL_S if clock is not None else REDIS_TTL_S
        self.slack_s = self.ttl_s / 10 if clock is not None else REDIS_SLACK_S

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            # Real time is the subject here: Redis expires keys on the server's clock.
            await asyncio.sleep(seconds)

    async def skip_far_ahead(self, backend: ResultBackend) -> None:
        """A century on a fake clock; on Redis, which cannot skip, check nothing expires."""
        if self.clock is not None:
            self.clock.advance(100 * 365 * 86_400.0)
            return
        assert isinstance(backend, RedisResultBackend)
        client = backend._client
        keys = [key async for key in client.scan_iter(match=backend._key("*"))]
        assert keys
        assert [await client.pttl(key) for key in keys] == [-1] * len(keys)


# Redis expires on its own clock, so these cases sleep for real. A result that must still
# be there is checked within TTL/2 - slack of its expiry: 1.2 s, wide enough for a loaded
# 2-core machine (1.0 s / 0.25 s left 0.25 s and once failed under load).
REDIS_TTL_S = 3.0
REDIS_SLACK_S = 0.3


def redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        pytest.skip(f"{REDIS_URL_ENV} is not set")
    return url


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key a `RedisResultBackend` with `prefix` wrote."""
    async with RedisResultBackend(url, prefix=prefix) as backend:
        client = backend._client
        keys = [key async for key in client.scan_iter(match=backend._key("*"))]
        if keys:
            await client.delete(*keys)


@pytest.fixture(autouse=True)
def _only_doorbells_wake_waiters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdb_results, "_RECHECK_S", 60.0)


@pytest.fixture(params=BACKENDS)
async def open_results(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[OpenResults]:
    opened: list[ResultBackend] = []
    url = redis_url() if request.param == "redis" else ""
    prefix = f"lqtest-{uuid.uuid4().hex[:12]}"

    def open_backend(*, ttl_s: float | None = DEFAULT_RESULT_TTL_S) -> ResultBackend:
        backend: ResultBackend
        if request.param == "memory":
            backend = InMemoryResultBackend(ttl_s=ttl_s, clock=clock)
        elif request.param == "lmdb":
            backend = LMDBResultBackend(tmp_path / "db", ttl_s=ttl_s, clock=clock)
        else:
            backend = RedisResultBackend(url, ttl_s=ttl_s, prefix=prefix, clock=clock)
        opened.append(backend)
        return backend

    opener = cast("OpenResults", open_backend)
    opener.timeline = Timeline(None if request.param == "redis" else clock)
    yield opener
    for backend in opened:
        await backend.close()
    if url:
        await delete_prefix(url, prefix)


@pytest.fixture
def results(open_results: OpenResults) -> ResultBackend:
    return open_results()


def new_id() -> str:
    return uuid.uuid4().hex


def make_result(
    task_id: str,
    *,
    attempt: int = 1,
    will_retry: bool = False,
    value: object = None,
    error: str | None = None,
) -> TaskResult:
    return TaskResult(
        task_id=task_id,
        func_name="tests.add",
        success=error is None,
        value=value,
        error=error,
        error_type=None if error is None else "builtins.ValueError",
        attempt=attempt,
        max_retries=2,
        will_retry=will_retry,
    )


async def stored_count(backend: ResultBackend) -> int:
    """How many results the backend still holds, expired or not (its purge is visible).

    Redis removes expired results itself; its index may lag, but never below them.
    """
    if isinstance(backend, InMemoryResultBackend):
        return len(backend._order)
    if isinstance(backend, RedisResultBackend):
        client = backend._client
        count = len([key async for key in client.scan_iter(match=backend._key("result", "*"))])
        assert await client.zcard(backend._key("index")) >= count
        return count
    assert isinstance(backend, LMDBResultBackend)
    env = LMDBEnv.acquire(backend.path)
    try:
        names = ("results", "result_order", "result_exp")
        counts = await env.read(
            lambda txn: {name: txn.stat(env.dbs[name])["entries"] for name in names}
        )
    finally:
        env.release()
    assert counts["result_order"] == counts["results"], counts
    assert counts["result_exp"] in (0, counts["results"]), counts
    return counts["results"]


async def assert_still_waiting(waiter: asyncio.Task[TaskResult]) -> None:
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done, "wait returned before a final result was stored"


async def woken(waiter: asyncio.Task[TaskResult]) -> TaskResult:
    """The waiter's result, which must come from a wake-up, long before its own deadline."""
    async with asyncio.timeout(WAKE_S):
        return await waiter


# Store and read ----------------------------------------------------------------------------


async def test_get_returns_none_for_a_task_without_results(results: ResultBackend) -> None:
    assert await results.get(new_id()) is None
    assert await results.attempts(new_id()) == []
    assert await results.results() == []


async def test_get_returns_the_highest_attempt_whatever_the_store_order(
    results: ResultBackend,
) -> None:
    task_id = new_id()
    second = make_result(task_id, attempt=2, value="second")
    first = make_result(task_id, attempt=1, will_retry=True, error="boom")
    await results.store(second)
    await results.store(first)

    assert await results.get(task_id) == second
    assert await results.attempts(task_id) == [first, second]


async def test_store_of_the_same_attempt_replaces_it(results: ResultBackend) -> None:
    task_id = new_id()
    await results.store(make_result(task_id, value="old"))
    newer = make_result(task_id, value="new")
    await results.store(newer)

    assert await results.get(task_id) == newer
    assert await results.attempts(task_id) == [newer]
    assert await results.results() == [newer]


async def test_results_lists_newest_first_and_honours_limit(results: ResultBackend) -> None:
    stored = [make_result(new_id(), value=n) for n in range(3)]
    for result in stored:
        await results.store(result)

    assert await results.results() == stored[::-1]
    assert await results.results(limit=2) == stored[:0:-1]
    assert await results.results(limit=0) == []
    assert await results.results(limit=10) == stored[::-1]


async def test_results_with_negative_limit_raises_config_error(results: ResultBackend) -> None:
    with pytest.raises(ConfigError, match=r"^limit must be None or at least 0; got -1$"):
        await results.results(limit=-1)


async def test_task_result_round_trips_every_field(results: ResultBackend) -> None:
    started = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    value = {
        "pair": (1, "two"),
        "raw": b"\x00\xff",
        "price": Decimal("1.10"),
        "when": started,
        "id": uuid.UUID(int=7),
        "nested": [{"deep": (None, True, 2.5)}],
        "big": 2**200,
    }
    result = TaskResult(
        task_id=new_id(),
        func_name="tests.compute",
        success=True,
        value=value,
        error="not really",
        error_type="builtins.RuntimeError",
        traceback="Traceback (most recent call last):\n  ...",
        attempt=3,
        max_retries=4,
        will_retry=False,
        duration=1.25,
        fetched_at=started - timedelta(seconds=1),
        started_at=started,
        finished_at=started + timedelta(seconds=1.25),
    )
    await results.store(result)

    got = await results.get(result.task_id)
    assert got == result
    assert got is not None
    assert_same(got.value, value)
    assert got.started_at is not None
    assert got.started_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(object(), id="object"),
        pytest.param({1, 2}, id="set"),
        pytest.param((n for n in range(2)), id="generator"),
    ],
)
async def test_store_of_an_unencodable_value_raises_and_stores_nothing(
    results: ResultBackend, value: object
) -> None:
    task_id = new_id()
    with pytest.raises(SerializationError, match=r"^result\['value'\] has type \w+, which cannot"):
        await results.store(make_result(task_id, value=value))

    assert await results.get(task_id) is None
    assert await results.results() == []


async def test_error_text_in_any_script_round_trips(results: ResultBackend) -> None:
    """PF-08: non-ASCII error text must never make result storage fail.

    https://github.com/celery/celery/issues/3858
    """
    text = "ошибка: файл не найден 💥 \udcff"
    result = TaskResult(
        task_id=new_id(),
        func_name="tests.fail",
        success=False,
        error=text,
        error_type="tests.Ошибка",
        traceback=f"Traceback ...\n{text}",
    )
    await results.store(result)

    assert await results.get(result.task_id) == result


# Wait --------------------------------------------------------------------------------------


async def test_wait_returns_a_stored_final_result_at_once(results: ResultBackend) -> None:
    result = make_result(new_id(), value=42)
    await results.store(result)

    assert await results.wait(result.task_id, timeout=0) == result


async def test_wait_wakes_when_a_final_result_is_stored(results: ResultBackend) -> None:
    result = make_result(new_id(), value="late")
    waiter = asyncio.create_task(results.wait(result.task_id, timeout=LONG_S))
    await assert_still_waiting(waiter)

    await results.store(result)

    assert await woken(waiter) == result


async def test_wait_ignores_a_result_that_will_retry(results: ResultBackend) -> None:
    task_id = new_id()
    await results.store(make_result(task_id, attempt=1, will_retry=True, error="flaky"))
    waiter = asyncio.create_task(results.wait(task_id, timeout=LONG_S))
    await assert_still_waiting(waiter)

    final = make_result(task_id, attempt=2, value="ok")
    await results.store(final)

    assert await woken(waiter) == final


async def test_wait_wakes_every_waiter_of_the_task_only(results: ResultBackend) -> None:
    first, other = make_result(new_id(), value=1), make_result(new_id(), value=2)
    waiters = [asyncio.create_task(results.wait(first.task_id, timeout=LONG_S)) for _ in "ab"]
    other_waiter = asyncio.create_task(results.wait(other.task_id, timeout=LONG_S))
    await assert_still_waiting(other_waiter)

    await results.store(first)

    assert [await woken(waiter) for waiter in waiters] == [first, first]
    await assert_still_waiting(other_waiter)
    await results.store(other)
    assert await woken(other_waiter) == other


async def test_wait_times_out_naming_the_task(results: ResultBackend) -> None:
    task_id = new_id()
    await results.store(make_result(task_id, will_retry=True, error="flaky"))

    with pytest.raises(TaskTimeout, match=rf"^no final result for task {task_id} within 0\.2 s$"):
        await results.wait(task_id, timeout=0.2)


async def test_wait_timeout_carries_task_id_and_timeout(results: ResultBackend) -> None:
    task_id = new_id()
    message = rf"^no final result for task {task_id} within 0 s$"
    with pytest.raises(TaskTimeout, match=message) as info:
        await results.wait(task_id, timeout=0)

    assert (info.value.task_id, info.value.timeout_s) == (task_id, 0)
    assert isinstance(info.value, TimeoutError)


BAD_TIMEOUTS = [pytest.param(-1.0, id="negative"), pytest.param(math.nan, id="nan")]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
async def test_wait_with_a_bad_timeout_raises_config_error(
    results: ResultBackend, timeout: float
) -> None:
    with pytest.raises(ConfigError, match=r"^timeout must be a number of seconds"):
        await results.wait(new_id(), timeout=timeout)


async def test_wait_cancelled_leaves_the_backend_usable(results: ResultBackend) -> None:
    task_id = new_id()
    waiter = asyncio.create_task(results.wait(task_id, timeout=LONG_S))
    await assert_still_waiting(waiter)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter

    result = make_result(task_id)
    await results.store(result)
    assert await results.wait(task_id, timeout=1) == result


# Expiry ------------------------------------------------------------------------------------


async def test_results_past_their_ttl_are_invisible_and_purged(open_results: OpenResults) -> None:
    """PF-27: https://github.com/celery/celery/issues/75"""
    timeline = open_results.timeline
    ttl_s = timeline.ttl_s
    results = open_results(ttl_s=ttl_s)
    old = make_result(new_id(), value="old")
    await results.store(old)
    await timeline.advance(ttl_s / 2)
    young = make_result(new_id(), value="young")
    await results.store(young)
    await timeline.advance(ttl_s / 2 + timeline.slack_s)

    assert await results.results() == [young]
    assert await results.get(old.task_id) is None
    assert await results.attempts(old.task_id) == []
    assert await results.get(young.task_id) == young
    assert await stored_count(results) == 1

    await timeline.advance(ttl_s)
    assert await results.get(young.task_id) is None
    assert await stored_count(results) == 0


async def test_store_purges_results_past_their_ttl(open_results: OpenResults) -> None:
    timeline = open_results.timeline
    results = open_results(ttl_s=timeline.ttl_s)
    for n in range(3):
        await results.store(make_result(new_id(), value=n))
    await timeline.advance(timeline.ttl_s + timeline.slack_s)

    await results.store(make_result(new_id()))

    assert await stored_count(results) == 1


async def test_wait_ignores_an_expired_final_result(open_results: OpenResults) -> None:
    timeline = open_results.timeline
    results = open_results(ttl_s=timeline.ttl_s)
    task_id = new_id()
    await results.store(make_result(task_id))
    await timeline.advance(timeline.ttl_s + timeline.slack_s)

    with pytest.raises(TaskTimeout, match=task_id):
        await results.wait(task_id, timeout=0)


async def test_ttl_none_keeps_results_forever(open_results: OpenResults) -> None:
    results = open_results(ttl_s=None)
    result = make_result(new_id())
    await results.store(result)
    await open_results.timeline.skip_far_ahead(results)
    await results.store(make_result(new_id()))

    assert await results.get(result.task_id) == result
    assert await stored_count(results) == 2


@pytest.mark.parametrize(
    "ttl_s",
    [
        pytest.param(0.0, id="zero"),
        pytest.param(-1.0, id="negative"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
    ],
)
def test_ttl_that_is_not_positive_raises_config_error(
    open_results: OpenResults, ttl_s: float
) -> None:
    with pytest.raises(ConfigError, match=r"^result ttl_s must be a positive number of seconds"):
        open_results(ttl_s=ttl_s)


# Close -------------------------------------------------------------------------------------


async def test_close_is_idempotent_and_later_calls_raise(results: ResultBackend) -> None:
    await results.close()
    await results.close()

    with pytest.raises(StorageUnavailable, match=r"result backend .*is closed$"):
        await results.get(new_id())
    with pytest.raises(StorageUnavailable, match=r"is closed$"):
        await results.store(make_result(new_id()))


async def test_close_wakes_waiters_with_storage_unavailable(results: ResultBackend) -> None:
    waiter = asyncio.create_task(results.wait(new_id(), timeout=LONG_S))
    await assert_still_waiting(waiter)

    await results.close()

    with pytest.raises(StorageUnavailable, match=r"is closed$"):
        await woken(waiter)


async def test_async_with_closes_the_backend(open_results: OpenResults) -> None:
    async with open_results() as results:
        await results.store(make_result(new_id()))

    with pytest.raises(StorageUnavailable, match=r"is closed$"):
        await results.results()


# LMDB only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", [pytest.param("nope", id="word"), pytest.param("", id="empty")])
async def test_lmdb_task_id_that_is_not_a_uuid_raises_config_error(
    tmp_path: Path, task_id: str
) -> None:
    async with LMDBResultBackend(tmp_path) as results:
        with pytest.raises(ConfigError, match=rf"^task id {task_id!r} is not a UUID"):
            await results.get(task_id)
        with pytest.raises(ConfigError, match=r"is not a UUID"):
            await results.store(make_result(task_id))


@pytest.mark.parametrize(
    "attempt", [pytest.param(-1, id="negative"), pytest.param(2**32, id="huge")]
)
async def test_lmdb_attempt_outside_u32_raises_config_error(tmp_path: Path, attempt: int) -> None:
    async with LMDBResultBackend(tmp_path) as results:
        with pytest.raises(
            ConfigError, match=rf"^attempt must be between 0 and 2\*\*32 - 1; got {attempt}$"
        ):
            await results.store(make_result(new_id(), attempt=attempt))


async def test_lmdb_store_sweeps_a_bounded_batch_and_reads_purge_the_rest(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with LMDBResultBackend(tmp_path, ttl_s=TTL_S, clock=clock) as results:
        await asyncio.gather(*(results.store(make_result(new_id())) for _ in range(100)))
        clock.advance(TTL_S + 1)

        await results.store(make_result(new_id()))
        assert await stored_count(results) == 100 - lmdb_results._SWEEP_PER_STORE + 1

        assert len(await results.results()) == 1
        assert await stored_count(results) == 1


async def test_lmdb_results_of_a_long_run_of_stores_alone_stay_near_rate_times_ttl(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A worker only stores, never reads: its own stores must purge what expired.

    The soak (benchmarks/soak.py) shows this over a million tasks; here 60 steps of a fifth
    of the TTL each, with 200 results per step (more than one sweep batch), on a fake clock.
    """
    per_step, step_s = 200, TTL_S / 5
    async with LMDBResultBackend(tmp_path, ttl_s=TTL_S, clock=clock) as results:
        counts = []
        for _ in range(60):
            await asyncio.gather(*(results.store(make_result(new_id())) for _ in range(per_step)))
            counts.append(await stored_count(results))
            clock.advance(step_s)

    # Results of the last five steps are live, and the step's own stores purge the sixth.
    assert max(counts) <= 6 * per_step, counts
    assert counts[-1] == counts[10], counts


async def test_lmdb_backends_on_one_directory_share_one_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PF-23: https://github.com/jnwatson/py-lmdb/issues/129"""
    (tmp_path / "db").mkdir()
    os.symlink(tmp_path / "db", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    by_relative = LMDBResultBackend("db")
    by_absolute = LMDBResultBackend(tmp_path / "db")
    by_symlink = LMDBResultBackend(tmp_path / "link")
    backends = [by_relative, by_absolute, by_symlink]
    assert by_relative._env is by_absolute._env is by_symlink._env

    first = make_result(new_id())
    await by_relative.store(first)
    await by_relative.close()
    second = make_result(new_id())
    await by_absolute.store(second)
    await by_absolute.close()

    assert await by_symlink.results() == [second, first]
    await by_symlink.close()
    assert all(backend._env.closed for backend in backends)


async def test_lmdb_backend_shares_its_environment_with_other_holders(tmp_path: Path) -> None:
    env = LMDBEnv.acquire(tmp_path)
    try:
        async with LMDBResultBackend(tmp_path) as results:
            assert results._env is env
        assert not env.closed
    finally:
        env.release()
    assert env.closed


class _DeafWatch:
    """A doorbell watch that never fires, as on a platform without inotify."""

    def __init__(
        self, path: str, loop: asyncio.AbstractEventLoop, on_ring: Callable[[], None]
    ) -> None:
        self.active = False

    def close(self) -> None:
        pass


async def test_lmdb_wait_looks_again_when_no_doorbell_rings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lmdb_results, "_RECHECK_S", 0.05)
    monkeypatch.setattr(lmdb_results, "DoorbellWatch", _DeafWatch)
    async with LMDBResultBackend(tmp_path) as results:
        monkeypatch.setattr(results._env, "listen", lambda *args: lambda: None)
        result = make_result(new_id())
        waiter = asyncio.create_task(results.wait(result.task_id, timeout=LONG_S))
        await assert_still_waiting(waiter)

        await results.store(result)

        assert await woken(waiter) == result


def _store_final_in_child(path: str, task_id: str, store_started: Synchronized[float]) -> None:
    asyncio.run(_store_final_later(path, task_id, store_started))


async def _store_final_later(path: str, task_id: str, store_started: Synchronized[float]) -> None:
    async with LMDBResultBackend(path) as results:
        # A deliberate delay, not a wait for state: the parent must be inside wait() already.
        await asyncio.sleep(0.3)
        # Stamped before the store: the parent may wake before store() returns here.
        store_started.value = time.monotonic()
        await results.store(make_result(task_id, value="from the child"))


@pytest.mark.slow
# A spawned interpreter can take many seconds to start on a busy 2-core machine.
@pytest.mark.timeout(60)
async def test_wait_wakes_on_result_from_another_process(tmp_path: Path) -> None:
    """The parent wakes within a second of the child storing, long before any fallback look.

    The fallback look is stretched to 60 s, and a result found only when the 10 s deadline
    fires would be late by seconds, so only the doorbell can pass this. CLOCK_MONOTONIC is
    shared by every process on the host.
    """
    path = str(tmp_path / "db")
    task_id = new_id()
    context = multiprocessing.get_context("spawn")
    store_started = context.Value("d", 0.0)
    async with LMDBResultBackend(path) as results:
        child = context.Process(target=_store_final_in_child, args=(path, task_id, store_started))
        child.start()
        try:
            result = await results.wait(task_id, timeout=10)
            woke_at = time.monotonic()
        finally:
            await asyncio.to_thread(child.join, 10)
        assert child.exitcode == 0
        child.close()

    assert result.value == "from the child"
    assert 0 < woke_at - store_started.value < 1.0


@settings(deadline=None)
@given(
    value=codec_values,
    error=st.none() | texts,
    duration=floats,
    times=st.lists(st.none() | datetimes, min_size=3, max_size=3),
)
def test_task_result_bytes_are_its_fields_encoded_as_one_record(
    value: object, error: str | None, duration: float, times: list[datetime | None]
) -> None:
    # to_bytes writes the record field by field; it must be the text that encoding every
    # init field, in field order, as one dict writes (what earlier versions stored).
    result = TaskResult(
        task_id=new_id(),
        func_name="tests.add",
        success=error is None,
        value=value,
        error=error,
        traceback=error,
        duration=duration,
        fetched_at=times[0],
        started_at=times[1],
        finished_at=times[2],
    )
    names = [f.name for f in dataclasses.fields(TaskResult) if f.init]
    record = {name: _codec.encode(getattr(result, name), name) for name in names}

    assert result.to_bytes() == _codec.dump_text(record).encode("ascii")


async def test_memory_results_are_not_tracked_by_the_garbage_collector() -> None:
    # A day of results must not make every collection of the worker walk them.
    results = InMemoryResultBackend()
    for n in range(3):
        await results.store(make_result(new_id(), value=[n]))
    await results.store(make_result(new_id(), attempt=2, value={"n": 1}))
    # A collection untracks a tuple once its items are untracked: two do it for the nested.
    gc.collect()
    gc.collect()

    assert not any(gc.is_tracked(stored) for stored in results._by_task.values())
