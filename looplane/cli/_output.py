"""Where the command's output goes: rich tables on stdout, messages and log lines on stderr.

The library only logs; this is the one place that sets handlers and levels. Each command
installs the handler for its run and removes it afterwards, so invoking commands in-process
(tests, embedding) does not stack handlers.

On a terminal, lines are rich's aligned columns. Anywhere else (a file, a pipe, a service
manager's journal) rich would wrap or pad each line to 80 columns, which splits the one line
per finished attempt that log tools count on, so there each record is one unwrapped line.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleRenderable, Group
from rich.logging import RichHandler
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.traceback import Traceback

__all__ = ["configured_logging", "stderr_console", "stdout_console"]

# Off a terminal, tables are drawn this wide at most rather than folded at 80 columns, so
# that piped or logged output keeps one value per line (a table is only as wide as it needs).
_PIPE_WIDTH = 240


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


class _LineHandler(RichHandler):
    """A `RichHandler` that writes one unwrapped line per record off a terminal."""

    def render(
        self,
        *,
        record: logging.LogRecord,
        traceback: Traceback | None,
        message_renderable: ConsoleRenderable,
    ) -> ConsoleRenderable:
        """Rich columns on a terminal; else ``date time LEVEL message`` on one line."""
        if self.console.is_terminal or not isinstance(message_renderable, Text):
            return super().render(
                record=record, traceback=traceback, message_renderable=message_renderable
            )
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        line = Text.assemble(when, " ", self.get_level_text(record), " ", message_renderable)
        return line if traceback is None else Group(line, traceback)


@contextmanager
def configured_logging(level: int) -> Iterator[None]:
    """Send log records at `level` and above to stderr for the duration of the block.

    The handler sits on the root logger, so lines that task functions log show up beside
    Looplane's own. Tracebacks never show local variables: they could hold secrets.
    """
    console = stderr_console()
    handler = _LineHandler(
        console=console,
        show_path=False,
        markup=False,
        rich_tracebacks=console.is_terminal,
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
