"""Revocations shared between gateway hosts through Redis (issue 27, ``revocation.backend: redis``).

What it owns: in the control process (one per host), one task that keeps the host's
shared-memory revocation table (``fastgw.shm.revocation``) and Redis in agreement.

- Redis holds every live revocation in one hash (``HASH``), field ``<kind>:<key>``, value
  ``{"k", "key", "exp", "at"}``; each change is also published on ``CHANNEL``.
- Local revocations (admin API, logout, refresh reuse on any worker) all land in the
  table first; the task follows the table's log (the same one the workers' mirrors
  follow) every ``PUSH_EVERY`` and writes new entries to Redis (``HSET`` + ``PUBLISH``).
- Remote ones arrive by pub/sub within a round trip.  Pub/sub drops messages while the
  subscriber is disconnected, so every (re)connect and every ``resync_interval`` is a full
  resync: ``HGETALL`` into the table, and every local live entry Redis lacks pushed back
  (which also repairs a Redis that restarted without persistence; with AOF/RDB it keeps
  them itself).  Expired fields are deleted on resync.
- Bound: a revocation reaches the other hosts' workers within ``PUSH_EVERY`` plus a
  round trip when Redis is up and subscribed, and within ``resync_interval`` after any
  loss of messages.
- A Redis outage keeps the local table (it never depends on Redis to refuse a token),
  counts ``fastgw_revocation_redis_errors_total{op}``, logs once when Redis goes away and
  once when it is back, and retries with a backoff from 0.25 s to 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from fastgw.shm.revocation import LOG, NAMES

log = logging.getLogger("fastgw")

HASH = "fastgw:revocations"
CHANNEL = "fastgw:revocations"
PUSH_EVERY = 0.1
M_ERRORS = "fastgw_revocation_redis_errors_total"


class RevocationSync:
    def __init__(self, table, url: str, *, timeout: float, resync_interval: float, metrics=None) -> None:
        self.table = table
        self.url = url
        self.timeout = timeout
        self.resync_interval = resync_interval
        self.metrics = metrics
        self.seen = 0
        self.known: dict[str, tuple[float, float]] = {}   # field -> (exp, at) as Redis has it
        self.down = False
        self.task = None
        self.wake = None

    def start(self, loop) -> None:
        self.wake = asyncio.Event()
        self.task = loop.create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def publish(self, kind: str, key: str, expiry: float, before: float = 0.0) -> None:
        """A local revocation was just written to the table: push it without waiting."""
        if self.wake is not None:
            self.wake.set()

    # -- the task ---------------------------------------------------------------------
    async def _run(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        backoff = 0.25
        while True:
            r = ps = None
            op = "connect"
            try:
                r = aioredis.Redis.from_url(str(self.url), socket_timeout=self.timeout,
                                            socket_connect_timeout=self.timeout)
                ps = r.pubsub()
                await ps.subscribe(CHANNEL)
                op = "resync"
                await self._resync(r)
                if self.down:
                    log.warning("revocations: Redis %s is back; resynced", _where(self.url))
                    self.down = False
                backoff = 0.25
                due = time.monotonic() + self.resync_interval
                while True:
                    op = "subscribe"
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=PUSH_EVERY)
                    if msg is not None and msg.get("type") == "message":
                        self._apply(msg["data"])
                    op = "push"
                    await self._push(r)
                    if time.monotonic() >= due:
                        op = "resync"
                        await self._resync(r)
                        due = time.monotonic() + self.resync_interval
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncio.TimeoutError, ValueError) as e:
                if self.metrics is not None:
                    self.metrics.inc(M_ERRORS, (("op", op),), 1)
                if not self.down:
                    self.down = True
                    log.error("revocations: Redis %s unavailable (%s: %s); the local set keeps holding, "
                              "retrying", _where(self.url), op, type(e).__name__)
            finally:
                for c in (ps, r):
                    if c is not None:
                        try:
                            await c.aclose()
                        except Exception:  # noqa: BLE001 - closing a broken connection
                            pass
            try:
                await asyncio.wait_for(self.wake.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            backoff = min(backoff * 2, 2.0)

    def _apply(self, data) -> None:
        try:
            d = orjson.loads(data)
            kind, key, exp, at = d["k"], d["key"], float(d["exp"]), float(d["at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if kind not in ("jti", "sid", "sub") or exp <= time.time():
            return
        self.known[f"{kind}:{key}"] = (exp, at)
        self.table.revoke(kind, key, exp, at)

    def _local(self, full: bool):
        t = self.table
        seq = t.seq
        if full or seq - self.seen > LOG:
            entries = list(t.scan())
        else:
            entries = [t.entry(t.log_slot(s)) for s in range(self.seen, seq)]
        self.seen = seq
        return entries

    async def _push(self, r, entries=None) -> None:
        if entries is None:
            if self.table.seq == self.seen:
                return
            entries = self._local(False)
        now = time.time()
        pipe = None
        for kind, key, exp, at, _c in entries:
            if exp <= now:
                continue
            name = NAMES[kind]
            k = key.decode("utf-8", "replace")
            field = f"{name}:{k}"
            if self.known.get(field) == (exp, at):
                continue
            val = orjson.dumps({"k": name, "key": k, "exp": exp, "at": at})
            if pipe is None:
                pipe = r.pipeline(transaction=False)
            pipe.hset(HASH, field, val)
            pipe.publish(CHANNEL, val)
            self.known[field] = (exp, at)
        if pipe is not None:
            try:
                await pipe.execute()
            except BaseException:
                self.seen = 0       # push everything again on the next resync
                self.known.clear()
                raise

    async def _resync(self, r) -> None:
        remote = await r.hgetall(HASH)
        now = time.time()
        stale = []
        for field, val in remote.items():
            try:
                d = orjson.loads(val)
                exp = float(d["exp"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                stale.append(field)
                continue
            if exp <= now:
                stale.append(field)
                continue
            self._apply(val)
        if stale:
            await r.hdel(HASH, *stale)
        await self._push(r, self._local(True))


def _where(url: str) -> str:
    from fastgw.ratelimit.redis_backend import where

    return where(url)


def redis_url(cfg) -> str | None:
    """The Redis URL revocations use: ``auth.revocation.redis_url``, else the rate limits'."""
    a = cfg.auth
    if a is None or a.revocation.backend != "redis":
        return None
    if a.revocation.redis_url:
        return a.revocation.redis_url
    rl = cfg.rate_limit
    red = getattr(rl, "redis", None) if rl is not None else None
    return getattr(red, "url", None)
