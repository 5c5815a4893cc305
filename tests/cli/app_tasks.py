"""Task functions for the CLI tests; worker processes import this module with ``-A``."""

from __future__ import annotations

import asyncio
from typing import Any

from looplane import register_task

MODULE = __name__


@register_task(name="cli_tests.add")
async def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


@register_task(name="cli_tests.echo")
def echo(value: Any) -> Any:
    """Return the single argument unchanged (a plain function, run in a thread)."""
    return value


@register_task(name="cli_tests.fail")
async def fail(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


@register_task(name="cli_tests.sleep")
async def sleep(seconds: float) -> float:
    """Sleep without blocking the loop, then return `seconds`."""
    await asyncio.sleep(seconds)
    return seconds


@register_task(name="cli_tests.encode")
def encode(text: str) -> bytes:
    """Return `text` as UTF-8 bytes, a result JSON cannot show."""
    return text.encode()
