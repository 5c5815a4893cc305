"""Every example runs as its docstring and the README say, and prints what it claims.

The main job: ``looplane worker -A examples.myapp.tasks --storage lmdb`` in one process and
``python examples/myapp/enqueue.py`` in another store every task's result, the flaky one
after its retries, and the worker then stops cleanly on SIGINT.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from examples.myapp.tasks import count_words, file_digest, list_files, write_report
from looplane import LMDBResultBackend
from tests.conftest import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

    from looplane import TaskResult

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ENQUEUE = EXAMPLES / "myapp" / "enqueue.py"
SCRIPT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 20.0

# Each example script and the test that runs it; example_lmdb.py runs in test_readme.py.
TESTED_SCRIPTS = {
    "example_lmdb.py",
    "example_main_1.py",
    "example_producer_consumer.py",
    "example_retry_1.py",
    "example_retry_lmdb.py",
    "example_monitor_demo.py",  # run in a pseudo-terminal by tests/cli/test_monitor_pty.py
}

# The folder the end-to-end test points the example at: relative path -> text.
NOTES = {
    "todo.txt": "buy milk\nwrite the quarterly report\n",
    "ideas.md": "# Ideas\n\nA task queue that needs no server at all.\n",
    "archive/2024.txt": "one two three four five six seven eight nine ten",
    # Skipped by the example: hidden files and __pycache__ folders.
    ".secret": "not counted",
    "__pycache__/junk.txt": "not counted either",
}
COUNTED = ("archive/2024.txt", "ideas.md", "todo.txt")


def child_env() -> dict[str, str]:
    """This environment without LOOPLANE_* settings, so none leaks into a child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLANE_")}
    # Wide enough that rich never wraps a log line or the banner of the worker.
    env["COLUMNS"] = "200"
    return env


def run_script(script: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a Python script from the repository root, as the README does."""
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def run_example(name: str, *args: str | Path) -> list[str]:
    """Run ``examples/<name>``, check that it exits 0, and return its stdout lines."""
    done = run_script(EXAMPLES / name, *args)
    assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def make_notes(folder: Path) -> Path:
    for relative, text in NOTES.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


# The example scripts ----------------------------------------------------------------------


def test_every_example_script_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if p.name != "__init__.py"}
    assert scripts == TESTED_SCRIPTS


@pytest.mark.timeout(90)
def test_example_main_1_prints_each_result_in_send_order() -> None:
    lines = run_example("example_main_1.py")

    assert lines[:2] == ["greet: Hello, Alice!", "greet: Hello, Bob!"]
    expected_digest = hashlib.sha256(b"looplane").hexdigest()[:12]
    assert lines[2] == f"digest: {expected_digest}"
    assert lines[3:8] == [f"slow_square: {n * n}" for n in range(1, 6)]
    assert lines[8].startswith("8 tasks finished in ")


@pytest.mark.timeout(90)
def test_example_producer_consumer_acks_requeues_and_dead_letters() -> None:
    lines = run_example("example_producer_consumer.py")

    assert lines[0] == "sent 5 tasks: QueueCounts(ready=5, leased=0, delayed=0, dead=0)"
    assert "ack   word_count('the quick brown fox jumps over the lazy dog') attempt 1/4: 9" in lines
    assert "ack   slugify('Hello, Async World!') attempt 1/4: 'hello-async-world'" in lines
    eur = [line for line in lines if "exchange_rate('EUR')" in line]
    assert eur[0].startswith("nack  exchange_rate('EUR') attempt 1/3: ConnectionError")
    assert eur[0].endswith("-> back to the queue")
    assert eur[1] == "ack   exchange_rate('EUR') attempt 2/3: 1.08"
    port = [line for line in lines if "parse_port" in line]
    assert [line.endswith("-> dead letters") for line in port] == [False, True]
    assert "at the end: QueueCounts(ready=0, leased=0, delayed=0, dead=1)" in lines
    assert lines[-1].startswith("dead letter ")
    assert lines[-1].endswith("'eighty' (after 2 attempts)")


@pytest.mark.timeout(90)
def test_example_retry_1_prints_every_attempt_of_every_rule() -> None:
    lines = run_example("example_retry_1.py")
    attempts: dict[str, list[str]] = defaultdict(list)
    name = ""
    for line in lines[:-1]:
        if line.startswith("  attempt "):
            attempts[name].append(line.strip())
        else:
            name = line.split(" ", 1)[0]

    flaky = attempts["flaky_fetch"]
    assert [line.split()[1] for line in flaky] == ["1/4", "2/4", "3/4"]
    assert "final  ok '200 OK from https://example.com/data'" in flaky[-1]
    backoff = attempts["backoff_demo"]
    assert len(backoff) == 4
    assert "final  RuntimeError: still down on attempt 4" in backoff[-1]
    # The gaps are measured, so they may run a little over the exponential delays.
    gaps = [float(line.split()[3]) for line in backoff[1:]]
    assert all(delay <= gap < delay + 1 for delay, gap in zip([0.1, 0.2, 0.4], gaps, strict=True))
    slow = attempts["slow_call"]
    assert [line.endswith("TaskTimeout: attempt timed out after 0.3s") for line in slow] == [
        True,
        True,
    ]
    limited = attempts["rate_limited"]
    assert limited[0].endswith("retry  looplane.errors.Retry: 429 Too Many Requests")
    assert float(limited[1].split()[3]) >= 0.25
    assert limited[1].endswith("final  ok 'profile of ada'")
    assert attempts["bad_input"] == [
        "attempt 1/4              final  looplane.errors.Cancel: order id -7 is negative; "
        "retrying cannot help"
    ]
    assert lines[-1] == "2 of 5 tasks succeeded; 3 went to the dead letters"


@pytest.mark.timeout(90)
def test_example_retry_lmdb_keeps_the_delayed_retry_in_storage(tmp_path: Path) -> None:
    db = tmp_path / "db"
    lines = run_example("example_retry_lmdb.py", db)

    waiting = "QueueCounts(ready=0, leased=0, delayed=1, dead=0)"
    assert lines[0].startswith("worker A: attempt 1 failed: ConnectionError")
    assert lines[1] == f"worker A: retry due in 1 s; storage: {waiting}"
    assert lines[2] == "worker A stopped and closed the storage"
    assert lines[3] == f"reopened {db}; storage: {waiting}"
    assert "sync_inventory attempt 3/4  ok 'SKU-1234: 42 in stock'" in lines
    timeouts = [line for line in lines if line.startswith("stuck_export")]
    assert [line.split()[2] for line in timeouts] == ["1/2", "2/2"]
    assert all("TaskTimeout: attempt timed out after 0.3s" in line for line in timeouts)
    assert "worker B done; storage: QueueCounts(ready=0, leased=0, delayed=0, dead=1)" in lines
    assert lines[-1].startswith("dead letter: failed on attempt 2 of 2: ")


# The worker example's tasks, called directly --------------------------------------------


def test_list_files_skips_hidden_and_pycache(tmp_path: Path) -> None:
    folder = make_notes(tmp_path / "notes")

    found = [p.relative_to(folder).as_posix() for p in list_files(folder)]

    assert found == list(COUNTED)


async def test_count_words_and_file_digest_read_the_file(tmp_path: Path) -> None:
    path = make_notes(tmp_path / "notes") / "archive" / "2024.txt"

    assert await count_words(str(path)) == 10
    assert file_digest(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "suffix", [pytest.param(".md", id="markdown"), pytest.param(".json", id="json")]
)
def test_write_report_writes_counts_and_returns_a_summary(tmp_path: Path, suffix: str) -> None:
    folder = make_notes(tmp_path / "notes")
    out = tmp_path / "out" / f"report{suffix}"

    summary = write_report(str(folder), str(out))

    assert summary == {"folder": str(folder), "files": 3, "words": 27, "report": str(out)}
    text = out.read_text(encoding="utf-8")
    if suffix == ".json":
        assert json.loads(text)["files"] == {"archive/2024.txt": 10, "ideas.md": 11, "todo.txt": 6}
    else:
        assert "| archive/2024.txt | 10 |" in text
        assert text.endswith("3 files, 27 words.\n")


@pytest.mark.timeout(90)
def test_enqueue_without_a_worker_exits_1_and_says_what_to_run(tmp_path: Path) -> None:
    folder = make_notes(tmp_path / "notes")
    db = tmp_path / "db"

    done = run_script(ENQUEUE, "--db-path", db, "--timeout", "0.5", folder)

    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[-1] == "0 of 7 final results arrived, 0 succeeded"
    assert f"looplane worker -A examples.myapp.tasks --storage lmdb --db-path {db}" in done.stderr


# The main job, end to end -------------------------------------------------------------------


def worker_command() -> list[str]:
    """The installed ``looplane`` script next to this interpreter, else ``-m looplane.cli``."""
    script = Path(sys.executable).parent / "looplane"
    if script.exists():
        return [str(script)]
    if importlib.util.find_spec("looplane.cli.__main__") is not None:
        return [sys.executable, "-m", "looplane.cli"]
    pytest.fail(f"no looplane command: neither {script} nor looplane.cli.__main__ exists")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at teardown is killed and reaped."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def wait_for_ready(process: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> None:
    def ready() -> bool:
        if "Worker ready" in stdout.read_text(errors="replace"):
            return True
        assert process.poll() is None, (
            f"worker exited {process.returncode} before it was ready:\n"
            f"{stdout.read_text(errors='replace')}\n{stderr.read_text(errors='replace')}"
        )
        return False

    await eventually(ready, timeout=READY_TIMEOUT_S)


async def run_enqueue(*args: str | Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ENQUEUE),
        *map(str, args),
        cwd=ROOT,
        env=child_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), SCRIPT_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def by_task(results: list[TaskResult]) -> dict[str, list[TaskResult]]:
    """Results grouped by task id, first attempt first."""
    grouped: dict[str, list[TaskResult]] = defaultdict(list)
    for result in sorted(results, key=lambda r: r.attempt):
        grouped[result.task_id].append(result)
    return grouped


def check_stored_results(grouped: dict[str, list[TaskResult]], folder: Path, out: Path) -> None:
    finals = [attempts[-1] for attempts in grouped.values()]
    assert all(r.success and r.is_final for r in finals), finals

    def values(name: str) -> list[Any]:
        return sorted(r.value for r in finals if r.func_name == name)

    files = [folder / name for name in COUNTED]
    words = [len(p.read_text().split()) for p in files]
    assert values("count_words") == sorted(words)
    assert values("file_digest") == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    )
    report = out / "report.md"
    summary = {"folder": str(folder), "files": 3, "words": sum(words), "report": str(report)}
    assert [r.value for r in finals if r.func_name == "write_report"] == [summary]
    published = out / "published" / "report.md"
    assert values("publish_report") == [str(published)]
    assert published.read_text() == report.read_text()
    assert len(finals) == 2 * len(files) + 2


def start_worker(db: Path, stdout: Path, stderr: Path) -> subprocess.Popen[bytes]:
    """Start the README's worker command on `db`, its output going to two files."""
    argv = [*worker_command(), "worker", "-A", "examples.myapp.tasks", "--storage", "lmdb"]
    with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
        return subprocess.Popen(
            [*argv, "--db-path", str(db)],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            # Its own session: a Ctrl+C meant for pytest does not reach it, and the test
            # alone decides when it gets SIGINT.
            start_new_session=True,
        )


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_worker_example_runs_end_to_end(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    folder, db, out = make_notes(tmp_path / "notes"), tmp_path / "db", tmp_path / "out"
    stdout, stderr = tmp_path / "worker.out", tmp_path / "worker.err"
    worker = start_worker(db, stdout, stderr)
    processes.append(worker)
    await wait_for_ready(worker, stdout, stderr)

    code, printed, errors = await run_enqueue("--db-path", db, "--out-dir", out, folder)

    assert code == 0, f"enqueue exited {code}\n{printed}\n{errors}\n{stderr.read_text()}"
    lines = printed.splitlines()
    assert lines[-1] == "8 of 8 final results arrived, 8 succeeded"
    flaky = [line.split() for line in lines if line.startswith("publish_report")]
    assert [words[2] for words in flaky] == ["1/4", "2/4", "3/4"]
    assert [words[3] for words in flaky] == ["error", "error", "ok"]
    async with LMDBResultBackend(db) as results:
        grouped = by_task(await results.results())
    check_stored_results(grouped, folder, out)
    (publish,) = [rs for rs in grouped.values() if rs[0].func_name == "publish_report"]
    assert [(r.attempt, r.success, r.will_retry) for r in publish] == [
        (1, False, True),
        (2, False, True),
        (3, True, False),
    ]
    assert publish[0].error == "ConnectionError: outbox busy on attempt 1"

    worker.send_signal(signal.SIGINT)
    await eventually(lambda: worker.poll() is not None, timeout=EXIT_TIMEOUT_S)
    assert worker.returncode == 0, stderr.read_text()
    assert "Traceback" not in stderr.read_text()
