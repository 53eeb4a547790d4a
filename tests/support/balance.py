"""Upstreams for the load-balancing tests: ``NamedUpstream``, a process that answers every
request with its own name (so the client sees which instance served it), after an
optional fixed delay, and can be killed; ``start_all`` starts several at once; and
``fetch_many``, a client that sends many keep-alive requests from a few threads.
Every socket has a timeout; every process started is killed by its owner."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
from collections import Counter

from tests.support.wire import closed_port

SERVER = r'''
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
body = name.encode()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    def log_message(self, *a):
        pass
    def do_GET(self):
        if delay and not self.path.startswith("/health"):
            time.sleep(delay)
        # head and body in one write: a SIGKILL under load never lands between them
        # (a forwarded head with no body is a client error no retry can cover)
        self.log_request(200)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

class S(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

srv = S(("127.0.0.1", port), H)
print("ready", flush=True)
srv.serve_forever()
'''


class NamedUpstream:
    """One instance process; ``kill()`` is SIGKILL (its connections die with it)."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name, self.delay, self.port = name, delay, closed_port()
        self.proc = None

    def spawn(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, self.name, str(self.port), str(self.delay)],
                                     stdout=subprocess.PIPE, text=True)

    def ready(self) -> None:
        assert self.proc.stdout.readline().strip() == "ready", self.name

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_all(ups: list[NamedUpstream]) -> list[NamedUpstream]:
    """Start every instance in parallel; kill them all if one fails to start."""
    try:
        for u in ups:
            u.spawn()
        for u in ups:
            u.ready()
    except BaseException:
        for u in ups:
            u.kill()
        raise
    return ups


def fetch_many(host: str, port: int, n: int, *, conns: int = 4, path: str = "/x", headers=None,
               timeout: float = 10.0) -> Counter:
    """``n`` GETs over ``conns`` keep-alive connections in parallel: Counter of the bodies
    (the instance names), ``status:<code>`` for a non-200."""
    out: Counter = Counter()
    lock = threading.Lock()
    share = [n // conns + (1 if k < n % conns else 0) for k in range(conns)]

    def run(count: int) -> None:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        local: Counter = Counter()
        try:
            for _ in range(count):
                c.request("GET", path, headers=headers or {})
                r = c.getresponse()
                body = r.read()
                local[body.decode() if r.status == 200 else f"status:{r.status}"] += 1
        finally:
            c.close()
            with lock:
                out.update(local)

    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in share]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout + 30)
    return out
