"""Issue 7 through the real gateway: CORS, security headers, IP rules and validation on the wire.

One gateway (module fixture) in front of a recording echo upstream, a "leaky" upstream that
sends the headers a gateway must not pass on, and a dead address (502).  Every refusal is
also checked on the upstream side: nothing reaches it.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.gateway import Gateway, raw_exchange
from tests.support.upstream import EchoUpstream, FakeUpstream
from tests.support.wire import closed_port

APP = "https://app.example.com"
PRESETS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}

ORDER_SCHEMA = {
    "type": "object", "required": ["customer", "items"], "additionalProperties": False,
    "properties": {
        "customer": {"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}},
        "items": {"type": "array", "items": {
            "type": "object", "required": ["sku", "qty"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}},
    },
}

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: ["127.0.0.1/32"]
  limits:
    max_body_size: 1m
services:
  echo:
    url: "http://{UP}"
    routes:
      - name: open
        path: "/open/*"
        methods: ["GET", "POST", "PUT"]
      - name: private
        path: "/private/*"
        methods: ["GET", "POST"]
        auth: true
      - name: internal
        path: "/internal/*"
        methods: ["GET"]
        ip_filter: {allow: ["10.0.0.0/8"]}
      - name: plain
        path: "/plain/*"
        methods: ["GET"]
        cors: false
        security_headers: false
        ip_filter: false
      - name: orders
        path: "/orders"
        methods: ["POST"]
        validate:
          required_headers: ["X-Tenant-ID"]
          required_query: ["v"]
          schema: {SCHEMA}
      - name: upload
        path: "/upload"
        methods: ["POST"]
        max_body_size: 64k
        validate: {content_types: ["text/csv"]}
  leaky:
    url: "http://{LEAKY}"
    routes:
      - path: "/leaky/*"
        methods: ["GET"]
  dead:
    url: "http://127.0.0.1:{DEAD}"
    routes:
      - path: "/dead/*"
        methods: ["GET"]
auth:
  jwt_secret: "integration-secret-of-at-least-32-bytes"
cors:
  allow_origins: ["https://app.example.com", "https://*.example.org"]
  allow_credentials: true
  allow_headers: ["Content-Type", "Authorization", "X-Tenant-ID"]
  expose_headers: ["X-Request-ID"]
security_headers:
  remove: ["X-Backend-Host"]
ip_filter:
  deny: ["203.0.113.0/24"]
monitoring:
  metrics_port: 0
  logging: {level: warning}
"""


def _leaky(req, conn) -> bool:
    """An upstream that leaks: Server, X-Powered-By, its own CORS and framing policy."""
    body = b'{"ok": true}'
    conn.respond(200, [("Server", "Apache/2.4.1 (Unix)"), ("Content-Type", "application/json"),
                       ("X-Powered-By", "PHP/5.6"), ("X-Backend-Host", "10.0.3.7"),
                       ("Access-Control-Allow-Origin", "*"), ("X-Frame-Options", "ALLOWALL"),
                       ("Content-Security-Policy", "default-src 'self'"), ("Strict-Transport-Security", "max-age=1"),
                       ("Content-Length", str(len(body)))], body, length=False)
    return True


@pytest.fixture(scope="module")
def env():
    text = CONFIG.replace("{SCHEMA}", json.dumps(ORDER_SCHEMA)).replace("{DEAD}", str(closed_port()))
    with FakeUpstream(handler=_leaky) as leaky, EchoUpstream() as up, \
            Gateway(text.replace("{LEAKY}", leaky.addr).replace("{UP}", up.addr)) as gw:
        yield gw, up


def sent(up, before: int) -> list[dict]:
    """Requests the upstream received since ``before``."""
    time.sleep(0.05)
    return up.requests[before:]


def check_presets(h: dict) -> None:
    for k, v in PRESETS.items():
        assert h.get(k) == v, (k, h)
    assert "server" not in h and "x-powered-by" not in h


def problem(body: bytes) -> dict:
    return json.loads(body)


# --------------------------------------------------------------------------- CORS (Fetch cases)

def test_simple_request_allowed_origin(env):
    gw, up = env
    st, h, _ = gw.request("GET", "/open/x", headers={"Origin": APP})
    assert st == 200
    assert h["access-control-allow-origin"] == APP
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-expose-headers"] == "X-Request-ID"
    assert "origin" in h["vary"].lower()


@pytest.mark.parametrize("origin,allowed", [
    ("https://a.example.org", True), ("https://a.b.example.org", True), ("https://example.org", False),
    ("https://evil-example.org", False), ("https://a.example.org.evil.net", False), ("null", False),
    ("https://evil.example", False), ("http://app.example.com", False),
])
def test_origins(env, origin, allowed):
    gw, _ = env
    st, h, _ = gw.request("GET", "/open/x", headers={"Origin": origin})
    assert st == 200
    assert h.get("access-control-allow-origin") == (origin if allowed else None)
    assert h.get("access-control-allow-origin") != "*"  # never with credentials


def test_preflight_answered_locally(env):
    gw, up = env
    n = len(up.requests)
    st, h, body = gw.request("OPTIONS", "/open/x", headers={
        "Origin": APP, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type, x-tenant-id"})
    assert st == 204 and body == b""
    assert h["access-control-allow-origin"] == APP
    assert h["access-control-allow-credentials"] == "true"
    assert "PUT" in h["access-control-allow-methods"]
    assert h["access-control-max-age"] == "600"
    check_presets(h)
    assert sent(up, n) == []


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    {"Origin": APP, "Access-Control-Request-Method": "DELETE"},
    {"Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-secret"},
    {"Origin": "null", "Access-Control-Request-Method": "GET"},
], ids=["origin", "method", "header", "null-origin"])
def test_preflight_refused(env, headers):
    gw, up = env
    n = len(up.requests)
    st, h, body = gw.request("OPTIONS", "/open/x", headers=headers)
    assert st == 403
    assert not [k for k in h if k.startswith("access-control-")]
    assert h["content-type"] == "application/problem+json"
    assert problem(body)["status"] == 403
    assert sent(up, n) == []


def test_preflight_on_route_whose_methods_lack_options(env):
    gw, up = env
    n = len(up.requests)
    st, h, _ = gw.request("OPTIONS", "/open/x", headers={"Origin": APP, "Access-Control-Request-Method": "POST"})
    assert st == 204 and "POST" in h["access-control-allow-methods"]
    # a plain OPTIONS (not a preflight) is still a 405 there
    st, h, _ = gw.request("OPTIONS", "/open/x", headers={"Origin": APP})
    assert st == 405
    assert sent(up, n) == []


def test_preflight_on_route_with_auth_then_401_readable(env):
    gw, up = env
    n = len(up.requests)
    st, h, _ = gw.request("OPTIONS", "/private/x", headers={
        "Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert st == 204, "a preflight never carries credentials: it must not meet auth"
    assert h["access-control-allow-origin"] == APP
    st, h, body = gw.request("POST", "/private/x", headers={"Origin": APP}, body=b"{}")
    assert st == 401
    assert h["access-control-allow-origin"] == APP  # the browser can read the 401
    check_presets(h)
    assert sent(up, n) == []


def test_404_and_502_carry_cors_and_presets(env):
    gw, _ = env
    for path, status in [("/nowhere", 404), ("/dead/x", 502)]:
        st, h, body = gw.request("GET", path, headers={"Origin": APP})
        assert st == status
        assert h["access-control-allow-origin"] == APP
        check_presets(h)
        assert problem(body)["status"] == status


def test_route_with_cors_and_headers_disabled(env):
    gw, _ = env
    st, h, _ = gw.request("GET", "/plain/x", headers={"Origin": APP})
    assert st == 200
    assert "access-control-allow-origin" not in h and "x-frame-options" not in h


# --------------------------------------------------------------------------- security headers

def test_upstream_leaks_removed_and_policy_applied(env):
    gw, _ = env
    st, h, _ = gw.request("GET", "/leaky/x", headers={"Origin": APP})
    assert st == 200
    assert "server" not in h and "x-powered-by" not in h and "x-backend-host" not in h
    assert h["x-frame-options"] == "DENY"  # overridden
    assert h["content-security-policy"] == "default-src 'self'"  # kept (keep_upstream default)
    assert h["access-control-allow-origin"] == APP  # the upstream's '*' is not passed on
    assert "strict-transport-security" not in h  # plain HTTP, no trusted https hop


@pytest.mark.parametrize("xfp,hsts", [("https", True),
                                      ("http", False), (None, False)])
def test_hsts_from_trusted_proxy(env, xfp, hsts):
    gw, _ = env
    headers = {"X-Forwarded-For": "198.51.100.9"}
    if xfp:
        headers["X-Forwarded-Proto"] = xfp
    st, h, _ = gw.request("GET", "/open/x", headers=headers)
    assert st == 200
    assert ("strict-transport-security" in h) is hsts
    if hsts:
        assert h["strict-transport-security"] == "max-age=31536000; includeSubDomains"


def test_presets_on_every_response_kind(env):
    gw, _ = env
    cases = [
        ("GET", "/open/x", {}, None, 200),
        ("GET", "/nowhere", {}, None, 404),
        ("DELETE", "/open/x", {}, None, 405),
        ("GET", "/private/x", {}, None, 401),
        ("GET", "/internal/x", {}, None, 403),
        ("GET", "/dead/x", {}, None, 502),
        ("POST", "/orders?v=1", {"Content-Type": "application/json"}, b"{}", 400),
        ("POST", "/upload", {"Content-Type": "application/json"}, b"{}", 415),
        ("POST", "/upload", {"Content-Type": "text/csv"}, b"x" * 70_000, 413),
    ]
    for method, path, headers, body, status in cases:
        st, h, _ = gw.request(method, path, headers=headers, body=body)
        assert st == status, (method, path)
        check_presets(h)


# --------------------------------------------------------------------------- IP rules

@pytest.mark.parametrize("xff,path,status", [
    ("203.0.113.50", "/open/x", 403),        # global deny, resolved through the trusted proxy
    ("198.51.100.1", "/open/x", 200),
    ("10.1.2.3", "/internal/x", 200),         # route allow list replaces the global section
    ("203.0.113.50", "/internal/x", 403),
    (None, "/internal/x", 403),               # the socket peer 127.0.0.1 is not in 10/8
    ("203.0.113.50", "/plain/x", 200),        # ip_filter: false on the route
])
def test_ip_rules(env, xff, path, status):
    gw, up = env
    n = len(up.requests)
    st, h, body = gw.request("GET", path, headers={"X-Forwarded-For": xff} if xff else {})
    assert st == status
    if status == 403:
        p = problem(body)
        assert h["content-type"] == "application/problem+json" and p["status"] == 403 and p["request_id"]
        assert sent(up, n) == []


def test_untrusted_peer_cannot_spoof_its_address():
    text = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: []}
services:
  echo:
    url: "http://{UP}"
    routes:
      - path: "/internal/*"
        methods: ["GET"]
        ip_filter: {allow: ["10.0.0.0/8"]}
security_headers: {}
monitoring: {metrics_port: 0, logging: {level: warning}}
"""
    with EchoUpstream() as up, Gateway(text.replace("{UP}", up.addr)) as gw:
        st, h, _ = gw.request("GET", "/internal/x", headers={"X-Forwarded-For": "10.1.2.3"})
        assert st == 403
        st, h, _ = gw.request("GET", "/internal/x", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in h  # an untrusted peer's claim is not believed
        assert up.requests == []


# --------------------------------------------------------------------------- validation

def order(n_items: int = 1, **over) -> dict:
    d = {"customer": {"email": "a@example.com"}, "items": [{"sku": f"s{i}", "qty": 1} for i in range(n_items)]}
    d.update(over)
    return d


VALID_HEADERS = {"Content-Type": "application/json", "X-Tenant-ID": "t1"}


@pytest.mark.parametrize("path,headers,body,status,member,value", [
    ("/orders?v=1", {"Content-Type": "application/json"}, order(), 400, "header", "X-Tenant-ID"),
    ("/orders", VALID_HEADERS, order(), 400, "parameter", "v"),
    ("/orders?v=1", dict(VALID_HEADERS, **{"Content-Type": "text/plain"}), order(), 415, "header", "Content-Type"),
    ("/orders?v=1", VALID_HEADERS, order(items=[{"sku": "a", "qty": 0}]), 400, "pointer", "#/items/0/qty"),
    ("/orders?v=1", VALID_HEADERS, {"items": []}, 400, "pointer", "#/customer"),
    ("/orders?v=1", VALID_HEADERS, order(extra=1), 400, "pointer", "#/extra"),
    ("/orders?v=1", VALID_HEADERS, b"{not json", 400, "pointer", "#"),
])
def test_validation_refusals_name_the_field(env, path, headers, body, status, member, value):
    gw, up = env
    n = len(up.requests)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    st, h, resp = gw.request("POST", path, headers=headers, body=raw)
    assert st == status
    p = problem(resp)
    assert h["content-type"] == "application/problem+json"
    assert p["errors"][0][member] == value
    assert sent(up, n) == []


def test_valid_order_reaches_upstream_whole(env):
    gw, up = env
    n = len(up.requests)
    raw = json.dumps(order(3)).encode()
    st, _, _ = gw.request("POST", "/orders?v=1", headers=VALID_HEADERS, body=raw)
    assert st == 200
    got = sent(up, n)
    assert len(got) == 1 and got[0]["body"] == raw


def test_one_megabyte_json_validated_within_the_limit(env):
    gw, up = env
    doc = order(0)
    while len(json.dumps(doc)) < 1_000_000:
        doc["items"].extend({"sku": "sku-%06d" % (len(doc["items"]) + i), "qty": 1} for i in range(1000))
    raw = json.dumps(doc).encode()
    assert 1_000_000 <= len(raw) <= 1024 * 1024
    n = len(up.requests)
    st, _, _ = gw.request("POST", "/orders?v=1", headers=VALID_HEADERS, body=raw, timeout=30)
    assert st == 200
    got = sent(up, n)
    assert len(got) == 1 and got[0]["body"] == raw
    doc["items"][-7]["qty"] = -1
    st, _, resp = gw.request("POST", "/orders?v=1", headers=VALID_HEADERS, body=json.dumps(doc).encode(), timeout=30)
    assert st == 400
    assert problem(resp)["errors"][0]["pointer"] == "#/items/%d/qty" % (len(doc["items"]) - 7)


def _head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Tenant-ID: t\r\n"
            f"{extra}\r\n").encode()


def test_oversized_body_refused_before_it_is_read(env):
    gw, up = env
    n = len(up.requests)
    # Content-Length over the limit: 413 at once, without sending a byte of the body
    out = raw_exchange(gw.host, gw.port, _head("/orders?v=1", "Content-Length: 5000000\r\n"),
                       timeout=5, read_until_close=False)
    assert out.startswith(b"HTTP/1.1 413"), out[:100]
    assert sent(up, n) == []


def test_oversized_chunked_body_refused_before_it_is_read_whole(env):
    gw, up = env
    n = len(up.requests)
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    # 1.5 MB of chunks and no last chunk: the gateway must answer 413 once the limit is
    # crossed, not wait for the end of a body it will refuse anyway
    data = _head("/orders?v=1", "Transfer-Encoding: chunked\r\n") + chunk * 24
    out = raw_exchange(gw.host, gw.port, data, timeout=5, read_until_close=False)
    assert out.startswith(b"HTTP/1.1 413"), out[:100]
    assert sent(up, n) == []


# --------------------------------------------------------------------------- with rate limiting

def test_429_carries_cors_and_presets():
    pytest.importorskip("fastgw.middleware.ratelimit")
    text = """
gateway: {host: 127.0.0.1, port: 0}
services:
  echo:
    url: "http://{UP}"
    routes:
      - path: "/x"
        methods: ["GET"]
        rate_limit: {requests_per_second: 0.01, burst: 1}
cors: {allow_origins: ["https://app.example.com"]}
security_headers: {}
monitoring: {metrics_port: 0, logging: {level: warning}}
"""
    with EchoUpstream() as up, Gateway(text.replace("{UP}", up.addr)) as gw:
        statuses = []
        for _ in range(3):
            st, h, body = gw.request("GET", "/x", headers={"Origin": APP})
            statuses.append(st)
        assert statuses[0] == 200 and 429 in statuses
        assert h["access-control-allow-origin"] == APP
        check_presets(h)
