"""streaq on Redis in the side-by-side benchmark.

streaq keeps a task's message in its Redis stream until the task finishes, and deletes it in
the same transaction that stores the result: a queue size of zero means every result is
stored, which is what `drain` waits for. streaq has a pipelined batch send,
``Worker.enqueue_many``, which `drain` and ``enqueue(batched=True)`` use `BATCH` tasks at a
time.

The worker is streaq's CLI (``python -m streaq run``), one per worker process, at streaq's
defaults (results kept 5 minutes, prefetch twice the concurrency) with ``concurrency`` set.
The producer is a plain `streaq.Worker` on the same queue, sending by task name
(``enqueue_unsafe``, streaq's documented way to keep the producer apart from the task code).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from streaq import Worker

from peers._redis_peers import (
    BACKLOG_QUEUE,
    QUEUE,
    WARMUP_TASKS,
    CliWorkerPeer,
    delete_keys,
    package_versions,
    slow_drain_timeout_s,
)
from peers._support import (
    chunks,
    poll_until,
    python_argv,
    send_steadily,
)

if TYPE_CHECKING:
    from peers.base import System

BATCH = 1000
"""Tasks per ``enqueue_many`` call (one Redis pipeline each)."""

WORKER_ARGV = python_argv("-m", "streaq", "run", "peers._streaq_worker:worker")


class StreaqRedisSystem(CliWorkerPeer):
    """streaq's Redis streams queue with its default settings."""

    name = "streaq-redis"
    family = "streaq"
    worker_argv = WORKER_ARGV

    def info(self) -> dict[str, str]:
        """Versions and how tasks are sent and counted."""
        return {
            **package_versions("streaq", "coredis", "anyio"),
            "result_ttl_s": "300 (default)",
            "worker": "python -m streaq run, one per process, concurrency set, tasks silent",
            "send": f"Worker.enqueue_many, {BATCH} per pipeline",
            "completion": "queue_size() == 0 (result stored in the same transaction)",
        }

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Send `count` no-op tasks, one at a time or `BATCH` per ``enqueue_many``."""
        return asyncio.run(self._enqueue(count, batched=batched))

    def cleanup(self) -> None:
        """Delete streaq's keys (streams, tasks, results, its Lua library stays loaded)."""
        delete_keys(self.redis_url, "streaq:*")

    def _producer(self, queue_name: str = QUEUE) -> Worker[None]:
        return Worker(redis_url=self.redis_url, queue_name=queue_name)

    async def _enqueue(self, count: int, *, batched: bool) -> float:
        async with self._producer() as producer:
            start = time.perf_counter()
            if batched:
                await _send_batches(producer, count)
            else:
                for _ in range(count):
                    await _send_one(producer, "noop")
            return time.perf_counter() - start

    async def _drain(self, count: int) -> float:
        async with self._producer() as producer:
            await _send_and_wait(producer, WARMUP_TASKS)
            start = time.perf_counter()
            last_id = await _send_and_wait(producer, count)
            elapsed = time.perf_counter() - start
            result = await producer.result_by_id(last_id, timeout=10)
            if not result.success or result.result != 1:
                raise RuntimeError("streaq: the last task sent has no stored result")
            return elapsed

    async def _load_backlog(self, backlog: int) -> None:
        """Top the second queue up to `backlog` tasks (an earlier call may have left some)."""
        async with self._producer(BACKLOG_QUEUE) as producer:
            missing = backlog - await producer.queue_size()
            if missing > 0:
                await _send_batches(producer, missing)

    async def _pickup(self, path: str, rate_per_s: float, duration_s: float) -> None:
        async with self._producer() as producer:
            await _send_and_wait(producer, WARMUP_TASKS)

            async def send(sent_at: float) -> str:
                return await _send_one(producer, "stamp", sent_at, path)

            await send_steadily(send, rate_per_s, duration_s)
            await _wait_empty(producer, timeout_s=60.0)


async def _send_one(producer: Worker[None], name: str, *args: object) -> str:
    """Send one task of the task function `name`; its id."""
    task = await producer.enqueue_unsafe(name, *args)
    return task.id


async def _send_batches(producer: Worker[None], count: int) -> str:
    """Send `count` no-op tasks `BATCH` per ``enqueue_many``; the id of the last one."""
    last = None
    for size in chunks(count, BATCH):
        tasks = [producer.enqueue_unsafe("noop") for _ in range(size)]
        await producer.enqueue_many(tasks)
        last = tasks[-1]
    if last is None:
        raise ValueError("no task to send")
    return last.id


async def _send_and_wait(producer: Worker[None], count: int) -> str:
    """Send `count` no-op tasks, wait until every one has finished; the id of the last one."""
    last_id = await _send_batches(producer, count)
    await _wait_empty(producer, timeout_s=slow_drain_timeout_s(count))
    return last_id


async def _wait_empty(producer: Worker[None], *, timeout_s: float) -> None:
    """Wait until the producer's queue holds no task."""

    async def empty() -> bool:
        return await producer.queue_size() == 0

    await poll_until(empty, timeout_s=timeout_s)


SYSTEMS: list[type[System]] = [StreaqRedisSystem]
