"""Response compression and encoded request bodies against a real gateway (issue 22).

A scripted upstream answers what the request's ``x-reply`` header (JSON) asks for:
status, headers, a body of N bytes of JSON-ish text, Content-Length or chunked.  Every
response is read from a real socket and decoded with the reference libraries.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import zlib

import brotli
import pytest
import zstandard

from tests.support.gateway import flushed_access_lines
from tests.support.memory import RssSampler
from tests.support.waiting import wait_for
from tests.support.wire import Client, parse_head
from tests.support.config import ACCESS_LOG_BLOCK
from tests.support.gateway import Gateway
from tests.support.procs import metrics_text, series
from tests.support.upstream import FakeUpstream

from tests.support import DATA  # noqa: E402
UNIT = b'{"id": 12345, "name": "widget", "tags": ["a", "b", "c"], "price": 9.99},\n'
BLOCK = UNIT * 900  # a whole number of units: n bytes of repeated blocks == body_of(n)


def body_of(n: int) -> bytes:
    return (UNIT * (n // len(UNIT) + 1))[:n]


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise AssertionError(coding)


# ----------------------------------------------------------------------------- upstream
class ScriptedUpstream(FakeUpstream):
    """The shared fake upstream with a handler: ``x-reply`` (JSON) says what to answer."""

    def __init__(self) -> None:
        super().__init__(handler=self._answer)
        self.sse_go = threading.Event()
        self.bodies: list[tuple[dict, bytes]] = []

    def _answer(self, req, conn) -> bool:
        hdrs, s, target = req.header_map(), conn.sock, req.target
        self.bodies.append((hdrs, req.body))
        spec = json.loads(hdrs.get("x-reply") or "{}")
        status = spec.get("status", 200)
        headers = spec.get("headers", [["content-type", "application/json"]])
        if target.startswith("/r/sse") or target.startswith("/nosse/sse"):
            self._sse(s)
            return True
        n = spec.get("len", 4096)
        head = b"HTTP/1.1 %d X\r\n" % status + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers)
        if status in (204, 304):
            s.sendall(head + b"\r\n")
            return True
        if spec.get("close"):  # read-until-close body: no Content-Length, no chunked
            s.sendall(head + b"connection: close\r\n\r\n" + body_of(n))
            s.shutdown(socket.SHUT_WR)
            return False
        if spec.get("chunked"):
            s.sendall(head + b"transfer-encoding: chunked\r\n\r\n")
            if req.method != "HEAD":
                left, block = n, BLOCK
                while left:
                    k = min(left, len(block))
                    s.sendall(b"%x\r\n%s\r\n" % (k, block[:k]))
                    left -= k
                s.sendall(b"0\r\n\r\n")
            return True
        s.sendall(head + b"content-length: %d\r\n\r\n" % n)
        if req.method != "HEAD":
            left, block = n, BLOCK
            while left:
                k = min(left, len(block))
                s.sendall(block[:k])
                left -= k
        return True

    def _sse(self, s) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                  b"transfer-encoding: chunked\r\n\r\n")
        for i in range(3):
            ev = b"id: %d\ndata: {\"tick\": %d, \"pad\": \"%s\"}\n\n" % (i, i, b"x" * 200)
            s.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
            # the next event only once the client has decoded this one: an unflushed
            # compressor would leave the client waiting, and the test would time out
            if not self.sse_go.wait(5):
                return
            self.sse_go.clear()
        s.sendall(b"0\r\n\r\n")


SCHEMA = '{"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer", "maximum": 100}}}'

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
compression:
  min_size: 1k
  event_stream: true
services:
  up:
    url: "http://{UP}"
    routes:
      - path: "/r/*"
        name: r
        methods: ["GET", "HEAD", "POST"]
      - path: "/nosse/*"
        name: nosse
        compression: {min_size: 1k}
      - path: "/off/*"
        name: "off"
        compression: false
      - path: "/v/*"
        name: v
        methods: ["POST"]
        validate:
          schema: %s
      - path: "/plain/*"
        name: plain
        methods: ["POST"]
  svc:
    url: "http://{UP}"
    compression:
      algorithms: [gzip]
      levels: {gzip: 1}
    routes:
      - path: "/svc/*"
""" % SCHEMA + ACCESS_LOG_BLOCK


@pytest.fixture(scope="module")
def env():
    with ScriptedUpstream() as up, Gateway(CONFIG.replace("{UP}", up.addr)) as gw:
        yield up, gw


def get(gw, path, ae=None, reply=None, method="GET", headers=None):
    h = dict(headers or {})
    if ae is not None:
        h["Accept-Encoding"] = ae
    if reply is not None:
        h["x-reply"] = json.dumps(reply)
    req = "%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, path, "".join(f"{k}: {v}\r\n" for k, v in h.items()))
    with Client(gw.port) as c:
        c.send(req.encode())
        return c.response(head_only=method == "HEAD")


# ----------------------------------------------------------------------------- negotiation
NEGOTIATION = [
    (None, None),                                   # no field: identity
    ("", None),                                     # empty: identity only
    ("gzip", "gzip"),
    ("x-gzip", "gzip"),
    ("GZIP;Q=1", "gzip"),
    ("gzip, deflate, br", "br"),                    # server preference among equals: zstd > br > gzip
    ("gzip, deflate, br, zstd", "zstd"),
    ("br;q=0.5, gzip;q=0.8", "gzip"),               # q-values decide first
    ("zstd;q=0, br;q=0, gzip;q=0.1", "gzip"),
    ("*", "zstd"),
    ("*;q=0.5, zstd;q=0", "br"),                    # '*' covers what is not named
    ("gzip;q=0.5, identity", None),                 # identity preferred
    ("identity", None),
    ("deflate, compress", None),                    # unknown codings only
    ("gzip;q=0", None),
    ("gzip;q=abc", None),                           # an invalid qvalue is not a preference
    ("identity;q=0, br", "br"),
]


@pytest.mark.parametrize("ae,expected", NEGOTIATION)
def test_negotiation_table(env, ae, expected):
    _up, gw = env
    st, hd, body = get(gw, "/r/n", ae=ae, reply={"len": 5000})
    assert st == 200
    assert hd.get("content-encoding") == expected
    assert decode(expected, body) == body_of(5000)
    assert "accept-encoding" in hd.get("vary", "").lower()  # the form depended on Accept-Encoding
    if expected:
        assert "content-length" not in hd and hd["transfer-encoding"] == "chunked"
        assert len(body) < 1000


def test_identity_refused_compresses_small_bodies(env):
    _up, gw = env
    st, hd, body = get(gw, "/r/s", ae="gzip, identity;q=0", reply={"len": 100})
    assert hd.get("content-encoding") == "gzip" and decode("gzip", body) == body_of(100)
    st, hd, body = get(gw, "/r/s", ae="gzip", reply={"len": 100})
    assert "content-encoding" not in hd and body == body_of(100) and hd["content-length"] == "100"


def test_service_override_and_route_off(env):
    _up, gw = env
    st, hd, body = get(gw, "/svc/x", ae="zstd, br, gzip", reply={"len": 5000})
    assert hd["content-encoding"] == "gzip" and decode("gzip", body) == body_of(5000)  # only gzip there
    st, hd, body = get(gw, "/off/x", ae="gzip", reply={"len": 5000})
    assert "content-encoding" not in hd and "vary" not in hd and body == body_of(5000)


# ----------------------------------------------------------------------------- skip rules
def _ct(ct, *more):
    return [["content-type", ct], *[list(x) for x in more]]


SKIPS = [
    ("no-transform", "GET", {"headers": _ct("application/json", ("cache-control", "public, no-transform"))}),
    ("already encoded", "GET", {"headers": _ct("application/json", ("content-encoding", "br"))}),
    ("206", "GET", {"status": 206, "headers": _ct("application/json", ("content-range", "bytes 0-4999/9999"))}),
    ("204", "GET", {"status": 204, "headers": _ct("application/json")}),
    ("304", "GET", {"status": 304, "headers": [["etag", '"abc"']]}),
    ("HEAD", "HEAD", {"headers": _ct("application/json")}),
    ("image", "GET", {"headers": _ct("image/png")}),
    ("not in types", "GET", {"headers": _ct("application/octet-stream")}),
    ("no content-type", "GET", {"headers": []}),
    ("below min_size", "GET", {"len": 1000, "headers": _ct("application/json")}),
]


@pytest.mark.parametrize("why,method,reply", SKIPS, ids=[s[0] for s in SKIPS])
def test_skip_rules(env, why, method, reply):
    _up, gw = env
    reply = {"len": 5000, **reply}
    st, hd, body = get(gw, "/r/skip", ae="gzip, br, zstd", reply=reply, method=method)
    assert st == reply.get("status", 200)
    assert hd.get("content-encoding") in (None, "br" if why == "already encoded" else None)
    if st not in (204, 304) and method != "HEAD":
        assert body == body_of(reply["len"])  # untouched bytes (a "br" label on plain bytes included)
        assert hd["content-length"] == str(reply["len"])


def test_compressed_types_and_charset(env):
    _up, gw = env
    for ct in ("text/html; charset=utf-8", "application/javascript", "image/svg+xml", "application/xml",
               "APPLICATION/JSON"):
        st, hd, body = get(gw, "/r/t", ae="br", reply={"headers": _ct(ct)})
        assert hd.get("content-encoding") == "br", ct
        assert decode("br", body) == body_of(4096)


def test_vary_merged_etag_weakened_accept_ranges_dropped(env):
    _up, gw = env
    reply = {"headers": _ct("application/json", ("vary", "Origin"), ("etag", '"v1"'), ("accept-ranges", "bytes"))}
    st, hd, body = get(gw, "/r/v", ae="gzip", reply=reply)
    assert hd["content-encoding"] == "gzip"
    assert hd["vary"] == "Origin, Accept-Encoding"
    assert hd["etag"] == 'W/"v1"'
    assert "accept-ranges" not in hd
    # already listed (any case) or '*': unchanged; weak ETags stay as they are
    reply = {"headers": _ct("application/json", ("vary", "accept-encoding, Origin"), ("etag", 'W/"v2"'))}
    st, hd, body = get(gw, "/r/v", ae="gzip", reply=reply)
    assert hd["vary"] == "accept-encoding, Origin" and hd["etag"] == 'W/"v2"'
    reply = {"headers": _ct("application/json", ("vary", "*"))}
    st, hd, body = get(gw, "/r/v", ae="gzip", reply=reply)
    assert hd["vary"] == "*"


def test_chunked_upstream_and_http10_client(env):
    _up, gw = env
    st, hd, body = get(gw, "/r/c", ae="zstd", reply={"len": 300_000, "chunked": True})
    assert hd["content-encoding"] == "zstd" and decode("zstd", body) == body_of(300_000)
    st, hd, body = get(gw, "/r/c", ae="br", reply={"len": 70_000, "close": True})
    assert hd["content-encoding"] == "br" and hd["transfer-encoding"] == "chunked"
    assert decode("br", body) == body_of(70_000)
    # HTTP/1.0: no chunked framing; the compressed body is delimited by the close
    data = gw.raw(b"GET /r/c HTTP/1.0\r\nAccept-Encoding: gzip\r\nx-reply: {\"len\": 50000}\r\n\r\n")
    st, hd, _hl, rest = parse_head(data)
    assert hd["content-encoding"] == "gzip" and "transfer-encoding" not in hd and "content-length" not in hd
    assert decode("gzip", rest) == body_of(50_000)


def test_keep_alive_sequence_mixes_compressed_and_plain(env):
    _up, gw = env
    with Client(gw.port) as c:
        for i, (ae, size) in enumerate([("gzip", 5000), (None, 5000), ("br", 200_000), ("gzip", 10)] * 2):
            h = "Accept-Encoding: %s\r\n" % ae if ae else ""
            c.send(("GET /r/k%d HTTP/1.1\r\nHost: t\r\n%sx-reply: {\"len\": %d}\r\n\r\n" % (i, h, size)).encode())
            st, hd, body = c.response()
            coding = ae if size >= 1024 else None
            assert st == 200 and hd.get("content-encoding") == coding
            assert decode(coding, body) == body_of(size)


# ----------------------------------------------------------------------------- event streams
def test_event_stream_flushed_per_event(env):
    up, gw = env
    with Client(gw.port) as c:
        c.send(b"GET /r/sse HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        head = c.read_until(b"\r\n\r\n")
        st, hd, _hl, _rest = parse_head(head)
        assert hd["content-encoding"] == "gzip" and hd["transfer-encoding"] == "chunked"
        d = zlib.decompressobj(31)
        text = b""
        for i in range(3):
            while b"id: %d\n" % i not in text or not text.endswith(b"\n\n"):
                size = int(c.read_until(b"\r\n")[:-2], 16)
                assert size, "stream ended before event %d" % i
                text += d.decompress(_exact(c, size + 2)[:-2])
            up.sse_go.set()
        assert text.count(b"data: ") == 3
        c.read_until(b"0\r\n\r\n")


def _exact(c: Client, n: int) -> bytes:
    while len(c.buf) < n:
        assert c._more(), "connection ended"
    out, c.buf = c.buf[:n], c.buf[n:]
    return out


def test_event_stream_not_compressed_by_default(env):
    up, gw = env
    up.sse_go.set()
    with Client(gw.port) as c:
        c.send(b"GET /nosse/sse HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        head = c.read_until(b"\r\n\r\n")
        st, hd, _hl, _rest = parse_head(head)
        assert "content-encoding" not in hd and hd["content-type"] == "text/event-stream"
        got = b""
        while got.count(b"data: ") < 3:
            up.sse_go.set()
            got += c.read_until(b"\n\n\r\n")
    up.sse_go.clear()


# ----------------------------------------------------------------------------- 100 MB streamed
def test_100mb_body_streamed_with_flat_memory(env):
    _up, gw = env
    n = 100 * 1024 * 1024
    with RssSampler(gw) as rss, socket.create_connection((gw.host, gw.port), timeout=20) as s:
        s.sendall(b"GET /r/big HTTP/1.1\r\nHost: t\r\nAccept-Encoding: zstd\r\n"
                  b"x-reply: {\"len\": %d}\r\nConnection: close\r\n\r\n" % n)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert b"content-encoding: zstd" in head.lower() and b"transfer-encoding: chunked" in head.lower()
        d = zstandard.ZstdDecompressor().decompressobj()
        raw = bytearray(rest)
        out = 0
        wire = len(rest)
        while True:  # de-chunk and decode as it arrives, keeping little
            chunk = s.recv(1 << 18)
            if not chunk:
                break
            wire += len(chunk)
            raw += chunk
            while True:
                i = raw.find(b"\r\n")
                if i < 0:
                    break
                size = int(raw[:i], 16)
                if len(raw) < i + 2 + size + 2:
                    break
                if size == 0:
                    break
                out += len(d.decompress(bytes(raw[i + 2:i + 2 + size])))
                del raw[:i + 2 + size + 2]
    assert out == n
    assert wire < n // 50  # compressed on the way
    assert rss.growth_mb < 40, f"gateway RSS grew {rss.growth_mb:.1f} MB for a 100 MB body"


# ----------------------------------------------------------------------------- request bodies
def _post(gw, path, body: bytes, coding: str | None, timeout=5.0):
    h = {"Content-Type": "application/json"}
    if coding:
        h["Content-Encoding"] = coding
    return gw.request("POST", path, headers=h, body=body, timeout=timeout)


def test_encoded_request_validated_and_forwarded_as_received(env):
    up, gw = env
    doc = json.dumps({"qty": 5, "note": "n" * 3000}).encode()
    for coding, enc in (("gzip", gzip.compress(doc)), ("br", brotli.compress(doc)),
                        ("zstd", zstandard.ZstdCompressor().compress(doc))):
        n = len(up.bodies)
        st, hd, body = _post(gw, "/v/orders", enc, coding)
        assert st == 200, body
        hdrs, got = up.bodies[n]
        assert got == enc and hdrs["content-encoding"] == coding  # forwarded as received
    bad = json.dumps({"qty": 500}).encode()
    st, _hd, body = _post(gw, "/v/orders", gzip.compress(bad), "gzip")
    assert st == 400 and "/qty" in json.loads(body)["detail"]
    st, _hd, body = _post(gw, "/v/orders", gzip.compress(doc)[:-8], "gzip")  # truncated
    assert st == 400 and "gzip" in json.loads(body)["detail"]
    st, hd, body = _post(gw, "/v/orders", zlib.compress(doc), "deflate")
    assert st == 415 and hd["accept-encoding"] == "gzip, br, zstd"


def test_other_routes_pass_encoded_bodies_untouched(env):
    up, gw = env
    junk = b"\x1f\x8bnot really gzip"
    n = len(up.bodies)
    st, _hd, _body = _post(gw, "/plain/x", junk, "gzip")
    assert st == 200 and up.bodies[n][1] == junk
    st, _hd, _body = _post(gw, "/plain/x", junk, "deflate")
    assert st == 200


@pytest.mark.timing
def test_decompression_bomb_refused_quickly(env):
    up, gw = env
    with open(os.path.join(DATA, "bomb-1g.br"), "rb") as f:
        bomb = f.read()  # 841 bytes of brotli that inflate to 1 GiB of zeros
    assert len(bomb) < 1024
    n = len(up.bodies)
    t = time.monotonic()
    st, _hd, body = _post(gw, "/v/orders", bomb, "br")
    took = time.monotonic() - t
    assert st == 413 and "decoded" in json.loads(body)["detail"]
    assert took < 2.0, took  # (a few ms of work; the margin is for a shared machine)
    assert len(up.bodies) == n  # nothing forwarded
    zbomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    st, _hd, body = _post(gw, "/v/orders", zbomb, "zstd")
    assert st == 413
    # the gateway still serves
    assert get(gw, "/r/after", ae="gzip", reply={"len": 2000})[0] == 200


# ----------------------------------------------------------------------------- visibility
def test_metrics_and_access_log(env):
    _up, gw = env
    get(gw, "/r/m", ae="br", reply={"len": 8000})
    get(gw, "/r/m2", ae="br", reply={"len": 8000, "headers": _ct("image/png")})
    lines = flushed_access_lines(gw, lambda ls: any(x["path"] == "/r/m" for x in ls)
                                 and any(x["path"] == "/r/m2" for x in ls))
    by_path = {x["path"]: x for x in lines}
    assert by_path["/r/m"]["content_encoding"] == "br" and by_path["/r/m"]["bytes_sent"] < 8000
    assert "content_encoding" not in by_path["/r/m2"]
    gw.wait_admin()

    def ready():
        text = metrics_text(gw)
        return series(text, "fastgw_compression_responses_total").get('{algorithm="br"}', 0) >= 1 and \
            series(text, "fastgw_compression_skipped_total").get('{reason="type"}', 0) >= 1
    assert wait_for(ready, timeout=5, interval=0.1)
    text = metrics_text(gw)
    bin_ = series(text, "fastgw_compression_input_bytes_total")['{algorithm="br"}']
    bout = series(text, "fastgw_compression_output_bytes_total")['{algorithm="br"}']
    assert bin_ >= 8000 and 0 < bout < bin_
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/install-deps"
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
