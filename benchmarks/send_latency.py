"""Latency of `send` on LMDB from one process while a busy worker runs in another (PF-26).

Run: python benchmarks/send_latency.py [--sends 1000] [--concurrency 50]

A worker process runs tasks that each await 1 s, 50 at a time; meanwhile this process sends
one task at a time and records how long each durable `send` takes. LMDB allows one writer at
a time, so a worker holding write transactions open across awaits would show here as a long
tail; Looplane's transactions never span an await.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import statistics
import tempfile
import time

from looplane import (
    LMDBResultBackend,
    LMDBStorage,
    Orchestrator,
    StorageConsumer,
    StorageProducer,
    register_task,
)


@register_task(name="bench.nap")
async def nap() -> None:
    await asyncio.sleep(1)


def run_worker(path: str, concurrency: int, seconds: float) -> None:
    async def main() -> None:
        storage, results = LMDBStorage(path), LMDBResultBackend(path)
        orchestrator = Orchestrator(StorageConsumer(storage), results, concurrency)
        await orchestrator.start()
        await asyncio.sleep(seconds)
        await orchestrator.stop(wait=False)
        await storage.close()
        await results.close()

    asyncio.run(main())


async def measure(path: str, sends: int) -> list[float]:
    storage = LMDBStorage(path)
    producer = StorageProducer(storage)
    latencies = []
    for _ in range(sends):
        started = time.perf_counter()
        await producer.send(nap)
        latencies.append((time.perf_counter() - started) * 1000)
    await storage.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    path = tempfile.mkdtemp(prefix="looplane-latency-")
    try:
        asyncio.run(StorageProducer(LMDBStorage(path)).send_batch([(nap, (), {})] * 200))
        worker = multiprocessing.get_context("spawn").Process(
            target=run_worker, args=(path, args.concurrency, 60.0)
        )
        worker.start()
        time.sleep(2)
        latencies = asyncio.run(measure(path, args.sends))
        worker.terminate()
        worker.join()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"send latency over {len(latencies)} sends while a worker runs "
        f"{args.concurrency} tasks: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"max {latencies[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
