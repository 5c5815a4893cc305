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

__all__ = [
    "Claim",
    "DeadTask",
    "InMemoryStorage",
    "LMDBStorage",
    "NewTask",
    "QueueCounts",
    "StorageBackend",
    "TaskInfo",
    "TaskState",
    "Watcher",
]
