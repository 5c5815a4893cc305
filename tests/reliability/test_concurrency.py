"""Concurrency suite: 4 worker processes x concurrency 20 insert keys into one SQLite table.

Each task inserts its key under a UNIQUE constraint; a duplicate is recorded in a second
table rather than retried, so the test sees it. After the drain every key is there once.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

import pytest

import looplane
from tests.conftest import REDIS_MARKS
from tests.reliability._cluster import Cluster, drop_queue, publish
from tests.reliability.tasks import SQLITE_ENV, create_table
from tests.reliability.test_crash import _setup

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow]

BACKENDS = [pytest.param("lmdb", id="lmdb"), pytest.param("redis", id="redis", marks=REDIS_MARKS)]


async def _run(kind: str, tmp_path: Path, *, tasks: int) -> None:
    args, env, overrides = _setup(kind, tmp_path)
    db_path = tmp_path / "keys.sqlite"
    create_table(db_path)
    env = {**env, SQLITE_ENV: str(db_path), "LOOPLANE_STORAGE__LEASE": "30s"}
    cluster = Cluster(args, env, tmp_path, concurrency=20)
    started = time.monotonic()
    try:
        async with looplane.from_config(**overrides) as app:
            for _ in range(4):
                cluster.spawn()
            sent = await app.producer.send_batch([("rel.insert", (k,), {}) for k in range(tasks)])
            for task in sent:
                final = await app.result_backend.wait(task.id, timeout=180.0)
                assert final.success, f"{task.id}: {final.error}"
    finally:
        cluster.close()
        if kind == "redis":
            await drop_queue(overrides["storage__queue"])
    db = sqlite3.connect(db_path)
    try:
        keys = {k for (k,) in db.execute("SELECT key FROM rows")}
        dupes = db.execute("SELECT key, pid FROM dupes").fetchall()
    finally:
        db.close()
    assert dupes == [], f"keys inserted twice: {dupes[:20]}"
    missing = sorted(set(range(tasks)) - keys)
    assert missing == [], f"{len(missing)} keys missing: {missing[:20]}"
    report: dict[str, float] = {"tasks": tasks, "workers": 4, "concurrency": 20}
    report["rows"] = len(keys)
    report |= {"duplicates": len(dupes), "missing": len(missing)}
    report["wall_s"] = round(time.monotonic() - started, 1)
    publish(f"concurrency-{kind}-{tasks}", report)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", BACKENDS)
async def test_each_key_inserted_once(kind: str, tmp_path: Path) -> None:
    """1,000 tasks over 4 processes x 20: no duplicate key, no missing key.

    The issue's 5,000 take about 35 s on LMDB on a loaded 2-core machine, over the CI
    budget; `test_each_of_5000_keys_inserted_once` runs them with LOOPLANE_LONG=1.
    """
    await _run(kind, tmp_path, tasks=1_000)


@pytest.mark.long
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", BACKENDS)
async def test_each_of_5000_keys_inserted_once(kind: str, tmp_path: Path) -> None:
    """The issue's 5,000 tasks over 4 processes x 20."""
    await _run(kind, tmp_path, tasks=5_000)
