"""``looplane inspect``, ``requeue`` and ``purge`` against an LMDB store that the test fills.

The store holds one task in each state a user can see: two succeeded, one whose only attempt
failed (so it is dead-lettered with a failed final result), one set aside because no module
registered its function, one leased, one ready and one delayed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from looplane import (
    InMemoryStorage,
    JSONSerializer,
    LMDBResultBackend,
    LMDBStorage,
    Orchestrator,
    StorageConsumer,
    StorageProducer,
    Task,
)
from looplane.cli import app
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from looplane.errors import StorageUnavailable
from looplane.storage import NewTask, QueueCounts
from looplane.task import new_task_id, register_task
from tests.cli._process import child_env, looplane_argv

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from typer.testing import CliRunner, Result

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
ADD = "inspect_tests.add"
FAIL = "inspect_tests.fail"
MISSING = "inspect_tests.missing"


@register_task(name=ADD)
async def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


@register_task(name=FAIL)
async def fail(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


@dataclass(frozen=True, slots=True)
class Filled:
    """The ids of the tasks `fill` left in each state."""

    succeeded: list[str]
    failed: str
    unknown: str
    leased: str
    ready: str
    delayed: str


async def _fill(db: Path) -> Filled:
    async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
        producer = StorageProducer(storage)
        sent = [
            await producer.send(add, 1, 2),
            await producer.send(add, 3, 4),
            await producer.send(fail, "boom", retries=0),
            await producer.send(MISSING, retries=0),
        ]
        orchestrator = Orchestrator(StorageConsumer(storage), results, 4)
        await orchestrator.start()
        for task in sent:
            await results.wait(task.id, timeout=20)
        await orchestrator.stop()

        leased = await producer.send(add, 7, 8)
        (claim,) = await storage.claim(1)
        assert claim.task_id == leased.id
        ready = await producer.send(add, 5, 6)
        delayed = Task(id=new_task_id(), name=ADD, args=(9, 10))
        await storage.enqueue(
            [
                NewTask(
                    task_id=delayed.id,
                    payload=JSONSerializer().serialize(delayed),
                    max_attempts=delayed.max_attempts,
                    delay_s=3600,
                )
            ]
        )
    return Filled(
        succeeded=[sent[0].id, sent[1].id],
        failed=sent[2].id,
        unknown=sent[3].id,
        leased=leased.id,
        ready=ready.id,
        delayed=delayed.id,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def filled(db: Path) -> Filled:
    return asyncio.run(_fill(db))


def invoke(runner: CliRunner, db: Path, *args: str, stdin: str | None = None) -> Result:
    return runner.invoke(app, [*args, "--db-path", str(db)], input=stdin)


def as_json(result: Result) -> Any:
    assert result.exit_code == EXIT_OK, result.output
    return json.loads(result.stdout)


def counts(db: Path) -> QueueCounts:
    async def read() -> QueueCounts:
        async with LMDBStorage(db) as storage:
            return await storage.counts()

    return asyncio.run(read())


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Each table line that starts with a task id, split into cells (2+ spaces apart)."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if re.fullmatch(r"[0-9a-f]{32}", cells[0]):
            rows[cells[0]] = cells[1:]
    return rows


# inspect queue -----------------------------------------------------------------------------


EXPECTED_COUNTS = {"ready": 1, "leased": 1, "delayed": 1, "dead": 2, "succeeded": 2, "failed": 2}


def test_inspect_queue_json_counts_every_state(runner: CliRunner, db: Path, filled: Filled) -> None:
    document = as_json(invoke(runner, db, "inspect", "queue", "--json"))

    assert document == {"queue": "default", **EXPECTED_COUNTS}


def test_inspect_queue_table_counts_every_state(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "inspect", "queue")

    assert result.exit_code == EXIT_OK, result.output
    shown = dict(re.findall(r"^\s*(\w+)\s+(\d+)\s*$", result.stdout, flags=re.MULTILINE))
    assert shown == {word: str(number) for word, number in EXPECTED_COUNTS.items()}
    assert f"queue 'default' at {db}" in result.stdout


# inspect tasks -----------------------------------------------------------------------------


def test_inspect_tasks_json_shows_each_task_once_newest_first(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    document = as_json(invoke(runner, db, "inspect", "tasks", "--json"))

    statuses = {row["task_id"]: row["status"] for row in document}
    assert statuses == {
        filled.succeeded[0]: "succeeded",
        filled.succeeded[1]: "succeeded",
        filled.failed: "dead",
        filled.unknown: "dead",
        filled.leased: "leased",
        filled.ready: "ready",
        filled.delayed: "delayed",
    }
    ids = [row["task_id"] for row in document]
    assert ids == sorted(ids, reverse=True)
    assert all(set(row) == set(document[0]) for row in document)


def test_inspect_tasks_json_describes_stored_and_finished_tasks(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    document = as_json(invoke(runner, db, "inspect", "tasks", "--json"))

    rows = {row["task_id"]: row for row in document}
    ready = rows[filled.ready]
    assert (ready["name"], ready["args"], ready["kwargs"]) == (ADD, [5, 6], {})
    assert (ready["attempts"], ready["max_attempts"], ready["finished_at"]) == (0, 4, None)
    assert ISO_UTC.match(ready["enqueued_at"])
    done = rows[filled.succeeded[0]]
    assert (done["name"], done["value"], done["error"], done["attempts"]) == (ADD, 3, None, 1)
    assert ISO_UTC.match(done["finished_at"])
    dead = rows[filled.failed]
    assert dead["reason"] == "failed on attempt 1 of 1: ValueError: boom"
    assert ISO_UTC.match(dead["finished_at"])
    assert rows[filled.leased]["attempts"] == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param("ready", ["ready"], id="ready"),
        pytest.param("queued", ["ready"], id="queued"),
        pytest.param("leased", ["leased"], id="leased"),
        pytest.param("running", ["leased"], id="running"),
        pytest.param("delayed", ["delayed"], id="delayed"),
        pytest.param("dead", ["failed", "unknown"], id="dead"),
        pytest.param("succeeded", ["succeeded"], id="succeeded"),
        pytest.param("failed", ["failed", "unknown"], id="failed"),
        pytest.param("FAILED", ["failed", "unknown"], id="any-case"),
    ],
)
def test_inspect_tasks_status_selects_one_state(
    runner: CliRunner, db: Path, filled: Filled, status: str, expected: list[str]
) -> None:
    document = as_json(invoke(runner, db, "inspect", "tasks", "--status", status, "--json"))

    wanted: list[str] = []
    for field in expected:
        value = getattr(filled, field)
        wanted.extend(value if isinstance(value, list) else [value])
    assert sorted(row["task_id"] for row in document) == sorted(wanted)
    assert len({row["status"] for row in document}) == 1


def test_inspect_tasks_failed_shows_the_error(runner: CliRunner, db: Path, filled: Filled) -> None:
    document = as_json(invoke(runner, db, "inspect", "tasks", "--status", "failed", "--json"))

    errors = {row["task_id"]: row["error"] for row in document}
    assert errors[filled.failed] == "ValueError: boom"
    assert errors[filled.unknown].startswith(f"unknown task {MISSING!r}")


def test_inspect_tasks_name_and_limit_filter(runner: CliRunner, db: Path, filled: Filled) -> None:
    named = as_json(invoke(runner, db, "inspect", "tasks", "--name", FAIL, "--json"))
    limited = as_json(
        invoke(runner, db, "inspect", "tasks", "--name", ADD, "--limit", "2", "--json")
    )

    assert [row["task_id"] for row in named] == [filled.failed]
    assert [row["task_id"] for row in limited] == sorted([filled.ready, filled.delayed])[::-1]


def test_inspect_tasks_table_shows_status_attempt_and_detail(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "inspect", "tasks")

    assert result.exit_code == EXIT_OK, result.output
    rows = table_rows(result.stdout)
    assert len(rows) == 7
    assert rows[filled.ready][:3] == [ADD, "ready", "0/4"]
    assert rows[filled.ready][-1] == "(5, 6)"
    assert rows[filled.succeeded[0]][:3] == [ADD, "succeeded", "1/4"]
    assert rows[filled.succeeded[0]][-1] == "3"
    assert rows[filled.failed][:3] == [FAIL, "dead", "1/1"]
    assert rows[filled.failed][-1] == "failed on attempt 1 of 1: ValueError: boom"
    assert "7 shown, newest first" in result.stdout


def test_inspect_tasks_bad_status_exits_2(runner: CliRunner, db: Path, filled: Filled) -> None:
    result = invoke(runner, db, "inspect", "tasks", "--status", "sleeping")

    assert result.exit_code == EXIT_CONFIG
    assert "'sleeping' is not one of: queued|ready, running|leased" in result.output


# inspect result ----------------------------------------------------------------------------


def test_inspect_result_json_lists_every_attempt(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    document = as_json(invoke(runner, db, "inspect", "result", filled.failed, "--json"))

    (attempt,) = document
    assert attempt["task_id"] == filled.failed
    assert (attempt["name"], attempt["attempt"], attempt["max_attempts"]) == (FAIL, 1, 1)
    assert (attempt["success"], attempt["will_retry"]) == (False, False)
    assert (attempt["error"], attempt["error_type"]) == ("ValueError: boom", "ValueError")
    assert "Traceback" in attempt["traceback"]
    for key in ("fetched_at", "started_at", "finished_at"):
        assert ISO_UTC.match(attempt[key]), key
    assert attempt["duration_s"] >= 0


def test_inspect_result_table_shows_the_outcome(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "inspect", "result", filled.succeeded[1])

    assert result.exit_code == EXIT_OK, result.output
    assert f"Task {filled.succeeded[1]} {ADD}" in result.stdout
    assert re.search(r"^\s*1/4\s+ok\s+.*\s7\s*$", result.stdout, flags=re.MULTILINE), result.stdout


async def _fail_with(db: Path, message: str) -> str:
    async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
        task = await StorageProducer(storage).send(fail, message, retries=0)
        orchestrator = Orchestrator(StorageConsumer(storage), results, 1)
        await orchestrator.start()
        await results.wait(task.id, timeout=20)
        await orchestrator.stop()
    return task.id


@pytest.mark.parametrize("command", [("result",), ("tasks",), ("dead",)])
def test_inspect_shows_task_text_as_text_not_markup_or_escapes(
    runner: CliRunner, db: Path, command: tuple[str, ...]
) -> None:
    # Brackets once made rich read an error as markup (a stray closing tag crashed the
    # table), and an escape sequence went to the terminal as is.
    task_id = asyncio.run(_fail_with(db, "bad [/x] [bold]b[/bold] \x1b[31mred"))
    args = (*command, task_id) if command == ("result",) else command

    result = invoke(runner, db, "inspect", *args)

    assert result.exit_code == EXIT_OK, result.output
    assert "\x1b" not in result.stdout
    if command != ("tasks",):  # its detail column is too narrow here for the whole text
        assert "bad [/x] [bold]b[/bold] \\x1b[31mred" in result.stdout


def test_inspect_result_of_a_task_without_results_exits_1(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "inspect", "result", filled.ready, "--json")

    assert result.exit_code == EXIT_FAILURE
    assert result.stdout == ""
    assert f"error: no result for task {filled.ready}" in result.stderr


def test_inspect_result_of_a_malformed_id_exits_2(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "inspect", "result", "not-an-id")

    assert result.exit_code == EXIT_CONFIG
    assert "task id 'not-an-id' is not a UUID" in result.stderr


# inspect dead ------------------------------------------------------------------------------


def test_inspect_dead_json_gives_reasons(runner: CliRunner, db: Path, filled: Filled) -> None:
    document = as_json(invoke(runner, db, "inspect", "dead", "--json"))

    reasons = {row["task_id"]: row["reason"] for row in document}
    assert reasons == {
        filled.failed: "failed on attempt 1 of 1: ValueError: boom",
        filled.unknown: f"unknown task {MISSING!r}: no loaded module registered it",
    }
    for row in document:
        assert ISO_UTC.match(row["failed_at"])
        assert ISO_UTC.match(row["enqueued_at"])
        assert (row["attempts"], row["max_attempts"]) == (1, 1)


def test_inspect_dead_table_gives_reasons(runner: CliRunner, db: Path, filled: Filled) -> None:
    result = invoke(runner, db, "inspect", "dead", "--limit", "1")

    assert result.exit_code == EXIT_OK, result.output
    newest = max(filled.failed, filled.unknown)
    rows = table_rows(result.stdout)
    assert list(rows) == [newest]
    assert rows[newest][0] == (FAIL if newest == filled.failed else MISSING)
    assert rows[newest][-1].startswith(("failed on attempt", "unknown task"))


def test_inspect_views_of_an_empty_store(runner: CliRunner, db: Path) -> None:
    asyncio.run(LMDBStorage(db).close())

    assert as_json(invoke(runner, db, "inspect", "tasks", "--json")) == []
    assert as_json(invoke(runner, db, "inspect", "dead", "--json")) == []
    empty = invoke(runner, db, "inspect", "tasks")
    assert empty.exit_code == EXIT_OK
    assert "0 shown" in empty.stdout


# requeue -----------------------------------------------------------------------------------


def test_requeue_one_task_makes_it_ready(runner: CliRunner, db: Path, filled: Filled) -> None:
    result = invoke(runner, db, "requeue", filled.unknown)

    assert (result.exit_code, result.stdout) == (EXIT_OK, "requeued 1 task\n")
    assert counts(db) == QueueCounts(ready=2, leased=1, delayed=1, dead=1)


def test_requeue_failed_skips_tasks_set_aside_for_other_reasons(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "requeue", "--failed")

    assert (result.exit_code, result.stdout) == (EXIT_OK, "requeued 1 task\n")
    document = as_json(invoke(runner, db, "inspect", "dead", "--json"))
    assert [row["task_id"] for row in document] == [filled.unknown]
    # Its failed final result stays, but storage says where the task is now.
    listed = as_json(invoke(runner, db, "inspect", "tasks", "--json"))
    assert [row["status"] for row in listed if row["task_id"] == filled.failed] == ["ready"]


def test_requeue_dead_puts_every_dead_task_back(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "requeue", "--dead")

    assert (result.exit_code, result.stdout) == (EXIT_OK, "requeued 2 tasks\n")
    assert counts(db) == QueueCounts(ready=3, leased=1, delayed=1, dead=0)
    again = invoke(runner, db, "requeue", "--dead")
    assert again.stdout == "requeued 0 tasks\n"


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("ready", id="ready"),
        pytest.param("succeeded", id="succeeded"),
        pytest.param("never-sent", id="unknown"),
    ],
)
def test_requeue_of_a_task_that_is_not_dead_exits_1_as_inspect_result_does(
    runner: CliRunner, db: Path, filled: Filled, which: str
) -> None:
    task_id = {"ready": filled.ready, "succeeded": filled.succeeded[0]}.get(which, new_task_id())

    result = invoke(runner, db, "requeue", task_id)

    assert result.exit_code == EXIT_FAILURE
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: no dead-lettered task {task_id}: "), result.stderr
    assert result.stderr.rstrip().endswith("; nothing requeued"), result.stderr
    assert counts(db).dead == 2


def test_requeue_of_a_malformed_id_exits_2_before_opening_the_store(
    runner: CliRunner, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"

    result = invoke(runner, missing, "requeue", "nope")

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith("error: TASK_ID: task id 'nope' is not a UUID"), result.stderr
    assert "StorageError" not in result.stderr
    assert not missing.exists()


def test_requeue_accepts_a_task_id_in_any_uuid_form(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    dashed = str(uuid.UUID(filled.unknown)).upper()

    result = invoke(runner, db, "requeue", dashed)

    assert (result.exit_code, result.stdout) == (EXIT_OK, "requeued 1 task\n")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="none"),
        pytest.param(["--dead", "--failed"], id="two-flags"),
        pytest.param(["0" * 32, "--dead"], id="id-and-flag"),
    ],
)
def test_requeue_needs_exactly_one_target(
    runner: CliRunner, db: Path, filled: Filled, args: list[str]
) -> None:
    result = invoke(runner, db, "requeue", *args)

    assert result.exit_code == EXIT_CONFIG
    assert "error: give exactly one of TASK_ID, --dead or --failed" in result.stderr
    assert counts(db).dead == 2


# purge -------------------------------------------------------------------------------------


def test_purge_yes_removes_waiting_tasks_only(runner: CliRunner, db: Path, filled: Filled) -> None:
    result = invoke(runner, db, "purge", "--yes")

    assert (result.exit_code, result.stdout) == (EXIT_OK, "removed 2 tasks (ready and delayed)\n")
    assert counts(db) == QueueCounts(ready=0, leased=1, delayed=0, dead=2)


def test_purge_asks_first_and_proceeds_on_yes(runner: CliRunner, db: Path, filled: Filled) -> None:
    result = invoke(runner, db, "purge", stdin="y\n")

    assert result.exit_code == EXIT_OK, result.output
    assert f"Remove 2 ready and delayed tasks from queue 'default' at {db}?" in result.stdout
    assert result.stdout.endswith("removed 2 tasks (ready and delayed)\n")
    assert counts(db).ready == 0


@pytest.mark.parametrize(
    "answer", [pytest.param("n\n", id="no"), pytest.param("", id="end-of-input")]
)
def test_purge_declined_removes_nothing(
    runner: CliRunner, db: Path, filled: Filled, answer: str
) -> None:
    result = invoke(runner, db, "purge", stdin=answer)

    assert result.exit_code == EXIT_FAILURE
    assert "error: purge cancelled; nothing was removed" in result.stderr
    assert counts(db) == QueueCounts(ready=1, leased=1, delayed=1, dead=2)


def test_purge_dead_removes_dead_lettered_tasks(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "purge", "--dead", "--yes")

    assert (result.exit_code, result.stdout) == (EXIT_OK, "removed 2 tasks (dead-lettered)\n")
    assert counts(db) == QueueCounts(ready=1, leased=1, delayed=1, dead=0)


# Where the store is ------------------------------------------------------------------------


COMMANDS = [
    pytest.param(["inspect", "queue"], id="inspect-queue"),
    pytest.param(["inspect", "tasks", "--json"], id="inspect-tasks"),
    pytest.param(["inspect", "result", "0" * 32], id="inspect-result"),
    pytest.param(["inspect", "dead"], id="inspect-dead"),
    pytest.param(["requeue", "--dead"], id="requeue"),
    pytest.param(["purge", "--yes"], id="purge"),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_memory_storage_is_refused(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--storage", "memory"])

    assert result.exit_code == EXIT_CONFIG
    assert re.match(r"error: storage\.backend: `looplane \w+", result.stderr), result.stderr
    assert "a 'memory' store is only visible inside its own process" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", COMMANDS)
def test_missing_store_is_refused_not_created(
    runner: CliRunner, tmp_path: Path, args: list[str]
) -> None:
    missing = tmp_path / "nowhere"

    result = runner.invoke(app, [*args, "--db-path", str(missing)])

    assert result.exit_code == EXIT_CONFIG
    assert f"error: storage.path: no LMDB store at {missing}" in result.stderr
    assert not missing.exists()


def test_store_is_found_through_the_environment(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = runner.invoke(
        app, ["inspect", "queue", "--json"], env={"LOOPLANE_STORAGE__PATH": str(db)}
    )

    assert as_json(result)["ready"] == 1


def test_table_times_are_local(runner: CliRunner, db: Path, filled: Filled) -> None:
    document = as_json(invoke(runner, db, "inspect", "tasks", "--status", "ready", "--json"))
    table = invoke(runner, db, "inspect", "tasks", "--status", "ready")

    sent = datetime.fromisoformat(document[0]["enqueued_at"]).astimezone()
    assert table_rows(table.stdout)[filled.ready][3] == sent.strftime("%Y-%m-%d %H:%M:%S")


def test_requeue_pages_through_many_dead_tasks(
    runner: CliRunner, db: Path, filled: Filled, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("looplane.cli.admin._LIST_PAGE", 1)

    result = invoke(runner, db, "requeue", "--dead")

    assert result.stdout == "requeued 2 tasks\n"


class UnreachableStorage(InMemoryStorage):
    """A store whose every count fails, as one whose server went away does."""

    async def counts(self, *, queue: str = "default") -> QueueCounts:
        raise StorageUnavailable("no answer from the test store", backend="test")


def test_storage_error_exits_1_naming_it(runner: CliRunner) -> None:
    storage = f"{__name__}:{UnreachableStorage.__name__}"

    result = runner.invoke(app, ["inspect", "queue", "--storage", storage])

    assert result.exit_code == EXIT_FAILURE
    assert result.stderr == "error: StorageUnavailable: no answer from the test store\n"


UNOPENABLE = [
    *COMMANDS,
    pytest.param(["monitor"], id="monitor"),
    pytest.param(["enqueue", ADD, "[1, 2]"], id="enqueue"),
    pytest.param(["worker"], id="worker"),
]


@pytest.fixture(
    params=[
        pytest.param("name-too-long", id="name-too-long"),
        pytest.param(
            "no-permission",
            id="no-permission",
            marks=pytest.mark.skipif(
                os.geteuid() == 0, reason="root reads a directory of mode 000 all the same"
            ),
        ),
    ]
)
def unopenable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An LMDB path this process cannot look into, even as root (a name over 255 bytes)."""
    if request.param == "name-too-long":
        yield tmp_path / ("x" * 300)
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    yield locked
    locked.chmod(0o700)


@pytest.mark.parametrize("args", UNOPENABLE)
def test_store_that_cannot_be_opened_exits_2_as_for_every_command(
    runner: CliRunner, unopenable: Path, args: list[str]
) -> None:
    """Every command that opens storage reports it as the worker does: one line, exit 2."""
    result = runner.invoke(app, [*args, "--db-path", str(unopenable)])

    assert result.exit_code == EXIT_CONFIG, result.output
    assert result.stderr.startswith("error: storage.path: cannot open LMDB there: "), result.stderr
    assert "from flag --db-path" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        pytest.param(
            "LOOPLANE_RESULTS__BACKEND", "no_such_module:Results", "results.backend", id="results"
        ),
        pytest.param("LOOPLANE_SERIALIZER__ENCODING", "klingon", "serializer", id="serializer"),
    ],
)
def test_backend_that_cannot_be_built_exits_2(
    runner: CliRunner, db: Path, filled: Filled, variable: str, value: str, expected: str
) -> None:
    result = runner.invoke(app, ["inspect", "queue", "--db-path", str(db)], env={variable: value})

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith(f"error: {expected}"), result.stderr


def test_storage_that_cannot_be_built_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["inspect", "queue", "--storage", "no_such_module:Storage"])

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith("error: storage.backend: cannot import"), result.stderr


def test_inspect_tasks_table_shows_errors_of_failed_tasks(
    runner: CliRunner, db: Path, filled: Filled
) -> None:
    result = invoke(runner, db, "inspect", "tasks", "--status", "failed")

    rows = table_rows(result.stdout)
    assert rows[filled.failed][:3] == [FAIL, "failed", "1/1"]
    assert rows[filled.failed][-1] == "ValueError: boom"


async def _send_odd_tasks(db: Path) -> tuple[str, str]:
    async with LMDBStorage(db) as storage:
        odd = await StorageProducer(storage).send(
            ADD, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), b"\x00raw"
        )
        garbage = new_task_id()
        await storage.enqueue([NewTask(task_id=garbage, payload=b"\xffnot json", max_attempts=1)])
    return odd.id, garbage


def test_inspect_tasks_shows_odd_arguments_and_undecodable_payloads(
    runner: CliRunner, db: Path
) -> None:
    odd, garbage = asyncio.run(_send_odd_tasks(db))

    document = as_json(invoke(runner, db, "inspect", "tasks", "--json"))
    table = invoke(runner, db, "inspect", "tasks")

    rows = {row["task_id"]: row for row in document}
    assert rows[odd]["args"] == ["2030-01-02T03:04:05+00:00", "b'\\x00raw'"]
    assert (rows[garbage]["name"], rows[garbage]["args"]) == (None, None)
    cells = table_rows(table.stdout)
    assert cells[garbage][0] == "?"
    assert cells[garbage][-1] == "<payload not decodable>"


# Root passes every permission check; without these two capabilities it is refused as
# another user would be.
_WITHOUT_ROOT_ACCESS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _as_another_user() -> list[str]:
    """The command prefix that makes a store owned by someone else unreadable to us."""
    if os.geteuid() != 0:
        return []
    probe = subprocess.run([*_WITHOUT_ROOT_ACCESS, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("running as root, and setpriv cannot drop the capabilities here")
    return _WITHOUT_ROOT_ACCESS


@pytest.fixture
def foreign_store(tmp_path: Path) -> Iterator[Path]:
    """An LMDB store in a directory of mode 0700 that belongs to another user."""
    store = tmp_path / "foreign"
    asyncio.run(LMDBStorage(store).close())
    if os.geteuid() == 0:
        os.chown(store, 65534, 65534)
        store.chmod(0o700)
    else:
        store.chmod(0)
    yield store
    store.chmod(0o700)


@pytest.mark.parametrize(
    ("args", "by_env"),
    [
        *(pytest.param(param.values[0], False, id=param.id) for param in COMMANDS),
        pytest.param(["inspect", "queue"], True, id="inspect-queue-env"),
    ],
)
def test_store_of_another_user_exits_2_in_one_line(
    foreign_store: Path, args: list[str], by_env: bool
) -> None:
    """The case from the field: ``/tmp/looplane`` made by another user, mode 0700."""
    prefix = _as_another_user()
    where = [] if by_env else ["--db-path", str(foreign_store)]
    env = child_env({"LOOPLANE_STORAGE__PATH": str(foreign_store)} if by_env else None)

    done = subprocess.run(
        [*prefix, *looplane_argv(), *args, *where],
        capture_output=True,
        text=True,
        env=env,
        cwd=foreign_store.parent,
        timeout=20,
        check=False,
    )

    assert done.returncode == EXIT_CONFIG, done.stderr
    assert done.stderr.startswith("error: storage.path: cannot open LMDB there: "), done.stderr
    assert "Permission denied" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
