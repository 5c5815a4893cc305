"""What the commands share: the source options, loading settings, importing app modules.

Every option that overrides a setting defaults to None, and only options the user typed are
passed on as overrides. Passing typer's defaults along would make them outrank the config
file and the environment (https://github.com/pallets/click/issues/1264); the built-in
defaults live in the settings model alone, and ``--help`` shows them from there.
"""

from __future__ import annotations

import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.text import Text

from looplane.cli._output import stderr_console
from looplane.cli.exit_codes import EXIT_CONFIG
from looplane.config import StorageSettings, WorkerSettings, load_settings
from looplane.errors import AppImportError, ConfigError
from looplane.factory import build, import_app_modules

if TYPE_CHECKING:
    from collections.abc import Sequence

    from looplane.config import LoadedSettings
    from looplane.factory import App

__all__ = [
    "AppOption",
    "ConcurrencyOption",
    "ConfigFileOption",
    "DbPathOption",
    "ProcessesOption",
    "SourceFlags",
    "StorageOption",
    "VerboseOption",
    "build_app",
    "fail",
    "import_apps",
    "is_missing",
    "load",
    "parse_task_id",
    "warn",
]


def _default(model: type[StorageSettings | WorkerSettings], field: str) -> str:
    """The built-in default of a setting, as ``--help`` shows it."""
    return str(model.model_fields[field].default)


ConfigFileOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        dir_okay=False,
        help="TOML config file. [default: $LOOPLANE_CONFIG, else ./looplane.toml, "
        "else \\[tool.looplane] in ./pyproject.toml]",
        show_default=False,
    ),
]
AppOption = Annotated[
    list[str] | None,
    typer.Option(
        "-A",
        "--app",
        metavar="MODULE",
        help="Module that registers task functions; repeat for several. Replaces the "
        "config's app list.",
        show_default=False,
    ),
]
ConcurrencyOption = Annotated[
    int | None,
    typer.Option(
        "-c",
        "--concurrency",
        metavar="N",
        help="Tasks run at once (worker.concurrency).",
        show_default=_default(WorkerSettings, "concurrency"),
    ),
]
ProcessesOption = Annotated[
    int | None,
    typer.Option(
        "-p",
        "--processes",
        metavar="N",
        help="Worker processes under one supervisor, each running --concurrency tasks at "
        "once (worker.processes).",
        show_default=_default(WorkerSettings, "processes"),
    ),
]
StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        metavar="memory|lmdb|redis|IMPORT.PATH",
        help="Storage backend (storage.backend): an alias or package.module:ClassName.",
        show_default=_default(StorageSettings, "backend"),
    ),
]
DbPathOption = Annotated[
    Path | None,
    typer.Option(
        "--db-path",
        metavar="PATH",
        # Opening the store checks access and reports a refusal as every command does
        # (`build_app`); Click's own check would show a usage error for the flag alone.
        readable=False,
        help="LMDB directory of the queue, and of the results unless results.path is set "
        "(storage.path).",
        show_default=_default(StorageSettings, "path"),
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option("-v", "--verbose", help="Log at DEBUG and show full tracebacks."),
]


@dataclass(frozen=True, slots=True)
class SourceFlags:
    """The options that override settings, exactly as typed; None means not given."""

    config_file: Path | None = None
    app: Sequence[str] | None = None
    concurrency: int | None = None
    storage: str | None = None
    db_path: Path | None = None
    processes: int | None = None

    def argv(self, *, verbose: bool) -> list[str]:
        """The flags as typed, for a ``looplane worker`` process started by a supervisor."""
        args: list[str] = []
        if self.config_file is not None:
            args += ["--config", str(self.config_file)]
        for module in self.app or ():
            args += ["--app", module]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        if self.storage is not None:
            args += ["--storage", self.storage]
        if self.db_path is not None:
            args += ["--db-path", str(self.db_path)]
        return [*args, "--verbose"] if verbose else args

    def overrides(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The dotted settings keys the user set, and the flag that set each."""
        given: list[tuple[str, object, str]] = [
            ("app", list(self.app) if self.app else None, "--app"),
            ("worker.concurrency", self.concurrency, "--concurrency"),
            ("storage.backend", self.storage, "--storage"),
            ("storage.path", self.db_path, "--db-path"),
            ("worker.processes", self.processes, "--processes"),
        ]
        values = {key: value for key, value, _ in given if value is not None}
        names = {key: f"flag {flag}" for key, value, flag in given if value is not None}
        return values, names


def load(flags: SourceFlags) -> LoadedSettings:
    """Resolve the settings from the flags, the environment, the config file and defaults.

    Exits with `EXIT_CONFIG`, printing each problem on its own line, if they are invalid.
    """
    overrides, names = flags.overrides()
    if flags.config_file is not None:
        names["config"] = "flag --config"
    try:
        return load_settings(flags.config_file, overrides=overrides, override_names=names)
    except ConfigError as exc:
        fail(exc.problems)


def build_app(loaded: LoadedSettings) -> App:
    """Build and open everything the settings name, as every command that opens storage does.

    Exits with `EXIT_CONFIG`, naming the setting, its value, where it came from and why, if a
    backend cannot be imported or opened (an LMDB directory this user may not open, say).
    """
    try:
        return build(loaded.settings, origins=loaded.origins)
    except ConfigError as exc:
        fail(exc.problems)


def is_missing(path: Path) -> bool:
    """Whether `path` is surely absent: it, or a directory on the way to it, does not exist.

    A path this process cannot look at (permission denied, a name too long) does not count
    as missing: opening it with `build_app` then reports why, as for every other command.
    """
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def parse_task_id(text: str) -> str:
    """The task id `text` names, as `looplane enqueue` prints it (32 lower-case hex digits).

    Any form `uuid.UUID` reads is accepted. Exits with `EXIT_CONFIG` if `text` is not a UUID,
    before any storage is opened: no task could have that id.
    """
    try:
        return uuid.UUID(text.strip()).hex
    except ValueError:
        fail(
            [
                f"TASK_ID: task id {text!r} is not a UUID; task ids are the 32 hex digits "
                "that `looplane enqueue` prints"
            ]
        )


def import_apps(
    modules: Sequence[str], *, verbose: bool, warn_empty: bool = True
) -> dict[str, list[str]]:
    """Import the app modules; warn about each one that registered no task function.

    Exits with `EXIT_CONFIG` if one fails to import, naming it and the error; `verbose`
    adds the traceback of the original error. `warn_empty` False skips the warnings (a
    worker process leaves them to its supervisor, which already printed them).
    """
    try:
        found = import_app_modules(modules)
    except AppImportError as exc:
        cause = exc.__cause__
        details = "".join(traceback.format_exception(cause)) if verbose and cause else None
        hint = "run with -v for the full traceback" if cause and not verbose else None
        fail(exc.problems, details=details, hint=hint)
    for module, names in found.items():
        if warn_empty and not names:
            warn(
                f"app module {module!r} registered no task functions "
                "(is @register_task missing, or is it the wrong module?)"
            )
    return found


def fail(
    problems: Sequence[str],
    *,
    code: int = EXIT_CONFIG,
    details: str | None = None,
    hint: str | None = None,
) -> NoReturn:
    """Print each problem as an ``error:`` line on stderr and exit with `code`."""
    console = stderr_console()
    if details:
        console.print(Text(details.rstrip()), highlight=False)
    for problem in problems:
        console.print(Text.assemble(("error:", "bold red"), " ", problem), highlight=False)
    if hint:
        console.print(Text(f"({hint})", style="dim"), highlight=False)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print a ``warning:`` line on stderr, in bold yellow on a terminal."""
    console = stderr_console()
    console.print(Text.assemble(("warning:", "bold yellow"), " ", message), highlight=False)
