"""Helpers that run ``looplane`` as a real process, as a user would from a shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "Worker ready. Press Ctrl+C to stop."
START_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 20.0


def looplane_argv() -> list[str]:
    """The installed ``looplane`` script beside this interpreter, else ``python -m``."""
    script = shutil.which("looplane", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "looplane.cli"]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without LOOPLANE_* variables, the repo root importable, wide output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLANE_")}
    paths = [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


def poll_until(
    predicate: Callable[[], bool], *, timeout: float, describe: Callable[[], str]
) -> None:
    """Poll `predicate` until it is true; fail after `timeout` s showing `describe()`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s; last seen:\n{describe()}")
        time.sleep(0.02)


@dataclass
class LooplaneProcess:
    """One ``looplane`` process; its stdout and stderr go to files."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def describe(self) -> str:
        return (
            f"pid={self.process.pid} rc={self.process.poll()}\n"
            f"--- stdout ---\n{self.stdout()[-3000:]}\n--- stderr ---\n{self.stderr()[-3000:]}"
        )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the worker printed its ready line; fail at once if it exited."""

        def ready() -> bool:
            if READY_LINE in self.stdout():
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited before it was ready: {self.describe()}")
            return False

        poll_until(ready, timeout=timeout, describe=self.describe)

    def wait_stderr(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until `text` appears on stderr."""
        poll_until(lambda: text in self.stderr(), timeout=timeout, describe=self.describe)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to exit and return its exit code."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s: {self.describe()}") from None

    def kill(self) -> None:
        """SIGKILL the process if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def start_looplane(
    args: Sequence[str], *, cwd: Path, out_dir: Path, env: Mapping[str, str] | None = None
) -> LooplaneProcess:
    """Start ``looplane <args>`` in `cwd`, without waiting for anything."""
    out_dir.mkdir(parents=True, exist_ok=True)
    count = len(list(out_dir.glob("*.out")))
    stdout_path, stderr_path = out_dir / f"p{count}.out", out_dir / f"p{count}.err"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*looplane_argv(), *args],
            cwd=cwd,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    return LooplaneProcess(process, stdout_path, stderr_path)
