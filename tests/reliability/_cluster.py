"""A cluster of real ``looplane worker`` processes, and the check of what they executed.

`Cluster` starts single-process workers through the CLI users run, SIGKILLs them at chosen
moments and restarts them; it remembers every killed pid. `read_executions` reads the
execution log `tests.reliability.tasks` writes, and `check_delivery` proves the delivery
promise from the log and the stored results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.cli._process import READY_LINE, REPO_ROOT, child_env, looplane_argv
from tests.reliability.tasks import LOG_DIR_ENV

if TYPE_CHECKING:
    from looplane import ResultBackend

READY_TIMEOUT_S = 30.0
REPORT_ENV = "LOOPLANE_RELIABILITY_REPORT"


@dataclass
class Execution:
    """One execution of a task, from its log lines."""

    task_id: str
    attempt: int
    pid: int
    ended: bool


@dataclass
class Cluster:
    """Worker processes on one storage; `close` kills whatever still runs."""

    storage_args: list[str]
    env: dict[str, str]
    out_dir: Path
    concurrency: int = 10
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)

    @property
    def log_dir(self) -> Path:
        return self.out_dir / "exec"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start one worker process and wait until it is ready."""
        self.log_dir.mkdir(exist_ok=True)
        name = f"w{len(self.processes)}"
        argv = [*looplane_argv(), "worker", "-A", "tests.reliability.tasks"]
        argv += [*self.storage_args, "-c", str(self.concurrency)]
        env = child_env({**self.env, LOG_DIR_ENV: str(self.log_dir)})
        out = self.out_dir / f"{name}.out"
        with out.open("wb") as stdout, (self.out_dir / f"{name}.err").open("wb") as stderr:
            process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while READY_LINE not in out.read_text():
            err = (self.out_dir / f"{name}.err").read_text()[-2000:]
            assert process.poll() is None, f"worker {name} exited rc={process.returncode}\n{err}"
            assert time.monotonic() < deadline, f"worker {name} not ready\n{err}"
            time.sleep(0.05)
        return process

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.processes if p.poll() is None]

    def kill(self, pid: int) -> None:
        """SIGKILL the worker `pid`, reap it and remember it."""
        process = next(p for p in self.processes if p.pid == pid)
        self.killed.add(pid)
        os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)

    def close(self) -> None:
        """Stop every live worker with SIGTERM, then SIGKILL what is left."""
        for process in self.live():
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def read_lines(log_dir: Path) -> list[list[str]]:
    """Every complete line of the execution log, split into words."""
    lines: list[list[str]] = []
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text()
        lines += [line.split() for line in text.split("\n")[:-1]]
    return lines


def read_executions(log_dir: Path) -> list[Execution]:
    """The executions the log records, in log order per process."""
    executions: list[Execution] = []
    open_by_key: dict[tuple[str, int, int], Execution] = {}
    for phase, task_id, attempt, pid in read_lines(log_dir):
        key = (task_id, int(attempt), int(pid))
        if phase == "start":
            open_by_key[key] = Execution(task_id, int(attempt), int(pid), ended=False)
            executions.append(open_by_key[key])
        else:
            open_by_key[key].ended = True
    return executions


async def check_delivery(
    results: ResultBackend,
    sent: dict[str, int],
    log_dir: Path,
    killed: set[int],
    *,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Check the delivery promise for the tasks `sent` (task id -> max retries).

    Every task has a final result: a success, or a failure whose attempt is retries + 1. None
    is lost. An attempt executed more than once was, every time but its last, executed by a
    process that was SIGKILLed: a live worker never repeats a task. (An execution that logged
    its end can still rerun if its worker died before acknowledging it, so ``ended`` does
    not exempt it.) Returns the counts.
    """
    problems: list[str] = []
    finals = 0
    failed_final = 0
    for task_id, retries in sent.items():
        final = await results.wait(task_id, timeout=timeout)
        finals += 1
        if not final.success:
            failed_final += 1
            if final.attempt != retries + 1:
                problems.append(f"{task_id}: failed at attempt {final.attempt}/{retries + 1}")
    executions = read_executions(log_dir)  # after the results, so every run is logged
    by_task: dict[str, list[Execution]] = defaultdict(list)
    for execution in executions:
        by_task[execution.task_id].append(execution)
    reruns = 0
    extra_successes = 0
    for task_id, runs in by_task.items():
        if task_id not in sent:
            continue
        stored = await results.attempts(task_id)
        with_result = {r.attempt for r in stored}
        successes = sum(r.success for r in stored)
        extra_successes += max(0, successes - 1)
        reruns += len(runs) - len(with_result)
        # A live worker stores a result for every attempt it runs and never runs one attempt
        # twice: a run without a result, or one run again, must have been in a killed process.
        for attempt in {run.attempt for run in runs}:
            live = [run.pid for run in runs if run.attempt == attempt and run.pid not in killed]
            if len(live) > (1 if attempt in with_result else 0):
                problems.append(f"{task_id} attempt {attempt}: lost or repeated in live {live}")
        if successes > 1 and not any(run.pid in killed for run in runs):
            problems.append(f"{task_id}: {successes} successes, no killed worker ran it")
    missing = [t for t in sent if t not in by_task]
    problems += [f"{t}: never executed" for t in missing[:20]]
    per_task = Counter(e.task_id for e in executions)
    report = {
        "tasks": len(sent),
        "kills": len(killed),
        "executions": len(executions),
        "reruns": reruns,
        "max_executions_per_task": max(per_task.values(), default=0),
        "failed_after_retries": failed_final,
        "extra_successes": extra_successes,
        "lost": len(sent) - finals + len(missing),
    }
    assert not problems, "\n".join(problems[:50])
    return report


async def drop_queue(queue: str) -> None:
    """Delete the Redis keys of `queue` (results expire by their TTL)."""
    import redis.asyncio as aioredis

    from tests.conftest import REDIS_URL

    assert REDIS_URL
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"lq:{{{queue}}}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.srem("lq:queues", queue)
    finally:
        await client.aclose()


def publish(name: str, report: dict[str, Any]) -> None:
    """Print a one-line summary; add it to the JSON file named by LOOPLANE_RELIABILITY_REPORT."""
    sys.stdout.write(f"\n{name}: " + " ".join(f"{k}={v}" for k, v in report.items()) + "\n")
    path = os.environ.get(REPORT_ENV)
    if path:
        target = Path(path)
        data = json.loads(target.read_text()) if target.exists() else {}
        data[name] = report
        target.write_text(json.dumps(data, indent=2) + "\n")
