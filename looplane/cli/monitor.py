"""``looplane monitor``: a live, full-screen view of the queue and of every task's outcome.

The monitor reads; the only write it can cause is the LMDB result backend purging expired
results it meets, as any reader does. It opens the storage and result backend that the
settings name (the worker's settings, from the same file, environment and flags) and, every
second, reads a snapshot: storage's counts and tasks, and the latest results. Reads run in
threads with short LMDB read transactions, so a worker in another process is never held up.

Reading the backends and reacting to keys are separate: a refresh task reads snapshots on a
timer while the screen loop waits for whichever comes first, a key or a new snapshot, and
redraws at once. A key waits at most for the part of a read that runs on the event loop
(decoding results), not for the reads themselves. `run_monitor` holds the loop and knows
nothing about terminals, so the demo runs it beside a worker in one process and tests drive
it with a queue of keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from typing import TYPE_CHECKING, Annotated

import typer
from rich.live import Live

from looplane.cli._common import (
    ConfigFileOption,
    DbPathOption,
    SourceFlags,
    StorageOption,
    build_app,
    fail,
    import_apps,
    is_missing,
    load,
)
from looplane.cli._output import stdout_console
from looplane.cli.exit_codes import EXIT_FAILURE
from looplane.cli.monitor_data import MonitorSource, SnapshotReader
from looplane.cli.monitor_keys import terminal_session
from looplane.cli.monitor_paging import Key, Pager
from looplane.cli.monitor_view import page_size_for, render_screen
from looplane.errors import LooplaneError
from looplane.factory import App

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from rich.console import Console

    from looplane.cli.monitor_data import Snapshot
    from looplane.config import LoadedSettings

__all__ = ["monitor", "run_monitor"]

logger = logging.getLogger(__name__)

MonitorAppOption = Annotated[
    list[str] | None,
    typer.Option(
        "-A",
        "--app",
        metavar="MODULE",
        help="Module to import first, such as one a custom backend needs; repeat for several. "
        "The monitor runs no task, so the config's app list is not imported.",
        show_default=False,
    ),
]
TracebackOption = Annotated[
    bool,
    typer.Option("-v", "--verbose", help="Show the full traceback if the monitor fails."),
]


def monitor(
    config_file: ConfigFileOption = None,
    app: MonitorAppOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
    verbose: TracebackOption = False,
) -> None:
    """Show the queue and every task's outcome, live, refreshed every second.

    Reads the same settings as the worker. Keys: → j Space next page, ← k previous, g
    first, G last, q quit. Off a terminal it prints one screen and exits.
    """
    flags = SourceFlags(config_file=config_file, storage=storage, db_path=db_path)
    loaded = load(flags)
    _check_storage(loaded)
    if app:
        # Only modules named on the command line: the monitor needs no task function, and
        # the config's app list may not import from where the monitor runs.
        import_apps(app, verbose=verbose)
    built = build_app(loaded)
    try:
        asyncio.run(_watch(built))
    except LooplaneError as exc:
        details = "".join(traceback.format_exception(exc)) if verbose else None
        fail([f"monitor failed: {type(exc).__name__}: {exc}"], code=EXIT_FAILURE, details=details)


def _check_storage(loaded: LoadedSettings) -> None:
    section = loaded.settings.storage
    backend = section.backend.strip().lower()
    if backend == "memory":
        origin = loaded.origins.get("storage.backend", "default")
        fail(
            [
                "storage.backend: a 'memory' store is only visible inside the process that "
                f"holds it, so no monitor can see a worker's queue (got 'memory', from "
                f"{origin}); point the monitor at the worker's LMDB store with --db-path, or "
                "run a worker and the monitor in one process as "
                "examples/example_monitor_demo.py does"
            ]
        )
    # Opening LMDB creates the directory, so a mistyped path would show an empty queue
    # forever instead of an error.
    if backend == "lmdb" and is_missing(section.path):
        origin = loaded.origins.get("storage.path", "default")
        fail(
            [
                f"storage.path: no LMDB store there yet (got '{section.path}', from {origin}); "
                "use the worker's --db-path, or start the worker first"
            ]
        )


async def _watch(app: App) -> None:
    """Run the monitor on this process's terminal until q or a stop signal; close the app."""
    async with app:
        console = stdout_console()
        keys: asyncio.Queue[Key] = asyncio.Queue()
        if not console.is_terminal:
            await print_once(app, console)
            return
        with _silenced_logging(), terminal_session(console, keys):
            await run_monitor(app, console, keys)


async def print_once(source: App | MonitorSource, console: Console) -> None:
    """Print one screen of the monitor (its first page) to `console`, for pipes and files."""
    reader = SnapshotReader(_source(source))
    snapshot = await reader.read()
    pager = Pager(page_size_for(console.height), len(snapshot.rows))
    console.print(render_screen(snapshot, pager, label=reader.source.label))


async def run_monitor(
    source: App | MonitorSource,
    console: Console,
    keys: asyncio.Queue[Key],
    *,
    refresh_s: float = 1.0,
) -> None:
    """Show the live monitor on `console` until `Key.QUIT` arrives on `keys`.

    A snapshot of `source` is read every `refresh_s` seconds; each key is acted on at once
    and the screen redrawn. The screen is fitted to ``console.size`` at every redraw, so a
    caller that resizes the console (and puts `Key.RESIZE`) gets a new layout at once. On a
    terminal the view takes the alternate screen and gives it back on return.

    Cancelling it stops the refreshes and restores the screen, then re-raises.

    Note:
        Each refresh lists the newest 2000 stored tasks and reads the newest 5000 results.
        Beyond them, waiting tasks are counted in the header but not listed, and the
        succeeded and failed counts are lower bounds, shown as ``5000+``.

    Raises:
        StorageError: A backend failed to answer (`StorageUnavailable` once closed).
    """
    reader = SnapshotReader(_source(source))
    pager = Pager()
    live = Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False)
    refresher = _Refresher(reader, refresh_s)
    async with refresher.running():
        with live:
            await _screen_loop(live, console, keys, pager, refresher)


async def _screen_loop(
    live: Live, console: Console, keys: asyncio.Queue[Key], pager: Pager, refresher: _Refresher
) -> None:
    """Redraw on every key and every snapshot; return on `Key.QUIT`."""
    key_wait: asyncio.Task[Key] | None = None
    try:
        while True:
            _draw(live, console, pager, refresher.latest, refresher.reader.source.label)
            if key_wait is None:
                key_wait = asyncio.ensure_future(keys.get())
            await refresher.wait_for_change(key_wait)
            if key_wait.done():
                key, key_wait = key_wait.result(), None
                if key is Key.QUIT:
                    return
                pager.apply(key)
    finally:
        if key_wait is not None:
            key_wait.cancel()


def _draw(
    live: Live, console: Console, pager: Pager, snapshot: Snapshot | None, label: str
) -> None:
    pager.resize(page_size_for(console.height))
    pager.set_total(0 if snapshot is None else len(snapshot.rows))
    live.update(render_screen(snapshot, pager, label=label), refresh=True)


def _source(source: App | MonitorSource) -> MonitorSource:
    return MonitorSource.of(source) if isinstance(source, App) else source


class _Refresher:
    """Reads a snapshot every `refresh_s` seconds in a task of its own."""

    def __init__(self, reader: SnapshotReader, refresh_s: float) -> None:
        self.reader = reader
        self.refresh_s = refresh_s
        self.latest: Snapshot | None = None
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Refresh inside the block; leaving it stops the refreshes and waits for that."""
        task = asyncio.ensure_future(self._run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        try:
            while True:
                self.latest = await self.reader.read()
                self._changed.set()
                await asyncio.sleep(self.refresh_s)
        except Exception as exc:  # noqa: BLE001 - handed to the screen loop, which raises it
            self._failure = exc
            self._changed.set()

    async def wait_for_change(self, key_wait: asyncio.Task[Key]) -> None:
        """Return when a key arrived or a new snapshot is ready.

        Raises:
            LooplaneError: The last read failed.
        """
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({key_wait, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        self._changed.clear()
        if self._failure is not None:
            raise self._failure


@contextlib.contextmanager
def _silenced_logging() -> Iterator[None]:
    """Keep log lines off the screen while the monitor owns it.

    A record written to stderr would land in the middle of the table. The monitor logs
    nothing above DEBUG itself; what the backends might log is dropped, not shown.
    """
    root = logging.getLogger()
    handler = logging.NullHandler()
    saved = root.handlers[:]
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved
