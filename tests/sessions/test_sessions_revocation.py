"""Revocation through the real gateway (issue 27, item 1): a revoked jti, sid and sub are
refused with 401 on every worker at once (the admin call returns after the shared table is
written; each worker's mirror follows the table on its next request), including tokens
that were in each worker's verified-token cache; a refresh token is never an access token.
"""

from __future__ import annotations

import http.client
import json
import time

import jwt
import pytest

from tests.support.gateway import Gateway
from tests.support.sessions import API_ROUTE, monitoring
from tests.support.upstream import EchoUpstream

SECRET = "sessions-secret-" + "s" * 40
ADMIN_TOKEN = "admin-token-" + "a" * 20

CONFIG = API_ROUTE + """auth:
  jwt_secret: "%s"
  token_expiry: 1h
  refresh_token_expiry: 1h
  revocation:
    max_entries: 4096
""" % SECRET + monitoring(ADMIN_TOKEN)


def token(sub="alice", sid="s1", jti="j1", iat=None, **hdr) -> str:
    now = int(time.time()) if iat is None else iat
    return jwt.encode({"sub": sub, "sid": sid, "jti": jti, "iat": now, "exp": now + 600},
                      SECRET, algorithm="HS256", headers=hdr or None)


def statuses(gw, t, n=8) -> list[int]:
    """``n`` requests, each on a new connection (so both workers answer some)."""
    out = []
    for _ in range(n):
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        c.request("GET", "/api/x", headers={"Authorization": "Bearer " + t, "Connection": "close"})
        out.append(c.getresponse().status)
        c.close()
    return out


def admin(gw, method, path, doc=None):
    c = http.client.HTTPConnection("127.0.0.1", gw.wait_api(), timeout=5)
    body = json.dumps(doc).encode() if doc is not None else None
    hs = {"Authorization": "Bearer " + ADMIN_TOKEN}
    if body is not None:
        hs["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=hs)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def test_revoke_jti_sid_sub_on_both_workers_including_cached_tokens():
    with EchoUpstream() as up, Gateway(CONFIG.replace("{UP}", up.addr), workers=2) as gw:
        t_jti = token(jti="jA", sid="sA")
        t_sid = token(jti="jB", sid="sB")
        t_sid2 = token(jti="jB2", sid="sB")
        t_sub = token(sub="bob", jti="jC", sid="sC", iat=int(time.time()) - 5)
        t_other = token(sub="carol", jti="jD", sid="sD")
        for t in (t_jti, t_sid, t_sid2, t_sub, t_other):   # warm both workers' caches
            assert statuses(gw, t) == [200] * 8
        assert admin(gw, "POST", "/admin/sessions/revoke", {"jti": "jA"})[0] == 200
        assert statuses(gw, t_jti) == [401] * 8
        assert admin(gw, "POST", "/admin/sessions/revoke", {"sid": "sB"})[0] == 200
        assert statuses(gw, t_sid) == [401] * 8 and statuses(gw, t_sid2) == [401] * 8
        assert admin(gw, "POST", "/admin/sessions/revoke", {"sub": "bob", "before": time.time()})[0] == 200
        assert statuses(gw, t_sub) == [401] * 8
        # a token of bob's issued after the cut-off still passes; others are untouched
        assert statuses(gw, token(sub="bob", jti="jE", sid="sE", iat=int(time.time()) + 1)) == [200] * 8
        assert statuses(gw, t_other) == [200] * 8
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        c.request("GET", "/api/x", headers={"Authorization": "Bearer " + t_jti})
        r = c.getresponse()
        assert b"revoked" in (r.getheader("www-authenticate") or "").encode()
        st, doc = admin(gw, "GET", "/admin/sessions/revocations")
        assert st == 200 and doc["revocations"] == 3
        assert {(e["kind"], e["key"]) for e in doc["newest"]} == {("jti", "jA"), ("sid", "sB"), ("sub", "bob")}
        assert admin(gw, "POST", "/admin/sessions/revoke", {"jti": "x", "sid": "y"})[0] == 400
        assert admin(gw, "POST", "/admin/sessions/revoke", {"sid": "x", "before": 3})[0] == 400


def test_refresh_token_refused_as_access_token():
    with EchoUpstream() as up, Gateway(CONFIG.replace("{UP}", up.addr), workers=1) as gw:
        t = token(typ="refresh+jwt")
        assert statuses(gw, t, 2) == [401, 401]
        assert statuses(gw, token(typ="JWT"), 2) == [200, 200]
