"""SIGTERM, SIGINT and a second SIGINT at random moments, to one and several worker processes.

Each round starts a real ``looplane worker``, sends tasks that sleep for random short times,
signals the worker at a random moment while they run (seeded, so a failure replays), and then
checks what users rely on: the worker exits 0, nothing is left leased, a follow-up worker
finishes the rest, every task ends with exactly one result and it is a success, and on LMDB
no process left a stale reader slot behind.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import uuid
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lmdb
import pytest

from looplane import LMDBResultBackend, LMDBStorage, StorageProducer
from looplane.cli.exit_codes import EXIT_OK
from tests.cli._process import start_looplane
from tests.conftest import REDIS_URL, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from looplane.result import ResultBackend
    from looplane.storage import StorageBackend
    from looplane.task import Task
    from tests.cli._process import LooplaneProcess

APP_MODULE = "tests.cli.app_tasks"
TASKS_PER_ROUND = 30
CONCURRENCY = 3


@dataclass(frozen=True)
class Case:
    """One scenario: how many worker processes, which signals, how many rounds."""

    processes: int
    signals: tuple[signal.Signals, ...]
    rounds: int = 1


SIGTERM, SIGINT = signal.SIGTERM, signal.SIGINT
CASES = [
    pytest.param(Case(1, (SIGTERM,)), id="1-process-sigterm"),
    pytest.param(Case(2, (SIGINT, SIGINT)), id="2-processes-double-sigint"),
]
LONG_CASES = [
    pytest.param(Case(processes, signals, rounds=4), id=f"{processes}-{label}-x4")
    for processes in (1, 2, 3)
    for label, signals in (
        ("sigterm", (SIGTERM,)),
        ("sigint", (SIGINT,)),
        ("double-sigint", (SIGINT, SIGINT)),
        ("sigterm-then-sigint", (SIGTERM, SIGINT)),
    )
]


@dataclass
class Target:
    """Where the workers of one test keep their tasks, and how to start one there."""

    tmp_path: Path
    args: tuple[str, ...]
    env: dict[str, str]
    db: Path | None = None
    queue: str = "default"
    started: int = 0

    def launch(self, *args: str) -> LooplaneProcess:
        self.started += 1
        work = self.tmp_path / "work"
        work.mkdir(exist_ok=True)
        return start_looplane(
            ["worker", "-A", APP_MODULE, *self.args, *args],
            cwd=work,
            out_dir=self.tmp_path / "out",
            env=self.env,
        )

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[tuple[StorageBackend, ResultBackend]]:
        if self.db is not None:
            async with LMDBStorage(self.db) as storage, LMDBResultBackend(self.db) as results:
                yield storage, results
            return
        from looplane.result.redis import RedisResultBackend
        from looplane.storage.redis import RedisStorage

        assert REDIS_URL
        async with RedisStorage(REDIS_URL) as storage, RedisResultBackend(REDIS_URL) as results:
            yield storage, results


@pytest.fixture
def lmdb_target(tmp_path: Path) -> Target:
    db = tmp_path / "db"
    grace = {"LOOPLANE_WORKER__SHUTDOWN_GRACE": "20s"}
    return Target(tmp_path, ("--db-path", str(db)), grace, db=db)


@pytest.fixture
def started() -> Iterator[list[LooplaneProcess]]:
    """Processes a test starts; any still running at teardown are killed."""
    started: list[LooplaneProcess] = []
    yield started
    for process in started:
        process.kill()


async def _done(results: ResultBackend, sent: list[Task]) -> int:
    return sum([await results.get(task.id) is not None for task in sent])


async def _interrupt(
    target: Target, case: Case, rng: random.Random, started: list[LooplaneProcess]
) -> list[Task]:
    """Start a worker, send a round of tasks, signal it at a random moment; return the tasks."""
    worker = target.launch("-p", str(case.processes), "-c", str(CONCURRENCY))
    started.append(worker)
    await asyncio.to_thread(worker.wait_ready, 60)

    async with target.opened() as (storage, results):
        producer = StorageProducer(storage, queue=target.queue)
        sent = [
            await producer.send("cli_tests.sleep", round(rng.uniform(0.05, 0.4), 3))
            for _ in range(TASKS_PER_ROUND)
        ]
        wanted = rng.randint(1, TASKS_PER_ROUND // 3)

        async def some_done() -> None:
            assert await _done(results, sent) >= wanted

        await eventually(some_done, timeout=60)
        # Not a wait for a state: a random extra delay moves the signal between task starts,
        # finishes and lease renewals.
        await asyncio.sleep(rng.uniform(0, 0.3))
        for number, signum in enumerate(case.signals):
            if number:
                await asyncio.sleep(rng.uniform(0, 0.3))
            worker.signal(signum)
        code = await asyncio.to_thread(worker.wait_exit, 60)
        counts = await storage.counts(queue=target.queue)

    assert code == EXIT_OK, worker.describe()
    assert (counts.leased, counts.dead) == (0, 0), (counts, worker.describe())
    assert "Traceback" not in worker.stderr(), worker.describe()
    return sent


async def _finish(target: Target, sent: list[Task], started: list[LooplaneProcess]) -> None:
    """Drain the rest with a follow-up worker; every task ends with one successful result."""
    follow_up = target.launch("-c", "10")
    started.append(follow_up)
    await asyncio.to_thread(follow_up.wait_ready, 60)
    async with target.opened() as (_, results):
        final = [await results.wait(task.id, timeout=60) for task in sent]
        attempts = [await results.attempts(task.id) for task in sent]
    follow_up.signal(signal.SIGTERM)
    assert await asyncio.to_thread(follow_up.wait_exit, 60) == EXIT_OK

    assert all(result.success for result in final)
    outcomes = {
        task.id: [r.success for r in each] for task, each in zip(sent, attempts, strict=True)
    }
    assert all(each == [True] for each in outcomes.values()), outcomes


def _assert_no_stale_readers(db: Path) -> None:
    env = lmdb.open(str(db), readonly=True, lock=True, max_dbs=0, subdir=True)
    try:
        table = env.readers()
        cleared = env.reader_check()
    finally:
        env.close()
    assert (cleared, table) == (0, "(no active readers)\n")


async def _run(
    target: Target,
    case: Case,
    *,
    seed: int,
    started: list[LooplaneProcess],
    sent_log: list[Task] | None = None,
) -> None:
    rng = random.Random(seed)
    for _ in range(case.rounds):
        sent = await _interrupt(target, case, rng, started)
        if sent_log is not None:
            sent_log.extend(sent)
        # Check before the follow-up worker opens the environment: opening it clears the
        # slots of dead processes, which would hide a worker that left one behind.
        if target.db is not None:
            _assert_no_stale_readers(target.db)
        await _finish(target, sent, started)
        if target.db is not None:
            _assert_no_stale_readers(target.db)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
async def test_worker_stopped_by_signal_loses_no_task_on_lmdb(
    lmdb_target: Target, started: list[LooplaneProcess], case: Case
) -> None:
    await _run(lmdb_target, case, seed=len(case.signals) * 10 + case.processes, started=started)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", LONG_CASES)
async def test_worker_stopped_by_signal_many_rounds_loses_no_task_on_lmdb(
    lmdb_target: Target, started: list[LooplaneProcess], case: Case
) -> None:
    await _run(lmdb_target, case, seed=case.processes * 100 + sum(case.signals), started=started)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(2, (SIGINT, SIGINT)), id="2-processes-double-sigint"),
        pytest.param(
            Case(2, (SIGTERM,), rounds=3), id="2-processes-sigterm-x3", marks=pytest.mark.long
        ),
    ],
)
@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason="LOOPLANE_TEST_REDIS_URL is not set")
async def test_worker_stopped_by_signal_loses_no_task_on_redis(
    tmp_path: Path, started: list[LooplaneProcess], case: Case
) -> None:
    from tests.e2e.test_redis_hosts import drop_keys

    assert REDIS_URL
    queue = f"signals-{uuid.uuid4().hex[:12]}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "looplane.toml").write_text(
        f'[storage]\nbackend = "redis"\nurl = {json.dumps(REDIS_URL)}\nqueue = "{queue}"\n'
        '[results]\nbackend = "redis"\n[worker]\nshutdown_grace = "20s"\n'
    )
    target = Target(tmp_path, (), {}, queue=queue)
    sent: list[Task] = []
    try:
        await _run(target, case, seed=7, started=started, sent_log=sent)
    finally:
        await drop_keys(queue, sent)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "processes", [pytest.param(1, id="1-process"), pytest.param(2, id="2-processes")]
)
async def test_worker_signalled_over_and_over_until_it_exits_still_exits_0(
    lmdb_target: Target, processes: int, started: list[LooplaneProcess]
) -> None:
    """A signal while the stopped worker closes its storage must not kill it half-way.

    Removing the event loop's handlers used to restore the default actions, so a late
    SIGTERM ended the worker with -SIGTERM and a late SIGINT with a KeyboardInterrupt.
    """
    worker = lmdb_target.launch("-p", str(processes), "-c", str(CONCURRENCY))
    started.append(worker)
    await asyncio.to_thread(worker.wait_ready, 60)
    async with lmdb_target.opened() as (storage, _):
        producer = StorageProducer(storage)
        for _ in range(10):
            await producer.send("cli_tests.sleep", 0.2)

    rng = random.Random(5)
    while worker.process.poll() is None:
        with suppress(ProcessLookupError):
            worker.signal(rng.choice([SIGINT, SIGTERM]))
        await asyncio.sleep(0.002)

    assert worker.process.returncode == EXIT_OK, worker.describe()
    assert "Traceback" not in worker.stderr()
    if processes > 1:
        assert worker.stderr().count("returncode=0") == processes, worker.describe()
    assert lmdb_target.db is not None
    _assert_no_stale_readers(lmdb_target.db)
