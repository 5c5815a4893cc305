"""``looplane enqueue``: send one task from the shell, and optionally wait for its result.

The task id goes to stdout alone on its line, so scripts can capture it; with ``--wait`` the
result's value follows as JSON on the next line. Everything else goes to stderr.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from looplane.cli._common import (
    AppOption,
    ConfigFileOption,
    DbPathOption,
    SourceFlags,
    StorageOption,
    VerboseOption,
    build_app,
    fail,
    import_apps,
    load,
)
from looplane.cli._output import configured_logging
from looplane.cli.exit_codes import EXIT_FAILURE, EXIT_TIMEOUT
from looplane.config import parse_duration
from looplane.errors import (
    ConfigError,
    InvalidArguments,
    LooplaneError,
    SerializationError,
    TaskTimeout,
)
from looplane.log import one_line
from looplane.task import registry

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from looplane.config import Settings
    from looplane.factory import App
    from looplane.result.base import TaskResult

__all__ = ["DEFAULT_WAIT_TIMEOUT_S", "enqueue"]

DEFAULT_WAIT_TIMEOUT_S = 30.0


def enqueue(
    task: Annotated[
        str,
        typer.Argument(metavar="TASK", help="Name of the task function, as registered."),
    ],
    args_json: Annotated[
        str | None,
        typer.Argument(
            metavar="ARGS_JSON",
            help="Positional arguments as a JSON array, e.g. '[1, \"two\"]'; any other JSON "
            "value is the single argument.",
            show_default=False,
        ),
    ] = None,
    kwargs_json: Annotated[
        str | None,
        typer.Option(
            "--kwargs",
            metavar="JSON",
            help="Keyword arguments as a JSON object.",
            show_default=False,
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            metavar="N",
            min=0,
            help="Retries after the first attempt. [default: the task function's, else "
            "retry.retries]",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="S",
            help="Longest an attempt may run: seconds, or 30s, 5m, 1h. [default: the task "
            "function's, else task.timeout]",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait for the task's final result and print it."),
    ] = False,
    wait_timeout: Annotated[
        str | None,
        typer.Option(
            "--wait-timeout",
            metavar="S",
            help="How long --wait waits: seconds, or 30s, 5m, 1h.",
            show_default=f"{DEFAULT_WAIT_TIMEOUT_S:g}s",
        ),
    ] = None,
    app: AppOption = None,
    config_file: ConfigFileOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Send one call of a task function and print the task's id.

    With --wait, also wait for its final result and print the value (as JSON), or the
    error; a failed task exits 1. Import the modules that register the task with -A to
    apply its registered options (a name they do not register is refused, exit 2); without
    them the task is sent by name.
    """
    args = _parse_args(args_json)
    kwargs = _parse_kwargs(kwargs_json)
    timeout_s = _parse_seconds("--timeout", timeout)
    wait_s = _parse_seconds("--wait-timeout", wait_timeout)
    flags = SourceFlags(config_file=config_file, app=app, storage=storage, db_path=db_path)
    with configured_logging(logging.DEBUG if verbose else logging.WARNING):
        loaded = load(flags)
        _check_storage(loaded.settings)
        _check_registered(task, import_apps(loaded.settings.app, verbose=verbose))
        built = build_app(loaded)
        send = _Send(task, args, kwargs, retries, timeout_s)
        wait_for = (DEFAULT_WAIT_TIMEOUT_S if wait_s is None else wait_s) if wait else None
        result = _run(built, send, wait_for, verbose=verbose)
        if result is not None:
            _report(result, verbose=verbose)


@dataclass(frozen=True, slots=True)
class _Send:
    """One call to send, as parsed from the command line."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int | None
    timeout_s: float | None


def _parse_args(text: str | None) -> list[Any]:
    if text is None:
        return []
    value = _parse_json("ARGS_JSON", text)
    return value if isinstance(value, list) else [value]


def _parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    value = _parse_json("--kwargs", text)
    if not isinstance(value, dict):
        fail([f"--kwargs: must be a JSON object like '{{\"x\": 1}}' (got {text!r})"])
    return value


def _parse_json(argument: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail([f"{argument}: not valid JSON: {exc} (got {text!r})"])


def _parse_seconds(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        seconds = float(parse_duration(text))
    except ValueError as exc:
        fail([f"{option}: {exc}"])
    if not seconds > 0:
        fail([f"{option}: must be more than 0 seconds (got {text!r})"])
    return seconds


def _check_storage(settings: Settings) -> None:
    # A task sent to in-memory storage lives only in this short-lived process; no worker
    # could ever receive it, so refusing beats printing an id for a task that is lost.
    if settings.storage.backend.strip().lower() == "memory":
        fail(
            [
                "storage.backend: enqueue needs storage that a worker in another process "
                "can read; 'memory' lives inside one process (use lmdb, the default)"
            ]
        )


def _check_registered(task: str, modules: Mapping[str, Sequence[str]]) -> None:
    # With app modules loaded, this process knows every task function the worker would run
    # (the worker loads the same ones), so a name they do not register would only be
    # dead-lettered there. Without them the producer may not import the task functions at
    # all, and any name is sent.
    if not modules or task in registry:
        return
    known = sorted({name for names in modules.values() for name in names})
    close = difflib.get_close_matches(task, known, n=1)
    listed = ", ".join(known) or "none"
    hint = f"did you mean {close[0]!r}?" if close else f"they register: {listed}."
    fail(
        [
            f"TASK: no task function {task!r} is registered by the app modules "
            f"({', '.join(modules)}); {hint} Nothing was sent."
        ]
    )


def _run(app: App, send: _Send, wait_s: float | None, *, verbose: bool) -> TaskResult | None:
    """Send the task, print its id, and wait for its result if asked."""
    try:
        return asyncio.run(_send_and_wait(app, send, wait_s))
    except (ConfigError, SerializationError, InvalidArguments) as exc:
        fail([str(exc)])
    except TaskTimeout as exc:
        fail([f"{exc}; the task stays queued"], code=EXIT_TIMEOUT)
    except LooplaneError as exc:
        details = "".join(traceback.format_exception(exc)) if verbose else None
        fail([f"{type(exc).__name__}: {exc}"], code=EXIT_FAILURE, details=details)


async def _send_and_wait(app: App, send: _Send, wait_s: float | None) -> TaskResult | None:
    async with app:
        # send_batch, unlike send, keeps task parameters named retries or timeout apart from
        # the options of the same names.
        (task,) = await app.producer.send_batch(
            [(send.name, send.args, send.kwargs)], retries=send.retries, timeout=send.timeout_s
        )
        typer.echo(task.id)
        if wait_s is None:
            return None
        return await app.result_backend.wait(task.id, timeout=wait_s)


def _report(result: TaskResult, *, verbose: bool) -> None:
    if result.success:
        typer.echo(_as_json(result.value))
        return
    where = f"attempt {result.attempt} of {result.max_retries + 1}"
    details = result.traceback if verbose else None
    error = one_line(result.error or "")
    fail(
        [f"task {result.task_id} {result.func_name} failed on {where}: {error}"],
        code=EXIT_FAILURE,
        details=details,
    )


def _as_json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        # Results may hold types JSON lacks (datetime, bytes, Decimal); show them as Python.
        return repr(value)
