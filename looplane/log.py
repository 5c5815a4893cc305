"""The task log adapter and the standard log field names.

Every line about one task starts ``task <id> <name> <attempt>/<max>:`` and carries the same
fields in ``extra``, so log tools can filter by task without parsing text.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from looplane.task import Task

__all__ = ["TaskLogAdapter", "log_task_line", "one_line", "printable", "task_log"]

# Longest text `one_line` keeps: a log line stays readable; the result keeps the whole text.
_ONE_LINE_MAX = 2000


class TaskLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with the task and adds its fields to every record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """Add the task prefix and fields; fields passed in ``extra`` win."""
        fields = dict(self.extra or {})
        fields.update(kwargs.get("extra") or {})
        kwargs["extra"] = fields
        prefix = (
            f"task {fields['task_id']} {fields['task_name']} "
            f"{fields['attempt']}/{fields['max_attempts']}: "
        )
        return prefix + str(msg), kwargs


def task_log(logger: logging.Logger, task: Task, **fields: Any) -> TaskLogAdapter:
    """A logger for lines about `task`; `fields` (such as ``consumer_id``) join its extra."""
    return TaskLogAdapter(logger, _task_fields(task, fields))


def _task_fields(task: Task, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "task_name": task.name,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "queue": task.queue,
        **fields,
    }


def log_task_line(
    logger: logging.Logger, level: int, task: Task, msg: str, *args: Any, **fields: Any
) -> None:
    """Log one line about `task`, as `task_log` would, at a fraction of the cost.

    For the line every attempt logs: it builds the record directly, skipping the adapter
    and the caller lookup (a walk up the stack), which together cost more than a no-op
    task. The record names this module's caller by function only; its line number is 0.
    """
    if not logger.isEnabledFor(level):
        return
    extra = _task_fields(task, fields)
    prefix = f"task {task.id} {task.name} {task.attempt}/{task.max_attempts}: "
    caller = sys._getframe(1).f_code
    record = logger.makeRecord(
        logger.name, level, caller.co_filename, 0, prefix + msg, args, None, caller.co_name, extra
    )
    logger.handle(record)


def one_line(text: str, limit: int = _ONE_LINE_MAX) -> str:
    """`text` fit for one log line: control characters escaped, cut to `limit` characters.

    For text that task code wrote (an exception's message), so that each attempt's line
    stays one line for grep and log shippers, and no escape sequence reaches a terminal,
    whatever the message holds.
    """
    if not text.isprintable():
        text = text.translate(_ESCAPES)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters)"
    return text


def printable(text: str) -> str:
    """`text` with its control characters escaped except line breaks, for a terminal."""
    return text if text.isprintable() else text.translate(_ESCAPES_BUT_NEWLINE)


# C0 and C1 controls, DEL and the Unicode line and paragraph separators, written as Python
# writes them in a string literal.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_ESCAPES_BUT_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != 0x0A}
