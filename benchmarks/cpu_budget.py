"""Where a drain's CPU goes: worker processes, the Redis server and the producer, per task.

Run: python benchmarks/cpu_budget.py [--storage lmdb|redis] [--processes 1 2] [--concurrency 20]
     [--tasks 20000] [--reps 3] [--url redis://127.0.0.1:6379/13]

For each worker process count, each rep starts ``looplane worker -p P -c C`` (the CLI, as users
run it, log level INFO) on a fresh LMDB directory or an emptied Redis database, sends
``--tasks`` no-op tasks with ``send_batch`` of 1,000 from this process while the workers run,
and waits until every task has a result and nothing is ready or leased. It prints the drain
rate and the CPU time (user + system, from ``/proc``) that the worker processes, the Redis
server (when it runs on this machine) and this producer spent, divided by the tasks.

Why: on a machine with few cores, the sum of those three per-task figures bounds what more
worker processes can add. With ``S`` microseconds of CPU a task in all and ``K`` cores, no
number of workers drains faster than ``K / S`` tasks per second; the ratio of that bound to
one worker's rate is the most a second worker can add, whatever the queue does. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from peers import _looplane_app as tasks

from looplane import from_config

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
BATCH = 1000


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process `pid` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (a supervisor and its worker processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(child) for child in children.read_text().split()] if children.exists() else []
    return [pid, *found]


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_server_pid(url: str) -> int | None:
    """The server's pid when it runs on this machine, else None."""
    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return pid if Path(f"/proc/{pid}").exists() else None


def one_drain(args: argparse.Namespace, processes: int, workdir: Path) -> dict[str, float]:
    """Start the workers on emptied storage, measure one drain, stop them."""
    overrides: dict[str, Any] = {"storage": args.storage}
    argv = [sys.executable, "-m", "looplane.cli", "worker", "-A", "peers._looplane_app"]
    argv += ["--storage", args.storage, "-c", str(args.concurrency), "-p", str(processes)]
    path = [str(HERE), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    server = None
    if args.storage == "lmdb":
        db = workdir / "db"
        shutil.rmtree(db, ignore_errors=True)
        overrides["storage__path"] = str(db)
        argv += ["--db-path", str(db)]
    else:
        client = redis.Redis.from_url(args.url)
        client.flushdb()
        client.close()
        overrides["storage__url"] = args.url
        env["LOOPLANE_STORAGE__URL"] = args.url
        server = redis_server_pid(args.url)
    with (workdir / "worker.log").open("w") as log:
        worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            return asyncio.run(measure(args, overrides, worker.pid, processes, server))
        finally:
            worker.terminate()
            worker.wait(60)


async def measure(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    worker: int,
    processes: int,
    server: int | None,
) -> dict[str, float]:
    """Send the tasks while the workers run; the rate and the CPU spent per task."""
    async with from_config(**overrides) as app:
        # Ready once one task ran end to end and every worker process is up.
        warm = await app.producer.send(tasks.noop)
        await app.result_backend.wait(warm.id, timeout=60)
        pids = process_tree(worker)
        while processes > 1 and len(pids) < processes + 1:
            await asyncio.sleep(0.1)
            pids = process_tree(worker)
        before = {pid: cpu_s(pid) for pid in pids}
        server_before = cpu_s(server) if server else 0.0
        mine_before = own_cpu_s()
        start = time.perf_counter()
        last = None
        for sent in range(0, args.tasks, BATCH):
            size = min(BATCH, args.tasks - sent)
            last = (await app.producer.send_batch([(tasks.noop, (), {})] * size))[-1]
        assert last is not None
        await app.result_backend.wait(last.id, timeout=300)
        while True:
            counts = await app.storage.counts()
            if counts.ready == 0 and counts.leased == 0:
                break
            await asyncio.sleep(0.01)
        wall = time.perf_counter() - start
        workers = sum(cpu_s(pid) - before[pid] for pid in pids)
        server_cpu = cpu_s(server) - server_before if server else float("nan")
        mine = own_cpu_s() - mine_before
    per_task = 1e6 / args.tasks
    return {
        "rate": args.tasks / wall,
        "workers_us": workers * per_task,
        "server_us": server_cpu * per_task,
        "producer_us": mine * per_task,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=["lmdb", "redis"], default="lmdb")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13", help="Redis, emptied")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(
        f"{args.storage}, {args.tasks:,} no-op tasks, concurrency {args.concurrency}, {cores} cores"
    )
    print("processes  tasks/s  CPU us/task: workers  server  producer  total  bound tasks/s")
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="looplane-cpu-") as tmp:
        for processes in args.processes:
            runs = [one_drain(args, processes, Path(tmp)) for _ in range(args.reps)]
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            parts = [median["workers_us"], median["producer_us"]]
            if median["server_us"] == median["server_us"]:  # not NaN: a local server
                parts.append(median["server_us"])
            total = sum(parts)
            rates[processes] = median["rate"]
            server = f"{median['server_us']:.0f}" if len(parts) == 3 else "-"
            print(
                f"{processes:>9}  {median['rate']:>7,.0f}  {median['workers_us']:>20.0f}"
                f"  {server:>6}  {median['producer_us']:>8.0f}  {total:>5.0f}"
                f"  {cores / total * 1e6:>13,.0f}"
            )
    if len(rates) > 1:
        one = rates[min(rates)]
        for processes, rate in rates.items():
            if processes != min(rates):
                print(
                    f"{processes} processes / {min(rates)}: {rate / one:.2f}x "
                    f"(medians of {args.reps})"
                )


if __name__ == "__main__":
    main()
