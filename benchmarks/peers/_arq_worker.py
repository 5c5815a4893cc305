"""The arq worker of the side-by-side benchmark: ``python -m arq peers._arq_worker.settings``.

`arq_systems` configures it through ``BENCH_*`` environment variables; the poll delay stays
arq's default unless ``BENCH_ARQ_POLL_DELAY_S`` is set.
"""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings

from peers._redis_peers import (
    ENV_CONCURRENCY,
    ENV_QUEUE,
    ENV_REDIS_URL,
    QUEUE,
    announce_ready,
    env_setting,
)
from peers._support import stamp as record_pickup

ENV_POLL_DELAY_S = "BENCH_ARQ_POLL_DELAY_S"


async def noop(ctx: dict[str, Any]) -> int:
    """The no-op task: returns a small value so that arq stores a result."""
    return 1


async def stamp(ctx: dict[str, Any], sent_at: float, path: str) -> int:
    """Append the delay from `sent_at` to this start to `path` (the pickup workload)."""
    return record_pickup(sent_at, path)


async def startup(ctx: dict[str, Any]) -> None:
    """arq's ``on_startup`` hook: this worker process is about to poll."""
    announce_ready()


def _settings() -> dict[str, Any]:
    found: dict[str, Any] = {
        "functions": [noop, stamp],
        "redis_settings": RedisSettings.from_dsn(
            env_setting(ENV_REDIS_URL, "redis://127.0.0.1:6379/0")
        ),
        "queue_name": env_setting(ENV_QUEUE, QUEUE),
        "max_jobs": int(env_setting(ENV_CONCURRENCY, "10")),
        "on_startup": startup,
    }
    poll_delay_s = env_setting(ENV_POLL_DELAY_S, "")
    if poll_delay_s:
        found["poll_delay"] = float(poll_delay_s)
    return found


settings = _settings()

# arq logs two INFO lines per job; the benchmark keeps its warnings only, like the other peers.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}
