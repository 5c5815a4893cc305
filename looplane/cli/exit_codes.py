"""The exit statuses of the ``looplane`` command, one name per meaning.

Scripts and process supervisors branch on these, so each value keeps its meaning across
releases. Usage errors that typer reports itself (an unknown option, a value that is not a
number) exit with `EXIT_CONFIG` too, as Click does.
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_TIMEOUT"]

EXIT_OK = 0
"""The command did its job; a worker stopped by SIGINT or SIGTERM also exits 0, with one
process or several."""

EXIT_FAILURE = 1
"""The command ran but its work failed: a task waited for with ``--wait`` failed, the
storage could not be reached, the worker processes of ``worker --processes N`` kept
crashing, or the task id given to ``inspect result`` or ``requeue`` was not found there."""

EXIT_CONFIG = 2
"""Nothing ran: a flag, the config file, an environment variable, a JSON argument, an app
module or a task id is wrong (also when it only fails in a worker process of ``--processes
N``), the app modules do not register the task to send, the storage cannot be opened, or the
``cli`` extra is missing. The message names the problem; no traceback is shown."""

EXIT_TIMEOUT = 124
"""``enqueue --wait`` gave up before the task's final result arrived (the task stays queued).
The value is the one ``timeout(1)`` uses."""
