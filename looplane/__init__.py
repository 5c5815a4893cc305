"""Looplane: an async-first, local-first task queue.

Register functions with `register_task`, send calls of them with a producer, and run them
with an `Orchestrator`. Tasks wait in embedded LMDB by default, so no server is needed.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from looplane._clock import Clock, FakeClock
from looplane.broker import (
    Consumer,
    JSONSerializer,
    Producer,
    Serializer,
    StorageConsumer,
    StorageProducer,
)
from looplane.errors import (
    AppImportError,
    BrokerError,
    Cancel,
    ConfigError,
    InvalidArguments,
    LeaseLost,
    LooplaneDeprecationWarning,
    LooplaneError,
    LooplaneWarning,
    RetriesExhausted,
    Retry,
    SerializationError,
    StorageError,
    StorageFull,
    StorageUnavailable,
    TaskError,
    TaskNotFound,
    TaskTimeout,
)
from looplane.factory import from_config
from looplane.orchestrator import Orchestrator
from looplane.result import InMemoryResultBackend, LMDBResultBackend, ResultBackend, TaskResult
from looplane.storage import InMemoryStorage, LMDBStorage, StorageBackend
from looplane.task import Backoff, BackoffKind, Task, TaskContext, current_task, register_task

# A library leaves handlers to the application; without this, Python's last-resort handler
# would print Looplane's warnings to stderr in programs that never configured logging.
logging.getLogger("looplane").addHandler(logging.NullHandler())

try:
    __version__ = version("looplane")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AppImportError",
    "Backoff",
    "BackoffKind",
    "BrokerError",
    "Cancel",
    "Clock",
    "ConfigError",
    "Consumer",
    "FakeClock",
    "InMemoryResultBackend",
    "InMemoryStorage",
    "InvalidArguments",
    "JSONSerializer",
    "LMDBResultBackend",
    "LMDBStorage",
    "LeaseLost",
    "LooplaneDeprecationWarning",
    "LooplaneError",
    "LooplaneWarning",
    "Orchestrator",
    "Producer",
    "ResultBackend",
    "RetriesExhausted",
    "Retry",
    "SerializationError",
    "Serializer",
    "StorageBackend",
    "StorageConsumer",
    "StorageError",
    "StorageFull",
    "StorageProducer",
    "StorageUnavailable",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskNotFound",
    "TaskResult",
    "TaskTimeout",
    "__version__",
    "current_task",
    "from_config",
    "register_task",
]
