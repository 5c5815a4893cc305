"""The orchestrator on both storages: limits, retries, timeouts, stops and bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from looplane import Cancel, Retry, current_task
from looplane._clock import FakeClock
from looplane.broker import StorageConsumer, StorageProducer
from looplane.errors import BrokerError, StorageUnavailable, TaskTimeout
from looplane.orchestrator import Orchestrator
from looplane.result import InMemoryResultBackend, LMDBResultBackend, TaskResult
from looplane.storage import InMemoryStorage, LMDBStorage, NewTask
from tests._rig import Register, Rig, run_until, until, until_async

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from looplane.task import Task


async def test_orchestrator_runs_quickstart_tasks(rig: Rig, tasks: Register) -> None:
    @tasks
    async def greet(name: str) -> str:
        return f"Hello, {name}!"

    sent = [await rig.producer.send(greet, who, retries=3) for who in ("Alice", "Bob")]
    # One at a time, so the results are stored in send order: on Redis two concurrent stores
    # travel on separate connections and may land in either order.
    orchestrator = rig.orchestrator(1)
    await run_until(orchestrator, asyncio.gather(*(rig.outcome(t) for t in sent)))

    listed = await rig.results.results()
    assert [(r.func_name, r.value) for r in listed] == [
        ("test.greet", "Hello, Bob!"),
        ("test.greet", "Hello, Alice!"),
    ]
    assert all(r.success and r.attempt == 1 and r.max_retries == 3 for r in listed)


async def test_orchestrator_never_exceeds_max_concurrent_tasks(rig: Rig, tasks: Register) -> None:
    release = asyncio.Event()
    running: list[int] = []
    peak = 0

    @tasks
    async def hold() -> None:
        nonlocal peak
        running.append(1)
        peak = max(peak, len(running))
        await release.wait()
        running.pop()

    sent = await rig.producer.send_batch([(hold, (), {}) for _ in range(12)])
    orchestrator = rig.orchestrator(3)
    await orchestrator.start()
    await until(lambda: len(running) == 3)
    counts = await rig.storage.counts()
    assert (orchestrator.active_tasks, orchestrator.capacity) == (3, 0)
    assert (counts.leased, counts.ready) == (3, 9)

    release.set()
    await asyncio.gather(*(rig.outcome(t) for t in sent))
    await orchestrator.stop()
    assert peak == 3


async def test_pf05_retries_give_exactly_retries_plus_one_attempts(
    rig: Rig, tasks: Register
) -> None:
    seen: list[tuple[int, bool]] = []

    @tasks(backoff="none")
    async def always_fail() -> None:
        context = current_task()
        seen.append((context.attempt, context.is_last_attempt))
        raise ValueError("nope")

    task = await rig.producer.send(always_fail, retries=3)
    final = await run_until(rig.orchestrator(), rig.outcome(task))

    assert seen == [(1, False), (2, False), (3, False), (4, True)]
    attempts = await rig.results.attempts(task.id)
    assert [r.attempt for r in attempts] == [1, 2, 3, 4]
    assert [r.is_retry for r in attempts] == [False, True, True, True]
    assert {r.max_retries for r in attempts} == {3}
    assert [r.will_retry for r in attempts] == [True, True, True, False]
    assert not final.success
    assert final.attempt == final.max_retries + 1
    assert final.error == "ValueError: nope"
    assert final.error_type == "ValueError"
    assert "raise ValueError" in (final.traceback or "")
    dead = await rig.storage.dead_tasks()
    assert [d.task_id for d in dead] == [task.id]
    assert "failed on attempt 4 of 4" in dead[0].reason


async def test_pf05_fail_twice_then_succeed_ends_on_attempt_three(
    rig: Rig, tasks: Register
) -> None:
    @tasks(backoff="none")
    async def flaky() -> str:
        if current_task().attempt < 3:
            raise RuntimeError("not yet")
        return "ok"

    task = await rig.producer.send(flaky, retries=3)
    final = await run_until(rig.orchestrator(), rig.outcome(task))

    assert (final.success, final.value, final.attempt) == (True, "ok", 3)
    assert len(await rig.results.attempts(task.id)) == 3
    assert (await rig.storage.counts()).dead == 0


async def test_pf05_retries_one_gives_two_attempts(rig: Rig, tasks: Register) -> None:
    @tasks(backoff="none")
    async def fails() -> None:
        raise ValueError("x")

    task = await rig.producer.send(fails, retries=1)
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert [r.attempt for r in await rig.results.attempts(task.id)] == [1, 2]
    assert final.attempt == 2


async def test_orchestrator_retry_waits_in_storage_for_its_backoff(
    tmp_path: Path, tasks: Register
) -> None:
    clock = FakeClock()
    storage = LMDBStorage(tmp_path / "db", clock=clock)
    results = LMDBResultBackend(tmp_path / "db")
    calls = 0

    @tasks(backoff="fixed")
    async def once_broken() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first")
        return calls

    task = await StorageProducer(storage).send(once_broken, retries=1)
    orchestrator = Orchestrator(StorageConsumer(storage, clock=clock), results, 2)
    await orchestrator.start()
    await until(lambda: calls == 1)
    await until_async(lambda: results.get(task.id))
    counts = await storage.counts()
    assert (counts.delayed, counts.ready, calls) == (1, 0, 1)

    clock.advance(1.1)
    final = await results.wait(task.id, timeout=10)
    await orchestrator.stop()
    await storage.close()
    await results.close()
    assert (final.success, final.value, final.attempt) == (True, 2, 2)


async def test_pf14_timeout_is_reported_as_timeout_and_retried(rig: Rig, tasks: Register) -> None:
    cleanups = 0

    @tasks(backoff="none")
    async def too_slow() -> None:
        nonlocal cleanups
        try:
            await asyncio.sleep(30)
        finally:
            cleanups += 1

    task = await rig.producer.send(too_slow, retries=1, timeout=0.2)
    final = await run_until(rig.orchestrator(), rig.outcome(task))

    assert cleanups == 2
    assert not final.success
    assert final.attempt == 2
    assert final.error == "looplane.errors.TaskTimeout: attempt timed out after 0.2s"
    assert final.duration >= 0.2


async def test_orchestrator_timeout_stops_waiting_for_sync_task(rig: Rig, tasks: Register) -> None:
    done = threading.Event()

    @tasks
    def blocks() -> None:
        done.wait(5)

    task = await rig.producer.send(blocks, retries=0, timeout=0.2)
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    done.set()
    assert final.error is not None
    assert "timed out after 0.2s" in final.error


async def test_orchestrator_user_timeout_error_is_not_a_task_timeout(
    rig: Rig, tasks: Register
) -> None:
    @tasks
    async def raises_timeout() -> None:
        raise TimeoutError("upstream")

    task = await rig.producer.send(raises_timeout, retries=0, timeout=5)
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert final.error == "TimeoutError: upstream"


async def test_orchestrator_runs_sync_tasks_in_threads_with_context(
    rig: Rig, tasks: Register
) -> None:
    loop_thread = threading.get_ident()

    @tasks
    def add(a: int, b: int) -> tuple[int, bool, int]:
        return a + b, threading.get_ident() != loop_thread, current_task().attempt

    task = await rig.producer.send(add, 2, 3)
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert final.value == (5, True, 1)


async def test_orchestrator_sync_task_does_not_block_the_loop(rig: Rig, tasks: Register) -> None:
    started = threading.Event()
    finish = threading.Event()

    @tasks
    def blocking() -> str:
        started.set()
        finish.wait(5)
        return "done"

    task = await rig.producer.send(blocking)
    orchestrator = rig.orchestrator()
    await orchestrator.start()
    await until(started.is_set)
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0)
        ticks += 1
    finish.set()
    final = await rig.outcome(task)
    await orchestrator.stop()
    assert (ticks, final.value) == (5, "done")


async def test_orchestrator_retry_and_cancel_signals_steer_attempts(
    rig: Rig, tasks: Register
) -> None:
    @tasks
    async def asks_retry() -> str:
        if current_task().attempt == 1:
            raise Retry("later", delay_s=0)
        return "second"

    @tasks
    async def gives_up() -> None:
        raise Cancel("pointless")

    retried = await rig.producer.send(asks_retry, retries=2)
    cancelled = await rig.producer.send(gives_up, retries=5)
    orchestrator = rig.orchestrator()
    done = await run_until(
        orchestrator, asyncio.gather(rig.outcome(retried), rig.outcome(cancelled))
    )
    assert (done[0].value, done[0].attempt) == ("second", 2)
    assert (done[1].success, done[1].attempt, done[1].error) == (
        False,
        1,
        "looplane.errors.Cancel: pointless",
    )


class KeywordsError(Exception):
    def __init__(self, *, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class LockHoldingError(Exception):
    def __init__(self) -> None:
        super().__init__("has a lock")
        self.lock = threading.Lock()


class BrokenStrError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def raise_chained() -> None:
    try:
        raise KeywordsError(code=1, detail="inner")
    except KeywordsError as inner:
        raise ValueError("outer") from inner


@pytest.mark.parametrize(
    ("raiser", "expected"),
    [
        pytest.param(
            lambda: (_ for _ in ()).throw(KeywordsError(code=7, detail="x")),
            "KeywordsError: 7: x",
            id="keyword-only-init",
        ),
        pytest.param(
            lambda: (_ for _ in ()).throw(LockHoldingError()),
            "LockHoldingError: has a lock",
            id="unpicklable-attribute",
        ),
        pytest.param(
            lambda: (_ for _ in ()).throw(ValueError("Привет 🎉 \udcff")),
            "ValueError: Привет 🎉 \udcff",
            id="non-ascii-and-surrogate",
        ),
        pytest.param(raise_chained, "ValueError: outer", id="chained"),
        pytest.param(
            lambda: (_ for _ in ()).throw(BrokenStrError()),
            "BrokenStrError: <exception message could not be read>",
            id="broken-str",
        ),
    ],
)
async def test_pf08_unencodable_exceptions_are_stored_as_text(
    rig: Rig, tasks: Register, raiser: Callable[[], None], expected: str
) -> None:
    @tasks(backoff="none")
    async def explodes() -> None:
        raiser()

    @tasks
    async def next_one() -> str:
        return "still alive"

    task = await rig.producer.send(explodes, retries=1)
    after = await rig.producer.send(next_one)
    final, alive = await run_until(
        rig.orchestrator(), asyncio.gather(rig.outcome(task), rig.outcome(after))
    )
    assert not final.success
    assert final.attempt == 2
    assert final.error is not None
    assert final.error.endswith(expected)
    assert alive.value == "still alive"


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        pytest.param(object, "object", id="object"),
        pytest.param(lambda: (i for i in range(0)), "generator", id="generator"),
        pytest.param(lambda: {1, 2}, "set", id="set"),
    ],
)
async def test_pf09_unencodable_return_value_is_a_prompt_failure(
    rig: Rig, tasks: Register, make: Callable[[], Any], type_name: str
) -> None:
    runs = 0

    @tasks
    async def returns_odd() -> Any:
        nonlocal runs
        runs += 1
        return make()

    task = await rig.producer.send(returns_odd, retries=3)
    final = await run_until(rig.orchestrator(), rig.outcome(task, timeout=5))
    assert not final.success
    assert final.error is not None
    assert f"type {type_name}" in final.error
    assert (runs, final.attempt, final.will_retry) == (1, 1, False)


async def test_pf09_missing_await_is_reported(rig: Rig, tasks: Register) -> None:
    async def inner() -> int:
        return 1

    @tasks
    async def forgets_await() -> Any:
        return inner()

    task = await rig.producer.send(forgets_await)
    final = await run_until(rig.orchestrator(), rig.outcome(task, timeout=5))
    assert final.error is not None
    assert "coroutine" in final.error


async def test_pf18_unknown_and_corrupt_tasks_are_set_aside(rig: Rig, tasks: Register) -> None:
    @tasks
    async def fine() -> str:
        return "fine"

    unknown = await rig.producer.send("myapp.tasks.new_task")
    raw = [
        NewTask(task_id=f"{i:032x}", payload=payload, max_attempts=4)
        for i, payload in enumerate(
            [
                b'{"v":1,"name":""}',
                b'{"v":1,"name":null}',
                b"\xff\xfe not utf-8",
                b'{"v":1,"id":"x","name":"' + b"n" * 10_000 + b'"}',
            ],
            start=1,
        )
    ]
    await rig.storage.enqueue(raw)
    good = await rig.producer.send(fine)

    orchestrator = rig.orchestrator(2)
    results = await run_until(
        orchestrator,
        asyncio.gather(
            rig.outcome(good), rig.outcome(unknown), *(rig.results.wait(r.task_id) for r in raw)
        ),
    )

    assert results[0].value == "fine"
    assert results[1].error == "unknown task 'myapp.tasks.new_task': no loaded module registered it"
    assert all(not r.success and "undecodable payload" in (r.error or "") for r in results[2:])
    dead = {d.task_id: d.reason for d in await rig.storage.dead_tasks()}
    assert set(dead) == {unknown.id, *(r.task_id for r in raw)}
    assert (await rig.storage.counts()).ready == 0


async def test_pf07_shutdown_interruptions_do_not_use_up_retries(rig: Rig, tasks: Register) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()
    cleanups = 0

    @tasks
    async def long_running() -> str:
        nonlocal cleanups
        started.set()
        try:
            await finish.wait()
        finally:
            cleanups += 1
        return "made it"

    task = await rig.producer.send(long_running, retries=1)
    for _ in range(3):
        orchestrator = rig.orchestrator()
        await orchestrator.start()
        await started.wait()
        started.clear()
        await orchestrator.stop(wait=False)
        assert (await rig.storage.counts()).ready == 1
        assert await rig.results.get(task.id) is None

    finish.set()
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert (final.success, final.value, final.attempt) == (True, "made it", 1)
    assert cleanups == 4


async def test_pf15_graceful_stop_finishes_running_and_keeps_the_rest(
    rig: Rig, tasks: Register
) -> None:
    started: list[int] = []
    gate = asyncio.Event()

    @tasks
    async def step(n: int) -> int:
        started.append(n)
        await gate.wait()
        return n

    sent = await rig.producer.send_batch([(step, (n,), {}) for n in range(10)])
    orchestrator = rig.orchestrator(3)
    await orchestrator.start()
    await until(lambda: len(started) == 3)
    stopping = asyncio.create_task(orchestrator.stop(wait=True))
    await until(lambda: not orchestrator.is_running)
    gate.set()
    await stopping

    assert started == [0, 1, 2]
    finished = [await rig.results.get(t.id) for t in sent]
    assert [r.value for r in finished if r is not None] == [0, 1, 2]
    assert (await rig.storage.counts()).ready == 7


async def test_pf16_stop_is_idempotent_and_bounded(rig: Rig, tasks: Register) -> None:
    ignored = 0

    @tasks
    async def stubborn() -> None:
        nonlocal ignored
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                ignored += 1
                if ignored > 1:
                    raise

    task = await rig.producer.send(stubborn)
    orchestrator = rig.orchestrator(grace_s=0.1)
    await orchestrator.start()
    await until(lambda: orchestrator.active_tasks == 1)
    await asyncio.gather(orchestrator.stop(), orchestrator.stop())
    assert ignored >= 1
    assert await rig.results.get(task.id) is None


async def test_pf16_cancelled_task_runs_finally_and_is_requeued(rig: Rig, tasks: Register) -> None:
    cleanup: list[str] = []
    started = asyncio.Event()

    @tasks
    async def cleans_up() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            cleanup.append("cleanup")

    await rig.producer.send(cleans_up)
    orchestrator = rig.orchestrator()
    await orchestrator.start()
    await started.wait()
    await orchestrator.stop(wait=False)
    counts = await rig.storage.counts()
    assert cleanup == ["cleanup"]
    assert (counts.ready, counts.leased, counts.dead) == (1, 0, 0)


async def test_pf28_wait_for_unknown_task_times_out_with_its_id(rig: Rig) -> None:
    with pytest.raises(TaskTimeout, match=r"deadbeef"):
        await rig.results.wait("deadbeef" * 4, timeout=0.1)


async def test_orchestrator_renews_leases_of_long_tasks(tmp_path: Path, tasks: Register) -> None:
    storage = LMDBStorage(tmp_path / "db", lease_s=0.3)
    results = LMDBResultBackend(tmp_path / "db")
    other = StorageConsumer(storage)

    @tasks
    async def slow() -> int:
        await asyncio.sleep(1.2)
        return current_task().attempt

    task = await StorageProducer(storage).send(slow)
    orchestrator = Orchestrator(StorageConsumer(storage), results, 2)
    await orchestrator.start()
    await until(lambda: orchestrator.active_tasks == 1)
    stolen = await other.receive(timeout=1.0)
    final = await results.wait(task.id, timeout=10)
    await orchestrator.stop()
    await other.close()
    await storage.close()
    await results.close()
    assert stolen is None
    assert (final.success, final.value) == (True, 1)


async def test_orchestrator_cancels_task_whose_lease_was_lost(tasks: Register) -> None:
    clock = FakeClock()
    storage = InMemoryStorage(lease_s=10, clock=clock)
    results = InMemoryResultBackend()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @tasks
    async def victim() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await StorageProducer(storage).send(victim)
    orchestrator = Orchestrator(StorageConsumer(storage, clock=clock), results, 1)
    await orchestrator.start()
    await started.wait()
    clock.advance(11)
    thief = StorageConsumer(storage, clock=clock)
    stolen = await thief.receive(timeout=0)
    await asyncio.wait_for(cancelled.wait(), timeout=10)
    await orchestrator.stop()
    assert stolen is not None
    assert stolen.attempt == 2
    assert orchestrator.active_tasks == 0
    await thief.close()


async def test_orchestrator_time_in_results_is_consistent(rig: Rig, tasks: Register) -> None:
    @tasks
    async def quick() -> None:
        await asyncio.sleep(0.01)

    task = await rig.producer.send(quick)
    before = time.time()
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert final.fetched_at is not None
    assert final.started_at is not None
    assert final.finished_at is not None
    assert final.fetched_at <= final.started_at <= final.finished_at
    assert final.finished_at.timestamp() >= before
    assert final.duration >= 0.01


async def test_orchestrator_task_raising_cancelled_error_is_a_failure(
    rig: Rig, tasks: Register
) -> None:
    @tasks(backoff="none")
    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    task = await rig.producer.send(cancels_itself, retries=1)
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert (final.success, final.attempt) == (False, 2)
    assert final.error_type == "asyncio.exceptions.CancelledError"


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(SystemExit(3), id="system-exit"),
        pytest.param(KeyboardInterrupt(), id="keyboard-interrupt"),
        pytest.param(BaseException("odd"), id="base-exception"),
    ],
)
@pytest.mark.parametrize("sync", [pytest.param(False, id="async"), pytest.param(True, id="sync")])
async def test_orchestrator_base_exceptions_from_tasks_do_not_stop_the_worker(
    rig: Rig, tasks: Register, error: BaseException, sync: bool
) -> None:
    def body() -> None:
        raise error

    async def abody() -> None:
        raise error

    exits = tasks(name="test.exits")(body if sync else abody)

    @tasks
    async def after() -> str:
        return "alive"

    failed = await rig.producer.send(exits, retries=0)
    alive = await rig.producer.send(after)
    outcomes = await run_until(
        rig.orchestrator(), asyncio.gather(rig.outcome(failed), rig.outcome(alive))
    )
    assert not outcomes[0].success
    assert outcomes[0].error_type == type(error).__name__
    assert outcomes[1].value == "alive"


async def test_orchestrator_timeout_holds_when_the_task_swallows_cancellation(
    rig: Rig, tasks: Register
) -> None:
    @tasks
    async def stubborn() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)
        return "finished anyway"

    task = await rig.producer.send(stubborn, retries=0, timeout=0.1)
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert not final.success
    assert final.error_type == "looplane.errors.TaskTimeout"


async def test_orchestrator_timeout_holds_when_the_task_blocks_the_loop(
    rig: Rig, tasks: Register
) -> None:
    @tasks
    async def blocks_loop() -> str:
        time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is what this test is about
        return "too late"

    task = await rig.producer.send(blocks_loop, retries=0, timeout=0.1)
    final = await run_until(rig.orchestrator(), rig.outcome(task))
    assert final.error is not None
    assert "past its timeout of 0.1s" in final.error


async def test_orchestrator_abandoned_threads_do_not_starve_later_sync_tasks(
    rig: Rig, tasks: Register
) -> None:
    release = threading.Event()

    @tasks
    def hangs() -> None:
        release.wait(10)

    @tasks
    def quick() -> str:
        return "ran"

    hung = await rig.producer.send_batch([(hangs, (), {})] * 2, retries=0, timeout=0.2)
    orchestrator = rig.orchestrator(2)
    await orchestrator.start()
    for task in hung:
        assert (await rig.outcome(task)).error_type == "looplane.errors.TaskTimeout"
    assert orchestrator.capacity == 0
    later = await rig.producer.send(quick, retries=0, timeout=0.2)
    release.set()
    final = await rig.outcome(later)
    await orchestrator.stop()
    assert (final.success, final.value) == (True, "ran")


async def test_orchestrator_cannot_start_again_after_stop(rig: Rig) -> None:
    orchestrator = rig.orchestrator()
    await orchestrator.start()
    await orchestrator.stop()
    with pytest.raises(BrokerError, match="create a new one"):
        await orchestrator.start()


async def test_worker_lost_on_last_attempt_gets_a_failed_result(tasks: Register) -> None:
    """A task whose worker dies on its last attempt is set aside with a result and a log
    line, not silently."""
    clock = FakeClock()
    storage = InMemoryStorage(clock=clock)
    results = InMemoryResultBackend()

    @tasks
    async def fragile() -> None:
        return None

    task = await StorageProducer(storage).send(fragile, retries=0)
    doomed = StorageConsumer(storage, clock=clock)
    assert await doomed.receive(timeout=0) is not None
    clock.advance(storage.default_lease_s + 1)

    orchestrator = Orchestrator(StorageConsumer(storage, clock=clock), results, 2)
    final = await run_until(orchestrator, results.wait(task.id, timeout=10))
    assert (final.success, final.func_name, final.attempt) == (False, "test.fragile", 1)
    assert final.error is not None
    assert "lease expired on the last attempt (1 of 1)" in final.error
    assert (await storage.counts()).dead == 1


async def test_requeued_dead_task_runs_again_without_hiding_its_new_result(
    rig: Rig, tasks: Register
) -> None:
    healthy = False

    @tasks(backoff="none")
    async def sometimes() -> str:
        if not healthy:
            raise ValueError("down")
        return "up"

    task = await rig.producer.send(sometimes, retries=1)
    failed = await run_until(rig.orchestrator(), rig.outcome(task))
    assert (failed.success, failed.attempt) == (False, 2)

    healthy = True
    assert await rig.storage.requeue_dead(task.id)
    orchestrator = rig.orchestrator()
    await orchestrator.start()
    await until_async(lambda: _succeeded(rig, task))
    await orchestrator.stop()
    latest = await rig.results.get(task.id)
    assert latest is not None
    assert (latest.success, latest.value, latest.attempt) == (True, "up", 3)
    assert [r.success for r in await rig.results.attempts(task.id)] == [False, False, True]


async def _succeeded(rig: Rig, task: Task) -> bool:
    latest = await rig.results.get(task.id)
    return latest is not None and latest.success


async def test_redelivered_task_that_already_succeeded_is_acked_without_running(
    tasks: Register,
) -> None:
    """A worker killed between storing a success and acking it must not cause a second run
    (and a second success) when the task is delivered again."""
    clock = FakeClock()
    storage = InMemoryStorage(clock=clock)
    results = InMemoryResultBackend()
    runs = 0

    @tasks
    async def once() -> str:
        nonlocal runs
        runs += 1
        return "done"

    task = await StorageProducer(storage).send(once)
    doomed = StorageConsumer(storage, clock=clock)
    delivered = await doomed.receive(timeout=0)
    assert delivered is not None
    await results.store(
        TaskResult(task_id=task.id, func_name="test.once", success=True, value="done")
    )
    clock.advance(storage.default_lease_s + 1)

    orchestrator = Orchestrator(StorageConsumer(storage, clock=clock), results, 2)
    await orchestrator.start()
    await until_async(lambda: _queue_empty(storage))
    await orchestrator.stop()
    assert runs == 0
    assert [r.success for r in await results.attempts(task.id)] == [True]


async def _queue_empty(storage: InMemoryStorage) -> bool:
    counts = await storage.counts()
    return counts.ready + counts.leased + counts.delayed == 0


async def test_orchestrator_logs_one_warning_per_storage_outage(
    tasks: Register, caplog: pytest.LogCaptureFixture
) -> None:
    storage = InMemoryStorage()
    results = InMemoryResultBackend()
    consumer = StorageConsumer(storage)
    outage = {"left": 3}
    receive = consumer.receive_batch

    async def flaky_receive(batch_size: int = 10, *, timeout: float | None = None) -> list[Task]:
        if outage["left"]:
            outage["left"] -= 1
            raise StorageUnavailable("storage at example:6379 is unreachable")
        return await receive(batch_size, timeout=timeout)

    consumer.receive_batch = flaky_receive  # type: ignore[method-assign]  # a process boundary

    @tasks
    async def ping() -> str:
        return "pong"

    task = await StorageProducer(storage).send(ping)
    final = await run_until(Orchestrator(consumer, results, 2), results.wait(task.id, timeout=10))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert final.value == "pong"
    assert warnings == [
        "receive failed, retrying with backoff error=storage at example:6379 is unreachable",
        "receive works again after 3 failed tries",
    ]


async def test_orchestrator_logs_each_attempt_with_its_task_fields(
    rig: Rig, tasks: Register, caplog: pytest.LogCaptureFixture
) -> None:
    calls = {"n": 0}

    @tasks
    async def wobbly() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ValueError(f"wobble {calls['n']}")
        return "steady"

    @tasks
    async def doomed() -> None:
        raise KeyError("never")

    caplog.set_level("INFO", logger="looplane.orchestrator")
    good = await rig.producer.send(wobbly, retries=2, backoff="none")
    bad = await rig.producer.send(doomed, retries=0)
    await run_until(rig.orchestrator(1), asyncio.gather(rig.outcome(good), rig.outcome(bad)))

    lines = [r for r in caplog.records if "attempt" in r.getMessage() and r.name.endswith("tor")]
    # Each task's lines in attempt order; a retried task goes to the back of the queue.
    seen = sorted(
        ((vars(r)["task_id"], vars(r)["attempt"], r.levelname, vars(r)["outcome"]) for r in lines),
        key=lambda line: (line[0] != good.id, line[1]),
    )
    assert seen == [
        (good.id, 1, "WARNING", "retry"),
        (good.id, 2, "WARNING", "retry"),
        (good.id, 3, "INFO", "success"),
        (bad.id, 1, "ERROR", "failed"),
    ]
    success = next(r for r in lines if vars(r)["outcome"] == "success")
    first = next(r for r in lines if vars(r)["attempt"] == 1 and vars(r)["task_id"] == good.id)
    failed = next(r for r in lines if vars(r)["task_id"] == bad.id)
    assert success.getMessage().startswith(f"task {good.id} test.wobbly 3/3: attempt finished ")
    assert success.task_name == "test.wobbly"  # type: ignore[attr-defined]
    assert success.queue == "default"  # type: ignore[attr-defined]
    assert isinstance(success.duration_ms, float)  # type: ignore[attr-defined]
    assert success.funcName == "_answer"
    assert "error=ValueError: wobble 1" in first.getMessage()
    assert failed.getMessage().startswith(f"task {bad.id} test.doomed 1/1: attempt failed, no ")


async def test_attempt_line_stays_one_line_whatever_the_message_holds(
    rig: Rig, tasks: Register, caplog: pytest.LogCaptureFixture
) -> None:
    @tasks
    async def chatty() -> None:
        raise RuntimeError("first line\nsecond line\r\nthird \x1b[31mred\t" + "x" * 5000)

    caplog.set_level("INFO", logger="looplane.orchestrator")
    task = await rig.producer.send(chatty, retries=0)
    await run_until(rig.orchestrator(1), rig.outcome(task))

    (line,) = [r.getMessage() for r in caplog.records if getattr(r, "task_id", None) == task.id]
    assert "\n" not in line
    assert "\r" not in line
    assert "error=RuntimeError: first line\\nsecond line\\r\\nthird \\x1b[31mred\\txxx" in line
    assert "\x1b" not in line
    assert line.endswith(" more characters)")
    # The result keeps the whole message.
    result = await rig.outcome(task)
    message = "RuntimeError: first line\nsecond line\r\nthird \x1b[31mred\t" + "x" * 5000
    assert result.error == message
