"""``looplane monitor``: paging, key parsing, snapshots, rendering and the screen loop.

Rendering is checked on string consoles of fixed sizes; the screen loop runs `run_monitor`
with a queue of keys. The real command in a real terminal is in ``test_monitor_pty.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import io
import os
import signal
import struct
import termios
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from rich.console import Console

from looplane import (
    FakeClock,
    InMemoryResultBackend,
    InMemoryStorage,
    JSONSerializer,
    LMDBResultBackend,
    LMDBStorage,
    StorageProducer,
    TaskResult,
)
from looplane.cli import app
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_OK
from looplane.cli.monitor import run_monitor
from looplane.cli.monitor_data import (
    UNDECODABLE,
    Counts,
    MonitorSource,
    Row,
    Snapshot,
    SnapshotReader,
    Status,
)
from looplane.cli.monitor_keys import KeyParser, terminal_session
from looplane.cli.monitor_paging import Key, Pager
from looplane.cli.monitor_view import KEYS_HELP, _duration, page_size_for, render_screen
from looplane.errors import StorageUnavailable
from looplane.storage import NewTask
from tests.conftest import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from typer.testing import CliRunner

    from looplane.task import Task

ALT_SCREEN_ON = "\x1b[?1049h"
ALT_SCREEN_OFF = "\x1b[?1049l"
COLUMNS = ["ID", "Task", "Status", "Attempt", "Fetched", "Started", "Finished", "Duration"]
T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def v7_id(ms: int, n: int = 0) -> str:
    """A task id in `new_task_id`'s layout, created at `ms` milliseconds after the epoch."""
    return f"{ms:012x}7{n:019x}"


def local_clock(when: datetime) -> str:
    return f"{when.astimezone():%H:%M:%S}"


def result_of(
    task_id: str,
    *,
    name: str = "demo.task",
    success: bool = True,
    value: Any = 42,
    error: str | None = None,
    error_type: str | None = None,
    attempt: int = 1,
    max_retries: int = 0,
    will_retry: bool = False,
    duration: float = 0.25,
    at: datetime = T0,
) -> TaskResult:
    return TaskResult(
        task_id=task_id,
        func_name=name,
        success=success,
        value=value if success else None,
        error=error,
        error_type=error_type,
        attempt=attempt,
        max_retries=max_retries,
        will_retry=will_retry,
        duration=duration,
        fetched_at=at,
        started_at=at + timedelta(seconds=1),
        finished_at=at + timedelta(seconds=2),
    )


# Paging -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "page_size", "pages"),
    [
        pytest.param(0, 10, 1, id="empty-has-one-page"),
        pytest.param(1, 10, 1, id="one-row"),
        pytest.param(10, 10, 1, id="exactly-one-page"),
        pytest.param(11, 10, 2, id="one-row-over"),
        pytest.param(120, 25, 5, id="120-rows-by-25"),
    ],
)
def test_pager_counts_pages(total: int, page_size: int, pages: int) -> None:
    pager = Pager(page_size, total)

    assert (pager.page, pager.pages) == (1, pages)


def test_pager_moves_by_whole_pages_and_stops_at_both_ends() -> None:
    pager = Pager(page_size=10, total=25)
    seen = []
    for move in (pager.next, pager.next, pager.next, pager.prev, pager.last, pager.first):
        move()
        seen.append((pager.page, list(pager.rows)[:1]))
    pager.prev()

    assert seen == [(2, [10]), (3, [20]), (3, [20]), (2, [10]), (3, [20]), (1, [0])]
    assert pager.page == 1
    assert list(pager.rows) == list(range(10))


@pytest.mark.parametrize(
    ("key", "page"),
    [
        pytest.param(Key.NEXT, 3, id="next"),
        pytest.param(Key.PREV, 1, id="prev"),
        pytest.param(Key.FIRST, 1, id="first"),
        pytest.param(Key.LAST, 5, id="last"),
        pytest.param(Key.RESIZE, 2, id="resize-does-not-page"),
        pytest.param(Key.QUIT, 2, id="quit-does-not-page"),
    ],
)
def test_pager_apply_moves_as_the_key_says(key: Key, page: int) -> None:
    pager = Pager(page_size=10, total=50, offset=10)

    pager.apply(key)

    assert pager.page == page


def test_pager_last_page_shows_only_the_rows_left() -> None:
    pager = Pager(page_size=25, total=120)

    pager.last()

    assert (pager.page, pager.pages) == (5, 5)
    assert list(pager.rows) == list(range(100, 120))


def test_pager_shrinking_list_moves_back_to_its_last_page() -> None:
    pager = Pager(page_size=10, total=100)
    pager.last()

    pager.set_total(35)

    assert (pager.page, pager.pages) == (4, 4)
    pager.set_total(0)
    assert (pager.page, pager.pages, list(pager.rows)) == (1, 1, [])


@pytest.mark.parametrize(
    ("offset", "new_size", "page", "pages"),
    [
        pytest.param(75, 10, 8, 12, id="smaller-pages"),
        pytest.param(75, 60, 2, 2, id="bigger-pages"),
        pytest.param(0, 7, 1, 18, id="first-page-stays-first"),
        pytest.param(100, 200, 1, 1, id="everything-fits"),
    ],
)
def test_pager_resize_keeps_the_top_row_visible(
    offset: int, new_size: int, page: int, pages: int
) -> None:
    pager = Pager(page_size=25, total=120, offset=offset)
    top_row = pager.rows[0]

    pager.resize(new_size)

    assert (pager.page, pager.pages) == (page, pages)
    assert top_row in pager.rows


def test_pager_keeps_bad_values_in_range() -> None:
    pager = Pager(page_size=0, total=-3, offset=7)

    assert (pager.page_size, pager.total, pager.offset) == (1, 0, 0)
    pager.resize(-5)
    assert pager.page_size == 1


def test_pager_offset_snaps_to_the_start_of_its_page() -> None:
    assert Pager(page_size=10, total=100, offset=37).offset == 30


@pytest.mark.parametrize(
    ("height", "rows"),
    [
        pytest.param(30, 25, id="30-lines"),
        pytest.param(24, 19, id="24-lines"),
        pytest.param(6, 1, id="just-one-row"),
        pytest.param(2, 1, id="tiny-still-one-row"),
    ],
)
def test_page_size_fits_the_screen_height(height: int, rows: int) -> None:
    assert page_size_for(height) == rows


# Keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        pytest.param(b"j", Key.NEXT, id="j"),
        pytest.param(b" ", Key.NEXT, id="space"),
        pytest.param(b"\x1b[C", Key.NEXT, id="right-arrow"),
        pytest.param(b"\x1bOC", Key.NEXT, id="right-arrow-application-mode"),
        pytest.param(b"\x1b[1;5C", Key.NEXT, id="ctrl-right-arrow"),
        pytest.param(b"\x1b[6~", Key.NEXT, id="page-down"),
        pytest.param(b"k", Key.PREV, id="k"),
        pytest.param(b"\x1b[D", Key.PREV, id="left-arrow"),
        pytest.param(b"\x1bOD", Key.PREV, id="left-arrow-application-mode"),
        pytest.param(b"\x1b[5~", Key.PREV, id="page-up"),
        pytest.param(b"g", Key.FIRST, id="g"),
        pytest.param(b"\x1b[H", Key.FIRST, id="home"),
        pytest.param(b"\x1b[1~", Key.FIRST, id="home-vt"),
        pytest.param(b"G", Key.LAST, id="G"),
        pytest.param(b"\x1b[F", Key.LAST, id="end"),
        pytest.param(b"\x1b[4~", Key.LAST, id="end-vt"),
        pytest.param(b"q", Key.QUIT, id="q"),
        pytest.param(b"\x03", Key.QUIT, id="ctrl-c-byte"),
    ],
)
def test_key_parser_reads_each_key(data: bytes, key: Key) -> None:
    assert KeyParser().feed(data) == [key]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"x", id="letter"),
        pytest.param(b"\x1b[A", id="up-arrow"),
        pytest.param(b"\x1b[B", id="down-arrow"),
        pytest.param(b"\x1b[2~", id="insert"),
        pytest.param("é".encode(), id="non-ascii"),
        pytest.param(b"\r", id="enter"),
    ],
)
def test_key_parser_ignores_other_input(data: bytes) -> None:
    assert KeyParser().feed(data) == []


def test_key_parser_reads_several_keys_from_one_read() -> None:
    keys = KeyParser().feed(b"jj\x1b[Dk \x1bOCGq")

    assert keys == [Key.NEXT, Key.NEXT, Key.PREV, Key.PREV, Key.NEXT, Key.NEXT, Key.LAST, Key.QUIT]


def test_key_parser_joins_a_sequence_split_across_reads() -> None:
    parser = KeyParser()

    assert [parser.feed(b"j\x1b"), parser.feed(b"["), parser.feed(b"C")] == [
        [Key.NEXT],
        [],
        [Key.NEXT],
    ]
    assert [parser.feed(b"\x1bO"), parser.feed(b"D")] == [[], [Key.PREV]]


def test_key_parser_drops_a_lone_escape_before_a_key() -> None:
    parser = KeyParser()

    assert parser.feed(b"\x1b") == []
    assert parser.feed(b"j") == [Key.NEXT]


def test_key_parser_drops_an_endless_sequence() -> None:
    parser = KeyParser()

    assert parser.feed(b"\x1b[" + b"1" * 40) == []
    assert parser.feed(b"G") == [Key.LAST]


# Snapshots --------------------------------------------------------------------------------


class CountingSerializer(JSONSerializer):
    """Counts the payloads it decodes."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def deserialize(self, data: bytes) -> Task:
        self.decoded += 1
        return super().deserialize(data)


@pytest.fixture
async def source() -> AsyncIterator[MonitorSource]:
    clock = FakeClock(start=T0.timestamp())
    storage = InMemoryStorage(clock=clock)
    results = InMemoryResultBackend()
    yield MonitorSource(storage, results, CountingSerializer(), label="memory")
    await storage.close()
    await results.close()


async def send(source: MonitorSource, name: str, *, retries: int = 3) -> str:
    """Send one task by name, one second after the previous one."""
    assert isinstance(source.storage, InMemoryStorage)
    assert isinstance(source.storage.clock, FakeClock)
    source.storage.clock.advance(1)
    producer = StorageProducer(source.storage, serializer=source.serializer)
    task = await producer.send(name, retries=retries)
    return task.id


async def test_snapshot_merges_storage_states_with_results(source: MonitorSource) -> None:
    storage, results = source.storage, source.result_backend
    finished_ok, finished_bad = v7_id(1000, 1), v7_id(1000, 2)
    await results.store(result_of(finished_ok, name="old.ok", value="fine"))
    await results.store(result_of(finished_bad, name="old.bad", success=False, error="E: x"))
    running, retrying, dead = [await send(source, name) for name in ("run", "retry", "dead")]
    (first,) = await storage.claim(1)
    (second,) = await storage.claim(1)
    (third,) = await storage.claim(1)
    await storage.release(second, delay_s=60)
    await results.store(result_of(retrying, success=False, error="E: again", will_retry=True))
    await storage.bury(third, reason="worker vanished")
    queued = await send(source, "wait")

    snapshot = await SnapshotReader(source).read()

    shown = [
        (row.task_id, row.name, row.status, row.attempt, row.max_attempts) for row in snapshot.rows
    ]
    assert shown == [
        (queued, "wait", Status.QUEUED, 0, 4),
        (dead, "dead", Status.DEAD, 1, 4),
        (retrying, "retry", Status.DELAYED, 1, 4),
        (running, "run", Status.RUNNING, 1, 4),
        (finished_bad, "old.bad", Status.FAILED, 1, 1),
        (finished_ok, "old.ok", Status.SUCCEEDED, 1, 1),
    ]
    assert first.task_id == running
    assert snapshot.rows[1].note == "worker vanished"
    assert snapshot.rows[2].result is not None
    assert snapshot.rows[2].result.error == "E: again"
    assert snapshot.rows[3].result is None
    assert snapshot.counts == Counts(
        queued=1, running=1, delayed=1, succeeded=1, failed=1, dead_lettered=1
    )
    assert not snapshot.truncated


async def test_snapshot_shows_an_undecodable_payload(source: MonitorSource) -> None:
    await source.storage.enqueue([NewTask(v7_id(5000), b"\xff not a task", max_attempts=2)])

    snapshot = await SnapshotReader(source).read()

    assert [(row.name, row.status) for row in snapshot.rows] == [(UNDECODABLE, Status.QUEUED)]


async def test_snapshot_shows_a_running_task_whose_final_result_is_in_as_finished(
    source: MonitorSource,
) -> None:
    """Storage is read first; a task that finishes before the results are read is done."""
    task_id = await send(source, "quick")
    await source.storage.claim(1)
    await source.result_backend.store(result_of(task_id, name="quick", value=7))

    (row,) = (await SnapshotReader(source).read()).rows

    assert (row.status, row.attempt) == (Status.SUCCEEDED, 1)


async def test_snapshot_ignores_results_of_earlier_attempts_of_a_stored_task(
    source: MonitorSource,
) -> None:
    task_id = await send(source, "flaky")
    await source.result_backend.store(result_of(task_id, success=False, will_retry=True))
    claim, *_ = await source.storage.claim(1)
    await source.storage.release(claim)
    await source.storage.claim(1)

    (row,) = (await SnapshotReader(source).read()).rows

    assert (row.status, row.attempt, row.result) == (Status.RUNNING, 2, None)


async def test_snapshot_counts_each_task_by_its_latest_final_result(
    source: MonitorSource,
) -> None:
    flaky, broken, unfinished = v7_id(1000, 1), v7_id(1000, 2), v7_id(1000, 3)
    results = source.result_backend
    await results.store(result_of(flaky, success=False, max_retries=1, will_retry=True))
    await results.store(result_of(flaky, attempt=2, max_retries=1))
    await results.store(result_of(broken, success=False, max_retries=1, will_retry=True))
    await results.store(result_of(broken, success=False, attempt=2, max_retries=1))
    await results.store(result_of(unfinished, success=False, max_retries=1, will_retry=True))

    snapshot = await SnapshotReader(source).read()

    assert (snapshot.counts.succeeded, snapshot.counts.failed) == (1, 1)
    statuses = {row.task_id: (row.status, row.attempt) for row in snapshot.rows}
    assert statuses == {
        flaky: (Status.SUCCEEDED, 2),
        broken: (Status.FAILED, 2),
        unfinished: (Status.DELAYED, 1),
    }


async def test_snapshot_orders_stored_and_finished_tasks_by_sending_time(
    source: MonitorSource,
) -> None:
    stored = await send(source, "stored")  # sent at T0 + 1 s
    before = v7_id(int(T0.timestamp() * 1000), 1)
    after = v7_id(int(T0.timestamp() * 1000) + 5000, 2)
    other_id = "not-a-uuid-task"
    for task_id in (before, after, other_id):
        await source.result_backend.store(result_of(task_id, at=T0 - timedelta(days=1)))

    rows = (await SnapshotReader(source).read()).rows

    assert [row.task_id for row in rows] == [after, stored, before, other_id]


async def test_snapshot_decodes_each_payload_once(source: MonitorSource) -> None:
    for name in ("a", "b", "c"):
        await send(source, name)
    reader = SnapshotReader(source)
    assert isinstance(source.serializer, CountingSerializer)

    await reader.read()
    await send(source, "d")
    snapshot = await reader.read()

    assert [row.name for row in snapshot.rows] == ["d", "c", "b", "a"]
    assert source.serializer.decoded == 4


@pytest.mark.parametrize(
    ("max_tasks", "max_results", "truncated"),
    [
        pytest.param(10, 10, False, id="everything-read"),
        pytest.param(2, 10, True, id="tasks-cut"),
        pytest.param(10, 1, True, id="results-cut"),
    ],
)
async def test_snapshot_says_when_a_read_stopped_at_its_limit(
    source: MonitorSource, max_tasks: int, max_results: int, truncated: bool
) -> None:
    for name in ("a", "b"):
        await send(source, name)
    await source.result_backend.store(result_of(v7_id(1, 1)))

    snapshot = await SnapshotReader(source, max_tasks=max_tasks, max_results=max_results).read()

    assert snapshot.truncated is truncated


# Rendering --------------------------------------------------------------------------------


def row(n: int, *, status: Status = Status.QUEUED, result: TaskResult | None = None) -> Row:
    task_id = v7_id(1_000_000 + n, n)
    return Row(task_id, f"task.number{n}", status, 0, 4, float(n), result)


def snapshot_of(
    rows: list[Row], *, counts: Counts | None = None, truncated: bool = False
) -> Snapshot:
    counts = counts or Counts(queued=len(rows))
    return Snapshot(counts, tuple(rows), T0.astimezone(), truncated)


def render(
    snapshot: Snapshot | None, *, width: int = 120, height: int = 30, page: int = 1
) -> list[str]:
    """The screen as lines of plain text, on page `page`."""
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=False)
    pager = Pager(page_size_for(height), 0 if snapshot is None else len(snapshot.rows))
    for _ in range(page - 1):
        pager.next()
    console.print(render_screen(snapshot, pager, label="lmdb /tmp/q"))
    assert isinstance(console.file, io.StringIO)
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def test_render_shows_counts_columns_and_the_footer_at_120_by_30() -> None:
    counts = Counts(queued=12, running=3, delayed=2, succeeded=40, failed=5, dead_lettered=1)
    rows = [row(n) for n in range(60, 0, -1)]

    lines = render(snapshot_of(rows, counts=counts))

    assert len(lines) == 30
    assert lines[0].startswith("Looplane monitor  lmdb /tmp/q  ")
    assert lines[0].endswith(local_clock(T0))
    assert lines[1] == (
        "queued 12   running 3   delayed 2   succeeded 40   failed 5   dead-lettered 1"
    )
    titles = lines[2]
    positions = [titles.index(title) for title in [*COLUMNS, "Value / error"]]
    assert positions == sorted(positions)
    assert set(lines[3]) == {"─"}
    assert lines[-1] == f"page 1/3 · 60 tasks · {KEYS_HELP}"
    for key in ("→", "j", "Space", "←", "k", "g first", "G last", "q quit"):
        assert key in lines[-1]


def test_render_lists_the_page_rows_in_snapshot_order() -> None:
    rows = [row(n) for n in range(60, 0, -1)]

    page_one = render(snapshot_of(rows))
    page_three = render(snapshot_of(rows), page=3)

    names = [line.split()[1] for line in page_one[4:29]]
    assert names == [f"task.number{n}" for n in range(60, 35, -1)]
    assert page_one[4].startswith(f"…{rows[0].task_id[-8:]}")
    assert [line.split()[1] for line in page_three[4:14]] == [
        f"task.number{n}" for n in range(10, 0, -1)
    ]
    assert page_three[14:29] == [""] * 15
    assert page_three[-1].startswith("page 3/3 · 60 tasks")


def test_render_shows_attempt_times_duration_and_value() -> None:
    result = result_of("x", value={"pages": 3}, attempt=2, max_retries=3, duration=1.5)
    done = Row(v7_id(1, 1), "report", Status.SUCCEEDED, 2, 4, 1.0, result)

    (line,) = render(snapshot_of([done]))[4:5]

    assert line.split() == [
        f"…{done.task_id[-8:]}",
        "report",
        "succeeded",
        "2/4",
        local_clock(T0),
        local_clock(T0 + timedelta(seconds=1)),
        local_clock(T0 + timedelta(seconds=2)),
        "1.50s",
        '{"pages":',
        "3}",
    ]


def test_render_shows_errors_with_the_short_type_name_and_dead_reasons() -> None:
    timed_out = result_of(
        "x",
        success=False,
        error="looplane.errors.TaskTimeout: task ran over 5 s",
        error_type="looplane.errors.TaskTimeout",
    )
    rows = [
        Row(v7_id(2, 2), "slow", Status.FAILED, 1, 1, 2.0, timed_out),
        Row(v7_id(1, 1), "lost", Status.DEAD, 3, 3, 1.0, None, "lease expired on last attempt"),
    ]

    lines = render(snapshot_of(rows))

    assert lines[4].endswith("TaskTimeout: task ran over 5 s")
    assert lines[5].endswith("lease expired on last attempt")
    assert "dead-lettered" in lines[5]


def test_render_cuts_long_values_to_one_line() -> None:
    long_value = "first line\n" + "x" * 300
    rows = [row(1, status=Status.SUCCEEDED, result=result_of("x", value=long_value))]

    lines = render(snapshot_of(rows))

    assert lines[4].endswith("…")
    assert '"first line\\nxxx' in lines[4]
    assert len(lines) == 30


@pytest.mark.parametrize(
    ("width", "hidden"),
    [
        pytest.param(120, set(), id="120-every-column"),
        pytest.param(110, {"Fetched"}, id="110-no-fetched"),
        pytest.param(90, {"Fetched", "Started"}, id="90-no-fetched-or-started"),
    ],
)
def test_render_drops_the_fetch_and_start_times_first_on_narrow_screens(
    width: int, hidden: set[str]
) -> None:
    rows = [row(1, status=Status.SUCCEEDED, result=result_of("x", name="app.send_email"))]

    lines = render(snapshot_of(rows), width=width)

    shown = {title for title in COLUMNS if title in lines[2].split()}
    assert shown == set(COLUMNS) - hidden
    assert "task.number1" in lines[4]
    assert all(len(line) <= width for line in lines)


def test_render_before_the_first_read_shows_an_empty_first_page() -> None:
    lines = render(None)

    assert lines[1] == "reading…"
    assert lines[-1].startswith("page 1/1 · 0 tasks")


def test_render_marks_counts_and_rows_that_cover_only_the_newest() -> None:
    counts = Counts(succeeded=10_000, failed=3)

    lines = render(snapshot_of([row(1)], counts=counts, truncated=True))

    assert "succeeded 10000+" in lines[1]
    assert "failed 3+" in lines[1]
    assert lines[-1].startswith("page 1/1 · 1 tasks (the newest) · ")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        pytest.param(0.0004, "0ms", id="instant"),
        pytest.param(0.0123, "12ms", id="ms"),
        pytest.param(3.4, "3.40s", id="seconds"),
        pytest.param(125, "2m05s", id="minutes"),
        pytest.param(3720, "1h02m", id="hours"),
    ],
)
def test_durations_read_at_a_glance(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown


# The screen loop --------------------------------------------------------------------------


def terminal_console(width: int = 120, height: int = 30) -> Console:
    return Console(
        file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None
    )


def shows(console: Console, text: str) -> bool:
    return text in screen(console)


def screen(console: Console) -> str:
    """What the console shows now: its output since the last cursor-home."""
    assert isinstance(console.file, io.StringIO)
    output = console.file.getvalue()
    return output[output.rfind("\x1b[H") :]


async def test_run_monitor_pages_on_keys_and_restores_the_screen_on_quit(
    source: MonitorSource,
) -> None:
    for n in range(60):
        await send(source, f"job{n}")
    console = terminal_console()
    keys: asyncio.Queue[Key] = asyncio.Queue()
    monitor = asyncio.create_task(run_monitor(source, console, keys))

    await eventually(lambda: "page 1/3 · 60 tasks" in screen(console))
    assert "job59" in screen(console)
    for key, footer in [(Key.NEXT, "page 2/3"), (Key.LAST, "page 3/3"), (Key.FIRST, "page 1/3")]:
        keys.put_nowait(key)
        await eventually(functools.partial(shows, console, footer))
    keys.put_nowait(Key.QUIT)
    await asyncio.wait_for(monitor, timeout=5)

    assert isinstance(console.file, io.StringIO)
    output = console.file.getvalue()
    assert output.startswith(ALT_SCREEN_ON)
    assert output.rstrip().endswith(ALT_SCREEN_OFF)


async def test_run_monitor_refreshes_with_new_tasks(source: MonitorSource) -> None:
    console = terminal_console()
    keys: asyncio.Queue[Key] = asyncio.Queue()
    monitor = asyncio.create_task(run_monitor(source, console, keys, refresh_s=0.05))

    await eventually(lambda: "page 1/1 · 0 tasks" in screen(console))
    await send(source, "late.arrival")
    await eventually(lambda: "late.arrival" in screen(console))
    keys.put_nowait(Key.QUIT)
    await asyncio.wait_for(monitor, timeout=5)


async def test_run_monitor_lays_out_again_when_the_console_is_resized(
    source: MonitorSource,
) -> None:
    for n in range(60):
        await send(source, f"job{n}")
    console = terminal_console(height=30)
    keys: asyncio.Queue[Key] = asyncio.Queue()
    monitor = asyncio.create_task(run_monitor(source, console, keys))
    await eventually(lambda: "page 1/3" in screen(console))
    keys.put_nowait(Key.NEXT)
    await eventually(lambda: "page 2/3" in screen(console))

    console.size = (100, 15)  # 10 rows a page: the top row, the 26th, is on page 3 of 6
    keys.put_nowait(Key.RESIZE)

    await eventually(lambda: "page 3/6" in screen(console))
    assert "job34" in screen(console)
    keys.put_nowait(Key.QUIT)
    await asyncio.wait_for(monitor, timeout=5)


async def test_run_monitor_raises_a_storage_failure_after_restoring_the_screen(
    source: MonitorSource,
) -> None:
    await source.storage.close()
    console = terminal_console()

    with pytest.raises(StorageUnavailable, match=r"^memory storage is closed"):
        await asyncio.wait_for(run_monitor(source, console, asyncio.Queue()), timeout=5)

    assert isinstance(console.file, io.StringIO)
    assert console.file.getvalue().rstrip().endswith(ALT_SCREEN_OFF)


async def test_run_monitor_cancelled_restores_the_screen(source: MonitorSource) -> None:
    console = terminal_console()
    monitor = asyncio.create_task(run_monitor(source, console, asyncio.Queue()))
    await eventually(lambda: "page 1/1" in screen(console))

    monitor.cancel()

    with pytest.raises(asyncio.CancelledError):
        await monitor
    assert isinstance(console.file, io.StringIO)
    assert console.file.getvalue().rstrip().endswith(ALT_SCREEN_OFF)


# The command ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--storage", "memory"], {}, id="flag"),
        pytest.param([], {"LOOPLANE_STORAGE": "memory"}, id="env"),
    ],
)
def test_monitor_on_memory_storage_explains_and_exits_2(
    runner: CliRunner, args: list[str], env: dict[str, str]
) -> None:
    result = runner.invoke(app, ["monitor", *args], env=env)

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith("error: storage.backend: ")
    assert "only visible inside the process" in " ".join(result.stderr.split())
    assert result.stdout == ""


def test_monitor_on_a_missing_lmdb_path_exits_2_instead_of_creating_it(
    runner: CliRunner, tmp_path: Path
) -> None:
    missing = tmp_path / "typo"

    result = runner.invoke(app, ["monitor", "--db-path", str(missing)])

    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith(
        f"error: storage.path: no LMDB store there yet (got '{missing}', from flag --db-path)"
    )
    assert not missing.exists()


def test_monitor_with_a_bad_app_module_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()

    result = runner.invoke(app, ["monitor", "--db-path", str(tmp_path / "db"), "-A", "nosuch_mod"])

    assert result.exit_code == EXIT_CONFIG
    assert "cannot import app module 'nosuch_mod'" in result.stderr


def test_monitor_off_a_terminal_prints_one_screen_and_exits_0(
    runner: CliRunner, tmp_path: Path
) -> None:
    db = tmp_path / "db"

    async def fill() -> None:
        async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
            producer = StorageProducer(storage)
            for n in range(3):
                await producer.send("reports.build", n)
            await results.store(result_of(v7_id(1, 1), name="reports.old", value="done"))

    asyncio.run(fill())

    result = runner.invoke(app, ["monitor", "--db-path", str(db)], env={"LINES": "20"})

    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Looplane monitor  lmdb {db}")
    assert lines[1].split()[:2] == ["queued", "3"]
    assert [line.split()[1] for line in lines[4:8]] == ["reports.build"] * 3 + ["reports.old"]
    assert lines[-1].startswith("page 1/1 · 4 tasks")


# The terminal session ---------------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal of 24 rows by 80 columns: (master, slave) file descriptors."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    yield master, slave
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def pty_console(pty_pair: tuple[int, int]) -> Iterator[Console]:
    """A console writing to the pty, sized 200 by 50 until the session fits it."""
    with open(os.dup(pty_pair[1]), "w") as file:
        yield Console(file=file, force_terminal=True, width=200, height=50)


async def next_keys(keys: asyncio.Queue[Key], count: int) -> list[Key]:
    return [await asyncio.wait_for(keys.get(), timeout=5) for _ in range(count)]


async def test_terminal_session_reads_keys_in_cbreak_mode_and_restores_the_terminal(
    pty_pair: tuple[int, int], pty_console: Console
) -> None:
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    console = pty_console
    keys: asyncio.Queue[Key] = asyncio.Queue()

    with terminal_session(console, keys, input_fd=slave):
        inside = termios.tcgetattr(slave)
        os.write(master, b"j\x1b[")
        os.write(master, b"DGq")
        received = await next_keys(keys, 4)

    assert received == [Key.NEXT, Key.PREV, Key.LAST, Key.QUIT]
    assert not inside[3] & (termios.ICANON | termios.ECHO)
    assert inside[3] & termios.ISIG
    assert termios.tcgetattr(slave) == before
    assert console.size == (80, 24)


async def test_terminal_session_resizes_the_console_on_sigwinch(
    pty_pair: tuple[int, int], pty_console: Console
) -> None:
    master, slave = pty_pair
    console = pty_console
    keys: asyncio.Queue[Key] = asyncio.Queue()

    with terminal_session(console, keys, input_fd=slave):
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
        os.kill(os.getpid(), signal.SIGWINCH)
        received = await next_keys(keys, 1)

    assert received == [Key.RESIZE]
    assert console.size == (132, 40)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_terminal_session_turns_stop_signals_into_quit(
    pty_pair: tuple[int, int], pty_console: Console, signum: signal.Signals
) -> None:
    _, slave = pty_pair
    console = pty_console
    keys: asyncio.Queue[Key] = asyncio.Queue()

    with terminal_session(console, keys, input_fd=slave):
        os.kill(os.getpid(), signum)
        received = await next_keys(keys, 1)

    assert received == [Key.QUIT]


async def test_terminal_session_quits_when_the_terminal_goes_away(
    pty_pair: tuple[int, int], pty_console: Console
) -> None:
    master, slave = pty_pair
    console = pty_console
    keys: asyncio.Queue[Key] = asyncio.Queue()

    with terminal_session(console, keys, input_fd=slave):
        os.close(master)
        received = await next_keys(keys, 1)

    assert received == [Key.QUIT]


async def test_terminal_session_without_a_terminal_reads_no_keys(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=100, height=20)
    keys: asyncio.Queue[Key] = asyncio.Queue()

    with (
        (tmp_path / "input").open("w+b") as not_a_tty,
        terminal_session(console, keys, input_fd=not_a_tty.fileno()),
    ):
        pass

    assert keys.empty()
    assert console.size == (100, 20)
