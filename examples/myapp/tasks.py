"""Task functions of the worker example: they count, hash and report on real local files.

Run a worker for them from the repository root with

    looplane worker -A examples.myapp.tasks --storage lmdb

and send them work with ``python examples/myapp/enqueue.py`` in another terminal.

The producer imports this module too, so both sides register the same task names.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

from looplane import Backoff, BackoffKind, current_task, register_task

__all__ = [
    "FLAKY_FAILURES",
    "MAX_FILE_BYTES",
    "count_words",
    "file_digest",
    "list_files",
    "publish_report",
    "write_report",
]

# Files larger than this are left out, so pointing the example at a folder that holds an
# LMDB map (sparse, but 1 GiB by default) does not read gigabytes.
MAX_FILE_BYTES = 1024 * 1024

# `publish_report` fails on this many attempts before it succeeds. The attempt number is
# kept in storage, so the count holds across worker restarts and several workers.
FLAKY_FAILURES = 2


def list_files(folder: str | Path) -> list[Path]:
    """The files under `folder` the example works on, sorted.

    Hidden files and folders, ``__pycache__`` and files over `MAX_FILE_BYTES` are skipped.
    """
    root = Path(folder)
    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") or part == "__pycache__" for part in parts):
            continue
        if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
            found.append(path)
    return found


def _words_in(path: Path) -> int:
    # Undecodable bytes count as text rather than failing the task: a folder of notes may
    # hold the odd binary file.
    return len(path.read_text(encoding="utf-8", errors="replace").split())


@register_task(timeout=30)
async def count_words(path: str) -> int:
    """Count the whitespace-separated words of a text file (read in a thread)."""
    return await asyncio.to_thread(_words_in, Path(path))


@register_task(timeout=30)
def file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes, as hex (a plain function: it runs in a thread)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(64 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


@register_task(timeout=60)
def write_report(folder: str, out_path: str) -> dict[str, str | int]:
    """Count the words of every file under `folder` and write a report to `out_path`.

    The report is JSON when `out_path` ends in ``.json`` and a Markdown table otherwise.
    Returns a summary: the folder, the number of files and words, and the report's path.
    """
    root = Path(folder)
    counts = {str(p.relative_to(root)): _words_in(p) for p in list_files(root)}
    total = sum(counts.values())

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        text = json.dumps({"folder": str(root), "files": counts, "words": total}, indent=2)
    else:
        rows = [f"| {name} | {words} |" for name, words in counts.items()]
        head = [f"# Words in {root}", "", "| file | words |", "|---|---:|"]
        text = "\n".join([*head, *rows, "", f"{len(counts)} files, {total} words."])
    out.write_text(text + "\n", encoding="utf-8")
    return {"folder": str(root), "files": len(counts), "words": total, "report": str(out)}


@register_task(retries=3, backoff=Backoff(kind=BackoffKind.FIXED, base_s=0.5, jitter=False))
async def publish_report(report_path: str, outbox: str) -> str:
    """Copy a report into an outbox folder, failing the first two attempts on purpose.

    It stands for an upload to a service that is busy at first: attempts 1 and 2 raise
    ``ConnectionError``, and the retries (0.5 s apart) let attempt 3 succeed.
    Returns the published file's path.
    """
    attempt = current_task().attempt
    if attempt <= FLAKY_FAILURES:
        raise ConnectionError(f"outbox busy on attempt {attempt}")
    target = Path(outbox) / Path(report_path).name
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(shutil.copyfile, report_path, target)
    return str(target)
