from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from looplane import LMDBResultBackend, LMDBStorage, StorageProducer
from looplane.cli import app
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_OK
from tests.cli._process import READY_LINE, child_env, looplane_argv, poll_until
from tests.cli.conftest import APP_MODULE
from tests.conftest import eventually

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from typer.testing import CliRunner

    from tests.cli._process import LooplaneProcess

    Launch = Callable[..., LooplaneProcess]


TASK_NAMES = (
    "cli_tests.add",
    "cli_tests.echo",
    "cli_tests.encode",
    "cli_tests.fail",
    "cli_tests.sleep",
)


def _banner_value(stdout: str, label: str) -> str:
    """The value cell of the banner row `label`."""
    match = re.search(rf"^\s*{re.escape(label)}\s{{2,}}(.+?)\s*$", stdout, re.MULTILINE)
    assert match, f"no banner row {label!r} in:\n{stdout}"
    return match.group(1)


def _stop(worker: LooplaneProcess) -> int:
    worker.signal(signal.SIGINT)
    return worker.wait_exit()


# Startup errors --------------------------------------------------------------------------


def test_worker_config_error_exits_2_before_the_banner(runner: CliRunner) -> None:
    result = runner.invoke(app, ["worker", "-c", "0", "--storage", "memory"])

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith("error: worker.concurrency: ")
    assert "flag --concurrency" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "env", "origin"),
    [
        pytest.param(["-p", "0"], {}, "flag --processes", id="flag"),
        pytest.param(
            [], {"LOOPLANE_WORKER__PROCESSES": "-1"}, "LOOPLANE_WORKER__PROCESSES", id="env"
        ),
    ],
)
def test_worker_processes_below_1_exit_2_naming_the_setting(
    runner: CliRunner, args: list[str], env: dict[str, str], origin: str
) -> None:
    result = runner.invoke(app, ["worker", "--storage", "memory", *args], env=env)

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith("error: worker.processes: ")
    assert origin in result.stderr
    assert result.stdout == ""


def test_worker_unknown_storage_backend_exits_2_naming_the_setting(runner: CliRunner) -> None:
    result = runner.invoke(app, ["worker", "--storage", "nosuch"])

    assert result.exit_code == EXIT_CONFIG
    assert re.match(r"error: storage\.backend: .*'nosuch'.*flag --storage", result.stderr)
    assert "Traceback" not in result.output
    assert result.stdout == ""


PF20_MODULES = [
    pytest.param(
        "pf20_missing_dep",
        "import looplane_no_such_package\n",
        r"pf20_missing_dep.*No module named 'looplane_no_such_package'",
        id="a-missing-dependency",
    ),
    pytest.param(
        None,
        None,
        r"pf20_taks.*module not found",
        id="b-typo",
    ),
    pytest.param(
        "pf20_raises",
        "raise RuntimeError('broken at import')\n",
        r"pf20_raises.*RuntimeError: broken at import",
        id="c-raises",
    ),
]


@pytest.mark.parametrize(("module", "source", "expected"), PF20_MODULES)
def test_pf20_worker_import_error_exits_2_naming_module_and_error(
    runner: CliRunner, work_dir: Path, module: str | None, source: str | None, expected: str
) -> None:
    """https://github.com/celery/celery/issues/3986: never start without the task module."""
    if module is not None and source is not None:
        (work_dir / f"{module}.py").write_text(source)

    result = runner.invoke(app, ["worker", "--storage", "memory", "-A", module or "pf20_taks"])

    assert result.exit_code == EXIT_CONFIG
    assert re.search(rf"^error: cannot import app module '{expected}", result.stderr, re.M)
    assert "Traceback" not in result.output
    assert "-v" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("module", "source", "expected"), PF20_MODULES)
def test_pf20_worker_import_error_with_verbose_shows_the_full_traceback(
    runner: CliRunner, work_dir: Path, module: str | None, source: str | None, expected: str
) -> None:
    if module is not None and source is not None:
        (work_dir / f"{module}.py").write_text(source)

    result = runner.invoke(
        app, ["worker", "--storage", "memory", "-v", "-A", module or "pf20_taks"]
    )

    assert result.exit_code == EXIT_CONFIG
    assert "Traceback (most recent call last)" in result.stderr
    assert re.search(rf"^error: cannot import app module '{expected}", result.stderr, re.M)
    assert result.stdout == ""


def test_pf20_worker_with_a_module_that_registers_nothing_warns_prominently(
    launch: Launch, work_dir: Path
) -> None:
    (work_dir / "pf20_empty.py").write_text("VALUE = 1\n")

    worker = launch("worker", "--storage", "memory", "-A", "pf20_empty")
    worker.wait_ready()

    assert _stop(worker) == EXIT_OK
    stderr = worker.stderr()
    assert "warning: app module 'pf20_empty' registered no task functions" in stderr
    assert "warning: no task functions are registered" in stderr
    assert "Registered Tasks (0)" in worker.stdout()


# Settings in the banner ------------------------------------------------------------------


def test_pf30_worker_cli_defaults_do_not_override_file_or_env(
    launch: Launch, work_dir: Path
) -> None:
    """https://github.com/pallets/click/issues/1264: only typed flags override."""
    (work_dir / "looplane.toml").write_text("[worker]\nconcurrency = 50\n")
    memory = {"LOOPLANE_STORAGE": "memory"}
    cases = {
        "file": launch("worker", env=memory),
        "env": launch("worker", env={**memory, "LOOPLANE_WORKER__CONCURRENCY": "30"}),
        "flag equal to the default": launch(
            "worker", "-c", "10", env={**memory, "LOOPLANE_WORKER__CONCURRENCY": "30"}
        ),
    }
    for worker in cases.values():
        worker.wait_ready()

    shown = {case: _banner_value(worker.stdout(), "Concurrency") for case, worker in cases.items()}

    assert shown == {"file": "50", "env": "30", "flag equal to the default": "10"}
    assert [_stop(worker) for worker in cases.values()] == [EXIT_OK] * 3


def test_worker_bare_storage_env_var_selects_memory(launch: Launch) -> None:
    worker = launch("worker", "-A", APP_MODULE, env={"LOOPLANE_STORAGE": "memory"})
    worker.wait_ready()

    assert _banner_value(worker.stdout(), "Storage") == "memory"
    assert _banner_value(worker.stdout(), "Result backend") == "memory"
    assert _stop(worker) == EXIT_OK


# In this process ---------------------------------------------------------------------------


def _captured_stdout() -> str:
    """What the command printed so far, while `CliRunner` captures this process's stdout."""
    getvalue = getattr(getattr(sys.stdout, "buffer", None), "getvalue", None)
    return getvalue().decode() if callable(getvalue) else ""


def test_worker_in_process_prints_the_banner_and_stops_on_sigint(runner: CliRunner) -> None:
    # The worker handles SIGINT on its event loop from before it prints the ready line, so
    # the signal sent once that line shows stops it instead of interrupting pytest.
    def interrupt_when_ready() -> None:
        poll_until(lambda: READY_LINE in _captured_stdout(), timeout=15, describe=_captured_stdout)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_when_ready, daemon=True)
    interrupter.start()
    result = runner.invoke(app, ["worker", "--storage", "memory", "-A", APP_MODULE, "-c", "3"])
    interrupter.join()

    assert result.exit_code == EXIT_OK, result.output
    for name in TASK_NAMES:
        assert re.search(rf"\s{re.escape(name)}\s+{re.escape(APP_MODULE)}\s*$", result.stdout, re.M)
    assert _banner_value(result.stdout, "Concurrency") == "3"
    assert _banner_value(result.stdout, "Processes") == "1"
    assert _banner_value(result.stdout, "App modules") == APP_MODULE
    assert result.stdout.rstrip().endswith(READY_LINE)
    assert "stopping gracefully" in result.stderr
    assert "signal=SIGINT" in result.stderr


# A real worker on LMDB -------------------------------------------------------------------


async def test_worker_process_runs_tasks_sent_by_another_process_and_exits_0_on_sigint(
    launch: Launch, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    worker = launch("worker", "-A", APP_MODULE, "--storage", "lmdb", "--db-path", str(db))
    worker.wait_ready()

    async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
        producer = StorageProducer(storage)
        sent = [await producer.send("cli_tests.add", i, 10) for i in range(5)]
        found = [await results.wait(task.id, timeout=15) for task in sent]

    assert [(r.success, r.value) for r in found] == [(True, 10 + i) for i in range(5)]
    assert _stop(worker) == EXIT_OK
    banner = worker.stdout()
    assert f"Registered Tasks ({len(TASK_NAMES)})" in banner
    for name in TASK_NAMES:
        assert re.search(rf"\s{re.escape(name)}\s+{re.escape(APP_MODULE)}\s*$", banner, re.M)
    assert _banner_value(banner, "Storage") == f"lmdb at {db}"
    assert _banner_value(banner, "Result backend") == f"lmdb at {db}"
    for task in sent:
        assert f"task {task.id} cli_tests.add 1/4: attempt finished outcome=success" in (
            worker.stderr()
        )


async def test_pf15_worker_sigterm_finishes_running_tasks_and_leaves_the_rest_queued(
    launch: Launch, tmp_path: Path
) -> None:
    """https://github.com/rq/rq/issues/507: a SIGTERM drains instead of stranding tasks."""
    db = tmp_path / "db"
    args = ("worker", "-A", APP_MODULE, "-c", "2", "--db-path", str(db))
    worker = launch(*args, env={"LOOPLANE_WORKER__SHUTDOWN_GRACE": "20s"})
    worker.wait_ready()

    async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
        producer = StorageProducer(storage)
        sent = [await producer.send("cli_tests.sleep", 1.5) for _ in range(6)]

        async def two_running() -> None:
            assert (await storage.counts()).leased == 2

        await eventually(two_running, timeout=15)
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait_exit) == EXIT_OK

        counts = await storage.counts()
        finished = [await results.get(task.id) for task in sent]

    assert "waiting for 2 running tasks" in worker.stderr()
    assert (counts.ready, counts.leased, counts.delayed, counts.dead) == (4, 0, 0, 0)
    done = [result for result in finished if result is not None]
    assert [(r.success, r.attempt) for r in done] == [(True, 1), (True, 1)]

    restarted = launch("worker", "-A", APP_MODULE, "-c", "4", "--db-path", str(db))
    restarted.wait_ready()
    async with LMDBResultBackend(db) as results:
        every = [await results.wait(task.id, timeout=15) for task in sent]
        attempts = [len(await results.attempts(task.id)) for task in sent]
    assert _stop(restarted) == EXIT_OK
    assert all(result.success for result in every)
    assert attempts == [1] * 6


async def test_worker_second_sigint_stops_at_once_and_requeues_running_tasks(
    launch: Launch, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    worker = launch("worker", "-A", APP_MODULE, "-c", "2", "--db-path", str(db))
    worker.wait_ready()

    async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
        producer = StorageProducer(storage)
        sent = [await producer.send("cli_tests.sleep", 60) for _ in range(2)]

        async def two_running() -> None:
            assert (await storage.counts()).leased == 2

        await eventually(two_running, timeout=15)
        worker.signal(signal.SIGINT)
        worker.wait_stderr("waiting for 2 running tasks")
        worker.signal(signal.SIGINT)
        assert await asyncio.to_thread(worker.wait_exit, 10) == EXIT_OK

        counts = await storage.counts()
        stored = [await results.get(task.id) for task in sent]

    assert (counts.ready, counts.leased) == (2, 0)
    assert stored == [None, None]
    assert "stopping at once" in worker.stderr()
    assert worker.stderr().count("interrupted by shutdown, requeued") == 2


def test_worker_with_unreachable_storage_fails_before_ready(tmp_path: Path) -> None:
    """A wrong host or port is a start-up error, not a worker that says "ready" forever."""
    pytest.importorskip("redis")
    done = subprocess.run(
        [*looplane_argv(), "worker", "--storage", "redis"],
        cwd=tmp_path,
        env=child_env({"LOOPLANE_STORAGE__URL": "redis://user:sekret@127.0.0.1:1/0"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Worker ready" not in done.stdout
    assert "unreachable" in done.stderr
    assert "sekret" not in done.stdout + done.stderr
