"""Delivery across real worker processes on one LMDB directory: crashes, signals, sharing.

Each test starts `tests.e2e.worker` processes next to the test process, which sends tasks
and reads results through the same directory. Tasks log who ran them (see
`tests.e2e.tasks`), so "ran exactly once" is read from the log, not inferred from results.
Nothing here asserts on timing; waits poll with deadlines.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from looplane import LMDBResultBackend, LMDBStorage, StorageProducer
from looplane.storage import QueueCounts
from tests.conftest import eventually
from tests.e2e import tasks
from tests.e2e._util import REPO_ROOT, Workers, child_env, read_log, tags_of, wait_results

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence
    from pathlib import Path

    from looplane import Task
    from looplane.broker.producer import Call

pytestmark = pytest.mark.slow

LEASE_S = 1.0
"""Lease of tasks without a timeout. The lease length is fixed when a task is sent, by the
sending storage's `lease_s`, so the test's producer sets it as well as the workers."""
SCRIPT_TIMEOUT_S = 20.0


@dataclass
class Client:
    """The test process's side of the queue: storage, a producer on it, and results."""

    storage: LMDBStorage
    producer: StorageProducer
    results: LMDBResultBackend


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.log"


@pytest.fixture
def workers(tmp_path: Path, db_path: Path, log_path: Path) -> Iterator[Workers]:
    pool = Workers(db_path, log_path, tmp_path)
    yield pool
    pool.close()


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[Client]:
    storage = LMDBStorage(db_path, lease_s=LEASE_S)
    results = LMDBResultBackend(db_path)
    yield Client(storage, StorageProducer(storage), results)
    await results.close()
    await storage.close()


async def counts_are(client: Client, expected: QueueCounts) -> None:
    assert await client.storage.counts() == expected


def started_by(log_path: Path, tag: str, pid: int) -> bool:
    return ["started", tag, str(pid)] in read_log(log_path)


async def run_script(argv: Sequence[str], *, cwd: Path, env: dict[str, str]) -> str:
    """Run a one-shot process to completion and return its stdout; fail on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(SCRIPT_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv} did not finish within {SCRIPT_TIMEOUT_S} s") from None
    assert process.returncode == 0, f"{argv} exited {process.returncode}:\n{stderr.decode()}"
    return stdout.decode()


def assert_succeeded(results: Sequence[Any], *, attempt: int = 1) -> None:
    failed = [r for r in results if not r.success or r.attempt != attempt]
    assert not failed, failed[:3]


# Crashes ---------------------------------------------------------------------------------


async def test_sigkill_mid_task_is_run_again_by_second_worker(
    workers: Workers, client: Client, log_path: Path
) -> None:
    first = await workers.start(lease_s=LEASE_S)
    task = await client.producer.send(tasks.sleep_then_record, "t", 2.0)
    await eventually(lambda: started_by(log_path, "t", first.pid))

    first.send_signal(signal.SIGKILL)
    assert await first.wait_exit() == -signal.SIGKILL
    second = await workers.start(lease_s=LEASE_S)
    result = await client.results.wait(task.id, timeout=20)

    assert (result.success, result.attempt, result.value) == (True, 2, second.pid)
    assert read_log(log_path) == [
        ["started", "t", str(first.pid)],
        ["started", "t", str(second.pid)],
        ["done", "t", str(second.pid)],
    ]


async def test_pf02_restarted_worker_with_same_identity_recovers_orphans(
    workers: Workers, client: Client, log_path: Path
) -> None:
    """https://github.com/procrastinate-org/procrastinate/issues/1518 (second scenario)."""
    first = await workers.start(lease_s=LEASE_S, consumer_id="e2e-same-identity")
    task = await client.producer.send(tasks.sleep_then_record, "orphan", 2.0)
    await eventually(lambda: started_by(log_path, "orphan", first.pid))

    first.send_signal(signal.SIGKILL)
    await first.wait_exit()
    second = await workers.start(lease_s=LEASE_S, consumer_id="e2e-same-identity")
    result = await client.results.wait(task.id, timeout=20)

    assert (result.success, result.attempt, result.value) == (True, 2, second.pid)
    assert tags_of(read_log(log_path), "done") == Counter({"orphan": 1})


@pytest.mark.timeout(60)
async def test_pf02_orphan_is_rerun_after_its_own_timeout_not_the_longest(
    workers: Workers, client: Client, log_path: Path
) -> None:
    """https://github.com/python-arq/arq/issues/402.

    `quick` (timeout 2 s) is leased for 2 s plus the lease grace, `long` for 600 s plus it;
    both are orphaned by one SIGKILL and only `quick` may come back within the test.
    """
    first = await workers.start()
    long = await client.producer.send(tasks.long, "long")
    quick = await client.producer.send(tasks.quick, "quick")
    await eventually(
        lambda: started_by(log_path, "long", first.pid) and started_by(log_path, "quick", first.pid)
    )

    first.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await first.wait_exit()
    await workers.start()
    result = await client.results.wait(quick.id, timeout=30 - (time.monotonic() - killed_at))

    assert (result.success, result.attempt) == (True, 2)
    assert await client.results.get(long.id) is None
    assert tags_of(read_log(log_path), "started") == Counter({"quick": 2, "long": 1})
    # The worker stores a result before it acks, so the ack may still be on its way.
    await eventually(lambda: counts_are(client, QueueCounts(leased=1)))


# Live tasks ------------------------------------------------------------------------------

LIVE_TASKS = [
    pytest.param(tasks.sleep_then_record, 4.0, id="awaits-4s-lease-1s"),
    pytest.param(tasks.block_loop, 3.0, id="blocks-loop-3s-timeout-10s"),
]


@pytest.mark.parametrize(("func", "seconds"), LIVE_TASKS)
async def test_pf04_live_task_not_handed_to_second_worker(
    workers: Workers, client: Client, log_path: Path, func: Any, seconds: float
) -> None:
    """https://github.com/tobymao/saq/issues/277, https://github.com/tobymao/saq/issues/209."""
    pool = [workers.spawn(lease_s=LEASE_S) for _ in range(2)]
    for worker in pool:
        await worker.wait_ready()

    task = await client.producer.send(func, "live", seconds)
    result = await client.results.wait(task.id, timeout=20)

    assert (result.success, result.attempt) == (True, 1)
    lines = read_log(log_path)
    assert lines == [["started", "live", str(result.value)], ["done", "live", str(result.value)]]
    assert [r.attempt for r in await client.results.attempts(task.id)] == [1]
    await eventually(lambda: counts_are(client, QueueCounts()))


# Graceful stop ---------------------------------------------------------------------------

STOP_SIGNALS = [
    pytest.param(signal.SIGTERM, id="sigterm"),
    pytest.param(signal.SIGINT, id="sigint"),
]
DRAIN_TASKS = 20
DRAIN_CONCURRENCY = 5


@pytest.mark.parametrize("signum", STOP_SIGNALS)
async def test_pf15_signal_drains_in_flight_and_keeps_the_rest(
    workers: Workers, client: Client, log_path: Path, signum: int
) -> None:
    """https://github.com/rq/rq/issues/507, https://github.com/coleifer/huey/issues/856."""
    calls: list[Call] = [
        (tasks.sleep_then_record, (f"s{i:02}", 1.5), {}) for i in range(DRAIN_TASKS)
    ]
    sent = await client.producer.send_batch(calls)
    worker = await workers.start(concurrency=DRAIN_CONCURRENCY, grace_s=20)

    # Signal once every slot is busy: no task can finish, and so none can start, before it.
    def all_slots_busy() -> Counter[str]:
        started = tags_of(read_log(log_path), "started")
        assert len(started) >= DRAIN_CONCURRENCY, started
        return started

    in_flight = await eventually(all_slots_busy)
    assert isinstance(in_flight, Counter)
    worker.send_signal(signum)
    assert await worker.wait_exit() == 0, worker.describe()

    assert "stopping" in worker.stdout()
    lines = read_log(log_path)
    assert tags_of(lines, "started") == in_flight
    assert tags_of(lines, "done") == in_flight
    ran = [t for t in sent if t.args[0] in in_flight]
    rest = [t for t in sent if t.args[0] not in in_flight]
    assert_succeeded([await client.results.get(t.id) for t in ran])
    assert [await client.results.get(t.id) for t in rest] == [None] * len(rest)
    assert await client.storage.counts() == QueueCounts(ready=len(rest))

    await workers.start(concurrency=DRAIN_CONCURRENCY)
    assert_succeeded(await wait_results(client.results, [t.id for t in rest]))
    once = Counter({f"s{i:02}": 1 for i in range(DRAIN_TASKS)})
    lines = read_log(log_path)
    assert (tags_of(lines, "started"), tags_of(lines, "done")) == (once, once)


# Workers sharing one directory -----------------------------------------------------------


async def test_several_workers_run_each_task_once(
    workers: Workers, client: Client, log_path: Path
) -> None:
    pool = [workers.spawn(concurrency=4) for _ in range(3)]
    for worker in pool:
        await worker.wait_ready()

    sent = await client.producer.send_batch([(tasks.record, (f"r{i}",), {}) for i in range(300)])
    results = await wait_results(client.results, [t.id for t in sent])

    assert_succeeded(results)
    lines = read_log(log_path)
    assert len(lines) == 300
    ran_by = {words[0]: words[1] for words in lines}
    assert set(ran_by) == {f"r{i}" for i in range(300)}
    assert [r.value for r in results] == [int(ran_by[t.args[0]]) for t in sent]
    assert set(ran_by.values()) <= {str(w.pid) for w in pool}
    assert len(set(ran_by.values())) > 1


PF19_APP = """\
import asyncio
import sys

from looplane import LMDBStorage, StorageProducer, register_task


@register_task
async def add(a: int, b: int) -> int:
    return a + b


async def main(path: str) -> None:
    async with LMDBStorage(path) as storage:
        task = await StorageProducer(storage).send(add, 1, 2)
    print(task.id, task.name)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
"""


async def test_pf19_main_module_producer_reaches_worker(
    workers: Workers, client: Client, tmp_path: Path, db_path: Path, log_path: Path
) -> None:
    """A producer run as __main__ and a worker importing the module agree on the name.

    https://github.com/coleifer/huey/issues/436
    https://github.com/taskiq-python/taskiq/issues/507
    """
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "pf19_app.py").write_text(PF19_APP)
    env = child_env(log_path)
    launches = [
        ([sys.executable, str(app_dir / "pf19_app.py")], REPO_ROOT),
        ([sys.executable, "-m", "pf19_app"], app_dir),
        ([sys.executable, "./pf19_app.py"], app_dir),
    ]
    sent = []
    for argv, cwd in launches:
        output = await run_script([*argv, str(db_path)], cwd=cwd, env=env)
        sent.append(output.split())

    assert [name for _, name in sent] == ["add"] * 3
    await workers.start(apps=["pf19_app"], pythonpath=[app_dir])
    results = await wait_results(client.results, [task_id for task_id, _ in sent])
    assert [(r.success, r.func_name, r.value) for r in results] == [(True, "add", 3)] * 3


PF26_PRODUCER = """\
import asyncio
import sys

from looplane import LMDBStorage, StorageProducer


async def main(path: str, count: int) -> None:
    async with LMDBStorage(path) as storage:
        producer = StorageProducer(storage)
        for i in range(count):
            task = await producer.send("e2e.record", f"p{i:03}")
            print(task.id, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_pf26_sends_from_another_process_complete_while_worker_busy(
    workers: Workers, client: Client, tmp_path: Path, db_path: Path, log_path: Path
) -> None:
    """https://github.com/jnwatson/py-lmdb/issues/114.

    Only completion is checked here; send latency belongs in a benchmark.
    """
    await workers.start(concurrency=20)
    busy = await client.producer.send_batch(
        [(tasks.sleep_then_record, (f"b{i:02}", 1.0), {}) for i in range(40)]
    )
    await eventually(lambda: len(tags_of(read_log(log_path), "started")) >= 20)

    script = tmp_path / "producer.py"
    script.write_text(PF26_PRODUCER)
    output = await run_script(
        [sys.executable, str(script), str(db_path), "100"], cwd=tmp_path, env=child_env(log_path)
    )

    sent_ids = output.split()
    assert len(sent_ids) == 100
    assert_succeeded(await wait_results(client.results, sent_ids))
    assert_succeeded(await wait_results(client.results, [t.id for t in busy]))


async def test_pf26_task_sends_without_deadlock(
    workers: Workers, client: Client, db_path: Path, log_path: Path
) -> None:
    """https://github.com/jnwatson/py-lmdb/issues/39: an async task and a sync task send."""
    await workers.start(concurrency=4)
    parents: list[Task] = [
        await client.producer.send(tasks.send_from_task, str(db_path), "from-task"),
        await client.producer.send(tasks.send_from_thread, str(db_path), "from-thread"),
    ]

    sent = await wait_results(client.results, [t.id for t in parents])
    assert_succeeded(sent)
    children = await wait_results(client.results, [r.value for r in sent])
    assert_succeeded(children)
    ran = Counter(tag for tag, _ in read_log(log_path))
    assert ran == Counter({"from-task": 1, "from-thread": 1})
