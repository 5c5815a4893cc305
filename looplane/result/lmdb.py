"""Results in the process's shared LMDB environment, readable by every process on the host.

Layout (all integers fixed-width big-endian, so byte order is numeric order):

* ``results``: ``task_id (16) | attempt u32`` → ``seq u64 | expiry_ms u64 | result bytes``.
  One cursor range per task gives its attempts in order. ``expiry_ms`` 0 means never.
* ``result_order``: ``seq u64`` → ``task_id | attempt``. ``seq`` is a counter in ``meta``
  (``b"result_seq"``) bumped inside the write transaction; writes are serialized across
  processes, so it is store order on the whole host, and a reverse cursor lists newest first.
* ``result_exp``: ``expiry_ms u64 | seq u64`` → ``task_id | attempt``. Expired results sit at
  its front, so sweeping is a forward cursor scan that stops at the first live one: its cost
  is proportional to what expired, not to what is stored. Each store sweeps a bounded batch,
  so a busy backend never grows without bound, and a read that meets expired results purges
  them, so an idle one is cleaned once it is looked at
  (https://github.com/celery/celery/issues/75).

Waiting for a result listens for the ``results`` doorbell: in-process after each commit, and
through inotify on the doorbell file for results stored by other processes. The watch is set
up before the first look, so a result stored in between is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from typing import TYPE_CHECKING

from looplane._clock import SYSTEM_CLOCK, Clock
from looplane._lmdb_env import DEFAULT_MAP_SIZE, DoorbellWatch, LMDBEnv, uuid_key
from looplane.errors import ConfigError, StorageUnavailable
from looplane.result.base import (
    DEFAULT_RESULT_TTL_S,
    ResultBackend,
    TaskResult,
    check_limit,
    check_timeout,
    check_ttl,
    timeout_error,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    import lmdb

    from looplane._lmdb_env import Txn

__all__ = ["LMDBResultBackend"]

logger = logging.getLogger(__name__)

_BELL = "results"
_SEQ_KEY = b"result_seq"
_U64 = struct.Struct(">Q")
_ATTEMPT = struct.Struct(">I")
_HEADER = struct.Struct(">QQ")
"""``seq | expiry_ms`` before a stored result; the same shape keys ``result_exp``."""
_MAX_U64 = (1 << 64) - 1

_SWEEP_PER_STORE = 64
_SWEEP_PER_READ = 1024
_RECHECK_S = 1.0
"""Longest a wait goes without looking, in case a doorbell ring was missed or cannot arrive
(no inotify on this platform, or the kernel's inotify limits were reached)."""


class LMDBResultBackend(ResultBackend):
    """Results kept in LMDB under `path`, shared with every process that opens the same path.

    The environment is shared, reference-counted, with any `LMDBStorage` or other backend in
    this process that names the same directory, however the path is spelled.

    Args:
        path: The environment directory; created if missing.
        ttl_s: Seconds a result stays readable after it is stored; None keeps it forever.
        map_size: Initial size of the memory map in bytes; it doubles when full.
        sync: False relaxes durability as `LMDBStorage`'s ``sync`` does: a process crash
            loses nothing, an OS crash may undo the last commit. It must match any storage
            sharing the directory in this process.
        clock: The wall clock that stamps and expires results.

    Raises:
        ConfigError: `ttl_s` is not a positive number of seconds or None, or the directory
            is open in this process with the other `sync` setting.
        StorageError: The environment cannot be opened.

    Note:
        Task ids must be UUIDs (as `new_task_id` makes them): results are keyed by the
        16 bytes of the id. Expiry uses the wall clock of the storing and reading processes.
    """

    name = "lmdb"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl_s: float | None = DEFAULT_RESULT_TTL_S,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        check_ttl(ttl_s)
        self.ttl_s = ttl_s
        self.sync = sync
        self.clock = clock
        self._env = LMDBEnv.acquire(path, map_size=map_size, sync=sync)
        self.path = self._env.path
        self._wakeups: dict[asyncio.AbstractEventLoop, _Wakeups] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailable(
                f"LMDB result backend at {self.path} is closed", backend=self.name
            )

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    @property
    def write_channel(self) -> object | None:
        """The process's writer for this directory, shared with `LMDBStorage`."""
        return self._env

    async def store(self, result: TaskResult) -> None:
        """Keep `result` for the time to live, replacing an earlier store of the same attempt.

        The result is durable once this returns, and waiters in every process are woken. The
        same write purges a bounded batch of expired results. If cancelled, the write still
        happens or not as a whole.

        Raises:
            SerializationError: The result's value cannot be encoded; nothing is stored.
            ConfigError: The task id is not a UUID, or the attempt is out of range.
            StorageUnavailable: The backend is closed.
            StorageError: LMDB refused the write.
        """
        self._check_open()
        key = _task_key(result.task_id) + _attempt_key(result.attempt)
        data = result.to_bytes()
        now_ms = self._now_ms()
        expiry_ms = 0 if self.ttl_s is None else min(now_ms + _ttl_ms(self.ttl_s), _MAX_U64)
        env = self._env

        def write(txn: Txn) -> None:
            _store_txn(txn, env, key, data, expiry_ms)
            _sweep_txn(txn, env, now_ms, _SWEEP_PER_STORE)

        await self._env.write(write, ring=_BELL)

    async def results(self, *, limit: int | None = None) -> list[TaskResult]:
        """Every unexpired result, newest stored first (at most `limit`).

        Raises:
            ConfigError: `limit` is negative.
            StorageUnavailable: The backend is closed.
        """
        check_limit(limit)
        self._check_open()
        now_ms = self._now_ms()
        env = self._env
        found, saw_expired = await env.read(lambda txn: _newest_txn(txn, env, now_ms, limit))
        await self._purge_if(saw_expired, now_ms)
        return [TaskResult.from_bytes(data) for data in found]

    async def get(self, task_id: str) -> TaskResult | None:
        """The unexpired result with the highest attempt number, or None.

        Raises:
            ConfigError: The task id is not a UUID.
            StorageUnavailable: The backend is closed.
        """
        found = await self._attempts(_task_key(task_id))
        return TaskResult.from_bytes(found[-1]) if found else None

    async def attempts(self, task_id: str) -> list[TaskResult]:
        """Every unexpired result of the task, first attempt first.

        Raises:
            ConfigError: The task id is not a UUID.
            StorageUnavailable: The backend is closed.
        """
        found = await self._attempts(_task_key(task_id))
        return [TaskResult.from_bytes(data) for data in found]

    async def _attempts(self, prefix: bytes) -> list[bytes]:
        self._check_open()
        now_ms = self._now_ms()
        env = self._env
        found, saw_expired = await env.read(lambda txn: _attempts_txn(txn, env, prefix, now_ms))
        await self._purge_if(saw_expired, now_ms)
        return found

    async def _purge_if(self, saw_expired: bool, now_ms: int) -> None:
        if not saw_expired or self._closed:
            return
        env = self._env
        purged = await env.write(lambda txn: _sweep_txn(txn, env, now_ms, _SWEEP_PER_READ))
        logger.debug("purged expired results count=%d path=%s", purged, self.path)

    async def wait(self, task_id: str, *, timeout: float = 30.0) -> TaskResult:
        """Wait for the task's final result (``will_retry=False``) and return it.

        Wakes when any process on the host stores a result in this environment, and looks
        at least once a second regardless. A final result already stored returns at once;
        one stored at the deadline is still returned. Cancelling the wait is safe and leaves
        nothing behind.

        Raises:
            TaskTimeout: No final result arrived within `timeout` seconds.
            ConfigError: The task id is not a UUID, or `timeout` is negative.
            StorageUnavailable: The backend is closed, before or during the wait.
        """
        prefix = _task_key(task_id)
        check_timeout(timeout)
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._wakeup(loop) as rung:
            while True:
                rung.clear()
                self._check_open()
                found = await self._attempts(prefix)
                if found and (result := TaskResult.from_bytes(found[-1])).is_final:
                    return result

                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise timeout_error(task_id, timeout)
                # On timeout, loop once more: a result stored at the deadline is returned.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rung.wait(), min(remaining, _RECHECK_S))

    @contextlib.contextmanager
    def _wakeup(self, loop: asyncio.AbstractEventLoop) -> Iterator[asyncio.Event]:
        # All waits on one loop share a single watch: each inotify watch is a kernel
        # instance, and a user may have only 128 of them by default.
        wakeups = self._wakeups.get(loop)
        if wakeups is None:
            wakeups = self._wakeups[loop] = _Wakeups(self._env, loop)
        event = asyncio.Event()
        wakeups.events.add(event)
        try:
            yield event
        finally:
            wakeups.events.discard(event)
            if not wakeups.events:
                wakeups.close()
                del self._wakeups[loop]

    async def close(self) -> None:
        """Give back this backend's share of the environment; later calls are refused.

        Waiters wake and fail with `StorageUnavailable`. Closing twice does nothing, and
        other backends on the same environment keep working.
        """
        if self._closed:
            return
        self._closed = True
        for loop, wakeups in list(self._wakeups.items()):
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                loop.call_soon_threadsafe(wakeups.ring)
        # The last release joins the writer thread, which may be mid-commit.
        await asyncio.to_thread(self._env.release)


class _Wakeups:
    """Sets every registered event after a result is stored, by this or another process."""

    def __init__(self, env: LMDBEnv, loop: asyncio.AbstractEventLoop) -> None:
        self.events: set[asyncio.Event] = set()
        self._unlisten = env.listen(_BELL, loop, self.ring)
        self._watch = DoorbellWatch(env.bell_path(_BELL), loop, self.ring)

    def ring(self) -> None:
        for event in self.events:
            event.set()

    def close(self) -> None:
        self._unlisten()
        self._watch.close()


# Transactions. They run on the writer thread or a reader thread, never on the loop. ---------


def _bytes_txn(txn: Txn) -> lmdb.Transaction[bytes]:
    # LMDBEnv begins every transaction with buffers=False, so keys and values are bytes.
    return txn


def _store_txn(txn: Txn, env: LMDBEnv, key: bytes, data: bytes, expiry_ms: int) -> None:
    meta = env.dbs["meta"]
    raw = _bytes_txn(txn).get(_SEQ_KEY, db=meta)
    seq = _U64.unpack(raw)[0] + 1 if raw is not None else 1
    txn.put(_SEQ_KEY, _U64.pack(seq), db=meta)

    _drop_txn(txn, env, key)
    txn.put(key, _HEADER.pack(seq, expiry_ms) + data, db=env.dbs["results"])
    txn.put(_U64.pack(seq), key, db=env.dbs["result_order"])
    if expiry_ms:
        txn.put(_HEADER.pack(expiry_ms, seq), key, db=env.dbs["result_exp"])


def _drop_txn(txn: Txn, env: LMDBEnv, key: bytes) -> None:
    """Delete the result under `key` with its order and expiry entries, if it exists."""
    value = _bytes_txn(txn).get(key, db=env.dbs["results"])
    if value is None:
        return
    seq, expiry_ms = _HEADER.unpack_from(value)
    txn.delete(key, db=env.dbs["results"])
    txn.delete(_U64.pack(seq), db=env.dbs["result_order"])
    if expiry_ms:
        txn.delete(_HEADER.pack(expiry_ms, seq), db=env.dbs["result_exp"])


def _sweep_txn(txn: Txn, env: LMDBEnv, now_ms: int, limit: int) -> int:
    """Delete up to `limit` results that expired by `now_ms`; return how many."""
    btxn = _bytes_txn(txn)
    due: list[tuple[bytes, bytes]] = []
    for exp_key, key in btxn.cursor(db=env.dbs["result_exp"]):
        if len(due) >= limit or _HEADER.unpack(exp_key)[0] > now_ms:
            break
        due.append((exp_key, key))

    for exp_key, key in due:
        # Delete the expiry entry itself even if its result is gone or was replaced, so a
        # stray entry can never stop the sweep at the front of the index.
        txn.delete(exp_key, db=env.dbs["result_exp"])
        value = btxn.get(key, db=env.dbs["results"])
        expiry_ms, seq = _HEADER.unpack(exp_key)
        if value is not None and _HEADER.unpack_from(value) == (seq, expiry_ms):
            _drop_txn(txn, env, key)
    return len(due)


def _attempts_txn(txn: Txn, env: LMDBEnv, prefix: bytes, now_ms: int) -> tuple[list[bytes], bool]:
    """The unexpired results under `prefix` in attempt order, and whether any had expired."""
    found: list[bytes] = []
    saw_expired = False
    cursor = _bytes_txn(txn).cursor(db=env.dbs["results"])
    if not cursor.set_range(prefix):
        return found, saw_expired
    for key, value in cursor:
        if not key.startswith(prefix):
            break
        if _expired(value, now_ms):
            saw_expired = True
        else:
            found.append(value[_HEADER.size :])
    return found, saw_expired


def _newest_txn(txn: Txn, env: LMDBEnv, now_ms: int, limit: int | None) -> tuple[list[bytes], bool]:
    """Unexpired results newest first (at most `limit`), and whether any had expired."""
    btxn = _bytes_txn(txn)
    found: list[bytes] = []
    saw_expired = False
    if limit == 0:
        return found, saw_expired
    for _, key in btxn.cursor(db=env.dbs["result_order"]).iterprev():
        value = btxn.get(key, db=env.dbs["results"])
        if value is None:  # pragma: no cover - the order entry is deleted with its result
            continue
        if _expired(value, now_ms):
            saw_expired = True
            continue
        found.append(value[_HEADER.size :])
        if len(found) == limit:
            break
    return found, saw_expired


def _expired(value: bytes, now_ms: int) -> bool:
    expiry_ms: int = _HEADER.unpack_from(value)[1]
    return 0 < expiry_ms <= now_ms


# Checks. -----------------------------------------------------------------------------------


def _task_key(task_id: str) -> bytes:
    try:
        return uuid_key(task_id)
    except ValueError:
        raise ConfigError(
            f"task id {task_id!r} is not a UUID; the LMDB result backend keys results by "
            "UUID task ids (as looplane.task.new_task_id makes them)"
        ) from None


def _attempt_key(attempt: int) -> bytes:
    if not 0 <= attempt <= 0xFFFF_FFFF:
        raise ConfigError(f"attempt must be between 0 and 2**32 - 1; got {attempt!r}")
    return _ATTEMPT.pack(attempt)


def _ttl_ms(ttl_s: float) -> int:
    return max(1, math.ceil(ttl_s * 1000))
