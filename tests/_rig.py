"""Shared test helpers: a storage + results + producer rig, task registration, waiting."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from looplane.broker import StorageConsumer, StorageProducer
from looplane.orchestrator import Orchestrator
from looplane.result import (
    InMemoryResultBackend,
    LMDBResultBackend,
    RedisResultBackend,
    ResultBackend,
    TaskResult,
)
from looplane.storage import InMemoryStorage, LMDBStorage, RedisStorage, StorageBackend
from looplane.task import Task, register_task, registry

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Rig:
    """A storage, a result backend on the same kind, and a producer for it."""

    storage: StorageBackend
    results: ResultBackend
    producer: StorageProducer

    redis_url: str | None = None
    redis_prefix: str | None = None

    @classmethod
    def open(cls, kind: str, tmp_path: Path, *, redis_url: str | None = None) -> Rig:
        storage: StorageBackend
        results: ResultBackend
        if kind == "memory":
            storage, results = InMemoryStorage(), InMemoryResultBackend()
        elif kind == "lmdb":
            storage, results = LMDBStorage(tmp_path / "db"), LMDBResultBackend(tmp_path / "db")
        else:
            assert redis_url, "LOOPLANE_TEST_REDIS_URL is not set"
            prefix = f"lqtest-{uuid.uuid4().hex[:12]}"
            storage = RedisStorage(redis_url, queue_prefix=prefix)
            results = RedisResultBackend(redis_url, prefix=prefix)
            return cls(storage, results, StorageProducer(storage), redis_url, prefix)
        return cls(storage, results, StorageProducer(storage))

    async def close(self) -> None:
        await self.storage.close()
        await self.results.close()
        if self.redis_url and self.redis_prefix:
            await drop_redis_prefix(self.redis_url, self.redis_prefix)

    def orchestrator(self, concurrency: int = 10, **options: Any) -> Orchestrator:
        return Orchestrator(StorageConsumer(self.storage), self.results, concurrency, **options)

    async def outcome(self, task: Task, timeout: float = 10.0) -> TaskResult:
        return await self.results.wait(task.id, timeout=timeout)


class Register(Protocol):
    """Registers a task function for one test (bare or with options)."""

    @overload
    def __call__(self, func: F, /) -> F: ...

    @overload
    def __call__(self, **options: Any) -> Callable[[F], F]: ...


class Registrar:
    """Registers task functions named ``test.<function>`` and forgets them on `clear`."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, func: Callable[..., Any] | None = None, **options: Any) -> Any:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            options.setdefault("name", f"test.{fn.__name__}")
            self.names.append(options["name"])
            return register_task(**options)(fn)

        return decorate(func) if func is not None else decorate

    def clear(self) -> None:
        for name in self.names:
            registry.remove(name)


async def drop_redis_prefix(url: str, prefix: str) -> None:
    """Delete every key of a test's Redis prefix (results put a hash tag around it)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        for pattern in (f"{prefix}:*", f"{{{prefix}}}:*"):
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Wait, yielding to the loop, until `predicate()` is true; fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def until_async(probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait until the coroutine `probe()` returns something truthy, and return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (seen := await probe()):
        assert asyncio.get_running_loop().time() < deadline, f"last seen: {seen!r}"
        await asyncio.sleep(0.005)
    return seen


async def run_until(orchestrator: Orchestrator, awaitable: Any) -> Any:
    """Run `orchestrator` until `awaitable` completes; return its value."""
    await orchestrator.start()
    try:
        return await awaitable
    finally:
        await orchestrator.stop()


@contextmanager
def isolated_cli_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, app_modules: frozenset[str]
) -> Iterator[Path]:
    """Run in an empty directory without LOOPLANE_* variables; restore the registry after.

    The CLI imports app modules in-process, so task functions they register, `sys.path`
    entries and the modules named in `app_modules` or loaded from `tmp_path` are undone.
    Yields the working directory.
    """
    for name in [k for k in os.environ if k.startswith("LOOPLANE_")]:
        monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = {entry.name for entry in registry}
    modules = set(sys.modules)
    yield work
    for entry in list(registry):
        if entry.name not in names:
            registry.remove(entry.name)
    for module in set(sys.modules) - modules:
        origin = str(getattr(sys.modules[module], "__file__", ""))
        if module in app_modules or origin.startswith(str(tmp_path)):
            del sys.modules[module]
