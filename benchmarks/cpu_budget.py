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

The Redis database of ``--url`` is emptied before and after each rep, so a run leaves no key
behind. A bad option, or a Redis server that does not answer a ping, exits 2 with one line;
a worker process that exits before its drain ends stops the run with its log's last lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from peers import _looplane_app as tasks
from peers._support import WorkerProcess, poll_until

from looplane import from_config
from looplane.config import mask_url_in

if TYPE_CHECKING:
    from collections.abc import Coroutine

TICKS = os.sysconf("SC_CLK_TCK")
BATCH = 1000
DEFAULT_URL = "redis://127.0.0.1:6379/13"
# More worker processes than this on a benchmark machine is a typo, not a measurement.
MAX_PROCESSES = 64
WATCH_S = 0.2
"""How often the worker process is checked while a drain runs."""
START_TIMEOUT_S = 60.0
"""Longest the worker processes may take to start."""
LOG_TAIL_LINES = 15

T = TypeVar("T")


class WorkerExitError(RuntimeError):
    """The worker process exited before its drain ended."""

    def __init__(self, *, returncode: int, log_tail: str) -> None:
        super().__init__(
            f"the worker process exited with status {returncode} before its drain ended;"
            f" the last lines of its log:\n{log_tail}"
        )


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
    """Start the workers on emptied storage, measure one drain, stop them, empty the storage."""
    overrides: dict[str, Any] = {"storage": args.storage}
    argv = worker_argv(args, processes)
    env: dict[str, str] = {}
    server = None
    if args.storage == "lmdb":
        db = workdir / "db"
        shutil.rmtree(db, ignore_errors=True)
        overrides["storage__path"] = str(db)
        argv += ["--db-path", str(db)]
    else:
        empty_redis(args.url)
        overrides["storage__url"] = args.url
        env["LOOPLANE_STORAGE__URL"] = args.url
        server = redis_server_pid(args.url)
    try:
        worker = WorkerProcess(argv, workdir=str(workdir), log_name="worker.log", env=env)
        try:
            drain = measure(args, overrides, worker.proc.pid, processes, server)
            return asyncio.run(watched(drain, worker))
        finally:
            worker.stop()
    finally:
        # Results live a day: empty the database again, so that the run leaves nothing behind.
        if args.storage == "redis":
            empty_redis(args.url)


def worker_argv(args: argparse.Namespace, processes: int) -> list[str]:
    """The ``looplane worker`` command line, without the storage's location."""
    argv = [sys.executable, "-m", "looplane.cli", "worker", "-A", "peers._looplane_app"]
    return [*argv, "--storage", args.storage, "-c", str(args.concurrency), "-p", str(processes)]


async def watched(work: Coroutine[Any, Any, T], worker: WorkerProcess) -> T:
    """Await `work`, but cancel it as soon as the worker process exits.

    Raises:
        WorkerExitError: The worker exited first; otherwise every wait for a result of its
            would last until its timeout, or forever.
    """
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.wait({task}, timeout=WATCH_S)
        if not task.done() and worker.proc.poll() is not None:
            task.cancel()
            await asyncio.wait({task})
            lines = worker.tail(LOG_TAIL_LINES).splitlines()
            log_tail = "\n".join(f"  {line}" for line in lines) or "  (the log is empty)"
            raise WorkerExitError(returncode=worker.proc.returncode, log_tail=log_tail)
    return task.result()


def empty_redis(url: str) -> None:
    """Empty the Redis database of `url`."""
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_problem(url: str) -> str | None:
    """Why the Redis server of `url` cannot serve the run (it does not answer), or None."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    except ValueError as exc:
        return mask_url_in(f"--url {url}: {exc}", url)
    try:
        client.ping()
    except redis.RedisError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return mask_url_in(f"--url {url}: Redis does not answer ({lines[0]})", url)
    finally:
        client.close()
    return None


async def started_processes(worker: int, processes: int) -> list[int]:
    """The worker's pids once all `processes` run (a supervisor starts them when above 1)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    pids = process_tree(worker)
    while processes > 1 and len(pids) < processes + 1:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(pids) - 1} of {processes} worker processes started in {START_TIMEOUT_S:g} s"
            )
        await asyncio.sleep(0.1)
        pids = process_tree(worker)
    return pids


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
        pids = await started_processes(worker, processes)
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

        async def empty() -> bool:
            counts = await app.storage.counts()
            return counts.ready == 0 and counts.leased == 0

        await poll_until(empty, timeout_s=300, interval_s=0.01)
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


def at_least_one(text: str) -> int:
    """An integer option's value, which must be 1 or more (argparse reports the error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; exits 2 with a message on a bad one or a Redis server that does not answer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=["lmdb", "redis"], default="lmdb")
    parser.add_argument("--processes", type=at_least_one, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=at_least_one, default=20)
    parser.add_argument("--tasks", type=at_least_one, default=20_000)
    parser.add_argument("--reps", type=at_least_one, default=3)
    parser.add_argument(
        "--url",
        help=f"the Redis database, emptied before and after each rep (default {DEFAULT_URL}); "
        "with --storage redis only",
    )
    args = parser.parse_args(argv)
    args.processes = list(dict.fromkeys(args.processes))
    if max(args.processes) > MAX_PROCESSES:
        parser.error(f"argument --processes: at most {MAX_PROCESSES}, got {max(args.processes)}")
    if args.url is not None and args.storage != "redis":
        parser.error("--url names a Redis database: give --storage redis with it")
    if args.url is None:
        args.url = DEFAULT_URL
    problem = redis_problem(args.url) if args.storage == "redis" else None
    if problem:
        parser.error(problem)
    return args


def main() -> None:
    args = parse_args()
    cores = os.cpu_count() or 1
    print(
        f"{args.storage}, {args.tasks:,} no-op tasks, concurrency {args.concurrency}, {cores} cores"
    )
    print("processes  tasks/s  CPU us/task: workers  server  producer  total  bound tasks/s")
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="looplane-cpu-") as tmp:
        for processes in args.processes:
            try:
                runs = [one_drain(args, processes, Path(tmp)) for _ in range(args.reps)]
            except WorkerExitError as exc:
                sys.exit(f"cpu_budget.py: {exc}")
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
