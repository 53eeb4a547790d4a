"""Security headers: presets on every response kind, HSTS only over HTTPS, leaks removed."""

from __future__ import annotations

import pytest

from fastgw.config.security import HstsConfig, SecurityHeadersConfig
from fastgw.http.messages import Reply, ResponseHead, problem
from fastgw.middleware import security_headers as sh_mod
from fastgw.middleware.security_headers import SecurityHeaders
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx

DEFAULT = SecurityHeadersConfig()
PRESETS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'",
    b"referrer-policy": b"no-referrer",
    b"permissions-policy": b"camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    b"cross-origin-opener-policy": b"same-origin",
}
HSTS = b"strict-transport-security"


def ctx_for(tls=False, trusted=False, headers=()):
    """A Ctx as the engine leaves it: ``scheme`` is https over TLS, or when a trusted
    peer's X-Forwarded-Proto (its last element) says https."""
    c = Ctx(Request.build("GET", b"/", list(headers), tls=tls))
    c.trusted_peer = trusted
    xfp = c.request.xfp
    if trusted and xfp is not None:
        c.scheme = "https" if xfp.rpartition(b",")[2].strip().lower() == b"https" else "http"
    return c


def values(head, name: bytes):
    return [v for n, v in head.headers if n.lower() == name]


def apply(cfg, head, **kw):
    SecurityHeaders(cfg).response_filter(ctx_for(**kw), head)
    return head


RESPONSE_KINDS = [
    ("upstream 200", lambda: ResponseHead(200, b"OK", [(b"Content-Type", b"text/html")])),
    ("upstream 204", lambda: ResponseHead(204, b"No Content", [])),
    ("upstream 304", lambda: ResponseHead(304, b"Not Modified", [(b"ETag", b'"x"')])),
    ("gateway 404", lambda: problem(404, "no route", "r")),
    ("gateway 401", lambda: problem(401, "token required", "r")),
    ("gateway 429", lambda: problem(429, "slow down", "r", headers=[(b"retry-after", b"1")])),
    ("gateway 502", lambda: problem(502, "upstream refused", "r")),
    ("preflight 204", lambda: Reply(204, [(b"access-control-allow-origin", b"*")])),
]


@pytest.mark.parametrize("make", [k[1] for k in RESPONSE_KINDS], ids=[k[0] for k in RESPONSE_KINDS])
def test_presets_on_every_response_kind(make):
    head = apply(DEFAULT, make())
    for name, value in PRESETS.items():
        assert values(head, name) == [value], name
    assert values(head, b"cross-origin-resource-policy") == []  # not a default preset
    assert values(head, HSTS) == []  # plain HTTP


HSTS_CASES = [
    # (id, ctx kwargs, expected)
    ("TLS connection", dict(tls=True), True),
    ("plain HTTP", dict(), False),
    ("trusted proxy says https", dict(trusted=True, headers=[(b"X-Forwarded-Proto", b"https")]), True),
    ("trusted proxy says HTTPS, spaced", dict(trusted=True, headers=[(b"x-forwarded-proto", b" HTTPS ")]), True),
    ("trusted proxy says http", dict(trusted=True, headers=[(b"X-Forwarded-Proto", b"http")]), False),
    ("trusted proxy, nearest hop http", dict(trusted=True, headers=[(b"X-Forwarded-Proto", b"https, http")]), False),
    ("untrusted peer claims https", dict(trusted=False, headers=[(b"X-Forwarded-Proto", b"https")]), False),
    ("trusted peer, no header", dict(trusted=True), False),
]


@pytest.mark.parametrize("kw,expected", [c[1:] for c in HSTS_CASES], ids=[c[0] for c in HSTS_CASES])
def test_hsts_only_over_https(kw, expected):
    head = apply(DEFAULT, ResponseHead(200, b"OK", []), **kw)
    assert values(head, HSTS) == ([b"max-age=31536000; includeSubDomains"] if expected else [])


def test_hsts_from_upstream_over_plain_http_is_dropped():
    head = apply(DEFAULT, ResponseHead(200, b"OK", [(b"Strict-Transport-Security", b"max-age=5")]))
    assert values(head, HSTS) == []


def test_hsts_options():
    cfg = SecurityHeadersConfig(hsts=HstsConfig(max_age=63072000, include_subdomains=True, preload=True))
    head = apply(cfg, ResponseHead(200, b"OK", []), tls=True)
    assert values(head, HSTS) == [b"max-age=63072000; includeSubDomains; preload"]
    head = apply(SecurityHeadersConfig(hsts=False), ResponseHead(200, b"OK", []), tls=True)
    assert values(head, HSTS) == []


def test_leaky_headers_removed():
    cfg = SecurityHeadersConfig(remove=["X-AspNet-Version", "x-backend-host"])
    head = apply(cfg, ResponseHead(200, b"OK", [
        (b"Server", b"gunicorn/20.1"), (b"X-Powered-By", b"Express"), (b"x-aspnet-version", b"4.0"),
        (b"X-Backend-Host", b"10.0.3.7"), (b"Content-Type", b"application/json"), (b"ETag", b'"1"')]))
    names = [n.lower() for n, _ in head.headers]
    for gone in (b"server", b"x-powered-by", b"x-aspnet-version", b"x-backend-host"):
        assert gone not in names
    assert values(head, b"content-type") == [b"application/json"] and values(head, b"etag") == [b'"1"']


def test_override_or_keep_per_header():
    upstream = [(b"X-Frame-Options", b"SAMEORIGIN"), (b"Content-Security-Policy", b"default-src 'self'"),
                (b"Referrer-Policy", b"unsafe-url")]
    # defaults: the gateway's value wins, except an upstream CSP, which is kept
    head = apply(DEFAULT, ResponseHead(200, b"OK", list(upstream)))
    assert values(head, b"x-frame-options") == [b"DENY"]
    assert values(head, b"referrer-policy") == [b"no-referrer"]
    assert values(head, b"content-security-policy") == [b"default-src 'self'"]
    # keep_upstream: [] -> the gateway overrides every preset
    head = apply(SecurityHeadersConfig(keep_upstream=[]), ResponseHead(200, b"OK", list(upstream)))
    assert values(head, b"content-security-policy") == [PRESETS[b"content-security-policy"]]
    # keep X-Frame-Options from the upstream, but still add it where the upstream has none
    cfg = SecurityHeadersConfig(keep_upstream=["x-frame-options"])
    assert values(apply(cfg, ResponseHead(200, b"OK", list(upstream))), b"x-frame-options") == [b"SAMEORIGIN"]
    assert values(apply(cfg, ResponseHead(200, b"OK", [])), b"x-frame-options") == [b"DENY"]


def test_disabled_presets_and_custom_headers():
    cfg = SecurityHeadersConfig(frame_options=False, content_security_policy=False, permissions_policy=False,
                                cross_origin_resource_policy="same-site", custom={"X-Robots-Tag": "noindex"})
    head = apply(cfg, ResponseHead(200, b"OK", [(b"X-Frame-Options", b"SAMEORIGIN")]))
    # a preset turned off leaves the upstream's value alone
    assert values(head, b"x-frame-options") == [b"SAMEORIGIN"]
    assert values(head, b"content-security-policy") == []
    assert values(head, b"cross-origin-resource-policy") == [b"same-site"]
    assert values(head, b"x-robots-tag") == [b"noindex"]


def test_build_inherit_replace_disable():
    root = type("Root", (), {"security_headers": DEFAULT})()
    route = type("Route", (), {"security_headers": None})()
    assert isinstance(sh_mod.build(root, None, route, None), SecurityHeaders)
    assert isinstance(sh_mod.build(root, None, None, None), SecurityHeaders)  # global chain: 400/404/405
    route.security_headers = False
    assert sh_mod.build(root, None, route, None) is None
    route.security_headers = SecurityHeadersConfig(enabled=False)
    assert sh_mod.build(root, None, route, None) is None
    own = SecurityHeadersConfig(frame_options="SAMEORIGIN")
    route.security_headers = own
    assert sh_mod.build(root, None, route, None).cfg is own
    assert sh_mod.build(type("Root", (), {"security_headers": None})(), None, None, None) is None


@pytest.mark.parametrize("yaml_block,where", [
    ("{frame_options: ALLOW-FROM}", "security_headers.frame_options"),
    ("{hsts: true}", "security_headers.hsts"),
    ("{referrer_policy: 'no-referrer, bogus'}", "security_headers.referrer_policy"),
    ("{custom: {X-A: \"a\\u0001b\"}}", "security_headers.custom.X-A"),
    ("{hsts: {preload: true, max_age: 1d}}", "security_headers.hsts.preload"),
    ("{content_type_options: sniff}", "security_headers.content_type_options"),
])
def test_bad_config_named_at_load(yaml_block, where):
    from fastgw.config.errors import ConfigError
    from fastgw.config.loader import load_config_text

    text = f"""
services:
  s:
    url: http://127.0.0.1:9
    routes: [{{path: /a}}]
security_headers: {yaml_block}
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(text)
    assert where in str(ei.value)


def test_secure_profile_snippet_loads_and_builds():
    """docs/security-profile.yaml (merged into config/gateway.yaml) stays a valid config."""
    import os

    from fastgw.config.loader import load_config_text
    from fastgw.middleware import cors as cors_mod
    from fastgw.middleware import ip_filter as ipf_mod

    from tests.support import ROOT as root
    with open(os.path.join(root, "docs", "security-profile.yaml")) as f:
        snippet = f.read()
    text = snippet + """
services:
  s:
    url: http://127.0.0.1:9
    routes: [{path: /a, methods: [GET, POST]}]
"""
    cfg, _warnings = load_config_text(text, env={})
    route = cfg.services["s"].routes[0]
    mw = sh_mod.build(cfg, cfg.services["s"], route, None)
    head = ResponseHead(200, b"OK", [(b"Server", b"x")])
    mw.response_filter(ctx_for(tls=True), head)
    assert values(head, HSTS) == [b"max-age=31536000; includeSubDomains"]
    assert values(head, b"server") == []
    assert cors_mod.build(cfg, None, route, None).cfg.allow_origins == ["http://localhost:3000"]
    assert ipf_mod.build(cfg, None, route, None) is None
