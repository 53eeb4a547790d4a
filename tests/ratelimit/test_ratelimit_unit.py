"""Rate limiting in one process with a hand-advanced clock (issue 6, "Tests": unit part).

The real middlewares of a route (``ratelimit_ip``, ``auth``, ``ratelimit``) are built from
a YAML config through the loader and driven like the engine drives them
(``tests.support.ratelimit.Chain``); the limiter's clock is a ``FakeClock``.  So the
counts are exact: a burst, then exactly ``rate x elapsed`` more, whatever the mix of limits,
keys and identities.
"""

from __future__ import annotations

import json
import math

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.config import ConfigError
from fastgw.obs.metrics import Metrics
from fastgw.pipeline.deps import Deps
from fastgw.ratelimit import headers as H
from fastgw.ratelimit.keys import IpParts, ip_text, key_fn
from fastgw.ratelimit.limiter import Limit, LimitSet

from tests.support.ratelimit import AUTH_BLOCK, SECRET, Chain, FakeClock, gcra_reference, load, token


def config(*, tiers: str = "", route_rl: str = "", svc_rl: str = "", extra: str = "", auth: bool = True,
           route_auth: bool = False, options: str = "") -> str:
    return f"""
gateway:
  trusted_proxies: []
services:
  api:
    url: "http://127.0.0.1:9"
{svc_rl}
    routes:
      - path: "/open/*"
        name: open
        methods: ["GET"]
{route_rl}
      - path: "/private/*"
        name: private
        methods: ["GET"]
        auth: true
{route_rl}
      - path: "/plain/*"
        name: plain
        methods: ["GET"]
{extra}
rate_limit:
{tiers}
{options}
{AUTH_BLOCK if auth else ""}
"""


def rule(rps, burst, key="total", backend="memory", indent=8) -> str:
    pad = " " * indent
    k = json.dumps(key)
    return f"{pad}rate_limit: {{requests_per_second: {rps}, burst: {burst}, key: {k}, backend: {backend}}}"


TIERS = """
  default: {requests_per_second: 2, burst: 5}
  authenticated: {requests_per_second: 4, burst: 8}
  editor: {requests_per_second: 10, burst: 20}
  admin: {requests_per_second: 100, burst: 200}
"""


# -- GCRA through the middleware: exact counts ------------------------------------------
def test_burst_then_refill_exact():
    ch = Chain(config(tiers=TIERS), "open")
    assert ch.names == ["ratelimit_ip:IpLimits"] + ch.names[1:] and "ratelimit:UserLimits" not in ch.names
    assert ch.statuses(5) == [200] * 5
    assert ch.statuses(3) == [429] * 3                 # refused requests consume nothing...
    ch.clock.advance(0.499)
    assert ch.request().status == 429
    ch.clock.advance(0.001)                            # ...so the next token is at exactly 0.5 s
    assert ch.statuses(2) == [200, 429]
    ch.clock.advance(10)                               # idle: the bucket holds at most burst
    assert ch.statuses(7) == [200] * 5 + [429] * 2


def test_long_run_allows_burst_plus_rate_times_elapsed():
    ch = Chain(config(tiers=TIERS), "open")
    allowed = 0
    for _ in range(3000):                              # 3 s of one request per ms
        allowed += ch.request().status == 200
        ch.clock.advance(0.001)
    # elapsed between the first and the last request: 2.999 s -> 5 + floor(2 * 2.999)
    assert allowed == 5 + math.floor(2 * 2.999)


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(min_value=0, max_value=2_000_000_000), min_size=1, max_size=60),
       rate=st.sampled_from([0.5, 1.0, 3.0, 7.0, 250.0]), burst=st.integers(min_value=1, max_value=12))
def test_matches_reference_gcra(gaps, rate, burst):
    ch = Chain(config(tiers="", svc_rl=rule(rate, burst, indent=4)), "plain")
    times, t = [], ch.clock.ns
    got = []
    for g in gaps:
        ch.clock.ns = t = t + g
        times.append(t)
        got.append(ch.request().status == 200)
    assert got == gcra_reference(times, rate, burst)


# -- several limits: all or nothing -------------------------------------------------------
def test_all_or_nothing_across_limits():
    # default tier 2/s burst 5 by IP, service 1/s burst 3 for everyone
    ch = Chain(config(tiers=TIERS, svc_rl=rule(1, 3, indent=4)), "open")
    assert ch.statuses(3) == [200] * 3
    r = ch.request()
    assert r.status == 429
    body = json.loads(r.body)
    assert body["violated-policies"] == ["service:api"]
    # the default tier was not charged by the refused requests: 2 left of 5
    assert r.headers["ratelimit"] == '"default";r=2;t=2, "service:api";r=0;t=3'
    ch.clock.advance(1.0)                               # service refills one token
    assert ch.request(ip="198.51.100.8").status == 200  # another IP: its own default budget
    ch.clock.advance(1.0)
    assert ch.statuses(2) == [200, 429]                 # 198.51.100.7: default had 2 left (+2 refilled)


def test_route_and_service_rules_are_separate_budgets():
    ch_open = Chain(config(tiers="", svc_rl=rule(1, 10, indent=4), route_rl=rule(1, 2)), "open")
    ch_plain = Chain(ch_open.cfg, "plain", deps=ch_open.deps, clock=ch_open.clock)
    assert ch_open.statuses(3) == [200, 200, 429]        # route rule: burst 2
    assert ch_plain.statuses(9) == [200] * 8 + [429]     # service: 10 - 2 spent via /open


# -- keys -----------------------------------------------------------------------------------
def test_ip_key_separates_clients_and_groups_ipv6_by_prefix():
    ch = Chain(config(tiers=TIERS), "open")
    assert ch.statuses(6, ip="203.0.113.1") == [200] * 5 + [429]
    assert ch.request(ip="203.0.113.2").status == 200
    assert ch.statuses(5, ip="2001:db8:1:2::1") == [200] * 5
    assert ch.request(ip="2001:db8:1:2:ffff::9").status == 429          # same /64
    assert ch.request(ip="2001:db8:1:3::1").status == 200               # next /64
    assert ch.statuses(5, ip="::ffff:192.0.2.9") == [200] * 5
    assert ch.request(ip="192.0.2.9").status == 429                     # IPv4-mapped is IPv4


def test_ip_text():
    assert ip_text("10.1.2.3") == b"10.1.2.3"
    assert ip_text("2001:db8::1", 64) == b"2001:db8::/64"
    assert ip_text("2001:db8::1", 128) == b"2001:db8::1"
    assert ip_text("::ffff:10.0.0.1") == b"10.0.0.1"
    assert ip_text("fe80::1%eth0", 64) == b"fe80::/64"
    assert ip_text("not-an-ip") == b"not-an-ip"


def test_header_key_and_fallback_to_ip():
    ch = Chain(config(tiers="", route_rl=rule(1, 2, key="header:X-API-Key")), "open")
    assert ch.statuses(3, headers=[("X-API-Key", "k1")]) == [200, 200, 429]
    assert ch.statuses(3, headers=[("x-api-key", "k2")]) == [200, 200, 429]
    # missing header: keyed by the client IP, never unlimited
    assert ch.statuses(3) == [200, 200, 429]
    assert ch.statuses(2, ip="192.0.2.50") == [200, 200]
    # a header whose value is an address is not the fallback budget of that address
    assert ch.statuses(2, ip="192.0.2.51", headers=[("X-API-Key", "192.0.2.51")]) == [200, 200]
    assert ch.statuses(2, ip="192.0.2.51") == [200, 200]


def test_user_key_falls_back_to_ip_for_anonymous():
    ch = Chain(config(tiers="", route_rl=rule(1, 1, key="user")), "open")
    assert ch.statuses(2) == [200, 429]
    assert ch.request(ip="192.0.2.77").status == 200


def test_combined_key():
    ch = Chain(config(tiers="", route_rl=rule(1, 1, key=["ip", "header:X-Tenant"])), "open")
    assert ch.statuses(2, headers=[("X-Tenant", "a")]) == [200, 429]
    assert ch.request(headers=[("X-Tenant", "b")]).status == 200
    assert ch.request(ip="192.0.2.1", headers=[("X-Tenant", "a")]).status == 200


def test_long_key_parts_are_hashed():
    ips = IpParts()
    fn = key_fn(b"r:x\0", ("header:x-k",), ips)

    class C:
        client_ip = "192.0.2.1"

        def __init__(self, v):
            self.v = v

        def header(self, name):
            return self.v
    k1, k2 = fn(C(b"a" * 5000)), fn(C(b"a" * 4999 + b"b"))
    assert len(k1) < 40 and k1 != k2
    assert fn(C(b"short")) == b"r:x\0h=short"
    assert fn(C(None)) == b"r:x\0i=192.0.2.1"


# -- tiers, roles, exemption ----------------------------------------------------------------
def test_tier_by_identity():
    ch = Chain(config(tiers=TIERS), "private")
    assert ch.names == ["ratelimit_ip:AuthFailureGuard", "auth:Auth", "ratelimit:UserLimits"]
    alice = token("alice")
    assert ch.statuses(9, token=alice) == [200] * 8 + [429]              # authenticated: burst 8
    assert ch.statuses(9, token=token("bob")) == [200] * 8 + [429]       # keyed by sub, not IP
    ed = token("carol", ["editor", "viewer"])
    assert ch.statuses(21, token=ed) == [200] * 20 + [429]               # role tier
    both = token("dave", ["editor", "admin"])
    assert ch.statuses(201, token=both) == [200] * 200 + [429]           # the most generous role tier
    r = ch.request(token=alice)
    assert r.status == 429 and json.loads(r.body)["violated-policies"] == ["authenticated"]


def test_open_route_tier_and_rule_per_address_all_or_nothing():
    """A tier and a route rule on an open route: the two-limit path of ``IpLimits`` (per
    address, after its first request) decides both, all or nothing, and counts both."""
    ch = Chain(config(tiers=TIERS, route_rl=rule(1, 7)), "open")
    assert ch.statuses(6) == [200] * 5 + [429]                          # default: burst 5
    assert ch.statuses(3, ip="192.0.2.2") == [200, 200, 429]            # route total: 7
    r = ch.request(ip="192.0.2.3")
    assert r.status == 429 and json.loads(r.body)["violated-policies"] == ["route:open"]
    ch.clock.advance(1.0)                                               # the rule: 1 more
    assert ch.statuses(2, ip="192.0.2.2") == [200, 429]
    assert ch.metric("default", "allowed") == 8 and ch.metric("route:open", "allowed") == 8
    assert ch.metric("default", "limited") == 1 and ch.metric("route:open", "limited") == 3


def test_one_subject_with_tokens_of_other_roles_switches_tier_each_request():
    """The per-subject memo of the usual request (``UserLimits.fast``) holds the role set
    it was decided for: a token of the same subject with other roles gets its own tier."""
    ch = Chain(config(tiers=TIERS, route_rl=rule(1000, 1000)), "private")
    plain, ed = token("alice"), token("alice", ["editor"])
    assert ch.statuses(8, token=plain) == [200] * 8                      # authenticated: burst 8
    got = [ch.request(token=t).status for t in (plain, ed, plain, ed)]
    assert got == [429, 200, 429, 200]                                   # editor: its own budget
    assert ch.statuses(19, token=ed) == [200] * 18 + [429]               # editor: burst 20
    assert ch.metric("authenticated", "allowed") == 8 and ch.metric("authenticated", "limited") == 2
    assert ch.metric("route:private", "allowed") == 8 + 2 + 18


def test_slots_memoised_per_subject_or_address_only_when_the_keys_say_so():
    """A set memoises a request's slots by the one thing all its keys depend on."""
    ips = IpParts()

    def ls(*parts):
        return LimitSet([Limit(f"l{i}", 1, 1, key_fn(b"p%d\0" % i, p, ips), False, None)
                         for i, p in enumerate(parts)])
    assert ls(("user",), ()).memo is not None and ls(("user",), ()).by_user
    assert ls(("ip",), ()).memo is not None and not ls(("ip",), ()).by_user
    assert ls((),).memo is not None
    assert ls(("user",), ("ip",)).memo is None      # two identities for a verified request
    assert ls(("header:x-k",),).memo is None
    assert ls(("ip", "user"),).memo is None
    # through the chain: keyed by sub whatever the address, and each sub its own budget
    ch = Chain(config(tiers=TIERS, route_rl=rule(1000, 1000, key="user")), "private")
    alice = token("alice")
    assert ch.statuses(4, token=alice) + ch.statuses(5, token=alice, ip="192.0.2.9") == [200] * 8 + [429]
    assert ch.statuses(1, token=token("bob"), ip="192.0.2.9") == [200]


def test_verified_user_without_tier_falls_back_to_default_by_ip():
    ch = Chain(config(tiers="  default: {requests_per_second: 1, burst: 3}\n"), "private")
    assert ch.statuses(4, token=token("a")) == [200] * 3 + [429]
    assert ch.request(token=token("b")).status == 429                    # same IP
    assert ch.request(token=token("b"), ip="192.0.2.2").status == 200


def test_exempt_roles_bypass_every_limit():
    ch = Chain(config(tiers=TIERS, route_rl=rule(1, 1), options="  exempt_roles: [admin]"), "private")
    adm = token("root", ["admin"])
    assert ch.statuses(50, token=adm) == [200] * 50
    assert ch.statuses(2, token=token("eve")) == [200, 429]              # the route rule still applies
    assert ch.metric("route:private", "allowed") == 1


# -- failed authentications: peeked before verification ------------------------------------
def test_bad_tokens_are_limited_before_verification():
    ch = Chain(config(tiers=TIERS), "private")

    def verifications() -> float:   # a token that fails is never cached: one miss per verification
        return ch.deps.metrics.store.snapshot().get('fastgw_jwt_cache_total{result="miss"}', 0)
    bad = token("mallory", secret="another-secret-" + "z" * 40)
    got = [ch.request(token=bad).status for _ in range(12)]
    assert got == [401] * 5 + [429] * 7                  # default tier numbers: burst 5
    assert verifications() == 5                          # no crypto for the refused ones
    r = ch.request(token=bad)
    assert r.headers["retry-after"] == "1" and json.loads(r.body)["violated-policies"] == ["auth_failures"]
    assert ch.request(ip="192.0.2.9", token=token("alice")).status == 200   # other addresses: unaffected
    ch.clock.advance(0.5)
    assert ch.request(token=bad).status == 401           # refilled: verified again, and refused
    # no token at all is a failed authentication too
    assert [ch.request(ip="192.0.2.10").status for _ in range(6)] == [401] * 5 + [429]
    assert ch.metric("auth_failures", "allowed") == 5 + 1 + 5
    assert ch.metric("auth_failures", "limited") == 7 + 1 + 1


def test_anonymous_traffic_does_not_lock_out_tokens_behind_the_same_address():
    cfg = config(tiers=TIERS)
    ch_open = Chain(cfg, "open")
    ch_priv = Chain(ch_open.cfg, "private", deps=ch_open.deps, clock=ch_open.clock)
    assert ch_open.statuses(6) == [200] * 5 + [429]      # this IP's anonymous budget is spent
    assert ch_priv.statuses(3, token=token("alice")) == [200] * 3


# -- dry run, headers, metrics ---------------------------------------------------------------
def test_dry_run_counts_and_reports_but_never_refuses():
    ch = Chain(config(tiers=TIERS, options="  dry_run: true\n  headers: {on_allowed: true}"), "open")
    rs = [ch.request() for _ in range(8)]
    assert [r.status for r in rs] == [200] * 8
    assert [r.headers["ratelimit"] for r in rs[4:6]] == ['"default";r=0;t=3', '"default";r=0;t=3']
    assert "ratelimit_dry_run" in rs[-1].ctx.flags and "ratelimit_dry_run" not in rs[0].ctx.flags
    assert ch.metric("default", "allowed") == 5 and ch.metric("default", "dry_run_limited") == 3
    assert ch.metric("default", "limited") == 0
    ch.clock.advance(0.5)                                # refused requests consumed nothing
    assert "ratelimit_dry_run" not in ch.request().ctx.flags


def test_headers_ietf_and_legacy_switches():
    ch = Chain(config(tiers=TIERS, options="  headers: {ietf: true, legacy: true, on_allowed: true}"), "open")
    r = ch.request()
    assert r.headers["ratelimit-policy"] == '"default";q=5;w=3'
    assert r.headers["ratelimit"] == '"default";r=4;t=1'
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"], r.headers["x-ratelimit-reset"]) \
        == ("5", "4", "1")
    ch2 = Chain(config(tiers=TIERS), "open")             # defaults: IETF on 429 only
    assert "ratelimit" not in ch2.request().headers
    for _ in range(4):
        ch2.request()
    r = ch2.request()
    assert r.status == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["ratelimit-policy"] == '"default";q=5;w=3'
    assert r.headers["ratelimit"] == '"default";r=0;t=3' and r.headers["retry-after"] == "1"
    assert "x-ratelimit-limit" not in r.headers
    doc = json.loads(r.body)
    assert doc["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert doc["status"] == 429 and doc["request_id"] == "rid"
    ch3 = Chain(config(tiers=TIERS, options="  headers: {ietf: false, legacy: true}"), "open")
    for _ in range(5):
        ch3.request()
    r = ch3.request()
    assert "ratelimit" not in r.headers and r.headers["x-ratelimit-remaining"] == "0"


def test_retry_after_and_windows():
    assert H.window(2, 5) == 3 and H.window(100, 200) == 2 and H.window(0.5, 1) == 2 and H.window(1000, 1) == 1
    assert H.whole_seconds(0.0) == 0 and H.whole_seconds(0.01) == 1 and H.whole_seconds(2.0) == 2
    ch = Chain(config(tiers="  default: {requests_per_second: 0.1, burst: 1}\n"), "open")
    assert ch.request().status == 200
    r = ch.request()
    assert r.headers["retry-after"] == "10" and r.headers["ratelimit-policy"] == '"default";q=1;w=10'
    ch.clock.advance(9.5)
    assert ch.request().headers["retry-after"] == "1"


def test_legacy_fields_report_the_binding_limit():
    ch = Chain(config(tiers=TIERS, svc_rl=rule(1, 3, indent=4),
                      options="  headers: {legacy: true, on_allowed: true}"), "open")
    r = ch.request()
    assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "2"


def test_no_limits_no_middleware():
    cfg = config(tiers="", options="  dry_run: false")
    assert Chain(cfg, "open").names == ["auth:StripIdentity"]
    assert Chain(cfg, "private").names == ["auth:Auth"]


def test_table_metrics_publication():
    ch = Chain(config(tiers=TIERS, options="  table_slots: 8192"), "open")
    for i in range(50):
        ch.request(ip=f"192.0.2.{i}")
    lim = ch.limiter
    lim.publish()
    snap = ch.deps.metrics.store.snapshot()
    assert snap["fastgw_ratelimit_table_slots"] == 8192
    assert snap["fastgw_ratelimit_table_occupied_slots"] == 50          # exact up to 1024 buckets
    assert snap.get("fastgw_ratelimit_table_evictions_total", 0) == 0
    ch.clock.advance(3.0)                                               # every bucket full again
    lim.publish()
    assert ch.deps.metrics.store.snapshot()["fastgw_ratelimit_table_occupied_slots"] == 0


def test_lock_recoveries_and_timeouts_published_as_deltas_and_timeouts_logged(caplog):
    ch = Chain(config(tiers=TIERS), "open")
    lim, locks = ch.limiter, ch.limiter.table._locks
    locks.recovered, locks.timeouts = 2, 3
    with caplog.at_level("WARNING", logger="fastgw"):
        lim.publish()
    snap = ch.deps.metrics.store.snapshot()
    assert snap["fastgw_ratelimit_lock_recoveries_total"] == 2
    assert snap["fastgw_ratelimit_lock_timeouts_total"] == 3
    assert any("3 decisions taken without charging" in r.getMessage() for r in caplog.records)
    caplog.clear()
    locks.timeouts = 4
    with caplog.at_level("WARNING", logger="fastgw"):
        lim.publish()
    snap = ch.deps.metrics.store.snapshot()
    assert snap["fastgw_ratelimit_lock_recoveries_total"] == 2 and snap["fastgw_ratelimit_lock_timeouts_total"] == 4
    assert any("1 decisions taken without charging" in r.getMessage() for r in caplog.records)
    caplog.clear()
    lim.publish()                                   # nothing new: nothing counted, nothing logged
    assert ch.deps.metrics.store.snapshot()["fastgw_ratelimit_lock_timeouts_total"] == 4 and not caplog.records


def test_occupancy_estimate_of_a_large_table():
    ch = Chain(config(tiers=TIERS, options="  table_slots: 262144"), "open")
    table, now = ch.limiter.table, ch.clock()
    for i in range(60000):
        table.check(b"k%d" % i, 1.0, 5, now)
    exact = table.occupancy(now)
    estimates = [ch.limiter.occupancy(now) for _ in range(4)]           # rotating samples
    assert all(abs(e - exact) < 0.1 * exact for e in estimates), (exact, estimates)


def test_limiter_survives_reload_and_keeps_state():
    ch = Chain(config(tiers=TIERS), "open")
    assert ch.statuses(5) == [200] * 5
    ch2 = Chain(config(tiers=TIERS), "open", deps=ch.deps, clock=ch.clock)   # a new config snapshot
    assert ch2.limiter is ch.limiter
    assert ch2.request().status == 429


def test_standalone_region_is_created_once_per_process_state():
    d = Deps(None, metrics=Metrics())
    ch = Chain(config(tiers=TIERS, options="  table_slots: 1024"), "open", deps=d)
    assert ch.limiter.table.slots == 1024 and ch.limiter.region is not None


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key,msg", [
    ("bogus", "expected 'total', 'ip', 'user' or 'header:NAME', got 'bogus'"),
    ("header:", "'header:' needs a header name"),
    (["total", "ip"], "'total' cannot be combined"),
    (["ip", "ip"], "duplicate key part 'ip'"),
    ([], "must not be empty"),
])
def test_rule_key_errors(key, msg):
    with pytest.raises(ConfigError) as e:
        load(config(tiers="", route_rl=rule(1, 1, key=key)))
    assert any("routes[0].rate_limit.key: " + msg in x for x in e.value.errors), e.value.errors


def test_rule_numbers_and_backend_errors():
    with pytest.raises(ConfigError) as e:
        load(config(tiers="", route_rl="        rate_limit: {requests_per_second: 0, burst: 0}"))
    errs = "\n".join(e.value.errors)
    assert "requests_per_second: must be greater than 0" in errs and "burst: must be at least 1" in errs
    with pytest.raises(ConfigError) as e:
        load(config(tiers=TIERS, options="  backend: redis"))
    assert "rate_limit.backend: 'redis' needs rate_limit.redis.url" in e.value.errors
    cfg = load(config(tiers="", route_rl=rule(1, 1, key="HEADER:X-Api-Key")))
    assert cfg.services["api"].routes[0].rate_limit.key == "header:x-api-key"


def test_redis_rule_without_url_is_refused_with_its_path():
    from fastgw.config import ConfigError
    with pytest.raises(ConfigError, match=r"routes\[0\]\.rate_limit\.backend: 'redis' needs rate_limit.redis.url"):
        Chain(config(tiers="", route_rl=rule(1, 1, backend="redis")), "open")


def test_fake_clock_and_token_selfcheck():
    c = FakeClock(1.0)
    c.advance(0.5)
    assert c() == 1_500_000_000
    claims = jwt.decode(token("bob", ["admin"]), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["roles"] == ["admin"]
