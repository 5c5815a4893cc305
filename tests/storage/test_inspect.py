"""The inspection side of `StorageBackend`: `tasks`, `purge` and `purge_dead`, on every backend."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from looplane.errors import ConfigError
from looplane.storage import LMDBStorage, NewTask, QueueCounts, TaskInfo, TaskState

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from looplane._clock import FakeClock
    from looplane._lmdb_env import Txn
    from looplane.storage import StorageBackend


def task_id(number: int) -> str:
    """Ids that sort in `number` order, so both backends agree on "newest first"."""
    return f"{number:032x}"


def new_task(
    number: int,
    *,
    max_attempts: int = 3,
    delay_s: float = 0.0,
    queue: str = "default",
) -> NewTask:
    return NewTask(
        task_id=task_id(number),
        payload=f"payload {number}".encode(),
        max_attempts=max_attempts,
        queue=queue,
        delay_s=delay_s,
    )


async def send(
    storage: StorageBackend,
    *numbers: int,
    max_attempts: int = 3,
    delay_s: float = 0.0,
    queue: str = "default",
) -> None:
    for number in numbers:
        task = new_task(number, max_attempts=max_attempts, delay_s=delay_s, queue=queue)
        await storage.enqueue([task])


async def fill(storage: StorageBackend) -> None:
    """Tasks 1-2 ready, 3 leased, 4 dead, 5 delayed, in the default queue; 6 ready elsewhere."""
    await send(storage, 1, 2, 3)
    await send(storage, 4, max_attempts=1)
    await send(storage, 5, delay_s=3600)
    await send(storage, 6, queue="other")
    claims = await storage.claim(2)
    assert [c.task_id for c in claims] == [task_id(1), task_id(2)]
    assert await storage.release(claims[0])
    assert await storage.release(claims[1])
    # Claim order is oldest first; leave 3 leased and bury 4.
    claims = await storage.claim(4)
    by_id = {c.task_id: c for c in claims}
    assert await storage.release(by_id[task_id(1)], count_attempt=False)
    assert await storage.release(by_id[task_id(2)], count_attempt=False)
    assert await storage.bury(by_id[task_id(4)], reason="failed on attempt 1 of 1: boom")


def ids(infos: list[TaskInfo]) -> list[str]:
    return [info.task_id for info in infos]


# tasks -------------------------------------------------------------------------------------


async def test_tasks_lists_every_state_newest_first(storage: StorageBackend) -> None:
    before = time.time()
    await fill(storage)

    infos = await storage.tasks()

    assert ids(infos) == [task_id(n) for n in (5, 4, 3, 2, 1)]
    states = {info.task_id: info.state for info in infos}
    assert states == {
        task_id(1): TaskState.READY,
        task_id(2): TaskState.READY,
        task_id(3): TaskState.LEASED,
        task_id(4): TaskState.DEAD,
        task_id(5): TaskState.DELAYED,
    }
    for info in infos:
        assert before - 1 <= info.enqueued_at <= time.time() + 1
        assert info.payload == f"payload {int(info.task_id, 16)}".encode()


async def test_tasks_reports_attempts_and_dead_details(storage: StorageBackend) -> None:
    before = time.time()
    await fill(storage)

    infos = {info.task_id: info for info in await storage.tasks()}

    dead = infos[task_id(4)]
    assert (dead.attempts, dead.max_attempts) == (1, 1)
    assert dead.reason == "failed on attempt 1 of 1: boom"
    assert dead.failed_at is not None
    assert before - 1 <= dead.failed_at <= time.time() + 1
    assert (infos[task_id(1)].attempts, infos[task_id(1)].max_attempts) == (1, 3)
    assert infos[task_id(3)].attempts == 1
    assert infos[task_id(5)].attempts == 0
    for number in (1, 2, 3, 5):
        assert infos[task_id(number)].reason is None
        assert infos[task_id(number)].failed_at is None


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param([TaskState.READY], [2, 1], id="ready"),
        pytest.param([TaskState.LEASED], [3], id="leased"),
        pytest.param([TaskState.DELAYED], [5], id="delayed"),
        pytest.param([TaskState.DEAD], [4], id="dead"),
        pytest.param({TaskState.READY, TaskState.DEAD}, [4, 2, 1], id="ready-or-dead"),
        pytest.param([], [], id="none"),
    ],
)
async def test_tasks_filters_by_state(
    storage: StorageBackend, states: list[TaskState], expected: list[int]
) -> None:
    await fill(storage)

    infos = await storage.tasks(states=states)

    assert ids(infos) == [task_id(n) for n in expected]


async def test_tasks_lists_only_the_named_queue(storage: StorageBackend) -> None:
    await fill(storage)

    assert ids(await storage.tasks(queue="other")) == [task_id(6)]
    assert await storage.tasks(queue="never-used") == []


async def test_tasks_pages_with_limit_and_offset(storage: StorageBackend) -> None:
    await send(storage, *range(1, 8))

    pages = [await storage.tasks(limit=3, offset=offset) for offset in (0, 3, 6, 9)]

    assert [ids(page) for page in pages] == [
        [task_id(n) for n in (7, 6, 5)],
        [task_id(n) for n in (4, 3, 2)],
        [task_id(1)],
        [],
    ]
    assert await storage.tasks(limit=0) == []


async def test_tasks_pages_within_a_state(storage: StorageBackend) -> None:
    await send(storage, 1, 3, 5)
    await send(storage, 2, 4, delay_s=3600)

    page = await storage.tasks(states=[TaskState.READY], limit=1, offset=1)

    assert ids(page) == [task_id(3)]


async def test_tasks_of_empty_storage_is_empty(storage: StorageBackend) -> None:
    assert await storage.tasks() == []
    assert await storage.tasks(states=[TaskState.DEAD], offset=5) == []


@pytest.mark.parametrize(
    ("limit", "offset"), [pytest.param(-1, 0, id="limit"), pytest.param(10, -1, id="offset")]
)
async def test_tasks_refuses_negative_page(
    storage: StorageBackend, limit: int, offset: int
) -> None:
    with pytest.raises(ConfigError, match=r"^limit and offset must be at least 0; got limit="):
        await storage.tasks(limit=limit, offset=offset)


async def test_tasks_reads_a_requeued_task_as_ready_with_no_reason(storage: StorageBackend) -> None:
    await fill(storage)

    assert await storage.requeue_dead(task_id(4))

    (info,) = [i for i in await storage.tasks() if i.task_id == task_id(4)]
    # Attempts go on counting; the requeue gives the task its allowance again.
    assert (info.state, info.reason, info.failed_at) == (TaskState.READY, None, None)
    assert info.max_attempts - info.attempts >= 1


async def test_lmdb_tasks_scans_in_several_short_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("looplane.storage.lmdb._SCAN_BATCH", 3)
    async with LMDBStorage(tmp_path / "db") as storage:
        await send(storage, *range(1, 11))
        await send(storage, 11, queue="other")
        reads = 0
        read = storage.env.read

        async def counting(fn: Callable[[Txn], Any]) -> Any:
            nonlocal reads
            reads += 1
            return await read(fn)

        monkeypatch.setattr(storage.env, "read", counting)

        everything = await storage.tasks(limit=100)
        assert ids(everything) == [task_id(n) for n in range(10, 0, -1)]
        assert reads == 4

        reads = 0
        page = await storage.tasks(limit=2, offset=4)
        assert ids(page) == [task_id(6), task_id(5)]
        assert reads == 3


async def test_lmdb_tasks_resumes_after_the_last_key_was_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch boundary on a task that is acked before the next batch still moves on."""
    monkeypatch.setattr("looplane.storage.lmdb._SCAN_BATCH", 2)
    async with LMDBStorage(tmp_path / "db") as storage:
        await send(storage, 1, 2, 3, 4)
        read = storage.env.read
        acked = False

        async def ack_between(fn: Callable[[Txn], Any]) -> Any:
            nonlocal acked
            found = await read(fn)
            if not acked:
                acked = True
                claims = await storage.claim(4)
                for claim in claims:
                    if claim.task_id == task_id(3):
                        assert await storage.ack(claim)
                    else:
                        assert await storage.release(claim, count_attempt=False)
            return found

        monkeypatch.setattr(storage.env, "read", ack_between)

        assert ids(await storage.tasks()) == [task_id(n) for n in (4, 3, 2, 1)]


# purge -------------------------------------------------------------------------------------


async def test_purge_removes_ready_and_delayed_but_not_leased_or_dead(
    storage: StorageBackend,
) -> None:
    await fill(storage)

    removed = await storage.purge()

    assert removed == 3
    assert await storage.counts() == QueueCounts(ready=0, leased=1, delayed=0, dead=1)
    assert ids(await storage.tasks()) == [task_id(4), task_id(3)]
    assert ids(await storage.tasks(queue="other")) == [task_id(6)]
    assert await storage.purge() == 0


async def test_purge_of_unknown_queue_removes_nothing(storage: StorageBackend) -> None:
    await fill(storage)

    assert await storage.purge(queue="never-used") == 0
    assert len(await storage.tasks()) == 5


async def test_purge_leaves_the_queue_usable(storage: StorageBackend) -> None:
    await send(storage, 1, 2)
    await send(storage, 3, delay_s=3600)
    await send(storage, 4, delay_s=3600, queue="other")
    assert await storage.purge() == 3

    await send(storage, 5)
    claims = await storage.claim(10)

    assert [c.task_id for c in claims] == [task_id(5)]
    assert ids(await storage.tasks(queue="other")) == [task_id(4)]


async def test_purged_delays_never_become_claimable(
    fake_storage: StorageBackend, clock: FakeClock
) -> None:
    await send(fake_storage, 1, delay_s=10)
    await send(fake_storage, 2, delay_s=20, queue="other")
    assert await fake_storage.purge() == 1

    clock.advance(30)

    assert await fake_storage.claim(10) == []
    assert [c.task_id for c in await fake_storage.claim(10, queue="other")] == [task_id(2)]


async def test_leased_task_survives_purge_and_can_be_acked(storage: StorageBackend) -> None:
    await send(storage, 1, 2)
    (claim,) = await storage.claim(1)

    assert await storage.purge() == 1

    assert await storage.ack(claim)
    assert await storage.tasks() == []


async def test_purge_dead_removes_dead_tasks_of_every_queue(storage: StorageBackend) -> None:
    await fill(storage)
    await send(storage, 7, queue="other")
    six, seven = await storage.claim(2, queue="other")
    assert await storage.release(six, count_attempt=False)
    assert await storage.bury(seven, reason="bad")

    removed = await storage.purge_dead()

    assert removed == 2
    assert await storage.dead_tasks() == []
    assert await storage.counts() == QueueCounts(ready=2, leased=1, delayed=1, dead=0)
    assert not await storage.requeue_dead(task_id(4))
    assert ids(await storage.tasks(queue="other")) == [task_id(6)]
    assert await storage.purge_dead() == 0
