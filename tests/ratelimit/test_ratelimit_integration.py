"""Rate limiting through the real gateway, one worker, over loopback sockets (issue 6).

One gateway for most tests (module fixture) with routes that each exercise one thing,
and one more for dry run (a global switch).  Clients connect from 127.0.0.1 (untrusted)
or from 127.0.0.2 (a trusted proxy: ``trusted_proxies: [127.0.0.2/32]``), so one gateway
shows both sides of the X-Forwarded-For rule.  Timing-dependent checks use rates whose
token interval (500 ms and more) dwarfs a loopback round trip.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.wire import read_to_close, parse_head
from tests.support.config import ECHO_HEAD
from tests.support.gateway import Gateway
from tests.support.procs import metrics_text, series
from tests.support.ratelimit import AUTH_BLOCK, token
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: ["127.0.0.2/32"]
services:
  echo:
    url: "http://{UP}"
    routes:
      - path: "/burst/*"
        name: burst
        methods: ["GET"]
        rate_limit: {requests_per_second: 2, burst: 3, key: ip}
      - path: "/who/*"
        name: who
        methods: ["GET"]
        rate_limit: {requests_per_second: 0.5, burst: 2, key: ip}
      - path: "/private/*"
        name: private
        methods: ["GET"]
        auth: true
      - path: "/guarded/*"
        name: guarded
        methods: ["GET"]
        auth: true
      - path: "/open/*"
        name: open
        methods: ["GET"]
rate_limit:
  default: {requests_per_second: 1, burst: 30}
  authenticated: {requests_per_second: 0.5, burst: 3}
  editor: {requests_per_second: 0.5, burst: 6}
  exempt_roles: [admin]
  headers: {ietf: true, legacy: true, on_allowed: true}
  table_slots: 8192
""" + AUTH_BLOCK + """
monitoring:
  metrics_port: 0
  logging:
    level: warning
"""


def get(gw, path: str, *, source: str = "127.0.0.1", headers: dict | None = None):
    """(status, lower-case headers, body) of one GET on a new connection from ``source``."""
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", gw.port))
    try:
        hs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{hs}\r\n".encode())
        data = read_to_close(s)
    finally:
        s.close()
    st, hdrs, _, body = parse_head(data)
    return st, hdrs, body


def statuses(gw, path: str, n: int, **kw) -> list[int]:
    return [get(gw, path, **kw)[0] for _ in range(n)]


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


@pytest.fixture(scope="module")
def gw():
    with EchoUpstream() as up, Gateway(CONFIG, upstream=up) as g:
        yield g


@pytest.mark.timing   # token windows of 500 ms: runs alone (tests/support/serial.py)
def test_burst_then_refill_over_sockets(gw):
    t0 = time.monotonic()
    first = statuses(gw, "/burst/a", 5, source="127.0.0.1")
    assert time.monotonic() - t0 < 0.45, "the box is too slow for this timing test"
    assert first == [200, 200, 200, 429, 429]
    time.sleep(0.6)                          # one token every 500 ms
    assert statuses(gw, "/burst/a", 2) == [200, 429]
    time.sleep(2.0)                          # at most burst (3) accumulate
    assert statuses(gw, "/burst/a", 4) == [200, 200, 200, 429]


def test_429_response_shape(gw):
    for _ in range(2):
        get(gw, "/who/x", source="127.0.0.7")
    st, h, body = get(gw, "/who/x", source="127.0.0.7")
    assert st == 429
    assert h["content-type"] == "application/problem+json"
    assert h["retry-after"] == "2"                          # 0.5/s: next token in 2 s
    assert h["ratelimit-policy"] == '"default";q=30;w=30, "route:who";q=2;w=4'
    assert h["ratelimit"] == '"default";r=28;t=2, "route:who";r=0;t=4'   # default: not spent by the 429
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"]) == ("2", "0")
    doc = json.loads(body)
    assert doc["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert doc["status"] == 429 and doc["violated-policies"] == ["route:who"] and doc["request_id"]
    assert h["x-request-id"] == doc["request_id"]


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(gw):
    # 127.0.0.3 is not a trusted proxy: every X-Forwarded-For it sends is ignored
    got = [get(gw, "/who/y", source="127.0.0.3", headers={"X-Forwarded-For": f"198.51.100.{i}"})[0]
           for i in range(4)]
    assert got == [200, 200, 429, 429]


def test_forwarded_for_from_trusted_proxy_sets_the_key(gw):
    xff = {"X-Forwarded-For": "203.0.113.5"}
    assert statuses(gw, "/who/z", 3, source="127.0.0.2", headers=xff) == [200, 200, 429]
    # another client behind the same proxy has its own budget
    assert statuses(gw, "/who/z", 2, source="127.0.0.2", headers={"X-Forwarded-For": "203.0.113.6"}) == [200, 200]
    # right to left past trusted hops: the spoofed left part is not the client
    assert statuses(gw, "/who/z", 1, source="127.0.0.2",
                    headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.5"}) == [429]


def test_per_user_tiers_and_exempt_role(gw):
    alice, bob = token("alice"), token("bob")
    assert statuses(gw, "/private/a", 4, headers=bearer(alice), source="127.0.0.4") == [200] * 3 + [429]
    assert statuses(gw, "/private/a", 4, headers=bearer(bob), source="127.0.0.4") == [200] * 3 + [429]
    ed = token("carol", ["editor"])
    assert statuses(gw, "/private/a", 7, headers=bearer(ed), source="127.0.0.4") == [200] * 6 + [429]
    root = token("root", ["admin"])
    assert statuses(gw, "/private/a", 20, headers=bearer(root), source="127.0.0.4") == [200] * 20
    st, h, body = get(gw, "/private/a", headers=bearer(root), source="127.0.0.4")
    assert st == 200 and "ratelimit" not in h                    # exempt: no limit, no fields
    st, h, body = get(gw, "/private/a", headers=bearer(token("erin")), source="127.0.0.4")
    assert st == 200 and json.loads(body)["path"] == "/private/a"   # proxied, with the fields
    assert h["ratelimit-policy"] == '"authenticated";q=3;w=6' and h["ratelimit"] == '"authenticated";r=2;t=2'
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"], h["x-ratelimit-reset"]) == ("3", "2", "2")
    st, h, _ = get(gw, "/private/a", headers=bearer(alice), source="127.0.0.4")
    assert st == 429 and h["ratelimit-policy"] == '"authenticated";q=3;w=6'


def test_bad_tokens_from_one_address_are_refused_before_verification(gw):
    bad = token("mallory", secret="not-the-gateway-secret-" + "q" * 30)
    got = statuses(gw, "/guarded/x", 33, headers=bearer(bad), source="127.0.0.5")
    assert got == [401] * 30 + [429] * 3                    # the default tier's burst (30)
    st, _h, body = get(gw, "/guarded/x", headers=bearer(bad), source="127.0.0.5")
    assert st == 429 and json.loads(body)["violated-policies"] == ["auth_failures"]
    # a valid token from another address is not affected
    assert get(gw, "/guarded/x", headers=bearer(token("dave")), source="127.0.0.6")[0] == 200


def test_metrics(gw):
    assert statuses(gw, "/burst/m", 4, source="127.0.0.9") == [200, 200, 200, 429]
    bad = token("mallory", secret="not-the-gateway-secret-" + "q" * 30)
    assert get(gw, "/guarded/m", headers=bearer(bad), source="127.0.0.9")[0] == 401
    # allowed decisions reach /metrics on the worker's tick (``Metrics.counter``)
    assert wait_for(lambda: series(metrics_text(gw), "fastgw_ratelimit_decisions_total").get(
        '{limit="default",result="allowed"}', 0) >= 3, timeout=4, interval=0.2)
    dec = series(metrics_text(gw), "fastgw_ratelimit_decisions_total")
    assert dec['{limit="route:burst",result="allowed"}'] >= 3
    assert dec['{limit="route:burst",result="limited"}'] >= 1
    assert dec['{limit="default",result="allowed"}'] >= 3
    assert dec['{limit="auth_failures",result="allowed"}'] >= 1
    def occupied() -> bool:   # published every 2 s (by worker 0 under the supervisor)
        get(gw, "/who/m", source="127.0.0.8")          # a key that refills for 2 s
        return series(metrics_text(gw), "fastgw_ratelimit_table_occupied_slots").get("", 0) >= 1
    assert wait_for(occupied, timeout=6, interval=0.5)
    assert series(metrics_text(gw), "fastgw_ratelimit_table_slots") == {"": 8192.0}


DRY = ECHO_HEAD + """      - path: "/*"
        name: all
        methods: ["GET"]
rate_limit:
  default: {requests_per_second: 0.5, burst: 3}
  dry_run: true
  headers: {on_allowed: true}
monitoring:
  metrics_port: 0
  logging:
    level: warning
"""


def test_dry_run_counts_but_never_refuses():
    with EchoUpstream() as up, Gateway(DRY, upstream=up) as g:
        rs = [get(g, "/x") for _ in range(6)]
        assert [r[0] for r in rs] == [200] * 6
        assert rs[-1][1]["ratelimit"] == '"default";r=0;t=6'
        assert len(up.requests) == 6
        dec = series(metrics_text(g), "fastgw_ratelimit_decisions_total")
        assert dec['{limit="default",result="allowed"}'] == 3
        assert dec['{limit="default",result="dry_run_limited"}'] == 3
        assert dec.get('{limit="default",result="limited"}', 0) == 0
