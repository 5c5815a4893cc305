"""arq on Redis in the side-by-side benchmark, with its default and with fast polling.

arq keeps a job in the queue's sorted set until it finishes, and its worker removes it in the
same transaction that stores the result: an empty queue means every result is stored, which
is what `drain` waits for (arq's own burst mode checks the same). arq has no batch or pipeline
send, so `drain` keeps `SEND_WINDOW` ``enqueue_job`` calls in flight, and
``enqueue(batched=True)`` is not supported.

The worker is arq's CLI (``python -m arq``), one per worker process, ``max_jobs`` set to the
concurrency, results kept for arq's default hour, its per-job INFO lines turned off.
``arq-redis`` polls at arq's default delay (0.5 s), ``arq-redis-fast`` every 10 ms, the
setting the issue calls "fast polling".
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, ClassVar

from arq.connections import RedisSettings, create_pool
from arq.jobs import Job, JobStatus

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
    from arq.connections import ArqRedis

    from peers.base import System


ARQ_DEFAULT_POLL_DELAY_S = 0.5
WORKER_ARGV = python_argv(
    "-m", "arq", "peers._arq_worker.settings", "--custom-log-dict", "peers._arq_worker.LOG_CONFIG"
)


class ArqRedisSystem(CliWorkerPeer):
    """arq with its default settings: the worker polls the queue every 0.5 s."""

    name = "arq-redis"
    family = "arq"
    worker_argv = WORKER_ARGV
    poll_delay_s: ClassVar[float | None] = None
    """arq's ``poll_delay``; None leaves arq's default."""

    def info(self) -> dict[str, str]:
        """Versions, the poll delay and how tasks are sent and counted."""
        poll_s = ARQ_DEFAULT_POLL_DELAY_S if self.poll_delay_s is None else self.poll_delay_s
        return {
            **package_versions("arq", "redis", "hiredis"),
            "poll_delay_s": f"{poll_s} ({'default' if self.poll_delay_s is None else 'set'})",
            "keep_result_s": "3600 (default)",
            "worker": "python -m arq, max_jobs = concurrency, arq log level WARNING",
            "send": f"enqueue_job, {SEND_WINDOW} in flight (no batch API)",
            "completion": "queue sorted set empty (result stored in the same transaction)",
        }

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Send `count` no-op jobs one at a time; arq has no batch send."""
        if batched:
            raise NotImplementedError("arq has no batch or pipeline send API")
        return asyncio.run(self._enqueue(count))

    def cleanup(self) -> None:
        """Delete arq's keys and both queues."""
        delete_keys(self.redis_url, "arq:*", f"{QUEUE}*")

    def worker_env(self, concurrency: int) -> dict[str, str]:
        """The shared ``BENCH_*`` variables, plus the poll delay when one is set."""
        env = super().worker_env(concurrency)
        if self.poll_delay_s is not None:
            env["BENCH_ARQ_POLL_DELAY_S"] = str(self.poll_delay_s)
        return env

    async def _pool(self) -> ArqRedis:
        return await create_pool(RedisSettings.from_dsn(self.redis_url), default_queue_name=QUEUE)

    async def _enqueue(self, count: int) -> float:
        pool = await self._pool()
        try:
            start = time.perf_counter()
            for _ in range(count):
                await pool.enqueue_job("noop")
            return time.perf_counter() - start
        finally:
            await pool.aclose()

    async def _drain(self, count: int) -> float:
        pool = await self._pool()
        try:
            await self._send_and_wait(pool, WARMUP_TASKS)
            start = time.perf_counter()
            last = await self._send_and_wait(pool, count)
            elapsed = time.perf_counter() - start
            await _check_result(last)
            return elapsed
        finally:
            await pool.aclose()

    async def _send_and_wait(self, pool: ArqRedis, count: int) -> Job | None:
        async def send(_: int) -> Job | None:
            return await pool.enqueue_job("noop")

        last = await send_concurrently(send, count)
        await _wait_empty(pool, timeout_s=slow_drain_timeout_s(count))
        return last

    async def _load_backlog(self, backlog: int) -> None:
        """Top the second queue up to `backlog` jobs (an earlier call may have left some)."""
        pool = await self._pool()
        try:
            missing = backlog - await pool.zcard(BACKLOG_QUEUE)

            async def send(_: int) -> Job | None:
                return await pool.enqueue_job("noop", _queue_name=BACKLOG_QUEUE)

            await send_concurrently(send, max(0, missing), window=500)
        finally:
            await pool.aclose()

    async def _pickup(self, path: str, rate_per_s: float, duration_s: float) -> None:
        pool = await self._pool()
        try:
            await self._send_and_wait(pool, WARMUP_TASKS)

            async def send(sent_at: float) -> Job | None:
                return await pool.enqueue_job("stamp", sent_at, path)

            await send_steadily(send, rate_per_s, duration_s)
            await _wait_empty(pool, timeout_s=60.0)
        finally:
            await pool.aclose()


class ArqRedisFastSystem(ArqRedisSystem):
    """arq with fast polling: the worker polls the queue every 10 ms."""

    name = "arq-redis-fast"
    poll_delay_s = 0.01


async def _wait_empty(pool: ArqRedis, *, timeout_s: float) -> None:
    """Wait until the main queue holds no job: every job sent has finished."""

    async def empty() -> bool:
        return int(await pool.zcard(QUEUE)) == 0

    await poll_until(empty, timeout_s=timeout_s)


async def _check_result(job: Job | None) -> None:
    """Fail loudly unless the last job sent finished with a stored result."""
    if job is None or await job.status() is not JobStatus.complete:
        raise RuntimeError("arq: the last job sent has no stored result")


SYSTEMS: list[type[System]] = [ArqRedisSystem, ArqRedisFastSystem]
