"""The refresh and logout endpoints through the real gateway (issue 27, items 3 and 1).

Rotation, grace, reuse revoking the session, the absolute lifetime, expiry, concurrent
refreshes on two workers, cookie mode, the endpoint's own rate limit, a full rotations
share refusing refreshes (503) while revocations keep being recorded, logout, and the
``--check`` rules.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from fastgw.auth.sessions import issue_refresh

from tests.support import ROOT
from tests.support.gateway import Gateway
from tests.support.sessions import API_ROUTE, monitoring
from tests.support.upstream import EchoUpstream

SECRET = "sessions-access-" + "a" * 40
RKEY = "sessions-refresh-" + "r" * 40
ADMIN_TOKEN = "admin-token-" + "b" * 20

CONFIG = API_ROUTE + """auth:
  jwt_secret: "%s"
  token_expiry: 10m
  refresh_token_expiry: 1h
  refresh:
    path: /auth/refresh
    key: "%s"
    reuse_grace: 1s
    session_max_lifetime: 2h
    cookie: {COOKIE}
    rate_limit: {LIMIT}
  logout:
    path: /auth/logout
  revocation:
    max_entries: {ENTRIES}
    reserved: 0.9
""" % (SECRET, RKEY) + monitoring(ADMIN_TOKEN)


def config(up, cookie="false", limit="{requests_per_second: 1000, burst: 1000}", entries=4096):
    return (CONFIG.replace("{UP}", up.addr).replace("{COOKIE}", cookie).replace("{LIMIT}", limit)
            .replace("{ENTRIES}", str(entries)))


def login(sid="s1", sub="alice", jti=None, ttl=3600, now=None, **claims) -> str:
    now = time.time() if now is None else now
    return issue_refresh(RKEY, sub=sub, sid=sid, jti=jti or f"{sid}-first", ttl=ttl, now=now,
                         roles=["viewer"], **claims)


def call(gw, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    hs = {"Connection": "close", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hs["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=hs)
    r = c.getresponse()
    raw = r.read()
    c.close()
    return r.status, r, (json.loads(raw) if raw and raw[:1] == b"{" else raw)


def refresh(gw, token):
    return call(gw, "POST", "/auth/refresh", {"refresh_token": token})


def api(gw, access):
    return call(gw, "GET", "/api/x", headers={"Authorization": "Bearer " + access})[0]


def claims(t):
    return jwt.decode(t, options={"verify_signature": False})


def test_rotation_grace_reuse_expiry_lifetime_logout():
    with EchoUpstream() as up, Gateway(config(up), workers=2) as gw:
        first = login()   # the login service's token; its duplicates below are this very token
        st, r, doc = refresh(gw, first)
        assert st == 200, doc
        assert doc["token_type"] == "Bearer" and doc["expires_in"] == 600
        assert r.getheader("cache-control") == "no-store"
        a1, r1 = doc["access_token"], doc["refresh_token"]
        assert jwt.get_unverified_header(r1)["typ"] == "refresh+jwt"
        c = claims(a1)
        assert c["sub"] == "alice" and c["sid"] == "s1" and c["roles"] == ["viewer"] and c["exp"] - c["iat"] == 600
        assert claims(r1)["aud"] == "fastgw-refresh" and claims(r1)["sid"] == "s1"
        assert api(gw, a1) == 200
        assert api(gw, r1) == 401                       # a refresh token is no access token
        # a duplicate within reuse_grace: the very same pair (another worker may answer)
        for _ in range(4):
            st, _r, doc2 = refresh(gw, first)
            assert st == 200 and (doc2["access_token"], doc2["refresh_token"]) == (a1, r1)
        # the new refresh token rotates in turn
        st, _r, doc3 = refresh(gw, r1)
        assert st == 200 and doc3["refresh_token"] != r1 and claims(doc3["refresh_token"])["sid"] == "s1"
        # reuse outside the grace window: 401 and the whole session is revoked
        time.sleep(1.3)
        st, _r, doc4 = refresh(gw, first)
        assert st == 401 and doc4["error"] == "invalid_grant"
        assert api(gw, a1) == 401 and api(gw, doc3["access_token"]) == 401
        assert refresh(gw, doc3["refresh_token"])[0] == 401
        # an expired refresh token; an access token offered to the refresh endpoint
        assert refresh(gw, login(sid="s2", ttl=1, now=time.time() - 100))[0] == 401
        assert refresh(gw, jwt.encode({"sub": "a", "sid": "s3", "jti": "x", "iat": int(time.time()),
                                       "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"))[0] == 401
        # the absolute lifetime: rotation never extends it
        start = time.time() - 2 * 3600 + 30
        st, _r, doc5 = refresh(gw, login(sid="s4", now=start, ttl=3 * 3600))
        assert st == 200 and claims(doc5["refresh_token"])["exp"] <= int(start + 2 * 3600)
        assert claims(doc5["access_token"])["exp"] <= int(start + 2 * 3600)
        assert refresh(gw, login(sid="s5", now=time.time() - 2 * 3600 - 5, ttl=3 * 3600))[0] == 401
        # logout with the access token: the session's tokens stop working everywhere
        st, _r, doc6 = refresh(gw, login(sid="s6"))
        assert api(gw, doc6["access_token"]) == 200
        st, _r, _b = call(gw, "POST", "/auth/logout", headers={"Authorization": "Bearer " + doc6["access_token"]})
        assert st == 204
        assert api(gw, doc6["access_token"]) == 401 and refresh(gw, doc6["refresh_token"])[0] == 401
        # logout with the refresh token in the body
        st, _r, doc7 = refresh(gw, login(sid="s7"))
        assert call(gw, "POST", "/auth/logout", {"refresh_token": doc7["refresh_token"]})[0] == 204
        assert api(gw, doc7["access_token"]) == 401
        assert call(gw, "POST", "/auth/logout", {"refresh_token": "nope"})[0] == 401
        assert call(gw, "GET", "/auth/refresh")[0] == 405
        assert call(gw, "POST", "/auth/refresh", {"nothing": 1})[0] == 400


def test_concurrent_refreshes_on_two_workers_do_not_fork_the_session():
    with EchoUpstream() as up, Gateway(config(up), workers=2) as gw:
        t = login(sid="race")
        with ThreadPoolExecutor(8) as ex:
            res = list(ex.map(lambda _: refresh(gw, t), range(16)))
        assert {st for st, _r, _d in res} == {200}
        assert len({d["refresh_token"] for _st, _r, d in res}) == 1


def test_cookie_mode_and_rate_limit():
    with EchoUpstream() as up, Gateway(config(up, cookie="true",
                                              limit="{requests_per_second: 0.01, burst: 2}"), workers=1) as gw:
        st, r, doc = call(gw, "POST", "/auth/refresh", headers={"Cookie": "fastgw_refresh=" + login(sid="c1")})
        assert st == 200 and "access_token" not in doc and doc["token_type"] == "Bearer"
        cookies = r.msg.get_all("set-cookie")
        assert len(cookies) == 2 and all("HttpOnly; Secure; SameSite=Strict" in c for c in cookies)
        access = next(c for c in cookies if c.startswith("fastgw_access=")).split(";")[0].split("=", 1)[1]
        assert api(gw, access) == 200
        assert call(gw, "POST", "/auth/refresh", headers={"Cookie": "fastgw_refresh=bad"})[0] == 401
        st, r, _doc = call(gw, "POST", "/auth/refresh", headers={"Cookie": "fastgw_refresh=bad"})
        assert st == 429 and int(r.getheader("retry-after")) >= 1


def test_full_rotation_share_refuses_refresh_but_keeps_revoking():
    # 64 slots, 90% reserved for revocations: 6 rotations fit
    with EchoUpstream() as up, Gateway(config(up, entries=64), workers=2) as gw:
        for i in range(6):
            assert refresh(gw, login(sid=f"f{i}"))[0] == 200
        st, r, doc = refresh(gw, login(sid="f6"))
        assert st == 503 and r.getheader("retry-after")
        c = http.client.HTTPConnection("127.0.0.1", gw.wait_api(), timeout=5)
        hs = {"Authorization": "Bearer " + ADMIN_TOKEN, "Content-Type": "application/json"}
        for i in range(20):     # revocations still go in, beyond the rotations' share
            c.request("POST", "/admin/sessions/revoke", body=json.dumps({"jti": f"r{i}"}), headers=hs)
            assert c.getresponse().read() and True
        c.request("GET", "/admin/sessions/revocations", headers=hs)
        doc = json.loads(c.getresponse().read())
        assert doc["revocations"] == 20 and doc["rotations"] == 6 and doc["rotations_refused"] >= 1
        at = jwt.encode({"sub": "z", "jti": "r19", "iat": int(time.time()), "exp": int(time.time()) + 60},
                        SECRET, algorithm="HS256")
        assert api(gw, at) == 401
        m = http.client.HTTPConnection("127.0.0.1", gw.wait_admin(), timeout=5)
        m.request("GET", "/metrics")
        text = m.getresponse().read().decode()
        assert "fastgw_session_rotations_refused_total 1" in text


def test_check_refuses_refresh_without_signing_key_and_warns_on_fallback(tmp_path):
    from fastgw.config.errors import ConfigError
    from fastgw.config.loader import load_config

    base = "gateway: {host: 127.0.0.1, port: 8080}\nservices: {}\n"
    p = tmp_path / "a.yaml"
    p.write_text(base + "auth:\n  keys: [{pem: x}]\n  refresh: {path: /r}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "auth.refresh" in str(e.value) and "signing key" in str(e.value)
    p.write_text(base + 'auth:\n  jwt_secret: "%s"\n  refresh_token_expiry: 7d\n  refresh: {path: /r}\n' % SECRET)
    _cfg, warnings = load_config(str(p))
    assert any(w.startswith("auth.refresh.key") for w in warnings)
    assert not any("refresh_token_expiry" in w for w in warnings)


def test_demo_shows_a_refresh_and_a_logout():
    import os
    import subprocess
    import sys

    def port():
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        return str(p)

    env = dict(os.environ, FASTGW_PORT=port(), FASTGW_METRICS_PORT=port(), FASTGW_ADMIN_PORT=port(),
               SVG_PARSER_PORT=port(), CMMS_PORT=port(), DATABASE_INFRA_PORT=port())
    root = str(ROOT)
    p = subprocess.Popen([sys.executable, "-m", "fastgw.demo.run", "--workers", "1"], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 20
        for line in p.stdout:
            lines.append(line)
            if "Access log lines appear" in line or time.monotonic() > deadline:
                break
    finally:
        p.terminate()
        p.wait(15)
    text = "".join(lines)
    assert "POST /auth/refresh with the login service's refresh token -> 200" in text, text
    assert "GET /api/v1/cmms/work-orders with it -> 200" in text
    assert "within reuse_grace -> 200" in text
    assert "POST /auth/logout with the access token -> 204; the access token now -> 401, the refresh token -> 401" in text
