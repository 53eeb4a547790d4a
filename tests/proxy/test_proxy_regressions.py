"""Regression tests for defects found in review (each was reproduced against a real gateway).

1. an upstream that answers before the request body is sent must not have its
   connection pooled (the next request would be read as body bytes: desync);
3. a CORS preflight shape on a route without CORS obeys the route's methods;
4. ``Upgrade`` without ``Connection: upgrade`` is not an upgrade;
5. header names with underscores are not forwarded (X_User_Id forging);
6. trusted-proxy CIDRs match IPv4-mapped IPv6 peers;
7. an instance with weight 0 gets no traffic.
"""

from __future__ import annotations

import socket
import time

import pytest

from fastgw.http.netaddr import TrustedNets
from tests.support.gateway import MINIMAL, Gateway, raw_exchange
from tests.support.upstream import EchoUpstream, RawUpstream


def test_early_upstream_answer_does_not_pool_the_connection():
    with RawUpstream() as up, Gateway(MINIMAL.replace("{UP}", up.addr)) as gw:
        s = socket.create_connection((gw.host, gw.port), timeout=5)
        s.sendall(b"POST /early/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        # the client's own body is unread: the gateway says it closes
        assert b"connection: close" in first.lower()
        s.close()
        time.sleep(0.2)
        r = raw_exchange(gw.host, gw.port, b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                         timeout=5)
        assert r.startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        # GET /second arrived at the start of a connection of its own, never after body bytes
        reqs = up.since((0, 0, 0))
        second = [q for q in reqs if "/second" in q.target]
        assert len(second) == 1 and second[0].raw_head.startswith(b"GET /second")
        assert [q for q in reqs if q.conn_id == second[0].conn_id][0] is second[0]


CORS_LESS = """
gateway: {host: 127.0.0.1, port: 0}
services:
  echo:
    url: "http://{UP}"
    routes:
      - path: "/ro/*"
        methods: ["GET"]
monitoring: {metrics_port: 0, logging: {level: warning}}
"""


@pytest.fixture(scope="module")
def ro_gw():
    with EchoUpstream() as up, Gateway(CORS_LESS, upstream=up) as gw:
        yield gw, up


def test_preflight_shape_on_route_without_cors_obeys_methods(ro_gw):
    gw, up = ro_gw
    n = len(up.requests)
    st, hdrs, _ = gw.request("OPTIONS", "/ro/x", headers={"Origin": "https://a.example",
                                                          "Access-Control-Request-Method": "GET"})
    assert st == 405 and "GET" in hdrs["allow"]
    assert len(up.requests) == n


def test_upgrade_without_connection_upgrade_is_not_forwarded_as_upgrade(ro_gw):
    gw, up = ro_gw
    st, _, _ = gw.request("GET", "/ro/x", headers={"Upgrade": "websocket", "Connection": "close"})
    assert st == 200
    h = up.requests[-1]["headers"]
    assert "upgrade" not in h and h.get("connection", "") != "upgrade"


def test_underscore_header_names_are_dropped(ro_gw):
    gw, up = ro_gw
    st, _, _ = gw.request("GET", "/ro/x", headers={"X_User_Id": "admin", "X-Other": "kept"})
    assert st == 200
    h = up.requests[-1]["headers"]
    assert "x_user_id" not in h and h["x-other"] == "kept"


def test_trusted_nets_fold_ipv4_mapped_ipv6():
    nets = TrustedNets(["10.0.0.0/8"])
    assert "10.1.2.3" in nets
    assert "::ffff:10.1.2.3" in nets
    assert "::ffff:11.1.2.3" not in nets
    assert "not-an-ip" not in nets


def test_weight_zero_instance_gets_no_traffic():
    with EchoUpstream("a") as a, EchoUpstream("b") as b:
        cfg = f"""
gateway: {{host: 127.0.0.1, port: 0}}
services:
  echo:
    instances:
      - {{url: "http://{a.addr}", weight: 1}}
      - {{url: "http://{b.addr}", weight: 0}}
    routes:
      - path: "/*"
monitoring: {{metrics_port: 0, logging: {{level: warning}}}}
"""
        with Gateway(cfg) as gw:
            for i in range(6):
                assert gw.request("GET", f"/w/{i}")[0] == 200
        assert len(a.requests) == 6 and len(b.requests) == 0
