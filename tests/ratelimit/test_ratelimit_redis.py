"""The Redis backend (issue 6): GCRA in one Lua script, shared by gateway hosts, failing
open or closed without ever blocking a worker.

A real ``redis-server`` (Debian package) on a free loopback port, no persistence, started
and stopped by each test (``RedisServer``).  First the backend alone (exact counts,
all-or-nothing, expiry, NOSCRIPT after a flush, timeouts against a paused server, fast
failure while down), then two gateways on different ports sharing one limit, and Redis
killed mid-test: the fail-open gateway keeps answering 200, the fail-closed one 503, both
at once; when Redis comes back the shared limit holds again.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.support.config import ECHO_HEAD
from tests.support.gateway import Gateway
from tests.support.procs import metrics_text, series
from tests.support.ratelimit import ALL_ROUTE, Chain, RedisServer
from tests.support.wire import closed_port
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

from fastgw.ratelimit.redis_backend import BACKOFF_MIN, KEY_PREFIX, BackendDown, RedisBackend


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def redis():
    with RedisServer() as r:
        yield r


# -- the backend alone ----------------------------------------------------------------------
def test_gcra_burst_and_all_or_nothing(redis):
    async def go():
        b = RedisBackend(redis.url, 0.5)
        out = [(await b.check([b"k1"], [(1.0, 3)]))[0] for _ in range(5)]
        assert out == [True, True, True, False, False]
        ok, ds = await b.check([b"k1"], [(1.0, 3)])
        assert not ok and ds[0][0] is False and ds[0][1] == 0 and 0.0 < ds[0][3] <= 1.0
        # two keys, one refuses: the other is not charged
        ok, ds = await b.check([b"k2", b"k1"], [(1.0, 2), (1.0, 3)])
        assert not ok and ds[0][0] and not ds[1][0]
        ok, ds = await b.check([b"k2"], [(1.0, 2)])
        assert ok and ds[0][1] == 1                           # k2 still had both tokens
        # the same key twice in one call is staged, not read twice
        ok, ds = await b.check([b"k3", b"k3"], [(1.0, 2), (1.0, 2)])
        assert ok and ds[1][1] == 0
        ok, _ = await b.check([b"k3"], [(1.0, 2)])
        assert not ok
        await b.aclose()
    run(go())
    ttl = int(redis.command("PTTL", (KEY_PREFIX + b"k1").decode()).split(b"\r\n")[0][1:])
    assert 1000 < ttl <= 3001                                 # expires when the bucket is full


@pytest.mark.timing  # a count within a time window: a busy sibling made it refill twice
def test_refill_uses_redis_time(redis):
    async def go():
        b = RedisBackend(redis.url, 0.5)
        assert [(await b.check([b"r"], [(10.0, 2)]))[0] for _ in range(3)] == [True, True, False]
        await asyncio.sleep(0.12)                              # one token per 100 ms
        assert [(await b.check([b"r"], [(10.0, 2)]))[0] for _ in range(2)] == [True, False]
        await b.aclose()
    run(go())


def test_script_reloaded_after_flush(redis):
    async def go():
        b = RedisBackend(redis.url, 0.5)
        assert (await b.check([b"s"], [(1.0, 5)]))[0]
        redis.command("SCRIPT", "FLUSH")
        ok, ds = await b.check([b"s"], [(1.0, 5)])
        assert ok and ds[0][1] == 3
        await b.aclose()
    run(go())


@pytest.mark.timing
def test_timeout_against_a_paused_server_then_fast_failure(redis):
    async def go():
        b = RedisBackend(redis.url, 0.1)
        assert (await b.check([b"p"], [(1.0, 5)]))[0]        # connected, script loaded
        redis.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(BackendDown):
                await b.check([b"p"], [(1.0, 5)])
            assert time.monotonic() - t0 < 0.5                 # the deadline, not a hang
            t0 = time.monotonic()
            for _ in range(100):                               # down: no network, no wait
                with pytest.raises(BackendDown):
                    await b.check([b"p"], [(1.0, 5)])
            assert time.monotonic() - t0 < 0.05
        finally:
            redis.resume()
        await asyncio.sleep(BACKOFF_MIN + 0.05)
        assert (await b.check([b"p"], [(1.0, 5)]))[0]         # the probe answers: up again
        assert b.down_until == 0.0
        await b.aclose()
    run(go())


def test_refused_connection_fails_fast():
    async def go():
        b = RedisBackend(f"redis://127.0.0.1:{closed_port()}/0", 0.5)
        t0 = time.monotonic()
        with pytest.raises(BackendDown):
            await b.check([b"x"], [(1.0, 1)])
        assert time.monotonic() - t0 < 0.5 and b.failures == 1
    run(go())


def test_middleware_mixed_memory_and_redis(redis):
    text = ALL_ROUTE + f"""        rate_limit: {{requests_per_second: 1, burst: 3, backend: redis}}
rate_limit:
  default: {{requests_per_second: 1, burst: 5}}
  redis: {{url: "{redis.url}", timeout: 200ms, on_error: open}}
"""
    ch = Chain(text, "all")
    assert ch.names == ["ratelimit_ip:IpLimitsAsync", "auth:StripIdentity"]
    assert ch.statuses(4) == [200, 200, 200, 429]
    r = ch.request()
    assert json.loads(r.body)["violated-policies"] == ["route:all"]
    assert r.headers["ratelimit"] == '"default";r=2;t=3, "route:all";r=0;t=3'
    # another client: its own default budget, the shared route budget is empty
    assert ch.request(ip="192.0.2.1").status == 429
    # the memory limit refuses first: no round trip, nothing spent in Redis
    ch2 = Chain(text.replace("burst: 5", "burst: 1"), "all")
    ch2.request(ip="192.0.2.200")
    before = redis.command("GET", (KEY_PREFIX + b"r:all\0").decode())
    assert ch2.request(ip="192.0.2.200").status == 429
    assert redis.command("GET", (KEY_PREFIX + b"r:all\0").decode()) == before
    redis.kill()                                             # on_error: open -> memory limits only
    assert ch.request(ip="192.0.2.2").status == 200
    assert ch.metric("route:all", "backend_error") == 1


def test_reload_retires_the_old_redis_pool(redis, monkeypatch):
    import fastgw.ratelimit.limiter as limiter_mod
    text = ALL_ROUTE + f"""        rate_limit: {{requests_per_second: 1, burst: 3, backend: redis}}
rate_limit:
  redis: {{url: "{redis.url}", timeout: 200ms}}
"""
    old = Chain(text, "all")
    assert old.request().status == 200
    b_old = old.mws[0].cfg.plan.backend
    retired = []
    monkeypatch.setattr(limiter_mod.Limiter, "retire_backend", lambda self, b: retired.append(b))
    same = Chain(text, "all", deps=old.deps, clock=old.clock)         # same URL: the pool is kept
    assert same.mws[0].cfg.plan.backend is b_old
    for m in old.mws:
        m.close()
    assert retired == []
    moved = Chain(text.replace("timeout: 200ms", "timeout: 300ms"), "all", deps=old.deps, clock=old.clock)
    assert moved.mws[0].cfg.plan.backend is not b_old
    for m in same.mws:
        m.close()
        m.close()                                                     # idempotent
    assert retired == [b_old]


# -- two gateways sharing one limit ----------------------------------------------------------
GW = ECHO_HEAD + """      - path: "/shared/*"
        name: shared
        methods: ["GET"]
        rate_limit: {requests_per_second: 0.5, burst: 10, backend: redis}
rate_limit:
  redis: {url: "%s", timeout: 100ms, on_error: %s}
monitoring:
  metrics_port: 0
  logging:
    level: warning
"""


@pytest.mark.timing
def test_two_gateways_share_a_limit_and_fail_open_or_closed(redis):
    with EchoUpstream() as up, \
            Gateway(GW % (redis.url, "open"), upstream=up) as a, \
            Gateway(GW % (redis.url, "closed"), upstream=up) as b:
        assert a.port != b.port
        got = [(a if i % 2 == 0 else b).request("GET", "/shared/x")[0] for i in range(14)]
        assert got.count(200) == 10 and got[-3:] == [429] * 3        # one budget for both hosts
        redis.kill()
        t0 = time.monotonic()
        ra = [a.request("GET", "/shared/x", timeout=5)[0] for _ in range(5)]
        rb = [b.request("GET", "/shared/x", timeout=5) for _ in range(5)]
        assert time.monotonic() - t0 < 3.0, "a request waited on the dead backend"
        assert ra == [200] * 5                                       # fail open
        assert [r[0] for r in rb] == [503] * 5                       # fail closed
        assert rb[0][1]["retry-after"] == "1"
        assert json.loads(rb[0][2])["policies"] == ["route:shared"]
        dec = series(metrics_text(a), "fastgw_ratelimit_decisions_total")
        assert dec['{limit="route:shared",result="backend_error"}'] == 5
        assert series(metrics_text(a), "fastgw_ratelimit_redis_fallback_total") == {'{mode="open"}': 5}
        assert series(metrics_text(b), "fastgw_ratelimit_redis_fallback_total") == {'{mode="closed"}': 5}
        assert sum(series(metrics_text(a), "fastgw_redis_errors_total").values()) >= 1
        assert any("redis 127.0.0.1" in ln and "unavailable" in ln for ln in a.stderr_lines)
        # back on the same port, empty: the shared limit holds again once the backoff ends
        with RedisServer(redis.port):
            def refused_again():
                a.request("GET", "/shared/y")
                return b.request("GET", "/shared/y")[0] == 200
            assert wait_for(refused_again, timeout=10, interval=0.3)
            got = [(a if i % 2 == 0 else b).request("GET", "/shared/z")[0] for i in range(14)]
            assert got.count(200) <= 10 + 2 and got[-1] == 429
