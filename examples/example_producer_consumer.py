"""A producer and a consumer used directly, in memory: receive, run, and ack or nack by hand.

Run: python examples/example_producer_consumer.py

The producer sends five tasks. The consumer leases them one at a time and runs each task
function itself (no orchestrator): a success is acked and leaves storage; a failure is
nacked, back to the queue for another attempt while attempts remain, else to the dead
letters with its reason. It prints every step, then what storage holds at the end.
"""

import asyncio
import re
from typing import Any

from looplane import InMemoryStorage, StorageConsumer, StorageProducer, Task, register_task
from looplane.task import registry

_rates_asked: set[str] = set()


@register_task
async def word_count(text: str) -> int:
    return len(text.split())


@register_task
def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


@register_task(retries=2)
async def exchange_rate(currency: str) -> float:
    # The first request for each currency fails, as a busy upstream service would.
    if currency not in _rates_asked:
        _rates_asked.add(currency)
        raise ConnectionError(f"rate service busy for {currency}")
    return {"EUR": 1.08, "GBP": 1.27}[currency]


@register_task(retries=1)
def parse_port(text: str) -> int:
    return int(text)


async def run(task: Task) -> Any:
    """Call the task function registered under the task's name, as a worker would."""
    entry = registry.get(task.name)
    if entry.is_async:
        return await entry.func(*task.args, **task.kwargs)
    return await asyncio.to_thread(entry.func, *task.args, **task.kwargs)


async def answer(consumer: StorageConsumer, task: Task) -> None:
    """Run one received task, then ack it or nack it."""
    call = f"{task.name}({', '.join(map(repr, task.args))})"
    attempt = f"{call} attempt {task.attempt}/{task.max_attempts}"
    try:
        value = await run(task)
    except Exception as exc:  # noqa: BLE001 - any failure of task code is answered with nack
        error = f"{type(exc).__name__}: {exc}"
        if task.attempt < task.max_attempts:
            await consumer.nack(task, delay_s=0.05, reason=error)
            print(f"nack  {attempt}: {error} -> back to the queue")
        else:
            await consumer.nack(task, requeue=False, reason=error)
            print(f"nack  {attempt}: {error} -> dead letters")
        return
    await consumer.ack(task)
    print(f"ack   {attempt}: {value!r}")


async def main() -> None:
    storage = InMemoryStorage()
    producer = StorageProducer(storage)
    await producer.send(word_count, "the quick brown fox jumps over the lazy dog")
    await producer.send(slugify, "Hello, Async World!")
    await producer.send(exchange_rate, "EUR")
    await producer.send(parse_port, "eighty")
    await producer.send(exchange_rate, "GBP")
    print("sent 5 tasks:", await storage.counts())

    async with StorageConsumer(storage) as consumer:
        # A retried task waits 0.05 s before it can be received again; a short receive
        # timeout covers that, and an empty receive means the queue is drained.
        while (task := await consumer.receive(timeout=0.5)) is not None:
            await answer(consumer, task)

    print("at the end:", await storage.counts())
    for dead in await storage.dead_tasks():
        print(f"dead letter {dead.task_id[-8:]}: {dead.reason} (after {dead.attempts} attempts)")
    await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
