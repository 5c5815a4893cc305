"""``looplane inspect``: read-only views of the queue and the results, for scripts and quick looks.

Each view is a rich table by default, or JSON with ``--json``: lists or objects whose keys are
always all present (null when they do not apply), with ISO 8601 UTC timestamps. The views read
the storage and result backend that a worker started with the same flags would use; they
never import app modules, so a queue stays inspectable while the app itself fails to import.

A memory store lives inside one process, so every command here refuses it rather than show
an empty queue that no worker will ever fill.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from looplane.cli._common import (
    ConfigFileOption,
    DbPathOption,
    SourceFlags,
    StorageOption,
    build_app,
    fail,
    is_missing,
    load,
    parse_task_id,
)
from looplane.cli._output import configured_logging, stdout_console
from looplane.cli.exit_codes import EXIT_FAILURE
from looplane.errors import ConfigError, LooplaneError, SerializationError
from looplane.log import printable
from looplane.storage.base import TaskState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from looplane.broker.serializer import Serializer
    from looplane.config import Settings
    from looplane.result.base import ResultBackend, TaskResult
    from looplane.storage.base import StorageBackend, TaskInfo

__all__ = [
    "AppOption",
    "Status",
    "Stores",
    "dead",
    "inspect_app",
    "open_stores",
    "queue",
    "result",
    "run",
    "tasks",
]

T = TypeVar("T")

inspect_app = typer.Typer(
    name="inspect",
    help="Look at the queue, the tasks and their results (read-only; --json for scripts).",
    no_args_is_help=True,
)

DEFAULT_LIMIT = 50
# How many stored tasks one `StorageBackend.tasks` call fetches while filtering by name.
_PAGE = 200
# Table cells longer than this are cut with an ellipsis; --json shows values whole.
_CELL_WIDTH = 60


class Status(StrEnum):
    """Where a task is: one of the four storage states, or its final result."""

    READY = "ready"
    LEASED = "leased"
    DELAYED = "delayed"
    DEAD = "dead"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_STORED = {
    Status.READY: TaskState.READY,
    Status.LEASED: TaskState.LEASED,
    Status.DELAYED: TaskState.DELAYED,
    Status.DEAD: TaskState.DEAD,
}
_ALIASES = {"queued": Status.READY, "running": Status.LEASED}
_STATUS_HELP = "queued|ready, running|leased, delayed, dead, succeeded, failed"


# Options ------------------------------------------------------------------------------------

AppOption = Annotated[
    list[str] | None,
    typer.Option(
        "-A",
        "--app",
        metavar="MODULE",
        help="Accepted so that a worker's command line works here; no module is imported.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (ISO 8601 UTC times) instead of a table.")
]
LimitOption = Annotated[
    int, typer.Option("--limit", metavar="K", min=1, help="Show at most K tasks, newest first.")
]


def _parse_status(text: str | None) -> Status | None:
    if text is None:
        return None
    word = text.strip().lower()
    if word in _ALIASES:
        return _ALIASES[word]
    try:
        return Status(word)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not one of: {_STATUS_HELP}") from None


StatusOption = Annotated[
    Status | None,
    typer.Option(
        "--status",
        metavar="S",
        parser=_parse_status,
        help=f"Only tasks in this state: {_STATUS_HELP} (the last two from results).",
        show_default=False,
    ),
]


# Opening the backends ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stores:
    """The storage, results and serializer a worker with the same settings would use."""

    settings: Settings
    storage: StorageBackend
    results: ResultBackend
    serializer: Serializer

    @property
    def queue(self) -> str:
        """The queue the settings name (``storage.queue``)."""
        return self.settings.storage.queue

    def where(self) -> str:
        """The queue and its location, as a table caption shows them."""
        path = getattr(self.storage, "path", None)
        place = f" at {path}" if path is not None else f" in {self.storage.name} storage"
        return f"queue {self.queue!r}{place}"

    async def close(self) -> None:
        """Close the result backend, then the storage (once, if they are one object)."""
        # A third-party backend may serve as both; it is closed once.
        storage: object = self.storage
        try:
            await self.results.close()
        finally:
            if storage is not self.results:
                await self.storage.close()


def open_stores(
    command: str,
    *,
    config_file: Path | None,
    app: Sequence[str] | None,
    storage: str | None,
    db_path: Path | None,
) -> Stores:
    """Resolve the settings and open the backends, or exit with `EXIT_CONFIG`.

    A memory store is refused: it is only visible inside its own process. A missing LMDB
    directory is refused too, rather than created empty by a command that only reads. A
    store that cannot be opened exits as `build_app` does for every command.
    """
    flags = SourceFlags(config_file=config_file, app=app, storage=storage, db_path=db_path)
    loaded = load(flags)
    _check_reachable(command, loaded.settings)
    # Built as the worker builds it, so a store that cannot be opened is reported the same
    # way by every command.
    built = build_app(loaded)
    return Stores(built.settings, built.storage, built.result_backend, built.serializer)


def _check_reachable(command: str, settings: Settings) -> None:
    backend = settings.storage.backend.strip().lower()
    if backend == "memory":
        fail(
            [
                f"storage.backend: `looplane {command}` reads the storage of a worker in "
                "another process, but a 'memory' store is only visible inside its own "
                "process (use lmdb, the default, or look from inside the process)"
            ]
        )
    path = Path(settings.storage.path)
    if backend == "lmdb" and is_missing(path / "data.mdb"):
        fail([f"storage.path: no LMDB store at {os.fspath(path)} (is it the worker's --db-path?)"])


def run(stores: Stores, action: Callable[[Stores], Awaitable[T]]) -> T:
    """Run `action` on `stores` in an event loop and close them afterwards.

    A `ConfigError` (a value a backend refuses) exits with `EXIT_CONFIG`; any other
    Looplane error, such as unreachable storage, with `EXIT_FAILURE`.
    """

    async def main() -> T:
        try:
            return await action(stores)
        finally:
            await stores.close()

    with configured_logging(logging.WARNING):
        try:
            return asyncio.run(main())
        except ConfigError as exc:
            fail(exc.problems)
        except LooplaneError as exc:
            fail([f"{type(exc).__name__}: {exc}"], code=EXIT_FAILURE)


# Reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One task as the views show it, from storage or from its final result."""

    task_id: str
    name: str | None
    status: Status
    attempts: int
    max_attempts: int
    enqueued_at: float | None = None
    finished_at: float | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    value: Any = None
    error: str | None = None
    reason: str | None = None

    @classmethod
    def stored(cls, info: TaskInfo, serializer: Serializer) -> Row:
        """The row of a task in storage; name and arguments are None if undecodable."""
        try:
            task = serializer.deserialize(info.payload)
        except SerializationError:
            name, args, kwargs = None, None, None
        else:
            name, args, kwargs = task.name, list(task.args), dict(task.kwargs)
        return cls(
            task_id=info.task_id,
            name=name,
            status=Status(info.state.value),
            attempts=info.attempts,
            max_attempts=info.max_attempts,
            enqueued_at=info.enqueued_at,
            finished_at=info.failed_at,
            args=args,
            kwargs=kwargs,
            reason=info.reason,
        )

    @classmethod
    def finished(cls, result: TaskResult) -> Row:
        """The row of a task that has left storage, from its final result."""
        return cls(
            task_id=result.task_id,
            name=result.func_name,
            status=Status.SUCCEEDED if result.success else Status.FAILED,
            attempts=result.attempt,
            max_attempts=result.max_retries + 1,
            finished_at=result.finished_at.timestamp() if result.finished_at else None,
            value=result.value,
            error=result.error,
        )

    def to_json(self) -> dict[str, Any]:
        """The row with every key present and ISO 8601 UTC times."""
        return {
            "task_id": self.task_id,
            "name": self.name,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "enqueued_at": iso(self.enqueued_at),
            "finished_at": iso(self.finished_at),
            "args": self.args,
            "kwargs": self.kwargs,
            "value": self.value,
            "error": self.error,
            "reason": self.reason,
        }

    def detail(self) -> str:
        """What the table's last column shows: why, the outcome, or the arguments."""
        if self.status is Status.DEAD:
            return self.reason or ""
        if self.status is Status.FAILED:
            return self.error or ""
        if self.status is Status.SUCCEEDED:
            return _short(self.value)
        if self.args is None:
            return "<payload not decodable>"
        return _call_text(self.args, self.kwargs or {})


async def stored_rows(
    stores: Stores, states: Iterable[TaskState] | None, *, name: str | None, limit: int
) -> list[Row]:
    """Up to `limit` stored tasks in `states`, newest first, named `name` if given."""
    wanted = None if states is None else list(states)
    rows: list[Row] = []
    offset = 0
    while len(rows) < limit:
        page = limit if name is None else _PAGE
        infos = await stores.storage.tasks(
            states=wanted, limit=page, offset=offset, queue=stores.queue
        )
        rows.extend(
            row
            for row in (Row.stored(info, stores.serializer) for info in infos)
            if name is None or row.name == name
        )
        if len(infos) < page:
            break
        offset += page
    return rows[:limit]


async def final_results(stores: Stores) -> list[TaskResult]:
    """The final result of every task whose latest unexpired result is final."""
    # Limitation: this reads every unexpired result to find the final ones, so its cost
    # grows with results.ttl times the task rate.
    # Lifted by: a ResultBackend method that lists or counts final results from an index.
    latest: dict[str, TaskResult] = {}
    for found in await stores.results.results():
        latest.setdefault(found.task_id, found)
    return [found for found in latest.values() if found.is_final]


async def finished_rows(stores: Stores, status: Status | None, *, name: str | None) -> list[Row]:
    """Tasks whose final result is stored, as rows; only `status` ones if given."""
    rows = [Row.finished(found) for found in await final_results(stores)]
    return [
        row
        for row in rows
        if (status is None or row.status is status) and (name is None or row.name == name)
    ]


async def task_rows(
    stores: Stores, status: Status | None, *, name: str | None, limit: int
) -> list[Row]:
    """The rows `inspect tasks` shows: storage and final results merged, newest first.

    A task still in storage is shown with its storage state even if it has a final result
    (a task dead-lettered after its last attempt failed, or one requeued after it). Rows
    are ordered by task id, which starts with the time the task was created.
    """
    stored: list[Row] = []
    finished: list[Row] = []
    if status is None or status in _STORED:
        states = None if status is None else [_STORED[status]]
        stored = await stored_rows(stores, states, name=name, limit=limit)
    if status is None or status not in _STORED:
        finished = await finished_rows(stores, status, name=name)
    # Every stored task newer than the oldest row kept is among `stored`, so dropping the
    # finished rows of tasks found there removes every duplicate that could be shown.
    seen = {row.task_id for row in stored}
    merged = stored + [row for row in finished if row.task_id not in seen]
    merged.sort(key=lambda row: row.task_id, reverse=True)
    return merged[:limit]


# Formatting ----------------------------------------------------------------------------------


def iso(timestamp: float | datetime | None) -> str | None:
    """An epoch time or datetime as ISO 8601 in UTC, to the millisecond; None stays None."""
    if timestamp is None:
        return None
    if isinstance(timestamp, datetime):
        moment = timestamp.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds")


def local_time(timestamp: float | datetime | None) -> str:
    """An epoch time or datetime in local time for a table cell; empty for None."""
    if timestamp is None:
        return ""
    if isinstance(timestamp, datetime):
        return timestamp.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _json_fallback(value: object) -> object:
    # Results and arguments may hold types JSON lacks; dates read best as ISO, the rest
    # as Python shows them.
    if isinstance(value, date):
        return value.isoformat()
    return repr(value)


def echo_json(document: object) -> None:
    """Print `document` as indented JSON on stdout."""
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False, default=_json_fallback))


def _short(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _call_text(args: list[Any], kwargs: dict[str, Any]) -> str:
    parts = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"({', '.join(parts)})"


def new_table(title: str) -> Table:
    """A table in the style of the other commands' output."""
    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", title_style="bold")


def print_table(table: Table, note: str) -> None:
    """Print `table` on stdout with `note` (where the data came from) on a line below it."""
    console = stdout_console()
    console.print(table)
    console.print(Text(note, style="dim"), highlight=False)


def cell(text: str, *, style: str = "") -> Text:
    """A one-line cell, cut with an ellipsis past `_CELL_WIDTH` characters."""
    line = printable(" ".join(text.split()))
    if len(line) > _CELL_WIDTH:
        line = line[: _CELL_WIDTH - 1] + "…"
    return Text(line, style=style)


_STATUS_STYLES = {
    Status.READY: "cyan",
    Status.LEASED: "yellow",
    Status.DELAYED: "blue",
    Status.DEAD: "red",
    Status.SUCCEEDED: "green",
    Status.FAILED: "red",
}


def status_text(status: Status) -> Text:
    """The status word, coloured on a terminal."""
    return Text(status.value, style=_STATUS_STYLES[status])


# Commands ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Counts:
    ready: int
    leased: int
    delayed: int
    dead: int
    succeeded: int
    failed: int


async def _count(stores: Stores) -> _Counts:
    counts = await stores.storage.counts(queue=stores.queue)
    finals = await final_results(stores)
    succeeded = sum(1 for found in finals if found.success)
    return _Counts(
        ready=counts.ready,
        leased=counts.leased,
        delayed=counts.delayed,
        dead=counts.dead,
        succeeded=succeeded,
        failed=len(finals) - succeeded,
    )


@inspect_app.command("queue")
def queue(
    as_json: JsonOption = False,
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
) -> None:
    """Count the tasks: ready, leased (running), delayed, dead; succeeded and failed.

    The last two count tasks by their final result, for as long as results are kept
    (results.ttl); a task whose last attempt failed is also dead-lettered.
    """
    stores = open_stores(
        "inspect queue", config_file=config_file, app=app, storage=storage, db_path=db_path
    )
    counts = run(stores, _count)
    if as_json:
        echo_json({"queue": stores.queue, **_counts_dict(counts)})
        return
    table = new_table("Queue")
    table.add_column("status")
    table.add_column("tasks", justify="right")
    for word, number in _counts_dict(counts).items():
        table.add_row(status_text(Status(word)), str(number))
    print_table(table, stores.where())


def _counts_dict(counts: _Counts) -> dict[str, int]:
    return {
        "ready": counts.ready,
        "leased": counts.leased,
        "delayed": counts.delayed,
        "dead": counts.dead,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
    }


@inspect_app.command("tasks")
def tasks(
    status: StatusOption = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="N", help="Only tasks of this task function.")
    ] = None,
    limit: LimitOption = DEFAULT_LIMIT,
    as_json: JsonOption = False,
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
) -> None:
    """List tasks, newest first: those in storage and those with a final result.

    A task still in storage shows its storage state (ready, leased, delayed, dead);
    succeeded and failed come from final results, for as long as results are kept.
    """
    stores = open_stores(
        "inspect tasks", config_file=config_file, app=app, storage=storage, db_path=db_path
    )
    rows = run(stores, lambda s: task_rows(s, status, name=name, limit=limit))
    if as_json:
        echo_json([row.to_json() for row in rows])
        return
    table = new_table("Tasks")
    for heading in ("id", "name", "status", "attempt", "sent", "finished", "detail"):
        table.add_column(heading, no_wrap=heading != "detail")
    for row in rows:
        table.add_row(
            row.task_id,
            cell(row.name or "?"),
            status_text(row.status),
            f"{row.attempts}/{row.max_attempts}",
            local_time(row.enqueued_at),
            local_time(row.finished_at),
            cell(row.detail()),
        )
    print_table(table, f"{stores.where()}; {len(rows)} shown, newest first")


def _attempt_json(found: TaskResult) -> dict[str, Any]:
    return {
        "task_id": found.task_id,
        "name": found.func_name,
        "attempt": found.attempt,
        "max_attempts": found.max_retries + 1,
        "success": found.success,
        "will_retry": found.will_retry,
        "value": found.value,
        "error": found.error,
        "error_type": found.error_type,
        "traceback": found.traceback,
        "duration_s": found.duration,
        "fetched_at": iso(found.fetched_at),
        "started_at": iso(found.started_at),
        "finished_at": iso(found.finished_at),
    }


@inspect_app.command("result")
def result(
    task_id: Annotated[str, typer.Argument(metavar="TASK_ID", help="The id `enqueue` printed.")],
    as_json: JsonOption = False,
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
) -> None:
    """Show every attempt of a task: outcome, value or error, times and duration.

    Exits 1 if the task has no result: it has not run yet, its id is unknown, or its
    results expired (results.ttl). A TASK_ID that is not a UUID exits 2.
    """
    wanted = parse_task_id(task_id)
    stores = open_stores(
        "inspect result", config_file=config_file, app=app, storage=storage, db_path=db_path
    )
    attempts = run(stores, lambda s: s.results.attempts(wanted))
    if not attempts:
        fail(
            [f"no result for task {wanted}: not run yet, unknown, or expired (results.ttl)"],
            code=EXIT_FAILURE,
        )
    if as_json:
        echo_json([_attempt_json(found) for found in attempts])
        return
    first = attempts[0]
    table = new_table(f"Task {first.task_id} {first.func_name}")
    for heading in ("attempt", "outcome", "started", "finished", "duration", "value or error"):
        table.add_column(heading, no_wrap=heading != "value or error")
    for found in attempts:
        outcome = "ok" if found.success else ("retry" if found.will_retry else "failed")
        table.add_row(
            f"{found.attempt}/{found.max_retries + 1}",
            Text(outcome, style="green" if found.success else "red"),
            local_time(found.started_at),
            local_time(found.finished_at),
            f"{found.duration:.3f}s",
            # Text, not str: rich would read brackets in task-written text as markup.
            Text(printable(_short(found.value) if found.success else (found.error or ""))),
        )
    print_table(table, stores.where())


@inspect_app.command("dead")
def dead(
    limit: LimitOption = DEFAULT_LIMIT,
    as_json: JsonOption = False,
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
) -> None:
    """List dead-lettered tasks, newest first, with why each was set aside.

    `looplane requeue` puts them back.
    """
    stores = open_stores(
        "inspect dead", config_file=config_file, app=app, storage=storage, db_path=db_path
    )
    rows = run(stores, lambda s: stored_rows(s, [TaskState.DEAD], name=None, limit=limit))
    if as_json:
        echo_json([_dead_json(row) for row in rows])
        return
    table = new_table("Dead-lettered tasks")
    for heading in ("id", "name", "attempts", "failed at", "reason"):
        table.add_column(heading, no_wrap=heading != "reason", overflow="fold")
    for row in rows:
        table.add_row(
            row.task_id,
            cell(row.name or "?"),
            f"{row.attempts}/{row.max_attempts}",
            local_time(row.finished_at),
            Text(printable(row.reason or "")),
        )
    print_table(table, f"{stores.where()}; {len(rows)} shown, newest first")


def _dead_json(row: Row) -> dict[str, Any]:
    return {
        "task_id": row.task_id,
        "name": row.name,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "enqueued_at": iso(row.enqueued_at),
        "failed_at": iso(row.finished_at),
        "reason": row.reason,
        "args": row.args,
        "kwargs": row.kwargs,
    }
