"""Huey on SQLite, in memory and on Redis, through its public API with default settings.

Huey has no async tasks, so its task is a plain ``def`` that returns 1 (Huey stores no
result for None). Workers are Huey's own consumer, ``python -m huey.bin.huey_consumer`` with
thread workers (``-k thread -w <concurrency>``) at its default log level; ``huey-memory``
cannot be shared between processes, so its consumer runs in the producer's process
(`Huey.create_consumer`). Huey has no batch send: tasks go out one call at a time.

Completion: the producer polls `Huey.result_count` (a count of the result store) until it
holds a result for every task sent.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sqlite3
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from peers._support import (
    WorkerProcess,
    drain_timeout_s,
    pickup_file,
    python_argv,
    read_pickups,
    send_steadily_sync,
    wait_until,
)
from peers.base import System

if TYPE_CHECKING:
    from collections.abc import Iterator

if importlib.util.find_spec("huey") is None:
    # Raised at import, so that without Huey the runner skips this module with the reason.
    raise ModuleNotFoundError("huey is not installed", name="huey")


class _Huey(System):
    """What the three Huey systems share; subclasses name the storage."""

    family = "huey"
    kind: ClassVar[str]
    """``BENCH_HUEY_KIND`` of `peers._huey_app`: sqlite, redis or memory."""

    def __init__(self, *, workdir: str, redis_url: str) -> None:
        super().__init__(workdir=workdir, redis_url=redis_url)
        self.env = {
            "BENCH_HUEY_KIND": self.kind,
            "BENCH_HUEY_PATH": str(Path(workdir) / "huey.db"),
            "BENCH_HUEY_URL": redis_url,
        }
        os.environ.update(self.env)
        self.app: Any = importlib.import_module("peers._huey_app")

    def info(self) -> dict[str, str]:
        """Huey's version, storage class and consumer settings."""
        huey = self.app.huey
        return {
            "huey": metadata.version("huey"),
            "storage": type(huey.storage).__name__,
            "consumer": "huey_consumer -k thread -w <concurrency>, other options default "
            "(poll delay 0.1 s, backoff 1.15, max 10 s), log level INFO",
            "send": "one call at a time (no batch API)",
        }

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Enqueue `count` no-op tasks one call at a time (Huey has no batch send)."""
        if batched:
            raise NotImplementedError("Huey has no batch send")
        start = time.perf_counter()
        for _ in range(count):
            self.app.noop()
        return time.perf_counter() - start

    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """Enqueue `count` no-op tasks to ready consumers; seconds until all results exist."""
        self._top_up_backlog(backlog)
        huey = self.app.huey
        with self._consumers(concurrency, processes):
            self._warm_up()
            before = huey.result_count()
            start = time.perf_counter()
            for _ in range(count):
                self.app.noop()
            wait_until(
                lambda: huey.result_count() >= before + count,
                timeout_s=drain_timeout_s(count),
                interval_s=0.005,
            )
            return time.perf_counter() - start

    def pickup(self, *, rate_per_s: float, duration_s: float) -> list[float]:
        """Enqueue stamped tasks at a steady rate to one consumer process (20 threads)."""
        path = pickup_file(self.workdir)
        with self._consumers(20, 1):
            self._warm_up()
            sent = send_steadily_sync(
                lambda sent_at: self.app.stamp(sent_at, path), rate_per_s, duration_s
            )
            return read_pickups(path, sent)

    def cleanup(self) -> None:
        """Drop the queues and results this system left."""
        with contextlib.suppress(Exception):
            self.app.huey.flush()
            self.app.backlog_huey.flush()

    # Building blocks.

    def _warm_up(self) -> None:
        """Run one task end to end, so that consumers are polling before the clock starts."""
        self.app.noop().get(blocking=True, timeout=60)

    def _top_up_backlog(self, backlog: int) -> None:
        if backlog <= 0:
            return
        missing = backlog - self.app.backlog_huey.pending_count()
        for _ in range(max(0, missing)):
            self.app.backlog_noop()

    @contextlib.contextmanager
    def _consumers(self, concurrency: int, processes: int) -> Iterator[None]:
        """`processes` huey_consumer processes for the block."""
        argv = python_argv("-m", "huey.bin.huey_consumer", "peers._huey_app.huey", "-k", "thread")
        argv += ["-w", str(concurrency)]
        workers = []
        try:
            for index in range(processes):
                log_name = f"consumer-{index}.log"
                workers.append(
                    WorkerProcess(argv, workdir=self.workdir, log_name=log_name, env=self.env)
                )
            for worker in workers:
                worker.wait_for_log("Huey consumer started")
            yield
        finally:
            for worker in workers:
                worker.stop()


class HueySqlite(_Huey):
    """`SqliteHuey` with its default settings (WAL journal; see info for the sync level)."""

    name = "huey-sqlite"
    storage = "sqlite"
    kind = "sqlite"
    cross_process = True
    keeps_backlog = True

    def info(self) -> dict[str, str]:
        """Also the journal mode and synchronous level, read from the database."""
        found = super().info()
        self.app.huey.pending_count()  # creates the database file and its tables
        found.update(_sqlite_settings(self.app.huey, self.env["BENCH_HUEY_PATH"]))
        return found


def _sqlite_settings(huey: Any, path: str) -> dict[str, str]:
    """The journal mode of the file, and the synchronous level of Huey's own connection."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        journal = conn.execute("pragma journal_mode").fetchone()[0]
    level = huey.storage.conn.execute("pragma synchronous").fetchone()[0]
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {
        "sqlite journal_mode (file)": str(journal),
        "sqlite synchronous (Huey's connection)": f"{level} ({names.get(level, '?')})",
        "sqlite library": sqlite3.sqlite_version,
    }


class HueyRedis(_Huey):
    """`RedisHuey` with its defaults (blocking BRPOP reads) on the system's own database."""

    name = "huey-redis"
    storage = "redis"
    kind = "redis"
    cross_process = True
    keeps_backlog = True

    def info(self) -> dict[str, str]:
        """Also the Redis driver's version."""
        return {**super().info(), "redis-py": metadata.version("redis")}


class HueyMemory(_Huey):
    """`MemoryHuey`, its consumer's threads in the producer's process."""

    name = "huey-memory"
    storage = "memory"
    kind = "memory"
    cross_process = False

    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """As for the others, but a MemoryHuey queue is its own: no backlog can share it."""
        if backlog:
            raise NotImplementedError("each MemoryHuey has its own queue: no shared backlog")
        return super().drain(count, concurrency=concurrency, processes=processes)

    @contextlib.contextmanager
    def _consumers(self, concurrency: int, processes: int) -> Iterator[None]:
        """An in-process consumer with `concurrency` worker threads."""
        consumer = self.app.huey.create_consumer(workers=concurrency, worker_type="thread")
        consumer.start()
        try:
            yield
        finally:
            consumer.stop(graceful=True)


SYSTEMS: list[type[System]] = [HueySqlite, HueyMemory, HueyRedis]
