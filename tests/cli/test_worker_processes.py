"""``looplane worker --processes N``: a supervisor and N worker processes, run for real."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from looplane import LMDBResultBackend, LMDBStorage, StorageProducer
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from looplane.cli.supervisor import (
    CRASH_WINDOW_S,
    EARLY_DEATHS,
    SupervisorOutcome,
    _CrashLog,
    describe_exit,
)
from tests.cli._process import READY_LINE, poll_until
from tests.conftest import eventually

if TYPE_CHECKING:
    from collections.abc import Callable

    from looplane.result import TaskResult
    from tests.cli._process import LooplaneProcess

    Launch = Callable[..., LooplaneProcess]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PIDS_MODULE = "lp_pids"
PIDS_SOURCE = '''
import asyncio
import os

from looplane import register_task


@register_task(name="lp.where")
async def where(seconds: float) -> int:
    """Sleep, then return the pid of the worker process that ran this."""
    await asyncio.sleep(seconds)
    return os.getpid()


@register_task(name="lp.crash")
async def crash() -> None:
    """End the worker process at once, as a segfault in a native library would."""
    os._exit(3)
'''
STARTED = re.compile(r"worker process started process=(\d+) pid=(\d+)")


def _started(worker: LooplaneProcess) -> list[tuple[int, int]]:
    """(process number, pid) of each worker process the supervisor started, in order."""
    return [(int(n), int(pid)) for n, pid in STARTED.findall(worker.stderr())]


def _alive(pid: int) -> bool:
    """Whether `pid` runs and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


def _write_app(work_dir: Path, source: str = PIDS_SOURCE, name: str = PIDS_MODULE) -> str:
    (work_dir / f"{name}.py").write_text(source)
    return name


async def _wait_all(db: Path, ids: list[str], timeout: float = 40) -> list[TaskResult]:
    async with LMDBResultBackend(db) as results:
        return [await results.wait(task_id, timeout=timeout) for task_id in ids]


def _pids_ready(worker: LooplaneProcess, count: int) -> list[int]:
    worker.wait_ready(timeout=40)
    started = _started(worker)
    assert len(started) == count, worker.describe()
    return [pid for _, pid in started]


async def test_worker_processes_all_run_tasks_and_exit_0_on_sigint(
    launch: Launch, work_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    module = _write_app(work_dir)
    worker = launch("worker", "-A", module, "-p", "2", "-c", "2", "--db-path", str(db))
    pids = _pids_ready(worker, 2)

    seen: set[int] = set()
    async with LMDBStorage(db) as storage:
        producer = StorageProducer(storage)
        while seen != set(pids):
            batch = [(await producer.send("lp.where", 0.2)).id for _ in range(8)]
            seen |= {result.value for result in await _wait_all(db, batch)}
            assert seen <= set(pids), worker.describe()

    worker.signal(signal.SIGINT)
    assert await asyncio.to_thread(worker.wait_exit, 40) == EXIT_OK
    stdout, stderr = worker.stdout(), worker.stderr()
    assert stdout.count("Registered Tasks (2)") == 1
    assert stdout.count(READY_LINE) == 1
    assert re.search(r"^\s*Processes\s{2,}2\s*$", stdout, re.M)
    assert re.search(r"^\s*Concurrency\s{2,}2 per process\s*$", stdout, re.M)
    for pid in pids:
        assert re.search(rf"worker process stopped process=\d pid={pid} returncode=0", stderr)
    assert not any(_alive(pid) for pid in pids)


async def test_worker_process_killed_is_restarted_and_its_tasks_rerun_after_the_lease(
    launch: Launch, work_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    module = _write_app(work_dir)
    args = ("worker", "-A", module, "-p", "2", "-c", "2", "--db-path", str(db))
    worker = launch(*args, env={"LOOPLANE_STORAGE__LEASE": "2s"})
    pids = _pids_ready(worker, 2)

    async with LMDBStorage(db) as storage:
        producer = StorageProducer(storage)
        sent = [(await producer.send("lp.where", 3)).id for _ in range(4)]

        async def all_leased() -> None:
            assert (await storage.counts()).leased == 4

        await eventually(all_leased, timeout=30)
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    worker.wait_stderr(f"worker process 1 (pid {victim}) was killed by SIGKILL; restarting")
    poll_until(lambda: len(_started(worker)) == 3, timeout=30, describe=worker.describe)

    results = await _wait_all(db, sent)
    assert all(result.success for result in results)
    assert victim not in {result.value for result in results}
    rerun = [result for result in results if result.attempt == 2]
    assert len(rerun) == 2, [(r.attempt, r.value) for r in results]
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait_exit, 40) == EXIT_OK


async def test_worker_processes_that_keep_crashing_exit_1_naming_the_last_exit(
    launch: Launch, work_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    module = _write_app(work_dir)
    args = ("worker", "-A", module, "-p", "2", "-c", "1", "--db-path", str(db))
    worker = launch(*args, env={"LOOPLANE_STORAGE__LEASE": "1s"})
    worker.wait_ready(timeout=40)
    async with LMDBStorage(db) as storage:
        producer = StorageProducer(storage)
        for _ in range(12):
            await producer.send("lp.crash", retries=20)

    assert await asyncio.to_thread(worker.wait_exit, 60) == EXIT_FAILURE
    stderr = worker.stderr()
    assert re.search(
        r"error: worker processes keep crashing: 7 exits within 60 s; the last: worker "
        r"process \d \(pid \d+\) exited with code 3",
        stderr,
    ), worker.describe()
    assert not any(_alive(pid) for _, pid in _started(worker))


def test_worker_process_whose_app_fails_to_import_stops_the_supervisor_with_exit_2(
    launch: Launch, work_dir: Path
) -> None:
    source = (
        "import sys\n"
        "if '--supervisor-pid' in sys.argv:\n"
        "    raise RuntimeError('only in worker processes')\n"
    )
    module = _write_app(work_dir, source, "lp_child_breaks")
    worker = launch("worker", "-A", module, "-p", "2", "--storage", "memory")

    assert worker.wait_exit(60) == EXIT_CONFIG
    stderr = worker.stderr()
    assert "RuntimeError: only in worker processes" in stderr
    assert re.search(
        r"^error: worker process \d \(pid \d+\) exited with code 2 before it was ready: a "
        r"configuration error$",
        stderr,
        re.M,
    ), worker.describe()
    assert READY_LINE not in worker.stdout()
    assert len(_started(worker)) <= 2


def test_worker_processes_dying_before_ready_exit_1_without_looping(
    launch: Launch, work_dir: Path
) -> None:
    source = "import os, sys\nif '--supervisor-pid' in sys.argv:\n    os._exit(7)\n"
    module = _write_app(work_dir, source, "lp_child_dies")
    worker = launch("worker", "-A", module, "-p", "2", "--storage", "memory")

    assert worker.wait_exit(60) == EXIT_FAILURE
    assert re.search(
        rf"^error: worker processes exited before they were ready {EARLY_DEATHS} times in a "
        r"row; the last: worker process \d \(pid \d+\) exited with code 7$",
        worker.stderr(),
        re.M,
    ), worker.describe()
    assert len(_started(worker)) <= EARLY_DEATHS + 1


def test_worker_processes_stop_when_the_supervisor_is_killed(
    launch: Launch, work_dir: Path
) -> None:
    module = _write_app(work_dir)
    worker = launch("worker", "-A", module, "-p", "2", "--storage", "memory")
    pids = _pids_ready(worker, 2)

    worker.process.kill()
    worker.process.wait()

    poll_until(lambda: not any(_alive(pid) for pid in pids), timeout=30, describe=worker.describe)
    stderr = worker.stderr()
    assert stderr.count("supervisor is gone, stopping gracefully") == 2
    assert stderr.count("warning: storage 'memory' lives inside each worker process") == 1


def test_worker_processes_stopped_while_starting_exit_0_and_leave_no_process(
    launch: Launch, work_dir: Path
) -> None:
    module = _write_app(work_dir)
    worker = launch("worker", "-A", module, "-p", "2", "--storage", "memory")
    worker.wait_stderr("worker process started process=2", timeout=40)

    worker.signal(signal.SIGTERM)

    assert worker.wait_exit(40) == EXIT_OK
    pids = [pid for _, pid in _started(worker)]
    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)
    assert "Traceback" not in worker.stderr()


# Without processes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        pytest.param(0, "exited with code 0", id="clean"),
        pytest.param(3, "exited with code 3", id="code"),
        pytest.param(-signal.SIGKILL, "was killed by SIGKILL", id="signal"),
    ],
)
def test_describe_exit_names_the_code_or_the_signal(returncode: int, expected: str) -> None:
    assert describe_exit(returncode) == expected


def test_crash_log_gives_up_past_the_limit_within_the_window_only() -> None:
    log = _CrashLog(limit=2)

    verdicts = [log.record(now=t, before_ready=False) for t in (0.0, 1.0, 2.0)]
    later = log.record(now=3.0 + CRASH_WINDOW_S, before_ready=False)

    assert verdicts[:2] == [None, None]
    assert verdicts[2] == "worker processes keep crashing: 3 exits within 60 s"
    assert later is None


def test_crash_log_gives_up_after_early_deaths_in_a_row_only() -> None:
    log = _CrashLog(limit=100)

    first = [log.record(now=0.0, before_ready=True) for _ in range(EARLY_DEATHS - 1)]
    log.record(now=0.0, before_ready=False)
    second = [log.record(now=0.0, before_ready=True) for _ in range(EARLY_DEATHS)]

    assert first == [None] * (EARLY_DEATHS - 1)
    assert second[:-1] == [None] * (EARLY_DEATHS - 1)
    assert (
        second[-1]
        == f"worker processes exited before they were ready {EARLY_DEATHS} times in a row"
    )
    assert SupervisorOutcome(EXIT_OK).message is None
