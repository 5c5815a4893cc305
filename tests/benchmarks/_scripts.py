"""Run a benchmark script in a fresh interpreter, as users do, and find a port nobody serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO_ROOT / "benchmarks"


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<name>`` with `args` and the test's interpreter."""
    return run_python(str(BENCHMARKS / name), *args, env=env, timeout_s=timeout_s)


def run_python(
    *argv: str, env: dict[str, str] | None = None, timeout_s: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run the test's interpreter with `argv` from the repository root."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def closed_port() -> int:
    """A loopback port nothing listens on, so a stray connection fails instead of flushing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The script's last stderr line (argparse's ``<prog>: error: ...``)."""
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""
