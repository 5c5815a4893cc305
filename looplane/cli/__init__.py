"""The ``looplane`` command and its subcommands.

``worker``, ``enqueue``, ``monitor``, ``inspect``, ``requeue``, ``purge`` and ``config show``.

typer and rich are imported only in this package; the library itself speaks through logs and
return values. Each command parses its options, loads the settings, calls the library and
renders the outcome; exit statuses are named in `looplane.cli.exit_codes`.
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

__all__ = ["app", "main"]

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


def main() -> None:
    """Run the ``looplane`` command (the console script's entry point)."""
    claim_process()
    app(prog_name="looplane")
