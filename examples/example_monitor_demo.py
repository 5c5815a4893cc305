"""A worker and the live monitor in one process, on the in-memory backend.

Run it in a terminal, from the repository root:

    python examples/example_monitor_demo.py [--seconds N]

It sends a steady stream of tasks (quick ones, slow ones, flaky ones that succeed on a
retry, and card charges that sometimes fail for good and end up dead-lettered), runs them
with a worker of 8 slots, and shows `looplane monitor`'s screen over them. Page with
→ j Space / ← k / g / G; q quits (or, with --seconds N, it quits by itself after N seconds).

A memory store is only visible inside its own process, so `looplane monitor --storage memory`
refuses to run; this is the way to watch one. The monitor is `run_monitor`, the same
coroutine the command runs.
"""

import argparse
import asyncio
import contextlib
import itertools
import logging
import random

from rich.console import Console

import looplane
from looplane import Retry, current_task
from looplane.cli.monitor import run_monitor
from looplane.cli.monitor_keys import terminal_session
from looplane.cli.monitor_paging import Key
from looplane.factory import App
from looplane.task import register_task

SEND_INTERVAL_S = 0.15


@register_task(name="demo.resize_image")
async def resize_image(name: str, width: int) -> str:
    await asyncio.sleep(random.uniform(0.05, 0.4))
    return f"{name}@{width}px"


@register_task(name="demo.render_report", timeout=20)
async def render_report(month: str) -> dict[str, object]:
    await asyncio.sleep(random.uniform(2.0, 5.0))
    return {"month": month, "pages": random.randint(3, 40)}


@register_task(name="demo.sync_inventory", retries=3, backoff="fixed")
async def sync_inventory(store: int) -> int:
    await asyncio.sleep(random.uniform(0.1, 0.3))
    if current_task().attempt < 3 and random.random() < 0.7:
        raise Retry(f"store {store} is busy", delay_s=1.5)
    return random.randint(0, 500)


@register_task(name="demo.charge_card", retries=1, backoff="fixed")
async def charge_card(order: int, cents: int) -> str:
    await asyncio.sleep(random.uniform(0.05, 0.2))
    if order % 7 == 0:
        raise ValueError(f"card declined for order {order}")
    return f"charged {cents / 100:.2f} for order {order}"


@register_task(name="demo.send_email")
def send_email(to: str) -> bool:  # a plain function: it runs in a thread
    return "@" in to


async def send_forever(app: App) -> None:
    """Send one task every `SEND_INTERVAL_S` seconds, in a lively mix."""
    for n in itertools.count(1):
        choice = random.random()
        if choice < 0.35:
            await app.producer.send(resize_image, f"photo-{n}.jpg", random.choice([320, 640]))
        elif choice < 0.45:
            await app.producer.send(render_report, f"2025-{n % 12 + 1:02d}")
        elif choice < 0.65:
            await app.producer.send(sync_inventory, n % 9)
        elif choice < 0.85:
            await app.producer.send(charge_card, n, random.randint(500, 20_000))
        else:
            await app.producer.send(send_email, f"user{n}@example.com")
        await asyncio.sleep(SEND_INTERVAL_S)


async def main(seconds: float | None) -> None:
    # The screen belongs to the monitor: a log line written to the terminal would land in
    # the middle of the table, so Looplane's log records are dropped here.
    logging.getLogger("looplane").addHandler(logging.NullHandler())
    console = Console()
    keys: asyncio.Queue[Key] = asyncio.Queue()
    if seconds is not None:
        asyncio.get_running_loop().call_later(seconds, keys.put_nowait, Key.QUIT)

    async with looplane.from_config(storage="memory", worker__concurrency=8) as app:
        stop, force = asyncio.Event(), asyncio.Event()
        worker = asyncio.create_task(app.run_worker(stop, force))
        sender = asyncio.create_task(send_forever(app))
        try:
            with terminal_session(console, keys):
                await run_monitor(app, console, keys)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            # Quit at once: tasks still running go back to the queue, which dies with us.
            stop.set()
            force.set()
            await worker
        counts = await app.storage.counts()
        finished = await app.result_backend.results()
    print(f"monitor closed; {len(finished)} results stored, {counts.ready} tasks still queued")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=None, help="quit by itself after this many seconds"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args().seconds))
