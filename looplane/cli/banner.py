"""The worker's startup banner: wordmark, system, configuration and registered tasks.

The banner shows what the worker will really run: how many worker processes (concurrency is
per process), the backends as built (not as requested), and every task function in the
registry once the app modules are imported, so a missing task is visible before the first task
fails (https://github.com/celery/celery/issues/3986).
Secrets never appear: URLs are shown with their password masked.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

import looplane
from looplane.config import redact_url
from looplane.task import registry

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime
    from pathlib import Path

    from pydantic import SecretStr
    from rich.console import Console

    from looplane.factory import App
    from looplane.task import TaskRegistry

__all__ = ["READY_LINE", "WORDMARK", "print_banner"]

WORDMARK = r"""
 _                   _
| | ___   ___  _ __ | | __ _ _ __   ___
| |/ _ \ / _ \| '_ \| |/ _` | '_ \ / _ \
| | (_) | (_) | |_) | | (_| | | | |  __/
|_|\___/ \___/| .__/|_|\__,_|_| |_|\___|
              |_|
""".strip("\n")

READY_LINE = "Worker ready. Press Ctrl+C to stop."


def print_banner(
    console: Console,
    app: App,
    *,
    started_at: datetime,
    config_file: Path | None,
    app_modules: Mapping[str, Sequence[str]],
    task_registry: TaskRegistry = registry,
) -> None:
    """Print the wordmark panel and the three tables to `console`."""
    console.print(_wordmark())
    console.print(_system_table(started_at))
    console.print(_configuration_table(app, config_file, app_modules))
    console.print(_tasks_table(task_registry))


def _wordmark() -> Panel:
    subtitle = Text("async task queue, local first", style="dim")
    body = Group(Text(WORDMARK, style="bold cyan"), Text(""), subtitle)
    return Panel.fit(body, box=box.ROUNDED, border_style="cyan", padding=(0, 2))


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _system_table(started_at: datetime) -> Table:
    table = _table("System Information", "Item", "Value")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    rows = {
        "Version": f"looplane {looplane.__version__}",
        "Python": f"{python} ({sys.executable})",
        "Platform": platform.platform(),
        "PID": str(os.getpid()),
        "Started": started_at.isoformat(timespec="seconds"),
    }
    for item, value in rows.items():
        table.add_row(item, Text(value))
    return table


def _configuration_table(
    app: App, config_file: Path | None, app_modules: Mapping[str, Sequence[str]]
) -> Table:
    settings = app.settings
    table = _table("Configuration", "Setting", "Value")
    modules = ", ".join(app_modules) or "(none)"
    processes = settings.worker.processes
    per_process = " per process" if processes > 1 else ""
    rows = {
        "Processes": str(processes),
        "Concurrency": f"{settings.worker.concurrency}{per_process}",
        "Shutdown grace": f"{settings.worker.shutdown_grace:g}s",
        "Storage": _describe(app.storage, settings.storage.url),
        "Result backend": _describe(app.result_backend, settings.results.url),
        "Queue": settings.storage.queue,
        "App modules": modules,
        "Config file": str(config_file) if config_file else "(none)",
    }
    for item, value in rows.items():
        table.add_row(item, Text(value))
    return table


def _describe(backend: object, url: SecretStr | None) -> str:
    """``lmdb at /tmp/looplane``; a third-party class by its import path; URLs redacted."""
    cls = type(backend)
    if cls.__module__.startswith("looplane."):
        label = str(getattr(backend, "name", cls.__name__))
    else:
        label = f"{cls.__module__}:{cls.__qualname__}"
    path = getattr(backend, "path", None)
    if isinstance(path, str | os.PathLike):
        label += f" at {os.fspath(path)}"
    if url is not None:
        label += f" ({redact_url(url.get_secret_value())})"
    return label


def _tasks_table(task_registry: TaskRegistry) -> Table:
    table = _table(f"Registered Tasks ({len(task_registry)})", "#", "Name", "Module")
    for number, entry in enumerate(task_registry, start=1):
        table.add_row(str(number), Text(entry.name), Text(entry.module))
    if not len(task_registry):
        table.add_row("-", Text("(none: every task received will be set aside)", "bold yellow"))
    return table
