"""Keys for the monitor: parsing terminal input, and a terminal session that delivers them.

The terminal is put in cbreak mode, so each key arrives as soon as it is pressed (no Enter)
and is not echoed, while Ctrl+C still raises SIGINT. Standard input is read on the event loop
with ``add_reader`` rather than in a thread, so a key reaches the monitor at once and quitting
never waits for a blocked ``read``. Arrow keys arrive as escape sequences that one read may
split, so the parser keeps an incomplete sequence until the rest of it arrives.

Everything the session changes (terminal mode, the reader, signal handlers, the console's
size) is undone in ``finally`` blocks, so a crash or Ctrl+C leaves a usable shell behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from looplane.cli.monitor_paging import Key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from rich.console import Console

__all__ = ["KeyParser", "terminal_session"]

_ESC = 0x1B

_PLAIN = {
    ord("j"): Key.NEXT,
    ord(" "): Key.NEXT,
    ord("k"): Key.PREV,
    ord("g"): Key.FIRST,
    ord("G"): Key.LAST,
    ord("q"): Key.QUIT,
    ord("Q"): Key.QUIT,
    # In raw mode (or if a terminal sends it anyway) Ctrl+C arrives as a byte.
    0x03: Key.QUIT,
}

# The final byte of a CSI or SS3 sequence: arrows (C right, D left), Home (H) and End (F).
_FINAL = {ord("C"): Key.NEXT, ord("D"): Key.PREV, ord("H"): Key.FIRST, ord("F"): Key.LAST}

# ``ESC [ n ~`` sequences: Page Up (5), Page Down (6), Home (1, 7) and End (4, 8).
_TILDE = {
    b"5": Key.PREV,
    b"6": Key.NEXT,
    b"1": Key.FIRST,
    b"7": Key.FIRST,
    b"4": Key.LAST,
    b"8": Key.LAST,
}

# An escape sequence never gets this long; a longer one is garbage and is dropped.
_MAX_PENDING = 32


class KeyParser:
    """Turns bytes read from a terminal into keys, across reads that split a sequence.

    ``j``, Space, →, Page Down: next page; ``k``, ←, Page Up: previous; ``g``, Home: first;
    ``G``, End: last; ``q``: quit. Other input is ignored.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[Key]:
        """The keys that `data`, after whatever earlier reads left incomplete, completes."""
        buffer = self._pending + data
        keys: list[Key] = []
        index = 0
        while index < len(buffer):
            end = _sequence_end(buffer, index)
            if end is None:
                break
            key = _key_of(buffer[index:end])
            if key is not None:
                keys.append(key)
            index = end
        self._pending = buffer[index:]
        if len(self._pending) > _MAX_PENDING:
            self._pending = b""
        return keys


def _sequence_end(buffer: bytes, start: int) -> int | None:
    """Where the key starting at `start` ends, or None if the buffer holds only part of it."""
    if buffer[start] != _ESC:
        return start + 1
    if start + 1 >= len(buffer):
        return None
    introducer = buffer[start + 1]
    if introducer == ord("O"):
        return start + 3 if start + 2 < len(buffer) else None
    if introducer != ord("["):
        # A lone Escape (or Alt+key): drop the Escape and read what follows as a key.
        return start + 1
    index = start + 2
    # Parameter and intermediate bytes (0x20-0x3F) come before one final byte.
    while index < len(buffer) and 0x20 <= buffer[index] <= 0x3F:
        index += 1
    return index + 1 if index < len(buffer) else None


def _key_of(sequence: bytes) -> Key | None:
    if len(sequence) == 1:
        return _PLAIN.get(sequence[0])
    if len(sequence) == 2:
        return None
    if sequence[-1] == ord("~"):
        return _TILDE.get(sequence[2:-1].split(b";")[0])
    return _FINAL.get(sequence[-1])


_QUIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Limitation: Ctrl+Z suspends the monitor with the terminal still in cbreak mode and on the
# alternate screen, so the shell prompt appears over the monitor's last frame until `fg`.
# Lifted by: handling SIGTSTP and SIGCONT to leave the session before stopping and enter it
# again on resuming.


@contextlib.contextmanager
def terminal_session(
    console: Console, keys: asyncio.Queue[Key], *, input_fd: int | None = None
) -> Iterator[None]:
    """Deliver keys from the terminal to `keys` inside the block, and keep `console` sized.

    Standard input (or `input_fd`) is read in cbreak mode when it is a terminal; otherwise no
    key arrives. SIGINT, SIGTERM and SIGHUP put `Key.QUIT`; SIGWINCH resizes `console` to the
    terminal and puts `Key.RESIZE`. Must run in the event loop's thread.
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno() if input_fd is None else input_fd
    with contextlib.ExitStack() as stack:
        if os.isatty(fd):
            stack.enter_context(_cbreak(fd))
            stack.enter_context(_reading(loop, fd, keys))
        _fit(console)
        for signum in _QUIT_SIGNALS:
            stack.enter_context(_handling(loop, signum, keys.put_nowait, Key.QUIT))
        stack.enter_context(_handling(loop, signal.SIGWINCH, _resized, console, keys))
        yield


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    # Imported here: termios and tty exist only on POSIX, and only this needs them.
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        # A terminal that hung up cannot be restored, and needs no restoring.
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _reading(loop: asyncio.AbstractEventLoop, fd: int, keys: asyncio.Queue[Key]) -> Iterator[None]:
    parser = KeyParser()

    def on_readable() -> None:
        try:
            data = os.read(fd, 1024)
        except OSError:
            data = b""
        if not data:
            # The terminal went away (hang-up, or end of input): nothing more can be read.
            loop.remove_reader(fd)
            keys.put_nowait(Key.QUIT)
            return
        for key in parser.feed(data):
            keys.put_nowait(key)

    loop.add_reader(fd, on_readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)


@contextlib.contextmanager
def _handling(
    loop: asyncio.AbstractEventLoop,
    signum: signal.Signals,
    callback: Callable[..., object],
    *args: object,
) -> Iterator[None]:
    loop.add_signal_handler(signum, callback, *args)
    try:
        yield
    finally:
        loop.remove_signal_handler(signum)


def _resized(console: Console, keys: asyncio.Queue[Key]) -> None:
    _fit(console)
    keys.put_nowait(Key.RESIZE)


def _fit(console: Console) -> None:
    """Size `console` to its terminal, read from the terminal itself.

    Rich reads COLUMNS and LINES before the terminal, and those variables keep the size the
    shell had when it started, so after a resize they would be wrong.
    """
    try:
        size = os.get_terminal_size(console.file.fileno())
    except (AttributeError, ValueError, OSError):
        return
    if size.columns and size.lines:
        console.size = (size.columns, size.lines)
