"""Drawing the monitor: a header of counts, a page of the task table and a footer.

The screen is a rich `Layout` with a fixed two-line header and one-line footer; the table
gets the rest. Every cell is a single line (long values end in an ellipsis), so a page of N
tasks takes exactly N lines and `page_size_for` can tell from the terminal height how many
fit. The same renderable serves the live screen and tests, which print it to a string
console of a fixed size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich import box
from rich.layout import Layout
from rich.table import Table
from rich.text import Text

from looplane.cli.monitor_data import Status
from looplane.log import printable

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult

    from looplane.cli.monitor_data import Counts, Row, Snapshot
    from looplane.cli.monitor_paging import Pager

__all__ = ["CHROME_LINES", "KEYS_HELP", "page_size_for", "render_screen"]

HEADER_LINES = 2
FOOTER_LINES = 1
TABLE_HEAD_LINES = 2
"""The column titles and the rule under them."""
CHROME_LINES = HEADER_LINES + FOOTER_LINES + TABLE_HEAD_LINES
"""Lines of the screen that are not task rows."""

KEYS_HELP = "→ j Space next · ← k prev · g first · G last · q quit"
"""The keys, as the footer lists them."""

OUTCOME_CHARS = 60
"""A value or error is cut to this many characters (the column may cut it shorter)."""

_STATUS_STYLES = {
    Status.QUEUED: "cyan",
    Status.RUNNING: "bold yellow",
    Status.DELAYED: "magenta",
    Status.SUCCEEDED: "green",
    Status.FAILED: "bold red",
    Status.DEAD: "red",
}


def page_size_for(height: int) -> int:
    """How many task rows fit on a screen `height` lines tall (at least one)."""
    return max(1, height - CHROME_LINES)


def render_screen(snapshot: Snapshot | None, pager: Pager, *, label: str = "") -> RenderableType:
    """The whole screen: counts, the rows of `pager`'s page, and the footer.

    `pager` must already be sized to the screen (`page_size_for`) and to the snapshot's
    rows. Without a snapshot (before the first read finishes) the table is empty.
    """
    layout = Layout()
    layout.split_column(
        Layout(_header(snapshot, label), name="header", size=HEADER_LINES),
        Layout(_page(snapshot, pager), name="body"),
        Layout(_footer(snapshot, pager), name="footer", size=FOOTER_LINES),
    )
    return layout


def _header(snapshot: Snapshot | None, label: str) -> RenderableType:
    title = Text.assemble(("Looplane monitor", "bold"), "  ", (label, "dim"), no_wrap=True)
    if snapshot is None:
        return Text.assemble(title, "\n", ("reading…", "dim"))
    title.append(f"  {snapshot.taken_at:%H:%M:%S}", style="dim")
    return Text.assemble(title, "\n", _counts_line(snapshot.counts, truncated=snapshot.truncated))


def _counts_line(counts: Counts, *, truncated: bool) -> Text:
    # Results beyond the newest ones read are not counted, so those two are lower bounds.
    plus = "+" if truncated else ""
    items = [
        (Status.QUEUED, str(counts.queued)),
        (Status.RUNNING, str(counts.running)),
        (Status.DELAYED, str(counts.delayed)),
        (Status.SUCCEEDED, f"{counts.succeeded}{plus}"),
        (Status.FAILED, f"{counts.failed}{plus}"),
        (Status.DEAD, str(counts.dead_lettered)),
    ]
    line = Text(no_wrap=True, overflow="ellipsis")
    for status, number in items:
        line.append(f"{status.value} ", style=_STATUS_STYLES[status])
        line.append(number, style="bold")
        line.append("   ")
    line.rstrip()
    return line


@dataclass(frozen=True, slots=True)
class _TaskTable:
    """The page of tasks, drawn with the columns that fit the width it is given."""

    rows: Sequence[Row]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        hidden = {name for name, below in _DROPPED_BELOW.items() if options.max_width < below}
        # One space after each column and the box's blank divider: two between columns.
        table = Table(
            box=box.SIMPLE_HEAD, show_edge=False, expand=True, pad_edge=False, padding=(0, 1, 0, 0)
        )
        for name, settings in _COLUMNS.items():
            if name not in hidden:
                table.add_column(name, no_wrap=True, **settings)
        for row in self.rows:
            table.add_row(
                *(
                    cell
                    for name, cell in zip(_COLUMNS, _cells(row), strict=True)
                    if name not in hidden
                )
            )
        yield table


# Every column, and how it is laid out: the task name is as wide as the longest on the page
# (up to a limit), and the outcome takes the width left.
_COLUMNS: dict[str, dict[str, Any]] = {
    "ID": {"min_width": 9},
    "Task": {"overflow": "ellipsis", "min_width": 8, "max_width": 32},
    "Status": {"min_width": 9},
    "Attempt": {"justify": "right"},
    "Fetched": {"min_width": 8},
    "Started": {"min_width": 8},
    "Finished": {"min_width": 8},
    "Duration": {"justify": "right"},
    "Value / error": {"overflow": "ellipsis", "ratio": 1, "min_width": 10},
}

# On a narrow screen these columns go first (the finish time and duration stay), so the
# task name and the outcome keep room to be read.
_DROPPED_BELOW = {"Fetched": 115, "Started": 100}


def _page(snapshot: Snapshot | None, pager: Pager) -> _TaskTable:
    rows = () if snapshot is None else snapshot.rows
    return _TaskTable([rows[index] for index in pager.rows])


def _cells(row: Row) -> tuple[RenderableType, ...]:
    """The row's cells, one per column of `_COLUMNS`."""
    result = row.result
    times = (
        ("", "", "")
        if result is None
        else (_clock(result.fetched_at), _clock(result.started_at), _clock(result.finished_at))
    )
    duration = "" if result is None or result.finished_at is None else _duration(result.duration)
    return (
        f"…{row.task_id[-8:]}",
        row.name,
        Text(row.status.value, style=_STATUS_STYLES[row.status]),
        f"{row.attempt}/{row.max_attempts}",
        *times,
        duration,
        _outcome(row),
    )


def _clock(when: datetime | None) -> str:
    """`when` in local time, as HH:MM:SS."""
    return "" if when is None else f"{when.astimezone():%H:%M:%S}"


def _duration(seconds: float) -> str:
    """A duration a glance can read: 12ms, 3.40s, 2m05s, 1h02m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _outcome(row: Row) -> Text:
    result = row.result
    if result is None:
        return Text(_cut(row.note or ""), style="red" if row.note else "")
    if result.success:
        return Text(_cut(_short_value(result.value)))
    error = result.error or result.error_type or "failed"
    # Errors read "module.Type: message"; the bare type name is enough on screen.
    if result.error_type and error.startswith(result.error_type):
        error = result.error_type.rpartition(".")[2] + error[len(result.error_type) :]
    return Text(_cut(error), style="red")


def _short_value(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        # Results may hold types JSON lacks (datetime, bytes, Decimal); show them as Python.
        return repr(value)


def _cut(text: str) -> str:
    """`text` on one line, at most `OUTCOME_CHARS` characters."""
    line = printable(" ".join(text.split()))
    return line if len(line) <= OUTCOME_CHARS else line[: OUTCOME_CHARS - 1] + "…"


def _footer(snapshot: Snapshot | None, pager: Pager) -> Text:
    shown = f"{pager.total} tasks"
    if snapshot is not None and snapshot.truncated:
        shown += " (the newest)"
    return Text.assemble(
        (f"page {pager.page}/{pager.pages}", "bold"),
        f" · {shown} · ",
        (KEYS_HELP, "dim"),
        no_wrap=True,
        overflow="ellipsis",
    )
