"""Real upstream processes for the failover tests: a small HTTP server per instance that
can be killed and restarted, and the gateway config over them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

from tests.support.wire import closed_port


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
        # head and body in one write: a SIGKILL between two writes would leave a head
        # the gateway already forwarded with no body, which no proxy can retry (and the
        # kill-under-load test would count it as the client error it must not see)
        self.log_request(status)
        self.wfile.write(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, self.responses[status][0].encode(), len(body), body))
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



class Upstream:
    """One instance: a process we can SIGKILL and start again on the same port."""

    def __init__(self, name: str, mode: str = "normal") -> None:
        self.name, self.mode, self.port = name, mode, closed_port()
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


