"""taskiq with its in-memory broker, and with taskiq-redis, through their public APIs.

``taskiq-redis`` uses `ListQueueBroker` (LPUSH to a list, BRPOP by workers), the fastest
broker taskiq-redis documents; it has no acks, so a killed worker loses the tasks it held
(Looplane's promise is at least once). Results go to `RedisAsyncResultBackend`. Workers are
the ``taskiq worker`` CLI (``--workers <processes> --max-async-tasks <concurrency>``) at its
default log level. taskiq has no batch send: tasks go out with ``kiq()``, 100 at a time
concurrently.

``taskiq-memory`` is `InMemoryBroker`: ``kiq()`` starts the task in the sending process at
once, without a queue, so it cannot enqueue without running, holds no backlog, and ignores
the concurrency limit (every sent task runs at once).

Completion: ``taskiq-memory`` awaits `InMemoryBroker.wait_all` and checks that a result was
stored for every task; ``taskiq-redis`` polls the database's key count (one key per stored
result) until it holds a result for every task sent and the queue list is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from peers._support import (
    WorkerProcess,
    chunks,
    drain_timeout_s,
    pickup_file,
    poll_until,
    python_argv,
    read_pickups,
    send_steadily,
)
from peers.base import System

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

if importlib.util.find_spec("taskiq") is None:
    # Raised at import, so that without taskiq the runner skips this module with the reason.
    raise ModuleNotFoundError("taskiq is not installed", name="taskiq")

CONCURRENT_SENDS = 100
"""``kiq()`` calls in flight at once when sending many tasks (taskiq has no batch send)."""


class _Taskiq(System):
    """What the taskiq systems share: the app module built for this system's broker."""

    family = "taskiq"
    kind: str

    def __init__(self, *, workdir: str, redis_url: str) -> None:
        super().__init__(workdir=workdir, redis_url=redis_url)
        self.env = {"BENCH_TASKIQ_KIND": self.kind, "BENCH_TASKIQ_URL": redis_url}
        os.environ.update(self.env)
        self.app: Any = importlib.import_module("peers._taskiq_app")

    def info(self) -> dict[str, str]:
        """taskiq's version and broker."""
        return {
            "taskiq": metadata.version("taskiq"),
            "broker": type(self.app.broker).__name__,
            "send": f"kiq(), {CONCURRENT_SENDS} at a time (no batch API)",
        }


class TaskiqMemory(_Taskiq):
    """`InMemoryBroker`: each task runs in the sending process as soon as it is sent."""

    name = "taskiq-memory"
    storage = "memory"
    kind = "memory"
    cross_process = False

    def info(self) -> dict[str, str]:
        """Also how concurrency works here."""
        found = super().info()
        found["concurrency"] = "unbounded: InMemoryBroker starts every task when it is sent"
        found["results"] = "InmemoryResultBackend(max_stored_results=-1), keeps all"
        return found

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Not possible: sending to `InMemoryBroker` runs the task."""
        raise NotImplementedError("InMemoryBroker runs a task when it is sent: no queue")

    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """Send `count` no-op tasks; seconds until every one has run and stored its result."""
        if backlog:
            raise NotImplementedError("InMemoryBroker has no queue to hold a backlog")
        return asyncio.run(self._drain(count))

    async def _drain(self, count: int) -> float:
        broker = self.app.broker
        await broker.startup()
        try:
            await (await self.app.noop.kiq()).wait_result(timeout=60)
            before = len(broker.result_backend.results)
            start = time.perf_counter()
            for _ in range(count):
                await self.app.noop.kiq()
            await broker.wait_all()
            elapsed = time.perf_counter() - start
            stored = len(broker.result_backend.results) - before
            if stored != count:
                raise RuntimeError(f"{stored} results stored for {count} tasks")
            return elapsed
        finally:
            await broker.shutdown()

    def pickup(self, *, rate_per_s: float, duration_s: float) -> list[float]:
        """Not measured: there is no worker in another process."""
        raise NotImplementedError("in-memory broker: no worker process")


class TaskiqRedis(_Taskiq):
    """taskiq-redis `ListQueueBroker` + `RedisAsyncResultBackend`, ``taskiq worker`` CLI."""

    name = "taskiq-redis"
    storage = "redis"
    kind = "redis"
    cross_process = True
    keeps_backlog = True

    def info(self) -> dict[str, str]:
        """Also the driver versions and the worker's command line."""
        found = super().info()
        found["taskiq-redis"] = metadata.version("taskiq-redis")
        found["redis-py"] = metadata.version("redis")
        found["worker"] = "taskiq worker --workers <processes> --max-async-tasks <concurrency>"
        found["acks"] = "none (ListQueueBroker pops the task)"
        return found

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Send `count` tasks with ``kiq()`` one at a time (taskiq has no batch send)."""
        if batched:
            raise NotImplementedError("taskiq has no batch send")
        return asyncio.run(self._enqueue(count))

    async def _enqueue(self, count: int) -> float:
        async with self._started():
            start = time.perf_counter()
            for _ in range(count):
                await self.app.noop.kiq()
            return time.perf_counter() - start

    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """Send `count` tasks to ready workers; seconds until all results are stored."""
        return asyncio.run(self._drain(count, concurrency, processes, backlog))

    async def _drain(self, count: int, concurrency: int, processes: int, backlog: int) -> float:
        async with self._started(), self._redis() as client:
            await self._top_up_backlog(client, backlog)
            with self._workers(concurrency, processes):
                await (await self.app.noop.kiq()).wait_result(timeout=60)
                before = await client.dbsize()
                start = time.perf_counter()
                await _send_many(self.app.noop.kiq, count)
                await _wait_results(client, before + count, timeout_s=drain_timeout_s(count))
                return time.perf_counter() - start

    def pickup(self, *, rate_per_s: float, duration_s: float) -> list[float]:
        """Send stamped tasks at a steady rate to one worker process (20 tasks at once)."""
        return asyncio.run(self._pickup(rate_per_s, duration_s))

    async def _pickup(self, rate_per_s: float, duration_s: float) -> list[float]:
        path = pickup_file(self.workdir)
        async with self._started():
            with self._workers(20, 1):
                await (await self.app.noop.kiq()).wait_result(timeout=60)

                async def send(sent_at: float) -> object:
                    return await self.app.stamp.kiq(sent_at, path)

                sent = await send_steadily(send, rate_per_s, duration_s)
                return await asyncio.to_thread(read_pickups, path, sent)

    # Building blocks.

    @contextlib.asynccontextmanager
    async def _started(self) -> AsyncIterator[None]:
        await self.app.broker.startup()
        try:
            yield
        finally:
            await self.app.broker.shutdown()

    @contextlib.asynccontextmanager
    async def _redis(self) -> AsyncIterator[Any]:
        """A client of the system's database, to watch it (not to send or run tasks)."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis_url)
        try:
            yield client
        finally:
            await client.aclose()

    async def _top_up_backlog(self, client: Any, backlog: int) -> None:
        missing = backlog - await client.llen(self.app.BACKLOG_QUEUE)
        if missing > 0:
            await _send_many(self.app.backlog_noop.kiq, missing)

    @contextlib.contextmanager
    def _workers(self, concurrency: int, processes: int) -> Any:
        argv = python_argv("-m", "taskiq", "worker", "peers._taskiq_app:broker")
        argv += ["--workers", str(processes), "--max-async-tasks", str(concurrency)]
        worker = WorkerProcess(argv, workdir=self.workdir, log_name="worker.log", env=self.env)
        try:
            worker.wait_for_log("Listening started", times=processes)
            yield
        finally:
            worker.stop()


async def _send_many(kiq: Any, count: int) -> None:
    """Call `kiq` `count` times, `CONCURRENT_SENDS` calls in flight at once."""
    for size in chunks(count, CONCURRENT_SENDS):
        await asyncio.gather(*(kiq() for _ in range(size)))


async def _wait_results(client: Any, keys: int, *, timeout_s: float) -> None:
    """Wait until the database holds `keys` keys and the queue list is empty (deleted)."""
    from peers._taskiq_app import QUEUE

    async def done() -> bool:
        async with client.pipeline(transaction=False) as pipe:
            size, queued = await pipe.dbsize().exists(QUEUE).execute()
        return bool(size >= keys and not queued)

    await poll_until(done, timeout_s=timeout_s, interval_s=0.005)


SYSTEMS: list[type[System]] = [TaskiqMemory, TaskiqRedis]
