"""Where the command's output goes: rich tables on stdout, messages and log lines on stderr.

The library only logs; this is the one place that sets handlers and levels. Each command
installs the handler for its run and removes it afterwards, so invoking commands in-process
(tests, embedding) does not stack handlers.

On a terminal, lines are rich's aligned columns. Anywhere else (a file, a pipe, a service
manager's journal) rich would wrap or pad each line to 80 columns, which splits the one line
per finished attempt that log tools count on, so there each record is one unwrapped line,
written by the standard library's handler, which costs a twentieth of rich's.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.logging import RichHandler

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["configured_logging", "stderr_console", "stdout_console"]

# Off a terminal, tables are drawn this wide at most rather than folded at 80 columns, so
# that piped or logged output keeps one value per line (a table is only as wide as it needs).
_PIPE_WIDTH = 240
# Log times read the same on a terminal and off one: ISO order, not rich's default
# ``%x %X``, which prints 12/04/26 and reads month first or day first depending on the reader.
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def stdout_console() -> Console:
    """A console on stdout for tables; off a terminal it does not fold long values."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, _PIPE_WIDTH)
    return console


def stderr_console() -> Console:
    """A console on stderr that wraps only on a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


def _plain_handler() -> logging.Handler:
    """``date time LEVEL message``, one line per record, written by the standard library.

    Rich renders a record in about 0.4 ms, more than a no-op task takes to run; a worker
    writing to a pipe or a journal would spend most of its time drawing log lines.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s %(message)s", _TIME_FORMAT))
    return handler


@contextmanager
def configured_logging(level: int) -> Iterator[None]:
    """Send log records at `level` and above to stderr for the duration of the block.

    The handler sits on the root logger, so lines that task functions log show up beside
    Looplane's own. Tracebacks never show local variables: they could hold secrets.
    """
    console = stderr_console()
    handler: logging.Handler = _plain_handler()
    if console.is_terminal:
        handler = RichHandler(
            console=console,
            show_path=False,
            log_time_format=_TIME_FORMAT,
            markup=False,
            rich_tracebacks=True,
            tracebacks_show_locals=False,
        )
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
