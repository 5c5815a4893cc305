"""Throughput of Looplane on memory and LMDB: enqueue rates and end-to-end no-op tasks/s.

Run: python benchmarks/throughput.py [--tasks 20000] [--concurrency 50]

Each figure is one run on a fresh store; LMDB runs in a temporary directory with durable
commits (fsync on every transaction). End to end means: the tasks are already queued, then
one orchestrator receives, runs, records a result for, and acks every one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any

from looplane import (
    InMemoryResultBackend,
    InMemoryStorage,
    LMDBResultBackend,
    LMDBStorage,
    Orchestrator,
    StorageConsumer,
    StorageProducer,
    register_task,
)
from looplane.result import ResultBackend
from looplane.storage import StorageBackend

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


@register_task(name="bench.noop")
async def noop() -> None:
    return None


Backends = tuple[StorageBackend, ResultBackend]


def make_backends(kind: str, path: str) -> Backends:
    if kind == "memory":
        return InMemoryStorage(), InMemoryResultBackend()
    return LMDBStorage(path), LMDBResultBackend(path)


async def enqueue_one_by_one(producer: StorageProducer, count: int) -> None:
    for _ in range(count):
        await producer.send(noop)


async def enqueue_concurrently(producer: StorageProducer, count: int) -> None:
    await asyncio.gather(*(producer.send(noop) for _ in range(count)))


async def enqueue_batches(producer: StorageProducer, count: int, size: int = 1000) -> None:
    for start in range(0, count, size):
        await producer.send_batch([(noop, (), {})] * min(size, count - start))


async def drain(
    storage: StorageBackend, results: ResultBackend, count: int, concurrency: int
) -> None:
    orchestrator = Orchestrator(StorageConsumer(storage), results, concurrency)
    await orchestrator.start()
    while orchestrator.finished < count:  # noqa: ASYNC110 - polls a counter; no event exists
        await asyncio.sleep(0.01)
    await orchestrator.stop()


async def measure(
    kind: str,
    label: str,
    count: int,
    run: Callable[[StorageProducer, Backends], Awaitable[Any]],
    prepare: int = 0,
) -> tuple[str, str, int, float]:
    path = tempfile.mkdtemp(prefix="looplane-bench-")
    storage, results = make_backends(kind, path)
    producer = StorageProducer(storage)
    try:
        if prepare:
            await enqueue_batches(producer, prepare)
        started = time.perf_counter()
        await run(producer, (storage, results))
        elapsed = time.perf_counter() - started
    finally:
        await storage.close()
        await results.close()
        shutil.rmtree(path, ignore_errors=True)
    return kind, label, count, count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--single", type=int, default=3_000, help="tasks for the one-send-at-a-time figure"
    )
    args = parser.parse_args()
    n, c = args.tasks, args.concurrency

    rows = []
    for kind in ("memory", "lmdb"):
        rows.append(
            await measure(
                kind,
                "send, one at a time",
                args.single,
                lambda p, _: enqueue_one_by_one(p, args.single),
            )
        )
        rows.append(
            await measure(
                kind, f"send, {n:,} concurrent", n, lambda p, _: enqueue_concurrently(p, n)
            )
        )
        rows.append(
            await measure(kind, "send_batch of 1,000", n, lambda p, _: enqueue_batches(p, n))
        )
        rows.append(
            await measure(
                kind,
                f"end to end, concurrency {c}",
                n,
                lambda _, b: drain(b[0], b[1], n, c),
                prepare=n,
            )
        )

    print(f"Python {platform.python_version()} on {platform.platform()}, {platform.machine()}")
    print(f"{'storage':<8} {'measure':<28} {'tasks':>7} {'tasks/s':>10}")
    for kind, label, count, rate in rows:
        print(f"{kind:<8} {label:<28} {count:>7} {rate:>10,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
