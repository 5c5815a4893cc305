"""Throughput of Looplane on Redis: enqueue rates and end-to-end no-op tasks/s.

Run: python benchmarks/redis_throughput.py [--url redis://127.0.0.1:6379/13] [--tasks 20000]
     [--concurrency 50] [--workers 1 2]

Storage is `RedisStorage`, results `RedisResultBackend`, both on the server at `--url`. Each
figure is one run on fresh keys (a prefix and queue name unique to the run), deleted
afterwards. `send_batch` of 1,000 is one pipelined script call per batch. End to end means:
the tasks are already queued, then N worker processes (spawn context; each runs one
orchestrator at `--concurrency` on the same queue) receive, run, record a result for, and
ack every one of them. The clock starts when the workers are told to go (after they have
started and connected) and stops when Redis holds a result for every task and the queue has
nothing ready or leased.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import platform
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis

from looplane import (
    Orchestrator,
    StorageConsumer,
    StorageError,
    StorageProducer,
    register_task,
)
from looplane.result.redis import RedisResultBackend
from looplane.storage.redis import RedisStorage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from multiprocessing.synchronize import Event


@register_task(name="bench.noop")
async def noop() -> None:
    return None


class Names:
    """Key prefix and queue name of one measurement, unique to it."""

    def __init__(self, url: str, connections: int) -> None:
        tag = uuid.uuid4().hex[:10]
        self.url = url
        self.connections = connections
        self.prefix = f"lqbench-{tag}"
        self.queue = f"bench-{tag}"

    def storage(self) -> RedisStorage:
        return RedisStorage(self.url, queue_prefix=self.prefix, max_connections=self.connections)

    def results(self) -> RedisResultBackend:
        return RedisResultBackend(self.url, prefix=self.prefix, max_connections=self.connections)

    async def cleanup(self) -> int:
        """Delete every key of this measurement (storage ``P:...``, results ``{P}:...``)."""
        client = aioredis.Redis.from_url(self.url)
        deleted = 0
        try:
            for pattern in (f"{self.prefix}:*", f"{{{self.prefix}}}:*"):
                batch = [key async for key in client.scan_iter(match=pattern, count=1000)]
                for start in range(0, len(batch), 1000):
                    deleted += await client.delete(*batch[start : start + 1000])
        finally:
            await client.aclose()
        return deleted


async def enqueue_one_by_one(producer: StorageProducer, count: int) -> None:
    for _ in range(count):
        await producer.send(noop)


async def enqueue_concurrently(producer: StorageProducer, count: int) -> None:
    await asyncio.gather(*(producer.send(noop) for _ in range(count)))


async def enqueue_bounded(producer: StorageProducer, count: int, in_flight: int) -> None:
    """`count` sends from `in_flight` concurrent senders."""
    left = iter(range(count))

    async def sender() -> None:
        for _ in left:
            await producer.send(noop)

    await asyncio.gather(*(sender() for _ in range(in_flight)))


async def enqueue_batches(producer: StorageProducer, count: int, size: int = 1000) -> None:
    for start in range(0, count, size):
        await producer.send_batch([(noop, (), {})] * min(size, count - start))


async def measure_enqueue(
    names: Names, count: int, run: Callable[[StorageProducer, int], Awaitable[None]]
) -> float:
    storage = names.storage()
    producer = StorageProducer(storage, queue=names.queue)
    try:
        started = time.perf_counter()
        await run(producer, count)
        elapsed = time.perf_counter() - started
        counts = await storage.counts(queue=names.queue)
        if counts.ready != count:
            raise RuntimeError(f"expected {count} ready tasks, found {counts}")
    finally:
        await storage.close()
        await names.cleanup()
    return count / elapsed


def worker_main(names: Names, concurrency: int, ready: Any, go: Event, stop: Event) -> None:
    """Body of one worker process: an orchestrator on the shared queue."""
    logging.basicConfig(level=logging.WARNING, format="worker %(process)d: %(message)s")
    asyncio.run(run_worker(names, concurrency, ready, go, stop))


async def run_worker(names: Names, concurrency: int, ready: Any, go: Event, stop: Event) -> None:
    storage, results = names.storage(), names.results()
    await storage.counts(queue=names.queue)  # connect before the clock starts
    await results.get("warm-up")
    orchestrator = Orchestrator(StorageConsumer(storage, queue=names.queue), results, concurrency)
    ready.put(("ready", 0))
    await asyncio.to_thread(go.wait)
    await orchestrator.start()
    await asyncio.to_thread(stop.wait)
    await orchestrator.stop()
    await storage.close()
    await results.close()
    ready.put(("finished", orchestrator.finished))


async def wait_drained(
    names: Names, storage: RedisStorage, client: aioredis.Redis, count: int, deadline: float
) -> None:
    """Poll until Redis holds `count` results and nothing is ready or leased."""
    index = f"{{{names.prefix}}}:index"
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
        if await client.zcard(index) >= count:
            counts = await storage.counts(queue=names.queue)
            if counts.ready + counts.leased == 0:
                if counts.dead or counts.delayed:
                    raise RuntimeError(f"tasks left over: {counts}")
                return
    raise RuntimeError(f"not drained by the deadline ({count} tasks)")


async def measure_end_to_end(
    names: Names, count: int, workers: int, concurrency: int, limit_s: float
) -> tuple[float, list[int]]:
    storage = names.storage()
    producer = StorageProducer(storage, queue=names.queue)
    client = aioredis.Redis.from_url(names.url)
    context = mp.get_context("spawn")
    reports = context.Queue()
    go, stop = context.Event(), context.Event()
    processes = [
        context.Process(target=worker_main, args=(names, concurrency, reports, go, stop))
        for _ in range(workers)
    ]
    try:
        await enqueue_batches(producer, count)
        for process in processes:
            process.start()
        for _ in processes:
            await asyncio.to_thread(reports.get, True, 60)
        started = time.perf_counter()
        go.set()
        await wait_drained(names, storage, client, count, started + limit_s)
        elapsed = time.perf_counter() - started
        stop.set()
        finished = [(await asyncio.to_thread(reports.get, True, 60))[1] for _ in processes]
    finally:
        stop.set()
        go.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
        await client.aclose()
        await storage.close()
        await names.cleanup()
    return count / elapsed, finished


def server_description(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
        aof = client.config_get("appendonly").get("appendonly", "?")
        save = client.config_get("save").get("save", "?") or "off"
    finally:
        client.close()
    return (
        f"Redis {info['redis_version']} at {url} (appendonly {aof}, save {save}); "
        f"redis-py {redis.__version__}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--single", type=int, default=3_000, help="tasks for the one-send-at-a-time figure"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker process counts"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=128,
        help="connection pool size of each backend (the library default, 10, is exhausted by "
        "more than 10 concurrent calls: see the README)",
    )
    parser.add_argument(
        "--in-flight", type=int, default=100, help="concurrent senders for the bounded figure"
    )
    parser.add_argument(
        "--limit", type=float, default=300.0, help="seconds before an end-to-end run fails"
    )
    args = parser.parse_args()
    n, c, url, pool = args.tasks, args.concurrency, args.url, args.connections

    rows: list[tuple[str, int, float | str]] = []
    notes: list[str] = []
    rows.append(
        (
            "send, one at a time",
            args.single,
            await measure_enqueue(Names(url, pool), args.single, enqueue_one_by_one),
        )
    )
    try:
        rate: float | str = await measure_enqueue(Names(url, pool), n, enqueue_concurrently)
    except StorageError as exc:
        rate = "fails"
        notes.append(f"send, {n:,} concurrent: {exc}")
    rows.append((f"send, {n:,} concurrent", n, rate))
    flight = args.in_flight
    rows.append(
        (
            f"send, {flight} senders",
            n,
            await measure_enqueue(
                Names(url, pool), n, lambda p, count: enqueue_bounded(p, count, flight)
            ),
        )
    )
    rows.append(
        ("send_batch of 1,000", n, await measure_enqueue(Names(url, pool), n, enqueue_batches))
    )
    for workers in args.workers:
        rate, finished = await measure_end_to_end(Names(url, pool), n, workers, c, args.limit)
        plural = "process" if workers == 1 else "processes"
        rows.append((f"end to end, {workers} {plural} x {c}", n, rate))
        notes.append(f"{workers} {plural}: tasks finished per worker {finished}")

    print(f"Python {platform.python_version()} on {platform.platform()}, {platform.machine()}")
    print(server_description(url))
    print(f"{'storage':<8} {'measure':<32} {'tasks':>7} {'tasks/s':>10}")
    for label, count, rate in rows:
        shown = f"{rate:>10,.0f}" if isinstance(rate, float) else f"{rate:>10}"
        print(f"{'redis':<8} {label:<32} {count:>7} {shown}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    asyncio.run(main())
