"""Storage faults: a full LMDB map or disk, unusable paths, stale readers, a path opened twice.

Each test drives the public API (a producer, an orchestrator, the ``looplane`` command) and
checks what users rely on: a refused write stores nothing and names its fix, the queue can
always be drained, and start-up errors name the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from looplane import (
    InMemoryResultBackend,
    InMemoryStorage,
    LMDBResultBackend,
    LMDBStorage,
    Orchestrator,
    StorageConsumer,
    StorageFull,
    StorageProducer,
    TaskResult,
)
from looplane.cli.exit_codes import EXIT_CONFIG
from tests._rig import Registrar, run_until, until_async
from tests.cli._process import REPO_ROOT, child_env, looplane_argv

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from looplane import Task

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
def registrar() -> Iterator[Registrar]:
    register = Registrar()
    yield register
    register.clear()


def _run_child(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def _tmpfs(mountpoint: Path, options: str) -> Iterator[None]:
    """Mount a small tmpfs at `mountpoint`, or skip when this user may not mount."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


# A full map --------------------------------------------------------------------------------


async def _fill(
    producer: StorageProducer, name: str, payload: str
) -> tuple[list[Task], StorageFull]:
    sent: list[Task] = []
    while True:
        try:
            sent.append(await producer.send(name, payload))
        except StorageFull as exc:
            return sent, exc
        assert len(sent) < 10_000, "the capped map never filled"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_full_map_refuses_sends_whole_drains_and_resumes(
    tmp_path: Path, registrar: Registrar, caplog: pytest.LogCaptureFixture
) -> None:
    """A capped map refuses sends with StorageFull; workers still drain it and record results.

    The drain must never hit the cap itself (the send limit keeps a reserve for acks and
    results), so no attempt fails to record and no task waits for its lease to expire.
    """

    @registrar
    async def echo(text: str) -> int:
        return len(text)

    path = tmp_path / "db"
    storage = LMDBStorage(path, map_size=64 * KIB, max_map_size=1 * MIB)
    results = LMDBResultBackend(path)
    producer = StorageProducer(storage)
    try:
        sent, full = await _fill(producer, "test.echo", "x" * 2000)

        assert full.path == str(path)
        assert full.max_map_size == 1 * MIB
        assert str(path) in str(full)
        assert "storage.max_map_size" in str(full)
        assert "map_size=" in str(full)
        before = await storage.counts()
        with pytest.raises(StorageFull):
            await producer.send_batch([("test.echo", ("y" * 2000,), {}) for _ in range(20)])
        assert await storage.counts() == before
        assert before.ready == len(sent)

        orchestrator = Orchestrator(StorageConsumer(storage), results, 4)

        async def drained() -> bool:
            counts = await storage.counts()
            return counts.ready == counts.leased == 0

        with caplog.at_level(logging.WARNING, logger="looplane"):
            await run_until(orchestrator, until_async(drained, timeout=60.0))
        assert [r.getMessage() for r in caplog.records if "is full" in r.getMessage()] == []
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        for task in sent:
            outcome = await results.get(task.id)
            assert outcome is not None
            assert outcome.success
            assert outcome.value == 2000
        assert (await storage.counts()).dead == 0

        more = await producer.send_batch([("test.echo", ("z" * 2000,), {}) for _ in range(20)])
        assert (await storage.counts()).ready == len(more)
    finally:
        await storage.close()
        await results.close()


_DISK_FULL_CHILD = """
    import asyncio, resource, signal, sys, uuid
    from looplane import StorageFull
    from looplane.storage import LMDBStorage
    from looplane.storage.base import NewTask

    # The file size limit stands in for a full disk: writes past it fail with EFBIG. Only the
    # soft limit is lowered, so raising it again stands in for space being freed.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))

    async def main():
        storage = LMDBStorage(sys.argv[1])
        sent = 0
        try:
            while True:
                tasks = [NewTask(uuid.uuid4().hex, b"p" * 3000, 3) for _ in range(3)]
                await storage.enqueue(tasks)
                sent += 3
        except StorageFull as exc:
            print("full", sent, exc.path, exc, sep="\\n")
        # On a full disk even a claim or an ack may need a fresh page (LMDB copies on write),
        # so work resumes once space frees, with every stored task still there.
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        claims = await storage.claim(9)
        print("acked", sum([await storage.ack(claim) for claim in claims]))
        await storage.enqueue([NewTask(uuid.uuid4().hex, b"p" * 3000, 3)])
        print("sent again")
        await storage.close()

    asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_disk_full_refuses_sends_whole_and_recovers(tmp_path: Path) -> None:
    """A disk that refuses to grow the file gives StorageFull naming the path; work resumes."""
    path = tmp_path / "db"

    done = await asyncio.to_thread(_run_child, _DISK_FULL_CHILD, str(path), str(1 * MIB))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "full", done.stdout
    sent = int(lines[1])
    assert lines[2] == str(path)
    assert "disk refused" in lines[3]
    assert "free disk space" in lines[3]
    assert lines[4] == "acked 9"
    assert lines[5] == "sent again"
    async with _storage(path) as storage:
        counts = await storage.counts()
    assert counts.ready == sent - 9 + 1


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_full_tmpfs_refuses_sends_whole_and_recovers(tmp_path: Path) -> None:
    """A really full file system (a 2 MiB tmpfs) gives StorageFull; freeing space recovers."""
    mount = tmp_path / "small"
    with _tmpfs(mount, "size=2m,mode=0700"):
        path = mount / "db"
        storage = LMDBStorage(path)
        producer = StorageProducer(storage)
        try:
            sent, full = await _fill(producer, "test.unregistered", "x" * 3000)
            assert "disk refused" in str(full)
            assert str(path) in str(full)
            assert (await storage.counts()).ready == len(sent)

            # Space frees (the file system grows). On a full disk even a claim or an ack may
            # need a fresh page, since LMDB copies on write; nothing stored was lost meanwhile.
            remount = ["mount", "-o", "remount,size=8m", str(mount)]
            await asyncio.to_thread(subprocess.run, remount, check=True)
            claims = await storage.claim(20)
            assert all([await storage.ack(claim) for claim in claims])
            await producer.send("test.unregistered", "again")
            assert (await storage.counts()).ready == len(sent) - len(claims) + 1
        finally:
            await storage.close()


@contextlib.asynccontextmanager
async def _storage(path: Path, *, max_readers: int = 1024) -> AsyncIterator[LMDBStorage]:
    storage = LMDBStorage(path, max_readers=max_readers)
    try:
        yield storage
    finally:
        await storage.close()


# Unusable paths at start-up ------------------------------------------------------------------


def _worker_start(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*looplane_argv(), "worker"],
        cwd=cwd,
        env=child_env({"LOOPLANE_STORAGE__PATH": str(path)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_worker_on_a_file_path_exits_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_text("x")

    done = _worker_start(path, tmp_path)

    assert done.returncode == EXIT_CONFIG, done.stderr
    assert f"{path} exists but is not a directory" in done.stderr
    assert "Worker ready" not in done.stdout


@pytest.mark.slow
def test_worker_on_a_read_only_path_exits_naming_it(tmp_path: Path) -> None:
    """Read-only: chmod 0500 for a normal user; as root (which ignores modes) a ro tmpfs."""
    parent = tmp_path / "ro"
    path = parent / "queue"
    if os.geteuid() != 0:
        parent.mkdir()
        parent.chmod(0o500)
        try:
            done = _worker_start(path, tmp_path)
        finally:
            parent.chmod(0o700)
    else:
        with _tmpfs(parent, "ro,size=1m"):
            done = _worker_start(path, tmp_path)

    assert done.returncode == EXIT_CONFIG, done.stderr
    assert str(path) in done.stderr
    assert "storage.path" in done.stderr
    assert "Worker ready" not in done.stdout


async def test_new_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "db"
    old = os.umask(0o022)
    try:
        async with _storage(path):
            pass
    finally:
        os.umask(old)

    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    modes = {entry.name: stat.S_IMODE(entry.stat().st_mode) for entry in path.iterdir()}
    assert {"data.mdb", "lock.mdb"} <= modes.keys()
    assert set(modes.values()) == {0o600}, modes


# Stale readers --------------------------------------------------------------------------------

_READER_CHILD = """
    import asyncio, sys
    from looplane.storage import LMDBStorage

    async def main():
        storage = LMDBStorage(sys.argv[1], max_readers=int(sys.argv[2]))
        # Read transactions left open, as in a process killed mid-read: each holds a slot.
        held = [storage.env.env.begin() for _ in range(int(sys.argv[3]))]
        print("reading", len(held), flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
"""

_FRESH_CHILD = """
    import asyncio, sys
    from looplane.broker import StorageProducer
    from looplane.storage import LMDBStorage

    async def main():
        storage = LMDBStorage(sys.argv[1], max_readers=int(sys.argv[2]))
        await StorageProducer(storage).send("test.unregistered", "fresh")
        print((await storage.counts()).ready, len(await storage.claim(10)))
        await storage.close()

    asyncio.run(main())
"""
# Each reader child holds this many slots when it is killed.
_SLOTS_PER_CHILD = 2


def _start_reader(path: Path, max_readers: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_READER_CHILD), str(path), str(max_readers), "2"],
        cwd=REPO_ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill_readers_holding(path: Path, *, max_readers: int, rounds: int, per_round: int) -> int:
    killed = 0
    for _ in range(rounds):
        children = [_start_reader(path, max_readers) for _ in range(per_round)]
        try:
            for child in children:
                assert child.stdout is not None
                assert child.stdout.readline().strip() == "reading 2", "reader child failed"
        finally:
            for child in children:
                child.send_signal(signal.SIGKILL)
                child.wait()
                if child.stdout is not None:
                    child.stdout.close()
                killed += 1
    return killed


async def _kill_readers_then_open_fresh(tmp_path: Path, *, max_readers: int, rounds: int) -> None:
    path = tmp_path / "db"
    # This process keeps the environment open throughout, as a long-running worker would:
    # otherwise the next opener finds no live user and resets the whole reader table,
    # hiding stale slots.
    async with _storage(path, max_readers=max_readers) as holder:
        await StorageProducer(holder).send("test.unregistered", "before")
        per_round = (max_readers - 2) // _SLOTS_PER_CHILD

        killed = await asyncio.to_thread(
            _kill_readers_holding, path, max_readers=max_readers, rounds=rounds, per_round=per_round
        )

        assert killed * _SLOTS_PER_CHILD > 2 * max_readers
        fresh = await asyncio.to_thread(_run_child, _FRESH_CHILD, str(path), str(max_readers))
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.split() == ["2", "2"]
        await StorageProducer(holder).send("test.unregistered", "after")
        assert (await holder.counts()).ready == 1


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_readers_killed_mid_read_never_exhaust_reader_slots(tmp_path: Path) -> None:
    """Processes SIGKILLed while reading leave their slots; openers clear them (PF-22)."""
    await _kill_readers_then_open_fresh(tmp_path, max_readers=8, rounds=4)


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_readers_killed_many_times_never_exhaust_reader_slots(tmp_path: Path) -> None:
    await _kill_readers_then_open_fresh(tmp_path, max_readers=16, rounds=15)


# The same path twice in one process -----------------------------------------------------------


async def test_same_path_twice_and_through_a_symlink_share_one_queue(tmp_path: Path) -> None:
    path = tmp_path / "db"
    link = tmp_path / "link"
    first = LMDBStorage(path)
    link.symlink_to(path, target_is_directory=True)
    second = LMDBStorage(link)
    third = LMDBStorage(str(path) + "/")
    try:
        assert first.env is second.env is third.env
        await StorageProducer(first).send("test.unregistered", 1)
        await StorageProducer(second).send("test.unregistered", 2)
        claims = await second.claim(10)
        assert len(claims) == 2
        assert await first.ack(claims[0])

        await first.close()
        await third.close()

        assert await second.ack(claims[1])
        await StorageProducer(second).send("test.unregistered", 3)
        assert (await second.counts()).ready == 1
    finally:
        for storage in (first, second, third):
            await storage.close()

    async with _storage(path) as again:
        assert (await again.counts()).ready == 1


class _FullResults(InMemoryResultBackend):
    """Results that refuse the first `refusals` stores, as a full storage would."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def store(self, result: TaskResult) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise StorageFull("results are full", path="test", map_size=1, max_map_size=1)
        await super().store(result)


async def test_result_that_cannot_be_stored_leaves_the_task_to_retry(
    registrar: Registrar,
) -> None:
    """A refused result is never followed by the ack: the task runs again, then records."""

    @registrar
    async def answer() -> int:
        return 42

    storage = InMemoryStorage(lease_s=0.5)
    results = _FullResults(refusals=2)
    task = await StorageProducer(storage).send(answer)
    orchestrator = Orchestrator(StorageConsumer(storage), results, 2)

    async def recorded() -> TaskResult | None:
        return await results.get(task.id)

    outcome = await run_until(orchestrator, until_async(recorded, timeout=20.0))

    assert outcome.success
    assert outcome.value == 42
    assert len(await results.attempts(task.id)) == 1
    assert results.refusals == 0
