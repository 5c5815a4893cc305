"""Send the worker example's tasks over a real folder and print every result.

Run from the repository root, with ``looplane worker -A examples.myapp.tasks`` running:

    python examples/myapp/enqueue.py [--db-path /tmp/looplane] [--out-dir DIR] [FOLDER]

For every file under FOLDER (default: the repository's examples/ folder) it sends a word
count and a SHA-256 digest, then one task that writes a word-count report of the whole
folder, and once the report exists, a flaky task that publishes it (it fails twice, then
succeeds). Tasks go to the LMDB storage at --db-path, where the worker leases them and
stores their results; this script waits for each final result there. It exits 0 when every
final result arrived and succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a script, this file's folder is on sys.path, not the repository root; the root is
# needed to import the tasks under the same module name the worker uses.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from examples.myapp.tasks import (  # noqa: E402 - needs the sys.path entry above
    count_words,
    file_digest,
    list_files,
    publish_report,
    write_report,
)
from looplane import (  # noqa: E402 - after the sys.path entry, like the tasks
    LMDBResultBackend,
    LMDBStorage,
    StorageProducer,
    Task,
    TaskResult,
    TaskTimeout,
)

if TYPE_CHECKING:
    from looplane.broker.producer import Call

DEFAULT_DB_PATH = "/tmp/looplane"
DEFAULT_FOLDER = REPO_ROOT / "examples"
DEFAULT_OUT_DIR = Path(tempfile.gettempdir()) / "looplane-report"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--db-path", default=DEFAULT_DB_PATH, help="the worker's --db-path")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="report folder")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait in all")
    return parser.parse_args(argv)


class Waiter:
    """Waits for final results within one deadline and prints every attempt."""

    def __init__(self, results: LMDBResultBackend, timeout_s: float) -> None:
        self.results = results
        self.deadline = time.monotonic() + timeout_s
        self.missing: list[Task] = []
        self.failed: list[TaskResult] = []

    async def wait(self, task: Task, label: str = "") -> TaskResult | None:
        """The task's final result, after printing each of its attempts; None if late."""
        try:
            remaining = max(self.deadline - time.monotonic(), 0.0)
            final = await self.results.wait(task.id, timeout=remaining)
        except TaskTimeout:
            self.missing.append(task)
            print(f"{task.name:<15} no final result in time  {label}".rstrip())
            return None
        for result in await self.results.attempts(task.id):
            print(describe(result, label))
        if not final.success:
            self.failed.append(final)
        return final


def describe(result: TaskResult, label: str) -> str:
    """One line: task name, attempt, then the value or the error."""
    attempt = f"attempt {result.attempt}/{result.max_retries + 1}"
    if result.success:
        outcome = f"ok     {show(result.func_name, result.value, label)}"
    else:
        outcome = f"error  {result.error}  {label}".rstrip()
    return f"{result.func_name:<15} {attempt}  {outcome}"


def show(name: str, value: Any, label: str) -> str:
    """A task's value as a short phrase."""
    match name:
        case "count_words":
            return f"{value} words in {label}"
        case "file_digest":
            return f"sha256 {value[:16]}... of {label}"
        case "write_report":
            return f"{value['files']} files, {value['words']} words -> {value['report']}"
        case _:
            return str(value)


async def send_file_tasks(producer: StorageProducer, folder: Path) -> list[tuple[Task, str]]:
    """Send a word count and a digest of every file under `folder`, in one write."""
    files = list_files(folder)
    calls: list[Call] = [(count_words, (str(f),), {}) for f in files]
    calls += [(file_digest, (str(f),), {}) for f in files]
    tasks = await producer.send_batch(calls)
    labels = [str(f.relative_to(folder)) for f in files] * 2
    return list(zip(tasks, labels, strict=True))


async def run(folder: Path, db_path: str, out_dir: Path, timeout_s: float) -> int:
    async with LMDBStorage(db_path) as storage, LMDBResultBackend(db_path) as results:
        producer = StorageProducer(storage)
        sent = await send_file_tasks(producer, folder)
        report = await producer.send(write_report, str(folder), str(out_dir / "report.md"))
        sent.append((report, ""))
        print(f"sent {len(sent)} tasks to {db_path} for {folder}; waiting for results")

        waiter = Waiter(results, timeout_s)
        for task, label in sent:
            await waiter.wait(task, label)
        summary = await results.get(report.id)
        if summary is not None and summary.success:
            # The flaky step needs the report, so it is sent only once the report exists.
            published = await producer.send(
                publish_report, summary.value["report"], str(out_dir / "published")
            )
            sent.append((published, ""))
            await waiter.wait(published)
    return finish(waiter, total=len(sent), db_path=db_path)


def finish(waiter: Waiter, *, total: int, db_path: str) -> int:
    """Print the tally and return the exit status."""
    arrived = total - len(waiter.missing)
    succeeded = arrived - len(waiter.failed)
    print(f"{arrived} of {total} final results arrived, {succeeded} succeeded")
    if waiter.missing:
        print(
            f"{len(waiter.missing)} results did not arrive in time; the tasks stay queued in "
            f"{db_path} until a worker runs them:\n"
            f"  looplane worker -A examples.myapp.tasks --storage lmdb --db-path {db_path}",
            file=sys.stderr,
        )
    return 0 if arrived == total and succeeded == total else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.folder.resolve()
    if not folder.is_dir():
        print(f"{folder} is not a folder", file=sys.stderr)
        return 2
    return asyncio.run(run(folder, args.db_path, args.out_dir.resolve(), args.timeout))


if __name__ == "__main__":
    sys.exit(main())
