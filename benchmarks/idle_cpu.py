"""CPU used by an idle worker on LMDB, and how fast it wakes for work from another process.

Run: python benchmarks/idle_cpu.py [--seconds 10]

An orchestrator waits on an empty LMDB queue for the given time; the script reports the
process CPU time used meanwhile as a share of one core. Then a separate process sends one
task at a time and the script reports the time from `send` returning to the task starting.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
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


@register_task(name="bench.stamp")
async def stamp(sent_at: float) -> float:
    return time.time() - sent_at


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def send_from_other_process(path: str, count: int) -> None:
    async def main() -> None:
        storage = LMDBStorage(path)
        producer = StorageProducer(storage)
        for _ in range(count):
            await asyncio.sleep(0.2)
            await producer.send(stamp, time.time())
        await storage.close()

    asyncio.run(main())


async def run(path: str, seconds: float, wakes: int) -> None:
    storage, results = LMDBStorage(path), LMDBResultBackend(path)
    orchestrator = Orchestrator(StorageConsumer(storage), results, 10)
    await orchestrator.start()
    await asyncio.sleep(1)
    before, started = cpu_s(), time.perf_counter()
    await asyncio.sleep(seconds)
    share = (cpu_s() - before) / (time.perf_counter() - started) * 100
    print(f"idle worker CPU: {share:.2f}% of one core over {seconds:.0f} s")

    sender = multiprocessing.get_context("spawn").Process(
        target=send_from_other_process, args=(path, wakes)
    )
    sender.start()
    while orchestrator.finished < wakes:  # noqa: ASYNC110 - polls a counter; no event exists
        await asyncio.sleep(0.05)
    sender.join()
    delays = sorted(r.value * 1000 for r in await results.results())
    print(
        f"cross-process wake-up over {wakes} sends: median {statistics.median(delays):.2f} ms, "
        f"max {delays[-1]:.2f} ms"
    )
    await orchestrator.stop()
    await storage.close()
    await results.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--wakes", type=int, default=20)
    args = parser.parse_args()
    path = tempfile.mkdtemp(prefix="looplane-idle-")
    try:
        asyncio.run(run(path, args.seconds, args.wakes))
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
