"""Huey instances and tasks for the benchmark (``huey_consumer peers._huey_app.huey``).

The storage comes from ``BENCH_HUEY_KIND`` (sqlite, redis or memory) with
``BENCH_HUEY_PATH`` (the SQLite file) or ``BENCH_HUEY_URL`` (the Redis database), so that the
consumer process builds the same instance as the producer. Every setting is Huey's default.
The growth backlog waits in a second instance on the same storage, ``backlog_huey`` (another
queue name), which no consumer reads.
"""

from __future__ import annotations

import os

from huey import Huey, MemoryHuey, RedisHuey, SqliteHuey

from peers._support import stamp as _stamp

KIND = os.environ.get("BENCH_HUEY_KIND", "memory")


def _make(name: str, **sqlite_options: object) -> Huey:
    """A Huey instance named `name` on the storage the environment names."""
    if KIND == "sqlite":
        return SqliteHuey(name, filename=os.environ["BENCH_HUEY_PATH"], **sqlite_options)
    if KIND == "redis":
        return RedisHuey(name, url=os.environ["BENCH_HUEY_URL"])
    return MemoryHuey(name)


huey = _make("bench")
# The backlog is written before the clock starts, one enqueue per transaction (Huey has no
# batch send): its own connection skips the fsync of each commit, or 1,000,000 of them
# would take most of an hour. The measured instance keeps Huey's defaults.
backlog_huey = _make("backlog", fsync=False)


@huey.task()  # type: ignore[untyped-decorator]  # Huey has no type hints
def noop() -> int:
    """Do nothing; return a value, since Huey stores no result for None."""
    return 1


@huey.task()  # type: ignore[untyped-decorator]  # Huey has no type hints
def stamp(sent_at: float, path: str) -> int:
    """Append this task's pickup latency to `path` (the pickup workload)."""
    return _stamp(sent_at, path)


@backlog_huey.task(name="noop")  # type: ignore[untyped-decorator]  # Huey has no type hints
def backlog_noop() -> int:
    """The backlog's task; never run."""
    return 1
