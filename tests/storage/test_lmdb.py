"""LMDB storage beyond the contract: one environment per path, fork, stale readers, map growth,
cross-process wake-ups and claims.

Child processes use the ``spawn`` start method (or a fresh interpreter), as worker pools must
(design/DELIVERY.md, section 2.1); only the fork-safety tests fork on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from looplane.errors import ConfigError, StorageUnavailable
from looplane.result import LMDBResultBackend, TaskResult
from looplane.storage import LMDBStorage, NewTask, QueueCounts
from looplane.task import new_task_id
from tests.conftest import eventually

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.synchronize import Barrier

    from looplane._lmdb_env import LMDBEnv
    from looplane.storage import Claim

SPAWN = multiprocessing.get_context("spawn")


def new_task(payload: bytes = b"payload", *, max_attempts: int = 3) -> NewTask:
    return NewTask(task_id=new_task_id(), payload=payload, max_attempts=max_attempts)


def is_closed(env: LMDBEnv) -> bool:
    return env.closed


async def join(process: multiprocessing.process.BaseProcess, timeout: float = 20) -> int | None:
    await asyncio.to_thread(process.join, timeout)
    if process.is_alive():
        process.kill()
        await asyncio.to_thread(process.join)
    return process.exitcode


# PF-23: one environment per canonical path -----------------------------------------------


async def test_pf23_same_env_shared_across_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """https://github.com/jnwatson/py-lmdb/issues/129: one env per path per process."""
    (tmp_path / "db").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "db", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    s1 = LMDBStorage("db")
    s2 = LMDBStorage(tmp_path / "db")
    s3 = LMDBStorage(tmp_path / "link")
    try:
        assert s1.env is s2.env is s3.env
        first, second = new_task(b"first"), new_task(b"second")

        await s1.enqueue([first])
        [claim] = await s2.claim(10)
        await s1.close()

        assert claim.payload == b"first"
        assert await s2.ack(claim) is True
        await s2.enqueue([second])
        assert [c.payload for c in await s3.claim(10)] == [b"second"]
        assert await s2.counts() == QueueCounts(leased=1)
    finally:
        for storage in (s1, s2, s3):
            await storage.close()


async def test_closing_every_wrapper_closes_the_env_and_reopen_keeps_tasks(
    tmp_path: Path,
) -> None:
    storage = LMDBStorage(tmp_path / "db")
    other = LMDBStorage(tmp_path / "db")
    env = storage.env
    leased, ready, dead = new_task(b"leased"), new_task(b"ready"), new_task(b"dead")
    await storage.enqueue([leased, dead, ready])
    claims = await storage.claim(2)
    await storage.bury(claims[1], reason="gave up")

    await storage.close()
    assert not is_closed(env)
    await other.close()
    assert is_closed(env)

    async with LMDBStorage(tmp_path / "db") as reopened:
        assert reopened.env is not env
        assert await reopened.counts() == QueueCounts(ready=1, leased=1, dead=1)
        [dead_task] = await reopened.dead_tasks()
        assert (dead_task.task_id, dead_task.reason) == (dead.task_id, "gave up")
        [claim] = await reopened.claim(10)
        assert (claim.task_id, claim.payload, claim.attempt) == (ready.task_id, b"ready", 1)
        # The lease taken before the close still fences: its token is still the current one.
        assert await reopened.ack(claims[0]) is True


# PF-25: fork safety ----------------------------------------------------------------------


def _fork(child: Callable[[], int]) -> int:
    """Fork; the child runs `child()` and leaves with its return code, never returning here."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which coverage does not follow
        code = 70
        try:
            code = child()
        except BaseException:  # noqa: BLE001 - the child reports through its exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


async def wait_child(pid: int) -> int:
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status)


async def test_pf25_fork_child_does_not_break_parent(tmp_path: Path) -> None:
    """https://github.com/jnwatson/py-lmdb/issues/346: a forked child must not free the
    parent's reader slots."""
    async with LMDBStorage(tmp_path / "db") as storage:
        await storage.enqueue([new_task(b"before")])
        [before] = await storage.claim(10)
        assert await storage.counts() == QueueCounts(leased=1)

        pid = _fork(lambda: 0)
        assert await wait_child(pid) == 0

        await storage.enqueue([new_task(b"after")])
        assert await storage.counts() == QueueCounts(ready=1, leased=1)
        assert [c.payload for c in await storage.claim(10)] == [b"after"]
        assert await storage.ack(before) is True


async def test_pf25_fork_child_using_inherited_storage_reopens_or_refuses(
    tmp_path: Path,
) -> None:
    """The child may reopen the environment itself or raise StorageUnavailable; the parent
    carries on either way and nothing is corrupted."""
    reopened, refused, unclear = 0, 3, 4
    async with LMDBStorage(tmp_path / "db") as storage:
        await storage.enqueue([new_task(b"before")])
        [before] = await storage.claim(10)
        from_child = new_task(b"from child")

        async def use_inherited() -> int:
            try:
                await storage.enqueue([from_child])
                assert await storage.counts() == QueueCounts(ready=1, leased=1)
            except StorageUnavailable as exc:
                return refused if "cannot be used or reopened in the child" in str(exc) else unclear
            await storage.close()
            return reopened

        pid = _fork(lambda: asyncio.run(use_inherited()))
        code = await wait_child(pid)

        assert code in (reopened, refused)
        await storage.enqueue([new_task(b"after")])
        claimed = sorted(c.payload for c in await storage.claim(10))
        expected = [b"after", b"from child"] if code == reopened else [b"after"]
        assert claimed == expected
        assert await storage.ack(before) is True
        assert await storage.counts() == QueueCounts(leased=len(expected))


# PF-22: stale reader slots ---------------------------------------------------------------

_KEEPER = """
import sys
from looplane.storage import LMDBStorage
storage = LMDBStorage(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
"""

# Opens the storage, says so, and on a line from stdin starts a read and stays inside it.
_READER = """
import os, sys, time
from looplane.storage import LMDBStorage
storage = LMDBStorage(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()
txn = storage.env.env.begin()
txn.stat(storage.env.dbs["jobs"])
print(os.getpid(), flush=True)
time.sleep(60)
"""


async def start_python(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def next_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    assert line, f"child {process.pid} exited with {await process.wait()} before it was ready"
    return line.decode().strip()


async def kill_inside_reads(path: str, count: int) -> set[int]:
    """Start `count` processes that each open `path` and start a read, then SIGKILL them
    all inside that read; returns their pids."""
    readers = [await start_python(_READER, path) for _ in range(count)]
    try:
        assert set(await asyncio.gather(*map(next_line, readers))) == {"open"}
        # Every reader has opened before any starts its read: opening needs a slot too.
        for reader in readers:
            assert reader.stdin is not None
            reader.stdin.write(b"go\n")
        return {int(line) for line in await asyncio.gather(*map(next_line, readers))}
    finally:
        for reader in readers:
            with contextlib.suppress(ProcessLookupError):
                reader.send_signal(signal.SIGKILL)
            await reader.wait()


def reader_pids(readers: str) -> set[int]:
    """Pids in the reader table `Environment.readers()` prints (a header line first)."""
    rows = [line.split() for line in readers.splitlines()[1:]]
    return {int(row[0]) for row in rows if row and row[0].isdigit()}


# Starts up to 30 interpreters: on a busy 2-core machine that alone can pass 30 s.
@pytest.mark.timeout(120)
async def test_pf22_stale_readers_cleared(tmp_path: Path) -> None:
    """Readers killed inside a read keep their slots until a reader check clears them; a
    storage opened afterwards clears them at once."""
    path = str(tmp_path / "db")
    # The keeper holds the environment open, so the lock file and its reader table are
    # not simply reset when the last reader dies.
    keeper = await start_python(_KEEPER, path)
    try:
        assert await next_line(keeper) == "ready"
        killed = await kill_inside_reads(path, 30)

        async with LMDBStorage(path) as storage:
            assert not reader_pids(storage.env.env.readers()) & killed
            assert storage.env.env.reader_check() == 0
            await storage.enqueue([new_task(b"after the readers died")])
            assert await storage.counts() == QueueCounts(ready=1)
            [claim] = await storage.claim(10)
            assert claim.payload == b"after the readers died"
    finally:
        keeper.kill()
        await keeper.wait()


# Starts up to 30 interpreters: on a busy 2-core machine that alone can pass 30 s.
@pytest.mark.timeout(120)
async def test_pf22_full_reader_table_is_cleared_on_retry(tmp_path: Path) -> None:
    """When stale slots fill the whole table, a read clears them and tries again instead of
    failing with MDB_READERS_FULL."""
    slots = 8
    path = str(tmp_path / "db")
    async with LMDBStorage(path, max_readers=slots) as storage:
        killed = await kill_inside_reads(path, slots)
        assert reader_pids(storage.env.env.readers()) == killed  # the table is full

        await storage.enqueue([new_task(b"after the readers died")])
        assert await storage.counts() == QueueCounts(ready=1)

        assert not reader_pids(storage.env.env.readers()) & killed
        [claim] = await storage.claim(10)
        assert claim.payload == b"after the readers died"


# Map growth ------------------------------------------------------------------------------


async def test_full_map_grows_and_keeps_every_payload(tmp_path: Path) -> None:
    """https://github.com/celery/celery/issues/318: big payloads must not be lost (PF-12)."""
    payloads = [os.urandom(1 << 20) + bytes([i]) for i in range(5)]
    async with LMDBStorage(tmp_path / "db", map_size=1 << 20) as storage:
        await storage.enqueue([new_task(p) for p in payloads[:3]])
        await storage.enqueue([new_task(p) for p in payloads[3:]])

        assert storage.env.env.info()["map_size"] > 5 << 20
        assert await storage.counts() == QueueCounts(ready=5)
        # A second wrapper starts with nothing cached, so it reads only what was committed.
        async with LMDBStorage(tmp_path / "db") as other:
            assert await other.counts() == QueueCounts(ready=5)
            claimed = await other.claim(10)

    assert [c.payload for c in claimed] == payloads


# Writes from another thread (PF-26) ------------------------------------------------------


async def test_pf26_enqueue_from_another_thread_and_loop_does_not_deadlock(
    tmp_path: Path,
) -> None:
    """A sync task running in a thread may send through the same storage
    (https://github.com/jnwatson/py-lmdb/issues/39)."""
    async with LMDBStorage(tmp_path / "db") as storage:
        from_thread = new_task(b"thread")

        def send_in_thread() -> None:
            asyncio.run(storage.enqueue([from_thread]))

        await asyncio.wait_for(
            asyncio.gather(asyncio.to_thread(send_in_thread), storage.enqueue([new_task()])),
            timeout=10,
        )

        assert await storage.counts() == QueueCounts(ready=2)


# Across processes ------------------------------------------------------------------------


def _enqueue_later(path: str, task_id: str) -> None:
    import time

    time.sleep(0.3)

    async def send() -> None:
        async with LMDBStorage(path) as storage:
            await storage.enqueue([NewTask(task_id=task_id, payload=b"hello", max_attempts=1)])

    asyncio.run(send())


async def test_watcher_wakes_for_a_task_enqueued_by_another_process(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    task_id = new_task_id()
    async with LMDBStorage(tmp_path / "db") as storage:
        with contextlib.closing(storage.watch()) as watcher:
            process = SPAWN.Process(target=_enqueue_later, args=(str(tmp_path / "db"), task_id))
            started = loop.time()
            process.start()
            try:
                claims: list[Claim] = []
                while not claims and loop.time() - started < 10:
                    await watcher.wait(10 - (loop.time() - started))
                    claims = await storage.claim(1)
                elapsed = loop.time() - started
            finally:
                assert await join(process) == 0

    assert [c.task_id for c in claims] == [task_id]
    # Not a speed check: a wait that timed out instead of being rung would take 10 s.
    assert elapsed < 5


def _claim_until_empty(path: str, out: str, barrier: Barrier) -> None:
    async def run() -> list[str]:
        lines = []
        async with LMDBStorage(path) as storage:
            await asyncio.to_thread(barrier.wait, 20)
            # Every task was sent before the processes started, so an empty claim means done.
            while claims := await storage.claim(5):
                acked = await asyncio.gather(*(storage.ack(c) for c in claims))
                for claim, ok in zip(claims, acked, strict=True):
                    lines.append(f"{claim.task_id} {claim.attempt} {ok}\n")
        return lines

    Path(out).write_text("".join(asyncio.run(run())))


def read_claim_lines(outs: list[str]) -> list[list[str]]:
    return [line.split() for out in outs for line in Path(out).read_text().splitlines()]


async def test_concurrent_processes_claim_each_task_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    tasks = [new_task(str(i).encode()) for i in range(400)]
    async with LMDBStorage(path) as storage:
        await storage.enqueue(tasks)
        barrier = SPAWN.Barrier(4)
        outs = [str(tmp_path / f"claimed-{i}.txt") for i in range(4)]
        processes = [
            SPAWN.Process(target=_claim_until_empty, args=(path, out, barrier)) for out in outs
        ]
        for process in processes:
            process.start()

        async def all_acked() -> None:
            assert await storage.counts() == QueueCounts()

        await eventually(all_acked, timeout=20)
        codes = [await join(process) for process in processes]

        assert codes == [0, 0, 0, 0]

    lines = read_claim_lines(outs)
    claimed = Counter(task_id for task_id, _, _ in lines)
    assert set(claimed) == {t.task_id for t in tasks}
    assert max(claimed.values()) == 1
    assert {(attempt, ok) for _, attempt, ok in lines} == {("1", "True")}


async def test_lmdb_relaxed_sync_storage_and_results_share_one_environment(tmp_path: Path) -> None:
    storage = LMDBStorage(tmp_path / "db", sync=False)
    results = LMDBResultBackend(tmp_path / "db", sync=False)
    try:
        assert results.write_channel is storage.write_channel
        assert storage.env.env.flags()["metasync"] is False
        task = new_task()
        await storage.enqueue([task])
        [claim] = await storage.claim(1)
        await results.store(TaskResult(task_id=task.task_id, func_name="f", success=True))
        assert await storage.ack(claim)
        assert (await results.get(task.task_id)) is not None
    finally:
        await results.close()
        await storage.close()


@pytest.mark.parametrize(
    "storage_sync", [pytest.param(True, id="durable"), pytest.param(False, id="relaxed")]
)
async def test_lmdb_results_with_the_other_sync_are_refused(
    tmp_path: Path, storage_sync: bool
) -> None:
    storage = LMDBStorage(tmp_path / "db", sync=storage_sync)
    env = storage.env
    try:
        with pytest.raises(ConfigError, match=rf"sync={storage_sync}; it cannot also be opened"):
            LMDBResultBackend(tmp_path / "db", sync=not storage_sync)
        # The refused opener took no reference, so the storage's close still closes the env.
        assert env.refs == 1
        await storage.enqueue([new_task()])
    finally:
        await storage.close()
    assert is_closed(env)
