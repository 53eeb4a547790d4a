"""Failover with real processes (issue #19): 3 upstream instances (each its own process,
killed with SIGKILL), 2 gateway workers, keep-alive GET load from several connections.

- ``retries: 2``: an instance killed under load costs the clients nothing;
- ``retries: 0``: errors only until the active check (or ejection) removes it, then none;
  restarted, it gets traffic again after ``healthy_threshold`` checks;
- one probe per interval per instance, whatever the worker count;
- a POST on a ``retry_non_idempotent`` route is not retried once its bytes reached an
  upstream that then failed.

Timers are short (probes every 200 ms); every process started here is stopped here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tests.supervisor_helpers import Gateway, KeepAliveLoad, admin, metrics_text, series, wait_for
from tests.test_metrics import promtool_check

UPSTREAM = r'''
import json, os, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stats = {"probes": 0, "requests": 0, "posts": []}
lock = threading.Lock()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def _send(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/health"):
            with lock:
                stats["probes"] += 1
            self._send(b"ok")
        elif self.path == "/stats":
            with lock:
                body = json.dumps(stats).encode()
            self._send(body)
        else:
            with lock:
                stats["requests"] += 1
            if mode == "503":
                self._send(b"busy " + name.encode(), 503)
            else:
                self._send(name.encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        with lock:
            stats["posts"].append(body.decode())
        if mode == "die-on-post":
            # the request's bytes arrived; the instance fails before answering
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self._send(name.encode())

class S(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256

srv = S(("127.0.0.1", port), H)
print("ready", flush=True)
srv.serve_forever()
'''


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Upstream:
    """One instance: a process we can SIGKILL and start again on the same port."""

    def __init__(self, name: str, mode: str = "normal") -> None:
        self.name, self.mode, self.port = name, mode, free_port()
        self.proc = None

    def start(self) -> "Upstream":
        self.proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, self.name, str(self.port), self.mode],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=2) as r:
            return json.loads(r.read())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def gw_config(ups, *, retries: int, extra_route: str = "") -> str:
    insts = ", ".join(f'{{url: "{u.url}"}}' for u in ups)
    return f"""
gateway:
  host: 127.0.0.1
  port: 0
  timeout: 5s
services:
  app:
    instances: [{insts}]
    health: /health
    health_check: {{interval: 200ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2}}
    outlier_detection: {{consecutive_failures: 3, base_ejection_time: 1s}}
    retries: {retries}
    retry: {{backoff: {{base: 5ms, max: 20ms}}, min_retries_per_second: 1000}}
    routes:
      - path: "/*"
        name: main
        methods: ["GET", "POST"]
{extra_route}
monitoring:
  metrics_port: 0
  admin: {{port: 0}}
  logging:
    level: info
    access_log:
      enabled: false
"""


def upstreams_doc(gw) -> dict:
    st, _, body = admin(gw, "/admin/upstreams")
    assert st == 200, body
    return json.loads(body)


def run_kill(retries: int):
    ups = [Upstream(f"u{i}").start() for i in range(3)]
    try:
        with Gateway(gw_config(ups, retries=retries), workers=2) as gw:
            # every instance probed healthy before the load starts
            assert wait_for(lambda: all(i["health"] == "healthy"
                                        for i in upstreams_doc(gw)["services"]["app"]["instances"]), 10)
            with KeepAliveLoad(gw.host, gw.port, conns=6, path="/x", reconnect=True, max_seconds=20) as load:
                time.sleep(0.5)
                before = load.ok
                ups[1].kill()
                killed_at = time.monotonic()
                time.sleep(2.0)
                load.stop()
            doc = upstreams_doc(gw)
            return ups, metrics_text(gw), load, before, killed_at, doc
    finally:
        for u in ups:
            u.kill()


def test_kill_an_instance_under_load_with_retries_costs_no_client_error():
    ups, text, load, before, _t, doc = run_kill(retries=2)
    assert before > 20 and load.ok > before + 50, (before, load.ok)
    assert load.failed == 0, (load.statuses, load.errors[:5])
    # the policy retried (connect failures at least: the reused-connection retry alone
    # does not cover a refused connect to a new instance)
    retried = series(text, "fastgw_upstream_retries_total")
    assert sum(retried.values()) > 0, retried
    fails = series(text, "fastgw_upstream_instance_failures_total")
    assert sum(v for k, v in fails.items() if str(ups[1].port) in k) > 0, fails
    assert series(text, "fastgw_upstream_instance_healthy")[
        f'{{service="app",instance="127.0.0.1:{ups[1].port}"}}'] == 0
    promtool_check(text)
    row = doc["services"]["app"]["instances"][1]
    assert row["health"] == "unhealthy" and not row["usable"], row


def test_kill_without_retries_errors_stop_once_the_instance_is_removed_and_it_comes_back():
    ups = [Upstream(f"u{i}").start() for i in range(3)]
    try:
        with Gateway(gw_config(ups, retries=0), workers=2) as gw:
            assert wait_for(lambda: all(i["health"] == "healthy"
                                        for i in upstreams_doc(gw)["services"]["app"]["instances"]), 10)
            # one probe per interval per instance, whatever the worker count
            p0, t0 = ups[0].stats()["probes"], time.monotonic()
            with KeepAliveLoad(gw.host, gw.port, conns=6, path="/x", reconnect=True, max_seconds=20) as load:
                time.sleep(0.5)
                ups[1].kill()
                killed_at = time.monotonic()
                time.sleep(2.0)
                probes = (ups[0].stats()["probes"] - p0) / (time.monotonic() - t0)
                late = [t for t in load.fail_times if t > killed_at + 1.2]
                assert late == [], (len(load.fail_times), load.errors[:5])
                row = upstreams_doc(gw)["services"]["app"]["instances"][1]
                assert row["health"] == "unhealthy" and not row["usable"]
                # restarted on the same port: back after healthy_threshold (2) checks
                ups[1].start()
                back = wait_for(lambda: upstreams_doc(gw)["services"]["app"]["instances"][1]["usable"], 5)
                assert back
                n0 = ups[1].stats()["requests"]
                assert wait_for(lambda: ups[1].stats()["requests"] > n0 + 10, 5)
                load.stop()
            assert 3.0 <= probes <= 6.5, probes   # 5 per second at 200 ms
            assert load.ok > 100
    finally:
        for u in ups:
            u.kill()


def test_opted_in_post_is_not_retried_after_it_reached_an_upstream():
    ups = [Upstream("dies", "die-on-post").start(), Upstream("ok").start()]
    try:
        with Gateway(gw_config(ups, retries=2).replace('        methods: ["GET", "POST"]',
                                                       '        methods: ["GET", "POST"]\n'
                                                       '        retry_non_idempotent: true'), workers=2) as gw:
            codes = []
            for i in range(8):
                st, _, _ = gw.request("POST", "/p", body=f"id{i}".encode(),
                                      headers={"Content-Type": "text/plain"})
                codes.append(st)
            dead, ok = ups[0].stats()["posts"], ups[1].stats()["posts"]
            assert dead and ok, (dead, ok, codes)
            assert not set(dead) & set(ok), (dead, ok)           # never sent twice
            assert codes.count(502) == len(dead) and codes.count(200) == len(ok), codes
    finally:
        for u in ups:
            u.kill()
