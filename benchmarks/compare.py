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

Redis: only databases 1-7 of ``--redis`` are used, each flushed before a call; the rest belong
to users, tests and other jobs on this server.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS_DIR))

from peers import _report  # noqa: E402 - needs the path above
from peers.base import WORKLOADS, System  # noqa: E402 - needs the path above

REDIS_DBS = range(1, 8)
"""The only Redis databases this script may flush."""

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
            skipped[path.stem] = f"cannot import: {exc}"
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
    """Run one workload call and print its outcome as one JSON line."""
    module = importlib.import_module(spec["module"])
    system_class = next(s for s in module.SYSTEMS if s.name == spec["system"])
    system = system_class(workdir=spec["workdir"], redis_url=spec["redis_url"])
    try:
        outcome = _call(system, spec)
    except NotImplementedError as exc:
        outcome = {"unsupported": str(exc) or "not supported"}
    except Exception as exc:  # noqa: BLE001 - reported to the runner, which carries on
        outcome = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        if not spec.get("keep"):
            system.cleanup()
    print(json.dumps(outcome), flush=True)


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
        return f"{self.redis_base}/{self.dbs.get(system.name, REDIS_DBS[-1])}"

    def reset(self, system: type[System]) -> None:
        """Give `system` an empty work dir and, on Redis, an empty database."""
        workdir = self.workdir(system)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        if system.name in self.dbs:
            _flush_redis(self.redis_base, self.dbs[system.name])

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
        return _run_child(spec, timeout_s)


def _run_child(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit {done.returncode}, no outcome: {done.stderr[-2000:]}"}
    outcome: dict[str, Any] = json.loads(lines[-1])
    return outcome


def _flush_redis(base: str, db: int) -> None:
    """Empty database `db` of the server at `base` (1-7 only), if the driver is installed."""
    if db not in REDIS_DBS:
        raise ValueError(f"refusing to flush Redis database {db}: only 1-7 are ours")
    try:
        import redis
    except ImportError:  # pragma: no cover - only systems without Redis can run then
        return
    client = redis.Redis.from_url(f"{base}/{db}")
    try:
        client.flushdb()
    except redis.ConnectionError:
        pass
    finally:
        client.close()


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under 2 minutes")
    parser.add_argument("--systems", help="comma-separated system names (default: all)")
    parser.add_argument("--workloads", help=f"comma-separated, of {','.join(WORKLOADS)}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--out", type=Path, help="report directory")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="server, no db")
    parser.add_argument("--workdir", type=Path, help="where work dirs go (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def choose(args: argparse.Namespace) -> tuple[list[type[System]], dict[str, str], list[str]]:
    """The systems and workloads this run covers, and the reasons systems are out."""
    systems, skipped = discover()
    if args.systems:
        wanted = set(args.systems.split(","))
        unknown = wanted - {s.name for s in systems} - set(skipped)
        if unknown:
            raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))}")
        systems = [s for s in systems if s.name in wanted]
    elif args.quick:
        systems = [s for s in systems if s.name in QUICK_SYSTEMS]
    if args.workloads:
        workloads = args.workloads.split(",")
        bad = set(workloads) - set(WORKLOADS)
        if bad:
            raise SystemExit(f"unknown workloads: {', '.join(sorted(bad))}")
    else:
        workloads = list(QUICK_WORKLOADS if args.quick else WORKLOADS)
    return systems, skipped, workloads


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    if args.reps < 1:
        raise SystemExit("--reps must be at least 1")
    systems, skipped, workloads = choose(args)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
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
    run.machine = _report.machine(args.redis, when="before")
    print(f"systems: {', '.join(s.name for s in systems)}; workloads: {', '.join(workloads)}")
    run.system_info = collect_info(runner, systems)
    measurements = plan(QUICK if args.quick else FULL, workloads)
    try:
        for measurement in measurements:
            print(f"{measurement.title}", flush=True)
            run_measurement(runner, measurement, systems, args.reps)
    finally:
        run.machine.update(_report.machine(args.redis, when="after"))
        run.measurements = [dataclasses.asdict(m) for m in measurements]
        run.records = runner.records
        _report.write(run, out)
        if args.workdir is None:
            shutil.rmtree(workroot, ignore_errors=True)
    print((out / "report.md").read_text())
    print(f"written: {out / 'results.json'}, {out / 'report.md'}")


if __name__ == "__main__":
    main()
