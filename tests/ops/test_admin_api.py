"""The admin API on its own listener (monitoring.admin): bearer token on every call
(401 problem+json without), the endpoint list, config (YAML, redacted), routes, reload over
the API (change summary / no-op / 422 with the errors), request bodies (JSON, size-limited),
and the audit records of each call; plus the router's rules as a unit."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from fastgw.admin.router import AdminRequest, Endpoint, Problem, Router, is_loopback
from tests.support.gateway import Gateway
from tests.support.procs import admin, get, rewrite
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

TOKEN = "t0ken-for-the-admin-api-tests"

CONFIG = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: []}
services:
  echo:
    url: "http://{UP}"
    routes:
      - {path: "/*", name: main, methods: ["GET"]}
{EXTRA}
auth: {jwt_secret: "a-literal-secret-of-at-least-32-bytes!"}
monitoring:
  metrics_port: 0
  admin: {port: 0, token: "${ADMIN_TOKEN}", max_body: 1k}
  logging: {level: info, access_log: {enabled: false}, audit: {output: "{TMP}/audit.log"}}
"""


def _auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.timeout(60)
def test_admin_api_token_endpoints_reload_and_audit():
    with EchoUpstream() as up:
        gw = Gateway(CONFIG.replace("{EXTRA}", ""), workers=1, upstream=up, env={"ADMIN_TOKEN": TOKEN})
        with gw:
            # no token, a wrong one, another scheme: 401 problem+json, for reads too
            for hd in ({}, _auth("nope"), {"Authorization": f"Basic {TOKEN}"}):
                st, h, body = admin(gw, "/admin/workers", headers=hd)
                assert st == 401 and h["content-type"] == "application/problem+json", body
                assert h["www-authenticate"].startswith("Bearer") and json.loads(body)["status"] == 401
            assert admin(gw, "/admin/nope")[0] == 401          # unknown paths too: nothing but 401
            st, h, body = admin(gw, "/admin", headers=_auth())
            assert st == 200 and {(e["method"], e["path"]) for e in json.loads(body)["endpoints"]} >= {
                ("GET", "/admin/config"), ("GET", "/admin/routes"), ("GET", "/admin/workers"), ("POST", "/admin/reload")}
            st, h, body = admin(gw, "/admin/config", headers=_auth())
            assert st == 200 and h["content-type"].startswith("application/yaml")
            doc = yaml.safe_load(body)
            assert doc["auth"]["jwt_secret"] == "***" and doc["monitoring"]["admin"]["token"] == "***"
            assert TOKEN.encode() not in body and b"a-literal-secret" not in body
            st, _, body = admin(gw, "/admin/routes", headers=_auth())
            assert st == 200 and [(r["service"], r["name"]) for r in json.loads(body)["routes"]] == [("echo", "main")]
            st, h, body = admin(gw, "/admin/nope", headers=_auth())
            assert st == 404 and h["content-type"] == "application/problem+json"
            st, h, _ = admin(gw, "/admin/reload", method="GET", headers=_auth())
            assert st == 405 and h["allow"] == "POST"
            # the probe listener has no /admin/* any more, and stays open
            assert get(gw.wait_admin(), "/admin/workers")[0] == 404
            assert get(gw.wait_admin(), "/readyz")[0] == 200

            # reload over the API: identical file = no-op; a new route = the summary; a bad file = 422
            st, _, body = admin(gw, "/admin/reload", method="POST", headers=_auth())
            assert st == 200 and json.loads(body) == {"result": "unchanged", "generation": 0, "changes": [],
                                                     "warnings": []}
            rewrite(gw, CONFIG.replace("{UP}", up.addr).replace("{TMP}", gw.tmp.name)
                    .replace("{EXTRA}", '      - {path: "/new", name: new}'))
            st, _, body = admin(gw, "/admin/reload", method="POST", headers={**_auth(), "Content-Type": "application/json"},
                                body=b'{"reason": "test"}')
            doc = json.loads(body)
            assert st == 200 and doc["result"] == "reloaded" and doc["generation"] == 1, doc
            assert doc["changes"] == ["routes: +echo/new"]
            rewrite(gw, CONFIG.replace("{UP}", up.addr).replace("{TMP}", gw.tmp.name).replace("{EXTRA}", "")
                    .replace('name: main', 'name: main, timeout: forever'))
            st, h, body = admin(gw, "/admin/reload", method="POST", headers=_auth())
            doc = json.loads(body)
            assert st == 422 and h["content-type"] == "application/problem+json"
            assert doc["detail"].startswith("reload refused (1 error)")
            assert doc["errors"] == ["services.echo.routes[0].timeout: expected a duration like '30s', got 'forever'"]
            # bodies: JSON only, size-limited
            st, _, _ = admin(gw, "/admin/reload", method="POST", headers={**_auth(), "Content-Type": "text/plain"},
                             body=b"x")
            assert st == 415
            st, _, _ = admin(gw, "/admin/reload", method="POST",
                             headers={**_auth(), "Content-Type": "application/json"}, body=b"{oops")
            assert st == 400
            st, _, _ = admin(gw, "/admin/reload", method="POST",
                             headers={**_auth(), "Content-Type": "application/json"}, body=b"[" + b"1," * 800 + b"1]")
            assert st == 413

            path = os.path.join(gw.tmp.name, "audit.log")

            def recs():
                with open(path) as f:
                    return [json.loads(x) for x in f if x.strip()]
            assert wait_for(lambda: len([r for r in recs() if r["event"] == "admin_request"]) >= 15)
            calls = [r for r in recs() if r["event"] == "admin_request"]
            assert [r["status"] for r in calls[:4]] == [401, 401, 401, 401]
            writes = [(r["status"], r.get("body")) for r in calls if r.get("write")]
            assert writes[:3] == [(200, None), (200, {"reason": "test"}), (422, None)]
            reloads = [(r["source"], r["result"], r.get("client_ip")) for r in recs() if r["event"] == "reload"]
            assert reloads == [("admin", "unchanged", "127.0.0.1"), ("admin", "reloaded", "127.0.0.1"),
                               ("admin", "refused", "127.0.0.1")]


def _req(method="GET", path="/admin", headers=None, client="127.0.0.1", body=b""):
    return AdminRequest(method, path, "", headers or {}, body, client)


def test_router_rules_without_a_token():
    r = Router([Endpoint("GET", "/admin/x", lambda a, q: (200, {})),
                Endpoint("POST", "/admin/x", lambda a, q: (200, {}), write=True)], lambda: None)
    r.authorize(_req(), write=False)                    # loopback read: allowed
    for req, write, status in ((_req(client="10.0.0.1"), False, 403), (_req(), True, 403)):
        with pytest.raises(Problem) as e:
            r.authorize(req, write)
        assert e.value.status == status
    with pytest.raises(Problem) as e:
        r.find(_req("PUT", "/admin/x"))
    assert e.value.status == 405 and e.value.headers == [(b"allow", b"GET, POST")]
    assert r.find(_req("HEAD", "/admin/x")).method == "GET"
    assert is_loopback("::1") and is_loopback("127.0.0.2") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.168.1.1") and not is_loopback("::ffff:10.0.0.1")
    t = Router([], lambda: "s3cret")
    t.authorize(_req(headers={"authorization": "bearer s3cret"}), write=True)
    with pytest.raises(Problem):
        t.authorize(_req(headers={"authorization": "Bearer s3cre"}), write=False)
