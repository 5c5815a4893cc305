"""Retries on durable LMDB storage: a delayed retry waits in storage, not in the worker.

Run: python examples/example_retry_lmdb.py [DB_PATH]

A first orchestrator ("worker A") runs ``sync_inventory``, whose attempts 1 and 2 fail; the
retry waits 1 s. While it waits, the example prints ``storage.counts()`` (the task is
*delayed*), stops worker A and closes everything, then reopens the same path: the delayed
retry is still there. A second orchestrator ("worker B") picks it up and finishes it, and
also runs ``stuck_export``, which exceeds its timeout on both of its attempts and ends in
the dead letters. The queue and results live in DB_PATH (a fresh temporary directory by
default).
"""

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from looplane import (
    Backoff,
    BackoffKind,
    LMDBResultBackend,
    LMDBStorage,
    Orchestrator,
    StorageConsumer,
    StorageProducer,
    Task,
    current_task,
    register_task,
)

RETRY_DELAY_S = 1.0


@register_task(
    retries=3, backoff=Backoff(kind=BackoffKind.FIXED, base_s=RETRY_DELAY_S, jitter=False)
)
async def sync_inventory(sku: str) -> str:
    attempt = current_task().attempt
    if attempt < 3:
        raise ConnectionError(f"warehouse API unreachable on attempt {attempt}")
    return f"{sku}: 42 in stock"


@register_task(retries=1, timeout=0.3, backoff="none")
async def stuck_export() -> str:
    await asyncio.sleep(10)
    return "never reached: the timeout cancels the attempt first"


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll `check` every 20 ms until it passes (another process could be the one to act)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout_s} s")
        await asyncio.sleep(0.02)


async def worker_a(db_path: str) -> Task:
    """Send the flaky task, let its first attempt fail, and stop while the retry waits."""
    async with LMDBStorage(db_path) as storage, LMDBResultBackend(db_path) as results:
        task = await StorageProducer(storage).send(sync_inventory, "SKU-1234")
        consumer = StorageConsumer(storage)
        orchestrator = Orchestrator(consumer, results, max_concurrent_tasks=2)
        await orchestrator.start()

        async def retry_waits() -> bool:
            return (await storage.counts()).delayed == 1

        await until(retry_waits)
        first = await results.get(task.id)
        assert first is not None
        print(f"worker A: attempt {first.attempt} failed: {first.error}")
        print(f"worker A: retry due in {RETRY_DELAY_S:g} s; storage: {await storage.counts()}")
        await orchestrator.stop()
        await consumer.close()
    print("worker A stopped and closed the storage")
    return task


async def worker_b(db_path: str, flaky: Task) -> None:
    """Reopen the path, show the waiting retry, and run everything to its final result."""
    async with LMDBStorage(db_path) as storage, LMDBResultBackend(db_path) as results:
        print(f"reopened {db_path}; storage: {await storage.counts()}")
        stuck = await StorageProducer(storage).send(stuck_export)
        consumer = StorageConsumer(storage)
        orchestrator = Orchestrator(consumer, results, max_concurrent_tasks=2)
        await orchestrator.start()
        for task in (flaky, stuck):
            await results.wait(task.id, timeout=15)
        await orchestrator.stop()
        await consumer.close()

        for task in (flaky, stuck):
            for result in await results.attempts(task.id):
                outcome = f"ok {result.value!r}" if result.success else result.error
                attempt = f"{result.attempt}/{result.max_retries + 1}"
                print(f"{result.func_name:<14} attempt {attempt}  {outcome}")
        print(f"worker B done; storage: {await storage.counts()}")
        for dead in await storage.dead_tasks():
            print(f"dead letter: {dead.reason}")


async def main(db_path: str) -> None:
    flaky = await worker_a(db_path)
    await worker_b(db_path, flaky)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="looplane-")))
