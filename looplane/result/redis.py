"""Results on a Redis server, readable by every process on every host that reaches it.

Layout (every key carries the hash tag ``{<prefix>}``, so the store script, which names all
its keys, also runs on Redis Cluster; the price is that one prefix's results live in one slot):

* ``{lq}:result:<task_id>:<attempt>``: the encoded `TaskResult`, a string with ``PX`` set to
  the time to live. Redis itself expires each attempt exactly, on the server's clock.
* ``{lq}:attempts:<task_id>``: a sorted set of the task's attempt numbers, expiring with its
  latest result, so `get` and `attempts` know which result keys to read.
* ``{lq}:index``: a sorted set of ``<task_id>:<attempt>`` scored by store time in
  microseconds (forced strictly increasing by ``{lq}:seq``, so results stored in the same
  microsecond keep their order). `results` reads it newest first. Each store removes the
  members older than the time to live (``ZREMRANGEBYSCORE``), so a busy backend keeps it
  bounded (https://github.com/celery/celery/issues/75); a read that meets a member whose
  result expired removes it, so an idle one is cleaned once it is looked at.
* ``{lq}:done:<task_id>``: a one-element list pushed when the task's highest attempt stored
  is final, expiring with it. `wait` blocks on it with ``BLMOVE key key``: moving the element
  onto the same list leaves it in place, so every waiter of the task wakes, not just the
  first (Huey's notify pattern, https://github.com/coleifer/huey).

A store is one script: the result, the attempt set, the index, its trim and the done list
change together or not at all. Stores made at the same time (an orchestrator finishing many
tasks) share one script call, in call order (`looplane._redis_batch`).

Blocking reads run on their own connections, with a server-side timeout shorter than the
socket timeout, and loop until the caller's deadline: a blocking command is never cut off
by a client-side timeout, which once left redis-py connections a reply behind
(https://github.com/redis/redis-py/issues/2624). Cancelling a wait or closing the backend
cancels the blocked read; redis-py then drops that connection rather than reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import urlsplit

from looplane._clock import SYSTEM_CLOCK, Clock
from looplane._redis_batch import Batcher, InFlight
from looplane.errors import ConfigError, StorageError, StorageUnavailable
from looplane.result.base import (
    DEFAULT_RESULT_TTL_S,
    ResultBackend,
    TaskResult,
    check_limit,
    check_timeout,
    check_ttl,
    timeout_error,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisResultBackend"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"

_BLOCK_S = 5.0
"""Longest one blocking read lasts on the server before the wait looks again."""
_SOCKET_TIMEOUT_S = 10.0
"""Socket timeout of every connection, unless the URL sets one; it must exceed `_BLOCK_S`."""
_PAGE = 256
"""Index members `results` reads per round trip."""
_PREFIX = re.compile(r"^[^\s{}]+$")
_STORE_BATCH = 200
"""Most results one store script call carries."""
_CLOSE_WAIT_S = 5.0
"""Longest `close` waits for calls under way before it closes the connections under them."""

# KEYS: index, seq, then per result: result, attempts, done. ARGV: ttl_ms (0: never), then
# per result: data, attempt, member, final (1 or 0). One call stores a batch of results in
# order. Store time comes from the server's clock, like the key expiry it must match.
_STORE_LUA = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local score = math.max(now_us, tonumber(redis.call('GET', KEYS[2]) or '0') + 1)
local ttl_ms = tonumber(ARGV[1])
if ttl_ms > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now_us - ttl_ms * 1000))
end
for j = 0, (#KEYS - 2) / 3 - 1 do
  local result, attempts, done = KEYS[3 + j * 3], KEYS[4 + j * 3], KEYS[5 + j * 3]
  local data, number = ARGV[2 + j * 4], ARGV[3 + j * 4]
  local attempt = tonumber(number)
  if ttl_ms > 0 then
    redis.call('SET', result, data, 'PX', ttl_ms)
  else
    redis.call('SET', result, data)
  end
  redis.call('ZADD', attempts, attempt, number)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', attempts, ttl_ms)
  else
    redis.call('PERSIST', attempts)
  end
  redis.call('ZADD', KEYS[1], string.format('%.0f', score), ARGV[4 + j * 4])
  score = score + 1
  local top = redis.call('ZREVRANGE', attempts, 0, 0)[1]
  if tonumber(top) == attempt then
    redis.call('DEL', done)
    if ARGV[5 + j * 4] == '1' then
      redis.call('RPUSH', done, '1')
      if ttl_ms > 0 then
        redis.call('PEXPIRE', done, ttl_ms)
      end
    end
  end
end
redis.call('SET', KEYS[2], string.format('%.0f', score - 1))
return 1
"""


@dataclass(frozen=True, slots=True)
class _Store:
    """One result waiting for its store script call: its keys and arguments."""

    result: str
    attempts: str
    done: str
    data: bytes
    attempt: str
    member: str
    final: str


class RedisResultBackend(ResultBackend):
    """Results kept on a Redis server, shared by every process that names the same prefix.

    Nothing connects until the first call; connections are opened as needed, up to
    `max_connections` for commands and as many again for waits.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` or ``unix://...``.
        ttl_s: Seconds a result stays readable after it is stored; None keeps it forever.
        prefix: Start of every key, so several deployments can share one database.
        clock: Kept for the interface the other backends share; see the note.
        max_connections: Most connections open at once for commands, and again for waits.

    Raises:
        ConfigError: `ttl_s` is not a positive number of seconds or None, `url` is not a
            Redis URL, `prefix` is empty or holds spaces or braces, `max_connections` is
            below 1, or redis-py is not installed (``pip install 'looplane[redis]'``).

    Note:
        Results expire on the Redis server's clock, through key expiry: `clock` plays no
        part in it, so a fake clock cannot make results expire. `wait` holds one
        connection while it blocks; waits beyond `max_connections` queue for one, still
        within their timeout.
    """

    name = "redis"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        ttl_s: float | None = DEFAULT_RESULT_TTL_S,
        prefix: str = "lq",
        clock: Clock = SYSTEM_CLOCK,
        max_connections: int = 10,
    ) -> None:
        check_ttl(ttl_s)
        if not _PREFIX.match(prefix):
            raise ConfigError(f"prefix must be non-empty, without spaces or braces; got {prefix!r}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1; got {max_connections!r}")
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.clock = clock
        self.max_connections = max_connections
        self.where = _where(url)
        self._url = url
        self._client = _client(url, max_connections)
        self._waiting = _client(url, max_connections)
        self._block_s = _block_limit(self._waiting)
        self._wait_slots = asyncio.Semaphore(max_connections)
        self._store_script: AsyncScript = self._client.register_script(_STORE_LUA)
        self._blocked: set[asyncio.Future[Any]] = set()
        self._tag = "{" + prefix + "}"
        self._index, self._seq = self._key("index"), self._key("seq")
        self._ttl_ms = 0 if ttl_s is None else max(1, math.ceil(ttl_s * 1000))
        self._stores: Batcher[_Store, None] = Batcher(
            self._store_batch, max_batch=_STORE_BATCH, max_in_flight=1
        )
        self._calls = InFlight()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailable(
                f"Redis result backend at {self.where} is closed", backend=self.name
            )

    def _key(self, *parts: str) -> str:
        return ":".join((self._tag, *parts))

    async def store(self, result: TaskResult) -> None:
        """Keep `result` for the time to live, replacing an earlier store of the same attempt.

        The result is stored once this returns, and waiters on every host are woken. Stores
        made at the same time share one script call (the same script removes index entries
        past the time to live). If cancelled before that call goes out, nothing is stored;
        after, the result may be stored.

        Raises:
            SerializationError: The result's value cannot be encoded; nothing is stored.
            StorageUnavailable: The backend is closed, or Redis did not answer.
            StorageError: Redis refused the script.
        """
        self._check_open()
        data = result.to_bytes()
        task_id, attempt = result.task_id, str(result.attempt)
        await self._stores.submit(
            _Store(
                result=self._key("result", task_id, attempt),
                attempts=self._key("attempts", task_id),
                done=self._key("done", task_id),
                data=data,
                attempt=attempt,
                member=f"{task_id}:{attempt}",
                final="1" if result.is_final else "0",
            )
        )

    async def _store_batch(self, stores: list[_Store]) -> list[None]:
        """Store `stores` in order, in one script call."""
        keys = [self._index, self._seq]
        args: list[Any] = [self._ttl_ms]
        for store in stores:
            keys += (store.result, store.attempts, store.done)
            args += (store.data, store.attempt, store.member, store.final)
        async with self._talking():
            await self._store_script(keys=keys, args=args)
        return [None] * len(stores)

    async def results(self, *, limit: int | None = None) -> list[TaskResult]:
        """Every unexpired result, newest stored first (at most `limit`).

        Raises:
            ConfigError: `limit` is negative.
            StorageUnavailable: The backend is closed, or Redis did not answer.
        """
        check_limit(limit)
        self._check_open()
        index = self._key("index")
        found: list[TaskResult] = []
        below = "+inf"
        async with self._talking():
            while limit is None or len(found) < limit:
                # Page by score, not by rank: a store meanwhile adds a member at the top,
                # which would shift ranks and repeat a result across pages.
                page = cast(
                    "list[tuple[bytes, float]]",
                    await self._client.zrevrangebyscore(
                        index, below, "-inf", start=0, num=_PAGE, withscores=True
                    ),
                )
                if not page:
                    break
                below = f"({page[-1][1]:.0f}"
                values = await self._read([member.decode() for member, _ in page], index=index)
                found.extend(TaskResult.from_bytes(value) for value in values)
        return found if limit is None else found[:limit]

    async def get(self, task_id: str) -> TaskResult | None:
        """The unexpired result with the highest attempt number, or None.

        Raises:
            StorageUnavailable: The backend is closed, or Redis did not answer.
        """
        found = await self._attempts(task_id)
        return TaskResult.from_bytes(found[-1]) if found else None

    async def attempts(self, task_id: str) -> list[TaskResult]:
        """Every unexpired result of the task, first attempt first.

        Raises:
            StorageUnavailable: The backend is closed, or Redis did not answer.
        """
        return [TaskResult.from_bytes(data) for data in await self._attempts(task_id)]

    async def _attempts(self, task_id: str) -> list[bytes]:
        self._check_open()
        key = self._key("attempts", task_id)
        async with self._talking():
            numbers = cast("list[bytes]", await self._client.zrange(key, 0, -1))
            names = [f"{task_id}:{number.decode()}" for number in numbers]
            return await self._read(names, attempts=key)

    async def _read(
        self, names: Sequence[str], *, index: str | None = None, attempts: str | None = None
    ) -> list[bytes]:
        """The results named ``<task_id>:<attempt>`` that still exist, in the given order.

        The members of `index` or `attempts` whose result expired are removed from it.
        """
        if not names:
            return []
        values = cast(
            "list[bytes | None]",
            await self._client.mget([self._key("result", *name.rsplit(":", 1)) for name in names]),
        )
        gone = [name for name, value in zip(names, values, strict=True) if value is None]
        if gone and index is not None:
            await self._client.zrem(index, *gone)
        if gone and attempts is not None:
            await self._client.zrem(attempts, *(name.rsplit(":", 1)[1] for name in gone))
        if gone:
            logger.debug("purged expired result entries count=%d", len(gone))
        return [value for value in values if value is not None]

    async def wait(self, task_id: str, *, timeout: float = 30.0) -> TaskResult:
        """Wait for the task's final result (``will_retry=False``) and return it.

        Blocks on the Redis server until a final result is stored by any process, looking
        again at least every few seconds. A final result already stored returns at once;
        one stored at the deadline is still returned. Cancelling the wait is safe: the
        blocked read is dropped with its connection.

        Raises:
            TaskTimeout: No final result arrived within `timeout` seconds.
            ConfigError: `timeout` is negative or not a number.
            StorageUnavailable: The backend is closed, before or during the wait, or Redis
                did not answer.
        """
        check_timeout(timeout)
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done = self._key("done", task_id)
        while True:
            result = await self.get(task_id)
            if result is not None and result.is_final:
                return result

            remaining = deadline - loop.time()
            if remaining <= 0:
                raise timeout_error(task_id, timeout)
            # On timeout, loop once more: a result stored at the deadline is returned.
            await self._block(done, min(remaining, self._block_s), deadline)

    async def _block(self, key: str, block_s: float, deadline: float) -> None:
        """Block on the server until `key` holds its element or `block_s` passes."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._wait_slots.acquire()
        except TimeoutError:
            return
        try:
            self._check_open()
            # BLMOVE a list onto itself rotates it: the element stays for the other waiters.
            command = asyncio.ensure_future(
                self._waiting.blmove(
                    key,
                    key,
                    max(block_s, 0.001),  # type: ignore[arg-type]  # Redis 6+ takes decimal seconds
                    "LEFT",
                    "RIGHT",
                )
            )
            self._blocked.add(command)
            try:
                async with self._talking():
                    await command
            finally:
                self._blocked.discard(command)
        except asyncio.CancelledError:
            # `close` cancels the blocked read: fail as closed, unless the caller cancelled.
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                self._check_open()
            raise
        finally:
            self._wait_slots.release()

    @contextlib.asynccontextmanager
    async def _talking(self) -> AsyncIterator[None]:
        """Turn redis-py's errors into Looplane's, naming the server but never its password.

        Counts the call as under way meanwhile, so that `close` closes its connections last.
        """
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._calls.enter()
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._unavailable(exc)
        except RedisError as exc:
            detail = _masked(f"{type(exc).__name__}: {exc}", self._url)
            raise StorageError(
                f"Redis at {self.where} refused a result operation: {detail}", backend=self.name
            ) from exc
        finally:
            if self._calls.leave():
                # A call that outlasted `close`: close what it connected.
                await self._client.connection_pool.disconnect()
                await self._waiting.connection_pool.disconnect()

    def _unavailable(self, exc: Exception) -> NoReturn:
        self._check_open()
        detail = _masked(f"{type(exc).__name__}: {exc}", self._url)
        raise StorageUnavailable(
            f"Redis at {self.where} did not answer: {detail}", backend=self.name
        ) from exc

    async def close(self) -> None:
        """Close the connections; later calls are refused.

        Waiters wake and fail with `StorageUnavailable`. Other calls already under way get
        up to 5 s to end before their connections are closed; one that outlasts that closes
        what it connected when it ends. Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        # Stores already accepted are sent before the connections go.
        with contextlib.suppress(Exception):
            await self._stores.drain()
        blocked = list(self._blocked)
        for command in blocked:
            command.cancel()
        # Let the cancelled reads drop their connections before the pool is closed.
        await asyncio.gather(*blocked, return_exceptions=True)
        # A call past its open check may still be connecting, or reconnecting after a
        # dropped connection: a connection it opened after the pool was closed would stay open.
        await self._calls.settle(_CLOSE_WAIT_S)
        self._calls.shut = True
        await self._waiting.aclose()
        await self._client.aclose()


_POOL_WAIT_S = 30.0


def _client(url: str, max_connections: int) -> Redis:
    """A client on its own pool; nothing connects until the first command."""
    try:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
    except ImportError as exc:
        raise ConfigError(
            "the Redis result backend needs redis-py: pip install 'looplane[redis]'"
        ) from exc
    try:
        # A blocking pool: when every connection is busy, a store waits for one instead of
        # failing with "too many connections" (which would strand the task it belongs to).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=_POOL_WAIT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
            # A dropped connection is retried a few times, so a Redis restart or a
            # failover costs a short pause rather than an error.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        )
    except ValueError as exc:
        raise ConfigError(f"not a Redis URL: {_masked(str(exc), url)}") from None
    return Redis.from_pool(pool)


def _block_limit(client: Redis) -> float:
    """How long one blocking read may last: well within the socket timeout.

    A ``socket_timeout`` in the URL wins over ours, and may be shorter than `_BLOCK_S`.
    """
    socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if not isinstance(socket_timeout, int | float):
        return _BLOCK_S
    return max(0.01, min(_BLOCK_S, socket_timeout / 2))


def _where(url: str) -> str:
    """``host:port`` (or the socket path) of `url`, for messages; never its password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("not a Redis URL: it does not parse") from None
    if parts.scheme == "unix":
        return parts.path
    if parts.scheme not in ("redis", "rediss"):
        from looplane.config import redact_url

        raise ConfigError(f"not a Redis URL (redis://, rediss:// or unix://): {redact_url(url)}")
    return f"{parts.hostname or 'localhost'}:{port or 6379}"


def _masked(text: str, url: str) -> str:
    """`text` with the URL redacted and its password masked wherever it appears."""
    from looplane.config import mask_url_in

    return mask_url_in(text, url)
