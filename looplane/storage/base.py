"""The storage interface: where tasks wait, as opaque payload bytes plus scheduling state.

Storage hands tasks out under leases instead of deleting them. A claim is a time-limited,
token-checked hold: `ack` removes the task, `release` puts it back (now or after a delay),
`bury` moves it to the dead-letter store, and a lease that runs out makes the task claimable
again. Every one of those calls carries the claim's token, and a call whose token is no longer
current changes nothing and returns False: a worker that lost its lease can never ack or
requeue a delivery that now belongs to someone else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Self

from looplane.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from types import TracebackType

__all__ = [
    "Claim",
    "DeadTask",
    "NewTask",
    "QueueCounts",
    "StorageBackend",
    "TaskInfo",
    "TaskState",
    "Watcher",
]

DEFAULT_LEASE_S = 30.0
"""Lease length for a task without a timeout; the orchestrator renews it every third of it."""

LEASE_GRACE_S = 5.0
"""A task with a timeout is leased for its timeout plus this, so a loop blocked by the task
itself cannot make its lease run out before the timeout does."""


class TaskState(StrEnum):
    """Where a task is in storage."""

    READY = "ready"
    LEASED = "leased"
    DELAYED = "delayed"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to store: its id, its encoded bytes and its scheduling limits."""

    task_id: str
    payload: bytes
    max_attempts: int
    timeout_s: float | None = None
    queue: str = "default"
    priority: int = 0
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Claim:
    """One leased delivery of a task. `token` identifies this delivery and no other."""

    task_id: str
    token: bytes
    attempt: int
    max_attempts: int
    lease_s: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadTask:
    """A task set aside in the dead-letter store, with why."""

    task_id: str
    payload: bytes
    reason: str
    attempts: int
    failed_at: float
    """Wall-clock time (epoch seconds) at which it was set aside."""


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A stored task as inspection tools see it: its state, attempts and encoded bytes.

    It is a snapshot: by the time a caller reads it the task may have moved on. A delayed
    task whose delay has passed, or a leased task whose lease ran out, keeps its recorded
    state until a consumer's next claim moves it.
    """

    task_id: str
    state: TaskState
    attempts: int
    """Attempts started so far (raised at claim time, so a leased task counts its own)."""
    max_attempts: int
    enqueued_at: float
    """Wall-clock time (epoch seconds) at which the task was stored."""
    payload: bytes
    """The encoded task, as the producer's serializer wrote it (name, arguments, options)."""
    reason: str | None = None
    """Why it was dead-lettered; None unless `state` is dead."""
    failed_at: float | None = None
    """Wall-clock time (epoch seconds) it was dead-lettered; None unless `state` is dead."""


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many tasks storage holds in each state."""

    ready: int = 0
    leased: int = 0
    delayed: int = 0
    dead: int = 0


def lease_for(timeout_s: float | None, default_lease_s: float) -> float:
    """The lease a task gets: its timeout plus a grace period, or the storage default."""
    if timeout_s is None:
        return default_lease_s
    return timeout_s + LEASE_GRACE_S


def check_page(limit: int, offset: int) -> None:
    """Refuse a negative page size or offset, as `StorageBackend.tasks` promises.

    Raises:
        ConfigError: `limit` or `offset` is negative.
    """
    if limit < 0 or offset < 0:
        raise ConfigError(f"limit and offset must be at least 0; got {limit=} {offset=}")


class Watcher(ABC):
    """Wakes a waiting consumer when work may have become claimable.

    It is armed when created, so a task stored between "found nothing" and "start waiting"
    still wakes the waiter: `wait` returns at once if anything rang since the last `wait`.
    """

    @abstractmethod
    async def wait(self, timeout_s: float) -> None:
        """Return when work may be claimable, or after `timeout_s` seconds.

        It also returns when the next delayed task falls due or a lease runs out. Spurious
        returns are allowed; cancelling it is safe.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most watchers hold nothing
        """Release what the watcher holds (file descriptors, registrations)."""


class StorageBackend(ABC):
    """Where tasks wait. Implementations keep every promise described in the module docstring.

    All methods are coroutines that never block the event loop. Several consumers, in one
    process or in several, may use one storage: each task is leased to one of them at a time.
    """

    name: str = "storage"
    default_lease_s: float = DEFAULT_LEASE_S

    @property
    def write_channel(self) -> object | None:
        """The single ordered writer this backend commits through, if it shares one.

        Backends that return the same channel commit writes in the order they were
        submitted, in as few transactions as possible: the orchestrator then submits a
        result and its ack together instead of waiting for one commit before the next.
        A backend that returns a channel must submit its write before its coroutine first
        suspends, so that submission order is call order.
        """
        return None

    @abstractmethod
    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store `tasks` durably, in one write. When it returns, every task is stored.

        If cancelled before the write completes, either all or none of them are stored.
        """

    @abstractmethod
    async def claim(self, limit: int, *, queue: str = "default") -> list[Claim]:
        """Lease up to `limit` ready tasks, highest priority first, oldest first within one.

        Before taking ready tasks it moves due delayed tasks to ready, and takes back tasks
        whose lease ran out. The attempt count is raised here, at claim time, so a task that
        kills its worker still runs out of attempts. A task whose worker was lost during its
        last allowed attempt is handed out once more, with ``attempt > max_attempts``: the
        consumer then sets it aside with its reason instead of running it. If that delivery
        is lost too, the task goes straight to the dead-letter store.
        """

    @abstractmethod
    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        """Extend the leases of `claims` by their lease length; False where a lease was lost."""

    @abstractmethod
    async def ack(self, claim: Claim) -> bool:
        """Remove the task for good. False (and nothing changes) if the lease was lost."""

    @abstractmethod
    async def release(
        self, claim: Claim, *, delay_s: float = 0.0, count_attempt: bool = True
    ) -> bool:
        """Put the task back, claimable after `delay_s` seconds.

        With ``count_attempt=False`` the attempt this claim used is given back (a shutdown
        interrupted it, the task did not fail). False if the lease was lost.
        """

    @abstractmethod
    async def bury(self, claim: Claim, *, reason: str) -> bool:
        """Move the task to the dead-letter store with `reason`. False if the lease was lost."""

    @abstractmethod
    def watch(self) -> Watcher:
        """An armed `Watcher` for this storage."""

    @abstractmethod
    async def counts(self, *, queue: str = "default") -> QueueCounts:
        """How many tasks of `queue` are ready, leased, delayed and dead."""

    @abstractmethod
    async def dead_tasks(self, *, limit: int = 100) -> list[DeadTask]:
        """Dead-lettered tasks, oldest first."""

    @abstractmethod
    async def requeue_dead(self, task_id: str) -> bool:
        """Move a dead-lettered task back to ready with its original number of attempts.

        Attempt numbers go on from where they stopped (a task that died on attempt 4 of 4
        runs again as attempt 5 of 8), so the new run's results never overwrite the old
        ones. Returns False if the task is not dead.
        """

    @abstractmethod
    async def tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        limit: int = 100,
        offset: int = 0,
        queue: str = "default",
    ) -> list[TaskInfo]:
        """Tasks of `queue` in `states` (every state if None), newest first.

        Skips the first `offset` matches and returns at most `limit`, so a viewer pages
        with ``offset=page * limit``; the work done grows with ``offset + limit``, not with
        the size of the queue beyond them. "Newest" is by time of sending; a backend may
        approximate it (see its docstring). Reading never delays a consumer.

        Raises:
            ConfigError: `limit` or `offset` is negative.
        """

    @abstractmethod
    async def purge(self, *, queue: str = "default") -> int:
        """Remove every ready and delayed task of `queue` for good; return how many.

        Leased tasks stay (a running task must not vanish under its worker) and so do
        dead-lettered ones (see `purge_dead`). It is one atomic write: if cancelled, either
        all of them are removed or none.
        """

    @abstractmethod
    async def purge_dead(self) -> int:
        """Remove every dead-lettered task, of every queue, for good; return how many.

        It is one atomic write: if cancelled, either all of them are removed or none.
        """

    async def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release the backend's resources. Further calls raise `StorageUnavailable`."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
