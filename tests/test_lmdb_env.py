"""The shared LMDB environment: group commit and failure isolation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from looplane._lmdb_env import LMDBEnv, Txn

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


async def test_env_failing_write_rolls_back_alone(tmp_path: Path) -> None:
    env = LMDBEnv.acquire(tmp_path / "db")
    meta = env.dbs["meta"]

    def good(n: int) -> Callable[[Txn], object]:
        def op(txn: Txn) -> object:
            txn.put(f"good-{n}".encode(), b"1", db=meta)
            return n

        return op

    def bad(txn: Txn) -> object:
        txn.put(b"bad", b"1", db=meta)
        raise ValueError("refused")

    writes = [env.write(good(1)), env.write(bad), env.write(good(2))]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    assert outcomes[0] == 1
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] == 2
    stored = env.read_sync(
        lambda txn: [txn.get(k, db=meta) for k in (b"good-1", b"bad", b"good-2")]
    )
    assert stored == [b"1", None, b"1"]
    env.release()


async def test_env_write_after_last_release_is_refused(tmp_path: Path) -> None:
    env = LMDBEnv.acquire(tmp_path / "db")
    env.release()
    with pytest.raises(Exception, match="closed"):
        await env.write(lambda txn: None)
