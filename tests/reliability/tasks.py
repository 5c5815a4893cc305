"""Task functions of the crash and concurrency suites, registered under explicit names.

Every execution appends lines to an execution log: one file per process, named by its pid,
in the folder given by ``LOOPLANE_RELIABILITY_LOG_DIR``. Each line is one ``write`` to a
descriptor opened with ``O_APPEND``, so a SIGKILL loses no line already written (the kernel
holds it; no user-space buffer is involved). A line reads ``<phase> <task id> <attempt> <pid>``
with phase ``start`` or ``end``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

from looplane import current_task, register_task

LOG_DIR_ENV = "LOOPLANE_RELIABILITY_LOG_DIR"
SQLITE_ENV = "LOOPLANE_RELIABILITY_SQLITE"
TIMEOUT_S = 3.0
"""Timeout of every task here: the per-task lease is timeout + 5 s, so recovery is quick."""

_log_fd: int | None = None


def _log(phase: str) -> None:
    """Append ``<phase> <task id> <attempt> <pid>`` to this process's execution log."""
    global _log_fd
    if _log_fd is None:
        path = Path(os.environ[LOG_DIR_ENV]) / f"{os.getpid()}.log"
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    task = current_task()
    os.write(_log_fd, f"{phase} {task.task_id} {task.attempt} {os.getpid()}\n".encode())


@register_task(name="rel.quick", timeout=TIMEOUT_S)
async def quick(n: int) -> int:
    """Return at once."""
    _log("start")
    _log("end")
    return n


@register_task(name="rel.nap", timeout=TIMEOUT_S)
async def nap(n: int, seconds: float) -> int:
    """Sleep without blocking the loop."""
    _log("start")
    await asyncio.sleep(seconds)
    _log("end")
    return n


@register_task(name="rel.plain", timeout=TIMEOUT_S)
def plain(n: int, seconds: float) -> int:
    """A plain function: runs in the worker's thread pool."""
    _log("start")
    time.sleep(seconds)
    _log("end")
    return n


@register_task(name="rel.flaky", timeout=TIMEOUT_S, retries=2, backoff="none")
async def flaky(n: int) -> int:
    """Fail the first two attempts, succeed on the third."""
    _log("start")
    attempt = current_task().attempt
    _log("end")
    if attempt < 3:
        raise ConnectionError(f"flaky attempt {attempt}")
    return n


@register_task(name="rel.doomed", timeout=TIMEOUT_S, retries=1, backoff="none")
async def doomed(n: int) -> int:
    """Always fail: the final result is a failure after its retries."""
    _log("start")
    _log("end")
    raise ValueError(f"doomed {n}")


@register_task(name="rel.insert", timeout=60.0)
def insert(key: int) -> int:
    """Insert `key` into the SQLite table ``rows``; record a duplicate in ``dupes``.

    A duplicate is recorded and the task succeeds, so no retry hides it from the test.
    """
    _log("start")
    db = sqlite3.connect(os.environ[SQLITE_ENV], timeout=60.0, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 60000")
        try:
            db.execute("INSERT INTO rows (key, pid) VALUES (?, ?)", (key, os.getpid()))
        except sqlite3.IntegrityError:
            db.execute("INSERT INTO dupes (key, pid) VALUES (?, ?)", (key, os.getpid()))
    finally:
        db.close()
    _log("end")
    return key


def create_table(path: Path) -> None:
    """Create the SQLite database of `insert`, in WAL mode."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE rows (key INTEGER PRIMARY KEY, pid INTEGER)")
        db.execute("CREATE TABLE dupes (key INTEGER, pid INTEGER)")
    finally:
        db.close()
