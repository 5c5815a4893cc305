"""``looplane worker``: run tasks until SIGINT or SIGTERM.

Startup fails fast, before the banner: settings, then the app modules, then the backends. A
worker that started without its task functions would only fail later, one task at a time
(https://github.com/celery/celery/issues/3986). Both SIGINT and SIGTERM stop gracefully,
because many platforms only ever send SIGTERM (https://github.com/coleifer/huey/issues/856);
the second one stops at once, and both ways return unfinished tasks to the queue.

With ``--processes N`` above 1, this process validates everything and prints the banner, then
supervises N worker processes (`looplane.cli.supervisor`); each of them runs this same command
with the hidden ``--supervisor-pid`` flag, which skips the banner and the supervisor.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from looplane.cli._common import (
    AppOption,
    ConcurrencyOption,
    ConfigFileOption,
    DbPathOption,
    ProcessesOption,
    SourceFlags,
    StorageOption,
    VerboseOption,
    build_app,
    fail,
    import_apps,
    load,
    warn,
)
from looplane.cli._output import configured_logging, stdout_console
from looplane.cli.banner import READY_LINE, print_banner
from looplane.cli.exit_codes import EXIT_FAILURE
from looplane.cli.supervisor import (
    CHILD_READY_LINE,
    PARENT_POLL_S,
    STOP_SIGNALS,
    Supervisor,
    ignore_late_signals,
    signals_restored,
)
from looplane.errors import LooplaneError
from looplane.task import registry

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator, Mapping, Sequence

    from looplane.config import LoadedSettings
    from looplane.factory import App

__all__ = ["worker"]

logger = logging.getLogger(__name__)

SupervisorPidOption = Annotated[
    int | None,
    typer.Option(
        "--supervisor-pid",
        hidden=True,
        help="Run as one worker process of the supervisor with this pid.",
    ),
]


def worker(
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    concurrency: ConcurrencyOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
    processes: ProcessesOption = None,
    verbose: VerboseOption = False,
    supervisor_pid: SupervisorPidOption = None,
) -> None:
    """Run task functions from the queue until SIGINT or SIGTERM.

    The first signal stops leasing and lets running tasks finish within
    worker.shutdown_grace; the second stops at once. Unfinished tasks go back to the queue.
    With --processes N, one supervisor runs N worker processes and passes both signals on.
    """
    flags = SourceFlags(config_file, app, concurrency, storage, db_path, processes)
    child = supervisor_pid is not None
    with signals_restored(), configured_logging(logging.DEBUG if verbose else logging.INFO):
        loaded = load(flags)
        modules = import_apps(loaded.settings.app, verbose=verbose, warn_empty=not child)
        built = build_app(loaded)
        if not len(registry) and not child:
            warn(
                "no task functions are registered: this worker will set aside every task it "
                "receives (name the modules that register them with -A MODULE or `app`)"
            )
        if supervisor_pid is None and loaded.settings.worker.processes > 1:
            if built.settings.storage.backend == "memory":
                warn(
                    "storage 'memory' lives inside each worker process: they share no tasks, "
                    "and no other process can send them any"
                )
            _run(_supervise(built, loaded, modules, flags.argv(verbose=verbose)), verbose)
        else:
            # What start-up made (pydantic models, drivers, the app's modules) lives as long
            # as the process: frozen, the collector stops walking it on every full collection.
            gc.freeze()
            _run(_serve(built, loaded, modules, supervisor_pid=supervisor_pid), verbose)


def _run(main: Coroutine[None, None, None], verbose: bool) -> None:
    try:
        asyncio.run(main)
    except LooplaneError as exc:
        details = "".join(traceback.format_exception(exc)) if verbose else None
        fail([f"worker failed: {type(exc).__name__}: {exc}"], code=EXIT_FAILURE, details=details)


async def _serve(
    app: App,
    loaded: LoadedSettings,
    modules: Mapping[str, Sequence[str]],
    *,
    supervisor_pid: int | None,
) -> None:
    """Print the banner, then run the orchestrator until a stop signal; close the app.

    A worker process of a supervisor prints no banner: it tells the supervisor that it is
    ready, and stops gracefully once the supervisor is gone.
    """
    stopper = _Stopper(grace_s=app.settings.worker.shutdown_grace)
    with stopper.installed(asyncio.get_running_loop()):
        async with app:
            await _check_reachable(app)
            watch: asyncio.Task[None] | None = None
            if supervisor_pid is None:
                _print_banner(app, loaded, modules)
                _print_ready()
            else:
                print(CHILD_READY_LINE, flush=True)  # noqa: T201 - a line for the supervisor
                watch = asyncio.create_task(_watch_parent(supervisor_pid, stopper))
            try:
                await app.run_worker(stopper.stop, stopper.force)
            finally:
                if watch is not None:
                    watch.cancel()


async def _supervise(
    app: App, loaded: LoadedSettings, modules: Mapping[str, Sequence[str]], argv: Sequence[str]
) -> None:
    """Check the storage and print the banner, then run the worker processes until stopped."""
    command = [sys.executable, "-m", "looplane.cli", "worker", *argv]
    supervisor = Supervisor(command, processes=app.settings.worker.processes, on_ready=_print_ready)
    with supervisor.signals_installed(asyncio.get_running_loop()):
        async with app:
            await _check_reachable(app)
            _print_banner(app, loaded, modules)
        # Each worker process opens the storage itself; this one holds no handle meanwhile.
        outcome = await supervisor.run()
    if outcome.message is not None:
        fail([outcome.message], code=outcome.code)


async def _check_reachable(app: App) -> None:
    # Fail before the banner, not forever after "ready", when the storage cannot be
    # reached at all (a wrong host, port or password). One listed task is the
    # cheapest read every backend has; counting could scan a long queue.
    await app.storage.tasks(limit=1, queue=app.settings.storage.queue)


def _print_banner(app: App, loaded: LoadedSettings, modules: Mapping[str, Sequence[str]]) -> None:
    print_banner(
        stdout_console(),
        app,
        started_at=datetime.now().astimezone(),
        config_file=loaded.config_file,
        app_modules=modules,
    )


def _print_ready() -> None:
    console = stdout_console()
    console.print(READY_LINE, style="bold green")
    console.file.flush()


async def _watch_parent(supervisor_pid: int, stopper: _Stopper) -> None:
    """Stop gracefully once the supervisor is gone: this process's parent pid changes."""
    # No event tells a process that its parent died (PR_SET_PDEATHSIG is Linux-only and
    # tracks the parent thread, not the process), so poll: once a second costs nothing.
    while os.getppid() == supervisor_pid:  # noqa: ASYNC110 - no event exists to wait on
        await asyncio.sleep(PARENT_POLL_S)
    logger.warning("supervisor is gone, stopping gracefully supervisor_pid=%d", supervisor_pid)
    stopper.stop.set()


class _Stopper:
    """Turns the first SIGINT or SIGTERM into `stop` and the next one into `force`."""

    def __init__(self, *, grace_s: float) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.grace_s = grace_s

    def __call__(self, signum: signal.Signals) -> None:
        """Handle one stop signal."""
        if not self.stop.is_set():
            logger.info(
                "stopping gracefully: no new tasks, running ones may finish; send the signal "
                "again to stop at once signal=%s grace_s=%.1f",
                signum.name,
                self.grace_s,
            )
            self.stop.set()
        elif not self.force.is_set():
            logger.warning(
                "stopping at once: running tasks go back to the queue signal=%s", signum.name
            )
            self.force.set()
        else:
            logger.warning("already stopping at once signal=%s", signum.name)

    def _from_thread(  # pragma: no cover - Windows loops lack signal handlers
        self, loop: asyncio.AbstractEventLoop, signum: int, _frame: object
    ) -> None:
        loop.call_soon_threadsafe(self, signal.Signals(signum))

    @contextmanager
    def installed(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """Handle `STOP_SIGNALS` on `loop` inside the block."""
        for signum in STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, self, signum)
            except NotImplementedError:  # pragma: no cover - Windows loops lack signal handlers
                signal.signal(signum, functools.partial(self._from_thread, loop))
        try:
            yield
        finally:
            ignore_late_signals(loop)
