"""taskiq brokers and tasks for the benchmark (``taskiq worker peers._taskiq_app:broker``).

``BENCH_TASKIQ_KIND`` picks the broker: ``memory`` (`InMemoryBroker` with its in-memory result
backend) or ``redis`` (taskiq-redis's `ListQueueBroker`, LPUSH/BRPOP, its fastest documented
broker, with `RedisAsyncResultBackend` on ``BENCH_TASKIQ_URL``), so that the worker process
builds the same broker as the producer. The growth backlog waits in another list of the same
database (the ``queue_name`` label of `backlog_noop`), which no worker reads.
"""

from __future__ import annotations

import os

from taskiq import AsyncBroker, InMemoryBroker

from peers._support import stamp as _stamp

KIND = os.environ.get("BENCH_TASKIQ_KIND", "memory")
QUEUE = "bench"
BACKLOG_QUEUE = "backlog"
RESULT_PREFIX = "result"


def _make() -> AsyncBroker:
    if KIND == "memory":
        # Keep every result (the default keeps the last 100), so that all can be counted.
        return InMemoryBroker(max_stored_results=-1)
    from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

    url = os.environ["BENCH_TASKIQ_URL"]
    results: RedisAsyncResultBackend[int] = RedisAsyncResultBackend(url, prefix_str=RESULT_PREFIX)
    return ListQueueBroker(url, queue_name=QUEUE).with_result_backend(results)


broker = _make()


@broker.task(task_name="bench.noop")
async def noop() -> int:
    """Do nothing; return a value so that a result is stored."""
    return 1


@broker.task(task_name="bench.stamp")
async def stamp(sent_at: float, path: str) -> int:
    """Append this task's pickup latency to `path` (the pickup workload)."""
    return _stamp(sent_at, path)


# A task of its own for the backlog: `AsyncKicker.with_labels` would change the labels of
# `noop` itself (taskiq 0.12 updates the task's label dict in place).
@broker.task(task_name="bench.backlog", queue_name=BACKLOG_QUEUE)
async def backlog_noop() -> int:
    """The backlog's task; never run."""
    return 1
