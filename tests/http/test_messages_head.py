"""ResponseHead's raw-block operations (``sweep``, ``extend``, ``add_lines``) and the policy
filters that use them: on an unparsed head they must give the headers the list form gives.

Differential: every case runs twice, once on a head made from the upstream's raw block
(as ``pipeline.heads`` makes it) and once on a parsed header list, and the results are
compared after parsing.  The captured request fields (``ctx.authz``/``ctx.origin``) are
compared the same way against a hand-made Ctx.
"""

from __future__ import annotations

import pytest

from fastgw.config.security import CorsConfig, HstsConfig, SecurityHeadersConfig
from fastgw.http.messages import EDIT_MEMO_BLOCK, EDIT_MEMO_SIZE, Lines, Names, Reply, ResponseHead, parse_block, \
    edit_remembered
from fastgw.http.reqhead import REPEATED
from fastgw.http.wire import header_lines
from fastgw.middleware.cors import Cors
from fastgw.middleware.security_headers import SecurityHeaders
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from fastgw.pipeline.exchange import Exchange

UPSTREAMS = [
    [],
    [(b"Content-Type", b"text/plain")],
    [(b"Server", b"nginx/1.22.1"), (b"Date", b"Thu, 26 Nov 2026 14:26:03 GMT"),
     (b"Content-Type", b"text/plain"), (b"Content-Length", b"76")],
    [(b"Content-Type", b"text/html"), (b"SERVER", b"x"), (b"X-Powered-By", b"PHP"),
     (b"x-frame-options", b"SAMEORIGIN"), (b"Content-Security-Policy", b"default-src 'self'"),
     (b"Strict-Transport-Security", b"max-age=5"), (b"Vary", b"Access-Control-Request-Method")],
    [(b"Access-Control-Allow-Origin", b"*"), (b"access-control-expose-headers", b"X-A"),
     (b"X-Server", b"not-server"), (b"Serverx", b"y"), (b"ETag", b'"server:"')],
    [(b"Server", b"a"), (b"Server", b"b"), (b"Content-Security-Policy", b"x"),
     (b"Content-Security-Policy-Report-Only", b"y")],
]


def raw_head(pairs) -> ResponseHead:
    return ResponseHead(200, b"OK", raw=header_lines(pairs))


def list_head(pairs) -> ResponseHead:
    return ResponseHead(200, b"OK", list(pairs))


def result(head) -> list:
    """The headers as the client gets them, parsed."""
    return parse_block(head.block())


@pytest.mark.parametrize("pairs", UPSTREAMS)
@pytest.mark.parametrize("names", [
    Names(drop=[b"server", b"x-powered-by"]),
    Names(drop=[b"server"], watch=[b"content-security-policy"]),
    Names(drop=[b"server", b"content-security-policy"], watch=[b"content-security-policy"]),
    Names(prefix=b"access-control-"),
    Names(watch=[b"strict-transport-security", b"vary"]),
])
def test_sweep_raw_matches_list(pairs, names):
    a, b = raw_head(pairs), list_head(pairs)
    seen_a, seen_b = a.sweep(names), b.sweep(names)
    assert seen_a == seen_b
    assert a.parsed is None  # still unparsed
    assert result(a) == result(b)
    r = Reply(200, list(pairs))
    assert r.sweep(names) == seen_b and r.headers == b.headers


def test_extend_and_add_lines_on_raw_and_parsed():
    lines = Lines([(b"vary", b"Origin"), (b"x-a", b"1")])
    for head in (raw_head(UPSTREAMS[2]), list_head(UPSTREAMS[2])):
        head.add_lines(lines)
        head.extend([(b"x-b", b"2")])
        assert result(head)[-3:] == [(b"vary", b"Origin"), (b"x-a", b"1"), (b"x-b", b"2")]
    head = raw_head(UPSTREAMS[2])
    head.add_lines(lines)
    assert head.headers[-2:] == list(lines.pairs)  # parsing sees what was added
    head.extend([(b"x-c", b"3")])
    assert head.block().endswith(b"x-c: 3\r\n")


def test_sweep_then_parse_keeps_order():
    head = raw_head(UPSTREAMS[3])
    head.sweep(Names(drop=[b"server", b"x-frame-options"]))
    assert [n for n, _v in head.headers] == [
        b"Content-Type", b"X-Powered-By", b"Content-Security-Policy", b"Strict-Transport-Security", b"Vary"]


SEC_CONFIGS = [
    SecurityHeadersConfig(),
    SecurityHeadersConfig(keep_upstream=[]),
    SecurityHeadersConfig(keep_upstream=["X-Frame-Options", "Strict-Transport-Security"]),
    SecurityHeadersConfig(remove=["ETag", "Content-Security-Policy"]),
    SecurityHeadersConfig(hsts=False, custom={"X-Custom": "1"}),
    SecurityHeadersConfig(hsts=HstsConfig(max_age=60, preload=False)),
]


@pytest.mark.parametrize("pairs", UPSTREAMS)
@pytest.mark.parametrize("cfg", SEC_CONFIGS)
def test_security_headers_raw_matches_list_and_edit_memo(pairs, cfg):
    """The raw block is edited as the parsed form is, first by the sweep and then, for a
    head seen again (equal bytes), from the memo; HSTS or not are two entries."""
    mw = SecurityHeaders(cfg)
    for tls in (False, True, False, True):
        ctx = Ctx(Request.build("GET", b"/", tls=tls))
        a, b = raw_head(pairs), list_head(pairs)
        mw.response_filter(ctx, a)
        mw.response_filter(ctx, b)
        assert a.parsed is None
        assert result(a) == result(b)
    assert len(mw._memo) == (2 if mw._hsts is not None else 1)


def test_edit_memo_is_bounded():
    memo: dict = {}

    def add_y(head):
        head.add_lines(Lines([(b"y", b"1")]))
    for i in range(EDIT_MEMO_SIZE + 5):
        blk = b"x-n: %d\r\n" % i
        assert edit_remembered(memo, (blk, False), 200, blk, add_y) == blk + b"y: 1\r\n"
        assert memo[(blk, False)] == blk + b"y: 1\r\n" and len(memo) <= EDIT_MEMO_SIZE
    big = b"x: " + b"a" * EDIT_MEMO_BLOCK + b"\r\n"
    assert edit_remembered(memo, (big, False), 200, big, add_y) == big + b"y: 1\r\n"
    assert (big, False) not in memo


CORS_CONFIGS = [
    CorsConfig(allow_origins=["https://app.example.com"]),
    CorsConfig(allow_origins=["https://app.example.com"], allow_credentials=True, expose_headers=["X-A"]),
    CorsConfig(allow_origins=["*"]),
    CorsConfig(allow_origins=["https://*.example.com"]),
]
ORIGINS = [None, b"https://app.example.com", b"https://b.example.com", b"https://evil.example.org"]


def _ctx(origin, method="GET", extra=()) -> Ctx:
    c = Ctx(Request.build(method, b"/", [(b"Host", b"gw")] + ([(b"Origin", origin)] if origin is not None else [])
                          + list(extra)))
    c.request_id = "rid"
    return c


@pytest.mark.parametrize("pairs", UPSTREAMS)
@pytest.mark.parametrize("cfg", CORS_CONFIGS)
@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("preflights", [True, False])
def test_cors_raw_matches_list(pairs, cfg, origin, preflights):
    mw = Cors(cfg, answer_preflights=preflights)
    out = []
    for make in (raw_head, list_head):
        ctx = _ctx(origin)
        if preflights:
            assert mw.request_filter(ctx) is None
        head = make(pairs)
        mw.response_filter(ctx, head)
        out.append(result(head))
    assert out[0] == out[1]


@pytest.mark.parametrize("cfg", CORS_CONFIGS)
@pytest.mark.parametrize("origin", ORIGINS)
def test_cors_preflight_captured_matches_lookup(cfg, origin):
    """The Origin the preflight reads is the Request's captured field, which agrees with a
    header lookup; the raw and the parsed forms of the head give the same answer."""
    mw = Cors(cfg)
    got = []
    for make in (raw_head, list_head):
        ctx = _ctx(origin, "OPTIONS", [(b"Access-Control-Request-Method", b"GET")])
        assert ctx.request.origin == ctx.request.header(b"origin") == origin
        reply = mw.request_filter(ctx)
        if reply is not None:
            mw.response_filter(ctx, reply)
            got.append((reply.status, reply.headers))
        else:
            head = make([])
            mw.response_filter(ctx, head)
            got.append((None, result(head)))
    assert got[0] == got[1]


def test_repeated_marker_is_not_a_header_value():
    # the auth middleware tells a repeated Authorization by identity with this marker
    assert REPEATED.startswith(b"\0")


# ---------------------------------------------------------------------- request head: Connection
@pytest.mark.parametrize("conn", [b"close", b"Close", b"CLOSE", b"keep-alive", b"Keep-Alive", b"upgrade",
                                  b"Upgrade", b"close, X-Drop", b"Keep-Alive, x-drop", b"x-drop",
                                  b"close,x-drop", b"keep-alive, X-Keep, x-drop"])
def test_request_head_connection_values(conn):
    """Headers named in Connection are not forwarded; the plain values (a set lookup, not
    tokenised) drop nothing.  The reference is the tokenised value."""
    from types import SimpleNamespace

    from fastgw.http.wire import connection_tokens
    from fastgw.pipeline.heads import request_head

    ctx = Exchange(Request.build("GET", b"/x", [(b"Host", b"gw.example"), (b"Connection", conn),
                                                (b"X-Drop", b"1"), (b"X-Keep", b"2")]), None)
    route = SimpleNamespace(chain=SimpleNamespace(upstream_request=()), preserve_host=False)
    peer = SimpleNamespace(base_path=b"", host_header=b"up:80")
    head = request_head(ctx, route, peer)
    listed = connection_tokens(conn)
    assert (b"\r\nX-Drop: 1\r\n" in head) == (b"x-drop" not in listed)
    assert (b"\r\nX-Keep: 2\r\n" in head) == (b"x-keep" not in listed)
    assert head.startswith(b"GET /x HTTP/1.1\r\nhost: up:80\r\n") and head.endswith(b"\r\n\r\n")


# ---------------------------------------------------------------------- response head: framing cut
_LINES = [b"Server: nginx", b"Date: Thu, 26 Nov 2026 14:26:03 GMT", b"Content-Type: text/plain",
          b"Content-Length: 76", b"content-length: 76", b"Connection: keep-alive", b"Connection: close",
          b"connection:keep-alive", b"Connection: Keep-Alive ", b"Connection: keep-alive, X-Drop",
          b"Connection: upgrade", b"Transfer-Encoding: chunked", b"Keep-Alive: timeout=5", b"TE: trailers",
          b"Trailer: X-Sum", b"Upgrade: h2c", b"Proxy-Connection: close", b"Proxy-Authenticate: Basic",
          b"X-Drop: 1", b"X-Connection: keep-alive", b"Content-Length-Extra: 1", b"Tea: green",
          b"ETag: \"abc\""]


def _blocks():
    import random

    rnd = random.Random(7)
    out = [b"", b"Content-Length: 0\r\n", b"Connection: keep-alive\r\n"]
    for n in range(1, 6):
        for _ in range(60):
            out.append(b"".join(line + b"\r\n" for line in rnd.sample(_LINES, n)))
    return out


def _respond(block: bytes, version: str = "1.1"):
    from types import SimpleNamespace

    from fastgw.pipeline.heads import response_head

    ctx = Exchange(Request.build("GET", b"/", version=version), None)
    ctx.route = SimpleNamespace(chain=SimpleNamespace(response=(), response_block=None))
    ctx.keep_alive = True
    from fastgw.http.wire import CLOSE_DELIMITED, RECHUNK

    head, framing = response_head(ctx, SimpleNamespace(draining=False, cur_complete=True), 200, b"OK", block,
                                  True, None)
    return head, bool(framing & RECHUNK), bool(framing & CLOSE_DELIMITED), ctx.keep_alive


@pytest.mark.parametrize("block", _blocks())
@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_response_framing_usual_path_matches_general(block, version, monkeypatch):
    """The sliced path of response_head (a block with Content-Length and/or one plain
    Connection line) gives the same client head, framing and keep-alive as the general
    regex path, for every block; the reference forces the general path."""
    from fastgw.pipeline import heads

    got = _respond(block, version)
    monkeypatch.setattr(heads, "_USUAL", {})
    monkeypatch.setattr(heads, "_CUTS", {})  # (else the cut remembered by the first call)
    assert got == _respond(block, version)


def test_response_cut_remembered_per_block(monkeypatch):
    """The cut of a header block is remembered (``_CUTS``): the same block again gives the
    same head without a new cut, another block its own cut; the memory is bounded (cleared
    when full, long blocks not kept)."""
    from fastgw.pipeline import heads

    monkeypatch.setattr(heads, "_CUTS", {})
    cuts = []
    real = heads._cut
    monkeypatch.setattr(heads, "_cut", lambda block: cuts.append(block) or real(block))
    a = b"Server: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    b = b"Server: nginx\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    first = _respond(a)
    assert _respond(a) == first and cuts == [a]
    assert first[0] == b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\n\r\n"
    head, rechunk, _cd, _keep = _respond(b)
    assert cuts == [a, b] and rechunk and b"transfer-encoding: chunked\r\n" in head
    assert b"Transfer-Encoding" not in head and b"Connection: close" not in head
    for i in range(heads.CUT_CACHE_SIZE + 5):
        _respond(b"X-N: %d\r\nContent-Length: 1\r\n" % i)
    assert 0 < len(heads._CUTS) <= heads.CUT_CACHE_SIZE
    long = b"X-Long: " + b"v" * heads.CUT_CACHE_BLOCK + b"\r\nContent-Length: 1\r\n"
    _respond(long)
    assert long not in heads._CUTS


def test_response_framing_usual_path_taken():
    """The nginx-style block takes the sliced path and loses only its Connection line."""
    from fastgw.pipeline import heads

    block = b"Server: nginx\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\nX-A: b\r\n"
    assert tuple(heads._NAMES(b"\n" + block.lower())) in heads._USUAL
    head, rechunk, _cd, keep = _respond(block)
    assert head == b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nX-A: b\r\n\r\n"
    assert (rechunk, keep) == (False, True)


@pytest.mark.parametrize("raw_host", [None, b"gw.example:8080"])
@pytest.mark.parametrize("preserve", [False, True])
def test_request_head_host_and_forwarding_lines(raw_host, preserve):
    """Host is the upstream's unless preserve_host; X-Forwarded-Host only when the client
    sent a Host; the client address (a remembered bytes copy) in X-Forwarded-For."""
    from types import SimpleNamespace

    from fastgw.pipeline.heads import request_head

    ctx = Exchange(Request.build("GET", b"/x", [(b"Host", raw_host)] if raw_host else [], peer_ip="10.9.8.7"),
                   None)
    ctx.add_request_header(b"x-request-id", b"r-1")
    # HTTP/1.0 without Host, preserve_host: the local address the client connected to
    ctx.request.local_host = b"10.0.0.1:8080"
    ctx.app = SimpleNamespace(default_host=None, trust_forwarded_host=False)
    route = SimpleNamespace(chain=SimpleNamespace(upstream_request=()), preserve_host=preserve)
    peer = SimpleNamespace(base_path=b"/base", host_header=b"up:80")
    for _ in range(2):  # (the second call finds the address remembered)
        head = request_head(ctx, route, peer)
        want = (b"GET /base/x HTTP/1.1\r\nhost: " +
                (raw_host or b"10.0.0.1:8080" if preserve else b"up:80") +
                b"\r\nx-request-id: r-1\r\nx-forwarded-for: 10.9.8.7\r\nx-forwarded-proto: http\r\n" +
                (b"x-forwarded-host: " + raw_host + b"\r\n" if raw_host else b"") + b"\r\n")
        assert head == want
