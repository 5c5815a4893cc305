"""Coalescing for the Redis backends: calls made together share one round trip.

Why: on Redis the fixed cost of a call (a round trip, a pooled connection, the client's
bookkeeping on both ends) dwarfs the work of one task's ack or result store. An orchestrator
finishes many tasks in the same event-loop iteration, so their calls arrive together; queued
here, they go out as one script call that serves them all, and each caller gets its own
answer. Calls that arrive while a round trip is under way wait for the next one, so the
busier the worker, the larger the batches (group commit), while a lone call still leaves
in the next loop iteration.

`InFlight` counts the calls under way on a backend's clients, so that `close` closes the
connections last: a call that passed the backend's open check may still be connecting, or
reconnecting after a dropped connection, and a connection it opens after its pool was closed
would never be closed (its socket leaks until the garbage collector finds it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["Batcher", "InFlight"]

ItemT = TypeVar("ItemT")
AnswerT = TypeVar("AnswerT")


class Batcher(Generic[ItemT, AnswerT]):
    """Gathers submitted items and hands them to `flush` in batches.

    `flush` gets a list of items and returns one answer per item, in order; an exception it
    raises is raised to every caller of that batch. At most `max_in_flight` flushes run at
    once and each takes at most `max_batch` items.
    """

    def __init__(
        self,
        flush: Callable[[list[ItemT]], Awaitable[Sequence[AnswerT]]],
        *,
        max_batch: int = 256,
        max_in_flight: int = 2,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[ItemT, asyncio.Future[AnswerT]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def submit(self, item: ItemT) -> AnswerT:
        """Queue `item` for the next flush and return its answer.

        If cancelled before its flush starts, the item is dropped unsent; once the flush has
        started, it runs to the end regardless.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AnswerT] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled and len(self._in_flight) < self._max_in_flight:
            # Started on the next loop iteration, so that every call made in this one joins.
            self._scheduled = True
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and len(self._in_flight) < self._max_in_flight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            # A caller cancelled while its item waited gave it up: it is not sent.
            batch = [(item, future) for item, future in batch if not future.done()]
            if batch:
                flush = asyncio.ensure_future(self._run(batch))
                self._in_flight.add(flush)
                flush.add_done_callback(self._finished)

    def _finished(self, flush: asyncio.Task[None]) -> None:
        self._in_flight.discard(flush)
        if self._pending and not self._scheduled:
            self._start()

    async def _run(self, batch: list[tuple[ItemT, asyncio.Future[AnswerT]]]) -> None:
        try:
            answers = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            # Only the loop shutting down cancels a flush: its callers end cancelled too.
            for _, future in batch:
                future.cancel()
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)

    async def drain(self) -> None:
        """Send everything queued and wait for every flush under way to end."""
        while self._pending or self._in_flight:
            if self._pending and not self._scheduled:
                self._start()
            if self._in_flight:
                await asyncio.wait(set(self._in_flight))
            else:
                # Every pending item was cancelled, or a start is already scheduled.
                await asyncio.sleep(0)


class InFlight:
    """Counts the calls under way on a backend's clients; `settle` waits for them to end.

    A backend calls `enter` right after its open check (with no await in between), and
    `leave` when the call ends. Once `settle` returns, `close` sets `shut` and closes the
    pools; from then on `leave` tells the last call to end to close the pools again, for
    whatever connection that call opened after `settle` gave up waiting.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.shut = False

    def enter(self) -> None:
        """Count one call as under way."""
        self._count += 1
        self._idle.clear()

    def leave(self) -> bool:
        """Count one call as ended; True if it was the last and the pools are already closed."""
        self._count -= 1
        if self._count:
            return False
        self._idle.set()
        return self.shut

    async def settle(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for every call under way to end."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
