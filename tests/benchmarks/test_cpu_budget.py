"""cpu_budget.py's option handling, its Redis check and a worker that exits early, without Redis."""

from __future__ import annotations

import textwrap

import pytest

from tests.benchmarks._scripts import BENCHMARKS, closed_port, error_line, run_python, run_script


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--processes", "0"], "argument --processes: must be at least 1", id="p0"),
        pytest.param(["--processes", "1", "-2"], "argument --processes: must be", id="p-neg"),
        pytest.param(["--concurrency", "0"], "argument --concurrency: must be", id="c0"),
        pytest.param(["--tasks", "0"], "argument --tasks: must be at least 1", id="tasks-0"),
        pytest.param(["--reps", "0"], "argument --reps: must be at least 1", id="reps-0"),
        pytest.param(["--tasks", "x"], "argument --tasks: expected an integer", id="tasks-x"),
        pytest.param(["--processes", "99999"], "argument --processes: at most 64", id="p-huge"),
        pytest.param(["--url", "redis://:pw@h:1/9"], "--url names a Redis database", id="url-lmdb"),
    ],
)
def test_cpu_budget_bad_option_exits_2_with_one_line(args: list[str], message: str) -> None:
    proc = run_script("cpu_budget.py", *args)

    assert proc.returncode == 2, proc.stderr
    assert error_line(proc).startswith(f"cpu_budget.py: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cpu_budget_unreachable_redis_exits_2_without_the_password() -> None:
    url = f"redis://:secret@127.0.0.1:{closed_port()}/9"

    proc = run_script("cpu_budget.py", "--storage", "redis", "--url", url)

    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert line.startswith("cpu_budget.py: error: --url redis://:********@127.0.0.1:")
    assert "Redis does not answer" in line
    assert "secret" not in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cpu_budget_worker_that_exits_early_stops_the_run_with_its_log() -> None:
    # The worker command is replaced by one that fails at once, as a worker that cannot
    # import its app or open its storage would.
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(BENCHMARKS)!r})
        import cpu_budget
        failing = [sys.executable, "-c", "print('cannot start: no app'); raise SystemExit(3)"]
        cpu_budget.worker_argv = lambda args, processes: list(failing)
        sys.argv = ["cpu_budget.py", "--processes", "1", "--tasks", "10", "--reps", "1"]
        cpu_budget.main()
        """
    )

    proc = run_python("-c", code, timeout_s=25)

    assert proc.returncode == 1, proc.stderr
    assert "the worker process exited with status 3 before its drain ended" in proc.stderr
    assert "  cannot start: no app" in proc.stderr
    assert "Traceback" not in proc.stderr
