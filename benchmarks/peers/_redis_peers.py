"""Helpers the arq, SAQ, streaq and Dramatiq systems share, on top of `peers._support`.

These four peers run their workers through their own command lines (one child process each,
or the library's own multi-process option), configured through ``BENCH_*`` environment
variables that their worker modules read. Every worker process prints `READY_LINE` from the
library's own startup hook, and the system then drains `WARMUP_TASKS` tasks before it starts
the clock, so that connection set-up and script loading are not timed.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, TypeVar

from peers._support import WorkerProcess

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
