"""Load balancing with real processes (issue #20 item 1): one gateway with 2 workers, one
service per algorithm, over upstream processes that answer with their own name.

- smooth weighted round-robin: shares within 2 percentage points over 2,000 requests
  across both workers, no run longer than ceil(w_max/w_min) on one keep-alive connection,
  and /admin/upstreams shows requests, effective weights and nothing left in flight;
- least_request sends less to a slow instance;
- ring_hash and maglev keep each key on one instance from both workers and across a
  reload;
- sticky: the cookie holds, a forged one falls back and is re-issued, and the client
  moves (with a new cookie) when its instance dies (last: it kills one).
"""

from __future__ import annotations

import http.client
import json
import math
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

import pytest

from tests.support.balance import NamedUpstream, fetch_many, start_all
from tests.support.gateway import Gateway
from tests.support.procs import admin, generation_everywhere, hup, rewrite, workers
from tests.support.waiting import wait_for

WEIGHTS = [5, 3, 1, 1]


def service(name: str, ups, *, path: str, weights=None, extra: str = "") -> str:
    weights = weights or [1] * len(ups)
    insts = ", ".join(f'{{url: "{u.url}", weight: {w}}}' for u, w in zip(ups, weights))
    return f"""  {name}:
    instances: [{insts}]
{extra}    routes:
      - path: "{path}"
        methods: ["GET"]
"""


@pytest.fixture(scope="module")
def world():
    # five processes serve every service (their rows in /admin/upstreams are per service):
    # w0..w3 the weighted ones and the hashed and sticky services (sticky runs last: it
    # kills one), w3 and a slow one behind least_request
    w = [NamedUpstream(f"w{i}") for i in range(4)]
    slow = NamedUpstream("slow", delay=0.4)
    ups = start_all(w + [slow])
    hashed = '    load_balancing: %s\n    hash_key: "header:X-User-ID"\n'
    services = (
        service("wrr", w, path="/w/*", weights=WEIGHTS)
        + service("lr", [w[3], slow], path="/lr/*", extra="    load_balancing: least_request\n")
        + service("ring", w[:3], path="/r/*", extra=hashed % "ring_hash")
        + service("mag", w[:3], path="/m/*", extra=hashed % "maglev")
        + service("sticky", w[:3], path="/s/*", extra=(
            '    sticky: {cookie: aff, ttl: 10m, secret: "k3y", secure: true, same_site: Strict}\n'
            "    health: /health\n"
            "    health_check: {interval: 100ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1}\n"
            "    retries: 1\n")))
    cfg = f"""
gateway:
  host: 127.0.0.1
  port: 0
  timeout: 5s
services:
{services}
monitoring:
  metrics_port: 0
  admin: {{port: 0}}
  logging:
    level: info
    access_log:
      enabled: false
"""
    try:
        with Gateway(cfg, workers=2) as gw:
            assert wait_for(lambda: generation_everywhere(gw, 0, 2), 10)
            yield gw, cfg, {u.name: u for u in ups}
    finally:
        for u in ups:
            u.kill()


def upstreams(gw) -> dict:
    st, _, body = admin(gw, "/admin/upstreams")
    assert st == 200, body
    return json.loads(body)["services"]


def settled(gw, svc: str, total: int):
    """The service's instance rows once the workers' ticks (1 s) published ``total``
    requests and nothing in flight (None if that never happens: a count that leaks)."""
    def ok():
        rows = upstreams(gw)[svc]["instances"]
        done = sum(r["requests"] for r in rows) == total and not any(r["in_flight"] for r in rows)
        return rows if done else None
    return wait_for(ok, 5)


def sequence(gw, n: int, path: str) -> list[str]:
    """``n`` requests one after the other on one keep-alive connection (one worker)."""
    c = http.client.HTTPConnection(gw.host, gw.port, timeout=10)
    out = []
    try:
        for _ in range(n):
            c.request("GET", path)
            r = c.getresponse()
            out.append(r.read().decode())
    finally:
        c.close()
    return out


def test_smooth_weighted_shares_runs_and_admin_view(world):
    gw, _, _ = world
    seq = sequence(gw, 40, "/w/x")
    assert max(len(list(g)) for _, g in groupby(seq)) <= math.ceil(max(WEIGHTS) / min(WEIGHTS)), seq
    got = fetch_many(gw.host, gw.port, 2000, conns=8, path="/w/x")
    assert sum(got.values()) == 2000 and set(got) == {"w0", "w1", "w2", "w3"}, got
    for i, w in enumerate(WEIGHTS):
        assert abs(got[f"w{i}"] / 2000 - w / sum(WEIGHTS)) <= 0.02, got
    # both workers took part (each publishes its request count on its 1 s tick)
    assert wait_for(lambda: all(w["requests"] > 0 for w in workers(gw)["workers"]), timeout=3, interval=0.2), \
        workers(gw)["workers"]
    rows = settled(gw, "wrr", 2040)
    assert rows, upstreams(gw)["wrr"]
    assert [r["in_flight"] for r in rows] == [0, 0, 0, 0]
    assert [r["effective_weight"] for r in rows] == WEIGHTS
    assert upstreams(gw)["wrr"]["load_balancing"] == "round_robin"


def test_least_request_sends_less_to_a_slow_instance(world):
    gw, _, _ = world
    got = fetch_many(gw.host, gw.port, 200, conns=12, path="/lr/x")
    assert sum(got.values()) == 200 and set(got) <= {"w3", "slow"}, got
    # round-robin would give each 100: the in-flight counts steer away from the slow one
    assert got["slow"] < 0.25 * 200, got
    rows = settled(gw, "lr", 200)
    assert rows and [r["in_flight"] for r in rows] == [0, 0]


def test_hashing_keeps_keys_across_workers_and_reload(world):
    gw, cfg, _ = world
    keys = [f"user-{k}" for k in range(30)]

    def mapping(prefix):
        # each key on three new connections: the kernel spreads them over both workers
        def one(k):
            return k, gw.request("GET", f"{prefix}/x", headers={"X-User-ID": k})[2].decode()
        out: dict = {}
        with ThreadPoolExecutor(6) as ex:
            for k, name in ex.map(one, keys * 3):
                out.setdefault(k, set()).add(name)
        return out

    before = {p: mapping(p) for p in ("/r", "/m")}
    for p, m in before.items():
        assert all(len(s) == 1 for s in m.values()), (p, m)
        assert len({next(iter(s)) for s in m.values()}) == 3, p     # keys spread over all three
    gen = workers(gw)["generation"]
    rewrite(gw, cfg.replace('      - path: "/r/*"', '      - path: "/r2/*"\n        methods: ["GET"]\n'
                                                   '      - path: "/r/*"'))
    hup(gw)
    assert wait_for(lambda: generation_everywhere(gw, gen + 1, 2), 10), workers(gw)
    assert {p: mapping(p) for p in ("/r", "/m")} == before


def _set_cookie(h: dict) -> str | None:
    v = h.get("set-cookie")
    return v.split(";", 1)[0].split("=", 1)[1] if v else None


def test_sticky_cookie_holds_resists_forgery_and_fails_over(world):
    gw, _, ups = world
    st, h, body = gw.request("GET", "/s/x")
    assert st == 200 and h["set-cookie"].startswith("aff=")
    attrs = [a.strip() for a in h["set-cookie"].split(";")[1:]]
    assert attrs == ["Path=/", "Max-Age=600", "HttpOnly", "Secure", "SameSite=Strict"]
    home, token = body.decode(), _set_cookie(h)
    # the cookie holds on new connections (either worker); a right cookie is not sent again
    for _ in range(12):
        st, h, body = gw.request("GET", "/s/x", headers={"Cookie": f"a=1; aff={token}"})
        assert (st, body.decode(), h.get("set-cookie")) == (200, home, None)
    # a forged or unknown value: balanced as usual, and a real cookie is issued
    served = set()
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for value in (forged, "127.0.0.1:80", ""):
        for _ in range(3):
            st, h, body = gw.request("GET", "/s/x", headers={"Cookie": f"aff={value}"})
            assert st == 200 and _set_cookie(h) not in (None, value)
            served.add(body.decode())
    assert len(served) == 3
    # its instance dies: the client moves (a retry at once), with a new cookie, and stays
    ups[home].kill()
    st, h, body = gw.request("GET", "/s/x", headers={"Cookie": f"aff={token}"})
    assert st == 200 and body.decode() != home and _set_cookie(h) not in (None, token)
    new_home, new_token = body.decode(), _set_cookie(h)
    assert wait_for(lambda: not [r for r in upstreams(gw)["sticky"]["instances"] if r["usable"]
                                 and r["url"] == ups[home].url], 5)
    for _ in range(6):
        st, h, body = gw.request("GET", "/s/x", headers={"Cookie": f"aff={new_token}"})
        assert (st, body.decode(), h.get("set-cookie")) == (200, new_home, None)
    st, h, body = gw.request("GET", "/s/x", headers={"Cookie": f"aff={token}"})
    assert st == 200 and body.decode() != home and _set_cookie(h) is not None
