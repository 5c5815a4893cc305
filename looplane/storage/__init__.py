"""Storage backends: where tasks wait between `send` and `ack`."""

from looplane.storage.base import (
    Claim,
    DeadTask,
    NewTask,
    QueueCounts,
    StorageBackend,
    TaskInfo,
    TaskState,
    Watcher,
)
from looplane.storage.lmdb import LMDBStorage
from looplane.storage.memory import InMemoryStorage
from looplane.storage.redis import RedisStorage

__all__ = [
    "Claim",
    "DeadTask",
    "InMemoryStorage",
    "LMDBStorage",
    "NewTask",
    "QueueCounts",
    "RedisStorage",
    "StorageBackend",
    "TaskInfo",
    "TaskState",
    "Watcher",
]
