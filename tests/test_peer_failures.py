"""Peer-failure cases (shared/cases/PEER-FAILURES.md) on memory and LMDB, one test per case.

Each test is named after its case id: PF-12 large payloads, PF-16(b) interrupted sync tasks,
PF-27 result expiry, PF-28 bounded result waits, PF-33 clocks and time zones, PF-34 ordering
and priority, PF-35 per-task bookkeeping that must not pile up.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import os
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from looplane._clock import FakeClock
from looplane.broker import StorageConsumer, StorageProducer
from looplane.errors import SerializationError, TaskTimeout
from looplane.orchestrator import Orchestrator
from looplane.result import (
    DEFAULT_RESULT_TTL_S,
    InMemoryResultBackend,
    LMDBResultBackend,
    ResultBackend,
    TaskResult,
)
from looplane.storage import InMemoryStorage, LMDBStorage, NewTask, QueueCounts, StorageBackend
from looplane.task import new_task_id
from tests._rig import Register, Rig, run_until, until

if TYPE_CHECKING:
    from pathlib import Path

KINDS = [pytest.param("memory", id="memory"), pytest.param("lmdb", id="lmdb")]


def open_results(
    kind: str, tmp_path: Path, *, clock: FakeClock, ttl_s: float | None
) -> ResultBackend:
    if kind == "memory":
        return InMemoryResultBackend(ttl_s=ttl_s, clock=clock)
    return LMDBResultBackend(tmp_path / "db", ttl_s=ttl_s, clock=clock)


def stored_results(backend: ResultBackend) -> int:
    """How many results the backend physically holds, expired or not."""
    if isinstance(backend, LMDBResultBackend):
        env = backend._env
        db = env.dbs["results"]
        return int(env.read_sync(lambda txn: txn.stat(db)["entries"]))
    assert isinstance(backend, InMemoryResultBackend)
    return len(backend._order)


def open_storage(kind: str, tmp_path: Path, clock: FakeClock) -> StorageBackend:
    if kind == "memory":
        return InMemoryStorage(clock=clock)
    return LMDBStorage(tmp_path / "db", clock=clock)


# PF-12 · Large payloads ----------------------------------------------------------------------


class LagMeter:
    """Measures how late the event loop wakes a coroutine that sleeps in short steps."""

    def __init__(self, step_s: float = 0.01) -> None:
        self.step_s = step_s
        self.worst_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.step_s)
            self.worst_s = max(self.worst_s, loop.time() - before - self.step_s)


async def test_pf12_large_payloads_are_refused_or_round_trip_without_stalling_others(
    rig: Rig, tasks: Register
) -> None:
    @tasks
    async def size_of(data: str | list[int]) -> int:
        return len(data)

    @tasks
    async def small(n: int) -> int:
        await asyncio.sleep(0.1)
        return n

    lag = LagMeter()
    ticker = asyncio.create_task(lag.run())
    orchestrator = rig.orchestrator(25)
    try:
        # 50 MB is over the 16 MiB default: refused at send, naming the limit and the setting.
        with pytest.raises(
            SerializationError,
            match=r"^task 'test\.size_of' encodes to \d+ bytes, over the limit of 16777216 "
            r"bytes \(raise max_payload_bytes to allow it\)$",
        ):
            await rig.producer.send(size_of, "x" * 50_000_000)
        assert await rig.storage.counts() == QueueCounts()

        smalls = await rig.producer.send_batch([(small, (n,), {}) for n in range(20)], timeout=2)
        await orchestrator.start()
        text = await rig.producer.send(size_of, "x" * 10_000_000)
        numbers = await rig.producer.send(size_of, list(range(2_000_000)))  # ~15 MB encoded
        finals = await asyncio.gather(
            rig.outcome(text, timeout=25),
            rig.outcome(numbers, timeout=25),
            *(rig.outcome(t, timeout=25) for t in smalls),
        )
    finally:
        ticker.cancel()
        await orchestrator.stop()

    assert [(r.success, r.value) for r in finals[:2]] == [(True, 10_000_000), (True, 2_000_000)]
    assert [(r.success, r.value, r.attempt) for r in finals[2:]] == [
        (True, n, 1) for n in range(20)
    ]
    assert await rig.storage.counts() == QueueCounts()
    assert len(await rig.results.results()) == 22
    # Big payloads are encoded and decoded in threads; only a generous bound is asserted.
    assert lag.worst_s < 1.0, f"event loop stalled for {lag.worst_s:.3f} s"


# PF-16 · Cancellation must leave a consistent state ----------------------------------------


async def test_pf16b_graceful_stop_waits_for_a_sync_thread_then_requeues_it(
    rig: Rig, tasks: Register, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread cannot be cancelled: requeueing while it runs would let a second worker run the
    task at the same time, so a graceful stop waits for the thread, drops its late return,
    and gives the attempt back."""
    started = threading.Event()
    release = threading.Event()

    @tasks
    def blocks() -> str:
        started.set()
        release.wait(10)
        return "late"

    task = await rig.producer.send(blocks, retries=0)
    orchestrator = rig.orchestrator(grace_s=0.05)
    await orchestrator.start()
    assert await asyncio.to_thread(started.wait, 10)
    stopping = asyncio.create_task(orchestrator.stop(wait=True))
    await until(lambda: "waiting for its thread to end" in caplog.text)
    counts = await rig.storage.counts()
    assert (counts.ready, counts.leased) == (0, 1)

    release.set()
    await stopping
    counts = await rig.storage.counts()
    assert (counts.ready, counts.leased, counts.dead) == (1, 0, 0)
    assert await rig.results.attempts(task.id) == []

    # The interruption did not use up the task's only attempt.
    started.clear()
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert (final.success, final.value, final.attempt) == (True, "late", 1)
    assert len(await rig.results.attempts(task.id)) == 1


async def test_pf16b_forced_stop_leaves_a_running_sync_task_leased(
    rig: Rig, tasks: Register
) -> None:
    started = threading.Event()
    release = threading.Event()

    @tasks
    def blocks() -> str:
        started.set()
        release.wait(10)
        return "late"

    task = await rig.producer.send(blocks, retries=1)
    orchestrator = rig.orchestrator()
    await orchestrator.start()
    assert await asyncio.to_thread(started.wait, 10)
    await orchestrator.stop(wait=False)
    # Closing the consumer (as a worker does on exit) must not give the task back while its
    # thread still runs: another worker would run it at the same time.
    await orchestrator.consumer.close()
    counts = await rig.storage.counts()
    release.set()
    assert (counts.ready, counts.leased, counts.dead) == (0, 1, 0)
    assert await rig.results.attempts(task.id) == []


# PF-27 · Results must expire ---------------------------------------------------------------

TRACEBACK_10K = "Traceback (most recent call last):\n" + (
    '  File "/srv/app/tasks.py", line 42, in handler\n    raise ValueError(payload)\n' * 130
)


def make_result(number: int, *, failed: bool) -> TaskResult:
    now = datetime.now(UTC)
    if failed:
        return TaskResult(
            task_id=new_task_id(),
            func_name="test.flaky",
            success=False,
            error=f"ValueError: failure {number}",
            error_type="ValueError",
            traceback=TRACEBACK_10K,
            finished_at=now,
        )
    return TaskResult(
        task_id=new_task_id(), func_name="test.fine", success=True, value=number, finished_at=now
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_pf27_expired_results_are_unreadable_and_purged(kind: str, tmp_path: Path) -> None:
    assert len(TRACEBACK_10K) >= 10_000
    clock = FakeClock()
    backend = open_results(kind, tmp_path, clock=clock, ttl_s=2)
    old = [make_result(n, failed=n % 2 == 1) for n in range(1_000)]
    await asyncio.gather(*(backend.store(r) for r in old))
    assert stored_results(backend) == 1_000
    assert await backend.get(old[0].task_id) == old[0]

    clock.advance(3)
    fresh = make_result(1_000, failed=False)
    await backend.store(fresh)
    # The store itself swept expired results (a bounded batch on LMDB), with no read.
    assert stored_results(backend) < 1_000

    assert await backend.get(old[0].task_id) is None
    assert await backend.attempts(old[1].task_id) == []
    with pytest.raises(TaskTimeout, match=old[2].task_id):
        await backend.wait(old[2].task_id, timeout=0)
    assert await backend.results() == [fresh]
    assert stored_results(backend) == 1
    await backend.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_pf27_stores_alone_purge_every_expired_result(kind: str, tmp_path: Path) -> None:
    """Most results are never read: the sweep on store must clear them all by itself."""
    clock = FakeClock()
    backend = open_results(kind, tmp_path, clock=clock, ttl_s=2)
    await asyncio.gather(*(backend.store(make_result(n, failed=n % 2 == 1)) for n in range(1_000)))
    clock.advance(3)
    for n in range(20):
        await backend.store(make_result(n, failed=False))
    assert stored_results(backend) == 20
    await backend.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_pf27_default_ttl_is_finite_and_none_keeps_results(kind: str, tmp_path: Path) -> None:
    assert 0 < DEFAULT_RESULT_TTL_S < math.inf
    for cls in (InMemoryResultBackend, LMDBResultBackend):
        default = inspect.signature(cls).parameters["ttl_s"].default
        assert default == DEFAULT_RESULT_TTL_S, cls.__name__

    clock = FakeClock()
    default_backend: ResultBackend = (
        InMemoryResultBackend(clock=clock)
        if kind == "memory"
        else LMDBResultBackend(tmp_path / "default", clock=clock)
    )
    kept = open_results(kind, tmp_path, clock=clock, ttl_s=None)
    first, second = make_result(1, failed=True), make_result(2, failed=True)
    await default_backend.store(first)
    await kept.store(second)

    clock.advance(DEFAULT_RESULT_TTL_S + 1)
    assert await default_backend.get(first.task_id) is None
    clock.advance(10 * 365 * 86_400)
    await kept.store(make_result(3, failed=False))
    assert await kept.get(second.task_id) == second
    assert len(await kept.results()) == 2
    await default_backend.close()
    await kept.close()


# PF-28 · Waiting for a result must not hang forever ----------------------------------------


async def test_pf28_wait_on_an_id_never_sent_raises_task_timeout_with_the_id(rig: Rig) -> None:
    task_id = new_task_id()
    with pytest.raises(
        TaskTimeout, match=rf"^no final result for task {task_id} within 0\.1 s$"
    ) as caught:
        await rig.results.wait(task_id, timeout=0.1)
    assert (caught.value.task_id, caught.value.timeout_s) == (task_id, 0.1)


@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(ResultBackend, id="interface"),
        pytest.param(InMemoryResultBackend, id="memory"),
        pytest.param(LMDBResultBackend, id="lmdb"),
    ],
)
def test_pf28_default_wait_timeout_is_finite(cls: type[ResultBackend]) -> None:
    default = inspect.signature(cls.wait).parameters["timeout"].default
    assert isinstance(default, int | float)
    assert 0 < default < math.inf


async def test_pf28_result_stored_while_waiting_is_returned(rig: Rig) -> None:
    result = make_result(7, failed=False)
    waiter = asyncio.create_task(rig.results.wait(result.task_id, timeout=2))
    await rig.results.store(result)
    assert await waiter == result
    # A result present at the deadline itself is returned, not reported as a timeout.
    assert await rig.results.wait(result.task_id, timeout=0) == result


async def test_pf28_unencodable_return_value_still_gives_a_prompt_result(
    rig: Rig, tasks: Register
) -> None:
    @tasks
    async def returns_a_set() -> set[int]:
        return {1, 2}

    task = await rig.producer.send(returns_a_set, retries=3)
    final = await run_until(rig.orchestrator(), rig.outcome(task, timeout=5))
    assert (final.success, final.attempt, final.will_retry) == (False, 1, False)
    assert final.error is not None
    assert "type set" in final.error


# PF-33 · ETAs and time zones ---------------------------------------------------------------


class SteppedWallClock(FakeClock):
    """A fake clock whose wall clock can be set, as NTP or an operator would, on its own."""

    def step_wall(self, seconds: float) -> None:
        """Move only the wall clock; the boot clock is untouched."""
        self._wall += seconds


@pytest.mark.parametrize("kind", KINDS)
async def test_pf33_retry_delay_runs_on_the_boot_clock_despite_wall_clock_jumps(
    kind: str, tmp_path: Path
) -> None:
    clock = SteppedWallClock()
    async with open_storage(kind, tmp_path, clock) as storage:
        await storage.enqueue([NewTask(task_id=new_task_id(), payload=b"{}", max_attempts=3)])
        [claim] = await storage.claim(1)
        assert await storage.release(claim, delay_s=10)
        assert (await storage.counts()).delayed == 1

        clock.step_wall(-3_600)  # the wall clock is set back an hour
        clock.advance(9.9)
        assert await storage.claim(1) == []
        clock.step_wall(2 * 86_400)  # and then two days forward
        assert await storage.claim(1) == []

        clock.advance(0.2)
        [again] = await storage.claim(1)
        assert (again.task_id, again.attempt) == (claim.task_id, 2)


PRODUCER_SCRIPT = """
import asyncio, sys, time
from datetime import datetime
from looplane.broker import StorageProducer
from looplane.storage import LMDBStorage

async def main():
    async with LMDBStorage(sys.argv[1]) as storage:
        task = await StorageProducer(storage).send("test.pf33_stamp", datetime.now().astimezone())
    print(task.id, time.strftime("%Z"))

asyncio.run(main())
"""


@pytest.mark.skipif(
    not os.path.exists("/usr/share/zoneinfo/Europe/Berlin"), reason="no system tz database"
)
async def test_pf33_producer_in_another_time_zone_gets_utc_result_timestamps(
    tmp_path: Path, tasks: Register
) -> None:
    @tasks(name="test.pf33_stamp")
    async def stamp(sent_at: datetime) -> datetime:
        return sent_at

    path = tmp_path / "db"
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PRODUCER_SCRIPT,
        str(path),
        env={**os.environ, "TZ": "Europe/Berlin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(producer.communicate(), timeout=20)
    assert producer.returncode == 0, err.decode()
    task_id, zone = out.decode().split()
    assert zone in {"CET", "CEST"}  # the producer really ran in Berlin time

    storage, results = LMDBStorage(path), LMDBResultBackend(path)
    orchestrator = Orchestrator(StorageConsumer(storage), results, 2)
    try:
        final = await run_until(orchestrator, results.wait(task_id, timeout=10))
    finally:
        await storage.close()
        await results.close()

    now = datetime.now(UTC)
    stamps = [final.fetched_at, final.started_at, final.finished_at]
    for when in stamps:
        assert when is not None
        assert when.utcoffset() == timedelta(0)
    assert final.finished_at is not None
    assert abs(final.finished_at - now) < timedelta(minutes=1)
    # The aware local time sent from Berlin is the same instant here, whatever its offset.
    assert final.success
    assert abs(final.value - now) < timedelta(minutes=1)
    assert final.value.utcoffset() in {timedelta(hours=1), timedelta(hours=2)}


# PF-34 · Ordering and priority -------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [pytest.param(1, id="one"), pytest.param(7, id="seven")])
async def test_pf34_one_consumer_receives_equal_priority_tasks_in_send_order(
    rig: Rig, tasks: Register, batch_size: int
) -> None:
    @tasks
    async def numbered(n: int) -> int:
        return n

    await rig.producer.send_batch([(numbered, (n,), {}) for n in range(1, 101)])
    received: list[int] = []
    async with StorageConsumer(rig.storage) as consumer:
        while batch := await consumer.receive_batch(batch_size, timeout=0):
            for task in batch:
                received.append(task.args[0])
                await consumer.ack(task)
    assert received == list(range(1, 101))


async def test_pf34_orchestrator_at_concurrency_one_starts_tasks_in_send_order(
    rig: Rig, tasks: Register
) -> None:
    started: list[int] = []

    @tasks
    async def numbered(n: int) -> int:
        started.append(n)
        if n <= 10:  # keep sending while the queue drains: newer tasks must not overtake
            await rig.producer.send(numbered, 100 + n)
        return n

    await rig.producer.send_batch([(numbered, (n,), {}) for n in range(1, 101)])
    orchestrator = rig.orchestrator(1)
    await orchestrator.start()
    try:
        await until(lambda: len(started) == 110, timeout=20)
    finally:
        await orchestrator.stop()
    assert started == list(range(1, 111))


@pytest.mark.parametrize("kind", KINDS)
async def test_pf34_higher_priority_first_and_fifo_within_a_priority(
    kind: str, tmp_path: Path
) -> None:
    priorities = [0, 5, 0, 9, 5, 0, 9, 1, 5, 0, 9, 1]
    sent = [
        NewTask(task_id=new_task_id(), payload=b"{}", max_attempts=1, priority=p)
        for p in priorities
    ]
    async with open_storage(kind, tmp_path, FakeClock()) as storage:
        await storage.enqueue(sent[:6])  # two writes, so order spans more than one batch
        await storage.enqueue(sent[6:])
        taken = []
        while claims := await storage.claim(1):
            taken.append(claims[0].task_id)
            assert await storage.ack(claims[0])

    order = sorted(range(len(sent)), key=lambda i: (-priorities[i], i))
    assert taken == [sent[i].task_id for i in order]


# PF-35 · Per-task bookkeeping must not pile up ---------------------------------------------


class CanaryError(Exception):
    """Raised by the failing tasks; no instance may outlive its attempt."""


def fail_deep(depth: int) -> None:
    if depth:
        fail_deep(depth - 1)
    raise CanaryError("x" * 1_000)


async def test_pf35_many_tasks_leave_no_tasks_running_records_or_live_exceptions(
    tasks: Register,
) -> None:
    @tasks
    async def noop() -> None:
        return None

    @tasks(backoff="none")
    async def fails() -> None:
        fail_deep(30)

    storage, results = InMemoryStorage(), InMemoryResultBackend()
    producer = StorageProducer(storage)
    await producer.send_batch([(noop, (), {}) for _ in range(3_000)])
    failing = await producer.send_batch([(fails, (), {}) for _ in range(300)], retries=0)

    gc.collect()
    baseline = len(asyncio.all_tasks())
    orchestrator = Orchestrator(StorageConsumer(storage), results, 50)
    peak = 0

    def all_done() -> bool:
        nonlocal peak
        peak = max(peak, len(asyncio.all_tasks()))
        return orchestrator.finished == 3_300

    await orchestrator.start()
    try:
        await until(all_done, timeout=25)
    finally:
        await orchestrator.stop()

    # Live asyncio tasks stay near concurrency (plus results being recorded) and go back.
    assert peak <= baseline + 2 * 50 + 5
    assert len(asyncio.all_tasks()) <= baseline + 1
    assert orchestrator._running == {}
    assert orchestrator.active_tasks == 0
    assert await storage.counts() == QueueCounts(dead=300)

    # Failures keep formatted text; no exception (with its frames) stays alive.
    final = await results.get(failing[0].id)
    assert final is not None
    assert isinstance(final.traceback, str)
    assert "CanaryError" in final.traceback
    assert "fail_deep" in final.traceback
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, CanaryError)]
    await storage.close()
    await results.close()
