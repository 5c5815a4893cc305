"""Fixtures for the CLI tests: a clean environment and working directory, worker processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from tests._rig import isolated_cli_state
from tests.cli._process import LooplaneProcess, start_looplane

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

APP_MODULE = "tests.cli.app_tasks"


@pytest.fixture(autouse=True)
def clean_cli_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test runs in its own empty directory, without LOOPLANE_* variables, and leaves
    the task registry, sys.path and sys.modules as it found them."""
    with isolated_cli_state(monkeypatch, tmp_path, app_modules=frozenset({APP_MODULE})):
        yield


@pytest.fixture
def runner() -> CliRunner:
    """Invokes the CLI in this process, with output wide enough not to fold paths."""
    return CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """The working directory of the test (and of the processes it starts)."""
    return tmp_path / "work"


@pytest.fixture
def launch(tmp_path: Path, work_dir: Path) -> Iterator[Callable[..., LooplaneProcess]]:
    """Start ``looplane`` processes in `work_dir`; any still running at teardown are killed."""
    started: list[LooplaneProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> LooplaneProcess:
        process = start_looplane(args, cwd=work_dir, out_dir=tmp_path / "out", env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
