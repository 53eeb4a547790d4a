"""Downstream timeouts (issue 2): slowloris head -> 408, stalled body -> 408, keep-alive
idle close.  A dedicated gateway with 1 s timeouts so the tests stay short."""

from __future__ import annotations

import time

import pytest

from tests.support.wire import Client, exchange, one_response, problem_of
from tests.support.gateway import Gateway

H = b"Host: gw.test\r\n"

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  timeouts:
    request_header: 1s
    request_body: 1s
    keepalive: 1s
services:
  main:
    url: "http://{UP}"
    routes:
      - path: "/api/*"
        methods: ["GET", "POST"]
monitoring:
  metrics_port: 0
  logging:
    level: warning
"""


@pytest.fixture(scope="module")
def gw(raw_up):
    with Gateway(CONFIG, upstream=raw_up) as g:
        yield g


@pytest.mark.timing
def test_slowloris_head_gets_408_and_close(gw, raw_up):
    snap = raw_up.snapshot()
    pieces = [b"GET /api/slow HTTP/1.1\r\n" + H] + [b"X-A%d: b\r\n" % i for i in range(12)]
    t = time.monotonic()
    data, closed = exchange(gw.port, pieces, pause=0.25, timeout=4)
    elapsed = time.monotonic() - t
    st, hd, body = one_response(data)
    assert st == 408 and problem_of(body)["status"] == 408
    assert hd.get("connection") == "close" and closed
    assert elapsed < 3.5
    assert raw_up.since(snap) == []


def test_idle_connection_without_request_closed(gw):
    with Client(gw.port) as c:
        t = time.monotonic()
        assert c.closed_within(3)
        assert time.monotonic() - t >= 0.5


def test_keepalive_idle_close(gw):
    with Client(gw.port) as c:
        c.send(b"GET /api/a HTTP/1.1\r\n" + H + b"\r\n")
        assert c.response()[0] == 200
        t = time.monotonic()
        assert c.closed_within(3), "idle keep-alive connection not closed"
        assert time.monotonic() - t >= 0.5
        assert c.buf == b"", f"unexpected bytes on idle close: {c.buf[:200]!r}"


def test_keepalive_activity_resets_idle_timer(gw):
    with Client(gw.port) as c:
        for _ in range(4):
            c.send(b"GET /api/a HTTP/1.1\r\n" + H + b"\r\n")
            assert c.response()[0] == 200
            time.sleep(0.6)  # 4 x 0.6 s > 1 s keep-alive, but never idle for 1 s


def test_stalled_request_body_408(gw, raw_up):
    snap = raw_up.snapshot()
    data, closed = exchange(gw.port, b"POST /api/body HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n0123456789",
                            timeout=4)
    st, hd, body = one_response(data)
    assert st == 408 and closed
    time.sleep(0.05)
    assert not any(r.complete for r in raw_up.since(snap))
