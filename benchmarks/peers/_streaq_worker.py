"""The streaq worker of the side-by-side benchmark (``python -m streaq run`` runs `worker`).

`streaq_systems` configures it through ``BENCH_*`` environment variables. The tasks are
registered ``silent`` (streaq's documented switch for its two INFO lines per task), so the
worker logs only its start and stop, like the other peers.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from streaq import Worker

from peers._redis_peers import (
    ENV_CONCURRENCY,
    ENV_QUEUE,
    ENV_REDIS_URL,
    QUEUE,
    announce_ready,
    env_setting,
)
from peers._support import stamp as record_pickup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@asynccontextmanager
async def lifespan() -> AsyncIterator[None]:
    """streaq's ``lifespan`` hook: this worker process is about to read its stream."""
    announce_ready()
    yield


worker: Worker[None] = Worker(
    redis_url=env_setting(ENV_REDIS_URL, "redis://127.0.0.1:6379/0"),
    queue_name=env_setting(ENV_QUEUE, QUEUE),
    concurrency=int(env_setting(ENV_CONCURRENCY, "16")),
    lifespan=lifespan,
)


@worker.task(silent=True)
async def noop() -> int:
    """The no-op task: returns a small value so that streaq stores a result."""
    return 1


@worker.task(silent=True)
async def stamp(sent_at: float, path: str) -> int:
    """Append the delay from `sent_at` to this start to `path` (the pickup workload)."""
    return record_pickup(sent_at, path)
