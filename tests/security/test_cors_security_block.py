"""CORS and security headers on one route (#23): the security headers' response filter
applies CORS's decision too, with one sweep and one prebuilt block.  Checked against the
two middlewares each doing their own part (the global chain's form), response by
response: raw and parsed upstream heads, local replies, every kind of CORS request."""

from __future__ import annotations

import pytest

from fastgw.config.security import CorsConfig, HstsConfig, SecurityHeadersConfig
from fastgw.http.messages import ResponseHead, parse_block, problem
from fastgw.http.request import Request
from fastgw.middleware import cors as cors_mod
from fastgw.middleware import security_headers as sh_mod
from fastgw.middleware.cors import Cors, CorsRequest
from fastgw.middleware.security_headers import SecurityHeaders
from fastgw.pipeline.ctx import Ctx

LIST = CorsConfig(allow_origins=["https://app.example.com", "https://*.example.org"],
                  allow_headers=["Content-Type"], expose_headers=["X-Request-ID"], allow_credentials=True)
STAR = CorsConfig(allow_origins=["*"])
SEC = SecurityHeadersConfig(hsts=HstsConfig(max_age=600))
KEEP = SecurityHeadersConfig(keep_upstream=["X-Frame-Options"], remove=["X-Internal"])

UPSTREAM = [(b"Content-Type", b"text/plain"), (b"Server", b"up/1"), (b"Access-Control-Allow-Origin", b"*"),
            (b"X-Internal", b"1"), (b"Content-Length", b"5")]
REQUESTS = {
    "no origin": ("GET", []),
    "allowed origin": ("GET", [(b"Origin", b"https://app.example.com")]),
    "pattern origin": ("GET", [(b"Origin", b"https://a.b.example.org")]),
    "denied origin": ("GET", [(b"Origin", b"https://evil.example")]),
    "preflight": ("OPTIONS", [(b"Origin", b"https://app.example.com"), (b"Access-Control-Request-Method", b"PUT")]),
}


def route(cors, sec):
    root = type("Root", (), {"cors": cors, "security_headers": sec})()
    rt = type("Route", (), {"cors": None, "security_headers": None, "methods": ["GET", "PUT"]})()
    return root, rt


def play(cors_mw, sec_mw, method, headers, tls, upstream, parsed):
    """The engine's part: request filters in chain order, then the response filters in
    reverse (security headers last) on the local reply or the upstream head."""
    ctx = Ctx(Request.build(method, b"/", list(headers), tls=tls))
    ctx.scheme = "https" if tls else "http"
    reply = cors_mw.request_filter(ctx)
    if reply is None and parsed == "block":
        # the head builder's form when every response filter has one: the raw block alone
        block = b"".join(b"%s: %s\r\n" % h for h in upstream)
        if type(cors_mw) is Cors:
            block = cors_mw.response_block_filter(ctx, 200, block)
        return 200, sec_mw.response_block_filter(ctx, 200, block)
    if reply is None:
        head = ResponseHead(200, b"OK", list(upstream)) if parsed else \
            ResponseHead(200, b"OK", raw=b"".join(b"%s: %s\r\n" % h for h in upstream))
    else:
        head = reply
    if type(cors_mw) is Cors:
        cors_mw.response_filter(ctx, head)
    sec_mw.response_filter(ctx, head)
    return head.status, head.block() if isinstance(head, ResponseHead) else head.headers


@pytest.mark.parametrize("cors", [LIST, STAR], ids=["list", "star"])
@pytest.mark.parametrize("sec", [SEC, KEEP], ids=["hsts", "keep_upstream"])
@pytest.mark.parametrize("upstream", [UPSTREAM, UPSTREAM + [(b"X-Frame-Options", b"SAMEORIGIN")]],
                         ids=["plain", "kept-header"])
@pytest.mark.parametrize("parsed", [False, True, "block"], ids=["raw", "parsed", "block"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("req", list(REQUESTS), ids=list(REQUESTS))
def test_same_headers_as_two_filters(cors, sec, upstream, parsed, tls, req):
    root, rt = route(cors, sec)
    together = (cors_mod.build(root, None, rt, None), sh_mod.build(root, None, rt, None))
    assert type(together[0]) is CorsRequest
    apart = (Cors(cors, route_methods=["GET", "PUT"]), SecurityHeaders(sec))
    method, headers = REQUESTS[req]
    for _ in range(2):  # the second time, from the per-origin block kept
        got = play(*together, method, headers, tls, upstream, parsed)
        assert got == play(*apart, method, headers, tls, upstream, parsed)
        if parsed == "block" and isinstance(got[1], bytes):   # the raw-block form = the parsed head
            assert parse_block(got[1]) == parse_block(play(*apart, method, headers, tls, upstream, True)[1])


def test_reply_made_before_cors_gets_no_cors_headers():
    """An ip_filter 403 comes before CORS in the chain: only the presets."""
    root, rt = route(LIST, SEC)
    sec = sh_mod.build(root, None, rt, None)
    ctx = Ctx(Request.build("GET", b"/", [(b"Origin", b"https://app.example.com")]))
    reply = problem(403, "no", "r")
    sec.response_filter(ctx, reply)
    names = {n.lower() for n, _v in reply.headers}
    assert b"x-content-type-options" in names and b"vary" not in names
    assert not any(n.startswith(b"access-control-") for n in names)


def test_each_alone_keeps_its_own_filter():
    root, rt = route(LIST, False)
    assert type(cors_mod.build(root, None, rt, None)) is Cors
    root, rt = route(None, SEC)
    assert sh_mod.build(root, None, rt, None).response_filter.__func__ is SecurityHeaders.response_filter
    root, _rt = route(LIST, SEC)
    assert type(cors_mod.build(root, None, None, None)) is Cors  # the global chain


def test_chain_uses_the_raw_block_form_only_when_every_response_filter_has_it():
    """``Chain.response_block``: the raw-block filters in the response filters' order when
    every response filter has that form; None as soon as one reads the head itself."""
    from fastgw.pipeline.chain import Chain
    from fastgw.pipeline.middleware import Middleware

    class ReadsHead(Middleware):
        def response_filter(self, ctx, head) -> None:
            head.status = 299

    root, rt = route(LIST, SEC)
    cors_mw, sec_mw = cors_mod.build(root, None, rt, None), sh_mod.build(root, None, rt, None)
    plain = Cors(LIST)
    ch = Chain([sec_mw, cors_mw])          # CorsRequest has no response filter
    assert ch.response_block == (sec_mw.response_block_filter,)
    sec2 = SecurityHeaders(SEC)
    assert Chain([sec2, plain]).response_block == (plain.response_block_filter, sec2.response_block_filter)
    assert Chain([sec_mw, ReadsHead(None, None)]).response_block is None
    assert Chain([cors_mw]).response_block is None   # no response filter at all: nothing to do
