"""Storage on Redis Streams: several worker processes on several hosts share one queue.

Why it is built this way (design/DELIVERY.md, sections 0 and 3.2):

* Every key of queue ``q`` carries the hash tag ``{q}`` and every state change is one Lua
  script that touches only the keys it is passed, so each change is atomic and the layout
  also runs on Redis Cluster (https://github.com/Bogdanp/dramatiq/issues/682).
* Ready tasks wait in one stream per priority level in use, read through the consumer
  group ``lq`` with ``XREADGROUP``: FIFO within a priority, higher priorities first.
* Redis's pending-entries list does not fence: ``XACK`` acks whoever's delivery it names.
  So the lease lives in our own sorted set and each claim mints a fencing token stored in
  the task's record; ``ack``, ``renew``, ``release`` and ``bury`` compare it inside their
  script and change nothing when it is stale.
* An entry leaves its stream only by ``XACK`` plus ``XDEL`` in the same script. Task streams
  are never trimmed (``MAXLEN``/``XTRIM`` drops unacked entries silently,
  https://github.com/redis/redis/issues/10756).
* A round trip costs far more than one task's share of a script, so concurrent acks, and
  concurrent small sends, share one script call (`looplane._redis_batch`); each ack still
  checks its own token. A watcher pipelines a claim behind its blocking read: Redis runs it
  the moment the read returns, so a task sent to an idle worker reaches it one round trip
  after the send, not two.

Layout for queue ``q`` under prefix ``P`` (``P:{q}:`` below is written ``K:``):

=============  ======  =================================================================
key            type    content
=============  ======  =================================================================
K:task         hash    task id -> msgpack record: attempts, limits, state, token, entry id,
                       due time, reason, time of death, time of sending
K:pay          hash    task id -> encoded task (written once)
K:all          zset    sending sequence -> task id (every state; for listings and counts)
K:seq          string  counter for sending sequence and fencing tokens
K:prios        zset    priority levels in use (each has a stream and the group ``lq``)
K:p<n>         stream  ready and leased tasks of priority ``n``; entry field ``t`` = task id
K:leases       zset    lease expiry (ms) -> task id
K:delayed      zset    due time (ms) -> task id
K:dead         zset    time of death (ms) -> task id; the reason is in the record
K:bell         stream  one entry per change that makes work claimable; watchers block on it
P:queues       set     queue names ever sent to (for `dead_tasks` and `purge_dead`)
=============  ======  =================================================================

Time: with the system clock, scripts read the Redis server's clock (``TIME``), the one clock
that every host shares. With any other `Clock` (a test's fake clock) the storage passes that
clock's wall-clock time (`Clock.time`) to each script instead, so tests can move time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from looplane._clock import SYSTEM_CLOCK, Clock
from looplane._redis_batch import Batcher, InFlight
from looplane.config import mask_url_in, redact_url
from looplane.errors import ConfigError, StorageError, StorageUnavailable
from looplane.storage.base import (
    DEFAULT_LEASE_S,
    LEASE_GRACE_S,
    Claim,
    DeadTask,
    NewTask,
    QueueCounts,
    StorageBackend,
    TaskInfo,
    TaskState,
    Watcher,
    check_page,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript
    from redis.typing import KeyT, StreamIdT

__all__ = ["RedisStorage"]

logger = logging.getLogger(__name__)

GROUP = "lq"
"""The consumer group on every priority stream."""

# How many due delays or expired leases one claim moves, so one script stays short.
_MAX_MAINTENANCE = 1000
# How many task records one `tasks` script examines; a listing runs several scripts.
_SCAN_BATCH = 500
# The longest server-side BLOCK of a watcher's read; it stays far below the socket timeout,
# so a blocked read is never cut off client-side (pitfall 18).
_BLOCK_S = 2.0
_BLOCK_SOCKET_TIMEOUT_S = _BLOCK_S + 10.0
# How long a call waits for a free pooled connection before it fails.
_POOL_WAIT_S = 30.0
# How long `close` waits for calls under way (a claim whose caller gave up on it, say)
# before it closes the connections under them.
_CLOSE_WAIT_S = 5.0
# How often the bell stream is cut back; it only carries wake-ups, so trimming loses nothing.
_BELL_LENGTH = 16
# Connection retries (with backoff) before a call raises `StorageUnavailable`.
_RETRIES = 5
# Most acks one script call carries.
_ACK_BATCH = 200
# `enqueue` calls of at most this many tasks share script calls with concurrent ones, at
# most this many calls in one.
_SEND_COALESCE = 10
_SEND_BATCH = 50

_STATE_CODES = {
    TaskState.READY: "r",
    TaskState.LEASED: "l",
    TaskState.DELAYED: "d",
    TaskState.DEAD: "x",
}
_STATES = {code: state for state, code in _STATE_CODES.items()}
_STALE = -1
_KEY_NAMES = ("task", "pay", "all", "seq", "prios", "leases", "delayed", "dead", "bell")

# Shared by every script. KEYS = the nine fixed keys above, then one stream per priority;
# ARGV = now (ms, or "" for the server clock), the number of priorities, the priorities
# (matching the streams, highest first), then the script's own arguments from ARGV[A].
_PRELUDE = """
local NOW
if ARGV[1] ~= '' then
  NOW = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NPRIOS = tonumber(ARGV[2])
local STREAM = {}
for i = 1, NPRIOS do STREAM[ARGV[2 + i]] = KEYS[9 + i] end
local A = 3 + NPRIOS
local GROUP = 'lq'

local function stale() return redis.call('ZCARD', KEYS[5]) ~= NPRIOS end
local function load(id)
  local raw = redis.call('HGET', KEYS[1], id)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end
local function save(id, m) redis.call('HSET', KEYS[1], id, cmsgpack.pack(m)) end
local function ring() redis.call('XADD', KEYS[9], 'MAXLEN', '__BELL__', '*', 'r', '1') end
local function stream_of(m)
  local key = STREAM[tostring(m.p)]
  if not key then return redis.error_reply('looplane: no stream for priority ' .. m.p) end
  return key
end
local function make_ready(id, m)
  m.i = redis.call('XADD', stream_of(m), '*', 't', id)
  m.s = 'r'; m.k = ''; m.d = 0
  save(id, m)
end
local function drop_entry(m)
  if m.i ~= '' then
    local key = stream_of(m)
    redis.call('XACK', key, GROUP, m.i)
    redis.call('XDEL', key, m.i)
    m.i = ''
  end
end
local function to_dead(id, m, reason)
  m.s = 'x'; m.k = ''; m.d = 0; m.r = reason; m.f = NOW
  save(id, m)
  redis.call('ZADD', KEYS[8], NOW, id)
end
local function held(id, token)
  local m = load(id)
  if m and m.s == 'l' and m.k == token then return m end
  return nil
end
local function let_go(id, m)
  drop_entry(m)
  redis.call('ZREM', KEYS[6], id)
end
local function forget(id)
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
""".replace("__BELL__", str(_BELL_LENGTH))

_SCRIPTS = {
    # ARGV[A] = count, then per task: id, payload, max_attempts, timeout_ms, priority, delay_ms.
    # A task id already stored is skipped, so a send retried after a lost reply stores once.
    "enqueue": """
for i = 1, NPRIOS do
  local p = ARGV[2 + i]
  if redis.call('ZADD', KEYS[5], 'NX', tonumber(p), p) == 1 then
    redis.pcall('XGROUP', 'CREATE', KEYS[9 + i], GROUP, '0', 'MKSTREAM')
  end
end
local added = 0
for j = 0, tonumber(ARGV[A]) - 1 do
  local b = A + 1 + j * 6
  local id = ARGV[b]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    local seq = redis.call('INCR', KEYS[4])
    local most = tonumber(ARGV[b + 2])
    local m = {a = 0, m = most, b = most, t = tonumber(ARGV[b + 3]), p = tonumber(ARGV[b + 4]),
               e = NOW, s = 'r', k = '', i = '', r = '', f = 0, d = 0}
    redis.call('HSET', KEYS[2], id, ARGV[b + 1])
    redis.call('ZADD', KEYS[3], seq, id)
    local delay = tonumber(ARGV[b + 5])
    if delay > 0 then
      m.s = 'd'; m.d = NOW + delay
      save(id, m)
      redis.call('ZADD', KEYS[7], m.d, id)
    else
      make_ready(id, m)
    end
    added = added + 1
  end
end
ring()
return added
""",
    # ARGV[A..] = limit, default lease ms, grace ms, consumer name.
    # Returns {claims, ms until the next due delay or lease expiry (-1: none), bell id, drained};
    # claims is flat, three items per task: "token attempt max lease_ms", id, payload (few
    # items parse faster on the client than a nested reply).
    "claim": """
if stale() then return -1 end
local limit, lease_default = tonumber(ARGV[A]), tonumber(ARGV[A + 1])
local grace, consumer = tonumber(ARGV[A + 2]), ARGV[A + 3]
local woke = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', NOW, 'LIMIT', 0, __MAX__)) do
  redis.call('ZREM', KEYS[7], id)
  local m = load(id)
  if m and m.s == 'd' then make_ready(id, m); woke = woke + 1 end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', NOW, 'LIMIT', 0, __MAX__)) do
  redis.call('ZREM', KEYS[6], id)
  local m = load(id)
  if m and m.s == 'l' then
    drop_entry(m)
    -- The worker died during the last allowed attempt: the task went out once more
    -- (attempt max + 1) so that a consumer records why; if that delivery is lost too,
    -- it goes straight to the dead letters.
    if m.a > m.m then
      to_dead(id, m, 'lease expired on the last attempt (' .. m.m .. ' of ' .. m.m ..
        '): the worker running it was lost')
    else
      make_ready(id, m); woke = woke + 1
    end
  end
end
local out, taken = {}, 0
for i = 1, NPRIOS do
  local key = KEYS[9 + i]
  while taken < limit do
    local reply = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', limit - taken,
      'STREAMS', key, '>')
    if not reply then break end
    for _, entry in ipairs(reply[1][2]) do
      local eid, id = entry[1], entry[2][2]
      local m = load(id)
      if m and m.s == 'r' and m.i == eid then
        local lease = lease_default
        if m.t > 0 then lease = m.t + grace end
        m.a = m.a + 1
        m.k = tostring(redis.call('INCR', KEYS[4]))
        m.s = 'l'; m.d = NOW + lease
        save(id, m)
        redis.call('ZADD', KEYS[6], m.d, id)
        taken = taken + 1
        out[#out + 1] = m.k .. ' ' .. m.a .. ' ' .. m.m .. ' ' .. lease
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGET', KEYS[2], id)
      else
        -- An entry whose task moved on (a duplicate send, an external change): drop it.
        redis.call('XACK', key, GROUP, eid)
        redis.call('XDEL', key, eid)
      end
    end
  end
end
if woke > 0 then ring() end
local next_due = -1
for _, key in ipairs({KEYS[6], KEYS[7]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(tonumber(first[2]) - NOW, 0)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
local last = redis.call('XREVRANGE', KEYS[9], '+', '-', 'COUNT', 1)
local bell = '0-0'
if last[1] then bell = last[1][1] end
local busy = redis.call('ZCARD', KEYS[6]) + redis.call('ZCARD', KEYS[7])
local drained = 0
if redis.call('ZCARD', KEYS[3]) == busy + redis.call('ZCARD', KEYS[8]) then drained = 1 end
return {out, next_due, bell, drained}
""".replace("__MAX__", str(_MAX_MAINTENANCE)),
    # ARGV[A..] = default lease ms, grace ms, then pairs of task id and token.
    "renew": """
local res = {}
for j = A + 2, #ARGV, 2 do
  local id = ARGV[j]
  local m = held(id, ARGV[j + 1])
  if m then
    local lease = tonumber(ARGV[A])
    if m.t > 0 then lease = m.t + tonumber(ARGV[A + 1]) end
    m.d = NOW + lease
    save(id, m)
    redis.call('ZADD', KEYS[6], m.d, id)
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end
return res
""",
    # ARGV[A..] = pairs of task id and token. Returns one character per pair: 1 (acked) or
    # 0 (lease lost).
    "ack": """
if stale() then return -1 end
local res = {}
for j = A, #ARGV, 2 do
  local id = ARGV[j]
  local m = held(id, ARGV[j + 1])
  if m then
    let_go(id, m)
    forget(id)
    res[#res + 1] = '1'
  else
    res[#res + 1] = '0'
  end
end
return table.concat(res)
""",
    # ARGV[A..] = task id, token, delay ms, 1 to count the attempt or 0 to give it back.
    "release": """
if stale() then return -1 end
local id = ARGV[A]
local m = held(id, ARGV[A + 1])
if not m then return 0 end
let_go(id, m)
if ARGV[A + 3] == '0' then m.a = m.a - 1 end
local delay = tonumber(ARGV[A + 2])
if delay > 0 then
  m.s = 'd'; m.k = ''; m.d = NOW + delay
  save(id, m)
  redis.call('ZADD', KEYS[7], m.d, id)
else
  make_ready(id, m)
end
ring()
return 1
""",
    # ARGV[A..] = task id, token, reason.
    "bury": """
if stale() then return -1 end
local id = ARGV[A]
local m = held(id, ARGV[A + 1])
if not m then return 0 end
let_go(id, m)
to_dead(id, m, ARGV[A + 2])
return 1
""",
    # ARGV[A] = task id. Attempt numbers go on; the task gets its original allowance again.
    "requeue_dead": """
if stale() then return -1 end
local id = ARGV[A]
local m = load(id)
if not m or m.s ~= 'x' then return 0 end
redis.call('ZREM', KEYS[8], id)
-- The delivery that reported a worker lost on the last attempt was not an attempt.
if m.a > m.m then m.a = m.m end
m.m = m.a + m.b; m.r = ''; m.f = 0
make_ready(id, m)
ring()
return 1
""",
    # ARGV[A] = a consumer name used only for this script.
    "purge": """
if stale() then return -1 end
local removed = 0
for i = 1, NPRIOS do
  local key = KEYS[9 + i]
  while true do
    local reply = redis.call('XREADGROUP', 'GROUP', GROUP, ARGV[A], 'COUNT', 1000,
      'STREAMS', key, '>')
    if not reply then break end
    for _, entry in ipairs(reply[1][2]) do
      local eid, id = entry[1], entry[2][2]
      redis.call('XACK', key, GROUP, eid)
      redis.call('XDEL', key, eid)
      local m = load(id)
      if m and m.s == 'r' and m.i == eid then forget(id); removed = removed + 1 end
    end
  end
  redis.call('XGROUP', 'DELCONSUMER', key, GROUP, ARGV[A])
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[7], 0, -1)) do
  local m = load(id)
  if m and m.s == 'd' then forget(id); removed = removed + 1 end
end
redis.call('DEL', KEYS[7])
return removed
""",
    "purge_dead": """
local doomed = redis.call('ZRANGE', KEYS[8], 0, -1)
for _, id in ipairs(doomed) do forget(id) end
redis.call('DEL', KEYS[8])
return #doomed
""",
    # Read only. Returns {ready, leased, delayed, dead}.
    "counts": """
local leased, delayed = redis.call('ZCARD', KEYS[6]), redis.call('ZCARD', KEYS[7])
local dead = redis.call('ZCARD', KEYS[8])
return {redis.call('ZCARD', KEYS[3]) - leased - delayed - dead, leased, delayed, dead}
""",
    # Read only. ARGV[A] = limit. Returns {{id, payload, reason, attempts, failed ms}, ...}.
    "dead": """
local out = {}
local found = redis.call('ZRANGE', KEYS[8], 0, tonumber(ARGV[A]) - 1, 'WITHSCORES')
for j = 1, #found, 2 do
  local id = found[j]
  local m = load(id)
  if m then out[#out + 1] = {id, redis.call('HGET', KEYS[2], id), m.r, m.a, m.f} end
end
return out
""",
    # Read only. ARGV[A..] = state codes, exclusive upper sequence ('+inf' at first), skip, want.
    # Returns {{id, state, attempts, max, sent ms, payload, reason, failed ms}, ...}, skip left,
    # last sequence examined, records examined.
    "tasks": """
local codes, skip, want = ARGV[A], tonumber(ARGV[A + 2]), tonumber(ARGV[A + 3])
local page = redis.call('ZREVRANGEBYSCORE', KEYS[3], ARGV[A + 1], '-inf', 'WITHSCORES',
  'LIMIT', 0, __BATCH__)
local out, last = {}, ARGV[A + 1]
for j = 1, #page, 2 do
  local id = page[j]
  last = '(' .. page[j + 1]
  local m = load(id)
  if m and string.find(codes, m.s, 1, true) then
    if skip > 0 then
      skip = skip - 1
    else
      out[#out + 1] = {id, m.s, m.a, m.m, m.e, redis.call('HGET', KEYS[2], id), m.r, m.f}
      if #out >= want then break end
    end
  end
end
return {out, skip, last, #page / 2}
""".replace("__BATCH__", str(_SCAN_BATCH)),
}


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bell_key(bell_id: str) -> tuple[int, int]:
    ms, _, seq = bell_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStorage(StorageBackend):
    """Tasks in Redis Streams, shared by workers on any number of hosts.

    Each call is one script on the server, so it is atomic; if a call is cancelled after its
    request was sent, the script may still have run. Connection drops are retried with
    backoff; a server that stays unreachable raises `StorageUnavailable` naming its address
    (never its password).

    Note:
        Tasks are only as durable as the server's persistence: with ``appendonly no`` an
        enqueue that returned can be lost when Redis restarts (design/DELIVERY.md, pitfall
        19). A call retried after a dropped connection may have run once already: a retried
        `ack` then answers False, and a retried `claim` leaves its first claims to run out
        their leases. `dead_tasks`, `purge_dead` and `requeue_dead` visit the queues one by
        one, so on several queues they are atomic per queue, not across queues.
    """

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        queue_prefix: str = "lq",
        lease_s: float = DEFAULT_LEASE_S,
        clock: Clock = SYSTEM_CLOCK,
        max_connections: int = 10,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialWithJitterBackoff
            from redis.exceptions import (
                ConnectionError as RedisConnectionError,
            )
            from redis.exceptions import RedisError
            from redis.exceptions import TimeoutError as RedisTimeoutError
        except ImportError as exc:  # pragma: no cover - the test environment has redis
            raise ConfigError(
                "the Redis storage needs the redis package: pip install 'looplane[redis]'"
            ) from exc
        if not queue_prefix or any(c in queue_prefix for c in "{}"):
            raise ConfigError(
                f"queue_prefix must be non-empty without braces; got {queue_prefix!r}"
            )
        self.url = url
        self.queue_prefix = queue_prefix
        self.default_lease_s = lease_s
        self.clock = clock
        self.consumer_name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._where = redact_url(url)
        self._unavailable: tuple[type[BaseException], ...] = (
            RedisConnectionError,
            RedisTimeoutError,
            OSError,
        )
        self._redis_error: type[Exception] = RedisError
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=_RETRIES)
        try:
            # A blocking pool: when every connection is busy, a call waits for one instead
            # of failing with "too many connections" (which would strand leased tasks).
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=_POOL_WAIT_S, retry=retry
            )
            self._redis: Redis = aioredis.Redis.from_pool(pool)
            # Watchers block on their own pool, so a blocked read never holds a connection
            # that sends and claims need.
            self._blocking: Redis = aioredis.Redis.from_url(
                url, retry=retry, socket_timeout=_BLOCK_SOCKET_TIMEOUT_S
            )
        except ValueError as exc:
            reason = mask_url_in(str(exc), url)
            raise ConfigError(f"invalid Redis URL {self._where}: {reason}") from None
        self._scripts: dict[str, AsyncScript] = {
            name: self._redis.register_script(_PRELUDE + body) for name, body in _SCRIPTS.items()
        }
        # The system clock defers to the server's; any other clock (a fake) is passed in.
        self._server_time = type(clock).time is Clock.time
        self._prios: dict[str, list[str]] = {}
        self._known_queues: set[str] = set()
        self._claimed_queues: dict[str, None] = {}
        self._bell_seen: dict[str, str] = {}
        self._next_due: dict[str, float] = {}
        self._reads: set[asyncio.Task[bool]] = set()
        self._claim_limits: dict[str, int] = {}
        self._stash: dict[str, list[Claim]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._acks: Batcher[tuple[str, str, str], bool] = Batcher(
            self._ack_batch, max_batch=_ACK_BATCH
        )
        self._sends: Batcher[Sequence[NewTask], None] = Batcher(
            self._send_batch, max_batch=_SEND_BATCH
        )
        self._calls = InFlight()
        self._closed = False

    # Plumbing -----------------------------------------------------------------------------

    def key(self, queue: str, name: str) -> str:
        """The name of key `name` of `queue`; all keys of a queue share the hash tag."""
        return f"{self.queue_prefix}:{{{queue}}}:{name}"

    def _keys(self, queue: str, prios: Sequence[str]) -> list[str]:
        return [self.key(queue, n) for n in _KEY_NAMES] + [self.key(queue, f"p{p}") for p in prios]

    def _now_arg(self) -> str:
        return "" if self._server_time else str(_ms(self.clock.time()))

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailable("redis storage is closed", backend=self.name)

    def _failed(self, exc: BaseException) -> StorageError:
        if isinstance(exc, self._unavailable):
            return StorageUnavailable(
                f"Redis at {self._where} is unreachable: {type(exc).__name__}: {exc}",
                backend=self.name,
            )
        return StorageError(f"Redis at {self._where} refused a call: {exc}", backend=self.name)

    async def _command(self, call: Callable[[Redis], Awaitable[Any]]) -> Any:
        self._check_open()
        self._calls.enter()
        try:
            return await call(self._redis)
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            if self._calls.leave():
                await self._close_late()

    async def _load_prios(self, queue: str) -> list[str]:
        raw = await self._command(lambda r: r.zrange(self.key(queue, "prios"), 0, -1))
        prios = sorted((_text(p) for p in raw), key=int, reverse=True)
        self._prios[queue] = prios
        return prios

    async def _run(
        self, script: str, queue: str, *args: Any, prios: list[str] | None = None
    ) -> Any:
        """Run `script` on `queue`, refreshing the known priorities when they changed."""
        for _ in range(3):
            if prios is None:
                prios = self._prios.get(queue)
            if prios is None:
                prios = await self._load_prios(queue)
            self._check_open()
            argv = [self._now_arg(), len(prios), *prios, *args]
            self._calls.enter()
            try:
                result = await self._scripts[script](keys=self._keys(queue, prios), args=argv)
            except (self._redis_error, OSError) as exc:
                raise self._failed(exc) from exc
            finally:
                if self._calls.leave():
                    await self._close_late()
            if result != _STALE:
                return result
            prios = await self._load_prios(queue)
        raise StorageError(  # pragma: no cover - priorities added faster than we can read
            f"priorities of queue {queue!r} kept changing", backend=self.name
        )

    def _held_queue(self, claim: Claim) -> tuple[str, str] | None:
        """The queue and counter a claim's token names, or None if it is not one of ours."""
        counter, sep, queue = claim.token.decode("utf-8", "replace").partition(":")
        return (queue, counter) if sep and counter.isdigit() else None

    # Writing ------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store `tasks`; those of one queue in one script; see `StorageBackend.enqueue`.

        Tasks of several queues are stored queue by queue, so a cancelled or failed call may
        have stored the tasks of some queues and not others. A task id already stored is
        skipped. Small calls made at the same time (concurrent `send`s) share one script
        call; if cancelled before it goes out, nothing is stored.
        """
        self._check_open()
        if len(tasks) <= _SEND_COALESCE:
            await self._sends.submit(tasks)
        else:
            await self._store_tasks(tasks)

    async def _send_batch(self, calls: list[Sequence[NewTask]]) -> list[None]:
        """Store the tasks of several `enqueue` calls together."""
        await self._store_tasks([task for tasks in calls for task in tasks])
        return [None] * len(calls)

    async def _store_tasks(self, tasks: Sequence[NewTask]) -> None:
        by_queue: dict[str, list[NewTask]] = {}
        for task in tasks:
            by_queue.setdefault(task.queue, []).append(task)
        for queue, batch in by_queue.items():
            await self._register_queue(queue)
            known = self._prios.get(queue, [])
            prios = sorted({*known, *(str(t.priority) for t in batch)}, key=int, reverse=True)
            args: list[Any] = [len(batch)]
            for task in batch:
                timeout_ms = 0 if task.timeout_s is None else max(_ms(task.timeout_s), 1)
                args += [task.task_id, task.payload, task.max_attempts, timeout_ms]
                args += [task.priority, _ms(task.delay_s)]
            await self._run("enqueue", queue, *args, prios=prios)
            if queue in self._prios:
                self._prios[queue] = prios

    async def _register_queue(self, queue: str) -> None:
        # Registered before the tasks are stored, so the registry never misses a queue that
        # holds tasks; it lives outside the queue's hash slot, so it cannot be in the script.
        if queue not in self._known_queues:
            await self._command(lambda r: r.sadd(f"{self.queue_prefix}:queues", queue))
            self._known_queues.add(queue)

    async def claim(self, limit: int, *, queue: str = "default") -> list[Claim]:
        """Lease up to `limit` tasks; see `StorageBackend.claim`.

        Tasks a watcher's read already leased for this storage (see `watch`) are returned
        first, without a round trip.
        """
        if limit < 1:
            self._check_open()
            return []
        self._check_open()
        self._claimed_queues[queue] = None
        self._claim_limits[queue] = limit
        # Tasks being given back are claimable again once that is done: wait for it.
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        stashed = self._stash.pop(queue, None)
        if stashed:
            # More than asked for would wait here leased but unrenewed: give them back.
            self.give_back(stashed[limit:])
            return stashed[:limit]
        return self._accept(queue, await self._run("claim", queue, *self._claim_args(limit)))

    def _claim_args(self, limit: int) -> list[Any]:
        lease_ms, grace_ms = _ms(self.default_lease_s), _ms(LEASE_GRACE_S)
        return [limit, lease_ms, grace_ms, self.consumer_name]

    def _accept(self, queue: str, reply: list[Any]) -> list[Claim]:
        """The claims of a claim script's `reply`; notes when to look and listen again."""
        out, next_due, bell, drained = reply
        now = self.clock.monotonic()
        self._next_due[queue] = float("inf") if next_due < 0 else now + next_due / 1000
        if drained:
            # Every ready task was taken: a later change rings after this bell id. A claim
            # that left work behind does not move it, so its watcher still wakes for that.
            self._bell_seen[queue] = _text(bell)
        claims = []
        for at in range(0, len(out), 3):
            counter, attempt, most, lease = _text(out[at]).split()
            claims.append(
                Claim(
                    task_id=_text(out[at + 1]),
                    token=f"{counter}:{queue}".encode(),
                    attempt=int(attempt),
                    max_attempts=int(most),
                    lease_s=int(lease) / 1000,
                    payload=bytes(out[at + 2]),
                )
            )
        return claims

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        """Extend leases, one script per queue; see `StorageBackend.renew`."""
        self._check_open()
        alive = [False] * len(claims)
        by_queue: dict[str, list[tuple[int, str, str]]] = {}
        for index, claim in enumerate(claims):
            held = self._held_queue(claim)
            if held is not None:
                by_queue.setdefault(held[0], []).append((index, claim.task_id, held[1]))
        lease_ms, grace_ms = _ms(self.default_lease_s), _ms(LEASE_GRACE_S)
        for queue, items in by_queue.items():
            pairs = [part for _, task_id, counter in items for part in (task_id, counter)]
            answers = await self._run("renew", queue, lease_ms, grace_ms, *pairs)
            for (index, _, _), answer in zip(items, answers, strict=True):
                alive[index] = answer == 1
        return alive

    async def _on_claim(self, script: str, claim: Claim, *args: Any) -> bool:
        self._check_open()
        held = self._held_queue(claim)
        if held is None:
            return False
        queue, counter = held
        return bool(await self._run(script, queue, claim.task_id, counter, *args) == 1)

    async def ack(self, claim: Claim) -> bool:
        """Remove the task (``XACK`` and ``XDEL`` together); see `StorageBackend.ack`.

        Acks made at the same time share one script call per queue, each checked against
        its own token. If cancelled before that call goes out, nothing changes; after, the
        task may be acked.
        """
        self._check_open()
        held = self._held_queue(claim)
        if held is None:
            return False
        return await self._acks.submit((held[0], claim.task_id, held[1]))

    async def _ack_batch(self, acks: list[tuple[str, str, str]]) -> list[bool]:
        """Ack ``(queue, task id, counter)`` triples, one script call per queue."""
        by_queue: dict[str, list[int]] = {}
        for index, (queue, _, _) in enumerate(acks):
            by_queue.setdefault(queue, []).append(index)
        done = [False] * len(acks)
        for queue, indexes in by_queue.items():
            pairs = [part for i in indexes for part in acks[i][1:]]
            answers = _text(await self._run("ack", queue, *pairs))
            for i, answer in zip(indexes, answers, strict=True):
                done[i] = answer == "1"
        return done

    async def release(
        self, claim: Claim, *, delay_s: float = 0.0, count_attempt: bool = True
    ) -> bool:
        """Put the task back; see `StorageBackend.release`."""
        return await self._on_claim("release", claim, _ms(delay_s), int(count_attempt))

    async def bury(self, claim: Claim, *, reason: str) -> bool:
        """Dead-letter the task; see `StorageBackend.bury`."""
        return await self._on_claim("bury", claim, reason)

    async def queues(self) -> list[str]:
        """Names of the queues ever sent to under this prefix, sorted."""
        raw = await self._command(lambda r: r.smembers(f"{self.queue_prefix}:queues"))
        return sorted(_text(q) for q in raw)

    async def requeue_dead(self, task_id: str) -> bool:
        """Make a dead task ready with its allowance again; see `StorageBackend.requeue_dead`."""
        for queue in await self.queues():
            if await self._run("requeue_dead", queue, task_id) == 1:
                return True
        return False

    async def purge(self, *, queue: str = "default") -> int:
        """Remove the ready and delayed tasks of `queue`; see `StorageBackend.purge`.

        Note:
            The removal is one script, and Redis serves nobody else while it runs: purging
            millions of tasks holds every client up for as long as it takes.
        """
        purger = f"purge:{uuid.uuid4().hex[:8]}"
        return int(await self._run("purge", queue, purger))

    async def purge_dead(self) -> int:
        """Remove every dead-lettered task, one script per queue; see `purge_dead` of the base."""
        removed = 0
        for queue in await self.queues():
            removed += int(await self._run("purge_dead", queue))
        return removed

    # Reading ------------------------------------------------------------------------------

    async def counts(self, *, queue: str = "default") -> QueueCounts:
        """Count the tasks of `queue` by state, in one consistent read."""
        ready, leased, delayed, dead = await self._run("counts", queue)
        return QueueCounts(ready=ready, leased=leased, delayed=delayed, dead=dead)

    async def dead_tasks(self, *, limit: int = 100) -> list[DeadTask]:
        """Dead-lettered tasks of every queue, oldest first."""
        found: list[DeadTask] = []
        for queue in await self.queues():
            for task_id, payload, reason, attempts, failed_ms in await self._run(
                "dead", queue, limit
            ):
                found.append(
                    DeadTask(
                        task_id=_text(task_id),
                        payload=bytes(payload),
                        reason=bytes(reason).decode("utf-8", "replace"),
                        attempts=int(attempts),
                        failed_at=int(failed_ms) / 1000,
                    )
                )
        found.sort(key=lambda dead: dead.failed_at)
        return found[:limit]

    async def tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        limit: int = 100,
        offset: int = 0,
        queue: str = "default",
    ) -> list[TaskInfo]:
        """Tasks of `queue` in `states`, newest sent first; see `StorageBackend.tasks`.

        Note:
            The listing reads batches of records in separate short scripts, so a task that
            changes state meanwhile may be shown in its old state, or missed if it was
            removed, but never twice.
        """
        check_page(limit, offset)
        self._check_open()
        wanted = _STATE_CODES.values() if states is None else [_STATE_CODES[s] for s in states]
        codes = "".join(wanted)
        found: list[TaskInfo] = []
        skip, after = offset, "+inf"
        while codes and len(found) < limit:
            rows, skip, after, examined = await self._run(
                "tasks", queue, codes, after, skip, limit - len(found)
            )
            found += [_info(row) for row in rows]
            after = _text(after)
            if examined < _SCAN_BATCH:
                break
        return found

    # Waiting ------------------------------------------------------------------------------

    def watch(self) -> Watcher:
        """A watcher woken by changes from any process that make work claimable.

        It watches the queues this storage has claimed from ("default" before the first
        claim), blocking on their bell streams on a connection of its own.

        Note:
            On Redis Cluster a watcher covers one queue only: watching queues that live in
            different slots fails with CROSSSLOT, and the waiting consumer then polls.
        """
        self._check_open()
        return _RedisWatcher(self)

    def next_due_in(self) -> float:
        """Seconds until the next due delay or lease expiry that the last claims saw."""
        earliest = min(self._next_due.values(), default=float("inf"))
        return max(earliest - self.clock.monotonic(), 0.0)

    def watched(self) -> dict[str, str]:
        """The bell streams a watcher blocks on, each with the last entry a claim saw."""
        queues = list(self._claimed_queues) or ["default"]
        return {q: self._bell_seen.get(q, "0-0") for q in queues}

    async def read_bells(
        self, after: dict[str, str], block_ms: int
    ) -> tuple[dict[str, str], list[Claim]]:
        """Block up to `block_ms` for bell entries newer than `after`; the newest seen.

        When one queue is watched, a claim follows the blocking read in the same pipeline:
        Redis runs it as soon as the read returns, so a task sent to an idle worker is
        leased to it one round trip after the send instead of two. Its claims come back
        too; `wake` hands them to the next `claim`.
        """
        self._check_open()
        streams: dict[KeyT, StreamIdT] = {self.key(q, "bell"): v for q, v in after.items()}
        queue = next(iter(after)) if len(after) == 1 else None
        limit = self._claim_limits.get(queue, 0) if queue is not None else 0
        prios = self._prios.get(queue) if queue is not None else None
        if queue is None or not limit or prios is None or not self._server_time:
            reply: Any = await self._blocking.xread(streams, count=1, block=block_ms)
            return self._newest_bells(reply), []
        # The claim is sent as it stands now: with a fake clock its time would be stale by
        # the time the read returns, so only the server's clock pipelines it.
        script = self._scripts["claim"]
        # A queue never sent to has no priorities yet; its first send most likely uses 0.
        prios = prios or ["0"]
        argv = ["", len(prios), *prios, *self._claim_args(limit)]
        keys = self._keys(queue, prios)
        pipe = self._blocking.pipeline(transaction=False)
        # The pipeline queues commands; it returns itself, not replies, until `execute`.
        _ = pipe.xread(streams, count=1, block=block_ms)
        _ = pipe.evalsha(script.sha, len(keys), *keys, *argv)
        reply, claimed = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        # A claim refused (its script not loaded yet, priorities changed: -1) leased
        # nothing; the consumer's own claim after the wake-up does the work.
        claims = [] if isinstance(claimed, Exception | int) else self._accept(queue, claimed)
        return self._newest_bells(reply), claims

    def _newest_bells(self, reply: Any) -> dict[str, str]:
        newest: dict[str, str] = {}
        for key, entries in reply or []:
            queue = _text(key)[len(self.queue_prefix) + 2 : -len("}:bell")]
            newest[queue] = _text(entries[-1][0])
        return newest

    def wake(self, claims: list[Claim]) -> None:
        """Keep `claims` (leased by a watcher's read) for the next `claim` of their queue."""
        for claim in claims:
            held = self._held_queue(claim)
            if held is not None:
                self._stash.setdefault(held[0], []).append(claim)

    def give_back(self, claims: list[Claim]) -> None:
        """Release `claims` in the background without counting their attempts."""
        for claim in claims:
            job = asyncio.ensure_future(self._give_back(claim))
            self._background.add(job)
            job.add_done_callback(self._background.discard)

    async def _give_back(self, claim: Claim) -> None:
        try:
            await self.release(claim, count_attempt=False)
        except StorageError as exc:
            logger.warning(
                "give-back failed, the task runs again once its lease ends task_id=%s error=%s",
                claim.task_id,
                exc,
            )

    def drop_stash(self, queues: Collection[str]) -> None:
        """Give back what watchers leased for `queues` and no claim took."""
        for queue in queues:
            self.give_back(self._stash.pop(queue, []))

    def start_read(self, read: asyncio.Task[bool]) -> None:
        """Track a watcher's read so that `close` can end it."""
        self._reads.add(read)
        read.add_done_callback(self._reads.discard)

    async def close(self) -> None:
        """Close both connection pools; idempotent. Watchers' reads in flight are ended.

        Calls already under way (a claim whose caller was cancelled, say) get up to 5 s to
        end first. On return every connection is closed, except one that a call still under
        way then may open; that one is closed when the call ends.
        """
        if self._closed:
            return
        await self._end_reads()
        # Sends, acks and give-backs already accepted are made before calls are refused.
        self.drop_stash(list(self._stash))
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._sends.drain()
        await self._acks.drain()
        self._closed = True
        # A read started meanwhile would reconnect once its pool is closed under it.
        await self._end_reads()
        # A call past its open check may still be connecting: a connection it opened after
        # the pool was closed would stay open.
        await self._calls.settle(_CLOSE_WAIT_S)
        self._calls.shut = True
        await self._redis.aclose()
        await self._blocking.aclose()

    async def _end_reads(self) -> None:
        # Cancelling a blocked read would leave its connection a reply behind (pitfall 18),
        # but that connection is being thrown away with its pool here. Redis drops the
        # claim pipelined behind a read whose client went away, so it leases nothing.
        for read in list(self._reads):
            read.cancel()
        await asyncio.gather(*self._reads, return_exceptions=True)

    async def _close_late(self) -> None:
        """Close what a call that outlasted `close` connected; the pools stay closed."""
        await self._redis.connection_pool.disconnect()
        await self._blocking.connection_pool.disconnect()


def _info(row: list[Any]) -> TaskInfo:
    task_id, code, attempts, most, sent_ms, payload, reason, failed_ms = row
    state = _STATES[_text(code)]
    dead = state is TaskState.DEAD
    return TaskInfo(
        task_id=_text(task_id),
        state=state,
        attempts=int(attempts),
        max_attempts=int(most),
        enqueued_at=int(sent_ms) / 1000,
        payload=bytes(payload),
        reason=bytes(reason).decode("utf-8", "replace") if dead else None,
        failed_at=int(failed_ms) / 1000 if dead else None,
    )


class _RedisWatcher(Watcher):
    """Blocks on the bell streams in short server-side reads, never cut off client-side.

    Each read runs as a task of its own and `wait` awaits it through a shield: cancelling
    `wait` leaves the read to finish by itself (within ``_BLOCK_S``), and the next `wait`
    picks up its answer. Tasks a read leased go to the next `claim` only while a `wait`
    is under way; otherwise (a cancelled wait, a closed watcher) they are given back at
    once, so no task sits leased in this process without a consumer about to take it.
    """

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        self._last: dict[str, str] = {}
        self._read: asyncio.Task[bool] | None = None
        self._waiting = False
        self._closed = False
        self._warned = False

    def _after(self) -> dict[str, str]:
        after = {}
        for queue, seen in self._storage.watched().items():
            mine = self._last.get(queue, "0-0")
            after[queue] = max(seen, mine, key=_bell_key)
        return after

    async def _read_once(self, block_ms: int) -> bool:
        try:
            newest, claims = await self._storage.read_bells(self._after(), block_ms)
        except Exception as exc:  # noqa: BLE001 - a failed wake-up read must not end the wait loop
            if not self._warned:
                logger.warning("watch read failed error=%s", type(exc).__name__)
                self._warned = True
            await asyncio.sleep(block_ms / 1000)
            return True
        self._warned = False
        self._last.update(newest)
        if self._waiting and not self._closed:
            self._storage.wake(claims)
        else:
            self._storage.give_back(claims)
        return bool(newest or claims)

    async def wait(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout_s, self._storage.next_due_in())
        while True:
            remaining = deadline - loop.time()
            if self._read is None:
                if remaining <= 0:
                    return
                block_ms = max(_ms(min(remaining, _BLOCK_S)), 1)
                self._read = asyncio.ensure_future(self._read_once(block_ms))
                self._storage.start_read(self._read)
            # asyncio.wait never cancels the read: one still blocked when this wait times out
            # or is cancelled is picked up by the next wait.
            self._waiting = True
            try:
                done, _ = await asyncio.wait({self._read}, timeout=max(remaining, 0))
            finally:
                self._waiting = False
            if not done:
                return
            read, self._read = self._read, None
            if read.result():
                return

    def close(self) -> None:
        """Stop handing leased tasks over; give back those no claim took yet."""
        self._closed = True
        self._storage.drop_stash(list(self._storage.watched()))
