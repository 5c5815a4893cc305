"""compare.py's option handling and its lock on the Redis server, without Redis.

A run that reached Redis would flush databases 1-7 of a real server, so every case here
either exits before any run starts or names a port nobody listens on.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from tests.benchmarks._scripts import closed_port, error_line, run_python, run_script


@pytest.mark.parametrize(
    ("option", "message"),
    [
        pytest.param("--systems=", "no systems given", id="systems-empty"),
        pytest.param("--systems= , ,", "no systems given", id="systems-commas"),
        pytest.param("--workloads=", "no workloads given", id="workloads-empty"),
        pytest.param("--workloads=,", "no workloads given", id="workloads-comma"),
        pytest.param("--reps=0", "--reps must be at least 1", id="reps-0"),
        pytest.param("--redis=redis://127.0.0.1:6379/1", "names database '1'", id="redis-db"),
        pytest.param("--redis=redis://127.0.0.1:99999", "Port out of range", id="redis-port"),
    ],
)
def test_compare_bad_option_exits_2_with_one_line(option: str, message: str) -> None:
    proc = run_script("compare.py", option)

    assert proc.returncode == 2, proc.stderr
    assert error_line(proc).startswith("compare.py: error: "), proc.stderr
    assert message in error_line(proc)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_compare_bad_redis_port_hides_the_password() -> None:
    proc = run_script("compare.py", "--redis=redis://:secret@127.0.0.1:x")

    assert proc.returncode == 2, proc.stderr
    assert "secret" not in proc.stderr
    assert "redis://:********@127.0.0.1:x" in error_line(proc)


def lock_file(redis: str, tmpdir: Path) -> Path:
    lines = ["import sys", "sys.path.insert(0, 'benchmarks')", "import compare"]
    code = "; ".join([*lines, "print(compare.lock_path(sys.argv[1]))"])
    proc = run_python("-c", code, redis, env={"TMPDIR": str(tmpdir)})
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def test_compare_lock_is_one_file_per_server(tmp_path: Path) -> None:
    port = closed_port()

    by_name = lock_file(f"redis://localhost:{port}", tmp_path)
    by_address = lock_file(f"redis://:pw@127.0.0.1:{port}", tmp_path)
    other = lock_file(f"redis://127.0.0.1:{port + 1}", tmp_path)

    assert by_name == by_address
    assert by_name.parent == tmp_path
    assert other != by_name


def test_compare_refuses_a_redis_run_while_another_holds_the_server(tmp_path: Path) -> None:
    redis = f"redis://:secret@127.0.0.1:{closed_port()}"
    path = lock_file(redis, tmp_path)

    with path.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        proc = run_script(
            "compare.py",
            "--quick",
            "--systems=looplane-redis",
            f"--redis={redis}",
            env={"TMPDIR": str(tmp_path)},
        )

    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert f"another compare.py run (pid {os.getpid()}) holds databases 1-7" in line
    assert "secret" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_compare_memory_run_needs_no_lock(tmp_path: Path) -> None:
    redis = f"redis://127.0.0.1:{closed_port()}"
    path = lock_file(redis, tmp_path)
    args = ["--quick", "--systems=looplane-memory", "--workloads=enqueue", "--reps=1"]

    with path.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_script(
            "compare.py",
            *args,
            f"--redis={redis}",
            f"--out={tmp_path / 'out'}",
            env={"TMPDIR": str(tmp_path)},
            timeout_s=25,
        )

    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "report.md").exists()
