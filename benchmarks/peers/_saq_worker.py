"""The SAQ worker of the side-by-side benchmark: ``python -m saq peers._saq_worker.settings``.

`saq_systems` configures it through ``BENCH_*`` environment variables. SAQ's CLI logs at
WARNING by default, so the worker keeps that.
"""

from __future__ import annotations

from typing import Any

from saq import Queue

from peers._redis_peers import (
    ENV_CONCURRENCY,
    ENV_QUEUE,
    ENV_REDIS_URL,
    QUEUE,
    announce_ready,
    env_setting,
)
from peers._support import stamp as record_pickup


async def noop(ctx: dict[str, Any]) -> int:
    """The no-op task: returns a small value so that SAQ stores a result."""
    return 1


async def stamp(ctx: dict[str, Any], *, sent_at: float, path: str) -> int:
    """Append the delay from `sent_at` to this start to `path` (the pickup workload)."""
    return record_pickup(sent_at, path)


async def startup(ctx: dict[str, Any]) -> None:
    """SAQ's ``startup`` hook: this worker process is about to dequeue."""
    announce_ready()


settings: dict[str, Any] = {
    "queue": Queue.from_url(
        env_setting(ENV_REDIS_URL, "redis://127.0.0.1:6379/0"), name=env_setting(ENV_QUEUE, QUEUE)
    ),
    "functions": [noop, stamp],
    "concurrency": int(env_setting(ENV_CONCURRENCY, "10")),
    "startup": startup,
}
