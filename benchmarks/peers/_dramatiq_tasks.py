"""The broker and actors of Dramatiq's side-by-side benchmark, shared by worker and producer.

Dramatiq 2 runs ``async def`` actors on an event loop thread of its own (the AsyncIO
middleware), each worker thread waiting for the coroutine it started; the benchmark uses
them, so that every peer runs the same ``async def`` no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from peers._support import stamp as record_pickup

if TYPE_CHECKING:
    from dramatiq import Actor


class Actors(NamedTuple):
    """The two actors of one queue."""

    noop: Actor[[], int]
    stamp: Actor[[float, str], int]


def build_broker(redis_url: str) -> tuple[RedisBroker, RedisBackend]:
    """A Redis broker with async actors and results stored in the same Redis database."""
    broker = RedisBroker(url=redis_url)
    # Readable result keys (``dramatiq-results:...``) let `cleanup` find them by pattern.
    backend = RedisBackend(url=redis_url, use_namespace_prefix_keys=True)
    broker.add_middleware(AsyncIO())
    broker.add_middleware(Results(backend=backend))
    return broker, backend


async def noop() -> int:
    """The no-op task: returns a small value so that Dramatiq stores a result."""
    return 1


async def stamp(sent_at: float, path: str) -> int:
    """Append the delay from `sent_at` to this start to `path` (the pickup workload)."""
    return record_pickup(sent_at, path)


def declare_actors(broker: RedisBroker, queue_name: str) -> Actors:
    """Declare both actors on `broker`, in `queue_name`, storing their results."""
    # One decorator per actor: a Dramatiq decorator remembers the first name it gave.
    return Actors(
        noop=dramatiq.actor(broker=broker, queue_name=queue_name, store_results=True)(noop),
        stamp=dramatiq.actor(broker=broker, queue_name=queue_name, store_results=True)(stamp),
    )
