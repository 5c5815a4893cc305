"""Backends as a third party would write them, loaded by import path in the factory tests.

Each subclasses a Looplane base and takes an option Looplane knows nothing about.
"""

from __future__ import annotations

from typing import Any

from looplane import InMemoryResultBackend, InMemoryStorage, JSONSerializer, Task
from looplane.storage.base import StorageBackend

NOT_A_CLASS = 42


class TaggedStorage(InMemoryStorage):
    """In-memory storage that remembers a `tag` option and an optional URL."""

    name = "tagged"

    def __init__(self, *, tag: str, url: str | None = None, lease_s: float = 30.0) -> None:
        super().__init__(lease_s=lease_s)
        self.tag = tag
        self.url = url
        self.close_calls = 0

    async def close(self) -> None:
        self.close_calls += 1
        await super().close()


class TaggedResults(InMemoryResultBackend):
    """In-memory results with a `label` option."""

    def __init__(self, *, label: str = "results", url: str | None = None) -> None:
        super().__init__()
        self.label = label
        self.url = url


class CountingSerializer(JSONSerializer):
    """JSON that counts the tasks it encodes; `start` sets the first count."""

    def __init__(self, *, start: int = 0) -> None:
        super().__init__()
        self.encoded = start

    def serialize(self, task: Task) -> bytes:
        self.encoded += 1
        return super().serialize(task)


class NotABackend:
    """A class that subclasses no Looplane base."""

    def __init__(self, **options: Any) -> None:
        self.options = options


class HalfStorage(StorageBackend):
    """A storage that forgot to implement the interface."""


class ConnectingStorage(InMemoryStorage):
    """Storage whose constructor fails the way a driver does, quoting its URL."""

    def __init__(self, *, url: str) -> None:
        raise ConnectionError(f"cannot connect to {url}")


class BrittleStorage(TaggedStorage):
    """Tagged storage whose close fails."""

    async def close(self) -> None:
        await super().close()
        raise OSError("disk went away")
