"""The real ``looplane monitor`` in a pseudo-terminal, watching a worker in another process.

A producer process sends 120 tasks to an LMDB store and a ``looplane worker`` process runs
them; the monitor runs in a pty of 30 rows by 120 columns, as a user's terminal would be.
The test reads the screen (the output after the last cursor-home, escape sequences removed),
presses keys by writing to the pty, and checks that quitting gives the terminal back.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading
from typing import TYPE_CHECKING

import pytest

from tests.cli._process import REPO_ROOT, child_env, looplane_argv, poll_until
from tests.cli.conftest import APP_MODULE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from tests.cli._process import LooplaneProcess

    Launch = Callable[..., LooplaneProcess]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal"),
]

ROWS, COLS = 30, 120
SCREEN_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 10.0
TASKS = 120
ALT_SCREEN_OFF = b"\x1b[?1049l"
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>78])")

# Makes the pty its controlling terminal (so the kernel sends it SIGWINCH and Ctrl+C's
# SIGINT), then becomes the command. subprocess has no option for TIOCSCTTY.
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)

_PRODUCER = """
import asyncio, sys
from looplane import LMDBStorage, StorageProducer

async def main(path, count):
    async with LMDBStorage(path) as storage:
        producer = StorageProducer(storage)
        for n in range(count):
            name = "cli_tests.fail" if n % 10 == 3 else "cli_tests.add"
            args = ("no luck",) if n % 10 == 3 else (n, n)
            await producer.send(name, *args, retries=1)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """A process in a pseudo-terminal, with everything it wrote kept for reading."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.master, self.slave = os.openpty()
        set_size(self.slave, ROWS, COLS)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *argv],
            cwd=cwd,
            env=env,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
        )
        self._output = bytearray()
        self._lock = threading.Lock()
        # The pty's buffer is small: unread output would block the process mid-frame.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the slave side has closed it
                return
            if not data:
                return
            with self._lock:
                self._output += data

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def screen(self) -> str:
        """What the screen shows: output since the last cursor-home, without escapes."""
        text = self.output.decode("utf-8", "replace")
        frame = text[text.rfind("\x1b[H") :]
        return _ESCAPES.sub("", frame).replace("\r", "")

    def describe(self) -> str:
        return (
            f"rc={self.process.poll()}; screen:\n{self.screen()}\nraw tail: {self.output[-400:]!r}"
        )

    def wait_for(self, text: str, *, timeout: float = SCREEN_TIMEOUT_S) -> str:
        """Wait until the screen shows `text`; return the screen."""
        poll_until(lambda: text in self.screen(), timeout=timeout, describe=self.describe)
        return self.screen()

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def resize(self, rows: int, cols: int) -> None:
        set_size(self.master, rows, cols)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s: {self.describe()}") from None

    def local_modes(self) -> int:
        """The terminal's local mode flags (ICANON, ECHO, ...), as the process left them."""
        modes: int = termios.tcgetattr(self.slave)[3]
        return modes

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        os.close(self.slave)
        self._reader.join(timeout=5)
        os.close(self.master)


def terminal_env() -> dict[str, str]:
    env = child_env({"TERM": "xterm-256color"})
    # A terminal's size comes from the terminal, as in a user's shell.
    for name in ("COLUMNS", "LINES"):
        env.pop(name, None)
    return env


@pytest.fixture
def terminals() -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(argv: Sequence[str], *, cwd: Path) -> Terminal:
        terminal = Terminal(argv, cwd=cwd, env=terminal_env())
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def footer(screen: str) -> str:
    lines = [line for line in screen.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def test_monitor_in_a_terminal_pages_through_a_workers_tasks_and_quits_cleanly(
    launch: Launch, terminals: Callable[..., Terminal], work_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    subprocess.run(
        [sys.executable, "-c", _PRODUCER, str(db), str(TASKS)],
        env=child_env(),
        check=True,
        timeout=60,
    )
    worker = launch("worker", "-A", APP_MODULE, "--db-path", str(db), "-c", "4")
    worker.wait_ready()

    monitor = terminals([*looplane_argv(), "monitor", "--db-path", str(db)], cwd=work_dir)
    first = monitor.wait_for(f"page 1/5 · {TASKS} tasks")
    modes = monitor.local_modes()

    assert "Looplane monitor  lmdb" in first
    assert "cli_tests.add" in first
    assert "queued" in first
    assert "dead-lettered" in first
    assert not modes & termios.ICANON
    assert not modes & termios.ECHO

    monitor.press(b"j")
    assert footer(monitor.wait_for("page 2/5")).startswith("page 2/5")
    monitor.press(b"G")
    last = monitor.wait_for("page 5/5")
    monitor.press(b"\x1b[D")
    monitor.wait_for("page 4/5")
    monitor.press(b"g")
    monitor.wait_for("page 1/5")

    monitor.resize(20, 100)  # 15 rows a page
    monitor.wait_for(f"page 1/8 · {TASKS} tasks")

    monitor.press(b"q")

    assert monitor.wait_exit() == 0
    assert ALT_SCREEN_OFF in monitor.output
    restored = monitor.local_modes()
    assert restored & termios.ICANON
    assert restored & termios.ECHO
    assert "cli_tests" in last


def test_monitor_in_a_terminal_quits_on_ctrl_c_and_restores_the_terminal(
    terminals: Callable[..., Terminal], work_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    db.mkdir()
    monitor = terminals([*looplane_argv(), "monitor", "--db-path", str(db)], cwd=work_dir)
    monitor.wait_for("page 1/1 · 0 tasks")

    monitor.press(b"\x03")  # the terminal turns Ctrl+C into SIGINT

    assert monitor.wait_exit() == 0
    assert ALT_SCREEN_OFF in monitor.output
    assert monitor.local_modes() & termios.ICANON


def test_monitor_demo_in_a_terminal_shows_tasks_and_quits_by_itself(
    terminals: Callable[..., Terminal],
) -> None:
    demo = terminals(
        [sys.executable, "examples/example_monitor_demo.py", "--seconds", "3"], cwd=REPO_ROOT
    )

    def a_task_succeeded() -> bool:
        lines = demo.screen().splitlines()
        return any("demo." in line and "succeeded" in line for line in lines)

    poll_until(a_task_succeeded, timeout=SCREEN_TIMEOUT_S, describe=demo.describe)
    screen = demo.screen()

    assert demo.wait_exit() == 0
    assert "Looplane monitor  memory" in screen
    assert ALT_SCREEN_OFF in demo.output
    assert b"monitor closed; " in demo.output.rpartition(ALT_SCREEN_OFF)[2]
