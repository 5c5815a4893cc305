"""Looplane as users run it: ``looplane worker`` processes and a producer from `from_config`.

Workers are the real CLI (``python -m looplane.cli worker -A peers._looplane_app``) at its
default log level, configured by flags and ``LOOPLANE_*`` variables; the producer is
``looplane.from_config(...)`` with the same settings, sending with `send_batch` where a
workload allows it. The memory system cannot be shared between processes, so its worker is
``app.run_worker`` in the producer's own process.

Completion: the producer waits (`ResultBackend.wait`, no polling) for the result of the last
task it sent, then polls the queue's counts until nothing is ready or leased. A task is acked
only after its result is stored, so an empty queue means every result is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import looplane
from looplane import LMDBStorage, StorageProducer
from peers import _looplane_app as tasks
from peers._support import (
    WorkerProcess,
    chunks,
    drain_timeout_s,
    pickup_file,
    poll_until,
    python_argv,
    read_pickups,
    send_steadily,
)
from peers.base import System

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from looplane.factory import App

BATCH = 1000
"""Tasks per `send_batch` call (one storage write each)."""

BACKLOG_QUEUE = "backlog"
"""The queue the growth backlog waits in; no worker reads it."""


def lmdb_has_sync() -> bool:
    """Whether this Looplane's LMDB storage offers relaxed sync (``sync=False``)."""
    return "sync" in inspect.signature(LMDBStorage).parameters


class _Looplane(System):
    """What the four Looplane systems share; subclasses name the storage."""

    family = "looplane"
    backend: ClassVar[str]
    """The ``storage.backend`` setting: memory, lmdb or redis."""
    sync: ClassVar[bool] = True
    """LMDB's ``storage.sync``; only the relaxed system sets False."""

    def _overrides(self) -> dict[str, Any]:
        """`from_config` keywords selecting this system's storage (results follow it)."""
        overrides: dict[str, Any] = {"storage": self.backend}
        if self.backend == "lmdb":
            overrides["storage__path"] = self._lmdb_path()
        if self.backend == "redis":
            overrides["storage__url"] = self.redis_url
        if not self.sync:
            overrides["storage__sync"] = False
        return overrides

    def _lmdb_path(self) -> str:
        return str(Path(self.workdir) / "lmdb")

    def _worker_argv(self, concurrency: int, processes: int) -> list[str]:
        argv = python_argv("-m", "looplane.cli", "worker", "-A", "peers._looplane_app")
        argv += ["-c", str(concurrency), "-p", str(processes), "--storage", self.backend]
        if self.backend == "lmdb":
            argv += ["--db-path", self._lmdb_path()]
        return argv

    def _worker_env(self) -> dict[str, str]:
        env = {}
        if self.backend == "redis":
            env["LOOPLANE_STORAGE__URL"] = self.redis_url
        if not self.sync:
            env["LOOPLANE_STORAGE__SYNC"] = "false"
        return env

    def info(self) -> dict[str, str]:
        """Looplane's version and storage settings, with the drivers that matter."""
        found = {
            "looplane": looplane.__version__,
            "storage": self.backend,
            "worker": self._worker_info(),
            "send": f"send_batch of {BATCH} (drain, growth); send (pickup)",
        }
        if self.backend == "lmdb":
            found["lmdb (py-lmdb)"] = metadata.version("lmdb")
            found["storage.sync"] = str(self.sync).lower()
        if self.backend == "redis":
            found["redis-py"] = metadata.version("redis")
        return found

    def _worker_info(self) -> str:
        """What runs the tasks, as `_workers` starts it."""
        if not self.cross_process:
            return (
                "app.run_worker in the producer's process (no CLI, no second process), "
                "at the workload's concurrency; the library sets no log handler"
            )
        return (
            "looplane worker CLI in its own process (-c C, -p P; log level INFO, one line "
            "per attempt)"
        )

    # Workloads: each runs its own event loop in this (fresh) interpreter.

    def enqueue(self, count: int, *, batched: bool) -> float:
        """Send `count` no-op tasks with `send` one at a time, or `send_batch` of 1,000."""
        return asyncio.run(self._enqueue(count, batched=batched))

    async def _enqueue(self, count: int, *, batched: bool) -> float:
        async with self._app() as app:
            start = time.perf_counter()
            if batched:
                await _send_batches(app.producer, count)
            else:
                for _ in range(count):
                    await app.producer.send(tasks.noop)
            return time.perf_counter() - start

    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """Send `count` no-op tasks in batches to ready workers; seconds to the last result."""
        return asyncio.run(self._drain(count, concurrency, processes, backlog))

    async def _drain(self, count: int, concurrency: int, processes: int, backlog: int) -> float:
        async with self._app(concurrency) as app:
            await _top_up_backlog(app, backlog)
            async with self._workers(app, concurrency, processes):
                await _warm_up(app)
                start = time.perf_counter()
                last = await _send_batches(app.producer, count)
                await _wait_drained(app, last, timeout_s=drain_timeout_s(count))
                return time.perf_counter() - start

    def pickup(self, *, rate_per_s: float, duration_s: float) -> list[float]:
        """Send stamped tasks one at a time at a steady rate to one worker process (c=20)."""
        return asyncio.run(self._pickup(rate_per_s, duration_s))

    async def _pickup(self, rate_per_s: float, duration_s: float) -> list[float]:
        path = pickup_file(self.workdir)
        async with self._app() as app, self._workers(app, 20, 1):
            await _warm_up(app)

            async def send(sent_at: float) -> object:
                return await app.producer.send(tasks.stamp, sent_at, path)

            sent = await send_steadily(send, rate_per_s, duration_s)
            return await asyncio.to_thread(read_pickups, path, sent)

    # Building blocks.

    @contextlib.asynccontextmanager
    async def _app(self, concurrency: int = 10) -> AsyncIterator[App]:
        async with looplane.from_config(
            **self._overrides(), worker__concurrency=concurrency
        ) as app:
            yield app

    @contextlib.asynccontextmanager
    async def _workers(self, app: App, concurrency: int, processes: int) -> AsyncIterator[None]:
        """Run the workers for the block: CLI processes, or the app's own for memory."""
        if not self.cross_process:
            async with _in_process_worker(app):
                yield
            return
        with self._worker_processes(concurrency, processes):
            yield

    @contextlib.contextmanager
    def _worker_processes(self, concurrency: int, processes: int) -> Iterator[None]:
        argv = self._worker_argv(concurrency, processes)
        worker = WorkerProcess(
            argv, workdir=self.workdir, log_name="worker.log", env=self._worker_env()
        )
        try:
            worker.wait_for_log("Worker ready")
            yield
        finally:
            worker.stop()


@contextlib.asynccontextmanager
async def _in_process_worker(app: App) -> AsyncIterator[None]:
    """`app.run_worker` in the background for the block; stopped gracefully after it."""
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run_worker(stop))
    try:
        yield
    finally:
        stop.set()
        await runner


async def _send_batches(producer: StorageProducer, count: int) -> looplane.Task:
    """Send `count` no-op tasks in batches; return the last one."""
    last = None
    for size in chunks(count, BATCH):
        sent = await producer.send_batch([(tasks.noop, (), {})] * size)
        last = sent[-1]
    if last is None:
        raise ValueError("nothing to send")
    return last


async def _warm_up(app: App) -> None:
    """Run one task end to end, so that workers are connected before the clock starts."""
    task = await app.producer.send(tasks.noop)
    await app.result_backend.wait(task.id, timeout=60)


async def _wait_drained(app: App, last: looplane.Task, *, timeout_s: float) -> None:
    """Wait for the last task's result, then until the queue holds nothing ready or leased."""
    await app.result_backend.wait(last.id, timeout=timeout_s)

    async def empty() -> bool:
        counts = await app.storage.counts()
        return counts.ready == 0 and counts.leased == 0

    await poll_until(empty, timeout_s=timeout_s, interval_s=0.002)


async def _top_up_backlog(app: App, backlog: int) -> None:
    """Make the backlog queue hold `backlog` tasks, writing only those missing."""
    if backlog <= 0:
        return
    have = (await app.storage.counts(queue=BACKLOG_QUEUE)).ready
    if have < backlog:
        producer = StorageProducer(app.storage, queue=BACKLOG_QUEUE)
        await _send_batches(producer, backlog - have)


class LooplaneMemory(_Looplane):
    """`InMemoryStorage` + `InMemoryResultBackend`, the worker in the producer's process."""

    name = "looplane-memory"
    storage = "memory"
    backend = "memory"
    cross_process = False


class LooplaneLMDB(_Looplane):
    """LMDB with its default settings: durable commits (an fsync per transaction)."""

    name = "looplane-lmdb"
    storage = "lmdb"
    backend = "lmdb"
    cross_process = True
    keeps_backlog = True


class LooplaneLMDBRelaxed(LooplaneLMDB):
    """LMDB with ``storage.sync = false``: commits are not flushed to disk one by one."""

    name = "looplane-lmdb-relaxed"
    storage = "lmdb-relaxed"
    sync = False

    @classmethod
    def unavailable(cls) -> str | None:
        """Skipped until `LMDBStorage` takes ``sync``."""
        if lmdb_has_sync():
            return None
        return "this Looplane's LMDBStorage has no sync option (relaxed sync not offered)"


class LooplaneRedis(_Looplane):
    """`RedisStorage` + `RedisResultBackend` on the system's own Redis database."""

    name = "looplane-redis"
    storage = "redis"
    backend = "redis"
    cross_process = True
    keeps_backlog = True


SYSTEMS: list[type[System]] = [LooplaneMemory, LooplaneLMDB, LooplaneLMDBRelaxed, LooplaneRedis]
