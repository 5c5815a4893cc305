"""The Dramatiq worker of the side-by-side benchmark (``python -m dramatiq`` imports it).

`dramatiq_systems` configures it through ``BENCH_*`` environment variables; the CLI's
``--processes`` and ``--threads`` set the worker processes and the concurrency.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from peers._dramatiq_tasks import build_broker, declare_actors
from peers._redis_peers import (
    ENV_QUEUE,
    ENV_REDIS_URL,
    QUEUE,
    announce_ready,
    env_setting,
)


class AnnounceReady(Middleware):
    """Tells the system when each worker process has booted."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        """Dramatiq's hook once a worker process consumes its queues."""
        announce_ready()


broker, backend = build_broker(env_setting(ENV_REDIS_URL, "redis://127.0.0.1:6379/0"))
broker.add_middleware(AnnounceReady())
dramatiq.set_broker(broker)
actors = declare_actors(broker, env_setting(ENV_QUEUE, QUEUE))
