"""Micro-benchmarks of the rate-limit middlewares (pytest-benchmark).

Run: ``python -m pytest bench/micro/test_micro_ratelimit.py -p no:xdist --benchmark-only
--benchmark-columns=min,median,mean,ops``.  On a shared box the *min* column is the honest
number.

What one request pays, from the ``request_filter`` call to its return, with the real
objects of a config loaded by the loader (one process, a local region, a real metrics
registry): the key (memo hit), the clock, the table check (two ``fcntl`` syscalls, see
fastgw/shm/ratelimit.py), one metric increment.  Target: one limit around 2 us (the table
check itself is about 2.0 us of it: ``test_table_check_only`` is the floor), a few
hundred ns more per extra limit.

- ``ip_limit``: a route without auth, the ``default`` tier by client IP (allowed).
- ``ip_limit_headers``: the same with ``headers.on_allowed`` (IETF + legacy fields built).
- ``two_limits``: ``default`` tier + a route rule (``take_all``: one lock call for the span of
  the request's buckets and one unlock, whatever the number of limits).
- ``user_tier``: after auth, the ``authenticated`` tier by ``sub``.
- ``auth_failure_peek``: before auth on an auth route, the failed-authentication peek.
- ``refused``: a 429 (problem+json body and fields built).
"""

from __future__ import annotations

import itertools

import pytest
import yaml

from fastgw.config.loader import load_config_data
from fastgw.middleware import ratelimit as rl_mw
from fastgw.middleware import ratelimit_ip as rlip_mw
from fastgw.obs.metrics import Metrics
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from fastgw.pipeline.deps import Deps
from fastgw.ratelimit.limiter import STATE_KEY
from fastgw.shm.ratelimit import spec

T0 = 10**12

CONFIG = """
gateway:
  trusted_proxies: []
services:
  api:
    url: "http://127.0.0.1:9"
    routes:
      - {path: "/open/*", name: open, methods: ["GET"]}
      - path: "/two/*"
        name: two
        methods: ["GET"]
        rate_limit: {requests_per_second: 1000000, burst: 1000}
      - {path: "/private/*", name: private, methods: ["GET"], auth: true}
      - {path: "/strict/*", name: strict, methods: ["GET"], rate_limit: {requests_per_second: 1, burst: 1}}
rate_limit:
  default: {requests_per_second: 1000000, burst: 1000}
  authenticated: {requests_per_second: 1000000, burst: 1000}
  headers: {ietf: true, legacy: true, on_allowed: %s}
auth:
  jwt_secret: "%s"
"""


def _setup(on_allowed: bool = False):
    """(deps, limiter, mw(build, route name)) for the config above, on a clock that moves
    1 us per check (so the 1e6/s limits always allow)."""
    cfg, _ = load_config_data(yaml.safe_load(CONFIG % ("true" if on_allowed else "false", "s" * 40)), env={})
    deps = Deps(cfg, metrics=Metrics())
    routes = {r.name: (s, r) for s in cfg.services.values() for r in s.routes}

    def mw(build, name):
        s, r = routes[name]
        return build(cfg, s, r, deps)
    mw(rlip_mw.build, "open")                       # creates the worker's limiter
    lim = deps.state[STATE_KEY]
    lim.clock = itertools.count(T0, 1000).__next__
    return deps, lim, mw


def _ctx(ip: str = "203.0.113.7", user: str | None = None) -> Ctx:
    c = Ctx(Request.build("GET", b"/", peer_ip=ip))
    c.request_id = "rid"
    c.user = user
    return c


@pytest.fixture(scope="module")
def env():
    return _setup(False)


@pytest.fixture(scope="module")
def env_headers():
    return _setup(True)


def test_table_check_only(benchmark, env):
    """The floor: the table check with a prepared key."""
    _deps, lim, _mw = env
    check, clock = lim.table.check, lim.clock
    benchmark(lambda: check(b"t:default\0i=203.0.113.7", 1e6, 1000, clock()))


def test_table_take_all_only(benchmark, env):
    """The floor of two limits: ``take_all`` with prepared keys and specs (no decisions)."""
    _deps, lim, _mw = env
    take_all, clock = lim.table.take_all, lim.clock
    keys = (b"t:default\0i=203.0.113.7", b"r:a\0i=203.0.113.7")
    specs = (spec(1e6, 1000), spec(1e6, 1000))
    benchmark(lambda: take_all(keys, specs, clock()))


def test_ip_limit(benchmark, env):
    _deps, _lim, mw = env
    f = mw(rlip_mw.build, "open").request_filter
    ctx = _ctx()
    assert f(ctx) is None
    benchmark(f, ctx)


def test_ip_limit_headers(benchmark, env_headers):
    _deps, _lim, mw = env_headers
    f = mw(rlip_mw.build, "open").request_filter
    ctx = _ctx()

    def one():
        ctx.resp_lines = b""
        return f(ctx)
    assert one() is None and ctx.resp_lines
    benchmark(one)


def test_two_limits(benchmark, env):
    _deps, _lim, mw = env
    f = mw(rlip_mw.build, "two").request_filter
    ctx = _ctx()
    assert f(ctx) is None
    benchmark(f, ctx)


def test_user_tier(benchmark, env):
    _deps, _lim, mw = env
    f = mw(rl_mw.build, "private").request_filter
    ctx = _ctx(user="alice")
    assert f(ctx) is None
    benchmark(f, ctx)


def test_auth_failure_peek(benchmark, env):
    _deps, _lim, mw = env
    f = mw(rlip_mw.build, "private").request_filter
    ctx = _ctx()
    assert f(ctx) is None
    benchmark(f, ctx)


def test_refused(benchmark, env):
    _deps, _lim, mw = env
    f = mw(rlip_mw.build, "strict").request_filter
    ctx = _ctx("198.51.100.1")
    f(ctx)
    assert f(ctx).status == 429
    benchmark(f, ctx)
