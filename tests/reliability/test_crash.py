"""Crash suite: SIGKILL workers at random moments while tasks flow, restart them, check.

After the run every task has a final result (a success, or a failure after its retries),
none is lost, and an attempt runs twice only when the process running it was killed.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

import looplane
from tests.conftest import REDIS_MARKS, REDIS_URL
from tests.reliability._cluster import Cluster, check_delivery, drop_queue, publish, read_lines

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow]

WAIT_LINE_S = 10.0


def _setup(kind: str, tmp_path: Path) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """Worker CLI arguments, worker environment and `from_config` overrides for `kind`."""
    env = {
        "LOOPLANE_STORAGE__LEASE": "2s",
        "LOOPLANE_WORKER__SHUTDOWN_GRACE": "2s",
        "LOOPLANE_RESULTS__TTL": "15m",
    }
    if kind == "lmdb":
        path = str(tmp_path / "db")
        return (
            ["--storage", "lmdb", "--db-path", path],
            env,
            {"storage": "lmdb", "storage__path": path},
        )
    assert REDIS_URL
    queue = f"lqtest-crash-{uuid.uuid4().hex[:12]}"
    env |= {"LOOPLANE_STORAGE__URL": REDIS_URL, "LOOPLANE_STORAGE__QUEUE": queue}
    overrides = {"storage": "redis", "storage__url": REDIS_URL, "storage__queue": queue}
    overrides["results__ttl"] = "15m"
    return ["--storage", "redis"], env, overrides


def _calls(rng: random.Random, count: int) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """A mix: quick async, async naps, plain functions, flaky and always-failing tasks."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    for n in range(count):
        roll = rng.random()
        if roll < 0.3:
            calls.append(("rel.quick", (n,), {}))
        elif roll < 0.6:
            calls.append(("rel.nap", (n, rng.uniform(0.05, 0.6)), {}))
        elif roll < 0.85:
            calls.append(("rel.plain", (n, rng.uniform(0.05, 0.4)), {}))
        elif roll < 0.95:
            calls.append(("rel.flaky", (n,), {}))
        else:
            calls.append(("rel.doomed", (n,), {}))
    return calls


def _kill_once(cluster: Cluster, rng: random.Random) -> str:
    """Kill one live worker during a task, right after one, or at an idle random moment."""
    mode = rng.choice(["during", "after", "idle"])
    live = {p.pid for p in cluster.live()}
    if mode != "idle":
        phase = "start" if mode == "during" else "end"
        seen = len(read_lines(cluster.log_dir))
        deadline = time.monotonic() + WAIT_LINE_S
        while time.monotonic() < deadline:
            fresh = [w for w in read_lines(cluster.log_dir)[seen:] if w[0] == phase]
            targets = [int(w[3]) for w in fresh if int(w[3]) in live]
            if targets:
                cluster.kill(targets[0])
                return mode
            time.sleep(0.005)
        mode = "idle (no task seen)"
    time.sleep(rng.uniform(0.0, 0.3))  # a random moment to strike, not a wait for a condition
    cluster.kill(rng.choice(sorted(live)))
    return mode


async def _run(kind: str, tmp_path: Path, *, tasks: int, kills: int, workers: int) -> None:
    seed = int(os.environ.get("LOOPLANE_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    args, env, overrides = _setup(kind, tmp_path)
    cluster = Cluster(args, env, tmp_path, concurrency=8)
    app = looplane.from_config(**overrides)
    try:
        async with app:
            for _ in range(workers):
                cluster.spawn()
            sent = {
                task.id: task.max_retries
                for task in await app.producer.send_batch(_calls(rng, tasks))
            }
            modes: list[str] = []
            for _ in range(kills):
                modes.append(_kill_once(cluster, rng))
                cluster.spawn()
            try:
                report = await check_delivery(
                    app.result_backend, sent, cluster.log_dir, cluster.killed, timeout=120.0
                )
            except AssertionError as exc:
                raise AssertionError(f"seed={seed} kills={modes}: {exc}") from exc
    finally:
        cluster.close()
        if kind == "redis":
            await drop_queue(overrides["storage__queue"])
    report["seed"] = seed
    report["backend"] = kind
    publish(f"crash-{kind}-{tasks}", report)


BACKENDS = [pytest.param("lmdb", id="lmdb"), pytest.param("redis", id="redis", marks=REDIS_MARKS)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", BACKENDS)
async def test_sigkilled_workers_lose_no_task(kind: str, tmp_path: Path) -> None:
    """400 tasks, 4 SIGKILLs at random moments, 3 workers, one restarted after each kill."""
    await _run(kind, tmp_path, tasks=400, kills=4, workers=3)


@pytest.mark.long
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", BACKENDS)
async def test_many_kills_lose_no_task(kind: str, tmp_path: Path) -> None:
    """20,000 tasks and 50 SIGKILLs."""
    await _run(kind, tmp_path, tasks=20_000, kills=50, workers=4)
