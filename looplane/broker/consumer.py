"""Consumers: the leasing side of a queue.

A consumer receives tasks under leases and must answer each one with `ack` or `nack`. A task
that is never answered (the worker was killed) becomes receivable again when its lease runs
out, so delivery is at least once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Self

from looplane._clock import SYSTEM_CLOCK, Clock
from looplane.broker.serializer import JSONSerializer, Serializer
from looplane.errors import BrokerError, LeaseLost, SerializationError
from looplane.log import one_line
from looplane.task import Task, check_queue

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import TracebackType

    from looplane.storage.base import Claim, StorageBackend, Watcher

__all__ = [
    "MAX_REASON_LENGTH",
    "Consumer",
    "Rejected",
    "StorageConsumer",
    "new_consumer_id",
    "storable_reason",
]

logger = logging.getLogger(__name__)

# Payloads larger than this are decoded in a thread, off the event loop.
_DECODE_IN_THREAD_AT = 256 * 1024

MAX_REASON_LENGTH = 1000
"""Dead-letter reasons longer than this are cut short."""

# A wait with no timeout still wakes this often, as a fallback for a lost wake-up.
_IDLE_WAKE_S = 1.0


def new_consumer_id() -> str:
    """A consumer id unique to this process run: host, pid and a random suffix.

    Host and pid alone repeat when a container restarts as pid 1, which would make a
    restarted worker look like the dead one
    (https://github.com/procrastinate-org/procrastinate/issues/1518).
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def storable_reason(reason: str) -> str:
    """`reason` made writable as UTF-8 and cut to `MAX_REASON_LENGTH` characters.

    Reasons quote task names and decoder messages taken from payloads that no producer
    checked. A lone surrogate in one makes a UTF-8 write raise (the Redis driver does), and
    an unbounded one would copy a huge payload into the dead-letter store.
    """
    if not reason.isascii():
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(reason) > MAX_REASON_LENGTH:
        reason = reason[: MAX_REASON_LENGTH - 3] + "..."
    return reason


def _first_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not stop the rejection
        return "<message could not be read>"
    return text.partition("\n")[0]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A delivery the consumer set aside instead of handing it out.

    Its payload could not be decoded, or its worker was lost during its last allowed attempt.
    """

    task_id: str
    reason: str
    attempt: int
    max_attempts: int
    name: str | None = None
    """The task's name, when its payload could be read."""


class Consumer(ABC):
    """Receives tasks under leases; every received task must be acked or nacked.

    Subclasses implement `receive_batch`, `ack` and `nack`. Those with leases that must be
    renewed also implement `renew` and `renew_interval_s`; the orchestrator calls them while
    tasks run.
    """

    on_reject: Callable[[Rejected], Awaitable[None]] | None = None
    """Called for each delivery set aside as undecodable (the orchestrator records it)."""

    async def receive(self, timeout: float | None = None) -> Task | None:
        """Lease one task, waiting up to `timeout` seconds (None: until one arrives).

        Returns None if nothing arrived in time. Cancelling it leaves no task leased.
        """
        tasks = await self.receive_batch(1, timeout=timeout)
        return tasks[0] if tasks else None

    @abstractmethod
    async def receive_batch(
        self, batch_size: int = 10, *, timeout: float | None = None
    ) -> list[Task]:
        """Lease up to `batch_size` tasks, waiting up to `timeout` seconds for the first."""

    @abstractmethod
    async def ack(self, task: Task) -> None:
        """Finish the task: it leaves the queue for good.

        Raises:
            LeaseLost: The lease ran out and the task may be running elsewhere; nothing changed.
        """

    @abstractmethod
    async def nack(
        self,
        task: Task,
        requeue: bool = True,
        *,
        delay_s: float = 0.0,
        reason: str | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Give the task back: to the queue after `delay_s` seconds, or to the dead letters.

        With ``requeue=False`` the task is dead-lettered with `reason`. With
        ``count_attempt=False`` the attempt is not counted against its retries (used when a
        shutdown interrupted it).

        Raises:
            LeaseLost: The lease ran out; nothing changed.
        """

    async def renew(self, tasks: Sequence[Task]) -> list[Task]:
        """Extend the leases of `tasks`; returns those whose lease was lost."""
        return []

    @property
    def renew_interval_s(self) -> float | None:
        """How often the orchestrator should call `renew`; None if leases never run out."""
        return None

    def abandon(self, task: Task) -> None:  # noqa: B027 - consumers without leases hold nothing
        """Forget `task` without giving it back: its lease runs out and it runs again.

        For a task still running where it cannot be stopped (a thread, or code that ignores
        cancellation): giving it back would let another worker run it at the same time.
        """

    async def close(self) -> None:  # noqa: B027 - consumers without resources need nothing
        """Stop receiving and give back tasks that were received but not answered."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class StorageConsumer(Consumer):
    """Receives tasks from a `StorageBackend`.

    A delivery that cannot be decoded is dead-lettered with its reason and reported to
    `on_reject`, and receiving carries on with the next one.
    """

    def __init__(
        self,
        storage: StorageBackend,
        *,
        serializer: Serializer | None = None,
        queue: str = "default",
        clock: Clock = SYSTEM_CLOCK,
        consumer_id: str | None = None,
    ) -> None:
        self.storage = storage
        self.serializer = serializer or JSONSerializer()
        self.queue = check_queue(queue)
        self.clock = clock
        self.consumer_id = consumer_id or new_consumer_id()
        self._claims: dict[tuple[str, int], Claim] = {}
        self._watcher: Watcher | None = None
        self._background: set[asyncio.Task[bool]] = set()
        self._abandoned: set[asyncio.Future[list[Claim]]] = set()
        self._closed = False

    async def receive_batch(
        self, batch_size: int = 10, *, timeout: float | None = None
    ) -> list[Task]:
        """Lease up to `batch_size` tasks; see `Consumer.receive_batch`."""
        if self._closed:
            raise BrokerError("consumer is closed")
        if batch_size < 1:
            return []
        # Arm the watcher before the first empty check, so a task sent in between still
        # wakes this wait.
        if self._watcher is None:
            self._watcher = self.storage.watch()
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        while True:
            claims = await self._claim(batch_size)
            try:
                tasks = await self._decode_all(claims)
            except asyncio.CancelledError:
                # Decoding a large payload awaits a thread; claims cut off there would stay
                # leased to nobody until their leases ran out, each using up an attempt.
                self._give_back(claims)
                raise
            if tasks:
                return tasks
            if claims:
                continue
            wait_s = _IDLE_WAKE_S if deadline is None else deadline - self.clock.monotonic()
            if wait_s <= 0:
                return []
            await self._watcher.wait(min(wait_s, _IDLE_WAKE_S * 60))

    async def _claim(self, limit: int) -> list[Claim]:
        # A claim that commits after its caller was cancelled would strand its tasks until
        # their leases ran out. Shield it, and give such claims back once it finishes.
        pending = asyncio.ensure_future(self.storage.claim(limit, queue=self.queue))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            self._abandoned.add(pending)
            pending.add_done_callback(self._give_back_abandoned)
            raise

    def _give_back_abandoned(self, done: asyncio.Future[list[Claim]]) -> None:
        self._abandoned.discard(done)
        if done.cancelled() or done.exception() is not None:
            return
        self._give_back(done.result())

    def _give_back(self, claims: list[Claim]) -> None:
        """Release `claims` in the background without counting their attempts."""
        for claim in claims:
            self._claims.pop((claim.task_id, claim.attempt), None)
            job = asyncio.create_task(self.storage.release(claim, count_attempt=False))
            self._background.add(job)
            job.add_done_callback(self._background.discard)

    async def _decode_all(self, claims: list[Claim]) -> list[Task]:
        tasks = []
        fetched_at = datetime.fromtimestamp(self.clock.time(), UTC)
        for claim in claims:
            task = self._decode_now(claim, fetched_at)
            if task is None:
                task = await self._decode(claim, fetched_at)
            if task is not None:
                tasks.append(task)
        return tasks

    def _decode_now(self, claim: Claim, fetched_at: datetime) -> Task | None:
        # The usual delivery (a small payload that decodes to its own task, within its
        # attempts) is decoded here without a coroutine; anything else returns None and
        # takes `_decode`, which decodes it again and sets it aside with its reason.
        if len(claim.payload) > _DECODE_IN_THREAD_AT or claim.attempt > claim.max_attempts:
            return None
        try:
            task: object = self.serializer.deserialize(claim.payload)
        except Exception:  # noqa: BLE001 - `_decode` decodes it again and names the error
            return None
        if not isinstance(task, Task) or task.id != claim.task_id:
            return None
        return self._accept(task, claim, fetched_at)

    def _accept(self, task: Task, claim: Claim, fetched_at: datetime) -> Task:
        task.attempt = claim.attempt
        task.max_retries = claim.max_attempts - 1
        task.fetched_at = fetched_at
        self._claims[(task.id, task.attempt)] = claim
        return task

    async def _decode(self, claim: Claim, fetched_at: datetime) -> Task | None:
        try:
            task = await self._deserialize(claim.payload)
            if task.id != claim.task_id:
                raise SerializationError(f"payload holds task id {task.id[:80]!r}")
        except SerializationError as exc:
            await self._reject(claim, f"undecodable payload: {exc}")
            return None
        if claim.attempt > claim.max_attempts:
            # The storage hands out a task whose worker died during its last allowed attempt
            # once more, so that this outcome gets a result and a log line, not silence.
            reason = (
                f"lease expired on the last attempt ({claim.max_attempts} of "
                f"{claim.max_attempts}): the worker running it was lost"
            )
            await self._reject(claim, reason, name=task.name)
            return None
        return self._accept(task, claim, fetched_at)

    async def _deserialize(self, payload: bytes) -> Task:
        # Any exception a serializer raises is the payload's fault, not the worker's: one
        # escaping here would end the orchestrator's receive loop and leave the worker idle.
        try:
            if len(payload) > _DECODE_IN_THREAD_AT:
                task = await asyncio.to_thread(self.serializer.deserialize, payload)
            else:
                task = self.serializer.deserialize(payload)
        except SerializationError:
            raise
        except Exception as exc:  # noqa: BLE001 - see above; the reason names the type
            raise SerializationError(
                f"{type(exc).__name__} while decoding: {_first_line(exc)}"
            ) from None
        if not isinstance(task, Task):
            raise SerializationError(f"the serializer returned a {type(task).__name__}, not a Task")
        return task

    async def _reject(self, claim: Claim, reason: str, *, name: str | None = None) -> None:
        reason = storable_reason(reason)
        logger.error(
            "task %s set aside: %s",
            claim.task_id,
            one_line(reason),
            extra={"task_id": claim.task_id, "consumer_id": self.consumer_id},
        )
        await self.storage.bury(claim, reason=reason)
        if self.on_reject is not None:
            await self.on_reject(
                Rejected(
                    task_id=claim.task_id,
                    reason=reason,
                    attempt=min(claim.attempt, claim.max_attempts),
                    max_attempts=claim.max_attempts,
                    name=name,
                )
            )

    def _take(self, task: Task, operation: str) -> Claim:
        claim = self._claims.pop((task.id, task.attempt), None)
        if claim is None:
            raise LeaseLost(task_id=task.id, operation=operation)
        return claim

    async def ack(self, task: Task) -> None:
        """Remove the task from storage; see `Consumer.ack`."""
        claim = self._take(task, "ack")
        if not await self.storage.ack(claim):
            raise LeaseLost(task_id=task.id, operation="ack")

    async def nack(
        self,
        task: Task,
        requeue: bool = True,
        *,
        delay_s: float = 0.0,
        reason: str | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Give the task back; see `Consumer.nack`."""
        claim = self._take(task, "nack")
        if requeue:
            done = await self.storage.release(claim, delay_s=delay_s, count_attempt=count_attempt)
        else:
            reason = storable_reason(reason or "rejected by consumer")
            done = await self.storage.bury(claim, reason=reason)
        if not done:
            raise LeaseLost(task_id=task.id, operation="nack")

    def abandon(self, task: Task) -> None:
        """Forget the task's lease without releasing it; see `Consumer.abandon`."""
        self._claims.pop((task.id, task.attempt), None)

    async def renew(self, tasks: Sequence[Task]) -> list[Task]:
        """Extend the leases of `tasks`; returns (and forgets) those that were lost."""
        held = [t for t in tasks if (t.id, t.attempt) in self._claims]
        if not held:
            return []
        alive = await self.storage.renew([self._claims[(t.id, t.attempt)] for t in held])
        lost = [task for task, ok in zip(held, alive, strict=True) if not ok]
        for task in lost:
            self._claims.pop((task.id, task.attempt), None)
        return lost

    @property
    def renew_interval_s(self) -> float:
        """A third of the shortest lease held, so two renewals can fail before it runs out."""
        leases = [c.lease_s for c in self._claims.values()]
        return min(leases, default=self.storage.default_lease_s) / 3

    async def close(self) -> None:
        """Give back unanswered tasks (their attempt is not counted) and stop receiving."""
        if self._closed:
            return
        self._closed = True
        # Claims abandoned by a cancelled receive may still be committing; wait for them so
        # their tasks are given back before the storage can close.
        if self._abandoned:
            await asyncio.gather(*self._abandoned, return_exceptions=True)
        claims, self._claims = list(self._claims.values()), {}
        for claim in claims:
            await self.storage.release(claim, count_attempt=False)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.close()
