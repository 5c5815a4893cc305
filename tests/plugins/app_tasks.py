"""An app module for `from_config` tests: registers task functions when imported."""

from __future__ import annotations

from looplane import register_task


@register_task(name="factory_app.double")
async def double(n: int) -> int:
    """Return twice `n`."""
    return 2 * n


@register_task(name="factory_app.shout")
def shout(word: str) -> str:
    """Return `word` in capitals (a plain function: it runs in the thread pool)."""
    return word.upper()
