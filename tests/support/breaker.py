"""Circuit-breaker tests: an upstream whose answer can be switched, that counts what reaches
it, and a burst of concurrent clients.

``SwitchUpstream`` is a real HTTP/1.1 server (threads, keep-alive) on 127.0.0.1: every
request is counted (``hits``, with the monotonic time it arrived), then answered with
``status`` (settable at any time: 503 for a broken service, 200 once it recovered) after
``delay`` seconds (so concurrent trial requests overlap at the upstream).  ``cycle``, when
set, replaces ``status``: the n-th request gets ``cycle[n % len(cycle)]`` (a service that
fails a share of its requests, never many in a row).
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SwitchUpstream:
    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.cycle: list[int] | None = None
        self.delay = delay
        self.headers: dict[str, str] = {}     # extra response headers (e.g. Cache-Control)
        self.times: list[float] = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.times.append(time.monotonic())
                    st, delay, extra = outer.status, outer.delay, dict(outer.headers)
                    if outer.cycle:
                        st = outer.cycle[(len(outer.times) - 1) % len(outer.cycle)]
                if delay:
                    time.sleep(delay)
                body = b"status %d" % st
                self.send_response(st)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        class S(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.srv = S(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.srv.server_address[1]}"

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.times)

    def hits_between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(1 for t in self.times if t0 <= t < t1)

    def __enter__(self) -> "SwitchUpstream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def burst(host: str, port: int, path: str, *, conns: int = 8, seconds: float = 0.25,
          headers: dict | None = None) -> list[tuple[int, dict]]:
    """``conns`` keep-alive connections sending GET ``path`` back to back for ``seconds``:
    every (status, lower-case headers) answered."""
    out: list[tuple[int, dict]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run():
        c = http.client.HTTPConnection(host, port, timeout=5)
        try:
            while time.monotonic() < deadline:
                c.request("GET", path, headers=headers or {})
                r = c.getresponse()
                r.read()
                with lock:
                    out.append((r.status, {k.lower(): v for k, v in r.getheaders()}))
                if r.will_close:
                    c.close()
                    c = http.client.HTTPConnection(host, port, timeout=5)
        finally:
            c.close()

    ts = [threading.Thread(target=run) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    return out
