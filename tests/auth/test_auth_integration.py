"""Auth through the real multi-worker gateway (issue 5, "Tests": the end-to-end part).

Uses ``tests/support`` (the gateway runner and the echo upstream):

    with EchoUpstream() as up, Gateway(CONFIG, upstream=up, workers=2) as gw:
        status, headers, body = gw.request("GET", "/path", headers={...})
        up.requests  # [{"method", "path", "headers", ...}, ...]

The YAML uses block style only: its one brace pair is the ``{UP}`` placeholder.  The
metrics test scrapes ``fastgw_jwt_cache_total{result="hit"}`` from the admin listener
(``gw.wait_admin()``), summed over the workers by the control process.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream

import jwt  # noqa: E402

SECRET = "integration-secret-" + "k" * 40

CONFIG = """
gateway:
  host: "127.0.0.1"
  port: 0
  trusted_proxies: []
services:
  docs:
    name: "Docs"
    url: "http://{UP}"
    routes:
      - path: "/open/*"
        name: open
        methods: ["GET"]
      - path: "/api/v1/docs/*"
        name: docs
        methods: ["GET", "POST", "DELETE"]
        auth: true
        roles:
          GET: [viewer, editor, admin]
          POST: [editor, admin]
          DELETE: [admin]
      - path: "/api/v1/any/*"
        name: any
        methods: ["GET"]
        auth: true
auth:
  jwt_secret: "%s"
  token_expiry: 24h
  refresh_token_expiry: 7d
  roles: [admin, editor, viewer, maintenance, analyst, auditor, security, monitor]
monitoring:
  metrics_port: 0
  logging:
    level: warning
""" % SECRET


def token(roles=("viewer",), sub="alice", ttl=300, **extra) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "roles": list(roles), "iat": now, "exp": now + ttl, **extra},
                      SECRET, algorithm="HS256")


def auth(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def hdr(req: dict, name: str):
    """A header of an upstream request, whatever shape the harness records."""
    hs = req["headers"]
    items = hs.items() if isinstance(hs, dict) else hs
    for k, v in items:
        k = k.decode() if isinstance(k, bytes) else k
        if k.lower() == name.lower():
            return v.decode() if isinstance(v, bytes) else v
    return None


@pytest.fixture(scope="module")
def _shared():
    with EchoUpstream() as up, Gateway(CONFIG, upstream=up, workers=2) as gw:
        yield gw, up


@pytest.fixture
def gw_up(_shared):
    """The module's gateway (one start for all tests); the upstream's record starts empty."""
    _shared[1].requests.clear()
    return _shared


def test_protected_route_without_token_401(gw_up):
    gw, up = gw_up
    status, headers, body = gw.request("GET", "/api/v1/docs/1")
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["status"] == 401
    assert up.requests == []


def test_bad_token_401_with_rfc6750_error(gw_up):
    gw, up = gw_up
    status, headers, _ = gw.request("GET", "/api/v1/docs/1", headers=auth(token()[:-4] + "AAAA"))
    assert status == 401
    assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    expired = token(ttl=-3600)
    status, headers, _ = gw.request("GET", "/api/v1/docs/1", headers=auth(expired))
    assert status == 401 and "expired" in headers["www-authenticate"]
    assert up.requests == []


def test_valid_token_200_with_identity_headers_upstream(gw_up):
    gw, up = gw_up
    status, _, _ = gw.request("GET", "/api/v1/docs/1",
                              headers={**auth(token(roles=("viewer", "analyst"))),
                                       "X-User-Id": "root", "X-User-Roles": "admin"})
    assert status == 200
    assert len(up.requests) == 1
    req = up.requests[0]
    assert hdr(req, "X-User-Id") == "alice"
    assert hdr(req, "X-User-Roles") == "analyst,viewer"


def test_wrong_role_403(gw_up):
    gw, up = gw_up
    status, headers, body = gw.request("DELETE", "/api/v1/docs/1", headers=auth(token(roles=("editor",))))
    assert status == 403
    assert json.loads(body)["status"] == 403
    status, _, _ = gw.request("POST", "/api/v1/docs/1", headers=auth(token(roles=("editor",))))
    assert status == 200
    assert len(up.requests) == 1


def test_forged_identity_headers_stripped_on_open_route(gw_up):
    gw, up = gw_up
    status, _, _ = gw.request("GET", "/open/x", headers={"X-User-Id": "root", "x-user-roles": "admin"})
    assert status == 200
    assert hdr(up.requests[0], "X-User-Id") is None
    assert hdr(up.requests[0], "X-User-Roles") is None


def test_cache_hit_path_is_used(gw_up):
    gw, up = gw_up
    t = token()
    for _ in range(16):  # more requests than workers: some worker sees the token twice
        assert gw.request("GET", "/api/v1/any/x", headers=auth(t))[0] == 200
    port = gw.wait_admin()
    if not port:
        pytest.skip("no admin listener reported by the gateway")
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    deadline = time.monotonic() + 5
    while True:  # workers publish their cells into shared memory; allow a tick
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        hits = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('fastgw_jwt_cache_total{result="hit"}'))
        if hits >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    c.close()
    assert hits >= 1
    assert 'fastgw_auth_decisions_total{route="any",result="ok"}' in text
