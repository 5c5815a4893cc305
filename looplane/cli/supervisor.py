"""``looplane worker --processes N``: N worker processes under one supervisor.

Each worker process is a fresh ``python -m looplane.cli worker`` started with the same flags,
in the same directory and environment, so it resolves the same settings. It opens its own
event loop and storage handles after it starts: nothing that holds a file lock, an LMDB
environment or a socket is ever shared across ``fork`` (the LMDB docs forbid using an
environment after ``fork``). The supervisor validates the settings, imports the app modules and
reaches the storage before it starts any, so the common errors are reported once.

Signals. Every worker process runs in its own process group, so the terminal's Ctrl-C reaches
the supervisor alone, never N+1 processes at once. The supervisor turns each SIGINT or SIGTERM
it receives into one SIGTERM to every worker process: the first makes each of them stop
gracefully (no new tasks, running ones get ``worker.shutdown_grace``), the second makes them
stop at once, returning running tasks to the queue. The supervisor then exits 0. Once the
event loop of a worker or supervisor stops handling the signals, it ignores them until it
exits: the process is stopping already, and the default action would end it half-way.

Orphans. A worker process polls its parent pid every `PARENT_POLL_S` seconds and stops
gracefully once the supervisor is gone (killed with SIGKILL, say), so none lives on forever;
tasks it could not finish come back when their lease expires, as after any crash.

Restarts. A worker process that exits while the supervisor is not stopping is started again
after a short backoff. The supervisor gives up, stops the rest gracefully and exits
`EXIT_FAILURE` when they keep crashing: more than `CRASHES_PER_PROCESS` exits per process
within `CRASH_WINDOW_S`, or `EARLY_DEATHS` exits in a row before any became ready. A worker
process that exits with `EXIT_CONFIG` before it is ready (an app module that fails to import
in it) stops the supervisor at once with `EXIT_CONFIG`: restarting cannot fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "CHILD_READY_LINE",
    "CRASHES_PER_PROCESS",
    "CRASH_WINDOW_S",
    "EARLY_DEATHS",
    "PARENT_POLL_S",
    "STOP_SIGNALS",
    "Supervisor",
    "SupervisorOutcome",
    "claim_process",
    "describe_exit",
    "ignore_late_signals",
    "signals_restored",
]

logger = logging.getLogger(__name__)

CHILD_READY_LINE = "looplane: worker process ready"
"""What a worker process prints on its stdout, a pipe to the supervisor, once it runs tasks."""

PARENT_POLL_S = 1.0
"""How often a worker process checks that its supervisor still lives."""

CRASH_WINDOW_S = 60.0
CRASHES_PER_PROCESS = 3
EARLY_DEATHS = 3
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 5.0

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a worker: the first gracefully, the second at once."""


def ignore_late_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Remove `loop`'s handlers of `STOP_SIGNALS` and ignore those signals from now on.

    Removing a loop's handler restores the default action, so a signal that arrives while
    the stopped worker closes its storage and exits would kill it half-way (with status
    -SIGTERM, or a `KeyboardInterrupt` traceback) although it is stopping already. The
    signals stay blocked in this thread between the two steps, and one that arrives then is
    discarded once ignored. The command restores the handlers it found once it returns.
    """
    posix = hasattr(signal, "pthread_sigmask")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if posix else set()
    try:
        for signum in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
    finally:
        if posix:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


_owns_process = False


def claim_process() -> None:
    """Say that the ``looplane`` command owns this process and ends it when it returns.

    `signals_restored` then leaves the stop signals ignored once the worker stopped: a signal
    that arrives while the interpreter exits cannot turn a clean stop into a
    `KeyboardInterrupt` or a death by SIGTERM. Callers that run the command inside their own
    process (tests) get their handlers back instead.
    """
    global _owns_process
    _owns_process = True


@contextlib.contextmanager
def signals_restored() -> Iterator[None]:
    """Restore the handlers of `STOP_SIGNALS` found on entry when the block exits.

    Not after `claim_process`: the process is ending, and the handlers stay as they are.
    """
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        if not _owns_process:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def describe_exit(returncode: int) -> str:
    """``exited with code 3`` or ``was killed by SIGKILL``, from a `Popen.returncode`."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:  # pragma: no cover - every signal a process can die of has a name
        name = f"signal {-returncode}"
    return f"was killed by {name}"


@dataclass(frozen=True, slots=True)
class SupervisorOutcome:
    """How the supervisor ended: its exit code, and the reason when it failed."""

    code: int
    message: str | None = None


@dataclass(slots=True)
class _Slot:
    """One of the N places a worker process runs in, numbered from 1."""

    number: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    failures_in_row: int = 0


@dataclass(slots=True)
class _CrashLog:
    """Unexpected exits, to tell a crash loop from an occasional crash."""

    limit: int
    times: deque[float] = field(default_factory=deque)
    early_in_row: int = 0

    def record(self, *, now: float, before_ready: bool) -> str | None:
        """Count one exit; return why to give up, or None to restart."""
        self.times.append(now)
        while self.times and self.times[0] < now - CRASH_WINDOW_S:
            self.times.popleft()
        self.early_in_row = self.early_in_row + 1 if before_ready else 0
        if self.early_in_row >= EARLY_DEATHS:
            return (
                f"worker processes exited before they were ready {self.early_in_row} times in a row"
            )
        if len(self.times) > self.limit:
            return (
                f"worker processes keep crashing: {len(self.times)} exits "
                f"within {CRASH_WINDOW_S:g} s"
            )
        return None


class Supervisor:
    """Keeps `processes` worker processes running until a stop signal or a crash loop.

    Args:
        argv: The command that starts one worker process; ``--supervisor-pid`` is appended.
        processes: How many worker processes to keep running.
        on_ready: Called once, when every worker process has become ready.
    """

    def __init__(
        self, argv: Sequence[str], *, processes: int, on_ready: Callable[[], None]
    ) -> None:
        self.argv = [*argv, "--supervisor-pid", str(os.getpid())]
        self.slots = [_Slot(number) for number in range(1, processes + 1)]
        self.on_ready = on_ready
        self.stopping = asyncio.Event()
        self.signals_seen = 0
        self.outcome = SupervisorOutcome(EXIT_OK)
        self.crashes = _CrashLog(limit=CRASHES_PER_PROCESS * processes)
        self._announced = False

    @contextlib.contextmanager
    def signals_installed(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """Handle `STOP_SIGNALS` on `loop` with `request_stop` inside the block.

        Install them before the banner: a signal that arrives before `run` then makes
        `run` return at once instead of interrupting the start-up with a traceback.
        """
        # Limitation: POSIX only; Windows event loops have no signal handlers and no
        # process groups. Lifted by: a console control handler and CREATE_NEW_PROCESS_GROUP.
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.request_stop, signum)
        try:
            yield
        finally:
            ignore_late_signals(loop)

    async def run(self) -> SupervisorOutcome:
        """Run until every worker process has exited after a stop; return how it ended.

        Cancelling `run` sends SIGKILL to the worker processes still running and re-raises
        `CancelledError`; their tasks come back when their leases expire.
        """
        try:
            async with asyncio.TaskGroup() as group:
                for slot in self.slots:
                    group.create_task(self._keep_running(slot))
        except asyncio.CancelledError:
            self._kill_all()
            raise
        return self.outcome

    def request_stop(self, signum: signal.Signals) -> None:
        """Handle one SIGINT or SIGTERM: forward SIGTERM to every worker process."""
        self.signals_seen += 1
        if self.signals_seen == 1:
            logger.info(
                "stopping gracefully: worker processes finish running tasks; send the signal "
                "again to stop at once signal=%s",
                signum.name,
            )
        elif self.signals_seen == 2:
            logger.warning(
                "stopping at once: running tasks go back to the queue signal=%s", signum.name
            )
        else:
            logger.warning("already stopping at once signal=%s", signum.name)
            return
        self.stopping.set()
        self._signal_all(signal.SIGTERM)

    def _fail(self, code: int, message: str) -> None:
        if self.stopping.is_set():
            return
        self.outcome = SupervisorOutcome(code, message)
        logger.error("stopping the worker processes: %s", message)
        self.signals_seen = 1
        self.stopping.set()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: signal.Signals) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    def _kill_all(self) -> None:
        self._signal_all(signal.SIGKILL)

    async def _keep_running(self, slot: _Slot) -> None:
        """Start the slot's worker process, and again after each unexpected exit."""
        while not self.stopping.is_set():
            process = await self._spawn(slot)
            returncode = await self._watch(slot, process)
            if self.stopping.is_set():
                logger.info(
                    "worker process stopped process=%d pid=%d returncode=%d",
                    slot.number,
                    process.pid,
                    returncode,
                )
                return
            delay_s = self._after_crash(slot, process.pid, returncode)
            if delay_s is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay_s)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        # A process group of its own keeps the terminal's Ctrl-C away from the worker
        # processes: the supervisor alone decides what each signal means for them.
        # Limitation: being a background group, they are stopped by SIGTTOU when they log
        # to a terminal set to `stty tostop`. Lifted by: logging through the supervisor.
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            process_group=0,
        )
        slot.process, slot.ready = process, False
        logger.info("worker process started process=%d pid=%d", slot.number, process.pid)
        if self.stopping.is_set():
            # A stop arrived while this one was starting: it missed the forwarded signal.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        return process

    async def _watch(self, slot: _Slot, process: asyncio.subprocess.Process) -> int:
        """Pass the process's stdout on, note when it is ready; return its exit status."""
        stdout = process.stdout
        if stdout is None:  # pragma: no cover - spawned with stdout=PIPE
            return await process.wait()
        while line := await stdout.readline():
            if line.rstrip(b"\r\n") == CHILD_READY_LINE.encode():
                self._ready(slot)
                continue
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        return await process.wait()

    def _ready(self, slot: _Slot) -> None:
        slot.ready = True
        slot.failures_in_row = 0
        self.crashes.early_in_row = 0
        if not self._announced and all(each.ready for each in self.slots):
            self._announced = True
            self.on_ready()

    def _after_crash(self, slot: _Slot, pid: int, returncode: int) -> float | None:
        """Log an unexpected exit; return the backoff before a restart, or None to give up."""
        reason = f"worker process {slot.number} (pid {pid}) {describe_exit(returncode)}"
        if returncode == EXIT_CONFIG and not slot.ready:
            self._fail(EXIT_CONFIG, f"{reason} before it was ready: a configuration error")
            return None
        verdict = self.crashes.record(now=time.monotonic(), before_ready=not slot.ready)
        if verdict is not None:
            self._fail(EXIT_FAILURE, f"{verdict}; the last: {reason}")
            return None
        slot.failures_in_row += 1
        delay_s = min(BACKOFF_FIRST_S * 2.0 ** (slot.failures_in_row - 1), BACKOFF_MAX_S)
        logger.warning("%s; restarting it in %.2f s", reason, delay_s)
        return delay_s
