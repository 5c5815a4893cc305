"""A Redis server restarted under a running worker: nothing lost, nothing run twice.

Each test starts its own ``redis-server`` on a free port, with an append-only file synced on
every write, so a clean restart keeps every task. The shared test server is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from looplane import Orchestrator, StorageConsumer, StorageProducer, StorageUnavailable
from looplane.result import RedisResultBackend
from looplane.storage import RedisStorage
from tests._rig import Registrar, until_async

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from looplane import Task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

PASSWORD = "sekret-restart"
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` whose data survives `restart` (AOF, fsync always)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--requirepass",
                    PASSWORD,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_answering()

    def _wait_answering(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                assert self.process is not None
                assert self.process.poll() is None, self.log()
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                assert time.monotonic() < deadline, f"redis-server not answering:\n{self.log()}"
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    pytest.importorskip("redis")
    running = RedisServer(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def registrar() -> Iterator[Registrar]:
    register = Registrar()
    yield register
    register.clear()


@pytest.fixture
async def backends(
    server: RedisServer,
) -> AsyncIterator[tuple[RedisStorage, RedisResultBackend]]:
    storage = RedisStorage(server.url, queue_prefix="restart", lease_s=5.0)
    results = RedisResultBackend(server.url, prefix="restart")
    try:
        yield storage, results
    finally:
        await storage.close()
        await results.close()


async def _wait_all_succeeded(results: RedisResultBackend, tasks: list[Task]) -> None:
    async def done() -> bool:
        for task in tasks:
            outcome = await results.get(task.id)
            if outcome is None or not outcome.success:
                return False
        return True

    await until_async(done, timeout=120.0)


@pytest.mark.timeout(240)
async def test_worker_rides_out_a_redis_restart_with_one_success_per_task(
    server: RedisServer,
    backends: tuple[RedisStorage, RedisResultBackend],
    registrar: Registrar,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage, results = backends
    runs: list[int] = []

    @registrar
    async def slow_square(number: int) -> int:
        await asyncio.sleep(0.02)
        runs.append(number)
        return number * number

    producer = StorageProducer(storage)
    sent = await producer.send_batch([(slow_square, (i,), {}) for i in range(80)])
    orchestrator = Orchestrator(StorageConsumer(storage), results, 4)

    with caplog.at_level(logging.WARNING, logger="looplane"):
        await orchestrator.start()
        try:
            await until_async(lambda: _at_least(runs, 10), timeout=60.0)
            await asyncio.to_thread(server.stop)
            # Stay down until the worker noticed: a quick restart is hidden by retries.
            await until_async(lambda: _outage_logged(caplog), timeout=90.0)
            await asyncio.to_thread(server.start)
            sent += await producer.send_batch([(slow_square, (i,), {}) for i in range(80, 100)])
            await _wait_all_succeeded(results, sent)
        finally:
            await orchestrator.stop()

    for task in sent:
        successes = [r for r in await results.attempts(task.id) if r.success]
        assert len(successes) == 1, (task.id, successes)
    counts = await storage.counts()
    assert (counts.ready, counts.leased, counts.delayed, counts.dead) == (0, 0, 0, 0)
    messages = [record.getMessage() for record in caplog.records]
    assert any("works again" in text for text in messages), messages
    assert PASSWORD not in "\n".join(messages)


async def _outage_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any("unreachable" in record.getMessage() for record in caplog.records)


async def _at_least(runs: list[int], count: int) -> bool:
    return len(runs) >= count


async def test_send_while_redis_is_down_fails_clearly_then_works(
    server: RedisServer, backends: tuple[RedisStorage, RedisResultBackend]
) -> None:
    storage, _ = backends
    producer = StorageProducer(storage)
    await producer.send("test.unregistered", 1)
    await asyncio.to_thread(server.stop)

    with pytest.raises(StorageUnavailable) as caught:
        await asyncio.wait_for(producer.send("test.unregistered", 2), timeout=60.0)

    assert f"127.0.0.1:{server.port}" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    await asyncio.to_thread(server.start)
    await producer.send("test.unregistered", 3)
    assert (await storage.counts()).ready == 2
