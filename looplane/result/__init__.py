"""Result backends: the outcome of every attempt, kept for a time to live."""

from looplane.result.base import DEFAULT_RESULT_TTL_S, ResultBackend, TaskResult
from looplane.result.lmdb import LMDBResultBackend
from looplane.result.memory import InMemoryResultBackend
from looplane.result.redis import RedisResultBackend

__all__ = [
    "DEFAULT_RESULT_TTL_S",
    "InMemoryResultBackend",
    "LMDBResultBackend",
    "RedisResultBackend",
    "ResultBackend",
    "TaskResult",
]
