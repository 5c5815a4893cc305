"""``looplane worker``: run tasks until SIGINT or SIGTERM.

Startup fails fast, before the banner: settings, then the app modules, then the backends. A
worker that started without its task functions would only fail later, one task at a time
(https://github.com/celery/celery/issues/3986). Both SIGINT and SIGTERM stop gracefully,
because many platforms only ever send SIGTERM (https://github.com/coleifer/huey/issues/856);
the second one stops at once, and both ways return unfinished tasks to the queue.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import traceback
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING

from looplane.cli._common import (
    AppOption,
    ConcurrencyOption,
    ConfigFileOption,
    DbPathOption,
    SourceFlags,
    StorageOption,
    VerboseOption,
    fail,
    import_apps,
    load,
    warn,
)
from looplane.cli._output import configured_logging, stdout_console
from looplane.cli.banner import READY_LINE, print_banner
from looplane.cli.exit_codes import EXIT_FAILURE
from looplane.errors import ConfigError, LooplaneError
from looplane.factory import App, build
from looplane.task import registry

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from looplane.config import LoadedSettings

__all__ = ["worker"]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def worker(
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    concurrency: ConcurrencyOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run task functions from the queue until SIGINT or SIGTERM.

    The first signal stops leasing and lets running tasks finish within
    worker.shutdown_grace; the second stops at once. Unfinished tasks go back to the queue.
    """
    flags = SourceFlags(config_file, app, concurrency, storage, db_path)
    with configured_logging(logging.DEBUG if verbose else logging.INFO):
        loaded = load(flags)
        modules = import_apps(loaded.settings.app, verbose=verbose)
        built = _build(loaded)
        if not len(registry):
            warn(
                "no task functions are registered: this worker will set aside every task it "
                "receives (name the modules that register them with -A MODULE or `app`)"
            )
        try:
            asyncio.run(_serve(built, loaded, modules))
        except LooplaneError as exc:
            details = "".join(traceback.format_exception(exc)) if verbose else None
            fail(
                [f"worker failed: {type(exc).__name__}: {exc}"], code=EXIT_FAILURE, details=details
            )


def _build(loaded: LoadedSettings) -> App:
    try:
        return build(loaded.settings, origins=loaded.origins)
    except ConfigError as exc:
        fail(exc.problems)


async def _serve(app: App, loaded: LoadedSettings, modules: Mapping[str, Sequence[str]]) -> None:
    """Print the banner, then run the orchestrator until a stop signal; close the app."""
    stopper = _Stopper(grace_s=app.settings.worker.shutdown_grace)
    with stopper.installed(asyncio.get_running_loop()):
        async with app:
            # Fail before the banner, not forever after "ready", when the storage cannot be
            # reached at all (a wrong host, port or password). One listed task is the
            # cheapest read every backend has; counting could scan a long queue.
            await app.storage.tasks(limit=1, queue=app.settings.storage.queue)
            console = stdout_console()
            print_banner(
                console,
                app,
                started_at=datetime.now().astimezone(),
                config_file=loaded.config_file,
                app_modules=modules,
            )
            console.print(READY_LINE, style="bold green")
            console.file.flush()
            await app.run_worker(stopper.stop, stopper.force)


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
            for signum in STOP_SIGNALS:
                with suppress(NotImplementedError):
                    loop.remove_signal_handler(signum)
