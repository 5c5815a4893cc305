"""Task functions the end-to-end worker processes run, registered under explicit names.

Tasks that must show who ran them append one line to the file named by the environment
variable ``LOOPLANE_TEST_LOG``. Each line is a single ``write`` to a descriptor opened with
``O_APPEND``, so lines from concurrent processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time

from looplane import LMDBStorage, StorageProducer, register_task

LOG_ENV = "LOOPLANE_TEST_LOG"

QUICK_TIMEOUT_S = 2.0
LONG_TIMEOUT_S = 600.0
BLOCKING_TIMEOUT_S = 10.0


def append_line(*words: str) -> None:
    """Append ``words`` and this process's pid as one line of the test log."""
    line = " ".join([*words, str(os.getpid())]) + "\n"
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@register_task(name="e2e.record")
async def record(tag: str) -> int:
    """Log ``<tag> <pid>`` and return the pid."""
    append_line(tag)
    return os.getpid()


@register_task(name="e2e.sleep_then_record")
async def sleep_then_record(tag: str, seconds: float) -> int:
    """Log ``started <tag> <pid>``, sleep without blocking the loop, then log ``done``."""
    append_line("started", tag)
    await asyncio.sleep(seconds)
    append_line("done", tag)
    return os.getpid()


@register_task(name="e2e.quick", timeout=QUICK_TIMEOUT_S)
async def quick(tag: str, seconds: float = 1.0) -> int:
    """Like `sleep_then_record`, with a 2 s timeout (so a lease of 2 s plus grace)."""
    return await sleep_then_record(tag, seconds)


@register_task(name="e2e.long", timeout=LONG_TIMEOUT_S)
async def long(tag: str, seconds: float = 300.0) -> int:
    """Like `sleep_then_record`, with a 600 s timeout (so a lease of 600 s plus grace)."""
    return await sleep_then_record(tag, seconds)


@register_task(name="e2e.block_loop", timeout=BLOCKING_TIMEOUT_S)
async def block_loop(tag: str, seconds: float) -> int:
    """An async task that wrongly calls `time.sleep`, blocking its worker's event loop."""
    append_line("started", tag)
    time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is what this task is for
    append_line("done", tag)
    return os.getpid()


@register_task(name="e2e.send_from_task")
async def send_from_task(path: str, tag: str) -> str:
    """Send ``e2e.record(tag)`` from inside a running task; return the new task's id."""
    async with LMDBStorage(path) as storage:
        task = await StorageProducer(storage).send(record, tag)
    return task.id


@register_task(name="e2e.send_from_thread")
def send_from_thread(path: str, tag: str) -> str:
    """Send ``e2e.record(tag)`` from a sync task (run in a thread) with a fresh producer."""

    async def send() -> str:
        async with LMDBStorage(path) as storage:
            task = await StorageProducer(storage).send(record, tag)
        return task.id

    return asyncio.run(send())
