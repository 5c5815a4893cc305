"""Looplane and its peers side by side, on the same machine in one run.

Run: python benchmarks/compare.py [--quick] [--systems a,b] [--reps 3] [--out DIR]
     [--workloads enqueue,drain,pickup,growth] [--redis redis://127.0.0.1:6379] [--workdir DIR]

Systems come from ``benchmarks/peers/*.py`` (a ``SYSTEMS`` list in each); a module whose
optional package is missing is skipped with the reason printed. Every measurement runs in a
fresh interpreter (this script with ``--child``), which builds the system, makes one workload
call and prints one JSON line. Repetitions alternate between systems: for each measurement,
rep 1 runs A B C ..., rep 2 runs A B C ..., and so on, so that a slow spell of this shared
machine hits every system alike. ``results.json`` (raw) and ``report.md`` (medians, ranges,
Looplane's ratios to each peer, the goals of the issue) go to ``--out``.

Redis: only databases 1-7 of ``--redis`` are used, each flushed before and after a call; the
rest belong to users, tests and other jobs on this server, so a URL naming a database is refused.
A run with a Redis system holds a lock on the server for its whole duration (``flock`` on a file
in the system temp dir, named after the server's host and port): a second run on the same server
would flush the first one's databases, so it exits 2 at once instead.

Stopping: SIGTERM, SIGINT or SIGHUP to this script stops the call in progress (its child
stops its workers), empties the Redis databases, removes the temporary work dir and writes
a report of the calls that finished, marked as interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

BENCHMARKS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS_DIR))

from peers import _report  # noqa: E402 - needs the path above
from peers._support import (  # noqa: E402 - needs the path above
    REDIS_DBS,
    Stopped,
    parent_death_hook,
    redis_db_url,
    redis_url_problem,
    stop_on_signals,
    url_db,
)
from peers.base import WORKLOADS, System  # noqa: E402 - needs the path above

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

KNOWN_SYSTEMS = {
    "looplane_systems": (
        "looplane-memory",
        "looplane-lmdb",
        "looplane-lmdb-relaxed",
        "looplane-redis",
    ),
    "huey_systems": ("huey-sqlite", "huey-memory", "huey-redis"),
    "arq_systems": ("arq-redis", "arq-redis-fast"),
    "saq_systems": ("saq-redis",),
    "streaq_systems": ("streaq-redis",),
    "taskiq_systems": ("taskiq-memory", "taskiq-redis"),
    "dramatiq_systems": ("dramatiq-redis",),
}
"""The systems of each ``peers`` module, to name them when the module cannot be imported."""

STOP_CHILD_S = 40.0
"""How long a stopped call may take to stop its workers before it is killed."""

CALL_TIMEOUT_S = 900.0
"""Longest one call may take; growth calls that load a backlog get `LOAD_TIMEOUT_S`."""
LOAD_TIMEOUT_S = 3600.0


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One figure of the report: a workload call with fixed arguments."""

    key: str
    """Unique id, e.g. ``drain-c20-p1``."""
    workload: str
    kwargs: dict[str, Any]
    title: str
    count: int = 0
    """Tasks per call, to turn seconds into tasks/s (0 for pickup)."""


# The plan: which calls each mode makes.


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Task counts of one mode."""

    enqueue_single: int
    enqueue_batched: int
    drain: int
    drain_concurrency: tuple[int, ...]
    drain_processes: tuple[int, ...]
    pickup_s: float
    growth: int
    backlogs: tuple[int, ...]


FULL = Sizes(5_000, 20_000, 20_000, (20, 50), (1, 2), 5.0, 10_000, (1_000, 100_000, 1_000_000))
QUICK = Sizes(1_000, 5_000, 1_000, (20,), (1,), 2.0, 2_000, (1_000, 20_000))
QUICK_WORKLOADS = ("drain",)
QUICK_SYSTEMS = (
    "looplane-memory",
    "looplane-lmdb",
    "looplane-redis",
    "huey-sqlite",
    "huey-redis",
    "taskiq-memory",
    "taskiq-redis",
    "dramatiq-redis",
    "saq-redis",
)
"""``--quick`` without ``--systems``: Looplane and the peers the issue's goals name."""


def plan(sizes: Sizes, workloads: list[str]) -> list[Measurement]:
    """The measurements of the chosen workloads, in the order they run."""
    found: list[Measurement] = []
    if "enqueue" in workloads:
        found += _enqueue_plan(sizes)
    if "drain" in workloads:
        found += _drain_plan(sizes)
    if "pickup" in workloads:
        rate = 200.0
        kwargs = {"rate_per_s": rate, "duration_s": sizes.pickup_s}
        title = f"pickup latency at {rate:.0f} tasks/s for {sizes.pickup_s:g} s"
        found.append(Measurement("pickup", "pickup", kwargs, title))
    if "growth" in workloads:
        found += _growth_plan(sizes)
    return found


def _enqueue_plan(sizes: Sizes) -> list[Measurement]:
    return [
        Measurement(
            "enqueue-single",
            "enqueue",
            {"count": sizes.enqueue_single, "batched": False},
            f"enqueue {sizes.enqueue_single:,} tasks one at a time",
            sizes.enqueue_single,
        ),
        Measurement(
            "enqueue-batched",
            "enqueue",
            {"count": sizes.enqueue_batched, "batched": True},
            f"enqueue {sizes.enqueue_batched:,} tasks batched",
            sizes.enqueue_batched,
        ),
    ]


def _drain_plan(sizes: Sizes) -> list[Measurement]:
    found = []
    for processes in sizes.drain_processes:
        for concurrency in sizes.drain_concurrency:
            kwargs = {"count": sizes.drain, "concurrency": concurrency, "processes": processes}
            title = (
                f"drain {sizes.drain:,} tasks, {processes} worker process"
                f"{'es' if processes > 1 else ''} at concurrency {concurrency}"
            )
            key = f"drain-c{concurrency}-p{processes}"
            found.append(Measurement(key, "drain", kwargs, title, sizes.drain))
    return found


def _growth_plan(sizes: Sizes) -> list[Measurement]:
    found = []
    for backlog in sizes.backlogs:
        kwargs = {"count": sizes.growth, "concurrency": 20, "processes": 1, "backlog": backlog}
        title = f"send and drain {sizes.growth:,} tasks on a backlog of {backlog:,} (c=20)"
        found.append(Measurement(f"growth-{backlog}", "drain", kwargs, title, sizes.growth))
    return found


def supports(system: type[System], measurement: Measurement) -> bool:
    """Whether `system` can make this call at all (known before running it)."""
    if measurement.workload == "pickup":
        return system.cross_process
    if measurement.workload == "drain":
        return system.cross_process or measurement.kwargs["processes"] == 1
    return True


# Discovery.


def discover() -> tuple[list[type[System]], dict[str, str]]:
    """Every system of ``peers/*.py``, and the reason each skipped module or system is out."""
    found: list[type[System]] = []
    skipped: dict[str, str] = {}
    for path in sorted((BENCHMARKS_DIR / "peers").glob("*.py")):
        if path.stem.startswith("_") or path.stem == "base":
            continue
        try:
            module = importlib.import_module(f"peers.{path.stem}")
        except ImportError as exc:
            missing = (exc.name or "").split(".")[0] or str(exc)
            reason = f"cannot import {missing} (pip install -e '.[bench]')"
            for name in KNOWN_SYSTEMS.get(path.stem, (path.stem,)):
                skipped[name] = reason
            continue
        for system in getattr(module, "SYSTEMS", []):
            reason = system.unavailable()
            if reason is None:
                found.append(system)
            else:
                skipped[system.name] = reason
    return found, skipped


# The child: one call in a fresh interpreter.


def child_main(spec: dict[str, Any]) -> None:
    """Run one workload call and print its outcome as one JSON line.

    SIGTERM or SIGINT unwinds the call through its ``finally`` blocks, which stop the
    workers, and still cleans the storage.
    """
    stop_on_signals()
    module = importlib.import_module(spec["module"])
    system_class = next(s for s in module.SYSTEMS if s.name == spec["system"])
    system = system_class(workdir=spec["workdir"], redis_url=spec["redis_url"])
    try:
        outcome = _call(system, spec)
    except NotImplementedError as exc:
        outcome = {"unsupported": str(exc) or "not supported"}
    except Exception as exc:  # noqa: BLE001 - reported to the runner, which carries on
        outcome = {"error": one_line(exc), "traceback": traceback.format_exc()}
    except Stopped as exc:
        outcome = {"error": one_line(exc), "stopped": True}
    finally:
        if not spec.get("keep"):
            system.cleanup()
    print(json.dumps(outcome), flush=True)


def one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message, for a table cell."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _call(system: System, spec: dict[str, Any]) -> dict[str, Any]:
    workload, kwargs = spec["workload"], spec["kwargs"]
    if workload == "info":
        return {"info": system.info()}
    if workload == "pickup":
        return {"latencies_ms": system.pickup(**kwargs)}
    method = getattr(system, workload)
    return {"seconds": method(**kwargs)}


# The runner.


@dataclasses.dataclass
class Runner:
    """Runs calls in child interpreters, giving each system its work dir and Redis database."""

    workroot: Path
    redis_base: str
    dbs: dict[str, int]
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def workdir(self, system: type[System]) -> Path:
        return self.workroot / system.name

    def redis_url(self, system: type[System]) -> str:
        """The system's own database; systems off Redis get one too, and must ignore it."""
        return redis_db_url(self.redis_base, self.dbs.get(system.name, REDIS_DBS[-1]))

    def reset(self, system: type[System]) -> None:
        """Give `system` an empty work dir and, on Redis, an empty database."""
        workdir = self.workdir(system)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.flush(system)

    def flush(self, system: type[System]) -> None:
        """Empty the Redis database of `system`, if it has one."""
        if system.name in self.dbs:
            _flush_redis(self.redis_url(system))

    def flush_all(self) -> None:
        """Empty every Redis database of this run (at its end, or when it is stopped)."""
        for db in sorted(set(self.dbs.values())):
            _flush_redis(redis_db_url(self.redis_base, db))

    def call(
        self,
        system: type[System],
        workload: str,
        kwargs: dict[str, Any],
        *,
        keep: bool = False,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Make one call in a fresh interpreter; `keep` leaves the storage as it was."""
        if not keep:
            self.reset(system)
        spec = {
            "system": system.name,
            "module": system.__module__,
            "workload": workload,
            "kwargs": kwargs,
            "workdir": str(self.workdir(system)),
            "redis_url": self.redis_url(system),
            "keep": keep,
        }
        try:
            return _run_child(spec, timeout_s)
        finally:
            # Leave nothing behind without an expiry, unless the backlog is kept on purpose.
            if not keep:
                self.flush(system)


def _run_child(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one call in a child interpreter; a stop or timeout stops the child in order."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=parent_death_hook(),  # the runner starts no threads
    ) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_child(child)
            return {"error": f"TimeoutError: call timed out after {timeout_s:.0f}s"}
        except BaseException:
            _stop_child(child)
            raise
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        error = f"ChildFailed: exit {child.returncode}, no outcome: {last[:200]}"
        return {"error": error, "traceback": stderr[-4000:]}
    outcome: dict[str, Any] = json.loads(lines[-1])
    return outcome


def _stop_child(child: subprocess.Popen[str]) -> None:
    """SIGTERM the child (it stops its workers), then SIGKILL it after `STOP_CHILD_S`."""
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        child.communicate(timeout=STOP_CHILD_S)
    except subprocess.TimeoutExpired:
        # Its workers get SIGTERM from the kernel when it dies (see peers._support).
        child.kill()
        child.communicate()


def _flush_redis(url: str) -> None:
    """Empty the database of `url` (1-7 only), if the driver is installed and Redis is up."""
    db = url_db(url)
    if db not in REDIS_DBS:
        raise ValueError(f"refusing to flush Redis database {db} of {url}: only 1-7 are ours")
    try:
        import redis
    except ImportError:  # pragma: no cover - only systems without Redis can run then
        return
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        if client.connection_pool.connection_kwargs.get("db", 0) != db:
            raise ValueError(f"refusing to flush {url}: redis-py reads another database")
        client.flushdb()
    except redis.RedisError:
        pass
    finally:
        client.close()


def redis_problem(base: str) -> str | None:
    """Why the Redis server at `base` cannot serve this run, or None when it answers."""
    try:
        import redis
    except ImportError:
        return "cannot import redis (pip install -e '.[bench]')"
    client = redis.Redis.from_url(
        redis_db_url(base, REDIS_DBS[0]), socket_timeout=3, socket_connect_timeout=3
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {_redacted(base)} unreachable ({one_line(exc)})"
    finally:
        client.close()
    return None


def _redacted(url: str) -> str:
    """`url` with its password hidden, for messages (Looplane is imported only when needed)."""
    from looplane.config import redact_url

    return redact_url(url)


def lock_path(base: str) -> Path:
    """The lock file of the Redis server at `base`: one per host (as an address) and port."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme == "unix":
        server = parts.path
    else:
        host = parts.hostname or "localhost"
        # Limitation: a server reached under two addresses (loopback and a LAN address) gets
        # two lock files, so two runs using one each still collide.
        # Lifted by: naming the lock after the server's run_id, which needs a connection first.
        with contextlib.suppress(OSError):
            host = socket.gethostbyname(host)
        server = f"{host}-{parts.port or 6379}"
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", server).strip("_")
    return Path(tempfile.gettempdir()) / f"looplane-compare-redis-{name}.lock"


@contextlib.contextmanager
def redis_server_lock(
    base: str, systems: list[type[System]], *, error: Callable[[str], NoReturn]
) -> Iterator[None]:
    """Hold the Redis server's lock while the run uses it; exit 2 if another run holds it.

    Two runs on one server flush each other's databases 1-7 (a backlog a run keeps between
    reps is wiped by the other's flush), so a second run is refused rather than made to
    wait. ``flock`` locks end with their process, even on SIGKILL, so a dead run holds none.
    Runs without a Redis system take no lock. `error` reports a refusal and exits.
    """
    if not any(s.storage == "redis" for s in systems):
        yield
        return
    path = lock_path(base)
    try:
        file = path.open("a+")
    except OSError as exc:
        error(f"cannot open the lock file of {_redacted(base)}: {exc}")
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            error(
                f"another compare.py run{pid} holds databases 1-7 of {_redacted(base)}"
                f" (lock {path}); wait for it to end, or give another --redis server"
            )
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        yield


def assign_dbs(systems: list[type[System]]) -> dict[str, int]:
    """One Redis database per Redis system, the ones that keep a backlog first.

    Past seven Redis systems, databases are shared: calls run one at a time and flush first,
    so only a kept backlog suffers (it is written again, not lost).
    """
    redis_systems = [s for s in systems if s.storage == "redis"]
    redis_systems.sort(key=lambda s: (not s.keeps_backlog, s.name))
    return {s.name: REDIS_DBS[i % len(REDIS_DBS)] for i, s in enumerate(redis_systems)}


def run_measurement(
    runner: Runner, measurement: Measurement, systems: list[type[System]], reps: int
) -> None:
    """All reps of one measurement, alternating between systems within each rep."""
    active = [s for s in systems if supports(s, measurement)]
    for system in systems:
        if system not in active:
            reason = "the queue lives in one process: no worker in another"
            record = {"measurement": measurement.key, "system": system.name, "rep": 1}
            runner.records.append({**record, "unsupported": reason, "skipped": True})
            print(f"  [{measurement.key}] {system.name}: not supported: {reason}", flush=True)
    is_growth = measurement.key.startswith("growth-")
    for rep in range(1, reps + 1):
        for system in list(active):
            keep = is_growth and system.keeps_backlog
            if keep and rep == 1:
                runner.reset(system)
            timeout_s = LOAD_TIMEOUT_S if is_growth and rep == 1 else CALL_TIMEOUT_S
            started = time.monotonic()
            outcome = runner.call(
                system, measurement.workload, measurement.kwargs, keep=keep, timeout_s=timeout_s
            )
            record = {"measurement": measurement.key, "system": system.name, "rep": rep}
            record.update(outcome)
            record["wall_s"] = round(time.monotonic() - started, 2)
            runner.records.append(record)
            _print_outcome(measurement, system, rep, record)
            if "unsupported" in outcome:
                active.remove(system)
    for system in active:
        if is_growth and system.keeps_backlog:
            runner.reset(system)


def _print_outcome(
    measurement: Measurement, system: type[System], rep: int, record: dict[str, Any]
) -> None:
    if "seconds" in record:
        rate = measurement.count / record["seconds"] if record["seconds"] else 0.0
        shown = f"{record['seconds']:.3f} s ({rate:,.0f} tasks/s)"
    elif "latencies_ms" in record:
        p50, p99 = _report.percentiles(record["latencies_ms"])
        shown = f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    elif "unsupported" in record:
        shown = f"not supported: {record['unsupported']}"
    else:
        shown = f"ERROR {record.get('error')}"
    print(f"  [{measurement.key}] rep {rep} {system.name}: {shown}", flush=True)


def collect_info(runner: Runner, systems: list[type[System]]) -> dict[str, Any]:
    """Each system's own `info()`, from a child interpreter like the measurements."""
    found: dict[str, Any] = {}
    for system in systems:
        outcome = runner.call(system, "info", {})
        found[system.name] = outcome.get("info", {"error": outcome.get("error", "?")})
    return found


# Command line.


def _epilog() -> str:
    names = [name for group in KNOWN_SYSTEMS.values() for name in group]
    return (
        f"systems: {', '.join(names)}\n"
        f"workloads: {', '.join(WORKLOADS)}\n\n"
        "--quick: only the drain workload, of 1,000 tasks (not 20,000), one worker process at\n"
        "concurrency 20 (not 20 and 50, one and two processes), on Looplane's systems and\n"
        f"{', '.join(s for s in QUICK_SYSTEMS if not s.startswith('looplane'))}; with\n"
        "--workloads also: enqueue 1,000 single and 5,000 batched (not 5,000 and 20,000),\n"
        "pickup for 2 s (not 5 s), growth 2,000 tasks on 1,000 and 20,000 waiting (not 10,000\n"
        "on 1,000, 100,000 and 1,000,000). Quick figures are too noisy for verdicts."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; exits 2 with a message on a bad one."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts (see below), < 2 min")
    parser.add_argument("--systems", help="comma-separated system names (default: all)")
    parser.add_argument("--workloads", help=f"comma-separated, of {','.join(WORKLOADS)}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--out", type=Path, help="report directory (default: benchmarks/results/<UTC time>/)"
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379",
        help="the server, without a database: the run uses databases 1-7 (default %(default)s)",
    )
    parser.add_argument("--workdir", type=Path, help="where work dirs go (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    problem = _option_problem(args)
    if problem:
        parser.error(problem)
    args.error = parser.error
    return args


def _option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options (but unknown names: see `choose`), or None."""
    problem = redis_url_problem(args.redis)
    if problem:
        return problem
    try:
        _ = urllib.parse.urlsplit(args.redis).port  # reading it checks it
    except ValueError as exc:
        return f"--redis {_redacted(args.redis)}: {exc}"
    if args.reps < 1:
        return "--reps must be at least 1"
    if args.systems is not None and not _names(args.systems):
        return "no systems given: --systems needs at least one name (omit it for all)"
    if args.workloads is not None and not _names(args.workloads):
        return "no workloads given: --workloads needs at least one name (omit it for the default)"
    for option, path in (("--out", args.out), ("--workdir", args.workdir)):
        if path is not None and path.exists() and not path.is_dir():
            return f"{option} {path} is a file: give a directory"
    return None


def _names(text: str) -> list[str]:
    """Comma-separated names, lower-cased, without empty items or repeats."""
    return list(dict.fromkeys(item.strip().lower() for item in text.split(",") if item.strip()))


def choose(args: argparse.Namespace) -> tuple[list[type[System]], dict[str, str], list[str]]:
    """The systems and workloads this run covers, and the reasons systems are out."""
    systems, skipped = discover()
    if args.systems is not None:
        wanted = _names(args.systems)
        valid = [s.name for s in systems] + list(skipped)
        unknown = [name for name in wanted if name not in valid]
        if unknown:
            args.error(f"unknown systems: {', '.join(unknown)}; valid: {', '.join(valid)}")
        systems = [s for s in systems if s.name in wanted]
        skipped = {name: why for name, why in skipped.items() if name in wanted}
    elif args.quick:
        systems = [s for s in systems if s.name in QUICK_SYSTEMS]
        skipped = {name: why for name, why in skipped.items() if name in QUICK_SYSTEMS}
    if args.workloads is not None:
        workloads = _names(args.workloads)
        bad = [name for name in workloads if name not in WORKLOADS]
        if bad:
            args.error(f"unknown workloads: {', '.join(bad)}; valid: {', '.join(WORKLOADS)}")
    else:
        workloads = list(QUICK_WORKLOADS if args.quick else WORKLOADS)
    return systems, skipped, workloads


def check_redis(
    args: argparse.Namespace, systems: list[type[System]], skipped: dict[str, str]
) -> tuple[list[type[System]], bool]:
    """Skip the Redis systems when the server does not answer; whether Redis is up."""
    if not any(s.storage == "redis" for s in systems):
        return systems, False
    problem = redis_problem(args.redis)
    if problem is None:
        return systems, True
    for system in systems:
        if system.storage == "redis":
            skipped[system.name] = problem
    return [s for s in systems if s.storage != "redis"], False


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status is 0 only if every call succeeded."""
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    stop_on_signals()
    systems, skipped, workloads = choose(args)
    with redis_server_lock(args.redis, systems, error=args.error):
        return _run(args, systems, skipped, workloads)


def _run(
    args: argparse.Namespace,
    systems: list[type[System]],
    skipped: dict[str, str],
    workloads: list[str],
) -> int:
    """Run the chosen measurements and write the report; the exit status of `main`."""
    systems, redis_up = check_redis(args, systems, skipped)
    for name, reason in skipped.items():
        print(f"{name}: skipped: {reason}")
    if not systems:
        print("nothing to run", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or BENCHMARKS_DIR / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="looplane-compare-"))
    runner = Runner(workroot, args.redis.rstrip("/"), assign_dbs(systems))
    run = _report.Run(
        started=stamp,
        mode="quick" if args.quick else "full",
        reps=args.reps,
        systems=[_report.describe(s) for s in systems],
        skipped=skipped,
        redis_dbs=runner.dbs,
    )
    redis_url = redis_db_url(runner.redis_base, REDIS_DBS[0]) if redis_up else None
    print(f"systems: {', '.join(s.name for s in systems)}; workloads: {', '.join(workloads)}")
    if args.quick:
        print(_report.QUICK_NOTE)
    measurements = plan(QUICK if args.quick else FULL, workloads)
    try:
        run.machine = _report.machine(redis_url, when="before")
        run.system_info = collect_info(runner, systems)
        for measurement in measurements:
            print(f"{measurement.title}", flush=True)
            run_measurement(runner, measurement, systems, args.reps)
    except Stopped as exc:
        run.interrupted = f"{exc}"
        print(f"{exc}: stopping", file=sys.stderr, flush=True)
    finally:
        _finish(runner, run, measurements, out, own_workroot=args.workdir is None)
    print((out / "report.md").read_text())
    print(f"written: {out / 'results.json'}, {out / 'report.md'}")
    return _exit_status(run)


def _finish(
    runner: Runner,
    run: _report.Run,
    measurements: list[Measurement],
    out: Path,
    *,
    own_workroot: bool,
) -> None:
    """Empty the Redis databases, remove the temporary work dir and write the report."""
    runner.flush_all()
    if own_workroot:
        shutil.rmtree(runner.workroot, ignore_errors=True)
    run.machine.update(_report.machine(None, when="after"))
    run.measurements = [dataclasses.asdict(m) for m in measurements]
    run.records = runner.records
    _report.write(run, out)


def _exit_status(run: _report.Run) -> int:
    failed = _report.failed_calls(run)
    if failed:
        print(f"{failed} call(s) failed: see the report and results.json", file=sys.stderr)
    if run.interrupted:
        return 128 + signal.SIGTERM if "SIGTERM" in run.interrupted else 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
