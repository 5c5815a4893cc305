"""Retries, backoff, timeouts, and Retry/Cancel raised by task code, on memory storage.

Run: python examples/example_retry_1.py

Five tasks, each showing one rule:

- ``flaky_fetch`` fails on attempts 1 and 2 and succeeds on 3 (fixed 0.2 s backoff);
- ``backoff_demo`` always fails; its exponential backoff waits 0.1, 0.2, 0.4 s between
  attempts, and after its 3 retries it fails for good;
- ``slow_call`` runs past its 0.3 s timeout on every attempt and is cancelled each time;
- ``rate_limited`` raises ``Retry(delay_s=0.25)`` once to choose its own delay;
- ``bad_input`` raises ``Cancel``: it fails at once although retries remain.

It prints every attempt of every task, with the wait before it, then the final outcomes.
"""

import asyncio

from looplane import (
    Backoff,
    BackoffKind,
    Cancel,
    InMemoryResultBackend,
    InMemoryStorage,
    Orchestrator,
    Retry,
    StorageConsumer,
    StorageProducer,
    TaskResult,
    current_task,
    register_task,
)

FIXED = Backoff(kind=BackoffKind.FIXED, base_s=0.2, jitter=False)
EXPONENTIAL = Backoff(kind=BackoffKind.EXPONENTIAL, base_s=0.1, max_s=1.0, jitter=False)


@register_task(retries=3, backoff=FIXED)
async def flaky_fetch(url: str) -> str:
    attempt = current_task().attempt
    if attempt < 3:
        raise ConnectionError(f"{url} refused the connection on attempt {attempt}")
    return f"200 OK from {url}"


@register_task(retries=3, backoff=EXPONENTIAL)
async def backoff_demo() -> None:
    raise RuntimeError(f"still down on attempt {current_task().attempt}")


@register_task(retries=1, timeout=0.3, backoff="none")
async def slow_call() -> str:
    await asyncio.sleep(10)
    return "never reached: the timeout cancels the attempt first"


@register_task(retries=3)
async def rate_limited(user: str) -> str:
    if not current_task().is_retry:
        raise Retry("429 Too Many Requests", delay_s=0.25)
    return f"profile of {user}"


@register_task(retries=3)
async def bad_input(order_id: int) -> str:
    if order_id < 0:
        raise Cancel(f"order id {order_id} is negative; retrying cannot help")
    return f"order {order_id}"


def describe(result: TaskResult, previous: TaskResult | None) -> str:
    """One attempt: its number, the wait since the previous attempt ended, its outcome."""
    waited = ""
    if previous is not None and previous.finished_at and result.started_at:
        waited = f"after {(result.started_at - previous.finished_at).total_seconds():.2f} s"
    outcome = f"ok {result.value!r}" if result.success else result.error
    then = "retry" if result.will_retry else "final"
    attempt = f"{result.attempt}/{result.max_retries + 1}"
    return f"  attempt {attempt} {waited:<12} {then}  {outcome}"


async def main() -> None:
    storage = InMemoryStorage()
    results = InMemoryResultBackend()
    producer = StorageProducer(storage)
    sent = [
        await producer.send(flaky_fetch, "https://example.com/data"),
        await producer.send(backoff_demo),
        await producer.send(slow_call),
        await producer.send(rate_limited, "ada"),
        await producer.send(bad_input, -7),
    ]

    orchestrator = Orchestrator(StorageConsumer(storage), results, max_concurrent_tasks=5)
    await orchestrator.start()
    finals = [await results.wait(task.id, timeout=15) for task in sent]
    await orchestrator.stop()

    for task in sent:
        print(f"{task.name} (retries={task.max_retries}, timeout={task.timeout}):")
        attempts = await results.attempts(task.id)
        for previous, result in zip([None, *attempts], attempts, strict=False):
            print(describe(result, previous))
    succeeded = sum(final.success for final in finals)
    dead = (await storage.counts()).dead
    print(f"{succeeded} of {len(finals)} tasks succeeded; {dead} went to the dead letters")
    await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
