"""A small HTTP/1.1 echo service: the demo's upstreams and the tests' recording upstream.

Every request is answered with a JSON echo of what it received (service name, method,
path, query, headers, body size) and recorded in ``server.requests``.  A few paths
change the behaviour, for tests and for trying the gateway by hand:

    /status/NNN           answer with status NNN
    /delay/MS             answer after MS milliseconds
    /bytes/N              a body of N bytes (Content-Length)
    /chunked/N            a body of N bytes, chunked (in 16 KiB chunks)
    /stream/N             a body of N bytes with no length: read until close
    /slow/N/MS            N bytes in 16 KiB pieces, MS ms apart (Content-Length)
    /truncate/N           promise N bytes, send half, close
    /garbage              not HTTP at all
    /health               {"status": "ok"}

Run: ``python -m fastgw.demo.echo --name svg-parser --port 8101``.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # head and body leave in separate writes (http.server): without TCP_NODELAY, Nagle
    # and the client's delayed ACK hold every keep-alive response back ~40 ms
    disable_nagle_algorithm = True
    server_version = "echo"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline(3)
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        if n <= 0:
            return b""
        if self.server.discard_bodies:
            left = n
            while left:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
                if self.server.read_delay:
                    time.sleep(self.server.read_delay)
            return b"x" * 0
        return self.rfile.read(n)

    def _handle(self) -> None:
        body = self._read_body()
        u = urlsplit(self.path)
        parts = [p for p in u.path.split("/") if p]
        rec = {
            "service": self.server.name,
            "method": self.command,
            "path": u.path,
            "query": u.query,
            "target": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_list": list(self.headers.items()),
            "body_size": len(body) if body or not self.server.discard_bodies else int(self.headers.get("Content-Length") or 0),
        }
        with self.server.lock:
            self.server.requests.append(dict(rec, body=body))
        if parts[:1] == ["garbage"]:
            self.wfile.write(b"this is not http\r\n\r\n")
            self.close_connection = True
            return
        if parts[:1] == ["status"] and len(parts) > 1:
            return self._send(int(parts[1]), json.dumps(rec).encode())
        if parts[:1] == ["delay"] and len(parts) > 1:
            time.sleep(int(parts[1]) / 1000)
        if parts[:1] == ["bytes"] and len(parts) > 1:
            return self._send(200, b"b" * int(parts[1]), ctype="application/octet-stream")
        if parts[:1] == ["chunked"] and len(parts) > 1:
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while n > 0:
                k = min(n, 16384)
                self.wfile.write(b"%x\r\n%s\r\n" % (k, b"c" * k))
                n -= k
            self.wfile.write(b"0\r\n\r\n")
            return
        if parts[:1] == ["stream"] and len(parts) > 1:
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"s" * n)
            self.close_connection = True
            return
        if parts[:1] == ["slow"] and len(parts) > 2:
            n, ms = int(parts[1]), int(parts[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                k = min(n, 16384)
                self.wfile.write(b"w" * k)
                self.wfile.flush()
                n -= k
                time.sleep(ms / 1000)
            return
        if parts[:1] == ["truncate"] and len(parts) > 1:
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(b"t" * (n // 2))
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if parts[-1:] == ["health"]:
            return self._send(200, b'{"status":"ok"}')
        rec.pop("header_list", None)
        return self._send(200, json.dumps(rec).encode())

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if status not in (204, 304) and status >= 200:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default (5) drops connects when a gateway pool opens many

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "echo") -> None:
        super().__init__((host, port), _Handler)
        self.name = name
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.discard_bodies = False
        self.read_delay = 0.0
        self.thread = None

    @property
    def addr(self) -> str:
        h, p = self.server_address[:2]
        return f"{h}:{p}"

    def start(self) -> "EchoServer":
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def main() -> None:
    ap = argparse.ArgumentParser(description="fastgw demo upstream: a JSON echo service")
    ap.add_argument("--name", default="echo")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8101)
    a = ap.parse_args()
    srv = EchoServer(a.host, a.port, a.name)
    print(f"{a.name}: listening on {srv.addr}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
