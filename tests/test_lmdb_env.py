"""The shared LMDB environment: group commit and failure isolation."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import pytest

from looplane._lmdb_env import LMDBEnv, Txn
from looplane.errors import ConfigError, StorageFull

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


async def test_env_map_grows_up_to_its_cap_then_refuses_with_storage_full(tmp_path: Path) -> None:
    env = LMDBEnv.acquire(tmp_path / "db", map_size=64 * 1024, max_map_size=256 * 1024)
    meta = env.dbs["meta"]

    def put(n: int) -> Callable[[Txn], object]:
        return lambda txn: txn.put(f"k{n}".encode(), bytes(8000), db=meta)

    try:

        async def fill() -> None:
            for n in range(100):
                await env.write(put(n))

        with pytest.raises(StorageFull) as caught:
            await fill()

        assert env.env.info()["map_size"] == 256 * 1024
        assert caught.value.path == env.path
        assert caught.value.max_map_size == 256 * 1024
        assert caught.value.backend == "lmdb"
        assert re.search(
            r"is full: .*map_size=262144 max_map_size=262144\. Drain", str(caught.value)
        )
        assert "raise storage.max_map_size" in str(caught.value)
    finally:
        env.release()


async def test_env_send_over_the_limit_rolls_back_alone_in_its_group(tmp_path: Path) -> None:
    """A refused send in a group commit stores nothing; the others in the group commit."""
    env = LMDBEnv.acquire(tmp_path / "db", map_size=64 * 1024, max_map_size=256 * 1024)
    meta = env.dbs["meta"]

    def send(key: bytes, size: int) -> Callable[[Txn], object]:
        def op(txn: Txn) -> object:
            txn.put(key, bytes(size), db=meta)
            env.check_send_room(txn)
            return key

        return op

    try:
        writes = [
            env.write(send(b"small", 100), send=True),
            env.write(send(b"huge", 250_000), send=True),
            env.write(lambda txn: txn.put(b"ack", b"1", db=meta)),
        ]
        outcomes = await asyncio.gather(*writes, return_exceptions=True)

        assert outcomes[0] == b"small"
        assert isinstance(outcomes[1], StorageFull)
        assert outcomes[2] is True
        keys = (b"small", b"huge", b"ack")
        stored = env.read_sync(lambda txn: [txn.get(k, db=meta) for k in keys])
        assert stored == [bytes(100), None, b"1"]
    finally:
        env.release()


def test_public_names_are_sorted_and_export_every_error() -> None:
    import looplane
    from looplane import errors

    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and not name.startswith("_")
    }
    assert looplane.__all__ == sorted(looplane.__all__)
    assert "StorageFull" in looplane.__all__
    assert classes <= set(looplane.__all__)


async def test_env_is_durable_by_default(tmp_path: Path) -> None:
    env = LMDBEnv.acquire(tmp_path / "db")
    try:
        flags = env.env.flags()
        assert env.sync is True
        assert (flags["sync"], flags["metasync"]) == (True, True)
    finally:
        env.release()


async def test_env_relaxed_sync_defers_only_the_metadata_flush(tmp_path: Path) -> None:
    env = LMDBEnv.acquire(tmp_path / "db", sync=False)
    try:
        flags = env.env.flags()
        assert env.sync is False
        assert (flags["sync"], flags["metasync"]) == (True, False)
        assert await env.write(lambda txn: txn.put(b"k", b"v", db=env.dbs["meta"])) is True
    finally:
        env.release()


@pytest.mark.parametrize(
    "first", [pytest.param(True, id="durable"), pytest.param(False, id="relaxed")]
)
async def test_env_acquire_with_the_other_sync_is_refused(tmp_path: Path, first: bool) -> None:
    env = LMDBEnv.acquire(tmp_path / "db", sync=first)
    try:
        with pytest.raises(ConfigError, match=rf"open in this process with sync={first}; "):
            LMDBEnv.acquire(tmp_path / "db", sync=not first)
        assert env.refs == 1
        again = LMDBEnv.acquire(tmp_path / "db", sync=first)
        assert again is env
        again.release()
    finally:
        env.release()
    assert env.closed
