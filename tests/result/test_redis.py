"""The Redis result backend beyond the contract: waits across processes, key expiry, errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import sys
import time
import traceback
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import pytest
from redis.commands.core import AsyncScript

from looplane.errors import ConfigError, StorageError, StorageUnavailable, TaskTimeout
from looplane.result.base import DEFAULT_RESULT_TTL_S, TaskResult
from looplane.result.redis import RedisResultBackend
from looplane.task import new_task_id
from tests.result.test_backends import delete_prefix, make_result, new_id, redis_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from multiprocessing.sharedctypes import Synchronized
    from pathlib import Path


TTL_S = 1.0
SLACK_S = 0.25


@pytest.fixture
async def open_redis() -> AsyncIterator[Callable[..., RedisResultBackend]]:
    """Opens backends on the test server under one fresh prefix; deletes its keys afterwards."""
    url = redis_url()
    prefix = f"lqtest-{uuid.uuid4().hex[:12]}"
    opened: list[RedisResultBackend] = []

    def open_backend(
        *, ttl_s: float | None = DEFAULT_RESULT_TTL_S, max_connections: int = 10
    ) -> RedisResultBackend:
        backend = RedisResultBackend(
            url, prefix=prefix, ttl_s=ttl_s, max_connections=max_connections
        )
        opened.append(backend)
        return backend

    yield open_backend
    for backend in opened:
        await backend.close()
    await delete_prefix(url, prefix)


async def keys_of(backend: RedisResultBackend) -> list[str]:
    client = backend._client
    return sorted([key.decode() async for key in client.scan_iter(match=backend._key("*"))])


# Waiting across processes -----------------------------------------------------------------


def _store_final_in_child(
    url: str, prefix: str, task_id: str, store_started: Synchronized[float]
) -> None:
    asyncio.run(_store_final_later(url, prefix, task_id, store_started))


async def _store_final_later(
    url: str, prefix: str, task_id: str, store_started: Synchronized[float]
) -> None:
    async with RedisResultBackend(url, prefix=prefix) as results:
        # A deliberate delay, not a wait for state: the parent must be inside wait() already.
        await asyncio.sleep(0.3)
        # Stamped before the store: the parent may wake before store() returns here.
        store_started.value = time.monotonic()
        await results.store(make_result(task_id, value="from the child"))


@pytest.mark.redis
@pytest.mark.slow
async def test_redis_wait_wakes_on_result_from_another_process_without_polling(
    open_redis: Callable[..., RedisResultBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent blocks on the server and wakes within a second of the child's store.

    It reads the task's results only twice: once before blocking, once after waking; a
    polling wait would read them every few milliseconds. CLOCK_MONOTONIC is shared by every
    process on the host.
    """
    results = open_redis()
    task_id = new_id()
    reads: list[str] = []
    real_get = results.get

    async def counting_get(task_id: str) -> TaskResult | None:
        reads.append(task_id)
        return await real_get(task_id)

    monkeypatch.setattr(results, "get", counting_get)
    context = multiprocessing.get_context("spawn")
    store_started = context.Value("d", 0.0)
    child = context.Process(
        target=_store_final_in_child, args=(redis_url(), results.prefix, task_id, store_started)
    )
    child.start()
    try:
        result = await results.wait(task_id, timeout=10)
        woke_at = time.monotonic()
    finally:
        await asyncio.to_thread(child.join, 10)
    assert child.exitcode == 0
    child.close()

    assert result.value == "from the child"
    assert 0 < woke_at - store_started.value < 1.0
    assert len(reads) == 2


@pytest.mark.redis
async def test_redis_waits_beyond_max_connections_queue_within_their_timeout(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    results = open_redis(max_connections=1)
    blocking = asyncio.create_task(results.wait(new_id(), timeout=25))
    await asyncio.sleep(0.1)  # let the first wait take the only connection

    started = time.monotonic()
    with pytest.raises(TaskTimeout):
        await results.wait(new_id(), timeout=0.3)
    assert time.monotonic() - started < 2.0

    blocking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocking
    final = make_result(new_id())
    await results.store(final)
    assert await results.wait(final.task_id, timeout=1) == final


# Expiry -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_keys_share_one_hash_tag_and_expire_with_the_ttl(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    results = open_redis(ttl_s=60.0)
    task_id = new_id()
    await results.store(make_result(task_id))

    keys = await keys_of(results)
    tag = "{" + results.prefix + "}:"
    assert all(key.startswith(tag) for key in keys), keys
    per_task = [key for key in keys if task_id in key]
    assert len(per_task) == 3, per_task  # the result, its attempt set and the done list
    ttls = [await results._client.pttl(key) for key in per_task]
    assert all(55_000 < ttl <= 60_000 for ttl in ttls), ttls


@pytest.mark.redis
async def test_redis_store_trims_the_index_without_any_read(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    results = open_redis(ttl_s=TTL_S)
    for n in range(3):
        await results.store(make_result(new_id(), value=n))
    # Real time is the subject here: Redis expires keys on the server's clock.
    await asyncio.sleep(TTL_S + SLACK_S)

    await results.store(make_result(new_id()))

    assert await results._client.zcard(results._key("index")) == 1


@pytest.mark.redis
async def test_redis_final_result_then_a_retrying_one_is_no_longer_final(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    """A requeued dead task continues its attempts: its waiters wait for the new outcome."""
    results = open_redis()
    task_id = new_id()
    await results.store(make_result(task_id, attempt=1))
    await results.store(make_result(task_id, attempt=2, will_retry=True, error="again"))

    with pytest.raises(TaskTimeout):
        await results.wait(task_id, timeout=0.2)
    assert await results._client.exists(results._key("done", task_id)) == 0


@pytest.mark.redis
async def test_redis_attempts_expire_one_by_one(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    results = open_redis(ttl_s=TTL_S)
    task_id = new_id()
    await results.store(make_result(task_id, attempt=1, will_retry=True, error="flaky"))
    # Real time is the subject here: Redis expires keys on the server's clock.
    await asyncio.sleep(TTL_S / 2)
    second = make_result(task_id, attempt=2)
    await results.store(second)
    await asyncio.sleep(TTL_S / 2 + SLACK_S)

    assert await results.attempts(task_id) == [second]
    assert await results._client.zrange(results._key("attempts", task_id), 0, -1) == [b"2"]


@pytest.mark.redis
async def test_redis_short_socket_timeout_in_the_url_shortens_blocking_reads() -> None:
    async with RedisResultBackend(f"{redis_url()}?socket_timeout=0.4", prefix="unused") as results:
        assert results._block_s == pytest.approx(0.2)
        with pytest.raises(TaskTimeout):
            await results.wait(new_id(), timeout=0.7)


# Errors -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_refused_command_raises_storage_error(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    results = open_redis()
    await results._client.set(results._key("index"), "not a sorted set")

    with pytest.raises(StorageError, match=r"^Redis at .+ refused a result operation: .*WRONGTYPE"):
        await results.store(make_result(new_id()))


async def test_redis_unix_socket_is_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "no-redis.sock"
    async with RedisResultBackend(f"unix://{path}") as results:
        assert results.where == str(path)
        with pytest.raises(StorageUnavailable, match=rf"^Redis at {path} did not answer: "):
            await results.get(new_id())


@pytest.mark.redis
async def test_redis_unreachable_server_names_host_and_port_but_never_the_password() -> None:
    redis_url()  # the same CI case: a machine with Redis, a URL to a port without it
    secret = "s3cret-pw"
    url = f"redis://looplane:{secret}@127.0.0.1:1/0"
    async with RedisResultBackend(url) as results:
        message = r"^Redis at 127\.0\.0\.1:1 did not answer: "
        with pytest.raises(StorageUnavailable, match=message) as info:
            await results.store(make_result(new_id()))
        with pytest.raises(StorageUnavailable, match=r"127\.0\.0\.1:1"):
            await results.wait(new_id(), timeout=1)

    shown = "".join(traceback.format_exception(info.value))
    assert secret not in shown
    assert info.value.backend == "redis"


def test_redis_backend_without_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("redis", "redis.asyncio", "redis.asyncio.retry", "redis.backoff"):
        monkeypatch.setitem(sys.modules, name, None)

    with pytest.raises(ConfigError, match=r"pip install 'looplane\[redis\]'$"):
        RedisResultBackend()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"url": "http://user:pw@host/0"},
            r"^not a Redis URL \(redis://, rediss:// or unix://\): http://user:\*+@host/0$",
            id="scheme",
        ),
        pytest.param({"url": "redis://host:port/0"}, r"^not a Redis URL", id="port"),
        pytest.param(
            {"url": "redis://h:6379/0?socket_timeout=abc"},
            r"^not a Redis URL: Invalid value for 'socket_timeout'",
            id="query",
        ),
        pytest.param({"prefix": "a b"}, r"^prefix must be non-empty", id="space"),
        pytest.param({"prefix": "{q}"}, r"^prefix must be non-empty", id="brace"),
        pytest.param({"prefix": ""}, r"^prefix must be non-empty", id="empty"),
        pytest.param({"max_connections": 0}, r"^max_connections must be at least 1", id="pool"),
        pytest.param({"ttl_s": 0.0}, r"^result ttl_s must be a positive number", id="ttl"),
    ],
)
def test_redis_backend_refuses_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisResultBackend(**options)  # type: ignore[arg-type]  # deliberately bad options


async def test_redis_more_concurrent_stores_than_connections_wait_for_one(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    backend = open_redis(max_connections=2)
    results = [
        TaskResult(task_id=new_task_id(), func_name="t", success=True, value=n) for n in range(200)
    ]
    await asyncio.gather(*(backend.store(result) for result in results))
    assert len(await backend.results()) == 200


@pytest.mark.redis
async def test_redis_concurrent_stores_share_one_script_call_in_call_order(
    open_redis: Callable[..., RedisResultBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = open_redis()
    calls: list[int] = []
    call = AsyncScript.__call__

    async def counting(script: AsyncScript, keys: Any = None, args: Any = None) -> Any:
        calls.append(len(keys))
        return await call(script, keys, args)

    monkeypatch.setattr(AsyncScript, "__call__", counting)
    ids = [new_id() for _ in range(20)]

    await asyncio.gather(
        *(backend.store(make_result(task_id, value=i)) for i, task_id in enumerate(ids))
    )

    assert calls == [2 + 3 * 20]
    assert [r.task_id for r in await backend.results()] == ids[::-1]
    assert [(await backend.wait(task_id, timeout=1)).value for task_id in ids] == list(range(20))


@pytest.mark.redis
async def test_redis_store_cancelled_before_its_call_stores_nothing(
    open_redis: Callable[..., RedisResultBackend],
) -> None:
    backend = open_redis()
    task_id = new_id()
    storing = asyncio.ensure_future(backend.store(make_result(task_id, value=1)))
    await asyncio.sleep(0)
    storing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await storing

    assert await backend.get(task_id) is None


@pytest.mark.redis
async def test_redis_close_during_a_read_under_way_leaves_no_connection_open() -> None:
    """A read under way when the backend closes must not open a connection that nobody
    closes, or the garbage collector later warns about an unclosed socket."""
    url = redis_url()

    async def close_during_get(passes: int) -> None:
        backend = RedisResultBackend(url, prefix=f"lqtest-{uuid.uuid4().hex[:12]}")
        reading = asyncio.ensure_future(backend.get(new_id()))
        for _ in range(passes):
            await asyncio.sleep(0)
        await backend.close()
        with contextlib.suppress(StorageUnavailable):
            await reading

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        # Closed after each number of loop passes: so at every step of the read.
        for passes in range(16):
            await close_during_get(passes)
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
