"""What every system in the side-by-side benchmark provides (`benchmarks/compare.py`).

One `System` is one queue on one storage (``huey-sqlite``, ``looplane-redis``). The runner
calls each workload in a fresh interpreter, so a system may keep module-level state, but it
must leave no worker process behind and must clean its storage in `cleanup`.

Every workload runs a no-op ``async def`` task (a plain ``def`` where the system has no async
tasks) that returns a small value, so that every system stores a result for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

WORKLOADS = ("enqueue", "drain", "pickup", "growth")


class System(ABC):
    """One queue system on one storage, driven through its public API only."""

    name: ClassVar[str]
    """Unique id used on the command line and in the report, e.g. ``huey-sqlite``."""

    family: ClassVar[str]
    """The project, e.g. ``huey``; ``looplane`` for our own systems."""

    storage: ClassVar[str]
    """``memory``, ``sqlite``, ``lmdb``, ``lmdb-relaxed`` or ``redis``."""

    cross_process: ClassVar[bool]
    """True when a worker in another process can serve the queue (not for in-memory brokers).

    Without it, `drain` runs the worker in the calling process and ``processes`` must be 1,
    and `pickup` is skipped.
    """

    keeps_backlog: ClassVar[bool] = False
    """True when `drain` tops up a growth backlog left by an earlier call instead of writing it.

    A backlog of 1,000,000 tasks takes minutes to write, so for such systems the runner keeps
    the work dir and the Redis database between the repetitions of one backlog size (no flush,
    no `cleanup`), and `drain` writes only the backlog tasks missing, and must not count the
    results of earlier calls as its own. Systems that keep nothing leave it False: the runner
    then cleans up before every call, as for the other workloads.
    """

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this system cannot run here (an option its installed version lacks), or None.

        A missing package needs nothing here: a module whose import fails is skipped whole,
        with the error as the reason.
        """
        return None

    def __init__(self, *, workdir: str, redis_url: str) -> None:
        # workdir: an empty directory of this system's own (SQLite or LMDB files go there).
        # redis_url: a Redis database of this system's own (e.g. redis://127.0.0.1:6379/3),
        # flushed before and after each workload; systems on other storage ignore it.
        self.workdir = workdir
        self.redis_url = redis_url

    @abstractmethod
    def info(self) -> dict[str, str]:
        """Versions and settings that decide the figures (driver, journal mode, sync level)."""

    @abstractmethod
    def enqueue(self, count: int, *, batched: bool) -> float:
        """Send `count` no-op tasks with no worker running; return the seconds it took.

        ``batched`` uses the system's own way of sending many at once (a batch or pipeline
        API); a system without one raises `NotImplementedError`.
        """

    @abstractmethod
    def drain(self, count: int, *, concurrency: int, processes: int, backlog: int = 0) -> float:
        """Seconds from the first send of `count` no-op tasks to the last stored result.

        Worker processes (`processes` of them, each at `concurrency`) are started and ready
        before the clock starts. Tasks are sent the fastest public way (batched if the system
        can). ``backlog`` tasks wait beforehand in the same storage, in a second queue that no
        worker reads (the cost-growth workload); they are written before the clock starts.
        """

    @abstractmethod
    def pickup(self, *, rate_per_s: float, duration_s: float) -> list[float]:
        """Latencies in ms from send to task start, sending at a steady `rate_per_s`.

        The producer is the calling process; one worker runs in another process. The task gets
        its send time (``time.time()``) as an argument and records ``time.time()`` at its
        start, e.g. appending to a file named by the workload.
        """

    def cleanup(self) -> None:  # noqa: B027 - systems without resources need nothing
        """Remove what the workload left: files, Redis keys, worker processes."""
