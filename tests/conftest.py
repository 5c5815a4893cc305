"""Fixtures shared by every test package: storage backends, a fake clock, a deadline poller."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, cast

import pytest

from looplane._clock import SYSTEM_CLOCK, Clock, FakeClock
from looplane.storage import InMemoryStorage, LMDBStorage, StorageBackend
from tests._rig import Register, Registrar, Rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

BACKENDS = [pytest.param("memory", id="memory"), pytest.param("lmdb", id="lmdb")]


def open_test_storage(kind: str, tmp_path: Path, *, clock: Clock = SYSTEM_CLOCK) -> StorageBackend:
    """A fresh, empty storage of `kind` ("memory" or "lmdb"); LMDB lives at ``tmp_path/db``."""
    if kind == "memory":
        return InMemoryStorage(clock=clock)
    if kind == "lmdb":
        return LMDBStorage(tmp_path / "db", clock=clock)
    raise ValueError(f"unknown storage kind {kind!r}")


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    """Each storage backend on the real clocks, closed at teardown."""
    async with open_test_storage(request.param, tmp_path) as backend:
        yield backend


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only on `advance`; `fake_storage` runs on it."""
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def fake_storage(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StorageBackend]:
    """Each storage backend on `clock`, so tests expire leases and make delays due by advancing.

    Leases are measured on ``clock.monotonic()`` and delays on ``clock.time()``;
    ``clock.advance`` moves both.
    """
    async with open_test_storage(request.param, tmp_path, clock=clock) as backend:
        yield backend


async def eventually(
    predicate: Callable[[], object], timeout: float = 10, interval: float = 0.02
) -> object:
    """Poll `predicate` until it passes, and return what it returned.

    Only for state that changes in another process, where there is no event to await.
    `predicate` (a function or coroutine function) passes when it returns without failing an
    `assert` and its result is None or truthy: it may assert (pytest then shows the values it
    compared) or return a bool.

    Raises:
        AssertionError: `timeout` seconds passed; the message shows the last state seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
        except AssertionError as exc:
            failure, result = exc, None
        if failure is None and (result is None or result):
            return result
        if time.monotonic() >= deadline:
            seen = failure if failure is not None else repr(result)
            raise AssertionError(f"not true within {timeout} s; last seen: {seen}") from failure
        await asyncio.sleep(interval)


@pytest.fixture(params=BACKENDS)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    """A storage, results and producer on memory or on LMDB."""
    opened = Rig.open(request.param, tmp_path)
    yield opened
    await opened.close()


@pytest.fixture
def tasks() -> Iterator[Register]:
    """Registers task functions for one test and removes them afterwards."""
    registrar = Registrar()
    yield cast("Register", registrar)
    registrar.clear()
