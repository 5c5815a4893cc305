"""Fixtures shared by every test package: storage backends, a fake clock, a deadline poller."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from typing import TYPE_CHECKING, cast

import pytest

from looplane._clock import SYSTEM_CLOCK, Clock, FakeClock
from looplane.storage import InMemoryStorage, LMDBStorage, StorageBackend
from looplane.storage.redis import RedisStorage
from tests._rig import Register, Registrar, Rig, drop_redis_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

REDIS_URL = os.environ.get("LOOPLANE_TEST_REDIS_URL")
"""The Redis server for `redis`-marked tests; they skip without it."""

REDIS_MARKS = [
    pytest.mark.redis,
    pytest.mark.skipif(not REDIS_URL, reason="LOOPLANE_TEST_REDIS_URL is not set"),
]

STORAGE_BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("lmdb", id="lmdb"),
    pytest.param("redis", id="redis", marks=REDIS_MARKS),
]

BACKENDS = [pytest.param("memory", id="memory"), pytest.param("lmdb", id="lmdb")]


def open_test_storage(kind: str, tmp_path: Path, *, clock: Clock = SYSTEM_CLOCK) -> StorageBackend:
    """A fresh, empty storage of `kind` ("memory", "lmdb" or "redis").

    LMDB lives at ``tmp_path/db``; Redis storage gets a key prefix of its own, which
    `drop_test_storage` deletes.
    """
    if kind == "memory":
        return InMemoryStorage(clock=clock)
    if kind == "lmdb":
        return LMDBStorage(tmp_path / "db", clock=clock)
    if kind == "redis":
        assert REDIS_URL, "LOOPLANE_TEST_REDIS_URL is not set"
        return RedisStorage(REDIS_URL, queue_prefix=f"lqtest-{uuid.uuid4().hex}", clock=clock)
    raise ValueError(f"unknown storage kind {kind!r}")


async def drop_test_storage(backend: StorageBackend) -> None:
    """Delete what a test storage left on a server (the keys of a Redis storage's prefix)."""
    if isinstance(backend, RedisStorage):
        await drop_redis_prefix(backend.url, backend.queue_prefix)


@pytest.fixture(params=STORAGE_BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    """Each storage backend on the real clocks, closed (and its keys deleted) at teardown."""
    backend = open_test_storage(request.param, tmp_path)
    try:
        async with backend:
            yield backend
    finally:
        await drop_test_storage(backend)


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only on `advance`; `fake_storage` runs on it."""
    return FakeClock()


@pytest.fixture(params=STORAGE_BACKENDS)
async def fake_storage(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StorageBackend]:
    """Each storage backend on `clock`, so tests expire leases and make delays due by advancing.

    Leases are measured on ``clock.monotonic()`` and delays on ``clock.time()``;
    ``clock.advance`` moves both.
    """
    backend = open_test_storage(request.param, tmp_path, clock=clock)
    try:
        async with backend:
            yield backend
    finally:
        await drop_test_storage(backend)


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


@pytest.fixture(params=STORAGE_BACKENDS)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    """A storage, results and producer on memory, LMDB or Redis."""
    opened = Rig.open(request.param, tmp_path, redis_url=REDIS_URL)
    yield opened
    await opened.close()


@pytest.fixture
def tasks() -> Iterator[Register]:
    """Registers task functions for one test and removes them afterwards."""
    registrar = Registrar()
    yield cast("Register", registrar)
    registrar.clear()
