"""Malformed and ambiguous requests on the wire, from a table (issue 2, "Strict framing").

Each row is raw bytes sent on a fresh connection to a real gateway in front of a raw
recording upstream.  For every row the gateway must:
  1. answer with exactly the expected status (an RFC 9457 problem with a request_id),
  2. close the connection,
  3. forward NOTHING: the upstream sees no request head from it (a smuggled second
     request would show up as an extra head too),
and a follow-up request on a new connection must still work.
"""

from __future__ import annotations

import time

import pytest

from tests.support.wire import exchange, one_response, problem_of

H = b"Host: gw.test\r\n"


def get(extra: bytes = b"", target: bytes = b"/api/x", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + H + extra + b"\r\n"


def post(headers: bytes, body: bytes = b"", target: bytes = b"/api/x") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\n" + H + headers + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"

# (id, raw request, expected status)
TABLE = [
    # --- framing: Content-Length / Transfer-Encoding -------------------------------
    ("cl-and-te", post(b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n"), 400),
    ("te-and-cl", post(CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\n"), 400),
    ("cl-te-smuggle-get", post(b"Content-Length: 6\r\n" + CHUNKED,
                               b"0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"), 400),
    ("cl-duplicate-same", post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400),
    ("cl-duplicate-diff", post(b"Content-Length: 3\r\nContent-Length: 5\r\n", b"abcde"), 400),
    ("cl-list", post(b"Content-Length: 3, 3\r\n", b"abc"), 400),
    ("cl-not-a-number", post(b"Content-Length: abc\r\n"), 400),
    ("cl-negative", post(b"Content-Length: -1\r\n"), 400),
    ("cl-plus-sign", post(b"Content-Length: +3\r\n", b"abc"), 400),
    ("cl-hex", post(b"Content-Length: 0x3\r\n", b"abc"), 400),
    ("cl-overflow", post(b"Content-Length: 99999999999999999999999999\r\n"), 400),
    ("cl-empty", post(b"Content-Length: \r\n"), 400),
    ("te-gzip-only", post(b"Transfer-Encoding: gzip\r\n", b"abc"), 400),
    ("te-identity", post(b"Transfer-Encoding: identity\r\n", b"abc"), 400),
    ("te-chunked-then-gzip", post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 400),
    ("te-space-before-colon", post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-xchunked", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400),
    ("te-chunkedx", post(b"Transfer-Encoding: chunkedx\r\n", b"0\r\n\r\n"), 400),
    ("te-vtab", post(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"), 400),
    ("te-quoted", post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), 400),
    ("te-obs-fold", post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-cl-smuggle-te-obfuscated", post(b"Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n",
                                         b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"), 400),
    # --- chunk sizes (the whole request in one write) -------------------------------
    ("chunk-size-not-hex", post(CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x-prefix", post(CHUNKED, b"0x3\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", post(CHUNKED, b"-3\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow", post(CHUNKED, b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", post(CHUNKED, b"\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-data-too-long", post(CHUNKED, b"3\r\nabcdef\r\n0\r\n\r\n"), 400),
    ("chunk-size-bare-lf", post(CHUNKED, b"3\nabc\r\n0\r\n\r\n"), 400),
    # --- header syntax ---------------------------------------------------------------
    ("obs-fold", get(b"X-A: b\r\n c\r\n"), 400),
    ("obs-fold-tab", get(b"X-A: b\r\n\tc\r\n"), 400),
    ("space-before-colon", get(b"X-A : b\r\n"), 400),
    ("tab-before-colon", get(b"X-A\t: b\r\n"), 400),
    ("host-space-before-colon", b"GET /api/x HTTP/1.1\r\nHost : gw.test\r\n\r\n", 400),
    ("header-name-space", get(b"X A: b\r\n"), 400),
    ("header-name-at", get(b"X@A: b\r\n"), 400),
    ("header-name-paren", get(b"(X): b\r\n"), 400),
    ("header-name-empty", get(b": b\r\n"), 400),
    ("header-name-ctl", get(b"X\x01A: b\r\n"), 400),
    ("header-no-colon", get(b"X-A b\r\n"), 400),
    ("header-value-cr", get(b"X-A: b\rc\r\n"), 400),
    ("header-value-nul", get(b"X-A: b\x00c\r\n"), 400),
    ("header-value-ctl", get(b"X-A: b\x01c\r\n"), 400),
    ("header-value-del", get(b"X-A: b\x7fc\r\n"), 400),
    ("header-bare-lf", get(b"X-A: b\nX-B: c\r\n"), 400),
    ("bare-lf-everywhere", b"GET /api/x HTTP/1.1\nHost: gw.test\n\n", 400),
    ("bare-cr-line-end", b"GET /api/x HTTP/1.1\rHost: gw.test\r\r\n\r\n", 400),
    ("bare-cr-after-request-line", b"GET /api/x HTTP/1.1\r\rHost: gw.test\r\n\r\n", 400),
    # --- Host ------------------------------------------------------------------------
    ("missing-host-1.1", b"GET /api/x HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("duplicate-host", get(b"Host: other.test\r\n"), 400),
    ("duplicate-host-same", get(H), 400),
    ("duplicate-host-1.0", b"GET /api/x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("host-invalid-space", b"GET /api/x HTTP/1.1\r\nHost: gw test\r\n\r\n", 400),
    ("host-invalid-slash", b"GET /api/x HTTP/1.1\r\nHost: gw.test/evil\r\n\r\n", 400),
    ("host-invalid-userinfo", b"GET /api/x HTTP/1.1\r\nHost: user@gw.test\r\n\r\n", 400),
    # --- request line / version ----------------------------------------------------
    ("http-0.9", b"GET /api/x\r\n\r\n", 400),
    ("http-0.9-explicit", b"GET /api/x HTTP/0.9\r\n\r\n", 400),
    ("http-1.2", get(version=b"HTTP/1.2"), 400),
    ("http-lowercase", get(version=b"http/1.1"), 400),
    ("method-invalid-char", b"G@T /api/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-lowercase", b"get /api/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-with-space", b"GET /api/x y HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-raw-nul", b"GET /api/x\x00y HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-raw-del", b"GET /api/x\x7fy HTTP/1.1\r\n" + H + b"\r\n", 400),
    # --- paths (normalisation refusals) ----------------------------------------------
    ("path-dotdot-above-root", get(target=b"/a/../../x"), 400),
    ("path-dotdot-above-root-api", get(target=b"/api/../../etc/passwd"), 400),
    ("path-encoded-dotdot-above-root", get(target=b"/%2e%2e/api/x"), 400),
    ("path-encoded-slash", get(target=b"/api/a%2Fb"), 400),
    ("path-encoded-slash-lower", get(target=b"/api/a%2fb"), 400),
    ("path-backslash", get(target=b"/api/a\\b"), 400),
    ("path-encoded-backslash", get(target=b"/api/a%5Cb"), 400),
    ("path-semicolon-param", get(target=b"/api/a;jsessionid=1"), 400),
    ("path-encoded-semicolon", get(target=b"/api/a%3Bx"), 400),
    ("path-encoded-nul", get(target=b"/api/a%00b"), 400),
    ("path-bad-escape", get(target=b"/api/a%zzb"), 400),
    ("path-asterisk", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("path-absolute-userinfo", get(target=b"http://u@gw.test/api/x"), 400),
    # --- limits -------------------------------------------------------------------
    ("request-line-too-long", get(target=b"/api/" + b"a" * 9000), 414),
    ("header-line-too-long", get(b"X-Big: " + b"v" * 9000 + b"\r\n"), 431),
    ("headers-total-too-large", get(b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 4000) for i in range(10))), 431),
    ("too-many-headers", get(b"".join(b"X-H%d: v\r\n" % i for i in range(120))), 431),
    ("body-cl-over-route-limit", post(b"Content-Length: 2048\r\n", b"x" * 2048, target=b"/small/x"), 413),
    ("body-chunked-over-route-limit", post(CHUNKED, b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n",
                                           target=b"/small/x"), 413),
]

# Statuses where a 1xx/Upgrade/h2 preface is answered with 400 or 505 (both defensible).
VERSION_TABLE = [
    ("http-2.0-request-line", get(version=b"HTTP/2.0")),
    ("h2-prior-knowledge-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("http-3.0", get(version=b"HTTP/3.0")),
]


# Rows that fail on the current core: id -> reason (pytest.mark.xfail(strict=True)), so a
# known bug is listed here with its report entry until the core fixes it.
BUGS: dict[str, str] = {}


def _row(i, raw, status):
    marks = [pytest.mark.xfail(reason=BUGS[i], strict=True)] if i in BUGS else []
    return pytest.param(raw, status, id=i, marks=marks)


def _check_rejected(gw, up, raw: bytes, expected: set[int]) -> None:
    snap = up.snapshot()
    data, closed = exchange(gw.port, raw, timeout=3.0)
    assert data, "no response at all (connection dropped or timed out without an answer)"
    st, hd, body = one_response(data)
    assert st in expected, f"status {st}, expected {sorted(expected)}; body={body[:200]!r}"
    assert hd.get("content-type") == "application/problem+json"
    doc = problem_of(body)
    assert doc["status"] == st and doc["request_id"]
    assert hd.get("connection", "").lower() == "close", f"no 'connection: close' in {hd}"
    assert closed, "gateway did not close the connection after the error"
    # exactly one response: nothing after it (a smuggled request would get a second one)
    rest = data.split(b"\r\n\r\n", 1)[1][len(body):]
    assert rest == b"", f"bytes after the error response: {rest[:200]!r}"
    # follow-up on a new connection works, and is the ONLY thing the upstream saw
    fu, _ = exchange(gw.port, b"GET /api/follow-up HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", timeout=5)
    assert one_response(fu)[0] == 200, fu[:300]
    time.sleep(0.05)  # let any stray upstream connection thread record its head
    seen = up.since(snap)
    assert [r.target for r in seen] == ["/api/follow-up"], \
        f"upstream received more than the follow-up: {[r.raw_head[:120] for r in seen]}"


@pytest.mark.parametrize("raw,status", [_row(i, r, s) for i, r, s in TABLE])
def test_malformed_rejected_and_not_forwarded(core_gw, raw_up, raw, status):
    _check_rejected(core_gw, raw_up, raw, {status})


@pytest.mark.parametrize("raw", [pytest.param(r, id=i) for i, r in VERSION_TABLE])
def test_unsupported_version_rejected(core_gw, raw_up, raw):
    _check_rejected(core_gw, raw_up, raw, {400, 505})


# Bodies whose malformation arrives AFTER the head was accepted (a separate write):
# the gateway may already be streaming the body upstream, but the client must never get
# a response that looks like success and the upstream must never see a complete request.
LATE_BODY = [
    ("late-bad-chunk-size", post(CHUNKED), b"5\r\nabcde\r\nzz\r\n"),
    ("late-chunk-data-too-long", post(CHUNKED), b"3\r\nabcdef\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("head,rest", [pytest.param(h, r, id=i) for i, h, r in LATE_BODY])
def test_malformed_chunk_after_head_is_not_completed(core_gw, raw_up, head, rest):
    snap = raw_up.snapshot()
    data, closed = exchange(core_gw.port, [head, rest], pause=0.2, timeout=3.0)
    assert closed
    if data:
        st = one_response(data)[0]
        assert st == 400, data[:300]
    time.sleep(0.05)
    assert not any(r.complete for r in raw_up.since(snap)), "upstream received a complete request"


def test_pipelined_smuggle_after_valid_request(core_gw, raw_up):
    """A valid request followed (same write) by a malformed one: the first is answered,
    the second gets 400 and the connection closes; the upstream sees only the first."""
    snap = raw_up.snapshot()
    raw = (b"GET /api/first HTTP/1.1\r\n" + H + b"\r\n"
           + post(b"Content-Length: 4\r\n" + CHUNKED, b"0\r\n\r\nGET /api/smuggled HTTP/1.1\r\n" + H + b"\r\n"))
    data, closed = exchange(core_gw.port, raw, timeout=3.0)
    from tests.support.wire import parse_responses
    rs = parse_responses(data)
    assert [r[0] for r in rs] == [200, 400], data[:600]
    assert closed
    time.sleep(0.05)
    assert [r.target for r in raw_up.since(snap)] == ["/api/first"]


def test_encoded_slash_allowed_on_route_that_allows_it(core_gw, raw_up):
    """Control for the %2F row: the route with allow_encoded_slash forwards it as %2F."""
    snap = raw_up.snapshot()
    data, _ = exchange(core_gw.port, b"GET /enc/a%2Fb HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert one_response(data)[0] == 200
    assert [r.target for r in raw_up.since(snap)] == ["/enc/a%2Fb"]


@pytest.mark.parametrize("target,upstream_path", [
    (b"/api//x", "/api/x"),
    (b"/api/./x", "/api/x"),
    (b"/api/y/../x", "/api/x"),
    (b"/%61pi/x", "/api/x"),
    (b"/api/%78", "/api/x"),
])
def test_normalised_path_is_what_upstream_gets(core_gw, raw_up, target, upstream_path):
    snap = raw_up.snapshot()
    data, _ = exchange(core_gw.port, b"GET " + target + b" HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert one_response(data)[0] == 200
    assert [r.target for r in raw_up.since(snap)] == [upstream_path]


@pytest.mark.parametrize("target", [b"/only-get/../api/x/../../only-get;a", b"/nope//../only-get%3B"])
def test_route_rules_not_bypassed(core_gw, raw_up, target):
    snap = raw_up.snapshot()
    data, _ = exchange(core_gw.port, b"POST " + target + b" HTTP/1.1\r\n" + H
                       + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert one_response(data)[0] == 400
    assert raw_up.since(snap) == []
