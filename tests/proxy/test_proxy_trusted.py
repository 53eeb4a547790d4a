"""Forwarding headers and request ids from a trusted proxy (gateway.trusted_proxies)."""

from __future__ import annotations

import pytest

from tests.support.config import ACCESS_LOG_BLOCK
from tests.support.gateway import flushed_access_lines
from tests.support.wire import exchange, one_response
from tests.support.gateway import Gateway

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: ["127.0.0.1/32"]
services:
  main:
    url: "http://{UP}"
    preserve_host: true
    routes:
      - path: "/api/*"
        methods: ["GET"]
""" + ACCESS_LOG_BLOCK


@pytest.fixture(scope="module")
def gw(raw_up):
    with Gateway(CONFIG, upstream=raw_up) as g:
        yield g


def _get(gw, path: bytes, extra: bytes):
    data, _ = exchange(gw.port, b"GET " + path + b" HTTP/1.1\r\nHost: app.example\r\n" + extra
                       + b"Connection: close\r\n\r\n")
    return one_response(data)


@pytest.mark.parametrize("xff,client", [
    (b"1.2.3.4", "1.2.3.4"),
    (b"9.9.9.9, 1.2.3.4, 127.0.0.1", "1.2.3.4"),   # right to left past trusted hops
    (b"1.2.3.4, 10.0.0.7", "10.0.0.7"),            # first untrusted from the right wins
    (b"garbage, 127.0.0.1", "127.0.0.1"),          # non-IP ends the walk at the last trusted hop
])
def test_xff_from_trusted_peer(gw, raw_up, xff, client):
    snap = raw_up.snapshot()
    ua = b"xff-" + xff.replace(b" ", b"").replace(b",", b"_")
    st, _, _ = _get(gw, b"/api/xff", b"X-Forwarded-For: " + xff + b"\r\nUser-Agent: " + ua + b"\r\n")
    assert st == 200
    (r,) = raw_up.since(snap)
    assert r.header_all("x-forwarded-for") == [xff.decode() + ", 127.0.0.1"]
    lines = flushed_access_lines(gw, lambda ls: any(x.get("user_agent") == ua.decode() for x in ls), 5)
    (line,) = [x for x in lines if x.get("user_agent") == ua.decode()]
    assert line["client_ip"] == client


def test_request_id_accepted_from_trusted_peer(gw, raw_up):
    snap = raw_up.snapshot()
    st, hd, _ = _get(gw, b"/api/rid", b"X-Request-ID: lb-abc-123\r\n")
    assert st == 200 and hd["x-request-id"] == "lb-abc-123"
    (r,) = raw_up.since(snap)
    assert r.header_all("x-request-id") == ["lb-abc-123"]


def test_invalid_request_id_from_trusted_peer_replaced(gw, raw_up):
    snap = raw_up.snapshot()
    st, hd, _ = _get(gw, b"/api/rid", b"X-Request-ID: bad id with spaces\r\n")
    assert st == 200 and hd["x-request-id"] != "bad id with spaces"
    (r,) = raw_up.since(snap)
    assert r.header_all("x-request-id") == [hd["x-request-id"]]


def test_preserve_host(gw, raw_up):
    snap = raw_up.snapshot()
    assert _get(gw, b"/api/host", b"")[0] == 200
    (r,) = raw_up.since(snap)
    assert r.header_all("host") == ["app.example"]
