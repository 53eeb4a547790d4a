"""Calls of the management API (/admin/*) are written to the audit log; probes are not.
Without a token the admin API answers loopback reads and refuses writes."""

from __future__ import annotations

import json
import os
import time
import urllib.request

from tests.support.config import ECHO_HEAD
from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream


def test_admin_calls_are_audited_probes_are_not():
    with EchoUpstream() as up:
        cfg = ECHO_HEAD.replace("{UP}", up.addr) + f"""      - path: "/*"
monitoring:
  metrics_port: 0
  admin: {{port: 0}}
  logging: {{level: warning, audit: {{output: "{{TMP}}/audit.log"}}}}
"""
        with Gateway(cfg, workers=1) as gw:
            probe, api = gw.wait_admin(), gw.wait_api()
            path = os.path.join(gw.tmp.name, "audit.log")
            for p in ("/admin/workers", "/livez", "/metrics", "/admin/nope"):
                try:
                    port = api if p.startswith("/admin") else probe
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=3).read()
                except urllib.error.HTTPError:
                    pass
            deadline = time.monotonic() + 5
            recs = []
            while time.monotonic() < deadline:
                try:
                    with open(path) as f:
                        recs = [json.loads(x) for x in f if x.strip()]
                except FileNotFoundError:
                    recs = []
                if len(recs) >= 2:
                    break
                time.sleep(0.2)
            admin_recs = [r for r in recs if r.get("event") == "admin_request"]
            assert [(r["path"], r["status"]) for r in admin_recs] == [("/admin/workers", 200), ("/admin/nope", 404)]
            assert all(r["client_ip"] == "127.0.0.1" and r["method"] == "GET" for r in admin_recs)
            # no monitoring.admin.token: loopback reads only, writes refused (and audited)
            req = urllib.request.Request(f"http://127.0.0.1:{api}/admin/reload", method="POST")
            try:
                urllib.request.urlopen(req, timeout=3)
                raise AssertionError("a write without a token was accepted")
            except urllib.error.HTTPError as e:
                assert e.code == 403 and e.headers["content-type"] == "application/problem+json"
                assert "read-only" in json.loads(e.read())["detail"]
