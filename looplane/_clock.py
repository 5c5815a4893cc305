"""Clocks. Components take a `Clock` so tests can drive time instead of sleeping.

Leases and retry delays are measured on the machine's boot clock (``CLOCK_BOOTTIME``): every
process on the host shares it, and it never jumps when NTP or a user sets the wall clock
(https://github.com/python-arq/arq/pull/185 shows what wall-clock delays get wrong). Storage
that outlives a reboot notices the new boot id and treats old leases as expired and old delays
as due. Timestamps shown to users (results, dead letters) are wall-clock.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock"]

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


class Clock:
    """The real clocks."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock shared by all processes of this host that never goes back."""
        if _BOOTTIME is not None:
            return time.clock_gettime(_BOOTTIME)
        return time.monotonic()  # pragma: no cover - platforms without CLOCK_BOOTTIME

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds`."""
        await asyncio.sleep(seconds)


class FakeClock(Clock):
    """A clock that moves only when told to; `sleep` returns at once after advancing it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 1_000.0

    def time(self) -> float:
        """The fake wall-clock time."""
        return self._wall

    def monotonic(self) -> float:
        """The fake boot-clock time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        self._wall += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance by `seconds` and yield once to the loop."""
        self.advance(seconds)
        await asyncio.sleep(0)


SYSTEM_CLOCK = Clock()
