"""SAQ on Redis in the side-by-side benchmark.

SAQ keeps a job in the queue's ``incomplete`` set until it finishes, and removes it in the
same transaction that stores the finished job (its result included): a count of zero
incomplete jobs means every result is stored, which is what `drain` waits for. SAQ has no batch
send (``Queue.batch`` only aborts a group on error; ``Queue.map`` enqueues one by one), so
`drain` keeps `SEND_WINDOW` ``enqueue`` calls in flight (SAQ itself lets 20 run at once, its
default ``max_concurrent_ops``), and ``enqueue(batched=True)`` is not supported.

The worker is SAQ's CLI (``python -m saq``), one per worker process, at SAQ's defaults
(results kept 600 s, WARNING logs) with ``concurrency`` set.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from saq import Queue, Status

from peers._redis_peers import (
    BACKLOG_QUEUE,
    QUEUE,
    SEND_WINDOW,
    WARMUP_TASKS,
    CliWorkerPeer,
    delete_keys,
    package_versions,
    send_concurrently,
    slow_drain_timeout_s,
)
from peers._support import (
    poll_until,
    python_argv,
    send_steadily,
)

if TYPE_CHECKING:
    from saq import Job

    from peers.base import System


WORKER_ARGV = python_argv("-m", "saq", "peers._saq_worker.settings")


class SaqRedisSystem(CliWorkerPeer):
    """SAQ's Redis queue with its default settings."""

    name = "saq-redis"
    family = "saq"
    worker_argv = WORKER_ARGV

    def info(self) -> dict[str, str]:
        """Versions and how tasks are sent and counted."""
        return {
            **package_versions("saq", "redis", "hiredis"),
            "job_ttl_s": "600 (default; results kept as long)",
            "worker": "python -m saq, one per process, concurrency set, log level WARNING",
            "send": f"Queue.enqueue, {SEND_WINDOW} in flight (no batch API)",
            "completion": "count('incomplete') == 0 (result stored in the same transaction)",
        }

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Send `count` no-op jobs one at a time; SAQ has no batch send."""
        if batched:
            raise NotImplementedError("SAQ has no batch or pipeline send API")
        return asyncio.run(self._enqueue(count))

    def cleanup(self) -> None:
        """Delete SAQ's keys (jobs, queues, statistics)."""
        delete_keys(self.redis_url, "saq:*")

    async def _queue(self) -> Queue:
        queue = Queue.from_url(self.redis_url, name=QUEUE)
        await queue.connect()
        return queue

    async def _enqueue(self, count: int) -> float:
        queue = await self._queue()
        try:
            start = time.perf_counter()
            for _ in range(count):
                await queue.enqueue("noop")
            return time.perf_counter() - start
        finally:
            await queue.disconnect()

    async def _drain(self, count: int) -> float:
        queue = await self._queue()
        try:
            await _send_and_wait(queue, WARMUP_TASKS)
            start = time.perf_counter()
            last = await _send_and_wait(queue, count)
            elapsed = time.perf_counter() - start
            await _check_result(queue, last)
            return elapsed
        finally:
            await queue.disconnect()

    async def _load_backlog(self, backlog: int) -> None:
        """Top the second queue up to `backlog` jobs (an earlier call may have left some)."""
        # More enqueues in flight than SAQ's default 20 only to load the backlog faster.
        queue = Queue.from_url(self.redis_url, name=BACKLOG_QUEUE, max_concurrent_ops=500)
        await queue.connect()
        try:
            missing = backlog - await queue.count("queued")

            async def send(_: int) -> Job | None:
                return await queue.enqueue("noop")

            await send_concurrently(send, max(0, missing), window=500)
        finally:
            await queue.disconnect()

    async def _pickup(self, path: str, rate_per_s: float, duration_s: float) -> None:
        queue = await self._queue()
        try:
            await _send_and_wait(queue, WARMUP_TASKS)

            async def send(sent_at: float) -> Job | None:
                return await queue.enqueue("stamp", sent_at=sent_at, path=path)

            await send_steadily(send, rate_per_s, duration_s)
            await _wait_complete(queue, timeout_s=60.0)
        finally:
            await queue.disconnect()


async def _send_and_wait(queue: Queue, count: int) -> Job | None:
    """Send `count` no-op jobs and wait until every one has finished; the last one sent."""

    async def send(_: int) -> Job | None:
        return await queue.enqueue("noop")

    last = await send_concurrently(send, count)
    await _wait_complete(queue, timeout_s=slow_drain_timeout_s(count))
    return last


async def _wait_complete(queue: Queue, *, timeout_s: float) -> None:
    """Wait until the queue holds no incomplete job."""

    async def complete() -> bool:
        return await queue.count("incomplete") == 0

    await poll_until(complete, timeout_s=timeout_s)


async def _check_result(queue: Queue, last: Job | None) -> None:
    """Fail loudly unless the last job sent finished with a stored result."""
    job = None if last is None else await queue.job(last.key)
    if job is None or job.status is not Status.COMPLETE or job.result != 1:
        raise RuntimeError("saq: the last job sent has no stored result")


SYSTEMS: list[type[System]] = [SaqRedisSystem]
