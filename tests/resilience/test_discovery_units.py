"""DNS discovery's parts, one process: lookups against the loopback DNS server, the TTL
bounds, the shared-memory discovery table, slot claims, the drained byte in Route picks,
and the worker-side instance swap."""

from __future__ import annotations

import asyncio

import pytest

from fastgw.config import load_config_data
from fastgw.resilience.discovery import LookupError_, lookup, make_resolver, next_wait
from fastgw.resilience.identity import instance_key
from fastgw.runtime.app import Route
from fastgw.shm.discovery import ROWS
from fastgw.shm.health import DRAINED
from fastgw.shm.region import Region
from fastgw.upstream.balance import RoundRobin

from tests.support.config import BASE, DELETE, SVC, edit
from tests.support.dns import DnsServer


def _dcfg(**kw):
    doc = edit(edit(BASE, f"{SVC}.url", DELETE), f"{SVC}.discovery", kw)
    cfg, _ = load_config_data(doc, env={})
    return cfg.services["svg-parser"].discovery


def _run(coro):
    return asyncio.run(coro)


def test_a_and_aaaa_lookup_with_ttl():
    with DnsServer(ttl=7) as dns:
        dns.a["svc.test"] = ["127.0.0.2", "127.0.0.1"]
        dns.aaaa["svc.test"] = ["::1"]
        d = _dcfg(type="dns", name="svc.test:8080", resolvers=[dns.addr], timeout="1s")
        found, ttl = _run(lookup(make_resolver(d), d))
        assert found == [("127.0.0.1", 8080, 1), ("127.0.0.2", 8080, 1), ("::1", 8080, 1)]
        assert ttl == 7


def test_srv_lookup_lowest_priority_additional_and_fallback():
    with DnsServer(ttl=3) as dns:
        dns.a["a.test"] = ["127.0.0.1"]
        dns.srv["_http._tcp.svc.test"] = [(5, 0, 9001, "a.test"), (5, 20000, 9002, "b.test"),
                                         (9, 1, 9003, "a.test")]
        d = _dcfg(type="dns_srv", name="_http._tcp.svc.test", resolvers=[dns.addr], timeout="1s")
        r = make_resolver(d)
        with pytest.raises(LookupError_, match="b.test"):   # b.test has no address at all
            _run(lookup(r, d))
        dns.aaaa["b.test"] = ["::1"]    # not in the additional section: looked up
        found, ttl = _run(lookup(r, d))
        assert found == [("127.0.0.1", 9001, 1), ("::1", 9002, 10_000)]   # weight 0 -> 1, capped
        assert ttl == 3


def test_failures_are_lookup_errors():
    with DnsServer() as dns:
        d = _dcfg(type="dns", name="gone.test:80", resolvers=[dns.addr], timeout="300ms")
        r = make_resolver(d)
        with pytest.raises(LookupError_, match="NXDOMAIN"):
            _run(lookup(r, d))
        dns.mode = "servfail"
        with pytest.raises(LookupError_, match="SERVFAIL"):
            _run(lookup(r, d))
        dns.mode = "drop"
        with pytest.raises(LookupError_, match="timeout"):
            _run(lookup(r, d))


def test_next_wait_bounds():
    d = _dcfg(type="dns", name="a:1", refresh="30s", min_ttl="2s", max_ttl="20s")
    assert next_wait(d, 5) == 5
    assert next_wait(d, 0) == 2          # min_ttl
    assert next_wait(d, 3600) == 20      # max_ttl
    assert next_wait(_dcfg(type="dns", name="a:1", refresh="10s"), 3600) == 10   # refresh caps
    assert next_wait(d, None) == 2       # after a failure: max(min_ttl, 1s), within refresh


def test_discovery_table_publish_read_claim():
    with Region.create(2, health_slots=16) as region:
        t = region.discovery
        assert t.find("svc") == -1
        r = t.claim("svc", {"svc"})
        assert r >= 0 and t.find("svc") == r and t.seq(r) == 0
        gen = t.publish(r, [("127.0.0.1", 80, 1, 3), ("::1", 8080, 250, 4), ("10.1.2.3", 65535, 10_000, 5)])
        assert gen == 1
        seq, entries = t.read(r)
        assert seq == 2 and entries == [("127.0.0.1", 80, 1, 3), ("::1", 8080, 250, 4),
                                        ("10.1.2.3", 65535, 10_000, 5)]
        assert region.discovery.slots() == {3, 4, 5}
        # a writer in the middle (odd sequence word): readers keep what they have
        region._q[t._row(r) + 1] += 1
        assert t.read(r) is None
        region._q[t._row(r) + 1] += 1
        assert t.read(r)[0] == 4
        # every row taken: a service no longer live gives its row up
        names = [f"s{i}" for i in range(ROWS - 1)]
        live = set(names) | {"svc"}
        for n in names:
            assert t.claim(n, live) >= 0
        assert t.claim("late", live) == -1          # full, every row live
        r2 = t.claim("late", {"late", "svc"})       # s0.. are gone: one of theirs
        assert r2 >= 0 and r2 != r and t.find("late") == r2 and t.find("svc") == r
        assert t.read(r2) == (t.seq(r2), [])        # cleared


def test_health_claims_keep_pinned_discovered_slots():
    with Region.create(2, health_slots=4) as region:
        h = region.health
        disc = [instance_key("d", f"http://10.0.0.{i}:80") for i in range(2)]
        got = h.assign(disc)
        r = region.discovery.claim("d", {"d"})
        region.discovery.publish(r, [(f"10.0.0.{i}", 80, 1, got[k]) for i, k in enumerate(disc)])
        # a reload's config of 4 new instances (the supervisor's assign): the discovered
        # slots are pinned, so only 2 of the new ones get a slot
        conf = [instance_key("f", f"http://h{i}:80") for i in range(4)]
        out = h.assign(conf)
        assert len(out) == 2
        assert all(h.find(k) == got[k] for k in disc)


def _route(insts, down):
    from fastgw.pipeline.chain import Chain

    r = Route("r", "s", None, Chain([]), tuple(insts), 1024, False, 1.0, 1.0, True)
    r.down = down
    r.use(RoundRobin("s", tuple(insts), down=down, panic=50.0))   # (what App gives a route)
    return r


class _I:
    def __init__(self, slot):
        self.slot = slot
        self.service, self.url, self.weight = "s", f"http://10.0.0.{slot}:80", 1
        self.requests = self.done = 0
        self.eff = 1.0


def test_drained_instance_is_never_picked_not_even_in_panic():
    a, b, c = _I(0), _I(1), _I(2)
    down = bytearray([1, DRAINED, 1])     # a unhealthy, b drained, c unhealthy: panic
    r = _route([a, b, c], down)
    picks = [r.pick(None) for _ in range(30)] + [r.pick_other(()) for _ in range(30)]
    assert b not in picks and {a, c} <= set(picks)
    down[:] = bytes([DRAINED, DRAINED, DRAINED])
    assert r.pick(None) is None and r.pick_other(()) is None


def test_replace_instances_sets_routes_and_calls_the_balancer():
    from fastgw.runtime.discovered import replace_instances

    class LB:
        got = None

        def update(self, insts, down=None):
            LB.got = insts

    class Pool:
        tmin = 99.0
        closed = False

        def close(self):
            self.closed = True

    class Inst:
        def __init__(self, w):
            self.weight, self.slot, self.pool = w, 0, Pool()

    class R:
        service, t_head, t_read, instances, distinct = "s", 5.0, 7.0, (), ()
        down = None

    class App:
        health_table = None

    old_pool = Pool()
    app = App()
    r1, r2, other = R(), R(), R()
    other.service = "o"
    r1.lb = LB()
    app.routes = [r1, r2, other]
    app.pools = {"old": old_pool}
    x, y = Inst(1), Inst(2)
    replace_instances(app, "s", [x, y])
    assert r1.instances == (x, y) and r1.distinct == (x, y) and r2.distinct == (x, y)
    assert LB.got == (x, y) and other.instances == ()
    assert x.pool.tmin == 5.0
    assert old_pool.closed and "old" not in app.pools     # no route uses it any more


def test_publish_claims_slots_bumps_only_on_change_and_survives_a_full_table(caplog):
    from fastgw.resilience.discovery import NO_SLOT, Discovery, Found

    d = _dcfg(type="dns", name="svc.test:80")
    with Region.create(2, health_slots=2) as region:
        disc = Discovery(region, loop=None)
        f = disc.found["s"] = Found("s", d)
        assert disc.publish(f, [("10.0.0.1", 80, 1), ("10.0.0.2", 80, 1)])
        r = region.discovery.find("s")
        seq, entries = region.discovery.read(r)
        assert [e[3] for e in entries] == [region.health.find(instance_key("s", f"http://10.0.0.{i}:80"))
                                           for i in (1, 2)]
        assert not disc.publish(f, [("10.0.0.1", 80, 1), ("10.0.0.2", 80, 1)])   # same set: no new generation
        assert region.discovery.seq(r) == seq
        # a third address with a full table: published without a slot, with a warning
        assert disc.publish(f, [("10.0.0.1", 80, 1), ("10.0.0.2", 80, 1), ("10.0.0.3", 80, 1)])
        assert region.discovery.read(r)[1][2][3] == NO_SLOT
        assert f.urls["http://10.0.0.3:80"] == (-1, 1)
        assert "is full" in caplog.text
