"""The proxy core end to end: one gateway process in front of a raw recording upstream.

Keep-alive and pipelining, message framing both ways (Content-Length, chunked,
read-until-close, HEAD/204/304/1xx, Expect), hop-by-hop and forwarding headers from an
untrusted peer, request ids, problem+json errors, body limits, upstream failures, client
aborts, and Upgrade tunnelling.  Every exchange has a timeout; the gateway and the
upstream are shared per module (fixtures in tests/conftest.py).
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.gateway import flushed_access_lines
from tests.support.waiting import wait_for
from tests.support.wire import Client, exchange, one_response, parse_head, parse_responses, problem_of

H = b"Host: gw.test\r\n"


def get(path: bytes, extra: bytes = b"", close: bool = True) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\n" + H + extra + (b"Connection: close\r\n" if close else b"") + b"\r\n"


def fetch(gw, raw: bytes, timeout: float = 5.0):
    data, _ = exchange(gw.port, raw, timeout=timeout)
    return one_response(data)


def echoed(body: bytes) -> dict:
    doc = json.loads(body)
    doc["hmap"] = {}
    for n, v in doc["headers"]:
        doc["hmap"].setdefault(n, []).append(v)
    return doc


# ---------------------------------------------------------------------- keep-alive & pipelining
def test_upstream_keepalive_one_connection_for_many_requests(core_gw, raw_up):
    snap = raw_up.snapshot()
    with Client(core_gw.port) as c:
        for i in range(20):
            c.send(get(b"/api/ka/%d" % i, close=False))
            assert c.response()[0] == 200
    for i in range(5):  # separate client connections, sequentially
        assert fetch(core_gw, get(b"/api/ka2/%d" % i))[0] == 200
    seen = raw_up.since(snap)
    assert len(seen) == 25
    assert len({r.conn_id for r in seen}) == 1, "upstream connection not reused"
    assert raw_up.snapshot()[0] - snap[0] <= 1


def test_client_keepalive_http11_and_http10(core_gw):
    with Client(core_gw.port) as c:
        for _ in range(3):
            c.send(get(b"/api/a", close=False))
            st, hd, _ = c.response()
            assert st == 200 and hd.get("connection", "") != "close"
        assert not c.closed_within(0.2)
    with Client(core_gw.port) as c:  # HTTP/1.0 defaults to close
        c.send(b"GET /api/a HTTP/1.0\r\n\r\n")
        assert c.response()[0] == 200
        assert c.closed_within(2)
    with Client(core_gw.port) as c:  # HTTP/1.0 keep-alive when asked
        c.send(b"GET /api/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        st, hd, _ = c.response()
        assert st == 200 and hd.get("connection", "").lower() == "keep-alive"
        c.send(b"GET /api/b HTTP/1.0\r\n\r\n")
        assert c.response()[0] == 200


def test_pipelined_requests_answered_in_order(core_gw, raw_up):
    raw = b"".join(get(b"/api/pipe/%d" % i, close=(i == 9)) for i in range(10))
    data, closed = exchange(core_gw.port, raw, timeout=5)
    rs = parse_responses(data)
    assert [r[0] for r in rs] == [200] * 10
    assert [json.loads(r[2])["target"] for r in rs] == ["/api/pipe/%d" % i for i in range(10)]
    assert closed


def test_pipelined_mixed_bodies_and_methods(core_gw):
    raw = (b"POST /api/p1 HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
           + b"HEAD /api/p2 HTTP/1.1\r\n" + H + b"\r\n"
           + b"PUT /api/p3 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
           + get(b"/api/p4"))
    data, _ = exchange(core_gw.port, raw, timeout=5)
    rs = parse_responses(data, head_only_methods=[False, True, False, False])
    assert [r[0] for r in rs] == [200, 200, 200, 200], data[:800]
    assert json.loads(rs[0][2])["body_len"] == 5
    assert rs[1][2] == b""
    assert json.loads(rs[2][2])["body_len"] == 3
    assert json.loads(rs[3][2])["target"] == "/api/p4"


# ---------------------------------------------------------------------- framing
def test_chunked_request_body_streamed_in_pieces(core_gw, raw_up):
    snap = raw_up.snapshot()
    pieces = [b"PUT /api/up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
              b"5\r\nhello\r\n", b"6;ext=1\r\n world\r\n", b"0\r\n\r\n"]
    data, _ = exchange(core_gw.port, pieces, pause=0.05, timeout=5)
    st, _, body = one_response(data)
    assert st == 200
    (r,) = raw_up.since(snap)
    assert r.complete and r.body == b"hello world"
    assert r.header("transfer-encoding") == "chunked" and r.header("content-length") is None


def test_content_length_request_body(core_gw, raw_up):
    snap = raw_up.snapshot()
    body = bytes(range(256)) * 100
    st, _, b = fetch(core_gw, b"POST /api/cl HTTP/1.1\r\n" + H + b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                     % len(body) + body)
    assert st == 200 and json.loads(b)["body_len"] == len(body)
    (r,) = raw_up.since(snap)
    assert r.body == body and r.header("content-length") == str(len(body))


def test_chunked_response_passed_as_chunked(core_gw):
    data, _ = exchange(core_gw.port, get(b"/api/chunked/5000"))
    st, hd, body = one_response(data)
    assert st == 200 and hd.get("transfer-encoding") == "chunked" and "content-length" not in hd
    assert body == b"c" * 5000


def test_chunked_response_to_http10_client_is_close_delimited(core_gw):
    data, closed = exchange(core_gw.port, b"GET /api/chunked/5000 HTTP/1.0\r\n\r\n")
    st, hd, _hl, rest = parse_head(data)
    assert st == 200 and "transfer-encoding" not in hd and closed
    assert rest == b"c" * 5000


def test_read_until_close_upstream_body_rechunked_and_client_kept_alive(core_gw):
    with Client(core_gw.port) as c:
        c.send(get(b"/api/close/7000", close=False))
        st, hd, body = c.response()
        assert st == 200 and hd.get("transfer-encoding") == "chunked"
        assert body == b"r" * 7000
        c.send(get(b"/api/after-close", close=False))
        assert c.response()[0] == 200


def test_head_response_has_no_body_and_connection_stays_usable(core_gw):
    with Client(core_gw.port) as c:
        c.send(b"HEAD /api/big/123456 HTTP/1.1\r\n" + H + b"\r\n")
        st, hd, body = c.response(head_only=True)
        assert st == 200 and hd.get("content-length") == "123456" and body == b""
        c.send(get(b"/api/after-head", close=False))
        st, _, body = c.response()
        assert st == 200 and json.loads(body)["target"] == "/api/after-head"


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses(core_gw, status):
    with Client(core_gw.port) as c:
        c.send(get(b"/api/status/%d" % status, close=False))
        st, hd, body = c.response()
        assert st == status and body == b""
        assert "transfer-encoding" not in hd
        assert hd.get("x-st") == str(status)
        c.send(get(b"/api/after", close=False))
        st, _, body = c.response()
        assert st == 200 and json.loads(body)["target"] == "/api/after"


def test_upstream_interim_100_not_relayed(core_gw):
    data, _ = exchange(core_gw.port, get(b"/api/interim"))
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert one_response(data)[2] == b"finally"


def test_expect_100_continue(core_gw, raw_up):
    snap = raw_up.snapshot()
    with Client(core_gw.port) as c:
        c.send(b"POST /api/exp HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c.read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        c.send(b"hello")
        st, _, body = c.response()
        assert st == 200 and json.loads(body)["body_len"] == 5
    (r,) = raw_up.since(snap)
    assert r.body == b"hello" and r.header("expect") is None


# ---------------------------------------------------------------------- headers
def test_hop_by_hop_request_headers_removed(core_gw, raw_up):
    snap = raw_up.snapshot()
    st, _, _ = fetch(core_gw, b"GET /api/hop-req HTTP/1.1\r\n" + H
                     + b"Connection: keep-alive, X-Custom-Hop\r\nX-Custom-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                       b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\n"
                       b"Proxy-Authorization: Basic eDp5\r\nX-End-To-End: yes\r\n\r\n")
    assert st == 200
    (r,) = raw_up.since(snap)
    names = {n for n, _ in r.headers}
    for hop in ("connection", "x-custom-hop", "keep-alive", "proxy-connection", "te", "trailer",
                "proxy-authorization", "upgrade"):
        assert hop not in names, f"{hop} forwarded upstream: {r.headers}"
    assert r.header("x-end-to-end") == "yes"


def test_hop_by_hop_response_headers_removed(core_gw):
    st, hd, body = fetch(core_gw, get(b"/api/hop"))
    assert st == 200 and body == b"hop"
    for hop in ("x-hop-resp", "keep-alive", "proxy-connection", "trailer", "upgrade", "proxy-authenticate"):
        assert hop not in hd, f"{hop} relayed to the client: {hd}"
    assert hd.get("x-end-to-end") == "1"


def test_forwarding_headers_from_untrusted_peer(core_gw, raw_up):
    snap = raw_up.snapshot()
    st, _, _ = fetch(core_gw, b"GET /api/fwd HTTP/1.1\r\nHost: public.example:8443\r\n"
                     b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n"
                     b"X-Forwarded-Port: 1\r\nForwarded: for=1.2.3.4;proto=https\r\nX-Real-IP: 1.2.3.4\r\n"
                     b"Connection: close\r\n\r\n")
    assert st == 200
    (r,) = raw_up.since(snap)
    assert r.header_all("x-forwarded-for") == ["127.0.0.1"]
    assert r.header_all("x-forwarded-proto") == ["http"]
    assert r.header_all("x-forwarded-host") == ["public.example:8443"]
    assert r.header("forwarded") is None and r.header("x-real-ip") is None and r.header("x-forwarded-port") is None
    # preserve_host is on by default: the upstream gets the client's Host
    assert r.header_all("host") == ["public.example:8443"]


def test_request_id_generated_and_untrusted_one_replaced(core_gw, raw_up):
    snap = raw_up.snapshot()
    st1, hd1, _ = fetch(core_gw, get(b"/api/rid"))
    st2, hd2, _ = fetch(core_gw, get(b"/api/rid", b"X-Request-ID: forged-id-123\r\n"))
    assert st1 == st2 == 200
    rid1, rid2 = hd1.get("x-request-id"), hd2.get("x-request-id")
    assert rid1 and rid2 and rid1 != rid2 and rid2 != "forged-id-123"
    r1, r2 = raw_up.since(snap)
    assert r1.header_all("x-request-id") == [rid1]
    assert r2.header_all("x-request-id") == [rid2]


# ---------------------------------------------------------------------- local errors
def test_404_problem_json_with_request_id(core_gw, raw_up):
    snap = raw_up.snapshot()
    st, hd, body = fetch(core_gw, get(b"/nope"))
    assert st == 404 and hd["content-type"] == "application/problem+json"
    doc = problem_of(body)
    assert doc["status"] == 404 and doc["request_id"] == hd["x-request-id"]
    assert raw_up.since(snap) == []


def test_405_with_allow(core_gw, raw_up):
    snap = raw_up.snapshot()
    st, hd, body = fetch(core_gw, b"DELETE /only-get HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert st == 405
    allow = {m.strip() for m in hd["allow"].split(",")}
    assert allow == {"GET", "HEAD"}
    assert problem_of(body)["status"] == 405
    assert raw_up.since(snap) == []


def test_head_allowed_where_get_is(core_gw):
    data, _ = exchange(core_gw.port, b"HEAD /only-get HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    st, _, _, rest = parse_head(data)
    assert st == 200 and rest == b""


def test_error_keeps_connection_for_next_request(core_gw):
    with Client(core_gw.port) as c:
        c.send(get(b"/nope", close=False))
        assert c.response()[0] == 404
        c.send(get(b"/api/next", close=False))
        assert c.response()[0] == 200


# ---------------------------------------------------------------------- body limits
def test_body_at_limit_passes(core_gw):
    st, _, body = fetch(core_gw, b"POST /small/ok HTTP/1.1\r\n" + H
                        + b"Content-Length: 1024\r\nConnection: close\r\n\r\n" + b"x" * 1024)
    assert st == 200 and json.loads(body)["body_len"] == 1024


def test_chunked_body_over_limit_streamed_gets_413_and_upstream_never_sees_it_complete(core_gw, raw_up):
    # warm the pool so an idle upstream connection is ready (the fast path)
    assert fetch(core_gw, get(b"/api/warm"))[0] == 200
    snap = raw_up.snapshot()
    pieces = [b"POST /small/big HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"]
    pieces += [b"200\r\n" + b"y" * 512 + b"\r\n"] * 16  # 8 KiB against a 1 KiB limit
    pieces += [b"0\r\n\r\n"]
    data, closed = exchange(core_gw.port, pieces, pause=0.02, timeout=5)
    st, _, body = one_response(data)
    assert st == 413 and problem_of(body)["status"] == 413
    assert closed
    time.sleep(0.05)
    seen = raw_up.since(snap)
    assert not any(r.complete for r in seen), "the upstream received the whole over-limit body"
    assert raw_up.snapshot()[2] - snap[2] < 1024 + 1024, \
        f"upstream received {raw_up.snapshot()[2] - snap[2]} bytes for a 1 KiB limit"


def test_content_length_over_limit_413_before_any_byte_forwarded(core_gw, raw_up):
    snap = raw_up.snapshot()
    data, closed = exchange(core_gw.port, b"POST /small/big HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n",
                            timeout=3)
    st, hd, _ = one_response(data)
    assert st == 413 and closed
    assert raw_up.since(snap) == []


# ---------------------------------------------------------------------- upstream failures
def test_upstream_refused_502(core_gw):
    st, hd, body = fetch(core_gw, get(b"/refused/x"))
    assert st == 502 and problem_of(body)["status"] == 502


@pytest.mark.timing
def test_upstream_timeout_504(core_gw):
    t = time.monotonic()
    st, hd, body = fetch(core_gw, get(b"/slowsvc/delay/2000"))
    elapsed = time.monotonic() - t
    assert st == 504 and problem_of(body)["status"] == 504
    assert elapsed < 1.8, f"504 took {elapsed:.2f}s with a 500ms timeout"


@pytest.mark.parametrize("path", [b"/api/garbage", b"/api/conflict-cl", b"/api/bighead"])
def test_bad_upstream_response_502(core_gw, path):
    st, hd, body = fetch(core_gw, get(path))
    assert st == 502, (st, body[:200])
    assert problem_of(body)["status"] == 502


def test_upstream_truncated_mid_body_aborts_client(core_gw):
    data, closed = exchange(core_gw.port, get(b"/api/truncate/100000"), timeout=5)
    st, hd, _hl, rest = parse_head(data)
    assert st == 200 and hd["content-length"] == "100000"
    assert closed
    assert len(rest) < 100000, "a truncated upstream body was completed"


def test_upstream_truncated_chunked_client_never_gets_last_chunk(core_gw):
    """read-until-close is legitimate; but an upstream that promised a length and closed
    early must never be turned into a complete chunked response."""
    data, closed = exchange(core_gw.port, get(b"/api/truncate/9000"), timeout=5)
    assert closed
    assert not data.endswith(b"0\r\n\r\n")
    assert parse_responses(data) == [], "the client got a complete-looking response"


def test_client_disconnect_mid_response_logged_and_upstream_closed(core_gw, raw_up):
    snap = raw_up.snapshot()
    s = socket.create_connection(("127.0.0.1", core_gw.port), timeout=5)
    s.sendall(get(b"/api/big/200000000", b"User-Agent: aborter\r\n"))
    got = 0
    while got < 1 << 20:
        got += len(s.recv(65536))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # RST
    lines = flushed_access_lines(core_gw, lambda ls: any(x.get("user_agent") == "aborter" for x in ls), 5)
    (line,) = [x for x in lines if x.get("user_agent") == "aborter"]
    assert "client_abort" in line["response_flags"], line
    # the upstream connection of the aborted exchange was not pooled: the next request
    # goes over a different upstream connection
    aborted = raw_up.since(snap)[0].conn_id
    assert fetch(core_gw, get(b"/api/after-abort"))[0] == 200
    assert raw_up.since(snap)[-1].conn_id != aborted


def test_access_log_fields(core_gw):
    fetch(core_gw, get(b"/api/logged?q=1", b"User-Agent: logcheck\r\n"))
    lines = flushed_access_lines(core_gw, lambda ls: any(x.get("user_agent") == "logcheck" for x in ls), 5)
    (line,) = [x for x in lines if x.get("user_agent") == "logcheck"]
    assert line["status"] == 200 and line["method"] == "GET" and line["path"] == "/api/logged"
    assert line["route"] == "api" and line["client_ip"] == "127.0.0.1" and line["request_id"]
    assert line["upstream_status"] == 200 and line["response_flags"] == []


# ---------------------------------------------------------------------- upgrade
def test_websocket_upgrade_tunnelled(core_gw, raw_up):
    with Client(core_gw.port) as c:
        c.send(b"GET /api/ws HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = c.read_until(b"\r\n\r\n")
        st, hd, _hl, _ = parse_head(head)
        assert st == 101 and hd.get("upgrade", "").lower() == "websocket"
        assert "upgrade" in hd.get("connection", "").lower()
        for msg in (b"hello", b"\x00\x01binary\xff"):
            c.send(msg)
            assert c.read_until(b"echo:" + msg) .endswith(msg)


def test_websocket_upgrade_with_early_client_bytes(core_gw):
    """Bytes the client sends right behind the upgrade head (same write) reach the upstream."""
    with Client(core_gw.port) as c:
        c.send(b"GET /api/ws HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\nearly-frame")
        head = c.read_until(b"\r\n\r\n")
        assert parse_head(head)[0] == 101
        c.send(b"later")
        got = c.read_until(b"later")
        assert b"early-frame" in got, got


def test_h2c_upgrade_not_forwarded(core_gw, raw_up):
    snap = raw_up.snapshot()
    data, _ = exchange(core_gw.port, b"GET /api/h2c HTTP/1.1\r\n" + H
                       + b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
                       timeout=3)
    st, hd, body = one_response(data)
    assert st == 200, data[:300]
    (r,) = raw_up.since(snap)
    assert r.header("upgrade") is None and r.header("http2-settings") is None
    assert "upgrade" not in (r.header("connection") or "").lower()


def test_gateway_still_serves_after_all_of_this(core_gw):
    assert wait_for(lambda: fetch(core_gw, get(b"/api/final"))[0] == 200, 2)
    assert core_gw.proc.poll() is None


@pytest.mark.timing
def test_upstream_connection_reusable_after_slow_client_download(core_gw, raw_up):
    """A response that ends while the client is not reading leaves the client side
    write-paused, which pauses reading from the upstream; the upstream connection must
    not go back to the pool still paused (the next request on it would never be read)."""
    for attempt in range(3):
        s = socket.create_connection(("127.0.0.1", core_gw.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(get(b"/api/big/%d" % (16 << 20)))
        time.sleep(0.5)  # not reading: the gateway's write side pauses while the upstream finishes
        got = 0
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            got += len(d)
        s.close()
        assert got > 16 << 20
        t = time.monotonic()
        st, _, body = fetch(core_gw, get(b"/api/after-slow-%d" % attempt), timeout=3)
        assert st == 200 and json.loads(body)["target"] == "/api/after-slow-%d" % attempt
        assert time.monotonic() - t < 2
