"""What the monitor shows, read in one go: counts and one row per task, newest first.

A task lives in two places. While it waits or runs, storage holds it (with its payload and
state); once it is acked, only its results remain. So a snapshot lists storage's tasks,
then the result backend's results, and merges them by task id: storage decides the state of
a task it still holds, the latest result supplies times and the outcome, and a task that
storage no longer holds is finished, succeeded or failed by its latest result.

Storage is read before the results. A task that finishes between the two reads then shows
its final result rather than vanishing for a refresh: a leased task whose current attempt
already has a final result is shown as finished.

Every read is short: LMDB answers in threads, with read transactions that never hold up a
worker in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from looplane.storage.base import TaskState

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from looplane.broker.serializer import Serializer
    from looplane.factory import App
    from looplane.result.base import ResultBackend, TaskResult
    from looplane.storage.base import QueueCounts, StorageBackend, TaskInfo

__all__ = [
    "DEFAULT_MAX_RESULTS",
    "DEFAULT_MAX_TASKS",
    "UNDECODABLE",
    "Counts",
    "MonitorSource",
    "Row",
    "Snapshot",
    "SnapshotReader",
    "Status",
]

# Limitation: each refresh lists at most the newest DEFAULT_MAX_TASKS stored tasks and reads
# the newest DEFAULT_MAX_RESULTS results, so on a long or busy queue older tasks are counted
# in the header but not listed, and the succeeded and failed counts cover only the results
# read (the screen marks them with "+"). Reading 5000 results costs about 0.1 s of CPU per
# refresh, most of it decoding them on the event loop inside `ResultBackend.results`.
# Lifted by: a ResultBackend call that counts final outcomes and lists results stored since
# a sequence number, so a refresh reads only what changed.
DEFAULT_MAX_TASKS = 2000
"""Stored tasks listed per refresh, newest first; older waiting tasks are counted, not listed."""

DEFAULT_MAX_RESULTS = 5000
"""Results read per refresh, newest first; older ones are neither listed nor counted."""

UNDECODABLE = "<undecodable>"
"""The task name shown for a payload that the serializer cannot decode."""


class Status(StrEnum):
    """A task's status as the monitor shows it; the header counts the same words."""

    QUEUED = "queued"
    RUNNING = "running"
    DELAYED = "delayed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead-lettered"


_STATUS_OF_STATE = {
    TaskState.READY: Status.QUEUED,
    TaskState.LEASED: Status.RUNNING,
    TaskState.DELAYED: Status.DELAYED,
    TaskState.DEAD: Status.DEAD,
}


@dataclass(frozen=True, slots=True)
class MonitorSource:
    """The backends a monitor reads, and how to name them in its header."""

    storage: StorageBackend
    result_backend: ResultBackend
    serializer: Serializer
    label: str = ""

    @classmethod
    def of(cls, app: App) -> MonitorSource:
        """The backends of a built `App`, labelled with the storage's name and path."""
        path = getattr(app.storage, "path", None)
        label = app.storage.name if path is None else f"{app.storage.name} {path}"
        return cls(app.storage, app.result_backend, app.serializer, label)


@dataclass(frozen=True, slots=True)
class Counts:
    """The header's numbers.

    The first four are storage's own counts. ``succeeded`` and ``failed`` count the tasks
    whose latest result is final, among the results read.
    """

    queued: int = 0
    running: int = 0
    delayed: int = 0
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """One task on screen.

    Attributes:
        task_id: The task's id.
        name: The task function's name; `UNDECODABLE` if the payload cannot be decoded.
        status: Where the task stands.
        attempt: Attempts started so far (0 for a task that has not run yet).
        max_attempts: Attempts it may use in all.
        sent_at: When it was sent, as epoch seconds; rows are ordered by it, newest first.
        result: The result of attempt `attempt`, if one is stored (a running attempt has
            none yet).
        note: Why a dead-lettered task was set aside, when no result says more.
    """

    task_id: str
    name: str
    status: Status
    attempt: int
    max_attempts: int
    sent_at: float
    result: TaskResult | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one refresh shows.

    Attributes:
        counts: The header's numbers.
        rows: Every task listed, newest first.
        taken_at: When the reads began (local time).
        truncated: True if a read stopped at its limit, so `rows` (and the succeeded and
            failed counts) cover only the newest tasks and results.
    """

    counts: Counts
    rows: tuple[Row, ...]
    taken_at: datetime
    truncated: bool = False


class SnapshotReader:
    """Reads snapshots of one source; remembers decoded task names between reads.

    A payload never changes once stored, so each task's payload is decoded once, in a
    thread (a large payload would otherwise pause the event loop), and its name kept for
    as long as the task is listed.
    """

    def __init__(
        self,
        source: MonitorSource,
        *,
        max_tasks: int = DEFAULT_MAX_TASKS,
        max_results: int = DEFAULT_MAX_RESULTS,
    ) -> None:
        self.source = source
        self.max_tasks = max_tasks
        self.max_results = max_results
        self._names: dict[str, str] = {}

    async def read(self) -> Snapshot:
        """Read counts, stored tasks and results, and merge them.

        Raises:
            StorageError: A backend failed to answer (`StorageUnavailable` once closed).
        """
        taken_at = datetime.now().astimezone()
        storage = self.source.storage
        queue_counts, infos = await asyncio.gather(
            storage.counts(), storage.tasks(limit=self.max_tasks)
        )
        results = await self.source.result_backend.results(limit=self.max_results)
        names = await self._decode_names(infos)
        latest = _latest_results(results)
        rows = _merge(infos, names, latest)
        truncated = len(infos) >= self.max_tasks or len(results) >= self.max_results
        counts = _counts(queue_counts, latest.values())
        return Snapshot(counts, rows, taken_at, truncated)

    async def _decode_names(self, infos: Sequence[TaskInfo]) -> dict[str, str]:
        known = {
            info.task_id: self._names[info.task_id] for info in infos if info.task_id in self._names
        }
        fresh = [info for info in infos if info.task_id not in known]
        if fresh:
            decoded = await asyncio.to_thread(_names_of, self.source.serializer, fresh)
            known.update(decoded)
        self._names = known
        return known


def _names_of(serializer: Serializer, infos: Iterable[TaskInfo]) -> dict[str, str]:
    return {info.task_id: _name_of(serializer, info.payload) for info in infos}


def _name_of(serializer: Serializer, payload: bytes) -> str:
    try:
        return serializer.deserialize(payload).name
    except Exception:  # noqa: BLE001 - foreign bytes may break a third-party serializer any way
        return UNDECODABLE


def _latest_results(results: Iterable[TaskResult]) -> dict[str, TaskResult]:
    """Each task's result with the highest attempt number."""
    latest: dict[str, TaskResult] = {}
    for result in results:
        seen = latest.get(result.task_id)
        if seen is None or result.attempt > seen.attempt:
            latest[result.task_id] = result
    return latest


def _counts(queue: QueueCounts, latest: Iterable[TaskResult]) -> Counts:
    final = [result for result in latest if result.is_final]
    succeeded = sum(1 for result in final if result.success)
    return Counts(
        queued=queue.ready,
        running=queue.leased,
        delayed=queue.delayed,
        succeeded=succeeded,
        failed=len(final) - succeeded,
        dead_lettered=queue.dead,
    )


def _merge(
    infos: Iterable[TaskInfo], names: Mapping[str, str], latest: Mapping[str, TaskResult]
) -> tuple[Row, ...]:
    stored = [_stored_row(info, names[info.task_id], latest) for info in infos]
    held = {row.task_id for row in stored}
    finished = sorted(
        (_finished_row(result) for task_id, result in latest.items() if task_id not in held),
        key=lambda row: row.task_id,
        reverse=True,
    )
    # Storage lists its tasks newest first, more exactly than the millisecond times say
    # (memory storage knows the order of a batch); the sort is stable, so ties keep it.
    return tuple(sorted([*stored, *finished], key=lambda row: row.sent_at, reverse=True))


def _stored_row(info: TaskInfo, name: str, latest: Mapping[str, TaskResult]) -> Row:
    status = _STATUS_OF_STATE[info.state]
    result = latest.get(info.task_id)
    if result is not None and result.attempt != info.attempts:
        # A result of an earlier attempt says nothing about the attempt now running.
        # Limitation: so a running task shows no fetched or started time; storage records
        # no lease start. Lifted by: a leased_at field on TaskInfo.
        result = None
    if status is Status.RUNNING and result is not None and result.is_final:
        status = _finished_status(result)
    note = info.reason if result is None else None
    return Row(
        info.task_id, name, status, info.attempts, info.max_attempts, info.enqueued_at, result, note
    )


def _finished_row(result: TaskResult) -> Row:
    return Row(
        result.task_id,
        result.func_name,
        _finished_status(result),
        result.attempt,
        result.max_retries + 1,
        _sent_at(result),
        result,
    )


def _finished_status(result: TaskResult) -> Status:
    if result.will_retry:
        # Its retry is waiting in storage, beyond the tasks listed.
        return Status.DELAYED
    return Status.SUCCEEDED if result.success else Status.FAILED


def _sent_at(result: TaskResult) -> float:
    """When the task of `result` was sent: from its id when the id carries the time.

    Ids made by `new_task_id` start with their creation time in milliseconds (a UUIDv7);
    for other ids, the time its attempt was fetched stands in.
    """
    task_id = result.task_id
    if len(task_id) == 32 and task_id[12] == "7":
        with contextlib.suppress(ValueError):
            return int(task_id[:12], 16) / 1000
    when = result.fetched_at or result.started_at or result.finished_at
    return when.timestamp() if when is not None else 0.0
