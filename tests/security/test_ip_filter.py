"""IP allow/deny on the resolved client address: table of (rules, address, allowed)."""

from __future__ import annotations

import orjson
import pytest

from fastgw.config.security import IpFilterConfig
from fastgw.middleware import ip_filter as ipf_mod
from fastgw.middleware.ip_filter import IpFilter, parse_ip
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx

ALLOW_PRIVATE = IpFilterConfig(allow=["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"], deny=["10.66.0.0/16",
                                                                                             "10.1.2.3"])
DENY_ONLY = IpFilterConfig(deny=["203.0.113.0/24", "2001:db8:bad::/48"])
SINGLE = IpFilterConfig(allow=["198.51.100.7", "::1"])

CASES = [
    # (id, config, client address, allowed)
    ("allow: inside", ALLOW_PRIVATE, "10.20.30.40", True),
    ("allow: second range", ALLOW_PRIVATE, "192.168.1.1", True),
    ("allow: outside", ALLOW_PRIVATE, "172.16.0.1", False),
    ("deny wins over allow (range)", ALLOW_PRIVATE, "10.66.1.1", False),
    ("deny wins over allow (host)", ALLOW_PRIVATE, "10.1.2.3", False),
    ("neighbour of denied host", ALLOW_PRIVATE, "10.1.2.4", True),
    ("IPv6 inside", ALLOW_PRIVATE, "2001:db8::1", True),
    ("IPv6 outside", ALLOW_PRIVATE, "2001:db9::1", False),
    ("IPv4-mapped IPv6 is the IPv4 address", ALLOW_PRIVATE, "::ffff:10.9.9.9", True),
    ("IPv4-mapped IPv6 denied", ALLOW_PRIVATE, "::ffff:10.66.0.1", False),
    ("deny-only: denied", DENY_ONLY, "203.0.113.9", False),
    ("deny-only: others pass", DENY_ONLY, "198.51.100.1", True),
    ("deny-only: IPv6 denied", DENY_ONLY, "2001:db8:bad:1::5", False),
    ("deny-only: IPv6 passes", DENY_ONLY, "2001:db8:900d::5", True),
    ("single address", SINGLE, "198.51.100.7", True),
    ("single address: neighbour", SINGLE, "198.51.100.8", False),
    ("IPv6 loopback", SINGLE, "::1", True),
    ("zone id ignored", SINGLE, "::1%lo", True),
    ("unparseable: fail closed (allow list)", ALLOW_PRIVATE, "not-an-ip", False),
    ("unparseable: fail closed (deny only)", DENY_ONLY, "", False),
    ("IPv4 with leading zeros is not an address", DENY_ONLY, "203.0.113.009", False),
]


@pytest.mark.parametrize("cfg,ip,allowed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision(cfg, ip, allowed):
    mw = IpFilter(cfg)
    ctx = Ctx(Request())
    ctx.client_ip = ip
    ctx.request_id = "rid-7"
    reply = mw.request_filter(ctx)
    if allowed:
        assert reply is None
        assert "ip_denied" not in ctx.flags
    else:
        assert reply.status == 403
        assert reply.get(b"content-type") == b"application/problem+json"
        doc = orjson.loads(reply.body)
        assert doc["status"] == 403 and doc["request_id"] == "rid-7" and doc["title"] == "Forbidden"
        assert "ip_denied" in ctx.flags
    # a second request from the same address takes the memoised decision
    ctx2 = Ctx(Request())
    ctx2.client_ip = ip
    assert (mw.request_filter(ctx2) is None) is allowed


def test_decision_cache_is_bounded():
    mw = IpFilter(DENY_ONLY)
    for i in range(ipf_mod._CACHE_MAX + 10):
        ctx = Ctx(Request())
        ctx.client_ip = f"198.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        assert mw.request_filter(ctx) is None
    assert len(mw._cache) <= ipf_mod._CACHE_MAX


def test_many_ranges_cost_one_lookup_per_prefix_length():
    cfg = IpFilterConfig(deny=[f"10.{a}.{b}.0/24" for a in range(40) for b in range(0, 250, 10)])
    mw = IpFilter(cfg)
    assert len(mw._deny[4]) == 1  # 1,000 /24 networks: a single set
    assert not mw.allowed("10.39.240.77") and mw.allowed("10.39.241.77")


def test_parse_ip():
    assert parse_ip("1.2.3.4") == (4, 0x01020304)
    assert parse_ip("::ffff:1.2.3.4") == (4, 0x01020304)
    assert parse_ip("::1") == (6, 1)
    assert parse_ip("1.2.3") is None and parse_ip("[::1]") is None


def test_build_inherit_replace_disable():
    root = type("Root", (), {"ip_filter": DENY_ONLY})()
    route = type("Route", (), {"ip_filter": None})()
    assert isinstance(ipf_mod.build(root, None, route, None), IpFilter)
    assert isinstance(ipf_mod.build(root, None, None, None), IpFilter)
    route.ip_filter = False
    assert ipf_mod.build(root, None, route, None) is None
    route.ip_filter = SINGLE
    assert ipf_mod.build(root, None, route, None).cfg is SINGLE
    route.ip_filter = IpFilterConfig()  # no rule: nothing to run
    assert ipf_mod.build(root, None, route, None) is None


def test_bad_cidrs_named_at_load():
    from fastgw.config.errors import ConfigError
    from fastgw.config.loader import load_config_text

    text = """
services:
  s:
    url: http://127.0.0.1:9
    routes:
      - path: /a
        ip_filter: {allow: ["10.0.0.1/8", "bogus"]}
ip_filter:
  deny: ["::ffff:10.0.0.0/104"]
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(text)
    msg = str(ei.value)
    assert "services.s.routes[0].ip_filter.allow[0]" in msg and "10.0.0.0/8" in msg
    assert "services.s.routes[0].ip_filter.allow[1]" in msg
    assert "ip_filter.deny" not in msg.replace("routes[0].ip_filter", "")


def test_mapped_range_in_config_is_ipv4():
    mw = IpFilter(IpFilterConfig(deny=["::ffff:10.0.0.0/104"]))
    assert not mw.allowed("10.200.0.1") and mw.allowed("11.0.0.1")
