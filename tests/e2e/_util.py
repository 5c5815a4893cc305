"""Helpers for end-to-end tests: worker processes, the task log, waiting for results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from looplane import TaskTimeout
from tests.conftest import eventually
from tests.e2e.tasks import LOG_ENV
from tests.e2e.worker import CONSUMER_ID_ENV

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from looplane import LMDBResultBackend, TaskResult

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 20.0


def child_env(log_path: Path, *, pythonpath: Sequence[Path] = (), **extra: str) -> dict[str, str]:
    """The environment of a child process: the repo root on PYTHONPATH, the task log set."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *map(str, pythonpath)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[LOG_ENV] = str(log_path)
    env.update(extra)
    return env


class WorkerExitedError(Exception):
    """A worker process ended while the test waited for it to become ready."""


@dataclass
class Worker:
    """One ``tests.e2e.worker`` process; its stdout and stderr go to files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def describe(self) -> str:
        """Exit status and the tail of stderr, for failure messages."""
        stderr = self.stderr_path.read_text()[-3000:]
        return f"worker {self.name} pid={self.pid} rc={self.process.poll()}\n{stderr}"

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the worker printed ``ready``; fail at once if it exited first."""

        def ready() -> bool:
            if "ready" in self.stdout():
                return True
            if self.process.poll() is not None:
                raise WorkerExitedError(f"worker exited before it was ready: {self.describe()}")
            return False

        await eventually(ready, timeout=timeout)

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to exit and return its exit code."""
        await eventually(lambda: self.process.poll() is not None, timeout=timeout)
        return self.process.wait()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)


@dataclass
class Workers:
    """Starts worker processes on one LMDB path; `close` kills whatever still runs."""

    path: Path
    log_path: Path
    out_dir: Path
    started: list[Worker] = field(default_factory=list)

    async def start(
        self,
        *,
        concurrency: int = 10,
        lease_s: float = 30.0,
        grace_s: float = 10.0,
        consumer_id: str | None = None,
        apps: Iterable[str] = (),
        pythonpath: Sequence[Path] = (),
    ) -> Worker:
        """Start a worker and wait until it is ready."""
        worker = self.spawn(
            concurrency=concurrency,
            lease_s=lease_s,
            grace_s=grace_s,
            consumer_id=consumer_id,
            apps=apps,
            pythonpath=pythonpath,
        )
        await worker.wait_ready()
        return worker

    def spawn(
        self,
        *,
        concurrency: int = 10,
        lease_s: float = 30.0,
        grace_s: float = 10.0,
        consumer_id: str | None = None,
        apps: Iterable[str] = (),
        pythonpath: Sequence[Path] = (),
    ) -> Worker:
        """Start a worker without waiting for it (`Worker.wait_ready` does that)."""
        name = f"w{len(self.started)}"
        argv = [sys.executable, "-m", "tests.e2e.worker", "--path", str(self.path)]
        argv += ["--concurrency", str(concurrency), "--lease", str(lease_s)]
        argv += ["--grace", str(grace_s)]
        for app in apps:
            argv += ["--app", app]
        extra = {CONSUMER_ID_ENV: consumer_id} if consumer_id else {}
        stdout_path = self.out_dir / f"{name}.out"
        stderr_path = self.out_dir / f"{name}.err"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=child_env(self.log_path, pythonpath=pythonpath, **extra),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        worker = Worker(name, process, stdout_path, stderr_path)
        self.started.append(worker)
        return worker

    def describe(self) -> str:
        return "\n".join(w.describe() for w in self.started)

    def close(self) -> None:
        """SIGKILL every worker still running and reap them all."""
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGKILL)
        for worker in self.started:
            worker.process.wait()


def read_log(log_path: Path) -> list[list[str]]:
    """The task log as lists of words; missing file means no lines."""
    if not log_path.exists():
        return []
    return [line.split() for line in log_path.read_text().splitlines()]


def tags_of(lines: Iterable[list[str]], kind: str) -> Counter[str]:
    """How many ``<kind> <tag> <pid>`` lines each tag has."""
    return Counter(words[1] for words in lines if words[0] == kind)


async def wait_results(
    backend: LMDBResultBackend, task_ids: Iterable[str], *, timeout: float = 20.0
) -> list[TaskResult]:
    """The final result of each task, all within one deadline of `timeout` seconds.

    Raises:
        AssertionError: Some result did not arrive in time; names how many were missing.
    """
    ids = list(task_ids)
    deadline = time.monotonic() + timeout
    found: list[TaskResult] = []
    for task_id in ids:
        try:
            remaining = max(deadline - time.monotonic(), 0.0)
            found.append(await backend.wait(task_id, timeout=remaining))
        except TaskTimeout:
            raise AssertionError(
                f"{len(ids) - len(found)} of {len(ids)} results missing after {timeout} s; "
                f"first missing: {task_id} (latest: {await backend.get(task_id)!r})"
            ) from None
    return found
