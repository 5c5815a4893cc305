"""Helpers the arq, SAQ, streaq and Dramatiq systems share, on top of `peers._support`.

These four peers run their workers through their own command lines (one child process each,
or the library's own multi-process option), configured through ``BENCH_*`` environment
variables that their worker modules read. Every worker process prints `READY_LINE` from the
library's own startup hook, and the system then drains `WARMUP_TASKS` tasks before it starts
the clock, so that connection set-up and script loading are not timed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from abc import abstractmethod
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

from peers._support import WorkerProcess, pickup_file, pickup_schedule, read_pickups
from peers.base import System

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

QUEUE = "bench"
BACKLOG_QUEUE = "bench-backlog"
"""The growth backlog's queue; no worker reads it."""

WARMUP_TASKS = 50
PICKUP_CONCURRENCY = 20
SEND_WINDOW = 100
"""Sends in flight at once where a library has async sends but no batch API."""

T = TypeVar("T")

READY_LINE = "bench worker ready"

# The environment variables through which a system configures its worker processes.
ENV_REDIS_URL = "BENCH_REDIS_URL"
ENV_QUEUE = "BENCH_QUEUE"
ENV_CONCURRENCY = "BENCH_CONCURRENCY"


def env_setting(name: str, default: str) -> str:
    """A worker-side setting, with a default so that importing a worker module never fails."""
    return os.environ.get(name, default)


def announce_ready() -> None:
    """Tell the system that this worker process is up (called from a library startup hook)."""
    print(READY_LINE, file=sys.stderr, flush=True)


def slow_drain_timeout_s(count: int) -> float:
    """A deadline generous enough for the slowest peer (arq polling every 0.5 s)."""
    return 60.0 + count / 50


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of `names` (``missing`` for those not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


async def send_concurrently(
    send: Callable[[int], Awaitable[T]], count: int, *, window: int = SEND_WINDOW
) -> T | None:
    """Await ``send(i)`` for i in ``range(count)``, `window` at a time; the last one's result.

    The fastest way to send with a library that has async sends but no batch API; the window
    bounds the connections and memory used.
    """
    import asyncio

    last: T | None = None
    for start in range(0, count, window):
        sent = await asyncio.gather(*(send(i) for i in range(start, min(count, start + window))))
        last = sent[-1]
    return last


def delete_keys(redis_url: str, *patterns: str) -> None:
    """Delete every key matching `patterns` in the database of `redis_url`."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in patterns:
            batch = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
    finally:
        client.close()


@contextmanager
def running_workers(
    argv: Sequence[str], *, copies: int, ready_each: int, workdir: str, env: dict[str, str]
) -> Iterator[list[WorkerProcess]]:
    """Run `copies` of the worker command line until the block ends, stopped even on error.

    Each copy must print `READY_LINE` `ready_each` times (once per worker process it runs)
    before the block starts.
    """
    workers: list[WorkerProcess] = []
    try:
        for index in range(copies):
            log_name = f"worker-{index}.log"
            workers.append(WorkerProcess(argv, workdir=workdir, log_name=log_name, env=env))
        for worker in workers:
            worker.wait_for_log(READY_LINE, times=ready_each)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


class CliWorkerPeer(System):
    """A peer with async sends whose workers run through its own command line.

    Subclasses give the command line and the async steps; the drain and pickup workloads
    are the same for all of them.
    """

    storage = "redis"
    cross_process = True
    keeps_backlog = True
    worker_argv: ClassVar[Sequence[str]]

    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """Seconds from the first send of `count` tasks until every one is done."""
        if backlog:
            asyncio.run(self._load_backlog(backlog))
        with self._workers(concurrency=concurrency, processes=processes):
            return asyncio.run(self._drain(count))

    def pickup(self, *, rate_per_s: float, duration_s: float) -> list[float]:
        """Latencies in ms from send to start at a steady rate, worker in another process."""
        path = pickup_file(self.workdir)
        Path(path).unlink(missing_ok=True)
        with self._workers(concurrency=PICKUP_CONCURRENCY, processes=1):
            asyncio.run(self._pickup(path, rate_per_s, duration_s))
        return read_pickups(path, len(pickup_schedule(rate_per_s, duration_s)))

    def worker_env(self, concurrency: int) -> dict[str, str]:
        """The ``BENCH_*`` variables the worker module reads."""
        return {ENV_REDIS_URL: self.redis_url, ENV_QUEUE: QUEUE, ENV_CONCURRENCY: str(concurrency)}

    @contextmanager
    def _workers(self, *, concurrency: int, processes: int) -> Iterator[list[WorkerProcess]]:
        env = self.worker_env(concurrency)
        with running_workers(
            self.worker_argv, copies=processes, ready_each=1, workdir=self.workdir, env=env
        ) as workers:
            yield workers

    @abstractmethod
    async def _drain(self, count: int) -> float:
        """Send `count` tasks and wait until they are done; the seconds it took."""

    @abstractmethod
    async def _load_backlog(self, backlog: int) -> None:
        """Top the backlog queue up to `backlog` waiting tasks."""

    @abstractmethod
    async def _pickup(self, path: str, rate_per_s: float, duration_s: float) -> None:
        """Send at a steady rate; each task records its start in `path`."""
