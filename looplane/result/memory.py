"""An in-process result backend for tests and throwaway runs; it keeps LMDB's promises.

Results are kept encoded, exactly as a persistent backend keeps them, so a value that could
not be stored there is refused here too, and every read hands out a fresh copy.

Expiry is amortized: results sit in one structure ordered by store time, which (with one time
to live) is also expiry order, so each store pops the expired ones from its front. The cost is
proportional to what expired, not to what is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

from looplane._clock import SYSTEM_CLOCK, Clock
from looplane.errors import StorageUnavailable
from looplane.result.base import (
    DEFAULT_RESULT_TTL_S,
    ResultBackend,
    TaskResult,
    check_limit,
    check_timeout,
    check_ttl,
    timeout_error,
)

__all__ = ["InMemoryResultBackend"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Stored:
    seq: int
    data: bytes
    expires_at: float
    """Wall-clock time the result stops being visible; infinity for never."""


class InMemoryResultBackend(ResultBackend):
    """Results in a dict, visible only to this process and its event loop.

    Args:
        ttl_s: Seconds a result stays readable after it is stored; None keeps it forever.
        clock: The wall clock that stamps and expires results.

    Raises:
        ConfigError: `ttl_s` is not a positive number of seconds or None.
    """

    name = "memory"

    def __init__(
        self, *, ttl_s: float | None = DEFAULT_RESULT_TTL_S, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        check_ttl(ttl_s)
        self.ttl_s = ttl_s
        self.clock = clock
        self._by_task: dict[str, dict[int, _Stored]] = {}
        self._order: OrderedDict[int, tuple[str, int]] = OrderedDict()
        self._seq = itertools.count(1)
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailable("memory result backend is closed", backend=self.name)

    async def store(self, result: TaskResult) -> None:
        """Keep `result` for the time to live, replacing an earlier store of the same attempt.

        Raises:
            SerializationError: The result's value cannot be encoded; nothing is stored.
            StorageUnavailable: The backend is closed.
        """
        self._check_open()
        data = result.to_bytes()
        now = self.clock.time()
        self._sweep(now)

        expires_at = math.inf if self.ttl_s is None else now + self.ttl_s
        stored = _Stored(seq=next(self._seq), data=data, expires_at=expires_at)
        attempts = self._by_task.setdefault(result.task_id, {})
        previous = attempts.pop(result.attempt, None)
        if previous is not None:
            del self._order[previous.seq]
        attempts[result.attempt] = stored
        self._order[stored.seq] = (result.task_id, result.attempt)

        for event in self._waiters.get(result.task_id, ()):
            event.set()

    async def results(self, *, limit: int | None = None) -> list[TaskResult]:
        """Every unexpired result, newest stored first (at most `limit`).

        Raises:
            ConfigError: `limit` is negative.
            StorageUnavailable: The backend is closed.
        """
        check_limit(limit)
        self._check_open()
        now = self.clock.time()
        self._sweep(now)
        found: list[TaskResult] = []
        for task_id, attempt in reversed(self._order.values()):
            if limit is not None and len(found) >= limit:
                break
            stored = self._by_task[task_id][attempt]
            if stored.expires_at > now:
                found.append(TaskResult.from_bytes(stored.data))
        return found

    async def get(self, task_id: str) -> TaskResult | None:
        """The unexpired result with the highest attempt number, or None.

        Raises:
            StorageUnavailable: The backend is closed.
        """
        self._check_open()
        return self._latest(task_id, self.clock.time())

    async def attempts(self, task_id: str) -> list[TaskResult]:
        """Every unexpired result of the task, first attempt first.

        Raises:
            StorageUnavailable: The backend is closed.
        """
        self._check_open()
        now = self.clock.time()
        self._sweep(now)
        attempts = self._by_task.get(task_id, {})
        return [
            TaskResult.from_bytes(attempts[number].data)
            for number in sorted(attempts)
            if attempts[number].expires_at > now
        ]

    async def wait(self, task_id: str, *, timeout: float = 30.0) -> TaskResult:
        """Wait for the task's final result (``will_retry=False``) and return it.

        A final result already stored returns at once; one stored at the deadline is still
        returned. Cancelling the wait is safe and leaves nothing behind.

        Raises:
            TaskTimeout: No final result arrived within `timeout` seconds.
            ConfigError: `timeout` is negative or not a number.
            StorageUnavailable: The backend is closed, before or during the wait.
        """
        check_timeout(timeout)
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        waiters = self._waiters.setdefault(task_id, set())
        waiters.add(event)
        try:
            while True:
                event.clear()
                self._check_open()
                result = self._latest(task_id, self.clock.time())
                if result is not None and result.is_final:
                    return result

                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise timeout_error(task_id, timeout)
                # On timeout, loop once more: a result stored at the deadline is returned.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(task_id) is waiters:
                del self._waiters[task_id]

    async def close(self) -> None:
        """Drop every result, refuse further calls and wake waiters, which then fail."""
        self._closed = True
        self._by_task.clear()
        self._order.clear()
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def _latest(self, task_id: str, now: float) -> TaskResult | None:
        self._sweep(now)
        attempts = self._by_task.get(task_id, {})
        live = [number for number, stored in attempts.items() if stored.expires_at > now]
        if not live:
            return None
        return TaskResult.from_bytes(attempts[max(live)].data)

    def _sweep(self, now: float) -> None:
        # Store order is expiry order while the wall clock moves forward, so expired results
        # are all at the front. If the clock stepped back, a few may linger behind a younger
        # one; reads filter on expiry, so they stay invisible until the sweep reaches them.
        purged = 0
        while self._order:
            task_id, attempt = next(iter(self._order.values()))
            attempts = self._by_task[task_id]
            if attempts[attempt].expires_at > now:
                break
            self._order.popitem(last=False)
            del attempts[attempt]
            if not attempts:
                del self._by_task[task_id]
            purged += 1
        if purged:
            logger.debug("purged expired results count=%d", purged)
