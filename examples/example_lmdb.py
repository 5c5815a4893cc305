"""Looplane end to end on durable LMDB storage: send, run, retry, and read the results.

Run: python examples/example_lmdb.py [DB_PATH]

It counts the words of the files next to this script with an async task and a plain
(threaded) one, runs one task that fails twice before it succeeds, and prints every result.
The queue and the results live in DB_PATH (a fresh temporary directory by default).
"""

import asyncio
import hashlib
import sys
import tempfile
from pathlib import Path

from looplane import current_task
from looplane.broker import StorageConsumer, StorageProducer
from looplane.orchestrator import Orchestrator
from looplane.result import LMDBResultBackend
from looplane.storage import LMDBStorage
from looplane.task import register_task


@register_task
async def count_words(path: str) -> int:
    text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
    return len(text.split())


@register_task
def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@register_task(retries=3, backoff="fixed")
async def flaky_total(counts: list[int]) -> int:
    if current_task().attempt < 3:
        raise ConnectionError(f"upstream busy on attempt {current_task().attempt}")
    return sum(counts)


async def main(db_path: str) -> None:
    storage = LMDBStorage(db_path)
    results = LMDBResultBackend(db_path)
    producer = StorageProducer(storage)
    orchestrator = Orchestrator(StorageConsumer(storage), results, max_concurrent_tasks=4)
    await orchestrator.start()

    files = sorted(str(p) for p in Path(__file__).parent.glob("*.py"))
    counted = [await producer.send(count_words, f) for f in files]
    hashed = await producer.send_batch([(sha256_of, (f,), {}) for f in files])
    counts = [(await results.wait(task.id, timeout=30)).value for task in counted]
    total = await producer.send(flaky_total, counts)
    await results.wait(total.id, timeout=30)
    for task in hashed:
        await results.wait(task.id, timeout=30)

    await orchestrator.stop()
    for result in reversed(await results.results()):
        outcome = repr(result.value) if result.success else result.error
        print(
            f"{result.func_name:<12} attempt {result.attempt}/{result.max_retries + 1}  "
            f"{result.duration * 1000:6.1f} ms  {outcome}"
        )
    await storage.close()
    await results.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="looplane-")))
