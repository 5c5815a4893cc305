"""The typer app of the ``looplane`` command, with every subcommand registered on it.

It lives apart from the package's ``__init__`` so that the entry point can import without
typer and rich, and say which extra to install when they are missing.
"""

from __future__ import annotations

from typing import Annotated

import typer

import looplane
from looplane.cli.admin import purge, requeue
from looplane.cli.config_cmd import config_app
from looplane.cli.enqueue import enqueue
from looplane.cli.inspect_cmd import inspect_app
from looplane.cli.monitor import monitor
from looplane.cli.supervisor import claim_process
from looplane.cli.worker import worker

__all__ = ["app", "run"]

app = typer.Typer(
    name="looplane",
    help="Looplane: an async-first, local-first task queue.",
    no_args_is_help=True,
    # Local variables in a traceback could hold a password from a URL setting.
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
app.command("worker", no_args_is_help=False)(worker)
app.command("enqueue")(enqueue)
app.command("monitor")(monitor)
app.add_typer(config_app, name="config")
app.add_typer(inspect_app, name="inspect")
app.command("requeue")(requeue)
app.command("purge")(purge)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"looplane {looplane.__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Looplane: an async-first, local-first task queue."""


def run() -> None:
    """Run the ``looplane`` command on this process's arguments."""
    claim_process()
    app(prog_name="looplane")
