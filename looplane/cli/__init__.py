"""The ``looplane`` command and its subcommands.

``worker``, ``enqueue``, ``monitor``, ``inspect``, ``requeue``, ``purge`` and ``config show``.

typer and rich are imported only in this package; the library itself speaks through logs and
return values. Each command parses its options, loads the settings, calls the library and
renders the outcome; exit statuses are named in `looplane.cli.exit_codes`.

This module itself imports neither: they come with the ``cli`` extra, and the console script
installed without it must say so in one line rather than end in a traceback. The typer app
is `looplane.cli._app.app`, also reachable here as ``app``, imported on first use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from looplane.cli.exit_codes import EXIT_CONFIG

if TYPE_CHECKING:
    from looplane.cli._app import app

__all__ = ["app", "main"]

# The top-level modules of the packages the cli extra installs (pyproject.toml).
_CLI_EXTRA_MODULES = frozenset({"typer", "rich", "tomli_w"})


def main() -> None:
    """Run the ``looplane`` command (the console script's entry point).

    Without the ``cli`` extra, prints one line naming the missing package and the extra to
    install, and exits with `EXIT_CONFIG`.
    """
    # Imported here, not at the top: this is the import that fails without the extra.
    try:
        from looplane.cli._app import run
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in _CLI_EXTRA_MODULES:
            raise
        sys.stderr.write(
            f"error: the looplane command needs the cli extra ({top} is not installed): "
            "pip install 'looplane[cli]'\n"
        )
        raise SystemExit(EXIT_CONFIG) from None
    run()


def __getattr__(name: str) -> object:
    """Import the typer app on first use of ``looplane.cli.app``."""
    if name == "app":
        from looplane.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
