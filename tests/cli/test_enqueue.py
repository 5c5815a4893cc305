from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import pytest

from looplane import LMDBStorage
from looplane.cli import app
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT
from tests.cli.conftest import APP_MODULE

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from typer.testing import CliRunner

    from tests.cli._process import LooplaneProcess

TASK_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def worker(launch: Callable[..., LooplaneProcess], db: Path) -> LooplaneProcess:
    """A real worker process on the LMDB directory `db`, running the test task functions."""
    process = launch("worker", "-A", APP_MODULE, "--db-path", str(db))
    process.wait_ready()
    return process


def _enqueue(runner: CliRunner, db: Path, *args: str) -> tuple[int, list[str], str]:
    result = runner.invoke(app, ["enqueue", *args, "--db-path", str(db)])
    return result.exit_code, result.stdout.splitlines(), result.stderr


async def _counts(db: Path) -> tuple[int, int]:
    async with LMDBStorage(db) as storage:
        counts = await storage.counts()
    return counts.ready, counts.dead


# Arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["cli_tests.add", "[1, 2"], r"ARGS_JSON: not valid JSON", id="args"),
        pytest.param(
            ["cli_tests.add", "--kwargs", "{b: 2}"], r"--kwargs: not valid JSON", id="kwargs"
        ),
        pytest.param(
            ["cli_tests.add", "--kwargs", "[2]"], r"--kwargs: must be a JSON object", id="kw-list"
        ),
        pytest.param(["cli_tests.add", "--timeout", "soon"], r"--timeout: ", id="timeout"),
        pytest.param(["cli_tests.add", "--wait-timeout", "x"], r"--wait-timeout: ", id="wait"),
        pytest.param(
            ["cli_tests.add", "--timeout", "0s"], r"--timeout: must be more than 0", id="zero"
        ),
    ],
)
def test_enqueue_bad_argument_exits_2_naming_it(
    runner: CliRunner, db: Path, args: list[str], expected: str
) -> None:
    code, stdout, stderr = _enqueue(runner, db, *args)

    assert code == EXIT_CONFIG
    assert re.match(rf"error: {expected}", stderr), stderr
    assert "Traceback" not in stderr
    assert stdout == []
    assert not db.exists()


def test_enqueue_negative_retries_is_a_usage_error(runner: CliRunner, db: Path) -> None:
    code, _, stderr = _enqueue(runner, db, "cli_tests.add", "--retries", "-1")

    assert code == EXIT_CONFIG
    assert "--retries" in stderr


def test_enqueue_refuses_memory_storage_that_no_worker_could_read(runner: CliRunner) -> None:
    result = runner.invoke(app, ["enqueue", "cli_tests.add", "[1, 2]", "--storage", "memory"])

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith("error: storage.backend: ")
    assert result.stdout == ""


# Sending -----------------------------------------------------------------------------------


def test_enqueue_prints_the_id_of_the_stored_task(runner: CliRunner, db: Path) -> None:
    code, stdout, stderr = _enqueue(runner, db, "cli_tests.add", "[1, 2]")

    assert code == EXIT_OK, stderr
    assert len(stdout) == 1
    assert TASK_ID.match(stdout[0])
    assert asyncio.run(_counts(db)) == (1, 0)


def test_enqueue_refuses_a_task_the_app_modules_do_not_register(
    runner: CliRunner, db: Path
) -> None:
    code, stdout, stderr = _enqueue(runner, db, "cli_tests.ad", "[1, 2]", "-A", APP_MODULE)

    assert code == EXIT_CONFIG
    assert stdout == []
    assert stderr == (
        f"error: TASK: no task function 'cli_tests.ad' is registered by the app modules "
        f"({APP_MODULE}); did you mean 'cli_tests.add'? Nothing was sent.\n"
    )
    assert not db.exists()


def test_enqueue_refuses_a_task_the_configured_app_modules_do_not_register(
    runner: CliRunner, db: Path
) -> None:
    result = runner.invoke(
        app,
        ["enqueue", "nosuchtask", "--db-path", str(db)],
        env={"LOOPLANE_APP": f'["{APP_MODULE}"]'},
    )

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith(
        f"error: TASK: no task function 'nosuchtask' is registered by the app modules "
        f"({APP_MODULE}); they register: cli_tests.add, "
    ), result.stderr
    assert not db.exists()


def test_enqueue_without_app_modules_sends_any_name(runner: CliRunner, db: Path) -> None:
    """The producer need not import the task functions: only a worker runs them."""
    code, stdout, stderr = _enqueue(runner, db, "elsewhere.task", "[1]")

    assert code == EXIT_OK, stderr
    assert TASK_ID.match(stdout[0])
    assert stderr == ""
    assert asyncio.run(_counts(db)) == (1, 0)


def test_enqueue_wait_timeout_exits_124_and_leaves_the_task_queued(
    runner: CliRunner, db: Path
) -> None:
    code, stdout, stderr = _enqueue(
        runner, db, "cli_tests.add", "[1, 2]", "--wait", "--wait-timeout", "200ms"
    )

    assert code == EXIT_TIMEOUT
    assert TASK_ID.match(stdout[0])
    assert stdout[0] in stderr
    assert "stays queued" in stderr
    assert asyncio.run(_counts(db)) == (1, 0)


# Against a worker --------------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_enqueue_wait_prints_the_id_then_the_result(runner: CliRunner, db: Path) -> None:
    code, stdout, stderr = _enqueue(runner, db, "cli_tests.add", "[2, 3]", "--wait")

    assert code == EXIT_OK, stderr
    assert TASK_ID.match(stdout[0])
    assert stdout[1:] == ["5"]


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(
    ("args", "printed"),
    [
        pytest.param(["cli_tests.add", "[1]", "--kwargs", '{"b": 41}'], "42", id="kwargs"),
        pytest.param(["cli_tests.echo", '{"a": [1, 2]}'], '{"a": [1, 2]}', id="scalar-object"),
        pytest.param(["cli_tests.echo", '"text"'], '"text"', id="scalar-string"),
        pytest.param(["cli_tests.echo", "[[1, 2]]"], "[1, 2]", id="array-in-array"),
        pytest.param(["cli_tests.echo", "null"], "null", id="null"),
    ],
)
def test_enqueue_wait_passes_json_arguments_through(
    runner: CliRunner, db: Path, args: list[str], printed: str
) -> None:
    code, stdout, stderr = _enqueue(runner, db, *args, "--wait")

    assert code == EXIT_OK, stderr
    assert stdout[1:] == [printed]


@pytest.mark.usefixtures("worker")
def test_enqueue_wait_on_a_failed_task_exits_1_with_its_error(runner: CliRunner, db: Path) -> None:
    code, stdout, stderr = _enqueue(
        runner, db, "cli_tests.fail", '"disk full"', "--retries", "0", "--wait"
    )

    assert code == EXIT_FAILURE
    assert TASK_ID.match(stdout[0])
    assert stdout[1:] == []
    assert re.match(
        rf"error: task {stdout[0]} cli_tests.fail failed on attempt 1 of 1: ValueError: disk full",
        stderr,
    )
    assert "Traceback" not in stderr


@pytest.mark.usefixtures("worker")
def test_enqueue_wait_prints_a_failed_task_error_on_one_line(runner: CliRunner, db: Path) -> None:
    code, _, stderr = _enqueue(
        runner,
        db,
        "cli_tests.fail",
        '"line one\\nline two \\u001b[31mred"',
        "--retries",
        "0",
        "--wait",
    )

    assert code == EXIT_FAILURE
    assert "ValueError: line one\\nline two \\x1b[31mred" in stderr
    assert "\x1b" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.usefixtures("worker")
def test_enqueue_wait_verbose_on_a_failed_task_shows_its_traceback(
    runner: CliRunner, db: Path
) -> None:
    code, _, stderr = _enqueue(
        runner, db, "cli_tests.fail", '"disk full"', "--retries", "0", "--wait", "-v"
    )

    assert code == EXIT_FAILURE
    assert "Traceback (most recent call last)" in stderr
    assert "raise ValueError(message)" in stderr


@pytest.mark.usefixtures("worker")
def test_enqueue_with_app_modules_sends_a_registered_task_without_warning(
    runner: CliRunner, db: Path
) -> None:
    code, stdout, stderr = _enqueue(
        runner, db, "-A", APP_MODULE, "cli_tests.sleep", "[0.01]", "--timeout", "5s", "--wait"
    )

    assert code == EXIT_OK, stderr
    assert stdout[1:] == ["0.01"]
    assert "warning" not in stderr


@pytest.mark.usefixtures("worker")
def test_enqueue_wait_shows_a_result_json_cannot_hold_as_python(
    runner: CliRunner, db: Path
) -> None:
    code, stdout, stderr = _enqueue(runner, db, "cli_tests.encode", '"abc"', "--wait")

    assert code == EXIT_OK, stderr
    assert stdout[1:] == ["b'abc'"]


def test_enqueue_unknown_storage_backend_exits_2_naming_the_setting(runner: CliRunner) -> None:
    result = runner.invoke(app, ["enqueue", "cli_tests.add", "--storage", "nosuch"])

    assert result.exit_code == EXIT_CONFIG
    assert re.match(r"error: storage\.backend: .*'nosuch'.*flag --storage", result.stderr)
    assert result.stdout == ""


def test_enqueue_argument_over_the_payload_limit_exits_2(runner: CliRunner, db: Path) -> None:
    result = runner.invoke(
        app,
        ["enqueue", "cli_tests.echo", '"' + "x" * 500 + '"', "--db-path", str(db)],
        env={"LOOPLANE_SERIALIZER__MAX_PAYLOAD": "256"},
    )

    assert result.exit_code == EXIT_CONFIG
    assert re.match(r"error: .*max_payload_bytes", result.stderr), result.stderr
    assert result.stdout == ""
    assert asyncio.run(_counts(db)) == (0, 0)
