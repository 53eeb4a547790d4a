"""Drain and undrain an instance through the admin API, with real processes (2 workers).

Drained: no new request goes to the instance while one in flight to it completes, and a
reload keeps it drained; undrained: traffic returns.  Both calls are audited.
"""

from __future__ import annotations

import json
import os
import threading
from urllib.parse import quote

from fastgw.demo.echo import EchoServer

from tests.support.gateway import Gateway
from tests.support.procs import admin, hup, rewrite
from tests.support.waiting import wait_for

TOKEN = "drain-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: []
services:
  app:
    instances: [{url: "http://{A}"}, {url: "http://{B}"}]
    routes:
      - path: "/*"
        name: main
monitoring:
  metrics_port: 0
  admin: {port: 0, token: "%s"}
  logging: {level: info, access_log: {enabled: false}, audit: {output: "{TMP}/audit.log"}}
""" % TOKEN


def _names(gw: Gateway, n: int) -> list[str]:
    out = []
    for _ in range(n):
        st, _h, body = gw.request("GET", "/x", timeout=5)
        out.append(json.loads(body)["service"] if st == 200 else str(st))
    return out


def _post(gw: Gateway, path: str):
    return admin(gw, path, method="POST", headers=AUTH)


def _instances(gw: Gateway) -> dict:
    st, _h, body = admin(gw, "/admin/upstreams", headers=AUTH)
    assert st == 200
    return {i["url"]: i for i in json.loads(body)["services"]["app"]["instances"]}


def _generation_everywhere(gw: Gateway, gen: int) -> bool:
    doc = json.loads(admin(gw, "/admin/workers", headers=AUTH)[2])
    ws = [w for w in doc["workers"] if w["state"] == "ready"]
    return doc["generation"] == gen and len(ws) == 2 and all(w["generation"] == gen for w in ws)


def test_drain_stops_new_requests_lets_inflight_finish_and_undrain_restores():
    a = EchoServer("127.0.0.1", 0, "a").start()
    b = EchoServer("127.0.0.1", 0, "b").start()
    url_a = f"http://{a.addr}"
    try:
        text = CONFIG.replace("{A}", a.addr).replace("{B}", b.addr)
        with Gateway(text, workers=2) as gw:
            # slow requests in flight: each worker's round-robin sends its second one to a
            slow: list = []

            def one():
                st, _h, body = gw.request("GET", "/delay/1500", timeout=10)
                slow.append((st, json.loads(body)["service"] if st == 200 else ""))

            threads = [threading.Thread(target=one) for _ in range(3)]
            for t in threads:
                t.start()
            assert wait_for(lambda: len(a.requests) + len(b.requests) >= 3, 5)
            st, _h, body = _post(gw, f"/admin/upstreams/app/{quote(url_a, safe='')}/drain")
            assert st == 200 and json.loads(body)["drained"] is True, body
            assert not slow and any(r["path"] == "/delay/1500" for r in a.requests)  # a's still in flight
            assert _names(gw, 20) == ["b"] * 20    # nothing new to a, from either worker
            row = _instances(gw)[url_a]
            assert row["drained"] is True and row["usable"] is False, row
            # a reload keeps the drain (in shared memory, by identity)
            rewrite(gw, text.replace("name: main", "name: main\n        timeout: 9s"))
            hup(gw)
            assert wait_for(lambda: _generation_everywhere(gw, 1), 8)
            assert _names(gw, 10) == ["b"] * 10 and _instances(gw)[url_a]["drained"] is True
            for t in threads:
                t.join(10)
            assert all(st == 200 for st, _w in slow) and (200, "a") in slow, slow  # finished after the drain
            # by slot too; unknown instances are a 404 naming what exists
            slot = _instances(gw)[url_a]["slot"]
            st, _h, body = _post(gw, "/admin/upstreams/app/nope/drain")
            assert st == 404 and url_a.encode() in body, body
            st, _h, body = _post(gw, f"/admin/upstreams/app/{slot}/undrain")
            assert st == 200 and json.loads(body)["drained"] is False, body
            assert wait_for(lambda: "a" in _names(gw, 6), 3)
            assert _instances(gw)[url_a]["drained"] is False
            # audited, with the path naming service and instance
            log = os.path.join(gw.tmp.name, "audit.log")
            assert wait_for(lambda: os.path.exists(log) and "undrain" in open(log).read(), 3)
            recs = [json.loads(line) for line in open(log) if '"write":true' in line]
            paths = [(r["path"], r["status"]) for r in recs]
            assert (f"/admin/upstreams/app/{quote(url_a, safe='')}/drain", 200) in paths, paths
            assert (f"/admin/upstreams/app/{slot}/undrain", 200) in paths, paths
            assert ("/admin/upstreams/app/nope/drain", 404) in paths, paths
    finally:
        a.stop()
        b.stop()
