"""The admin listener: readiness rules (unit, over a real shm region) and the HTTP
endpoints of a live control process."""

from __future__ import annotations

import http.client
import json

import pytest

from fastgw.config import load_config_text
from fastgw.runtime.control import Control
from fastgw.shm import Region
from fastgw.shm.workers import BOOTING, DRAINING, READY
from tests.support.gateway import Gateway
from tests.support.procs import admin, config, ready_workers
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

CFG = """
services:
  a:
    url: "http://127.0.0.1:1"
    routes: [{path: "/*"}]
"""


@pytest.fixture
def region():
    with Region.create(4, metrics_series=256, table_slots=64, health_slots=8) as r:
        yield r


def _control(region, desired=2):
    cfg, _ = load_config_text(CFG)
    return Control(cfg, None, region, desired=desired)


def test_readiness_needs_every_desired_worker_ready(region, monkeypatch):
    c = _control(region)
    assert c.readiness() == (False, ["0 of 2 workers ready"])
    s0, s1 = region.workers.slot(0), region.workers.slot(1)
    s0.boot(pid=101)
    s1.boot(pid=102)
    s0.set_state(READY)
    assert c.readiness()[0] is False
    s1.set_state(READY)
    assert c.readiness() == (True, [])
    st, body = c.readyz()
    assert st == 200 and json.loads(body)["status"] == "ready"
    s1.set_state(DRAINING)
    assert c.readiness() == (False, ["1 of 2 workers ready"])
    s1.set_state(READY)
    c.set_workers(2, True, 3)
    st, body = c.readyz()
    assert st == 503 and json.loads(body)["reasons"] == ["draining"]


def test_workers_document(region):
    c = _control(region, desired=1)
    s = region.workers.slot(0)
    s.boot(generation=2, pid=4242)
    s.set_state(BOOTING)
    s.served(7)
    doc = c.workers_doc()
    (w,) = doc["workers"]
    assert w["pid"] == 4242 and w["state"] == "booting" and w["generation"] == 2 and w["requests"] == 7
    assert w["uptime_s"] >= 0 and doc["retired"] == {"workers": 0, "requests": 0}
    region.workers.retire(0)
    assert c.workers_doc()["retired"] == {"workers": 1, "requests": 7}


def test_respond_routes(region):
    c = _control(region, desired=0)
    assert c.respond("GET", "/livez")[0] == 200
    assert c.respond("GET", "/readyz")[0] == 200
    st, headers, body = c.respond("GET", "/metrics")
    assert st == 200 and b"fastgw_build_info" in body and b"fastgw_workers_desired 0" in body
    assert c.respond("GET", "/nope")[0] == 404


@pytest.mark.timeout(60)
def test_admin_http_endpoints_live():
    with EchoUpstream() as up, Gateway(config(up), workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        port = gw.wait_admin()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for path, status in (("/livez", 200), ("/readyz", 200), ("/admin/workers", 404), ("/metrics", 200),
                                 ("/missing", 404), ("/livez?x=1", 200)):
                c.request("GET", path)                       # one keep-alive connection for all
                r = c.getresponse()
                body = r.read()
                assert r.status == status, (path, body)
                assert r.getheader("cache-control") == "no-store"
                if status == 404:   # /admin/* moved to the admin API listener; errors are problem+json
                    assert r.getheader("content-type") == "application/problem+json", path
            c.request("HEAD", "/readyz")
            r = c.getresponse()
            assert r.status == 200 and r.read() == b""
            c.request("POST", "/livez", body=b"x")
            r = c.getresponse()
            r.read()
            assert r.status == 405 and r.getheader("allow") == "GET, HEAD"
        finally:
            c.close()
        doc = json.loads(admin(gw, "/admin/workers")[2])
        assert doc["desired"] == 2 and doc["draining"] is False
        assert sorted(w["slot"] for w in doc["workers"]) == [0, 1]
        assert all(w["state"] == "ready" and w["heartbeat_age_s"] < 5 for w in doc["workers"])
        # a malformed request gets a 400 and a close, the listener carries on
        from tests.support.gateway import raw_exchange
        assert raw_exchange("127.0.0.1", port, b"NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert admin(gw, "/livez")[0] == 200
