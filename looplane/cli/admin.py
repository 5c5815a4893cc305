"""``looplane requeue`` and ``looplane purge``: put dead-lettered tasks back, or clear the queue.

Both act on the storage a worker started with the same flags would use, and refuse a memory
store, which no other process can see. A task whose retries ran out is dead-lettered too,
with a reason that starts "failed on attempt", so ``--failed`` picks those out of the dead
letters and leaves the ones set aside for other reasons (an unknown task function, a payload
that cannot be decoded, a worker lost on the last attempt).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from looplane.cli._common import (
    ConfigFileOption,
    DbPathOption,
    StorageOption,
    fail,
    parse_task_id,
)
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE
from looplane.cli.inspect_cmd import AppOption, open_stores, run
from looplane.storage.base import TaskState

if TYPE_CHECKING:
    from looplane.cli.inspect_cmd import Stores

__all__ = ["FAILED_PREFIX", "purge", "requeue"]

FAILED_PREFIX = "failed on attempt"
"""How the reason of a task dead-lettered because its last attempt failed begins."""

# Requeues are submitted this many at a time, so the LMDB writer commits them in a few
# transactions instead of one per task.
_REQUEUE_BATCH = 256
_LIST_PAGE = 1000


def _plural(count: int) -> str:
    return f"{count} task" if count == 1 else f"{count} tasks"


async def _dead_ids(stores: Stores, *, failed_only: bool) -> list[str]:
    """The ids of every dead-lettered task of the queue (only failed ones if asked)."""
    found: list[str] = []
    offset = 0
    while True:
        infos = await stores.storage.tasks(
            states=[TaskState.DEAD], limit=_LIST_PAGE, offset=offset, queue=stores.queue
        )
        found.extend(
            info.task_id
            for info in infos
            if not failed_only or (info.reason or "").startswith(FAILED_PREFIX)
        )
        if len(infos) < _LIST_PAGE:
            return found
        offset += _LIST_PAGE


async def _requeue_all(stores: Stores, *, failed_only: bool) -> int:
    # Collect first, then requeue: requeued tasks leave the dead state, which would shift
    # the pages of a listing that is still under way.
    ids = await _dead_ids(stores, failed_only=failed_only)
    requeued = 0
    for start in range(0, len(ids), _REQUEUE_BATCH):
        batch = ids[start : start + _REQUEUE_BATCH]
        done = await asyncio.gather(*(stores.storage.requeue_dead(i) for i in batch))
        requeued += sum(done)
    return requeued


def requeue(
    task_id: Annotated[
        str | None,
        typer.Argument(
            metavar="TASK_ID", help="The dead-lettered task to put back.", show_default=False
        ),
    ] = None,
    every_dead: Annotated[
        bool, typer.Option("--dead", help="Put back every dead-lettered task of the queue.")
    ] = False,
    failed: Annotated[
        bool,
        typer.Option(
            "--failed",
            help="Put back the dead-lettered tasks whose last attempt failed (retries ran out).",
        ),
    ] = False,
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
) -> None:
    """Put dead-lettered tasks back in the queue with their attempts again; print how many.

    Give one TASK_ID, or --dead for all of them, or --failed for those whose retries ran
    out. A TASK_ID that is not dead-lettered (or unknown) exits 1, as `inspect result` does
    for a task without results; one that is not a UUID exits 2.
    """
    chosen = sum([task_id is not None, every_dead, failed])
    if chosen != 1:
        fail(["give exactly one of TASK_ID, --dead or --failed"], code=EXIT_CONFIG)
    wanted = None if task_id is None else parse_task_id(task_id)
    stores = open_stores(
        "requeue", config_file=config_file, app=app, storage=storage, db_path=db_path
    )
    if wanted is None:
        count = run(stores, lambda s: _requeue_all(s, failed_only=failed))
        typer.echo(f"requeued {_plural(count)}")
        return
    if not run(stores, lambda s: s.storage.requeue_dead(wanted)):
        fail(
            [
                f"no dead-lettered task {wanted}: unknown, or not dead-lettered (waiting, "
                "running or finished); nothing requeued"
            ],
            code=EXIT_FAILURE,
        )
    typer.echo("requeued 1 task")


def purge(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dead: Annotated[
        bool,
        typer.Option(
            "--dead",
            help="Remove the dead-lettered tasks (of every queue) instead of the waiting ones.",
        ),
    ] = False,
    config_file: ConfigFileOption = None,
    app: AppOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
) -> None:
    """Remove every waiting (ready and delayed) task from the queue; print how many.

    Tasks that are running stay, so no worker loses one mid-run, and so do dead-lettered
    ones unless --dead is given. Asks first unless --yes is given; declining exits 1.
    """
    stores = open_stores(
        "purge", config_file=config_file, app=app, storage=storage, db_path=db_path
    )
    removed = run(stores, lambda s: _purge(s, dead=dead, ask=not yes))
    if removed is None:
        fail(["purge cancelled; nothing was removed"], code=EXIT_FAILURE)
    typer.echo(f"removed {_plural(removed)} ({_what(dead=dead)})")


def _what(*, dead: bool) -> str:
    return "dead-lettered" if dead else "ready and delayed"


async def _purge(stores: Stores, *, dead: bool, ask: bool) -> int | None:
    """Remove the tasks, after asking if `ask`; None if the answer was no."""
    if ask:
        pending = await _pending(stores, dead=dead)
        question = f"Remove {pending} {_what(dead=dead)} tasks from {stores.where()}?"
        # The prompt blocks on the terminal, so it waits in a thread, off the event loop.
        if not await asyncio.to_thread(_confirmed, question):
            return None
    if dead:
        return await stores.storage.purge_dead()
    return await stores.storage.purge(queue=stores.queue)


async def _pending(stores: Stores, *, dead: bool) -> int:
    counts = await stores.storage.counts(queue=stores.queue)
    return counts.dead if dead else counts.ready + counts.delayed


def _confirmed(question: str) -> bool:
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:
        # End of input (a script piping nothing) counts as "no".
        return False
