"""Soak: push many tiny tasks through one worker and watch its memory and the LMDB file.

Run: python benchmarks/soak.py [--tasks 1000000] [--concurrency 50] [--quick] [--out FILE]

One real ``looplane worker`` process (the CLI, LMDB with durable commits, the given
concurrency) runs no-op tasks. This script is the producer: it keeps a bounded backlog
(``--backlog``, sent with ``send_batch`` of 1,000) in the same LMDB directory, and every
``--sample-every`` finished tasks it records the worker's RSS (VmRSS from /proc) and the
size of ``data.mdb``. The producer runs in this process, not in the worker, so the worker's
RSS is the worker's alone; the two share the file as any two processes on a host do.

Results use a short time to live (``--ttl``, 30 s by default) so that the run shows expired
results being purged while the worker stores new ones; with the default one-day time to live
the file grows by the bytes per result (printed at the end) for every result of the last day.

At the end the first sample after the warm-up (at least ``--warmup`` finished tasks and twice
the time to live, when stored results level off) is compared with the last. PASS needs the
worker's anonymous memory, and the file's size per entry it must hold (results and backlog
at the busiest sample so far), to grow less than ``--max-growth-pct``; the raw growth of RSS
and of the file is printed beside them (see `verdict` for why the file is judged per entry).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from looplane import (
    LMDBResultBackend,
    LMDBStorage,
    StorageProducer,
    current_task,
    register_task,
)
from looplane._lmdb_env import LMDBEnv
from looplane.task import new_task_id

if TYPE_CHECKING:
    from looplane._lmdb_env import Txn

TASK_NAME = "soak.noop"
BATCH = 1_000
READY_LINE = "Worker ready"
POLL_S = 0.1


if __name__ != "__main__":
    # Imported by the worker (``-A soak``): a million "attempt finished" INFO lines would
    # measure the terminal, not the queue. Warnings and errors still reach the worker's log.
    logging.getLogger("looplane.orchestrator").setLevel(logging.WARNING)


class SoakFailureError(Exception):
    """Raised by a task asked to fail its first attempt."""


# Limitation: tasks only succeed, or fail once and succeed on their retry (--fail-every), so
# the soak never exercises the timeout, dead-letter or lost-lease paths, whose bookkeeping
# could leak unseen here. Lifted by: options that make a share of the tasks time out, or
# kill and restart the worker mid-run.
@register_task(name=TASK_NAME)
async def noop(*, fail_first: bool = False) -> None:
    """Do nothing, or fail the first attempt when asked: the soak measures the queue."""
    if fail_first and current_task().attempt == 1:
        raise SoakFailureError("first attempt fails on purpose")


@dataclass
class Sample:
    """One row of the soak table."""

    done: int
    elapsed_s: float
    window_tasks_per_s: float
    rss_kib: int
    anon_kib: int
    file_bytes: int
    file_alloc_bytes: int
    used_bytes: int
    results: int
    backlog: int
    dead: int


@dataclass
class Options:
    """The run's settings, from the command line."""

    tasks: int
    concurrency: int
    ttl_s: float
    backlog: int
    sample_every: int
    warmup: int
    max_growth_pct: float
    fail_every: int
    path: Path | None
    out: Path | None


def parse_args(argv: list[str] | None = None) -> Options:
    """Read the options; ``--quick`` shrinks every count for a check that takes seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--ttl", type=float, default=30.0, help="result time to live, s")
    parser.add_argument("--backlog", type=int, default=20_000, help="tasks kept waiting")
    parser.add_argument("--sample-every", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=200_000)
    parser.add_argument("--max-growth-pct", type=float, default=10.0)
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        help="make every Nth task fail its first attempt and succeed on its retry (0: none)",
    )
    parser.add_argument("--path", type=Path, help="LMDB directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also write the samples as .json or .csv")
    parser.add_argument(
        "--quick", action="store_true", help="100,000 tasks, a sample every 10,000, TTL 5 s"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.sample_every, args.warmup = 100_000, 10_000, 40_000
        args.ttl = min(args.ttl, 5.0)
        args.backlog = min(args.backlog, 10_000)
    return Options(
        tasks=args.tasks,
        concurrency=args.concurrency,
        ttl_s=args.ttl,
        backlog=args.backlog,
        sample_every=args.sample_every,
        warmup=min(args.warmup, args.tasks),
        max_growth_pct=args.max_growth_pct,
        fail_every=args.fail_every,
        path=args.path,
        out=args.out,
    )


# The worker process. -------------------------------------------------------------------------


def start_worker(options: Options, path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``looplane worker -A soak`` on `path`; its output goes to `log_path`."""
    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLANE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
    env["LOOPLANE_RESULTS__TTL"] = str(options.ttl_s)
    env["COLUMNS"] = "200"
    argv = [sys.executable, "-m", "looplane.cli", "worker", "-A", "soak"]
    argv += ["--storage", "lmdb", "--db-path", str(path), "--concurrency", str(options.concurrency)]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


async def wait_ready(worker: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Wait for the worker's ready line; fail with its output if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while READY_LINE not in read_log(log_path):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{read_log(log_path)}")
        await asyncio.sleep(POLL_S)


def read_log(log_path: Path) -> str:
    """The worker's output so far (a small file: per-attempt lines are switched off)."""
    return log_path.read_text(errors="replace")


def stop_worker(worker: subprocess.Popen[bytes]) -> int:
    """Stop the worker with SIGTERM (SIGKILL after 60 s) and return its exit code."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.wait()


def memory_kib(pid: int) -> tuple[int, int]:
    """Resident memory of `pid` in KiB, in all and anonymous only, from /proc (Linux only).

    VmRSS includes the pages of ``data.mdb`` that the worker's memory map has touched, so it
    follows the file; RssAnon is the process's own heap and stacks, where a leak would show.
    """
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("RssAnon", 0)


# The LMDB file. ------------------------------------------------------------------------------


@dataclass
class Counts:
    """Entries in the named databases that the soak watches."""

    backlog: int
    dead: int
    results: int
    used_bytes: int


def read_counts(env: LMDBEnv) -> Counts:
    """Count waiting, leased, delayed and dead tasks and stored results: O(1) database stats."""

    def count(txn: Txn) -> Counts:
        entries = {name: txn.stat(env.dbs[name])["entries"] for name in env.dbs}
        info = env.env.info()
        return Counts(
            backlog=entries["ready"] + entries["leases"] + entries["delayed"],
            dead=entries["dead"],
            results=entries["results"],
            used_bytes=(info["last_pgno"] + 1) * env.env.stat()["psize"],
        )

    return env.read_sync(count)


def file_sizes(path: Path) -> tuple[int, int]:
    """The apparent and the allocated size of ``data.mdb`` in bytes."""
    stat = (path / "data.mdb").stat()
    return stat.st_size, stat.st_blocks * 512


# The run. ------------------------------------------------------------------------------------


class Soak:
    """Feeds the worker and samples it until every task has finished."""

    def __init__(self, options: Options, path: Path, worker: subprocess.Popen[bytes]) -> None:
        self.options = options
        self.path = path
        self.worker = worker
        self.storage = LMDBStorage(path)
        self.producer = StorageProducer(self.storage)
        self.sent = 0
        self.samples: list[Sample] = []

    async def run(self) -> list[Sample]:
        """Keep the backlog topped up and take a sample at every step; return the samples."""
        options = self.options
        started = time.perf_counter()
        next_sample, last = options.sample_every, (0, started)
        done = 0
        while done < options.tasks:
            if self.worker.poll() is not None:
                raise SystemExit(f"worker exited with {self.worker.returncode} mid-run")
            counts = read_counts(self.storage.env)
            done = self.sent - counts.backlog - counts.dead
            await self.top_up(counts.backlog)
            if done >= min(next_sample, options.tasks):
                now = time.perf_counter()
                self.samples.append(self.sample(done, now - started, last, now, counts))
                last = (done, now)
                next_sample += options.sample_every
                print_row(self.samples[-1])
            else:
                await asyncio.sleep(POLL_S)
        return self.samples

    async def top_up(self, backlog: int) -> None:
        """Send batches of 1,000 until the backlog reaches its target or all are sent."""
        while backlog < self.options.backlog and self.sent < self.options.tasks:
            size = min(BATCH, self.options.tasks - self.sent)
            every = self.options.fail_every
            calls = [
                (TASK_NAME, (), {"fail_first": bool(every) and (self.sent + i) % every == 0})
                for i in range(size)
            ]
            await self.producer.send_batch(calls, retries=1)
            self.sent += size
            backlog += size

    def sample(
        self, done: int, elapsed_s: float, last: tuple[int, float], now: float, counts: Counts
    ) -> Sample:
        """One row: the window's rate, the worker's RSS and the file's sizes now."""
        size, allocated = file_sizes(self.path)
        window_s = max(now - last[1], 1e-9)
        rss, anon = memory_kib(self.worker.pid)
        return Sample(
            done=done,
            elapsed_s=round(elapsed_s, 1),
            window_tasks_per_s=round((done - last[0]) / window_s, 1),
            rss_kib=rss,
            anon_kib=anon,
            file_bytes=size,
            file_alloc_bytes=allocated,
            used_bytes=counts.used_bytes,
            results=counts.results,
            backlog=counts.backlog,
            dead=counts.dead,
        )

    async def close(self) -> None:
        """Close the producer and this process's share of the environment."""
        await self.producer.close()
        await self.storage.close()


# Output. -------------------------------------------------------------------------------------

HEADER = (
    f"{'done':>9} {'elapsed s':>9} {'tasks/s':>8} {'RSS MiB':>8} {'anon MiB':>8} {'file MiB':>9} "
    f"{'alloc MiB':>9} {'used MiB':>9} {'results':>8} {'backlog':>8} {'dead':>5}"
)


def print_row(s: Sample) -> None:
    """Print one sample as a table row, at once (the run is long)."""
    mib = 1 << 20
    print(
        f"{s.done:>9,} {s.elapsed_s:>9.1f} {s.window_tasks_per_s:>8,.0f} "
        f"{s.rss_kib / 1024:>8.1f} {s.anon_kib / 1024:>8.1f} {s.file_bytes / mib:>9.1f} "
        f"{s.file_alloc_bytes / mib:>9.1f} {s.used_bytes / mib:>9.1f} {s.results:>8,} "
        f"{s.backlog:>8,} {s.dead:>5}",
        flush=True,
    )


def growth_pct(first: float, last: float) -> float:
    """Growth from `first` to `last` in percent (0 when `first` is 0)."""
    return 0.0 if first <= 0 else (last - first) / first * 100


def verdict(samples: list[Sample], options: Options) -> tuple[bool, list[str]]:
    """Compare the first sample after the warm-up with the last: PASS when nothing leaks.

    A leak shows as growth of the worker's anonymous memory, or of the file beyond what it
    must hold. The file holds every result of the last TTL plus the backlog, so it follows
    the busiest stretch so far (LMDB reuses freed pages but never shrinks the file): on a
    shared machine the rate, and with it the file and the file-backed part of VmRSS, can
    rise late in a run without anything leaking. The file is therefore judged per entry
    held at the busiest sample so far (results plus backlog); raw growth is printed too.
    """
    # Results pile up for one time to live before the first ones expire; the file and the
    # map's resident pages grow until then, so warm-up also lasts two times to live.
    warm = [s for s in samples if s.done >= options.warmup and s.elapsed_s >= 2 * options.ttl_s]
    first, last = (warm or samples[-1:])[0], samples[-1]
    peaks = dict(zip(map(id, samples), running_peaks(samples), strict=True))
    mib, limit = 1 << 20, options.max_growth_pct
    raw = {
        "RSS": (first.rss_kib * 1024, last.rss_kib * 1024),
        "anon RSS": (first.anon_kib * 1024, last.anon_kib * 1024),
        "file": (first.file_bytes, last.file_bytes),
    }
    per_entry = (first.file_bytes / peaks[id(first)], last.file_bytes / peaks[id(last)])
    judged = {"anon RSS": growth_pct(*raw["anon RSS"]), "file per entry": growth_pct(*per_entry)}
    ok = all(pct < limit for pct in judged.values())
    return ok, [
        f"raw growth from {first.done:,} to {last.done:,} tasks: "
        + ", ".join(
            f"{name} {growth_pct(a, b):+.1f}% ({a / mib:.1f} -> {b / mib:.1f} MiB)"
            for name, (a, b) in raw.items()
        ),
        f"judged (limit {limit:g}%): anon RSS {judged['anon RSS']:+.1f}%, file per entry held "
        f"at the busiest sample {judged['file per entry']:+.1f}% "
        f"({per_entry[0]:,.0f} -> {per_entry[1]:,.0f} bytes)",
        f"{'PASS' if ok else 'FAIL'}: memory and file "
        f"{'stay flat' if ok else 'grow'} after warm-up",
    ]


def running_peaks(samples: list[Sample]) -> list[int]:
    """For each sample, the most entries (results plus backlog) held at it or any before."""
    peaks, peak = [], 1
    for sample in samples:
        peak = max(peak, sample.results + sample.backlog)
        peaks.append(peak)
    return peaks


async def bytes_per_result(path: Path, count: int = 20_000) -> float:
    """File bytes each stored result costs: store `count` copies of a real one and measure.

    The copies take fresh task ids and never expire, in a directory of their own, so the
    growth of used pages over `count` is what the one-day default would keep per result
    (the result, its order entry and its expiry entry, with B-tree overhead).
    """
    async with LMDBResultBackend(path) as worker_results:
        found = await worker_results.results(limit=1)
    if not found:
        return 0.0
    probe_dir = Path(tempfile.mkdtemp(prefix="looplane-soak-probe-"))
    try:
        async with LMDBResultBackend(probe_dir) as probe:
            before = probe_used_bytes(probe)
            for _ in range(count // BATCH):
                copies = (replace(found[0], task_id=new_task_id()) for _ in range(BATCH))
                await asyncio.gather(*(probe.store(c) for c in copies))
            return (probe_used_bytes(probe) - before) / (count // BATCH * BATCH)
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def probe_used_bytes(results: LMDBResultBackend) -> int:
    """Bytes of the pages the environment behind `results` has used so far."""
    env = results.write_channel
    assert isinstance(env, LMDBEnv)
    return (env.env.info()["last_pgno"] + 1) * env.env.stat()["psize"]


def default_ttl_line(samples: list[Sample], per_result: float) -> str:
    """What the one-day default time to live would hold at this run's average rate."""
    rate = samples[-1].done / samples[-1].elapsed_s if samples[-1].elapsed_s else 0.0
    held = per_result * rate * 86_400
    return (
        f"bytes per stored result: {per_result:,.0f}; with the default 1-day result TTL at "
        f"this run's average {rate:,.0f} tasks/s the file would hold about {held / (1 << 30):,.1f}"
        f" GiB of results ({rate * 86_400:,.0f} results)"
    )


def write_out(path: Path, samples: list[Sample], summary: dict[str, object]) -> None:
    """Write the samples as CSV, or as JSON with the summary (by the file's suffix)."""
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(Sample)])
            writer.writeheader()
            writer.writerows(asdict(s) for s in samples)
        return
    path.write_text(json.dumps({**summary, "samples": [asdict(s) for s in samples]}, indent=2))


async def soak(options: Options, path: Path) -> bool:
    """Run the whole soak in `path` and print the table and the verdict; True on PASS."""
    log_path = path.parent / f"{path.name}-worker.log"
    worker = start_worker(options, path, log_path)
    try:
        await wait_ready(worker, log_path, timeout_s=60)
        print(f"Python {platform.python_version()} on {platform.platform()}; cpus={os.cpu_count()}")
        print(
            f"tasks={options.tasks:,} concurrency={options.concurrency} ttl={options.ttl_s:g}s "
            f"backlog={options.backlog:,} fail_every={options.fail_every} "
            f"worker pid={worker.pid} path={path}"
        )
        print(HEADER, flush=True)
        runner = Soak(options, path, worker)
        try:
            samples = await runner.run()
        finally:
            await runner.close()
    finally:
        code = stop_worker(worker)
    per_result = await bytes_per_result(path, min(20_000, max(BATCH, options.tasks)))
    ok, lines = verdict(samples, options)
    lines += [default_ttl_line(samples, per_result), f"worker exit code {code}"]
    print("\n".join(lines))
    if options.out:
        summary = {"options": {k: str(v) for k, v in asdict(options).items()}, "pass": ok}
        write_out(options.out, samples, {**summary, "verdict": lines})
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the soak in `--path` or a temporary directory (removed afterwards)."""
    options = parse_args(argv)
    temp = None if options.path else tempfile.mkdtemp(prefix="looplane-soak-")
    path = options.path or Path(temp or "") / "db"
    try:
        return 0 if asyncio.run(soak(options, path)) else 1
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
