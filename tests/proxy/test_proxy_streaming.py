"""Back-pressure and bounded memory (issue 2, "Upstream side" and "Downstream" buffering).

100 MB through the gateway to a slow reader, 100 MB from a fast sender to a slow
upstream, and 10,000 pipelined requests from a client that does not read: the worker's
RSS (sampled every 20 ms from /proc) must grow by a few MB at most.  Each transfer is
rate-limited so it finishes in well under 10 s.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest

from tests.support.config import core_config
from tests.support.memory import RssSampler
from tests.support.wire import parse_head, parse_responses, read_to_close
from tests.support.gateway import Gateway

MB = 1 << 20
SIZE = 100 * MB
MAX_GROWTH_MB = 8.0
H = b"Host: gw.test\r\n"


@pytest.fixture(scope="module")
def gw(raw_up):
    cfg = core_config(raw_up).replace("  trusted_proxies: []\n", "  trusted_proxies: []\n  limits:\n    max_body_size: 200MB\n")
    with Gateway(cfg) as g:
        # warm-up: imports, pools, buffers allocated once
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.sendall(b"GET /api/big/%d HTTP/1.1\r\n" % (4 * MB) + H + b"Connection: close\r\n\r\n")
        while s.recv(MB):
            pass
        s.close()
        yield g


@pytest.fixture(scope="module")
def fresh_gw(raw_up):
    """A gateway that has served nothing yet: no freed memory to hide growth in."""
    with Gateway(core_config(raw_up)) as g:
        yield g


def test_10000_pipelined_requests_without_reading(fresh_gw):
    gw = fresh_gw
    n = 10_000
    req = b"GET /api/fixed HTTP/1.1\r\nHost:a\r\n\r\n"  # small requests: many per read
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sent = threading.Event()

    def writer():
        try:
            s.sendall(req * n)
        finally:
            sent.set()

    with RssSampler(gw) as rss:
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(1.5)  # the client reads nothing meanwhile
        stalled_growth = rss.growth_mb
        # now read everything: all 10,000 answered, in order
        buf = bytearray()
        count = 0
        deadline = time.monotonic() + 30
        expect = b"HTTP/1.1 200 OK\r\n"
        while count < n and time.monotonic() < deadline:
            d = s.recv(1 << 20)
            if not d:
                break
            buf += d
            count = buf.count(expect)
        t.join(5)
        s.close()
    assert sent.is_set()
    assert count == n, f"{count} responses for {n} pipelined requests"
    assert stalled_growth < MAX_GROWTH_MB, f"RSS grew {stalled_growth:.1f} MB while the client did not read"
    assert rss.growth_mb < MAX_GROWTH_MB, f"RSS grew {rss.growth_mb:.1f} MB over 10,000 pipelined requests"


def test_100mb_download_to_slow_reader(gw):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    rate = 25 * MB  # bytes/s: the upstream can push far faster than this
    with RssSampler(gw) as rss:
        s.sendall(b"GET /api/big/%d HTTP/1.1\r\n" % SIZE + H + b"Connection: close\r\n\r\n")
        got = 0
        head = b""
        start = time.monotonic()
        while True:
            d = s.recv(256 * 1024)
            if not d:
                break
            if not head:
                head = d
            got += len(d)
            ahead = got / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        s.close()
    st, hd, _hl, _ = parse_head(head)
    assert st == 200 and int(hd["content-length"]) == SIZE
    assert got - head.index(b"\r\n\r\n") - 4 == SIZE
    assert rss.growth_mb < MAX_GROWTH_MB, f"gateway RSS grew {rss.growth_mb:.1f} MB for a slow reader"


def test_100mb_upload_to_slow_upstream(gw):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    rate = 25 * MB  # the upstream reads at this rate; the client sends as fast as it can
    # every MiB different, so a duplicated or dropped piece changes the digest
    blocks = [(b"%08d" % i) * (MB // 8) for i in range(SIZE // MB)]
    want = hashlib.sha256()
    for b in blocks:
        want.update(b)
    with RssSampler(gw) as rss:
        s.sendall(b"POST /api/sink HTTP/1.1\r\n" + H + b"X-Rate: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % (rate, SIZE))
        for b in blocks:
            s.sendall(b)
        data = read_to_close(s)
        s.close()
    st, _, body = parse_responses(data)[0]
    doc = json.loads(body)
    assert st == 200 and doc["received"] == SIZE
    assert doc["extra"] == 0, f"gateway sent {doc['extra']}+ bytes beyond Content-Length upstream"
    assert doc["sha256"] == want.hexdigest(), "request body corrupted on the way upstream"
    assert rss.growth_mb < MAX_GROWTH_MB, f"gateway RSS grew {rss.growth_mb:.1f} MB for a slow upstream"


def test_100mb_chunked_upload_from_slow_sender(gw):
    """A slow chunked sender: streamed through (not buffered), memory flat."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    chunk = b"%x\r\n%s\r\n" % (MB, b"v" * MB)
    rate = 25 * MB
    with RssSampler(gw) as rss:
        s.sendall(b"POST /api/up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        start = time.monotonic()
        for i in range(SIZE // MB):
            s.sendall(chunk)
            ahead = (i + 1) * MB / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        s.sendall(b"0\r\n\r\n")
        data = read_to_close(s)
        s.close()
    st, _, body = parse_responses(data)[0]
    assert st == 200 and json.loads(body)["body_len"] == SIZE
    assert rss.growth_mb < MAX_GROWTH_MB, f"gateway RSS grew {rss.growth_mb:.1f} MB for a slow chunked sender"
