"""Redis backend: GCRA shared by every gateway host, in one atomic Lua script (L4 helper).

What it owns: one asyncio Redis connection pool per worker and URL (created on first use,
so always after fork), the GCRA script, and the backend's up/down state.

Algorithm: the same GCRA as ``fastgw.shm.ratelimit`` (read its header), run by Redis on
its own clock (``TIME``), so hosts need no synchronised clocks.  State is one string per
key, the theoretical arrival time in integer microseconds, with a ``PX`` expiry at the
moment its bucket is full again (an expired key and a full bucket are the same state).
Several limits of one request are one script call, all or nothing like ``check_all``:
if any refuses, nothing is written.  Units: ``T = round(1e6 / rate)`` whole microseconds,
so every value stays an exact integer in Lua's doubles; the rate is off by at most
0.5 us / T relative (5e-4 at 1000/s per key).

Rules:

- Every call has a deadline (``rate_limit.redis.timeout``) through ``asyncio.timeout``;
  the client's own retries are off, so a call never outlives its deadline.  The worker
  never blocks: the call is awaited by the request's task only.
- After a failure (timeout, refused, reset, error reply) the backend is *down* for a
  backoff that doubles from 0.25 s to 5 s: calls fail at once (``BackendDown``), without
  touching the network, and the caller applies ``on_error`` (open: skip these limits,
  closed: refuse).  When the backoff ends, one request probes; the others keep failing
  fast until it answers.  One log line when the backend goes down, one when it is back.
- ``EVALSHA`` with a fallback to ``EVAL`` on ``NOSCRIPT`` (a restarted or flushed Redis)
  is redis-py's ``Script``.
- Keys of one call must live on one node: a single Redis (or a primary with replicas);
  Redis Cluster is not supported (the script would fail with CROSSSLOT).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

KEY_PREFIX = b"fastgw:rl:"
BACKOFF_MIN = 0.25
BACKOFF_MAX = 5.0

# KEYS: the limit keys.  ARGV[1]: cost; then per key i: ARGV[2i] = T, ARGV[2i+1] = tau
# (burst * T), both in microseconds.  Returns {all_ok, then per key: allowed, remaining,
# reset_after_us, retry_after_us}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local staged = {}
local order = {}
local out = {1}
for i = 1, #KEYS do
  local key = KEYS[i]
  local T = tonumber(ARGV[2 * i])
  local tau = tonumber(ARGV[2 * i + 1])
  local tat = staged[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key) or '0') or 0
    order[#order + 1] = key
  end
  local start = tat
  if start < now then start = now end
  local new = start + cost * T
  local n = #out
  if new - now <= tau then
    staged[key] = new
    out[n + 1] = 1
    out[n + 2] = math.floor((now + tau - new) / T)
    out[n + 3] = new - now
    out[n + 4] = 0
  else
    staged[key] = tat
    out[1] = 0
    local left = math.floor((now + tau - start) / T)
    if left < 0 then left = 0 end
    out[n + 1] = 0
    out[n + 2] = left
    out[n + 3] = start - now
    out[n + 4] = new - tau - now
  end
end
if out[1] == 1 then
  for _, key in ipairs(order) do
    local tat = staged[key]
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  end
end
return out
"""

log = logging.getLogger("fastgw")


class _Wait:
    """``await _Wait(fut)``: the result of ``fut``, whoever drives the awaiting coroutine.

    An asyncio Task expects a yielded future marked "blocking"; a driver that instead
    ``await``s what the coroutine yields (the engine's eager hook driver, ``Engine._resume``)
    needs it unmarked, or the await fails at once with RuntimeError ("await wasn't used
    with future") and the driver throws that error back in here.  So: yield it marked,
    and if that error comes back, yield it once more unmarked.  With a Task, or once the
    engine clears the mark itself as a Task does, the first yield is the only one.
    """

    __slots__ = ("fut",)

    def __init__(self, fut) -> None:
        self.fut = fut

    def __await__(self):
        fut = self.fut
        if not fut.done():
            fut._asyncio_future_blocking = True
            try:
                yield fut
            except RuntimeError:
                if fut.done():
                    raise
                fut._asyncio_future_blocking = False
                yield fut
        return fut.result()


class BackendDown(Exception):
    """The backend could not decide (down, timed out, or failed): apply ``on_error``."""


def where(url: str) -> str:
    """``host:port`` of a Redis URL, for log lines (never the credentials)."""
    try:
        u = urlsplit(url)
        if u.scheme == "unix":
            return u.path
        return f"{u.hostname}:{u.port or 6379}"
    except ValueError:
        return "redis"


class RedisBackend:
    """One Redis server as seen by one worker."""

    def __init__(self, url: str, timeout: float, *, max_connections: int = 256) -> None:
        self.url = url
        self.timeout = timeout
        self.max_connections = max_connections
        self.label = where(url)
        self._client = None
        self._script = None
        self.down_until = 0.0           # monotonic; 0 = up
        self.backoff = 0.0
        self.probing = False
        self.failures = 0               # calls that failed (tests, status)
        self.on_failure = None          # counts fastgw_redis_errors_total (set by the Limiter)

    def _connect(self) -> None:
        # imported here: the supervisor and --check never need redis
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=None,
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
        self._client = Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._script = self._client.register_script(GCRA_LUA)

    async def check(self, keys: list[bytes], specs: list[tuple[float, int]], cost: int = 1):
        """All-or-nothing GCRA of ``keys`` with ``specs`` [(rate, burst)]:
        ``(allowed, [(allowed, remaining, reset_after_s, retry_after_s), ...])``.
        Raises ``BackendDown`` when Redis cannot answer in time."""
        probe = False
        if self.down_until:
            if self.probing or time.monotonic() < self.down_until:
                raise BackendDown(f"redis {self.label} is down")
            self.probing = probe = True
        args: list = [cost]
        for rate, burst in specs:
            t_us = max(1, round(1e6 / rate))
            args.append(t_us)
            args.append(t_us * burst)
        try:
            if self._script is None:
                self._connect()
            # In a task of its own: the engine drives a request hook eagerly, outside any
            # task until it first waits, and asyncio.timeout (here and inside redis-py)
            # needs a current task.  Only requests that really go to Redis pay for it.
            res = await _Wait(asyncio.get_running_loop().create_task(self._call(keys, args)))
        except Exception as e:  # timeout, connection, error reply: all mean "cannot decide"
            self._failed(e)
            raise BackendDown(str(e) or type(e).__name__) from e
        finally:
            if probe:
                self.probing = False
        if self.down_until:
            self._recovered()
        out = []
        for i in range(1, len(res), 4):
            out.append((res[i] == 1, int(res[i + 1]), res[i + 2] / 1e6, res[i + 3] / 1e6))
        return res[0] == 1, out

    async def _call(self, keys: list[bytes], args: list):
        async with asyncio.timeout(self.timeout):
            return await self._script(keys=[KEY_PREFIX + k for k in keys], args=args)

    def _failed(self, e: BaseException) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        first = not self.down_until
        self.backoff = BACKOFF_MIN if first else min(BACKOFF_MAX, self.backoff * 2)
        self.down_until = time.monotonic() + self.backoff
        if first:
            log.error("rate limit: redis %s unavailable (%s: %s); Redis-backed limits apply "
                      "rate_limit.redis.on_error until it answers", self.label, type(e).__name__, e)

    def _recovered(self) -> None:
        log.warning("rate limit: redis %s answers again", self.label)
        self.down_until = 0.0
        self.backoff = 0.0

    async def aclose(self) -> None:
        c, self._client, self._script = self._client, None, None
        if c is not None:
            try:
                await c.aclose()
            except Exception:  # closing a broken pool: nothing left to do
                pass
