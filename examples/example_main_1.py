"""The Quick Start, grown a little: tasks on memory storage, run by an orchestrator.

Run: python examples/example_main_1.py

It registers an async task, a plain (threaded) one and one with a timeout, sends calls of
them one by one and in a batch, runs them with an Orchestrator of 5 concurrent slots, waits
for each final result (no sleeping) and prints them in the order they were sent.
"""

import asyncio
import hashlib
import time

from looplane import (
    InMemoryResultBackend,
    InMemoryStorage,
    Orchestrator,
    StorageConsumer,
    StorageProducer,
    register_task,
)


@register_task
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@register_task
def digest(text: str) -> str:
    # A plain function runs in the orchestrator's thread pool, off the event loop.
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@register_task(timeout=5)
async def slow_square(x: int) -> int:
    await asyncio.sleep(0.2)
    return x * x


async def main() -> None:
    storage = InMemoryStorage()
    result_backend = InMemoryResultBackend()
    producer = StorageProducer(storage=storage)
    sent = [
        await producer.send(greet, "Alice", retries=3),
        await producer.send(greet, "Bob", retries=3),
        await producer.send(digest, "looplane"),
    ]
    sent += await producer.send_batch([(slow_square, (n,), {}) for n in range(1, 6)])

    consumer = StorageConsumer(storage=storage)
    orchestrator = Orchestrator(
        consumer=consumer, result_backend=result_backend, max_concurrent_tasks=5
    )
    started = time.monotonic()
    await orchestrator.start()
    results = [await result_backend.wait(task.id, timeout=10) for task in sent]
    elapsed = time.monotonic() - started
    await orchestrator.stop()

    for result in results:
        print(f"{result.func_name}: {result.value}")
    # Five 0.2 s squares in 5 slots run side by side, so they take about 0.2 s, not 1 s.
    print(f"{len(results)} tasks finished in {elapsed:.2f} s with 5 slots")
    await consumer.close()
    await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
