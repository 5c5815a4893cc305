"""The soak script (benchmarks/soak.py): a short smoke run by default, the million behind long.

The smoke run checks that the script drives a real worker to the end and reports what it
promises (a row per sample, the verdict, the bytes a stored result costs, a JSON file); the
long run checks the claim itself: the worker's memory and the LMDB file stay flat after
warm-up across a million tasks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "soak.py"
SAMPLE_KEYS = {
    "done",
    "elapsed_s",
    "window_tasks_per_s",
    "rss_kib",
    "anon_kib",
    "file_bytes",
    "file_alloc_bytes",
    "used_bytes",
    "results",
    "backlog",
    "dead",
}


def run_soak(
    tmp_path: Path, *args: str, timeout_s: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--path", str(tmp_path / "db"), "--out", str(out), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode in (0, 1), f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_soak_smoke_run_reports_every_sample_and_a_verdict(tmp_path: Path) -> None:
    args = ("--tasks", "2000", "--sample-every", "500", "--warmup", "1000", "--backlog", "800")
    proc, report = run_soak(
        tmp_path, *args, "--concurrency", "20", "--fail-every", "50", "--ttl", "600", timeout_s=80
    )

    samples = report["samples"]
    assert isinstance(samples, list)
    assert [set(s) for s in samples] == [SAMPLE_KEYS] * len(samples)
    assert len(samples) == 4, proc.stdout
    # Every 50th task failed once and was retried: 40 retries, each with its own result.
    assert samples[-1]["done"] == 2000
    assert samples[-1]["results"] == 2040
    assert [s["dead"] for s in samples] == [0] * 4
    assert all(s["rss_kib"] > 0 and s["file_bytes"] > 0 for s in samples)

    lines = proc.stdout.splitlines()
    verdict = "PASS" if proc.returncode == 0 else "FAIL"
    assert report["pass"] is (proc.returncode == 0)
    assert any(line.startswith(f"{verdict}: ") for line in lines), proc.stdout
    assert any(line.startswith("judged (limit 10%): anon RSS ") for line in lines), proc.stdout
    assert any(line.startswith("bytes per stored result: ") for line in lines), proc.stdout
    assert "worker exit code 0" in lines, proc.stdout


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(3600)
def test_soak_million_tasks_keeps_memory_and_file_flat(tmp_path: Path) -> None:
    proc, report = run_soak(tmp_path, timeout_s=3500)

    assert report["pass"] is True, proc.stdout
    samples = report["samples"]
    assert isinstance(samples, list)
    assert samples[-1]["done"] == 1_000_000
    assert all(s["dead"] == 0 for s in samples), proc.stdout
