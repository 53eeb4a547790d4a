"""CORS middleware: the Fetch standard's cases, by calling the hooks on hand-made Ctx objects.

Each case is a row: config, request (method + headers), and what the browser must see.
``run()`` plays the engine's part for one middleware (request filter, then the response
filter on the local reply or on an upstream response head).
"""

from __future__ import annotations

import orjson
import pytest

from fastgw.config.security import CorsConfig
from fastgw.http.messages import Reply, ResponseHead
from fastgw.middleware import cors as cors_mod
from fastgw.middleware.cors import Cors
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx

ORIGIN = b"https://app.example.com"


def ctx_for(method="GET", headers=()):
    c = Ctx(Request.build(method, b"/", [(n, v) for n, v in headers]))
    c.request_id = "rid-1"
    return c


def run(mw, method="GET", headers=(), upstream_headers=()):
    """(status, headers list, reply_or_None, ctx): request filter, then response filter."""
    ctx = ctx_for(method, headers)
    reply = mw.request_filter(ctx)
    head = reply if reply is not None else ResponseHead(200, b"OK", list(upstream_headers))
    mw.response_filter(ctx, head)
    return head.status, head.headers, reply, ctx


def hget(headers, name: bytes):
    vals = [v for n, v in headers if n.lower() == name]
    return vals[-1] if vals else None


def acl(headers):
    return {n.lower(): v for n, v in headers if n.lower().startswith(b"access-control-")}


def varies(headers):
    return any(n.lower() == b"vary" and b"origin" in v.lower() for n, v in headers)


def preflight(origin=ORIGIN, method=b"PUT", req_headers=None):
    hs = [(b"Origin", origin), (b"Access-Control-Request-Method", method)]
    if req_headers is not None:
        hs.append((b"Access-Control-Request-Headers", req_headers))
    return hs


LIST = CorsConfig(allow_origins=["https://app.example.com", "https://*.example.org"],
                  allow_headers=["Content-Type", "X-Trace"], expose_headers=["X-Request-ID"], max_age=300)
CREDS = CorsConfig(allow_origins=["https://app.example.com"], allow_credentials=True,
                   allow_headers=["Content-Type", "Authorization"])
ANY = CorsConfig(allow_origins=["*"])
NULL = CorsConfig(allow_origins=["null"])
ROUTE_METHODS = ["GET", "PUT", "DELETE"]  # a route whose methods lack OPTIONS


# --------------------------------------------------------------------------- actual requests

SIMPLE = [
    # (id, config, origin, expected Allow-Origin or None, Allow-Credentials, Vary: Origin)
    ("listed origin echoed", LIST, ORIGIN, ORIGIN, None, True),
    ("unlisted origin: no CORS headers", LIST, b"https://evil.example", None, None, True),
    ("wildcard subdomain", LIST, b"https://a.example.org", b"https://a.example.org", None, True),
    ("wildcard: several labels", LIST, b"https://a.b.example.org", b"https://a.b.example.org", None, True),
    ("wildcard: not the apex", LIST, b"https://example.org", None, None, True),
    ("wildcard: no substring match", LIST, b"https://evilexample.org", None, None, True),
    ("wildcard: suffix attack", LIST, b"https://a.example.org.evil.com", None, None, True),
    ("wildcard: other scheme", LIST, b"http://a.example.org", None, None, True),
    ("wildcard: other port", LIST, b"https://a.example.org:8443", None, None, True),
    ("exact: case matters (browsers send lower case)", LIST, b"https://APP.example.com", None, None, True),
    ("exact: other port", LIST, b"https://app.example.com:444", None, None, True),
    ("null origin not listed", LIST, b"null", None, None, True),
    ("null origin listed", NULL, b"null", b"null", None, True),
    ("star: literal * without Vary", ANY, ORIGIN, b"*", None, False),
    ("star covers null", ANY, b"null", b"*", None, False),
    ("credentials: origin echoed, never *", CREDS, ORIGIN, ORIGIN, b"true", True),
    ("credentials: unlisted gets nothing", CREDS, b"https://evil.example", None, None, True),
]


@pytest.mark.parametrize("cfg,origin,acao,acac,vary", [r[1:] for r in SIMPLE], ids=[r[0] for r in SIMPLE])
def test_simple_request(cfg, origin, acao, acac, vary):
    status, hs, reply, _ = run(Cors(cfg), "GET", [(b"Origin", origin)])
    assert reply is None  # actual requests always continue: the browser enforces CORS
    assert hget(hs, b"access-control-allow-origin") == acao
    assert hget(hs, b"access-control-allow-credentials") == acac
    assert varies(hs) is vary
    if acao is None:
        assert acl(hs) == {}


def test_exposed_headers_on_allowed_response():
    _, hs, _, _ = run(Cors(LIST), "GET", [(b"Origin", ORIGIN)])
    assert hget(hs, b"access-control-expose-headers") == b"X-Request-ID"


def test_no_origin_costs_no_lookup_and_varies():
    class Counting(Request):
        __slots__ = ("lookups",)

        def header(self, lname, default=None):
            self.lookups += 1
            return super().header(lname, default)

    req = Counting.build("GET", b"/", [(b"Host", b"x"), (b"Accept", b"*/*")])
    req.lookups = 0
    ctx = Ctx(req)
    mw = Cors(LIST)
    assert mw.request_filter(ctx) is None
    head = ResponseHead(200, b"OK", [])
    mw.response_filter(ctx, head)
    assert req.lookups == 0  # Origin is a field of the Request
    # Fetch §3.2.8: an origin-dependent resource says so to caches even for non-CORS requests
    assert head.headers == [(b"vary", b"Origin")]
    # with '*' the answer never depends on the origin: nothing at all
    ctx2 = ctx_for("GET", [])
    head2 = ResponseHead(200, b"OK", [])
    mw2 = Cors(ANY)
    mw2.request_filter(ctx2)
    mw2.response_filter(ctx2, head2)
    assert head2.headers == []


def test_upstream_cors_headers_replaced_by_the_gateways():
    upstream = [(b"Access-Control-Allow-Origin", b"*"), (b"Access-Control-Allow-Credentials", b"true"),
                (b"Content-Type", b"application/json")]
    _, hs, _, _ = run(Cors(LIST), "GET", [(b"Origin", ORIGIN)], upstream)
    assert [v for n, v in hs if n.lower() == b"access-control-allow-origin"] == [ORIGIN]
    assert hget(hs, b"access-control-allow-credentials") is None
    # a refused origin does not inherit the upstream's wildcard either
    _, hs, _, _ = run(Cors(LIST), "GET", [(b"Origin", b"https://evil.example")], upstream)
    assert acl(hs) == {}
    assert hget(hs, b"content-type") == b"application/json"


# --------------------------------------------------------------------------- preflight

PREFLIGHT = [
    # (id, config, request headers, status, expected Access-Control-* subset)
    ("allowed", LIST, preflight(method=b"POST", req_headers=b"content-type"), 204,
     {b"access-control-allow-origin": ORIGIN, b"access-control-allow-methods": b"GET, HEAD, POST",
      b"access-control-allow-headers": b"Content-Type, X-Trace", b"access-control-max-age": b"300"}),
    ("request headers compared case-insensitively", LIST, preflight(method=b"GET", req_headers=b"X-TRACE,Content-Type"),
     204, {b"access-control-allow-origin": ORIGIN}),
    ("disallowed origin", LIST, preflight(origin=b"https://evil.example", method=b"GET"), 403, {}),
    ("disallowed method", LIST, preflight(method=b"DELETE"), 403, {}),
    ("disallowed request header", LIST, preflight(method=b"GET", req_headers=b"content-type, x-secret"), 403, {}),
    ("wildcard subdomain", LIST, preflight(origin=b"https://x.example.org", method=b"POST"), 204,
     {b"access-control-allow-origin": b"https://x.example.org"}),
    ("null origin refused", LIST, preflight(origin=b"null", method=b"GET"), 403, {}),
    ("credentials: echo + Allow-Credentials", CREDS, preflight(method=b"POST", req_headers=b"authorization"), 204,
     {b"access-control-allow-origin": ORIGIN, b"access-control-allow-credentials": b"true",
      b"access-control-allow-headers": b"Content-Type, Authorization"}),
    ("star: Allow-Origin *", ANY, preflight(method=b"GET"), 204, {b"access-control-allow-origin": b"*"}),
]


@pytest.mark.parametrize("cfg,headers,status,expect", [r[1:] for r in PREFLIGHT], ids=[r[0] for r in PREFLIGHT])
def test_preflight(cfg, headers, status, expect):
    st, hs, reply, _ = run(Cors(cfg), "OPTIONS", headers)
    assert reply is not None, "a preflight is answered locally: nothing goes upstream"
    assert st == status
    got = acl(hs)
    if status == 403:
        assert got == {}, "a refused preflight carries no CORS headers"
        assert reply.get(b"content-type") == b"application/problem+json"
        doc = orjson.loads(reply.body)
        assert doc["status"] == 403 and doc["request_id"] == "rid-1"
    else:
        assert reply.body == b""
        for k, v in expect.items():
            assert got.get(k) == v, (k, got)
        assert varies(hs)


def test_preflight_on_route_whose_methods_lack_options():
    mw = Cors(LIST, route_methods=ROUTE_METHODS)
    st, hs, _, _ = run(mw, "OPTIONS", preflight(method=b"DELETE"))
    assert st == 204
    assert hget(hs, b"access-control-allow-methods") == b"GET, PUT, DELETE, HEAD"
    st, _, _, _ = run(mw, "OPTIONS", preflight(method=b"PATCH"))
    assert st == 403


def test_preflight_reply_not_decorated_twice():
    st, hs, _, _ = run(Cors(LIST), "OPTIONS", preflight(method=b"GET"))
    assert st == 204
    assert len([1 for n, _ in hs if n == b"access-control-allow-origin"]) == 1


def test_options_without_request_method_is_an_actual_request():
    _, hs, reply, _ = run(Cors(LIST), "OPTIONS", [(b"Origin", ORIGIN)])
    assert reply is None
    assert hget(hs, b"access-control-allow-origin") == ORIGIN


def test_star_methods_and_headers_echo_the_request():
    cfg = CorsConfig(allow_origins=["https://app.example.com"], allow_methods=["*"], allow_headers=["*"],
                     allow_credentials=True)
    st, hs, _, _ = run(Cors(cfg), "OPTIONS", preflight(method=b"PATCH", req_headers=b"Authorization, X-Any"))
    assert st == 204
    assert hget(hs, b"access-control-allow-methods") == b"PATCH"
    # echoed, not '*': with credentials '*' is a literal name, and it never covers Authorization
    assert hget(hs, b"access-control-allow-headers") == b"authorization, x-any"
    st, _, _, _ = run(Cors(cfg), "OPTIONS", preflight(method=b"BAD METHOD"))
    assert st == 403


def test_global_chain_decorates_but_does_not_answer_preflights():
    mw = cors_mod.build(type("Root", (), {"cors": LIST})(), None, None, None)
    ctx = ctx_for("OPTIONS", preflight(method=b"GET"))
    assert mw.request_filter(ctx) is None
    reply = ctx.problem(404, "no route")
    mw.response_filter(ctx, reply)
    assert reply.get(b"access-control-allow-origin") == ORIGIN


@pytest.mark.parametrize("origin,acao", [(ORIGIN, ORIGIN), (b"https://evil.example", None), (None, None)])
def test_global_chain_error_without_request_filter(origin, acao):
    # a 400/404/405 with no route: the engine runs only the global chain's response filters
    mw = cors_mod.build(type("Root", (), {"cors": LIST})(), None, None, None)
    ctx = ctx_for("GET", [(b"Origin", origin)] if origin else [])
    reply = ctx.problem(404, "no route")
    mw.response_filter(ctx, reply)
    assert reply.get(b"access-control-allow-origin") == acao
    assert varies(reply.headers)


# --------------------------------------------------------------------------- with the rest of a chain

class FakeAuth:
    """Stands for the auth middleware after cors: refuses every request without a token."""

    def request_filter(self, ctx):
        if ctx.header(b"authorization") is None:
            return ctx.problem(401, "token required", headers=[(b"www-authenticate", b"Bearer")])
        return None

    def response_filter(self, ctx, head):
        return None


def run_chain(chain, method, headers):
    """The engine's rule: request filters in order; the reply passes back through those that ran."""
    ctx = ctx_for(method, headers)
    ran, reply = [], None
    for mw in chain:
        ran.append(mw)
        reply = mw.request_filter(ctx)
        if reply is not None:
            break
    head = reply if reply is not None else ResponseHead(200, b"OK", [])
    for mw in reversed(ran):
        mw.response_filter(ctx, head)
    return head, ran


def test_preflight_on_route_with_auth_never_reaches_auth():
    auth = FakeAuth()
    head, ran = run_chain([Cors(CREDS), auth], "OPTIONS", preflight(method=b"POST", req_headers=b"authorization"))
    assert head.status == 204 and auth not in ran
    assert head.get(b"access-control-allow-origin") == ORIGIN


@pytest.mark.parametrize("status", [401, 403, 429])
def test_gateway_errors_carry_cors_headers(status):
    class Refuse:
        def request_filter(self, ctx):
            return ctx.problem(status, "no")

        def response_filter(self, ctx, head):
            return None

    head, _ = run_chain([Cors(CREDS), Refuse()], "GET", [(b"Origin", ORIGIN)])
    assert head.status == status
    assert head.get(b"access-control-allow-origin") == ORIGIN
    assert head.get(b"access-control-allow-credentials") == b"true"


def test_reply_headers_are_fresh_per_request():
    mw = Cors(LIST)
    a = mw.request_filter(ctx_for("OPTIONS", preflight(method=b"GET")))
    a.headers.append((b"x-added-later", b"1"))
    b = mw.request_filter(ctx_for("OPTIONS", preflight(method=b"GET")))
    assert isinstance(b, Reply) and b.get(b"x-added-later") is None


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("entry", [
    "https://app.example.com/", "app.example.com", "https://a*.example.com", "https://*.com",
    "https://x.example.com:0", "https://*.*.example.com", "https://user@x.example.com",
])
def test_bad_origins_refused_at_load(entry):
    with pytest.raises(ValueError):
        cors_mod.parse_origin(entry)


def test_star_with_credentials_refused_at_load():
    from fastgw.config.loader import load_config_text
    from fastgw.config.errors import ConfigError

    text = """
services:
  s:
    url: http://127.0.0.1:9
    routes: [{path: /a}]
cors:
  allow_origins: ["*"]
  allow_credentials: true
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(text)
    assert "cors.allow_origins" in str(ei.value) and "allow_credentials" in str(ei.value)
    with pytest.raises(ValueError):
        Cors(CorsConfig(allow_origins=["*"], allow_credentials=True))  # built by hand: still refused


def test_default_port_normalised():
    cfg = CorsConfig(allow_origins=["HTTPS://App.Example.com:443"])
    _, hs, _, _ = run(Cors(cfg), "GET", [(b"Origin", ORIGIN)])
    assert hget(hs, b"access-control-allow-origin") == ORIGIN


def test_any_port_pattern():
    cfg = CorsConfig(allow_origins=["http://localhost:*"])
    for origin, ok in [(b"http://localhost:5173", True), (b"http://localhost", True),
                       (b"http://localhost.evil.com", False), (b"https://localhost:5173", False)]:
        _, hs, _, _ = run(Cors(cfg), "GET", [(b"Origin", origin)])
        assert (hget(hs, b"access-control-allow-origin") == origin) is ok, origin


def test_build_inherit_replace_disable():
    root = type("Root", (), {"cors": LIST})()
    route = type("Route", (), {"cors": None, "methods": ["GET"]})
    assert isinstance(cors_mod.build(root, None, route(), None), Cors)
    r = route()
    r.cors = False
    assert cors_mod.build(root, None, r, None) is None
    r.cors = CREDS
    mw = cors_mod.build(root, None, r, None)
    assert mw.cfg is CREDS
    assert cors_mod.build(type("Root", (), {"cors": None})(), None, route(), None) is None
