"""The `StorageBackend` contract, run on every backend.

These tests are the specification of `looplane.storage.base`: leases, fencing tokens,
attempts counted at claim time, delays, dead letters and wake-ups
(design/DELIVERY.md, section 0).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest

from looplane.errors import StorageError, StorageUnavailable
from looplane.storage import LMDBStorage, NewTask, QueueCounts
from looplane.storage.base import DEFAULT_LEASE_S, LEASE_GRACE_S
from looplane.task import new_task_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from looplane._clock import FakeClock
    from looplane.storage import Claim, StorageBackend


def new_task(
    payload: bytes = b"payload",
    *,
    max_attempts: int = 3,
    timeout_s: float | None = None,
    priority: int = 0,
    delay_s: float = 0.0,
    queue: str = "default",
) -> NewTask:
    return NewTask(
        task_id=new_task_id(),
        payload=payload,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        queue=queue,
        priority=priority,
        delay_s=delay_s,
    )


async def claim_one(storage: StorageBackend) -> Claim:
    claims = await storage.claim(1)
    assert len(claims) == 1, claims
    return claims[0]


async def test_claim_returns_first_attempt_with_payload(storage: StorageBackend) -> None:
    task = new_task(b"\x00hello\xff", max_attempts=4)
    await storage.enqueue([task])

    claim = await claim_one(storage)

    assert claim.task_id == task.task_id
    assert claim.payload == b"\x00hello\xff"
    assert claim.attempt == 1
    assert claim.max_attempts == 4
    assert claim.lease_s == DEFAULT_LEASE_S
    assert claim.token


async def test_claim_on_empty_storage_returns_nothing(storage: StorageBackend) -> None:
    assert await storage.claim(10) == []


async def test_claim_never_returns_more_than_limit(storage: StorageBackend) -> None:
    await storage.enqueue([new_task() for _ in range(5)])

    sizes = [len(await storage.claim(2)) for _ in range(4)]

    assert sizes == [2, 2, 1, 0]


async def test_claim_serves_higher_priority_first_and_fifo_within_a_priority(
    storage: StorageBackend,
) -> None:
    first = [new_task(priority=p) for p in (0, 0, 5, 1, 5, 0)]
    second = [new_task(priority=p) for p in (5, 0)]
    await storage.enqueue(first)
    await storage.enqueue(second)

    claimed = [c.task_id for c in await storage.claim(10)]

    by_priority = sorted(first + second, key=lambda t: -t.priority)  # stable: keeps send order
    assert claimed == [t.task_id for t in by_priority]


async def test_claim_takes_only_tasks_of_its_queue(storage: StorageBackend) -> None:
    mine, other = new_task(queue="mine"), new_task(queue="other")
    await storage.enqueue([other, mine])

    claimed = await storage.claim(10, queue="mine")

    assert [c.task_id for c in claimed] == [mine.task_id]
    assert await storage.claim(10, queue="nobody") == []


async def test_claimed_task_comes_back_only_after_its_lease_with_a_new_token(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    await fake_storage.enqueue([new_task()])
    first = await claim_one(fake_storage)

    clock.advance(first.lease_s - 1)
    assert await fake_storage.claim(10) == []
    clock.advance(2)
    second = await claim_one(fake_storage)

    assert second.task_id == first.task_id
    assert second.attempt == 2
    assert second.token != first.token
    assert second.payload == first.payload


STALE_CALLS: list[tuple[str, Callable[[StorageBackend, Claim], Awaitable[object]]]] = [
    ("ack", lambda s, c: s.ack(c)),
    ("release", lambda s, c: s.release(c)),
    ("release-delayed", lambda s, c: s.release(c, delay_s=5)),
    ("release-uncounted", lambda s, c: s.release(c, count_attempt=False)),
    ("bury", lambda s, c: s.bury(c, reason="stale")),
    ("renew", lambda s, c: s.renew([c])),
]


@pytest.mark.parametrize("call", [pytest.param(call, id=name) for name, call in STALE_CALLS])
async def test_stale_token_changes_nothing_after_reclaim(
    fake_storage: StorageBackend,
    clock: FakeClock,
    call: Callable[[StorageBackend, Claim], Awaitable[object]],
) -> None:
    """A worker whose lease ran out must not touch the new holder's delivery (fencing)."""
    await fake_storage.enqueue([new_task()])
    stale = await claim_one(fake_storage)
    clock.advance(stale.lease_s + 1)
    current = await claim_one(fake_storage)

    answer = await call(fake_storage, stale)

    assert answer in (False, [False])
    assert await fake_storage.counts() == QueueCounts(leased=1)
    assert await fake_storage.dead_tasks() == []
    clock.advance(current.lease_s - 1)
    assert await fake_storage.claim(10) == []
    assert await fake_storage.ack(current) is True
    assert await fake_storage.counts() == QueueCounts()


async def test_ack_removes_the_task_for_good(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    await fake_storage.enqueue([new_task()])
    claim = await claim_one(fake_storage)

    assert await fake_storage.ack(claim) is True

    assert await fake_storage.counts() == QueueCounts()
    clock.advance(claim.lease_s * 10)
    assert await fake_storage.claim(10) == []
    assert await fake_storage.ack(claim) is False
    assert await fake_storage.release(claim) is False


async def test_release_makes_the_task_ready_again(fake_storage: StorageBackend) -> None:
    await fake_storage.enqueue([new_task()])
    first = await claim_one(fake_storage)

    assert await fake_storage.release(first) is True

    assert await fake_storage.counts() == QueueCounts(ready=1)
    second = await claim_one(fake_storage)
    assert second.attempt == 2
    assert second.token != first.token


async def test_release_with_delay_hides_the_task_until_due(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    await fake_storage.enqueue([new_task()])
    claim = await claim_one(fake_storage)

    assert await fake_storage.release(claim, delay_s=10) is True

    assert await fake_storage.counts() == QueueCounts(delayed=1)
    clock.advance(9)
    assert await fake_storage.claim(10) == []
    clock.advance(2)
    again = await claim_one(fake_storage)
    assert again.attempt == 2
    assert await fake_storage.counts() == QueueCounts(leased=1)


async def test_enqueue_with_delay_hides_the_task_until_due(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    later, now = new_task(delay_s=10), new_task()
    await fake_storage.enqueue([later, now])

    assert await fake_storage.counts() == QueueCounts(ready=1, delayed=1)
    assert [c.task_id for c in await fake_storage.claim(10)] == [now.task_id]
    clock.advance(9)
    assert await fake_storage.claim(10) == []
    clock.advance(2)
    assert [c.task_id for c in await fake_storage.claim(10)] == [later.task_id]


async def test_release_without_counting_gives_the_attempt_back(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    await fake_storage.enqueue([new_task(max_attempts=1)])
    first = await claim_one(fake_storage)

    assert await fake_storage.release(first, count_attempt=False) is True

    second = await claim_one(fake_storage)
    assert second.attempt == 1
    # The given-back attempt is the only one: losing this lease now uses it up, and the
    # next delivery is the one past the limit, which a consumer sets aside.
    clock.advance(second.lease_s + 1)
    third = await claim_one(fake_storage)
    assert (third.attempt, third.max_attempts) == (2, 1)


async def test_expired_lease_on_last_attempt_is_handed_out_once_past_the_limit(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    """The delivery past the limit lets a consumer record why the task is set aside."""
    task = new_task(b"poison", max_attempts=2)
    await fake_storage.enqueue([task])
    clock.advance((await claim_one(fake_storage)).lease_s + 1)
    clock.advance((await claim_one(fake_storage)).lease_s + 1)

    report = await claim_one(fake_storage)
    assert (report.attempt, report.max_attempts, report.payload) == (3, 2, b"poison")
    assert await fake_storage.bury(report, reason="set aside") is True
    assert await fake_storage.counts() == QueueCounts(dead=1)


async def test_expired_lease_past_the_limit_dead_letters_the_task(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    task = new_task(b"poison", max_attempts=2)
    await fake_storage.enqueue([task])
    for _ in range(3):
        clock.advance((await claim_one(fake_storage)).lease_s + 1)

    assert await fake_storage.claim(10) == []

    assert await fake_storage.counts() == QueueCounts(dead=1)
    [dead] = await fake_storage.dead_tasks()
    assert dead.task_id == task.task_id
    assert dead.payload == b"poison"
    assert dead.attempts == 3
    assert dead.failed_at == pytest.approx(clock.time(), abs=0.01)
    assert "lease expired on the last attempt (2 of 2)" in dead.reason


async def test_bury_moves_the_task_to_dead_letters_with_its_reason(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    first, second = new_task(b"one"), new_task(b"two")
    await fake_storage.enqueue([first, second])
    claims = await fake_storage.claim(2)

    assert await fake_storage.bury(claims[1], reason="bad input: ünïcode") is True
    clock.advance(5)
    assert await fake_storage.bury(claims[0], reason="gave up") is True

    assert await fake_storage.counts() == QueueCounts(dead=2)
    dead = await fake_storage.dead_tasks()
    assert [(d.task_id, d.reason, d.attempts) for d in dead] == [
        (second.task_id, "bad input: ünïcode", 1),
        (first.task_id, "gave up", 1),
    ]
    assert [d.payload for d in dead] == [b"two", b"one"]
    assert len(await fake_storage.dead_tasks(limit=1)) == 1
    assert await fake_storage.claim(10) == []


async def test_requeue_dead_makes_the_task_ready_with_its_allowance_again(
    fake_storage: StorageBackend,
) -> None:
    task = new_task(max_attempts=2)
    await fake_storage.enqueue([task])
    await fake_storage.release(await claim_one(fake_storage))
    await fake_storage.bury(await claim_one(fake_storage), reason="failed")

    assert await fake_storage.requeue_dead(task.task_id) is True

    assert await fake_storage.counts() == QueueCounts(ready=1)
    assert await fake_storage.dead_tasks() == []
    # Attempt numbers go on, so results of the new run never overwrite the old run's.
    claim = await claim_one(fake_storage)
    assert (claim.task_id, claim.attempt, claim.max_attempts) == (task.task_id, 3, 4)
    assert await fake_storage.requeue_dead(task.task_id) is False
    assert await fake_storage.requeue_dead(new_task_id()) is False


async def test_counts_tasks_in_each_state(fake_storage: StorageBackend) -> None:
    await fake_storage.enqueue([new_task(), new_task(), new_task(), new_task(delay_s=60)])
    claims = await fake_storage.claim(2)

    await fake_storage.bury(claims[1], reason="failed")

    assert await fake_storage.counts() == QueueCounts(ready=1, leased=1, delayed=1, dead=1)


async def test_renew_extends_the_lease(fake_storage: StorageBackend, clock: FakeClock) -> None:
    await fake_storage.enqueue([new_task()])
    claim = await claim_one(fake_storage)
    clock.advance(claim.lease_s - 5)

    assert await fake_storage.renew([claim]) == [True]

    clock.advance(10)  # past the first lease, inside the renewed one
    assert await fake_storage.claim(10) == []
    assert await fake_storage.counts() == QueueCounts(leased=1)
    assert await fake_storage.ack(claim) is True


async def test_renewed_lease_still_runs_out(fake_storage: StorageBackend, clock: FakeClock) -> None:
    await fake_storage.enqueue([new_task()])
    claim = await claim_one(fake_storage)
    clock.advance(claim.lease_s - 5)
    await fake_storage.renew([claim])

    clock.advance(claim.lease_s + 1)

    again = await claim_one(fake_storage)
    assert again.attempt == 2


async def test_task_with_timeout_is_leased_for_timeout_plus_grace(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    """A lease shorter than the task's own timeout would hand a running task to another worker.

    See https://github.com/tobymao/saq/issues/277 (PF-04b).
    """
    await fake_storage.enqueue([new_task(timeout_s=100)])

    claim = await claim_one(fake_storage)

    assert claim.lease_s == 100 + LEASE_GRACE_S
    clock.advance(100 + LEASE_GRACE_S - 1)
    assert await fake_storage.claim(10) == []
    clock.advance(2)
    assert (await claim_one(fake_storage)).attempt == 2


async def test_watcher_wakes_when_a_task_is_enqueued_while_waiting(
    storage: StorageBackend,
) -> None:
    with contextlib.closing(storage.watch()) as watcher:
        waiting = asyncio.ensure_future(watcher.wait(60))
        await asyncio.sleep(0)  # let the wait start
        assert not waiting.done()

        await storage.enqueue([new_task()])

        await asyncio.wait_for(waiting, timeout=10)


async def test_watcher_wakes_for_a_task_enqueued_between_arming_and_waiting(
    storage: StorageBackend,
) -> None:
    """A task stored after "found nothing" and before "wait" must not be a lost wake-up."""
    with contextlib.closing(storage.watch()) as watcher:
        await storage.enqueue([new_task()])

        await asyncio.wait_for(watcher.wait(60), timeout=10)


async def test_watcher_wakes_when_a_task_is_released(storage: StorageBackend) -> None:
    await storage.enqueue([new_task()])
    claim = await claim_one(storage)
    with contextlib.closing(storage.watch()) as watcher:
        waiting = asyncio.ensure_future(watcher.wait(60))
        await asyncio.sleep(0)  # let the wait start

        await storage.release(claim)

        await asyncio.wait_for(waiting, timeout=10)


async def test_watcher_returns_after_its_timeout_when_nothing_happens(
    storage: StorageBackend,
) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.closing(storage.watch()) as watcher:
        started = loop.time()

        await asyncio.wait_for(watcher.wait(0.05), timeout=10)

        assert loop.time() - started >= 0.04


async def test_closed_storage_refuses_calls(storage: StorageBackend) -> None:
    await storage.close()

    with pytest.raises(StorageUnavailable, match="closed"):
        await storage.enqueue([new_task()])
    with pytest.raises(StorageUnavailable, match="closed"):
        await storage.claim(1)
    await storage.close()  # idempotent


async def test_lmdb_enqueue_is_all_or_nothing_when_one_id_is_invalid(tmp_path: Path) -> None:
    async with LMDBStorage(tmp_path / "db") as storage:
        good = new_task()
        bad = NewTask(task_id="not-a-uuid", payload=b"x", max_attempts=1)

        with pytest.raises(StorageError, match=r"task id 'not-a-uuid' is not a UUID"):
            await storage.enqueue([good, bad])

        assert await storage.counts() == QueueCounts()
        assert await storage.claim(10) == []


async def test_requeue_after_a_worker_was_lost_on_the_last_attempt_counts_real_attempts(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    """The delivery past the limit only reports the loss; it is not an attempt."""
    task = new_task(max_attempts=1)
    await fake_storage.enqueue([task])
    clock.advance((await claim_one(fake_storage)).lease_s + 1)
    report = await claim_one(fake_storage)
    assert await fake_storage.bury(report, reason="lost") is True

    assert await fake_storage.requeue_dead(task.task_id) is True
    claim = await claim_one(fake_storage)
    assert (claim.attempt, claim.max_attempts) == (2, 2)
