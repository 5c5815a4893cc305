"""Dramatiq with its Redis broker in the side-by-side benchmark.

Dramatiq runs ``async def`` actors (its AsyncIO middleware, see `peers._dramatiq_tasks`) and
stores their results with the Results middleware in the same Redis database. Its worker
acks a message only after the middleware stored the result, and the broker counts a message
as queued until it is acked: a queue size of zero means every result is stored, which is what
``RedisBroker.join`` (used by `drain`) waits for. Dramatiq sends one message per call and has
no batch or pipeline send (``group(...).run()`` also sends one by one), so `drain` sends one
message at a time, and ``enqueue(batched=True)`` is not supported.

The worker is Dramatiq's CLI (``python -m dramatiq``) with ``--processes`` worker processes of
``--threads`` threads each (threads are the concurrency), at Dramatiq's default middleware
and log level.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from peers._dramatiq_tasks import Actors, build_broker, declare_actors
from peers._redis_peers import (
    BACKLOG_QUEUE,
    ENV_QUEUE,
    ENV_REDIS_URL,
    PICKUP_CONCURRENCY,
    QUEUE,
    WARMUP_TASKS,
    delete_keys,
    package_versions,
    running_workers,
    slow_drain_timeout_s,
)
from peers._support import (
    pickup_file,
    pickup_schedule,
    python_argv,
    read_pickups,
    send_steadily_sync,
)
from peers.base import System

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results.backends import RedisBackend

    from peers._support import WorkerProcess

BACKLOG_COUNT_KEY = "bench:dramatiq-backlog-count"


class DramatiqRedisSystem(System):
    """Dramatiq's Redis broker with the Results middleware on Redis."""

    name = "dramatiq-redis"
    family = "dramatiq"
    storage = "redis"
    cross_process = True
    keeps_backlog = True

    def info(self) -> dict[str, str]:
        """Versions and how tasks are run, sent and counted."""
        return {
            **package_versions("dramatiq", "redis", "hiredis"),
            "actors": "async def, AsyncIO middleware (event loop thread per process)",
            "results": "Results middleware, RedisBackend (prefixed keys), default ttl (10 min)",
            "worker": "python -m dramatiq --processes P --threads concurrency, default logging",
            "send": "actor.send, one at a time (no batch API)",
            "completion": "RedisBroker.join: queued + unacked == 0 (ack after result stored)",
        }

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Send `count` no-op messages one at a time; Dramatiq has no batch send."""
        if batched:
            raise NotImplementedError("Dramatiq has no batch or pipeline send API")
        broker, _, actors = self._connect()
        try:
            start = time.perf_counter()
            for _ in range(count):
                actors.noop.send()
            return time.perf_counter() - start
        finally:
            broker.close()

    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """Seconds from the first send of `count` messages until all are acked."""
        if backlog:
            self._load_backlog(backlog)
        broker, backend, actors = self._connect()
        try:
            with self._workers(concurrency=concurrency, processes=processes):
                _send_and_join(broker, actors, WARMUP_TASKS)
                start = time.perf_counter()
                last = _send_and_join(broker, actors, count)
                elapsed = time.perf_counter() - start
            if last.get_result(backend=backend) != 1:
                raise RuntimeError("dramatiq: the last message sent has no stored result")
            return elapsed
        finally:
            broker.close()

    def pickup(self, *, rate_per_s: float, duration_s: float) -> list[float]:
        """Latencies in ms from send to start at a steady rate, worker in another process."""
        path = pickup_file(self.workdir)
        Path(path).unlink(missing_ok=True)
        broker, _, actors = self._connect()
        try:
            with self._workers(concurrency=PICKUP_CONCURRENCY, processes=1):
                _send_and_join(broker, actors, WARMUP_TASKS)
                send_steadily_sync(
                    lambda sent_at: actors.stamp.send(sent_at, path), rate_per_s, duration_s
                )
                broker.join(QUEUE, interval=5, timeout=60_000)
        finally:
            broker.close()
        return read_pickups(path, len(pickup_schedule(rate_per_s, duration_s)))

    def cleanup(self) -> None:
        """Delete Dramatiq's queues and stored results."""
        delete_keys(self.redis_url, "dramatiq:*", "dramatiq-results:*", BACKLOG_COUNT_KEY)

    def _connect(self, queue_name: str = QUEUE) -> tuple[RedisBroker, RedisBackend, Actors]:
        broker, backend = build_broker(self.redis_url)
        return broker, backend, declare_actors(broker, queue_name)

    def _workers(
        self, *, concurrency: int, processes: int
    ) -> AbstractContextManager[list[WorkerProcess]]:
        argv = python_argv(
            "-m",
            "dramatiq",
            "peers._dramatiq_worker",
            f"--processes={processes}",
            f"--threads={concurrency}",
            f"--queues={QUEUE}",
        )
        env = {ENV_REDIS_URL: self.redis_url, ENV_QUEUE: QUEUE}
        return running_workers(argv, copies=1, ready_each=processes, workdir=self.workdir, env=env)

    def _load_backlog(self, backlog: int) -> None:
        """Top the second queue up to `backlog` messages (an earlier call may have left some).

        Dramatiq has no public queue size, so the benchmark counts what it wrote in a key of
        its own; no worker reads this queue, so the count stays exact.
        """
        import redis

        counter = redis.Redis.from_url(self.redis_url)
        broker, _, actors = self._connect(BACKLOG_QUEUE)
        try:
            written = cast("bytes | None", counter.get(BACKLOG_COUNT_KEY))
            missing = backlog - int(written or 0)
            for _ in range(missing):
                actors.noop.send()
            counter.incrby(BACKLOG_COUNT_KEY, max(0, missing))
        finally:
            broker.close()
            counter.close()


def _send_and_join(broker: RedisBroker, actors: Actors, count: int) -> Message[int]:
    """Send `count` no-op messages and wait until all are acked; the last one sent."""
    last = None
    for _ in range(count):
        last = actors.noop.send()
    if last is None:
        raise ValueError("no message to send")
    broker.join(QUEUE, interval=5, timeout=int(slow_drain_timeout_s(count) * 1000))
    return last


SYSTEMS: list[type[System]] = [DramatiqRedisSystem]
