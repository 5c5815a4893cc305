"""A minimal worker process for end-to-end tests, until the real CLI exists.

Usage: ``python -m tests.e2e.worker --path P [--concurrency N] [--lease S] [--grace S]
[--app MODULE ...]``. It prints ``ready`` once the orchestrator runs and ``stopping`` when a
SIGTERM or SIGINT arrives, then stops gracefully and exits 0. If the environment variable
``LOOPLANE_TEST_CONSUMER_ID`` is set, it is the consumer id.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys

import tests.e2e.tasks  # noqa: F401 - registers the e2e task functions
from looplane import LMDBResultBackend, LMDBStorage, Orchestrator, StorageConsumer

CONSUMER_ID_ENV = "LOOPLANE_TEST_CONSUMER_ID"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.worker")
    parser.add_argument("--path", required=True, help="LMDB directory")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--lease", type=float, default=30.0, help="storage lease_s")
    parser.add_argument("--grace", type=float, default=30.0, help="orchestrator grace_s")
    parser.add_argument("--app", action="append", default=[], help="module to import (repeatable)")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    for module in args.app:
        importlib.import_module(module)
    storage = LMDBStorage(args.path, lease_s=args.lease)
    results = LMDBResultBackend(args.path)
    consumer = StorageConsumer(storage, consumer_id=os.environ.get(CONSUMER_ID_ENV) or None)
    orchestrator = Orchestrator(consumer, results, args.concurrency, grace_s=args.grace)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await orchestrator.start()
    print("ready", flush=True)  # noqa: T201 - the parent test waits for this line

    await stop.wait()
    print("stopping", flush=True)  # noqa: T201 - tells the parent the signal arrived
    await orchestrator.stop(wait=True)
    await consumer.close()
    await results.close()
    await storage.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; return the exit code."""
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
