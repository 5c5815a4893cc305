"""Several hosts on one Redis: two `looplane worker` processes, one of them killed mid-run.

Each worker is started as on a host of its own: its own directory, its own ``looplane.toml``
(read from the working directory, as an operator would deploy it) and nothing shared with the
other but the Redis server, the task module's code and the task log. The test process is a
third "host" that sends and reads results through a config of its own. Tasks log who started
and finished them (see `tests.e2e.tasks`), so "ran again elsewhere" is read from the log, not
inferred from results. Nothing here asserts on timing; waits poll with deadlines.

The workers are not put in network namespaces: the server listens on loopback only, which a
namespace would not reach without a bridge; separate processes with separate configs are what
the test needs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import looplane
from looplane import TaskTimeout
from looplane.storage import QueueCounts
from tests.conftest import REDIS_MARKS, REDIS_URL, eventually
from tests.e2e import tasks
from tests.e2e._util import Worker, child_env, read_log

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from looplane import Task, TaskResult
    from looplane.broker.producer import Call
    from looplane.factory import App
    from looplane.result.base import ResultBackend

pytestmark = [pytest.mark.slow, *REDIS_MARKS]

TASKS = 2000
CONCURRENCY = 20
"""Tasks at once per worker: more than the default pool of 10 connections, which must make
calls wait for a connection, not fail (storage.max_connections is left at its default)."""
TASK_S = 0.02
"""How long each task sleeps: long enough that a killed worker has tasks in flight."""
KILL_AFTER_DONE = 200
"""Tasks worker A must have finished before it is killed, so it dies mid-run."""
RESULTS_TIMEOUT_S = 40.0

CONFIG = """\
[storage]
backend = "redis"
url = {url}
queue = {queue}
lease = "2s"

[results]
backend = "redis"

[worker]
concurrency = {concurrency}
shutdown_grace = "5s"
"""


@dataclass
class Host:
    """One worker's directory (with its ``looplane.toml``) and, once started, its process."""

    name: str
    directory: Path
    worker: Worker | None = None

    @property
    def pid(self) -> int:
        assert self.worker is not None
        return self.worker.pid


def write_config(directory: Path, queue: str) -> Path:
    assert REDIS_URL
    directory.mkdir(parents=True)
    path = directory / "looplane.toml"
    path.write_text(
        CONFIG.format(
            url=json.dumps(REDIS_URL),
            queue=json.dumps(queue),
            concurrency=CONCURRENCY,
        )
    )
    return path


def worker_argv() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m looplane.cli``."""
    script = Path(sys.executable).with_name("looplane")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "looplane.cli"]
    return [*command, "worker", "-A", "tests.e2e.tasks"]


def spawn(host: Host, log_path: Path) -> Worker:
    """Start `host`'s worker in its directory, with no Looplane setting from our environment."""
    env = {
        name: value
        for name, value in child_env(log_path).items()
        if not name.startswith("LOOPLANE_") or name.startswith("LOOPLANE_TEST_")
    }
    stdout_path = host.directory / "worker.out"
    stderr_path = host.directory / "worker.err"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            worker_argv(),
            cwd=host.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    host.worker = Worker(host.name, process, stdout_path, stderr_path)
    return host.worker


@pytest.fixture
def queue() -> str:
    return f"lqtest-hosts-{uuid.uuid4().hex}"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.log"


@pytest.fixture
def hosts(tmp_path: Path, queue: str) -> Iterator[tuple[Host, Host]]:
    pair = (Host("a", tmp_path / "host-a"), Host("b", tmp_path / "host-b"))
    for host in pair:
        write_config(host.directory, queue)
    yield pair
    running = [h.worker.process for h in pair if h.worker and h.worker.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGKILL)
    for process in running:
        process.wait()


@dataclass
class Client:
    """The test process's side, configured like a third host, and the ids of what it sent."""

    app: App
    sent: list[Task]

    async def send_batch(self, calls: list[Call]) -> list[Task]:
        sent = await self.app.producer.send_batch(calls)
        self.sent += sent
        return sent


@pytest.fixture
async def client(tmp_path: Path, queue: str) -> AsyncIterator[Client]:
    config = write_config(tmp_path / "host-producer", queue)
    sent: list[Task] = []
    try:
        async with looplane.from_config(config) as app:
            yield Client(app, sent)
    finally:
        await drop_keys(queue, sent)


# Redis cleanup -------------------------------------------------------------------------------

# The results prefix ("lq") is shared by every queue, so its index and sequence are removed
# only when no result of anyone else is left in them, in one script so no store slips between.
_DROP_SHARED_RESULT_KEYS = """
for _, member in ipairs(ARGV) do redis.call('ZREM', KEYS[1], member) end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
return 1
"""
_DROP_QUEUE_NAME = """
redis.call('SREM', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


async def drop_keys(queue: str, sent: list[Task]) -> None:
    """Delete the queue's keys and every result of the tasks `sent`."""
    import redis.asyncio as aioredis

    assert REDIS_URL
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys: list[str | bytes] = [
            key async for key in client.scan_iter(match=f"lq:{{{queue}}}:*", count=1000)
        ]
        # A task's results are attempts 1 to max_attempts, plus the one a consumer records
        # for a task whose last attempt was lost.
        members = [
            f"{task.id}:{attempt}" for task in sent for attempt in range(1, task.max_attempts + 2)
        ]
        keys += [f"{{lq}}:result:{member}" for member in members]
        keys += [f"{{lq}}:{kind}:{task.id}" for task in sent for kind in ("attempts", "done")]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        for start in range(0, len(members), 1000):
            chunk = members[start : start + 1000]
            await client.eval(_DROP_SHARED_RESULT_KEYS, 2, "{lq}:index", "{lq}:seq", *chunk)
        await client.eval(_DROP_QUEUE_NAME, 1, "lq:queues", queue)
    finally:
        await client.aclose()


# Reading the outcome -----------------------------------------------------------------------


async def wait_final(
    backend: ResultBackend, sent: list[Task], *, timeout: float
) -> list[TaskResult]:
    """The final result of each task, all within one deadline."""
    deadline = time.monotonic() + timeout
    found: list[TaskResult] = []
    for task in sent:
        try:
            remaining = max(deadline - time.monotonic(), 0.0)
            found.append(await backend.wait(task.id, timeout=remaining))
        except TaskTimeout:
            raise AssertionError(
                f"{len(sent) - len(found)} of {len(sent)} final results missing after "
                f"{timeout} s; first missing: {task.args[0]} {task.id} "
                f"(latest: {await backend.get(task.id)!r})"
            ) from None
    return found


def by_pid(lines: list[list[str]], kind: str, pid: int) -> Counter[str]:
    """How many ``<kind> <tag> <pid>`` lines each tag has for process `pid`."""
    return Counter(tag for what, tag, who in lines if what == kind and who == str(pid))


# The test ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_two_hosts_survive_a_killed_worker_with_exactly_one_result_per_task(
    hosts: tuple[Host, Host], client: Client, log_path: Path, queue: str
) -> None:
    host_a, host_b = hosts
    for host in hosts:
        spawn(host, log_path)
    for host in hosts:
        assert host.worker is not None
        await host.worker.wait_ready()

    calls: list[Call] = [(tasks.sleep_then_record, (f"t{i:04}", TASK_S), {}) for i in range(TASKS)]
    sent = await client.send_batch(calls)
    assert {task.queue for task in sent} == {queue}

    # Kill A once it has finished a share of the work and is running more.
    def a_is_mid_run() -> bool:
        lines = read_log(log_path)
        done = by_pid(lines, "done", host_a.pid)
        return len(done) >= KILL_AFTER_DONE and bool(by_pid(lines, "started", host_a.pid) - done)

    await eventually(a_is_mid_run, timeout=30)
    assert host_a.worker is not None
    host_a.worker.send_signal(signal.SIGKILL)
    assert await host_a.worker.wait_exit() == -signal.SIGKILL

    finals = await wait_final(client.app.result_backend, sent, timeout=RESULTS_TIMEOUT_S)

    # Every task ends with exactly one successful result, and it is the final one.
    failed = [(task.args[0], r) for task, r in zip(sent, finals, strict=True) if not r.success]
    assert not failed, f"{len(failed)} tasks failed: {failed[:3]}"
    not_once = {}
    for task in sent:
        successes = [r for r in await client.app.result_backend.attempts(task.id) if r.success]
        if len(successes) != 1:
            not_once[task.args[0]] = [(r.attempt, r.value) for r in successes]
    assert not not_once, f"{len(not_once)} tasks without exactly one success: {not_once}"

    # Every task ran to its end on A or on B, each process ran it at most once, and the
    # tasks A was running when it died ran again on B.
    assert host_b.worker is not None
    assert host_b.worker.process.poll() is None, host_b.worker.describe()
    lines = read_log(log_path)
    assert {pid for _, _, pid in lines} <= {str(host_a.pid), str(host_b.pid)}
    a_started, a_done = by_pid(lines, "started", host_a.pid), by_pid(lines, "done", host_a.pid)
    b_started, b_done = by_pid(lines, "started", host_b.pid), by_pid(lines, "done", host_b.pid)
    tags = {task.args[0] for task in sent}
    assert len(tags) == TASKS
    assert {tag for _, tag, _ in lines} == tags
    assert set(a_done) | set(b_done) == tags
    assert max(a_started.values()) == 1, a_started.most_common(3)
    assert max(b_started.values()) == 1, b_started.most_common(3)
    interrupted = set(a_started) - set(a_done)
    assert interrupted, "A was killed with no task in flight"
    assert interrupted <= set(b_done)

    # Each final result comes from a process that finished the task; the interrupted ones
    # from B, on their second attempt.
    done_by = {host_a.pid: a_done, host_b.pid: b_done}
    for task, final in zip(sent, finals, strict=True):
        tag = task.args[0]
        assert tag in done_by.get(final.value, ()), (tag, final)
        if tag in interrupted:
            assert (final.value, final.attempt) == (host_b.pid, 2), (tag, final)

    # B stores each result before it acks the task, so the last acks may still be on their way.
    async def storage_is_empty() -> None:
        assert await client.app.storage.counts(queue=queue) == QueueCounts()

    await eventually(storage_is_empty)
    host_b.worker.send_signal(signal.SIGTERM)
    assert await host_b.worker.wait_exit() == 0, host_b.worker.describe()
