"""An in-process result backend for tests and throwaway runs; it keeps LMDB's promises.

Results are kept encoded, exactly as a persistent backend keeps them, so a value that could
not be stored there is refused here too, and every read hands out a fresh copy.

Expiry is amortized: results sit in one structure ordered by store time, which (with one time
to live) is also expiry order, so each store pops the expired ones from its front. The cost is
proportional to what expired, not to what is stored.

Each stored result is a plain tuple of atomic values (numbers and bytes), and so are the
per-task groups of them: the garbage collector stops tracking such tuples, so a backend
holding a day of results does not make every collection of the process walk them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import OrderedDict
from typing import Final

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


_Stored = tuple[int, int, bytes, float]
"""One stored result: its attempt number, store sequence number, encoded bytes and the
wall-clock time it stops being visible (infinity for never)."""
_ATTEMPT: Final = 0
_SEQ: Final = 1
_DATA: Final = 2
_EXPIRES_AT: Final = 3


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
        self._by_task: dict[str, tuple[_Stored, ...]] = {}
        """Each task's stored results, in attempt order."""
        self._order: OrderedDict[int, tuple[str, int]] = OrderedDict()
        self._seq = itertools.count(1)
        self._sweep_at = -math.inf
        """No result expires before this wall-clock time (the front's expiry at the last sweep)."""
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
        if now >= self._sweep_at:
            self._sweep(now)

        expires_at = math.inf if self.ttl_s is None else now + self.ttl_s
        seq = next(self._seq)
        stored = (result.attempt, seq, data, expires_at)
        attempts = self._by_task.get(result.task_id)
        if attempts is None:
            self._by_task[result.task_id] = (stored,)
        else:
            self._by_task[result.task_id] = self._replace(attempts, stored)
        self._order[seq] = (result.task_id, result.attempt)

        for event in self._waiters.get(result.task_id, ()):
            event.set()

    def _replace(self, attempts: tuple[_Stored, ...], stored: _Stored) -> tuple[_Stored, ...]:
        # A store of an attempt already stored replaces it; the others stay in attempt order.
        for previous in attempts:
            if previous[_ATTEMPT] == stored[_ATTEMPT]:
                del self._order[previous[_SEQ]]
        kept = [item for item in attempts if item[_ATTEMPT] != stored[_ATTEMPT]]
        kept.append(stored)
        kept.sort(key=_attempt_number)
        return tuple(kept)

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
            stored = _find(self._by_task[task_id], attempt)
            if stored[_EXPIRES_AT] > now:
                found.append(TaskResult.from_bytes(stored[_DATA]))
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
        return [
            TaskResult.from_bytes(stored[_DATA])
            for stored in self._by_task.get(task_id, ())
            if stored[_EXPIRES_AT] > now
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
        live = [stored for stored in self._by_task.get(task_id, ()) if stored[_EXPIRES_AT] > now]
        if not live:
            return None
        return TaskResult.from_bytes(live[-1][_DATA])

    def _sweep(self, now: float) -> None:
        # Store order is expiry order while the wall clock moves forward, so expired results
        # are all at the front. If the clock stepped back, a few may linger behind a younger
        # one; reads filter on expiry, so they stay invisible until the sweep reaches them.
        # So nothing is purged before the front's expiry, and most sweeps stop at this one
        # comparison instead of looking at the front.
        if now < self._sweep_at:
            return
        purged = 0
        self._sweep_at = -math.inf
        while self._order:
            task_id, attempt = next(iter(self._order.values()))
            attempts = self._by_task[task_id]
            expires_at = _find(attempts, attempt)[_EXPIRES_AT]
            if expires_at > now:
                self._sweep_at = expires_at
                break
            self._order.popitem(last=False)
            left = tuple(item for item in attempts if item[_ATTEMPT] != attempt)
            if left:
                self._by_task[task_id] = left
            else:
                del self._by_task[task_id]
            purged += 1
        if purged:
            logger.debug("purged expired results count=%d", purged)


def _attempt_number(stored: _Stored) -> int:
    return stored[_ATTEMPT]


def _find(attempts: tuple[_Stored, ...], attempt: int) -> _Stored:
    for stored in attempts:
        if stored[_ATTEMPT] == attempt:
            return stored
    raise AssertionError(  # pragma: no cover - the store order and the groups change together
        f"attempt {attempt} is in the store order but not stored"
    )
