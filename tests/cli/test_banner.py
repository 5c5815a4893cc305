from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console

from looplane.cli.banner import WORDMARK, print_banner
from looplane.config import load_settings
from looplane.factory import build
from looplane.storage import InMemoryStorage
from looplane.task import TaskFunction, TaskRegistry

if TYPE_CHECKING:
    from pathlib import Path

    from looplane.factory import App


class OtherStorage(InMemoryStorage):
    """A storage backend from outside Looplane, named by its import path."""


def _app(tmp_path: Path, **overrides: object) -> App:
    loaded = load_settings(overrides=overrides, environ={}, cwd=tmp_path)
    return build(loaded.settings, origins=loaded.origins)


def _render(app: App, task_registry: TaskRegistry) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200)
    print_banner(
        console,
        app,
        started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        config_file=None,
        app_modules={"myapp.tasks": ["myapp.add"]},
        task_registry=task_registry,
    )
    return out.getvalue()


async def _add(a: int, b: int) -> int:
    return a + b


async def test_banner_shows_wordmark_system_configuration_and_tasks(tmp_path: Path) -> None:
    tasks = TaskRegistry()
    tasks.add(TaskFunction(name="myapp.add", func=_add))
    async with _app(tmp_path, **{"storage.backend": "memory", "worker.concurrency": 7}) as app:
        text = _render(app, tasks)

    assert WORDMARK.splitlines()[1] in text
    for heading in ("System Information", "Configuration", "Registered Tasks (1)"):
        assert heading in text
    for label in ("Version", "Python", "Platform", "PID", "Started"):
        assert label in text
    assert "2026-01-02T03:04:05+00:00" in text
    assert "Concurrency      7" in text
    assert "App modules      myapp.tasks" in text
    assert "myapp.add" in text
    assert __name__ in text


async def test_banner_masks_the_password_of_a_backend_url(tmp_path: Path) -> None:
    overrides = {"storage.backend": "memory", "storage.url": "redis://u:hunter2@cache:6379/0"}
    async with _app(tmp_path, **overrides) as app:
        text = _render(app, TaskRegistry())

    assert "hunter2" not in text
    assert "memory (redis://u:********@cache:6379/0)" in text


async def test_banner_names_a_third_party_backend_by_its_import_path(tmp_path: Path) -> None:
    spec = f"{__name__}:OtherStorage"
    async with _app(tmp_path, **{"storage.backend": spec}) as app:
        text = _render(app, TaskRegistry())

    assert f"Storage          {spec}" in text


async def test_banner_without_tasks_says_every_task_will_be_set_aside(tmp_path: Path) -> None:
    async with _app(tmp_path, **{"storage.backend": "memory"}) as app:
        text = _render(app, TaskRegistry())

    assert "Registered Tasks (0)" in text
    assert "every task received will be set aside" in text


async def test_banner_shows_one_process_and_plain_concurrency_by_default(tmp_path: Path) -> None:
    async with _app(tmp_path, **{"storage.backend": "memory", "worker.concurrency": 7}) as app:
        text = _render(app, TaskRegistry())

    assert "Processes        1" in text
    assert re.search(r"^\s*Concurrency\s+7\s*$", text, re.M)


async def test_banner_shows_the_processes_and_concurrency_per_process(tmp_path: Path) -> None:
    overrides = {"storage.backend": "memory", "worker.concurrency": 5, "worker.processes": 4}
    async with _app(tmp_path, **overrides) as app:
        text = _render(app, TaskRegistry())

    assert re.search(r"^\s*Processes\s+4\s*$", text, re.M)
    assert re.search(r"^\s*Concurrency\s+5 per process\s*$", text, re.M)
