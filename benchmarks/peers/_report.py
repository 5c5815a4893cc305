"""The report of `benchmarks/compare.py`: machine facts, tables, ratios and the goals.

Every figure of a table is the median over the repetitions of this run, with the range
beside it; ratios divide medians of the same run, never figures of different runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peers.base import System

PACKAGES = (
    "looplane",
    "lmdb",
    "redis",
    "hiredis",
    "huey",
    "arq",
    "saq",
    "streaq",
    "coredis",
    "taskiq",
    "taskiq-redis",
    "dramatiq",
    "pydantic",
)


@dataclasses.dataclass
class Run:
    """Everything `results.json` holds."""

    started: str
    mode: str
    reps: int
    systems: list[dict[str, Any]]
    skipped: dict[str, str]
    redis_dbs: dict[str, int]
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    system_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    measurements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    interrupted: str | None = None
    """Why the run stopped early (``stopped by SIGTERM``), or None when it ran to the end."""


QUICK_NOTE = (
    "Quick mode: the figures are too noisy for verdicts (small counts on a shared machine); "
    "the goals below are indicative only. Judge the goals on a full run."
)


def calls_made(run: Run) -> int:
    """Calls that ran (or began to), not counting systems left out of a measurement."""
    return sum(1 for record in run.records if not record.get("skipped"))


def failed_calls(run: Run) -> int:
    """Calls that ended in an error (not counting unsupported ones)."""
    return sum(1 for record in run.records if "error" in record)


def describe(system: type[System]) -> dict[str, Any]:
    """The class-level facts of a system."""
    return {
        "name": system.name,
        "family": system.family,
        "storage": system.storage,
        "cross_process": system.cross_process,
        "keeps_backlog": system.keeps_backlog,
    }


# Machine facts.


def machine(redis_url: str | None, *, when: str) -> dict[str, Any]:
    """The load now; with ``when="before"`` also the CPU, OS, Python, packages and Redis.

    `redis_url` is one of the run's databases, or None when no Redis system runs.
    """
    facts: dict[str, Any] = {f"loadavg_{when}": Path("/proc/loadavg").read_text().split()[:3]}
    if when != "before":
        return facts
    facts.update(
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        kernel=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=sys.version.split()[0],
        packages=_versions(),
        redis=_redis_facts(redis_url) if redis_url else {},
    )
    return facts


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _redis_facts(url: str) -> dict[str, Any]:
    """Version and persistence settings of the Redis server at `url` (one of the run's dbs)."""
    try:
        import redis

        client: Any = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
        try:
            facts: dict[str, Any] = {"version": client.info("server")["redis_version"]}
            for key in ("appendonly", "appendfsync", "save"):
                facts[key] = client.config_get(key).get(key)
            return facts
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - a report without Redis facts still helps
        return {"error": _cell(f"{type(exc).__name__}: {exc}")}


# Figures.


def percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    """p50 and p99 of one pickup call (nearest rank)."""
    if not latencies_ms:
        return math.nan, math.nan
    ordered = sorted(latencies_ms)
    return _rank(ordered, 0.50), _rank(ordered, 0.99)


def _rank(ordered: list[float], quantile: float) -> float:
    index = max(0, math.ceil(quantile * len(ordered)) - 1)
    return ordered[index]


@dataclasses.dataclass(frozen=True)
class Figure:
    """The reps of one system on one row of a table."""

    values: list[float]
    errors: list[str]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan


@dataclasses.dataclass(frozen=True)
class Table:
    """One table of the report: a figure per system, and which way is better."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    figures: dict[str, Figure]


def tables(run: Run) -> list[Table]:
    """The report's tables: a rate or time per measurement, two per pickup (p50, p99)."""
    found = []
    for measurement in run.measurements:
        key, count = measurement["key"], measurement["count"]
        records = [r for r in run.records if r["measurement"] == key]
        if not records:
            continue  # never reached (an interrupted run)
        if measurement["workload"] == "pickup":
            for label, index in (("p50", 0), ("p99", 1)):
                figures = _figures(records, lambda r, i=index: percentiles(r["latencies_ms"])[i])
                title = f"{measurement['title']}: {label}"
                found.append(Table(f"pickup-{label}", title, "ms", False, figures))
        elif key.startswith("growth-"):
            figures = _figures(records, lambda r: r["seconds"])
            found.append(Table(key, measurement["title"], "s", False, figures))
        else:
            figures = _figures(records, lambda r, n=count: n / r["seconds"])
            found.append(Table(key, measurement["title"], "tasks/s", True, figures))
    return found


def _figures(records: list[dict[str, Any]], value: Any) -> dict[str, Figure]:
    by_system: dict[str, Figure] = {}
    for record in records:
        figure = by_system.setdefault(record["system"], Figure([], []))
        if "seconds" in record or "latencies_ms" in record:
            figure.values.append(value(record))
        else:
            figure.errors.append(record.get("unsupported") or record.get("error") or "?")
    return by_system


def ratio(table: Table, ours: str, peer: str) -> float:
    """How many times better `ours` is than `peer` on this table (>1: ours leads)."""
    mine, theirs = table.figures[ours].median, table.figures[peer].median
    if not mine or not theirs or math.isnan(mine) or math.isnan(theirs):
        return math.nan
    return mine / theirs if table.higher_is_better else theirs / mine


# Markdown.


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "tasks/s":
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _cell(text: str, limit: int = 120) -> str:
    """`text` as one Markdown table cell: its first line, no pipes, at most `limit` chars."""
    lines = str(text).strip().splitlines() or ["?"]
    first = lines[0].replace("|", "/")
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _table_md(table: Table, families: dict[str, str]) -> list[str]:
    better = "higher" if table.higher_is_better else "lower"
    lines = [f"### {table.title}", "", f"{table.unit}, {better} is better.", ""]
    lines += [f"| system | median {table.unit} | min - max | reps |"]
    lines += ["|---|---|---|---|"]
    ranked = sorted(table.figures.items(), key=lambda item: _rank_key(table, item[1]))
    for name, figure in ranked:
        shown = f"**{name}**" if families.get(name) == "looplane" else name
        if figure.values:
            span = (
                f"{_fmt(min(figure.values), table.unit)} - {_fmt(max(figure.values), table.unit)}"
            )
            reps = str(len(figure.values))
            if figure.errors:
                reps += f" ({len(figure.errors)} failed: {_cell(figure.errors[0], 60)})"
            lines.append(f"| {shown} | {_fmt(figure.median, table.unit)} | {span} | {reps} |")
        else:
            lines.append(f"| {shown} | - | {_cell(figure.errors[0])} | 0 |")
    lines.append("")
    return lines + _ratios_md(table, families)


def _rank_key(table: Table, figure: Figure) -> float:
    median = figure.median
    if math.isnan(median):
        return math.inf
    return -median if table.higher_is_better else median


def _ratios_md(table: Table, families: dict[str, str]) -> list[str]:
    measured = [n for n, f in table.figures.items() if f.values]
    ours = [n for n in measured if families.get(n) == "looplane"]
    peers = [n for n in measured if families.get(n) != "looplane"]
    if not ours or not peers:
        return []
    lines = ["Looplane's ratio to each peer (>1: Looplane leads):", ""]
    lines.append("| | " + " | ".join(peers) + " |")
    lines.append("|---" * (len(peers) + 1) + "|")
    for name in ours:
        cells = [f"{ratio(table, name, peer):.2f}" for peer in peers]
        lines.append(f"| **{name}** | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _machine_md(run: Run) -> list[str]:
    facts = run.machine
    redis = facts.get("redis", {})
    packages = ", ".join(f"{k} {v}" for k, v in facts.get("packages", {}).items())
    reps = f"{run.reps} repetition" + ("s alternating between systems" if run.reps > 1 else "")
    if run.interrupted:
        done = f"**interrupted** ({run.interrupted}) after {_calls(calls_made(run))}"
    else:
        done = _calls(calls_made(run))
    return [
        f"- Run {run.started}, **{run.mode} mode**, {reps}; {done}, each in a fresh interpreter.",
        f"- Machine: {facts.get('cpu')}, {facts.get('cores')} cores, {facts.get('kernel')}; "
        f"load average before {' '.join(facts.get('loadavg_before', []))}, after "
        f"{' '.join(facts.get('loadavg_after', []))}.",
        f"- Python {facts.get('python')}; {packages}.",
        _redis_md(redis, run.redis_dbs),
    ]


def _redis_md(redis: dict[str, Any], dbs: dict[str, int]) -> str:
    if not redis:
        return "- Redis: not used (no Redis system ran or Redis was unreachable)."
    if "error" in redis:
        return f"- Redis: facts unavailable ({redis['error']})."
    return (
        f"- Redis {redis.get('version')}: appendonly {redis.get('appendonly')}, appendfsync "
        f"{redis.get('appendfsync')}, save '{redis.get('save')}'; databases {dbs}."
    )


def _info_md(run: Run) -> list[str]:
    lines = ["## Settings per system", ""]
    for name, info in run.system_info.items():
        shown = "; ".join(f"{k}: {_cell(v, 300)}" for k, v in info.items())
        lines.append(f"- **{name}**: {shown}")
    for name, reason in run.skipped.items():
        lines.append(f"- {name}: skipped ({reason})")
    return [*lines, ""]


def markdown(run: Run) -> str:
    """The whole report."""
    families = {s["name"]: s["family"] for s in run.systems}
    storage_of = {s["name"]: s["storage"] for s in run.systems}
    found = tables(run)
    lines = ["# Looplane and its peers, side by side", ""]
    if run.interrupted:
        lines += [
            f"**Interrupted after {_calls(calls_made(run))}** ({run.interrupted}): the figures "
            "cover only the calls that finished; measurements that never ran are left out.",
            "",
        ]
    failed = failed_calls(run)
    if failed:
        lines += [f"**{failed} call(s) failed**: see the tables; tracebacks in results.json.", ""]
    lines += [*_machine_md(run), ""]
    lines += _info_md(run)
    lines += ["## Goals of the issue (this run's ratios)", ""]
    if run.mode == "quick":
        lines += [QUICK_NOTE, ""]
    lines += goals_md(found, storage_of, quick=run.mode == "quick")
    lines += ["## Figures", ""]
    for table in found:
        lines += _table_md(table, families)
    return "\n".join(lines) + "\n"


def write(run: Run, out: Path) -> None:
    """Write ``results.json`` and ``report.md`` into `out`."""
    (out / "results.json").write_text(json.dumps(dataclasses.asdict(run), indent=1) + "\n")
    (out / "report.md").write_text(markdown(run))


# The goals of the issue, judged on this run.


@dataclasses.dataclass(frozen=True)
class Goal:
    """One goal: a measured figure against its target."""

    text: str
    figure: float
    target: float
    at_most: bool = False
    """True when the figure must stay at or under the target (latency, growth)."""

    @property
    def verdict(self) -> str:
        if math.isnan(self.figure):
            return "not measured"
        passed = self.figure <= self.target if self.at_most else self.figure >= self.target
        return "PASS" if passed else "FAIL"


def _by_key(found: list[Table]) -> dict[str, Table]:
    return {table.key: table for table in found}


def _median(found: dict[str, Table], key: str, system: str) -> float:
    table = found.get(key)
    if table is None or system not in table.figures:
        return math.nan
    return table.figures[system].median


def _best_peer(table: Table | None, storage_of: dict[str, str], storage: str) -> str | None:
    """The peer with the best median on `storage` in `table`, or None."""
    if table is None:
        return None
    peers = [
        (figure.median, name)
        for name, figure in table.figures.items()
        if storage_of.get(name) == storage and figure.values and not name.startswith("looplane")
    ]
    if not peers:
        return None
    return max(peers)[1] if table.higher_is_better else min(peers)[1]


def goals(found: list[Table], storage_of: dict[str, str]) -> list[Goal]:
    """The issue's goals, each with this run's figure (NaN when not measured)."""
    tables_by_key = _by_key(found)
    drain = tables_by_key.get("drain-c20-p1")

    def drain_ratio(ours: str, peer: str | None) -> float:
        if drain is None or peer is None or {ours, peer} - set(drain.figures):
            return math.nan
        return ratio(drain, ours, peer)

    fastest_redis = _best_peer(drain, storage_of, "redis")
    stretch = drain_ratio("looplane-lmdb", "huey-sqlite")
    return [
        Goal("LMDB durable drain >= 3x huey-sqlite (c=20, 1 worker)", stretch, 3.0),
        Goal("  stretch: >= 5x", stretch, 5.0),
        Goal(
            "LMDB pickup p50 <= 2 ms",
            _median(tables_by_key, "pickup-p50", "looplane-lmdb"),
            2.0,
            at_most=True,
        ),
        Goal(
            "LMDB pickup p99 <= 10 ms",
            _median(tables_by_key, "pickup-p99", "looplane-lmdb"),
            10.0,
            at_most=True,
        ),
        Goal(
            f"Redis drain >= 1.5x the fastest Redis peer ({fastest_redis or 'none measured'})",
            drain_ratio("looplane-redis", fastest_redis),
            1.5,
        ),
        Goal(
            "Redis pickup p50 <= 1 ms",
            _median(tables_by_key, "pickup-p50", "looplane-redis"),
            1.0,
            at_most=True,
        ),
        Goal(
            "Memory drain >= 1.2x taskiq-memory",
            drain_ratio("looplane-memory", "taskiq-memory"),
            1.2,
        ),
        *_growth_goals(tables_by_key),
        *_scaling_goals(tables_by_key),
    ]


def _growth_goals(found: dict[str, Table]) -> list[Goal]:
    """Time on the largest backlog over time on the smallest, per Looplane system."""
    keys = sorted((k for k in found if k.startswith("growth-")), key=lambda k: int(k[7:]))
    if len(keys) < 2:
        return []
    small, large = keys[0], keys[-1]
    names = [n for n in found[large].figures if n.startswith("looplane")]
    return [
        Goal(
            f"{name}: drain on {int(large[7:]):,} waiting / on {int(small[7:]):,} <= 1.3",
            _median(found, large, name) / _median(found, small, name),
            1.3,
            at_most=True,
        )
        for name in names
    ]


def _scaling_goals(found: dict[str, Table]) -> list[Goal]:
    """Two worker processes over one, at the same concurrency, for LMDB and Redis."""
    goals_found = []
    for concurrency in (20, 50):
        one, two = f"drain-c{concurrency}-p1", f"drain-c{concurrency}-p2"
        for name in ("looplane-lmdb", "looplane-redis"):
            figure = _median(found, two, name) / _median(found, one, name)
            text = f"{name}: 2 worker processes / 1 >= 1.6 (c={concurrency})"
            goals_found.append(Goal(text, figure, 1.6))
    return goals_found


def goals_md(found: list[Table], storage_of: dict[str, str], *, quick: bool = False) -> list[str]:
    """The goals as a table with PASS / FAIL (marked indicative only in quick mode)."""
    verdict = "indicative only (quick mode)" if quick else "verdict"
    lines = [f"| goal | this run | target | {verdict} |", "|---|---|---|---|"]
    for goal in goals(found, storage_of):
        sign = "<=" if goal.at_most else ">="
        figure = "-" if math.isnan(goal.figure) else f"{goal.figure:.2f}"
        shown = goal.verdict.lower() if quick else goal.verdict
        lines.append(f"| {goal.text} | {figure} | {sign} {goal.target:g} | {shown} |")
    return [*lines, ""]


def _calls(count: int) -> str:
    return f"{count} call" + ("" if count == 1 else "s")
