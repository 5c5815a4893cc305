"""An in-process storage for tests and throwaway runs; it keeps the same promises as LMDB.

Nothing survives the process, and only consumers in the same process (and event loop) can
see its tasks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from looplane._clock import SYSTEM_CLOCK, Clock
from looplane.errors import StorageUnavailable
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

__all__ = ["InMemoryStorage"]


@dataclass(slots=True)
class _Entry:
    task_id: str
    payload: bytes
    max_attempts: int
    budget: int
    """Attempts the task is given per run: at its first send, and again on each requeue."""
    timeout_s: float | None
    queue: str
    priority: int
    seq: int
    state: TaskState = TaskState.READY
    attempts: int = 0
    token: bytes = b""
    due: float = 0.0
    """Lease expiry while leased, due time while delayed (both on the boot clock)."""
    reason: str = ""
    failed_at: float = 0.0
    enqueued_at: float = 0.0
    """Wall-clock time of the send, for inspection only."""


class InMemoryStorage(StorageBackend):
    """Tasks in a dict, with heaps for ready, leased and delayed order.

    The heaps are cleaned lazily: an entry popped from a heap is acted on only if the task is
    still in the state (and token and due time) that put it there.
    """

    name = "memory"

    def __init__(self, *, lease_s: float = DEFAULT_LEASE_S, clock: Clock = SYSTEM_CLOCK) -> None:
        self.default_lease_s = lease_s
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        self._leases: list[tuple[float, str, bytes]] = []
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._watchers: set[_MemoryWatcher] = set()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailable("memory storage is closed", backend=self.name)

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store `tasks`; see `StorageBackend.enqueue`."""
        self._check_open()
        now = self.clock.monotonic()
        sent_at = self.clock.time()
        for new in tasks:
            entry = _Entry(
                task_id=new.task_id,
                payload=new.payload,
                max_attempts=new.max_attempts,
                budget=new.max_attempts,
                timeout_s=new.timeout_s,
                queue=new.queue,
                priority=new.priority,
                seq=next(self._seq),
                enqueued_at=sent_at,
            )
            self._entries[new.task_id] = entry
            if new.delay_s > 0:
                self._delay(entry, now + new.delay_s)
            else:
                self._make_ready(entry)
        self._ring()

    def _make_ready(self, entry: _Entry) -> None:
        entry.state = TaskState.READY
        heapq.heappush(
            self._ready.setdefault(entry.queue, []), (-entry.priority, entry.seq, entry.task_id)
        )

    def _delay(self, entry: _Entry, eta: float) -> None:
        entry.state = TaskState.DELAYED
        entry.due = eta
        heapq.heappush(self._delayed, (eta, entry.seq, entry.task_id))

    def _bury(self, entry: _Entry, reason: str) -> None:
        entry.state = TaskState.DEAD
        entry.reason = reason
        entry.failed_at = self.clock.time()
        entry.token = b""

    async def claim(self, limit: int, *, queue: str = "default") -> list[Claim]:
        """Lease up to `limit` tasks; see `StorageBackend.claim`."""
        self._check_open()
        self._promote_due()
        self._reap_expired()
        ready = self._ready.get(queue, [])
        claims: list[Claim] = []
        now = self.clock.monotonic()
        while ready and len(claims) < limit:
            entry = self._entries[heapq.heappop(ready)[2]]
            entry.state = TaskState.LEASED
            entry.attempts += 1
            entry.token = next(self._tokens).to_bytes(16, "big")
            lease_s = lease_for(entry.timeout_s, self.default_lease_s)
            entry.due = now + lease_s
            heapq.heappush(self._leases, (entry.due, entry.task_id, entry.token))
            claims.append(
                Claim(
                    task_id=entry.task_id,
                    token=entry.token,
                    attempt=entry.attempts,
                    max_attempts=entry.max_attempts,
                    lease_s=lease_s,
                    payload=entry.payload,
                )
            )
        return claims

    def _promote_due(self) -> None:
        now = self.clock.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            eta, _, task_id = heapq.heappop(self._delayed)
            entry = self._entries.get(task_id)
            if entry is not None and entry.state is TaskState.DELAYED and entry.due == eta:
                self._make_ready(entry)

    def _reap_expired(self) -> None:
        now = self.clock.monotonic()
        while self._leases and self._leases[0][0] <= now:
            due, task_id, token = heapq.heappop(self._leases)
            entry = self._entries.get(task_id)
            if entry is None or entry.token != token or entry.due != due:
                continue
            # The worker died during the last allowed attempt. The task goes out once more
            # (attempt max + 1) so that the consumer records why it is set aside; if even
            # that delivery is lost, it goes straight to the dead letters.
            if entry.attempts > entry.max_attempts:
                self._bury(
                    entry,
                    f"lease expired on the last attempt ({entry.max_attempts} of "
                    f"{entry.max_attempts}): the worker running it was lost",
                )
            else:
                self._make_ready(entry)

    def _held(self, claim: Claim) -> _Entry | None:
        self._check_open()
        entry = self._entries.get(claim.task_id)
        if entry is None or entry.state is not TaskState.LEASED or entry.token != claim.token:
            return None
        # A lease that ran out but that nobody has taken back yet still holds: answering it
        # now avoids a second run, and a claim that reaps it first mints a new token.
        return entry

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        """Extend leases; see `StorageBackend.renew`."""
        alive = []
        now = self.clock.monotonic()
        for claim in claims:
            entry = self._held(claim)
            if entry is not None:
                entry.due = now + lease_for(entry.timeout_s, self.default_lease_s)
                heapq.heappush(self._leases, (entry.due, entry.task_id, entry.token))
            alive.append(entry is not None)
        return alive

    async def ack(self, claim: Claim) -> bool:
        """Remove the task; see `StorageBackend.ack`."""
        entry = self._held(claim)
        if entry is None:
            return False
        del self._entries[entry.task_id]
        return True

    async def release(
        self, claim: Claim, *, delay_s: float = 0.0, count_attempt: bool = True
    ) -> bool:
        """Put the task back; see `StorageBackend.release`."""
        entry = self._held(claim)
        if entry is None:
            return False
        entry.token = b""
        if not count_attempt:
            entry.attempts -= 1
        if delay_s > 0:
            self._delay(entry, self.clock.monotonic() + delay_s)
        else:
            self._make_ready(entry)
        self._ring()
        return True

    async def bury(self, claim: Claim, *, reason: str) -> bool:
        """Dead-letter the task; see `StorageBackend.bury`."""
        entry = self._held(claim)
        if entry is None:
            return False
        self._bury(entry, reason)
        return True

    def watch(self) -> Watcher:
        """A watcher woken by every send and requeue in this process."""
        self._check_open()
        watcher = _MemoryWatcher(self)
        self._watchers.add(watcher)
        return watcher

    def _ring(self) -> None:
        for watcher in self._watchers:
            watcher.ring()

    def next_due_in(self) -> float:
        """Seconds until the earliest delayed task falls due or lease runs out (inf if none)."""
        waits = [float("inf")]
        if self._delayed:
            waits.append(self._delayed[0][0] - self.clock.monotonic())
        if self._leases:
            waits.append(self._leases[0][0] - self.clock.monotonic())
        return max(min(waits), 0.0)

    async def counts(self, *, queue: str = "default") -> QueueCounts:
        """Count tasks by state; see `StorageBackend.counts`."""
        self._check_open()
        states = [e.state for e in self._entries.values() if e.queue == queue]
        return QueueCounts(
            ready=states.count(TaskState.READY),
            leased=states.count(TaskState.LEASED),
            delayed=states.count(TaskState.DELAYED),
            dead=states.count(TaskState.DEAD),
        )

    async def dead_tasks(self, *, limit: int = 100) -> list[DeadTask]:
        """Dead-lettered tasks, oldest first."""
        self._check_open()
        dead = [e for e in self._entries.values() if e.state is TaskState.DEAD]
        dead.sort(key=lambda e: (e.failed_at, e.seq))
        return [
            DeadTask(
                task_id=e.task_id,
                payload=e.payload,
                reason=e.reason,
                attempts=e.attempts,
                failed_at=e.failed_at,
            )
            for e in dead[:limit]
        ]

    async def requeue_dead(self, task_id: str) -> bool:
        """Make a dead task ready with its allowance again; see `StorageBackend.requeue_dead`."""
        self._check_open()
        entry = self._entries.get(task_id)
        if entry is None or entry.state is not TaskState.DEAD:
            return False
        # Attempt numbers go on from where they stopped, so the new run's results do not
        # overwrite the old run's; the task gets its original allowance again.
        # The delivery that reported a worker lost on the last attempt was not an attempt.
        entry.attempts = min(entry.attempts, entry.max_attempts)
        entry.max_attempts = entry.attempts + entry.budget
        entry.reason = ""
        self._make_ready(entry)
        self._ring()
        return True

    async def tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        limit: int = 100,
        offset: int = 0,
        queue: str = "default",
    ) -> list[TaskInfo]:
        """Tasks of `queue` in `states`, newest sent first; see `StorageBackend.tasks`."""
        check_page(limit, offset)
        self._check_open()
        wanted = None if states is None else frozenset(states)
        matches = [
            e
            for e in self._entries.values()
            if e.queue == queue and (wanted is None or e.state in wanted)
        ]
        matches.sort(key=lambda e: e.seq, reverse=True)
        return [_info(e) for e in matches[offset : offset + limit]]

    async def purge(self, *, queue: str = "default") -> int:
        """Remove the ready and delayed tasks of `queue`; see `StorageBackend.purge`."""
        self._check_open()
        doomed = [
            e.task_id
            for e in self._entries.values()
            if e.queue == queue and e.state in (TaskState.READY, TaskState.DELAYED)
        ]
        for task_id in doomed:
            del self._entries[task_id]
        # Claims index the ready heap without checking it, so it must hold only live
        # tasks; the shared delay heap is rebuilt too, so no stale entry wakes a waiter.
        self._ready.pop(queue, None)
        self._delayed = [item for item in self._delayed if item[2] in self._entries]
        heapq.heapify(self._delayed)
        return len(doomed)

    async def purge_dead(self) -> int:
        """Remove every dead-lettered task; see `StorageBackend.purge_dead`."""
        self._check_open()
        doomed = [e.task_id for e in self._entries.values() if e.state is TaskState.DEAD]
        for task_id in doomed:
            del self._entries[task_id]
        return len(doomed)

    async def close(self) -> None:
        """Drop every task and refuse further calls."""
        self._closed = True
        self._entries.clear()
        for watcher in list(self._watchers):
            watcher.ring()


def _info(entry: _Entry) -> TaskInfo:
    dead = entry.state is TaskState.DEAD
    return TaskInfo(
        task_id=entry.task_id,
        state=entry.state,
        attempts=entry.attempts,
        max_attempts=entry.max_attempts,
        enqueued_at=entry.enqueued_at,
        payload=entry.payload,
        reason=entry.reason if dead else None,
        failed_at=entry.failed_at if dead else None,
    )


class _MemoryWatcher(Watcher):
    def __init__(self, storage: InMemoryStorage) -> None:
        self._storage = storage
        self._rung = False
        self._event: asyncio.Event | None = None

    def ring(self) -> None:
        self._rung = True
        if self._event is not None:
            self._event.set()

    async def wait(self, timeout_s: float) -> None:
        if not self._rung:
            self._event = self._event or asyncio.Event()
            timeout_s = min(timeout_s, self._storage.next_due_in())
            try:
                async with asyncio.timeout(timeout_s):
                    await self._event.wait()
            except TimeoutError:
                pass
        self._rung = False
        if self._event is not None:
            self._event.clear()

    def close(self) -> None:
        self._storage._watchers.discard(self)
