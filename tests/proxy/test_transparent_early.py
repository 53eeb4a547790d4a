"""Readable early answers and timers that measure the right thing (issue #16, items 2-4).

Real clients (http.client, requests, aiohttp, httpx) against a real gateway process on
loopback; the shared fake upstream with a handler for the slow and echo cases.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time

import aiohttp
import httpx
import pytest
import requests

from tests.support.wire import read_to_close
from tests.support.gateway import Gateway
from tests.support.upstream import FakeUpstream

BIG = b"x" * (5 * 1000 * 1000)  # 5 MB against a 1 MiB limit


def _counting(req, conn) -> bool:
    """Answers how many body bytes arrived; ``/slow`` after 1.5 s."""
    if req.path.startswith("/slow"):
        time.sleep(1.5)
    conn.respond(200, (), json.dumps({"received": len(req.body)}).encode())
    return True


CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  limits: {max_body_size: 1m}
  timeouts:
    request_header: 1s
    request_body: 5s
    request_body_total: 20s
    request_body_min_rate: 20k
    request_body_min_rate_grace: 1s
    lingering_time: 3s
services:
  up:
    url: "http://{UP}"
    timeout: 1s
    routes:
      - path: "/*"
        methods: ["GET", "POST"]
monitoring:
  metrics_port: 0
  logging: {level: warning}
"""


@pytest.fixture(scope="module")
def env():
    with FakeUpstream(handler=_counting) as up, Gateway(CONFIG.replace("{UP}", up.addr)) as gw:
        yield gw, up


def _is_413_problem(status, ctype, body) -> bool:
    return status == 413 and ctype.startswith("application/problem+json") and json.loads(body)["status"] == 413


def test_four_real_clients_read_the_413_not_a_reset(env):
    """http.client, requests, aiohttp and httpx each POST 5 MB to a 1 MiB limit five
    times: 20 of 20 read the 413 problem+json, none sees a reset."""
    gw, _ = env
    url = f"http://127.0.0.1:{gw.port}/upload"
    results: list[tuple[str, object]] = []

    def record(name, fn):
        try:
            results.append((name, fn()))
        except Exception as e:  # a reset, a broken pipe...
            results.append((name, e))

    def via_http_client():
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            c.request("POST", "/upload", body=BIG, headers={"content-type": "application/octet-stream"})
            r = c.getresponse()
            return _is_413_problem(r.status, r.getheader("content-type", ""), r.read())
        finally:
            c.close()

    def via_requests():
        r = requests.post(url, data=BIG, timeout=10)
        return _is_413_problem(r.status_code, r.headers.get("content-type", ""), r.content)

    def via_httpx():
        with httpx.Client(timeout=10) as c:
            r = c.post(url, content=BIG)
            return _is_413_problem(r.status_code, r.headers.get("content-type", ""), r.content)

    async def via_aiohttp_all():
        out = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            for _ in range(5):
                try:
                    async with s.post(url, data=BIG) as r:
                        out.append(("aiohttp", _is_413_problem(r.status, r.headers.get("content-type", ""),
                                                               await r.read())))
                except Exception as e:
                    out.append(("aiohttp", e))
        return out

    for _ in range(5):
        record("http.client", via_http_client)
        record("requests", via_requests)
        record("httpx", via_httpx)
    results.extend(asyncio.run(via_aiohttp_all()))
    bad = [(n, r) for n, r in results if r is not True]
    assert len(results) == 20 and not bad, bad


def test_expect_100_continue_gets_the_error_instead_of_100(env):
    gw, _ = env
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        s.sendall(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 413 "), data[:40]
        assert b"connection: close" in data.lower()
        # a client that sends its body anyway: discarded, never parsed as a next request
        s.sendall(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n" * 50)
        rest = read_to_close(s)
        assert b"HTTP/1.1" not in rest.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in rest else b"HTTP/1.1" not in rest
    finally:
        s.close()


def test_upload_longer_than_timeout_succeeds_and_slow_upstream_still_504(env):
    """The upstream timeout (1 s) starts once the request is sent: a 2 s upload at a
    steady rate is answered; an upstream slower than 1 s after the upload gets 504."""
    gw, _ = env

    def trickle(path):
        def body():
            for _ in range(20):
                time.sleep(0.1)
                yield b"y" * 25000
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            c.request("POST", path, body=body(), headers={"content-length": str(20 * 25000)})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    st, body = trickle("/fast")
    assert st == 200 and json.loads(body)["received"] == 500000
    t0 = time.monotonic()
    st, _ = trickle("/slow")
    assert st == 504
    assert time.monotonic() - t0 >= 2.0 + 0.9  # one timeout after the upload ended


def test_trickling_body_gets_408_by_min_rate(env):
    """Past the 1 s grace, a body slower than 20 KB/s on average gets 408 (well before
    the 5 s idle timeout), and the connection lingers, not resets."""
    gw, _ = env
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=6)
    try:
        s.sendall(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        t0 = time.monotonic()
        data = b""
        s.settimeout(0.3)
        while b"\r\n\r\n" not in data and time.monotonic() - t0 < 5:
            s.sendall(b"z" * 100)
            try:
                data += s.recv(65536)
            except socket.timeout:
                pass
        took = time.monotonic() - t0
        assert data.startswith(b"HTTP/1.1 408 "), data[:60]
        assert 1.0 <= took < 3.0, took
    finally:
        s.close()


def test_header_timeout_counts_from_accept(env):
    """request_header (1 s) counts from accept: bytes sent at 0.8 s do not restart it."""
    gw, _ = env
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        t0 = time.monotonic()
        time.sleep(0.8)
        s.sendall(b"GET /partial")
        data = read_to_close(s)
        took = time.monotonic() - t0
        assert data.startswith(b"HTTP/1.1 408 "), data[:40]
        assert took < 1.6, took
    finally:
        s.close()


def test_silent_new_connection_closed_after_request_header(env):
    gw, _ = env
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - t0 < 1.6
    finally:
        s.close()


@pytest.mark.parametrize("target", [b"/a?x=1#frag", b"/a#frag", b"http://h/a?x=1#f"])
def test_fragment_in_target_is_400(env, target):
    gw, _ = env
    out = gw.raw(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:40]
