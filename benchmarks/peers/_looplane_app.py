"""Task functions of Looplane's benchmark workers (``looplane worker -A peers._looplane_app``)."""

from __future__ import annotations

from looplane import register_task
from peers._support import stamp as _stamp


@register_task(name="bench.noop")
async def noop() -> int:
    """Do nothing; return a value so that every system stores a result."""
    return 1


@register_task(name="bench.stamp")
async def stamp(sent_at: float, path: str) -> int:
    """Append the pickup latency of this task to `path` (the pickup workload)."""
    return _stamp(sent_at, path)
