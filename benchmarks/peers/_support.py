"""Helpers the systems share: worker processes, polling with a deadline, pickup stamps.

Worker processes run in a session of their own with their output in a log file in the
system's work dir: a pipe nobody reads would fill up and stall a worker that logs every task.
A session of their own keeps a Ctrl-C on the terminal from reaching them before the system
stops them in order; so that a killed parent cannot leave them running, each asks the kernel
(Linux) for SIGTERM when its parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplane.config import redact_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent
"""The ``benchmarks/`` directory; on ``PYTHONPATH`` so that workers import ``peers.*``."""

STOP_GRACE_S = 15.0
"""How long a worker may take to stop after SIGINT before its session is killed."""


REDIS_DBS = range(1, 8)
"""The only Redis databases the benchmark may use and flush; the rest belong to others."""

_PR_SET_PDEATHSIG = 1


def redis_url_problem(url: str) -> str | None:
    """Why `url` cannot be the benchmark's server address (it names a database), or None."""
    parts = urllib.parse.urlsplit(url)
    shown = redact_url(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"--redis {shown!r}: expected redis://host:port"
    if parts.scheme != "unix" and parts.path.strip("/"):
        return f"--redis {shown!r} names database {parts.path.strip('/')!r}: give the server only"
    if "db" in urllib.parse.parse_qs(parts.query):
        return f"--redis {shown!r} names a database (db=): give the server only"
    return None


def redis_db_url(base: str, db: int) -> str:
    """The URL of database `db` (1-7 only) on the server at `base` (which names none)."""
    if db not in REDIS_DBS:
        raise ValueError(f"refusing Redis database {db}: only 1-7 are the benchmark's")
    problem = redis_url_problem(base)
    if problem:
        raise ValueError(problem)
    parts = urllib.parse.urlsplit(base)
    if parts.scheme == "unix":
        query = urllib.parse.urlencode([("db", str(db))])
        return urllib.parse.urlunsplit(parts._replace(query=query))
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


def url_db(url: str) -> int:
    """The database number a Redis URL selects, as redis-py reads it (0 when none)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    if "db" in query:
        return int(query["db"][0])
    path = parts.path.strip("/")
    return int(path) if parts.scheme != "unix" and path else 0


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: unwind through every ``finally`` and stop the workers."""


def stop_on_signals() -> None:
    """Turn the first SIGTERM, SIGINT or SIGHUP into `Stopped`; ignore later ones.

    Later signals are ignored so that they cannot cut short the cleanup the first one
    started (stopping workers, removing files); a parent that loses patience kills us.
    """

    def handler(signum: int, frame: Any) -> None:
        for other in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(other, signal.SIG_IGN)
        raise Stopped(f"stopped by {signal.Signals(signum).name}")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


def parent_death_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking for SIGTERM when the parent dies (Linux only; else None).

    The C library is looked up here, in the parent: the hook runs between fork and exec,
    where only async-signal-safe work belongs.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # The parent may have died before the call: then nobody would send the signal.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: ours, with ``peers`` importable, plus `extra`."""
    env = dict(os.environ)
    paths = [str(BENCHMARKS_DIR), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    env.update(extra or {})
    return env


class WorkerProcess:
    """A worker command started in its own session, output to `log_path`; stopped on exit."""

    def __init__(
        self, argv: Sequence[str], *, workdir: str, log_name: str, env: dict[str, str]
    ) -> None:
        self.log_path = Path(workdir) / log_name
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=workdir,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Workers are started from the main thread before any other runs, so the hook
            # cannot meet a lock held by another thread.
            preexec_fn=parent_death_hook(),
        )

    def log_text(self) -> str:
        """What the worker wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, *, times: int = 1, timeout_s: float = 60.0) -> None:
        """Block until `pattern` occurs `times` times in the log; fail if the worker exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while len(regex.findall(self.log_text())) < times:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGINT the worker (a graceful stop), then kill its whole session if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_GRACE_S)
        # Kill what is left of the session too: worker children of a supervisor that died.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


def python_argv(*args: str) -> list[str]:
    """A command line running this interpreter: ``python -m ...`` as the venv would."""
    return [sys.executable, *args]


async def poll_until(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float, interval_s: float = 0.005
) -> None:
    """Await `check` every `interval_s` until it returns True; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


def wait_until(check: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.005) -> None:
    """The blocking `poll_until`, for systems with a synchronous API (Huey)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


def drain_timeout_s(count: int) -> float:
    """A generous limit for draining `count` tasks: 100 tasks/s, and at least three minutes.

    A system that lost a result (Huey on SQLite does when a write meets a locked database
    for 5 s) waits this long and the call fails; on a loaded machine the honest ones are slow.
    """
    return max(180.0, count / 100)


# Pickup: the task appends "<start - sent> ms" to a file; one line per task.


def pickup_file(workdir: str) -> str:
    """The file pickup stamps go to; the task is given its path."""
    return str(Path(workdir) / "pickup.txt")


def stamp(sent_at: float, path: str) -> int:
    """Record how long ago (ms) `sent_at` was; the body of every system's pickup task."""
    started = time.time()
    with open(path, "a") as out:
        out.write(f"{(started - sent_at) * 1000:.4f}\n")
    return 1


def pickup_schedule(rate_per_s: float, duration_s: float) -> list[float]:
    """Offsets (seconds from the start) at which to send: a steady rate, no bursts."""
    count = round(rate_per_s * duration_s)
    return [index / rate_per_s for index in range(count)]


def read_pickups(path: str, expected: int, *, timeout_s: float = 30.0) -> list[float]:
    """The latencies in `path` once `expected` of them arrived (fewer after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    values: list[float] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            values = [float(line) for line in Path(path).read_text().split()]
        if len(values) >= expected:
            break
        time.sleep(0.05)
    if len(values) < expected:
        raise TimeoutError(f"only {len(values)} of {expected} pickups arrived")
    return values


async def send_steadily(
    send: Callable[[float], Awaitable[object]], rate_per_s: float, duration_s: float
) -> int:
    """Call ``send(time.time())`` at a steady rate; returns how many were sent."""
    offsets = pickup_schedule(rate_per_s, duration_s)
    start = time.perf_counter()
    for offset in offsets:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(time.time())
    return len(offsets)


def send_steadily_sync(
    send: Callable[[float], object], rate_per_s: float, duration_s: float
) -> int:
    """The blocking `send_steadily`, for Huey."""
    offsets = pickup_schedule(rate_per_s, duration_s)
    start = time.perf_counter()
    for offset in offsets:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(time.time())
    return len(offsets)


def chunks(count: int, size: int) -> list[int]:
    """Sizes of the batches that send `count` tasks `size` at a time."""
    return [min(size, count - start) for start in range(0, count, size)]
