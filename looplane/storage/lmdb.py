"""Durable storage in an embedded LMDB environment: no server, several processes, one machine.

Layout (named databases in one environment; integers are fixed-width big-endian, so byte
order is numeric order and every scan below starts at the first key it needs):

==========  ======================================  =====================================
database    key                                     value
==========  ======================================  =====================================
jobs        task id (16 bytes)                      small mutable header (`_Header`)
payloads    task id                                 encoded task, written once
ready       queue id u32, 255-priority u8, seq u64  task id
leases      expiry ms u64 (boot clock), task id     empty
delayed     due ms u64 (boot clock), seq u64        task id
dead        queue id u32, failed ms u64, task id    reason (UTF-8)
meta        b"seq", b"q/<name>", b"boot_id"         counters, queue ids, boot id
==========  ======================================  =====================================

Taking the next task is a range lookup on `ready`; finding expired leases and due delays reads
only from the front of `leases` and `delayed`, so no operation scans the whole queue. Leases
and retry delays run on the boot clock, which all processes share and which never jumps when
the wall clock is set. A changed boot id means the machine restarted: every lease holder died
with it, so all leases are treated as expired and all delays as due.
"""

from __future__ import annotations

import asyncio
import functools
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from looplane._clock import SYSTEM_CLOCK, Clock
from looplane._lmdb_env import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    DEFAULT_MAX_READERS,
    DoorbellWatch,
    LMDBEnv,
    Txn,
    uuid_key,
)
from looplane.errors import StorageError, StorageUnavailable
from looplane.storage.base import (
    DEFAULT_LEASE_S,
    Claim,
    DeadTask,
    NewTask,
    QueueCounts,
    StorageBackend,
    TaskInfo,
    TaskState,
    Watcher,
    check_page,
    lease_for,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

__all__ = ["LMDBStorage"]

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_READY_KEY = struct.Struct(">IBQ")
_TIMED_KEY = struct.Struct(">Q16s")
_DELAY_KEY = struct.Struct(">QQ")
_DEAD_KEY = struct.Struct(">IQ16s")

_STATE_CODES = {TaskState.READY: 1, TaskState.LEASED: 2, TaskState.DELAYED: 3, TaskState.DEAD: 4}
_STATES = {code: state for state, code in _STATE_CODES.items()}

# How many due delays or expired leases one claim moves, so one claim stays short.
_MAX_MAINTENANCE = 1000
# Without inotify, a waiting consumer polls this often.
_POLL_S = 0.5
# How many task records one read transaction of `tasks` examines. A listing resumes in a
# fresh transaction after each batch, so no reader pins old pages for long.
_SCAN_BATCH = 1024


@dataclass(slots=True)
class _Header:
    """The mutable part of a task record, kept small because LMDB copies it on each update."""

    FORMAT = struct.Struct(">BIBQIIQQQ16sI")

    state: TaskState
    qid: int
    priority: int
    seq: int
    attempts: int
    max_attempts: int
    timeout_ms: int
    """The task's timeout (0: none); the claiming storage derives the lease from it."""
    enqueued_ms: int
    due_ms: int
    """Lease expiry (boot clock) when leased, due time (boot clock) when delayed, time of
    death (wall clock) when dead."""
    token: bytes
    budget: int
    """Attempts the task is given per run: at its first send, and again on each requeue."""

    def pack(self) -> bytes:
        return self.FORMAT.pack(
            _STATE_CODES[self.state],
            self.qid,
            self.priority,
            self.seq,
            self.attempts,
            self.max_attempts,
            self.timeout_ms,
            self.enqueued_ms,
            self.due_ms,
            self.token,
            self.budget,
        )

    @classmethod
    def unpack(cls, data: bytes) -> _Header:
        state, *rest = cls.FORMAT.unpack(data)
        return cls(_STATES[state], *rest)

    def ready_key(self) -> bytes:
        return _READY_KEY.pack(self.qid, 255 - self.priority, self.seq)


def _task_key(task_id: str) -> bytes:
    try:
        return uuid_key(task_id)
    except ValueError:
        raise StorageError(
            f"task id {task_id!r} is not a UUID; LMDB storage keys tasks by UUID", backend="lmdb"
        ) from None


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)


@functools.cache
def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as file:
            return file.read().strip()
    except OSError:  # pragma: no cover - not Linux: leases then survive a reboot's clock reset
        return b"unknown"


class LMDBStorage(StorageBackend):
    """Tasks in an LMDB environment under `path`, shared safely by several processes.

    One environment serves each directory in a process, whatever spelling of the path opens
    it, and `LMDBResultBackend` may share it. Writes are group-committed on one thread per
    process; the map doubles when full, up to `max_map_size`. Sends are refused with
    `StorageFull` once live data passes the cap less a reserve (a quarter of it, at most
    1 GiB), or when the disk refuses to grow the file; acks, retries and results keep the
    reserve, so workers can drain the queue, after which sends succeed again.

    Files are created for their owner only: the directory 0700, data and lock files 0600.

    Commits are durable by default: a write has reached the disk when its call returns.
    ``sync=False`` relaxes that for speed: each commit flushes its data but defers the
    metadata flush to the next commit (LMDB's ``MDB_NOMETASYNC``), so a process crash, even
    SIGKILL, loses nothing, while an OS crash or power loss may undo the last commit, never
    corrupting the file. Everything opening the same directory in one process must agree on
    `sync`.

    Note:
        Keep the directory on a local file system; LMDB's locks do not work over NFS.
        A storage object inherited through ``fork`` raises `StorageUnavailable` in the child:
        open storage in each process after it starts (start worker processes with spawn).
    """

    name = "lmdb"

    def __init__(
        self,
        path: str | os.PathLike[str] = "/tmp/looplane",
        *,
        lease_s: float = DEFAULT_LEASE_S,
        map_size: int = DEFAULT_MAP_SIZE,
        max_readers: int = DEFAULT_MAX_READERS,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        sync: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.path = os.fspath(path)
        self.default_lease_s = lease_s
        self.map_size = map_size
        self.max_readers = max_readers
        self.max_map_size = max_map_size
        self.sync = sync
        self.clock = clock
        self._env: LMDBEnv | None = LMDBEnv.acquire(
            path,
            map_size=map_size,
            max_readers=max_readers,
            max_map_size=max_map_size,
            sync=sync,
        )
        # Transaction helpers run on the writer or a reader thread, only for calls that
        # passed the `env` checks, so they read the databases without repeating them.
        self._dbs = self._env.dbs
        self._next_due_mono = float("inf")

    @property
    def write_channel(self) -> object | None:
        """The process's writer for this directory, shared with `LMDBResultBackend`."""
        return self._env

    @property
    def env(self) -> LMDBEnv:
        """The environment of this process.

        Raises:
            StorageUnavailable: The storage is closed, or was opened before a fork.
        """
        env = self._env
        if env is None:
            raise StorageUnavailable(f"LMDB storage at {self.path} is closed", backend="lmdb")
        if env.pid != os.getpid():
            # Limitation: a forked child cannot reopen the environment. lmdb 3.0 refuses to
            # open one that the parent had open at fork time, and closing the inherited
            # handle here could free the parent's reader slots
            # (https://github.com/jnwatson/py-lmdb/issues/346).
            # Lifted by: an lmdb release that forgets inherited environments in the child.
            raise StorageUnavailable(
                f"LMDB storage at {self.path} was opened before fork() and cannot be used or "
                "reopened in the child; open it in processes started with the 'spawn' method",
                backend="lmdb",
            )
        return env

    # Helpers that run inside a write transaction on the writer thread ---------------------

    def _prepare(self, txn: Txn) -> None:
        # Checked in every transaction rather than once per object: the transaction that
        # first records the boot id may still roll back (a full map retries the batch).
        meta = self._dbs["meta"]
        boot = _boot_id()
        stored = txn.get(b"boot_id", db=meta)
        if stored == boot:
            return
        if stored is not None:
            self._expire_all_leases(txn)
            self._make_all_delays_due(txn)
        txn.put(b"boot_id", boot, db=meta)

    def _expire_all_leases(self, txn: Txn) -> None:
        dbs = self._dbs
        cursor = txn.cursor(db=dbs["leases"])
        keys = list(cursor.iternext(keys=True, values=False))
        for key in keys:
            txn.delete(key, db=dbs["leases"])
            task_key = key[8:]
            txn.put(_TIMED_KEY.pack(0, task_key), b"", db=dbs["leases"])
            header = _Header.unpack(_need(txn, task_key, dbs["jobs"]))
            header.due_ms = 0
            txn.put(task_key, header.pack(), db=dbs["jobs"])

    def _make_all_delays_due(self, txn: Txn) -> None:
        dbs = self._dbs
        cursor = txn.cursor(db=dbs["delayed"])
        for key, task_key in list(cursor.iternext()):
            txn.delete(key, db=dbs["delayed"])
            seq = _DELAY_KEY.unpack(key)[1]
            txn.put(_DELAY_KEY.pack(0, seq), task_key, db=dbs["delayed"])
            header = _Header.unpack(_need(txn, task_key, dbs["jobs"]))
            header.due_ms = 0
            txn.put(task_key, header.pack(), db=dbs["jobs"])

    def _queue_id(self, txn: Txn, queue: str, *, create: bool) -> int | None:
        # Read it in every transaction rather than caching it on the object: the transaction
        # that creates it may still roll back (a full map retries the whole batch), and a
        # cached id that was never committed would file tasks under a queue nobody can find.
        meta = self._dbs["meta"]
        raw = txn.get(b"q/" + queue.encode(), db=meta)
        if raw is not None:
            return int(_U32.unpack(raw)[0])
        if not create:
            return None
        qid = txn.stat(meta)["entries"] + 1
        txn.put(b"q/" + queue.encode(), _U32.pack(qid), db=meta)
        return qid

    def _next_seq(self, txn: Txn, count: int) -> int:
        meta = self._dbs["meta"]
        raw = txn.get(b"seq", db=meta)
        first = (_U64.unpack(raw)[0] if raw else 0) + 1
        txn.put(b"seq", _U64.pack(first + count - 1), db=meta)
        return first

    def _lease_ms(self, header: _Header) -> int:
        # The claiming process decides the lease, from its own setting and the task's
        # timeout, so a worker's lease_s applies to tasks that other processes sent.
        timeout_s = header.timeout_ms / 1000 if header.timeout_ms else None
        return _ms(lease_for(timeout_s, self.default_lease_s))

    def _held(self, txn: Txn, claim: Claim) -> tuple[bytes, _Header] | None:
        self._prepare(txn)
        key = _task_key(claim.task_id)
        raw = txn.get(key, db=self._dbs["jobs"])
        if raw is None:
            return None
        header = _Header.unpack(raw)
        if header.state is not TaskState.LEASED or header.token != claim.token:
            return None
        txn.delete(_TIMED_KEY.pack(header.due_ms, key), db=self._dbs["leases"])
        return key, header

    def _to_ready(self, txn: Txn, key: bytes, header: _Header) -> None:
        header.state = TaskState.READY
        header.token = bytes(16)
        txn.put(header.ready_key(), key, db=self._dbs["ready"])
        txn.put(key, header.pack(), db=self._dbs["jobs"])

    def _to_dead(self, txn: Txn, key: bytes, header: _Header, reason: str) -> None:
        header.state = TaskState.DEAD
        header.token = bytes(16)
        header.due_ms = _ms(self.clock.time())
        dead_key = _DEAD_KEY.pack(header.qid, header.due_ms, key)
        txn.put(dead_key, reason.encode("utf-8", "backslashreplace"), db=self._dbs["dead"])
        txn.put(key, header.pack(), db=self._dbs["jobs"])

    # The interface ------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store `tasks` in one transaction; see `StorageBackend.enqueue`."""
        if not tasks:
            return
        records = [(_task_key(t.task_id), t) for t in tasks]
        for _, task in records:
            if not 0 <= task.priority <= 255:
                raise StorageError(f"priority {task.priority} is outside 0..255", backend="lmdb")
        await self.env.write(lambda txn: self._enqueue(txn, records), ring="ready", send=True)

    def _enqueue(self, txn: Txn, records: list[tuple[bytes, NewTask]]) -> None:
        self._prepare(txn)
        dbs = self._dbs
        seq = self._next_seq(txn, len(records))
        now_ms = _ms(self.clock.time())
        for offset, (key, task) in enumerate(records):
            qid = self._queue_id(txn, task.queue, create=True)
            assert qid is not None
            header = _Header(
                TaskState.READY,
                qid,
                task.priority,
                seq + offset,
                0,
                task.max_attempts,
                _ms(task.timeout_s or 0.0),
                now_ms,
                0,
                bytes(16),
                task.max_attempts,
            )
            txn.put(key, task.payload, db=dbs["payloads"])
            if task.delay_s > 0:
                header.state = TaskState.DELAYED
                header.due_ms = _ms(self.clock.monotonic() + task.delay_s)
                txn.put(_DELAY_KEY.pack(header.due_ms, header.seq), key, db=dbs["delayed"])
                txn.put(key, header.pack(), db=dbs["jobs"])
            else:
                self._to_ready(txn, key, header)
        # Checked after the writes so their pages count; raising rolls back the whole batch.
        self.env.check_send_room(txn)

    async def claim(self, limit: int, *, queue: str = "default") -> list[Claim]:
        """Lease up to `limit` tasks in one transaction; see `StorageBackend.claim`."""
        claims, next_due_s = await self.env.write(lambda txn: self._claim(txn, limit, queue))
        self._next_due_mono = self.clock.monotonic() + next_due_s
        return claims

    def _claim(self, txn: Txn, limit: int, queue: str) -> tuple[list[Claim], float]:
        self._prepare(txn)
        self._promote_due(txn)
        self._reap_expired(txn)
        qid = self._queue_id(txn, queue, create=False)
        claims = [] if qid is None else self._take_ready(txn, qid, limit)
        return claims, self._next_due_s(txn)

    def _promote_due(self, txn: Txn) -> None:
        dbs = self._dbs
        now_ms = _ms(self.clock.monotonic())
        cursor = txn.cursor(db=dbs["delayed"])
        moved = 0
        while cursor.first() and moved < _MAX_MAINTENANCE:
            due_ms = _DELAY_KEY.unpack(cursor.key())[0]
            if due_ms > now_ms:
                break
            key = cursor.value()
            cursor.delete()
            self._to_ready(txn, key, _Header.unpack(_need(txn, key, dbs["jobs"])))
            moved += 1

    def _reap_expired(self, txn: Txn) -> None:
        dbs = self._dbs
        now_ms = _ms(self.clock.monotonic())
        cursor = txn.cursor(db=dbs["leases"])
        reaped = 0
        while cursor.first() and reaped < _MAX_MAINTENANCE:
            expiry_ms, key = _TIMED_KEY.unpack(cursor.key())
            if expiry_ms > now_ms:
                break
            cursor.delete()
            header = _Header.unpack(_need(txn, key, dbs["jobs"]))
            # The worker died during the last allowed attempt. The task goes out once more
            # (attempt max + 1) so that the consumer records why it is set aside; if even
            # that delivery is lost, it goes straight to the dead letters.
            if header.attempts > header.max_attempts:
                reason = (
                    f"lease expired on the last attempt ({header.max_attempts} of "
                    f"{header.max_attempts}): the worker running it was lost"
                )
                self._to_dead(txn, key, header, reason)
            else:
                self._to_ready(txn, key, header)
            reaped += 1

    def _take_ready(self, txn: Txn, qid: int, limit: int) -> list[Claim]:
        dbs = self._dbs
        now_ms = _ms(self.clock.monotonic())
        prefix = _U32.pack(qid)
        cursor = txn.cursor(db=dbs["ready"])
        claims: list[Claim] = []
        while len(claims) < limit and cursor.set_range(prefix) and cursor.key()[:4] == prefix:
            key = cursor.value()
            cursor.delete()
            header = _Header.unpack(_need(txn, key, dbs["jobs"]))
            header.state = TaskState.LEASED
            header.attempts += 1
            header.token = os.urandom(16)
            lease_ms = self._lease_ms(header)
            header.due_ms = now_ms + lease_ms
            txn.put(_TIMED_KEY.pack(header.due_ms, key), b"", db=dbs["leases"])
            txn.put(key, header.pack(), db=dbs["jobs"])
            claims.append(
                Claim(
                    task_id=key.hex(),
                    token=header.token,
                    attempt=header.attempts,
                    max_attempts=header.max_attempts,
                    lease_s=lease_ms / 1000,
                    payload=_need(txn, key, dbs["payloads"]),
                )
            )
        return claims

    def _next_due_s(self, txn: Txn) -> float:
        dbs = self._dbs
        waits = [float("inf")]
        cursor = txn.cursor(db=dbs["delayed"])
        if cursor.first():
            waits.append(_DELAY_KEY.unpack(cursor.key())[0] / 1000 - self.clock.monotonic())
        cursor = txn.cursor(db=dbs["leases"])
        if cursor.first():
            waits.append(_TIMED_KEY.unpack(cursor.key())[0] / 1000 - self.clock.monotonic())
        return max(min(waits), 0.0)

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        """Extend leases in one transaction; see `StorageBackend.renew`."""
        return await self.env.write(lambda txn: [self._renew(txn, c) for c in claims])

    def _renew(self, txn: Txn, claim: Claim) -> bool:
        held = self._held(txn, claim)
        if held is None:
            return False
        key, header = held
        header.due_ms = _ms(self.clock.monotonic()) + self._lease_ms(header)
        txn.put(_TIMED_KEY.pack(header.due_ms, key), b"", db=self._dbs["leases"])
        txn.put(key, header.pack(), db=self._dbs["jobs"])
        return True

    async def ack(self, claim: Claim) -> bool:
        """Remove the task; see `StorageBackend.ack`."""
        return await self.env.write(lambda txn: self._ack(txn, claim))

    def _ack(self, txn: Txn, claim: Claim) -> bool:
        held = self._held(txn, claim)
        if held is None:
            return False
        key = held[0]
        txn.delete(key, db=self._dbs["jobs"])
        txn.delete(key, db=self._dbs["payloads"])
        return True

    async def release(
        self, claim: Claim, *, delay_s: float = 0.0, count_attempt: bool = True
    ) -> bool:
        """Put the task back; see `StorageBackend.release`."""
        return await self.env.write(
            lambda txn: self._release(txn, claim, delay_s, count_attempt), ring="ready"
        )

    def _release(self, txn: Txn, claim: Claim, delay_s: float, count_attempt: bool) -> bool:
        held = self._held(txn, claim)
        if held is None:
            return False
        key, header = held
        if not count_attempt:
            header.attempts -= 1
        if delay_s <= 0:
            self._to_ready(txn, key, header)
            return True
        header.state = TaskState.DELAYED
        header.token = bytes(16)
        header.due_ms = _ms(self.clock.monotonic() + delay_s)
        txn.put(_DELAY_KEY.pack(header.due_ms, header.seq), key, db=self._dbs["delayed"])
        txn.put(key, header.pack(), db=self._dbs["jobs"])
        return True

    async def bury(self, claim: Claim, *, reason: str) -> bool:
        """Dead-letter the task; see `StorageBackend.bury`."""
        return await self.env.write(lambda txn: self._bury(txn, claim, reason))

    def _bury(self, txn: Txn, claim: Claim, reason: str) -> bool:
        held = self._held(txn, claim)
        if held is None:
            return False
        self._to_dead(txn, held[0], held[1], reason)
        return True

    async def requeue_dead(self, task_id: str) -> bool:
        """Make a dead task ready with its allowance again; see `StorageBackend.requeue_dead`."""
        key = _task_key(task_id)
        return await self.env.write(lambda txn: self._requeue_dead(txn, key), ring="ready")

    def _requeue_dead(self, txn: Txn, key: bytes) -> bool:
        raw = txn.get(key, db=self._dbs["jobs"])
        if raw is None:
            return False
        header = _Header.unpack(raw)
        if header.state is not TaskState.DEAD:
            return False
        txn.delete(_DEAD_KEY.pack(header.qid, header.due_ms, key), db=self._dbs["dead"])
        # Attempt numbers go on from where they stopped, so the new run's results do not
        # overwrite the old run's; the task gets its original allowance again.
        # The delivery that reported a worker lost on the last attempt was not an attempt.
        header.attempts = min(header.attempts, header.max_attempts)
        header.max_attempts = header.attempts + header.budget
        self._to_ready(txn, key, header)
        return True

    # Waiting and reading ------------------------------------------------------------------

    def watch(self) -> Watcher:
        """A watcher woken by sends and requeues in this and other processes."""
        return _LMDBWatcher(self)

    def next_due_in(self) -> float:
        """Seconds until the next due delay or lease expiry seen by the last claim."""
        return max(self._next_due_mono - self.clock.monotonic(), 0.0)

    async def counts(self, *, queue: str = "default") -> QueueCounts:
        """Count tasks by state; leased and delayed counts cover every queue."""
        return await self.env.read(lambda txn: self._counts(txn, queue))

    def _counts(self, txn: Txn, queue: str) -> QueueCounts:
        dbs = self._dbs
        raw = txn.get(b"q/" + queue.encode(), db=dbs["meta"])
        ready = dead = 0
        if raw is not None:
            ready = _count_prefix(txn, dbs["ready"], raw)
            dead = _count_prefix(txn, dbs["dead"], raw)
        return QueueCounts(
            ready=ready,
            leased=txn.stat(dbs["leases"])["entries"],
            delayed=txn.stat(dbs["delayed"])["entries"],
            dead=dead,
        )

    async def dead_tasks(self, *, limit: int = 100) -> list[DeadTask]:
        """Dead-lettered tasks of every queue, oldest first within each queue."""
        return await self.env.read(lambda txn: self._dead_tasks(txn, limit))

    def _dead_tasks(self, txn: Txn, limit: int) -> list[DeadTask]:
        dbs = self._dbs
        found: list[DeadTask] = []
        for dead_key, reason in txn.cursor(db=dbs["dead"]):
            if len(found) >= limit:
                break
            _, failed_ms, key = _DEAD_KEY.unpack(dead_key)
            header = _Header.unpack(_need(txn, key, dbs["jobs"]))
            found.append(
                DeadTask(
                    task_id=key.hex(),
                    payload=_need(txn, key, dbs["payloads"]),
                    reason=reason.decode("utf-8", "replace"),
                    attempts=header.attempts,
                    failed_at=failed_ms / 1000,
                )
            )
        return found

    async def tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        limit: int = 100,
        offset: int = 0,
        queue: str = "default",
    ) -> list[TaskInfo]:
        """Tasks of `queue` in `states`, newest first; see `StorageBackend.tasks`.

        Note:
            "Newest first" is the reverse order of task ids. The ids `new_task_id` makes
            start with their creation time in milliseconds, so this is sending order to the
            millisecond; tasks created in the same millisecond, or with ids from elsewhere,
            come in id order. The listing reads batches of records in separate short
            transactions, so a task that changes state meanwhile may be missed or shown
            in its old state, but never twice.
        """
        check_page(limit, offset)
        scan = _TaskScan(
            queue=queue,
            states=None if states is None else frozenset(states),
            skip=offset,
            want=limit,
        )
        while not scan.done:
            await self.env.read(lambda txn: self._scan_tasks(txn, scan))
        return scan.found

    def _scan_tasks(self, txn: Txn, scan: _TaskScan) -> None:
        dbs = self._dbs
        qid = self._queue_id(txn, scan.queue, create=False)
        cursor = txn.cursor(db=dbs["jobs"])
        positioned = qid is not None and len(scan.found) < scan.want and _before(cursor, scan.after)
        examined = 0
        while positioned and examined < _SCAN_BATCH:
            key = cursor.key()
            header = _Header.unpack(cursor.value())
            if header.qid == qid and (scan.states is None or header.state in scan.states):
                if scan.skip:
                    scan.skip -= 1
                else:
                    scan.found.append(self._info(txn, key, header))
            scan.after = key
            examined += 1
            positioned = len(scan.found) < scan.want and cursor.prev()
        scan.done = not positioned

    def _info(self, txn: Txn, key: bytes, header: _Header) -> TaskInfo:
        dbs = self._dbs
        reason = failed_at = None
        if header.state is TaskState.DEAD:
            dead_key = _DEAD_KEY.pack(header.qid, header.due_ms, key)
            reason = _need(txn, dead_key, dbs["dead"]).decode("utf-8", "replace")
            failed_at = header.due_ms / 1000
        return TaskInfo(
            task_id=key.hex(),
            state=header.state,
            attempts=header.attempts,
            max_attempts=header.max_attempts,
            enqueued_at=header.enqueued_ms / 1000,
            payload=_need(txn, key, dbs["payloads"]),
            reason=reason,
            failed_at=failed_at,
        )

    async def purge(self, *, queue: str = "default") -> int:
        """Remove the ready and delayed tasks of `queue`; see `StorageBackend.purge`.

        Note:
            The removal is one write transaction, and consumers in every process wait for
            it to commit: purging millions of tasks holds them up for as long as it takes.
        """
        return await self.env.write(lambda txn: self._purge(txn, queue))

    def _purge(self, txn: Txn, queue: str) -> int:
        dbs = self._dbs
        qid = self._queue_id(txn, queue, create=False)
        if qid is None:
            return 0
        removed = 0
        prefix = _U32.pack(qid)
        cursor = txn.cursor(db=dbs["ready"])
        while cursor.set_range(prefix) and cursor.key()[:4] == prefix:
            key = cursor.value()
            cursor.delete()
            _forget(txn, dbs, key)
            removed += 1

        # Delays of every queue share one index ordered by due time, so each entry's queue
        # is read from its header.
        doomed = [
            (delay_key, key)
            for delay_key, key in txn.cursor(db=dbs["delayed"])
            if _Header.unpack(_need(txn, key, dbs["jobs"])).qid == qid
        ]
        for delay_key, key in doomed:
            txn.delete(delay_key, db=dbs["delayed"])
            _forget(txn, dbs, key)
        return removed + len(doomed)

    async def purge_dead(self) -> int:
        """Remove every dead-lettered task; see `StorageBackend.purge_dead`."""
        return await self.env.write(self._purge_dead)

    def _purge_dead(self, txn: Txn) -> int:
        dbs = self._dbs
        doomed = list(txn.cursor(db=dbs["dead"]).iternext(keys=True, values=False))
        for dead_key in doomed:
            txn.delete(dead_key, db=dbs["dead"])
            _forget(txn, dbs, _DEAD_KEY.unpack(dead_key)[2])
        return len(doomed)

    async def close(self) -> None:
        """Give back this storage's hold on the environment; idempotent."""
        env, self._env = self._env, None
        if env is not None and env.pid == os.getpid():
            await asyncio.to_thread(env.release)


def _need(txn: Txn, key: bytes, db: Any) -> bytes:
    value = txn.get(key, db=db)
    if value is None:
        raise StorageError(
            f"LMDB store is inconsistent: record {key.hex()} is missing", backend="lmdb"
        )
    return value


@dataclass(slots=True)
class _TaskScan:
    """Where a `tasks` listing stands between its read transactions."""

    queue: str
    states: frozenset[TaskState] | None
    skip: int
    want: int
    after: bytes | None = None
    """The last task key examined; the next batch starts just below it."""
    found: list[TaskInfo] = field(default_factory=list)
    done: bool = False


def _before(cursor: Any, key: bytes | None) -> bool:
    """Put `cursor` on the greatest key below `key` (the last key if None); False if none."""
    if key is None:
        return bool(cursor.last())
    if cursor.set_range(key):
        return bool(cursor.prev())
    return bool(cursor.last())


def _forget(txn: Txn, dbs: dict[str, Any], key: bytes) -> None:
    """Delete a task's record and payload (its index entries are the caller's business)."""
    txn.delete(key, db=dbs["jobs"])
    txn.delete(key, db=dbs["payloads"])


def _count_prefix(txn: Txn, db: Any, prefix: bytes) -> int:
    cursor = txn.cursor(db=db)
    count = 0
    if cursor.set_range(prefix):
        for key in cursor.iternext(keys=True, values=False):
            if key[: len(prefix)] != prefix:
                break
            count += 1
    return count


class _LMDBWatcher(Watcher):
    def __init__(self, storage: LMDBStorage) -> None:
        loop = asyncio.get_running_loop()
        env = storage.env
        self._storage = storage
        self._rung = False
        self._event = asyncio.Event()
        self._unlisten = env.listen("ready", loop, self._ring)
        self._doorbell = DoorbellWatch(env.bell_path("ready"), loop, self._ring)

    def _ring(self) -> None:
        self._rung = True
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        if not self._rung:
            timeout_s = min(timeout_s, self._storage.next_due_in())
            if not self._doorbell.active:  # pragma: no cover - no inotify
                timeout_s = min(timeout_s, _POLL_S)
            try:
                async with asyncio.timeout(timeout_s):
                    await self._event.wait()
            except TimeoutError:
                pass
        self._rung = False
        self._event.clear()

    def close(self) -> None:
        self._unlisten()
        self._doorbell.close()
