"""Redis storage beyond the contract: fencing against Redis's own ownership gaps, no trimming,
cluster hash tags, wake-ups across clients, unreachable servers and cleanup.

Each test uses a key prefix of its own and deletes it afterwards (design/DELIVERY.md, 3.2 and
pitfalls 11, 16-18 and 20).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from looplane._clock import FakeClock
from looplane.errors import ConfigError, StorageUnavailable
from looplane.result import RedisResultBackend, TaskResult
from looplane.storage import NewTask, QueueCounts
from looplane.storage.redis import _SCRIPTS, RedisStorage
from looplane.task import new_task_id
from tests._rig import drop_redis_prefix
from tests.conftest import REDIS_MARKS, REDIS_URL, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = REDIS_MARKS


def new_task(
    *, priority: int = 0, delay_s: float = 0.0, queue: str = "default", max_attempts: int = 3
) -> NewTask:
    return NewTask(
        task_id=new_task_id(),
        payload=b"payload",
        max_attempts=max_attempts,
        queue=queue,
        priority=priority,
        delay_s=delay_s,
    )


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    name = f"lqtest-{uuid.uuid4().hex}"
    yield name
    assert REDIS_URL
    await drop_redis_prefix(REDIS_URL, name)


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at the keys the storage wrote."""
    assert REDIS_URL
    redis_client = aioredis.Redis.from_url(REDIS_URL)
    yield redis_client
    await redis_client.aclose()


@pytest.fixture
async def open_storage(prefix: str) -> AsyncIterator[Callable[..., RedisStorage]]:
    """Opens storages on this test's prefix, as separate processes would; closes them all."""
    opened: list[RedisStorage] = []

    def opener(**options: Any) -> RedisStorage:
        assert REDIS_URL
        storage = RedisStorage(REDIS_URL, queue_prefix=prefix, **options)
        opened.append(storage)
        return storage

    yield opener
    for storage in opened:
        await storage.close()


async def keys_of(client: aioredis.Redis, prefix: str) -> list[str]:
    return sorted([key.decode() async for key in client.scan_iter(match=f"{prefix}:*")])


async def test_stale_holder_cannot_ack_a_task_another_consumer_reclaimed(
    open_storage: Callable[..., RedisStorage], client: aioredis.Redis
) -> None:
    """XACK does not check the consumer; the storage's token must (pitfall 11)."""
    clock = FakeClock()
    first, second = open_storage(clock=clock), open_storage(clock=clock)
    assert first.consumer_name != second.consumer_name
    await first.enqueue([new_task()])
    stale = (await first.claim(1))[0]
    clock.advance(stale.lease_s + 1)
    current = (await second.claim(1))[0]

    assert await first.ack(stale) is False
    assert await first.renew([stale]) == [False]
    assert await first.release(stale) is False
    assert await first.bury(stale, reason="late") is False

    stream = first.key("default", "p0")
    assert await client.xlen(stream) == 1
    assert (await client.xpending(stream, "lq"))["pending"] == 1
    assert await second.counts() == QueueCounts(leased=1)
    assert await second.ack(current) is True
    assert await client.xlen(stream) == 0
    assert (await client.xpending(stream, "lq"))["pending"] == 0


async def test_streams_are_never_trimmed_and_hold_only_ready_and_leased_tasks(
    open_storage: Callable[..., RedisStorage], client: aioredis.Redis
) -> None:
    """MAXLEN/XTRIM would drop unacked entries silently (pitfall 16); acks XDEL instead."""
    storage = open_storage()
    await storage.enqueue([new_task() for _ in range(50)])
    claims = await storage.claim(20)
    for claim in claims[:10]:
        assert await storage.ack(claim)
    for claim in claims[10:15]:
        assert await storage.release(claim)

    stream = storage.key("default", "p0")
    assert await client.xlen(stream) == 40
    assert (await client.xpending(stream, "lq"))["pending"] == 5
    assert await storage.counts() == QueueCounts(ready=35, leased=5)
    # Only the bell stream, which carries wake-ups and no tasks, is ever cut back.
    for name, body in _SCRIPTS.items():
        assert "MAXLEN" not in body, name
        assert "XTRIM" not in body, name


async def test_every_key_of_a_queue_shares_its_hash_tag_and_slot(
    open_storage: Callable[..., RedisStorage],
    client: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scripts touch only the keys they are passed, all in one slot (pitfall 20)."""
    storage = open_storage()
    passed: list[list[str]] = []
    call = AsyncScript.__call__

    async def recording(script: AsyncScript, keys: Any = None, args: Any = None) -> Any:
        passed.append([str(key) for key in keys])
        return await call(script, keys, args)

    monkeypatch.setattr(AsyncScript, "__call__", recording)
    queue = "emails"
    await storage.enqueue([new_task(queue=queue, priority=p) for p in (0, 3, 0)])
    await storage.enqueue([new_task(queue=queue, delay_s=60)])
    claims = await storage.claim(3, queue=queue)
    await storage.renew(claims)
    await storage.bury(claims[0], reason="bad")
    await storage.release(claims[1], delay_s=5)
    await storage.ack(claims[2])
    await storage.counts(queue=queue)
    await storage.tasks(queue=queue)
    assert await storage.requeue_dead(claims[0].task_id)
    await storage.purge(queue=queue)
    await storage.purge_dead()

    tag = f"{{{queue}}}"
    script_keys = {key for keys in passed for key in keys}
    stored = set(await keys_of(client, prefix))
    assert stored - {f"{prefix}:queues"} <= script_keys
    assert all(tag in key for key in script_keys)
    assert {key_slot(key.encode()) for key in script_keys} == {key_slot(queue.encode())}


async def test_watcher_wakes_for_a_task_sent_by_another_client(
    open_storage: Callable[..., RedisStorage],
) -> None:
    consumer_side, producer_side = open_storage(), open_storage()
    assert await consumer_side.claim(10) == []
    with contextlib.closing(consumer_side.watch()) as watcher:
        waiting = asyncio.ensure_future(watcher.wait(30))
        await asyncio.sleep(0.05)
        assert not waiting.done()

        await producer_side.enqueue([new_task()])

        await asyncio.wait_for(waiting, timeout=10)
    assert len(await consumer_side.claim(10)) == 1


async def test_watcher_ignores_changes_a_claim_already_saw(
    open_storage: Callable[..., RedisStorage],
) -> None:
    storage = open_storage()
    await storage.enqueue([new_task()])
    assert len(await storage.claim(10)) == 1
    loop = asyncio.get_running_loop()
    with contextlib.closing(storage.watch()) as watcher:
        started = loop.time()

        await watcher.wait(0.2)

        assert loop.time() - started >= 0.15


async def test_cancelled_wait_leaves_the_connection_usable(
    open_storage: Callable[..., RedisStorage],
) -> None:
    """A blocked read is never cancelled mid-flight (pitfall 18); the next wait reuses it."""
    storage = open_storage()
    with contextlib.closing(storage.watch()) as watcher:
        waiting = asyncio.ensure_future(watcher.wait(30))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

        await storage.enqueue([new_task()])

        await asyncio.wait_for(watcher.wait(30), timeout=10)
    assert len(await storage.claim(10)) == 1


async def test_unreachable_server_raises_storage_unavailable_naming_host_not_password() -> None:
    storage = RedisStorage("redis://user:s3cr3t-pw@127.0.0.1:1/0")
    try:
        with pytest.raises(StorageUnavailable, match=r"Redis at redis://user:\*+@127\.0\.0\.1:1/0"):
            await storage.enqueue([new_task()])
        with pytest.raises(StorageUnavailable) as caught:
            await storage.claim(1)
        assert "s3cr3t-pw" not in str(caught.value)
        assert caught.value.backend == "redis"
    finally:
        await storage.close()


async def test_purge_and_acks_leave_no_per_task_data(
    open_storage: Callable[..., RedisStorage], client: aioredis.Redis
) -> None:
    storage = open_storage()
    await storage.enqueue([new_task(priority=p) for p in (0, 1, 2)])
    await storage.enqueue([new_task(delay_s=60), new_task(queue="other")])
    claims = await storage.claim(2)
    assert await storage.ack(claims[0])
    assert await storage.bury(claims[1], reason="bad")

    assert await storage.purge() == 2
    assert await storage.purge(queue="other") == 1
    assert await storage.purge_dead() == 1

    for queue in ("default", "other"):
        assert await client.hlen(storage.key(queue, "task")) == 0
        assert await client.hlen(storage.key(queue, "pay")) == 0
        assert await client.zcard(storage.key(queue, "all")) == 0
        for name in ("p0", "p1", "p2") if queue == "default" else ("p0",):
            assert await client.xlen(storage.key(queue, name)) == 0
            assert (await client.xpending(storage.key(queue, name), "lq"))["pending"] == 0
        assert await storage.counts(queue=queue) == QueueCounts()


async def test_queue_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^queue_prefix must be non-empty without braces"):
        RedisStorage("redis://127.0.0.1:6379/0", queue_prefix="a{b}")


async def test_lease_follows_the_claiming_storage_and_the_task_timeout(
    open_storage: Callable[..., RedisStorage],
) -> None:
    short, long = open_storage(lease_s=5), open_storage(lease_s=50)
    await short.enqueue([new_task(), new_task()])
    await short.enqueue([NewTask(task_id=new_task_id(), payload=b"x", max_attempts=1, timeout_s=2)])

    leases = [c.lease_s for c in await long.claim(1)] + [c.lease_s for c in await short.claim(2)]

    assert leases == [50.0, 5.0, 7.0]


async def test_more_concurrent_calls_than_connections_wait_for_one(
    open_storage: Callable[..., RedisStorage],
) -> None:
    """A busy pool must make calls wait, not fail with "too many connections": a failed ack
    or store would strand a leased task until its lease ran out."""
    storage = open_storage(max_connections=2)
    await asyncio.gather(*(storage.enqueue([new_task()]) for _ in range(200)))
    claims = await storage.claim(200)
    assert len(claims) == 200
    assert all(await asyncio.gather(*(storage.ack(claim) for claim in claims)))
    assert (await storage.counts()).ready == 0


async def kill_clients_named(client: aioredis.Redis, name: str) -> int:
    """Drop every server connection whose client name is `name`, as a network blip would."""
    killed = 0
    for entry in await client.client_list():
        if entry.get("name") == name:
            await client.client_kill_filter(_id=entry["id"])
            killed += 1
    return killed


async def test_storage_and_results_survive_dropped_connections(
    prefix: str, client: aioredis.Redis
) -> None:
    """A dropped connection (a Redis restart, a network blip) costs a retry, not an error."""
    assert REDIS_URL
    name = f"lqtest-{uuid.uuid4().hex[:8]}"
    url = f"{REDIS_URL}?client_name={name}"
    storage = RedisStorage(url, queue_prefix=prefix)
    results = RedisResultBackend(url, prefix=prefix)
    try:
        await storage.enqueue([new_task()])
        assert await kill_clients_named(client, name) >= 1
        [claim] = await storage.claim(10)
        await results.store(TaskResult(task_id=claim.task_id, func_name="t", success=True, value=1))
        assert await kill_clients_named(client, name) >= 1
        assert await storage.ack(claim)
        assert (await results.wait(claim.task_id, timeout=5)).value == 1
    finally:
        await storage.close()
        await results.close()


# Coalesced calls and leases handed over by a watcher's read --------------------------------


def count_calls(monkeypatch: pytest.MonkeyPatch, storage: RedisStorage) -> dict[str, int]:
    """Count the script calls `storage` makes through its scripts, by script name."""
    calls: dict[str, int] = {}
    names = {id(script): name for name, script in storage._scripts.items()}
    call = AsyncScript.__call__

    async def counting(script: AsyncScript, keys: Any = None, args: Any = None) -> Any:
        if (name := names.get(id(script))) is not None:
            calls[name] = calls.get(name, 0) + 1
        return await call(script, keys, args)

    monkeypatch.setattr(AsyncScript, "__call__", counting)
    return calls


async def test_concurrent_acks_share_one_script_call_and_each_checks_its_token(
    open_storage: Callable[..., RedisStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage()
    await storage.enqueue([new_task() for _ in range(3)])
    first, second, third = await storage.claim(3)
    stale = dataclasses.replace(second, token=b"1:default")
    calls = count_calls(monkeypatch, storage)

    acked = await asyncio.gather(
        storage.ack(first), storage.ack(stale), storage.ack(third), storage.ack(first)
    )

    assert list(acked) == [True, False, True, False]
    assert calls == {"ack": 1}
    assert await storage.counts() == QueueCounts(leased=1)


async def test_concurrent_sends_share_one_script_call(
    open_storage: Callable[..., RedisStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage()
    await storage.enqueue([new_task()])
    calls = count_calls(monkeypatch, storage)

    await asyncio.gather(*(storage.enqueue([new_task()]) for _ in range(15)))

    assert calls == {"enqueue": 1}
    assert await storage.counts() == QueueCounts(ready=16)


async def test_cancelled_ack_that_was_not_sent_changes_nothing(
    open_storage: Callable[..., RedisStorage],
) -> None:
    storage = open_storage()
    await storage.enqueue([new_task()])
    [claim] = await storage.claim(1)
    acking = asyncio.ensure_future(storage.ack(claim))
    await asyncio.sleep(0)
    acking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acking

    assert await storage.counts() == QueueCounts(leased=1)
    assert await storage.ack(claim)


async def test_watcher_read_leases_a_task_sent_to_an_idle_consumer(
    open_storage: Callable[..., RedisStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim rides behind the blocking read, so the wake-up brings the task along."""
    consumer_side, producer_side = open_storage(), open_storage()
    assert await consumer_side.claim(10) == []
    calls = count_calls(monkeypatch, consumer_side)
    with contextlib.closing(consumer_side.watch()) as watcher:
        waiting = asyncio.ensure_future(watcher.wait(30))
        await asyncio.sleep(0.05)

        await producer_side.enqueue([new_task()])
        await asyncio.wait_for(waiting, timeout=10)

        [claim] = await consumer_side.claim(10)
    assert calls == {}
    assert claim.attempt == 1
    assert await consumer_side.counts() == QueueCounts(leased=1)
    assert await consumer_side.ack(claim)


async def test_claim_gives_back_what_a_watcher_leased_beyond_its_limit(
    open_storage: Callable[..., RedisStorage],
) -> None:
    consumer_side, producer_side = open_storage(), open_storage()
    assert await consumer_side.claim(10) == []
    with contextlib.closing(consumer_side.watch()) as watcher:
        waiting = asyncio.ensure_future(watcher.wait(30))
        await asyncio.sleep(0.05)
        await producer_side.enqueue([new_task() for _ in range(3)])
        await asyncio.wait_for(waiting, timeout=10)

        assert len(await consumer_side.claim(1)) == 1

    async def two_ready_again() -> None:
        assert await producer_side.counts() == QueueCounts(ready=2, leased=1)

    await eventually(two_ready_again)
    assert [c.attempt for c in await producer_side.claim(10)] == [1, 1]


async def test_watcher_gives_back_what_its_read_leased_after_the_wait_ended(
    open_storage: Callable[..., RedisStorage],
) -> None:
    """A read that outlives its wait must not keep tasks leased to nobody."""
    consumer_side, producer_side = open_storage(), open_storage()
    assert await consumer_side.claim(10) == []
    with contextlib.closing(consumer_side.watch()) as watcher:
        await watcher.wait(0.05)

        await producer_side.enqueue([new_task()])

        async def ready_again() -> None:
            assert await producer_side.counts() == QueueCounts(ready=1)

        await eventually(ready_again)
    [claim] = await producer_side.claim(10)
    assert claim.attempt == 1


async def test_closing_a_watcher_gives_back_what_no_claim_took(
    open_storage: Callable[..., RedisStorage],
) -> None:
    consumer_side, producer_side = open_storage(), open_storage()
    assert await consumer_side.claim(10) == []
    watcher = consumer_side.watch()
    waiting = asyncio.ensure_future(watcher.wait(30))
    await asyncio.sleep(0.05)
    await producer_side.enqueue([new_task()])
    await asyncio.wait_for(waiting, timeout=10)

    watcher.close()

    async def ready_again() -> None:
        assert await producer_side.counts() == QueueCounts(ready=1)

    await eventually(ready_again)
    assert [c.attempt for c in await producer_side.claim(10)] == [1]


async def test_close_during_calls_under_way_leaves_no_connection_open(prefix: str) -> None:
    """A call under way when the storage closes (a claim its cancelled consumer left
    running, connecting or mid-reply) must not open a connection that nobody closes: a
    stopping worker closes every connection, or the garbage collector later warns about
    an unclosed socket in whatever code runs then."""

    async def close_during_claim(passes: int) -> None:
        assert REDIS_URL
        storage = RedisStorage(REDIS_URL, queue_prefix=prefix)
        claiming = asyncio.ensure_future(storage.claim(1))
        for _ in range(passes):
            await asyncio.sleep(0)
        await storage.close()
        with contextlib.suppress(StorageUnavailable):
            await claiming

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        # Closed after each number of loop passes: so at every step of the claim.
        for passes in range(16):
            await close_during_claim(passes)
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
