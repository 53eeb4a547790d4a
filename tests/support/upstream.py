"""The one fake upstream: ``FakeUpstream``, a small threaded raw-socket HTTP/1.1 server
with three modes.

- ``mode="raw"`` (``RawUpstream()``): behaviour by a path keyword anywhere in the path
  (so routes with prefixes reach it): ``/x/big/N`` (N bytes, Content-Length, sent as fast
  as possible), ``/x/sink`` (read the body at ``x-rate`` bytes/s, discard it, answer its
  size), ``/x/ws`` (101 then echo bytes), ``/x/close/N`` (read-until-close body),
  ``/x/chunked/N``, ``/x/status/NNN``, ``/x/delay/MS``, ``/x/hop``, ``/x/garbage``,
  ``/x/truncate/N``, ``/x/conflict-cl``, ``/x/bighead``, ``/x/interim`` (a 100 before the
  200), ``/x/fixed``, ``/x/early`` (200 at once, the request body left unread).  Anything
  else: a JSON echo of the request.  ``requests`` holds a ``Request`` per head.
- ``mode="echo"`` (``EchoUpstream(name)``): the demo echo's answers (as fastgw.demo.echo:
  ``/status/NNN``, ``/delay/MS``, ``/bytes/N``, ``/chunked/N``, ``/stream/N``,
  ``/slow/N/MS``, ``/truncate/N``, ``/garbage``, ``.../health``, else a JSON echo naming
  the service); ``requests`` holds the demo's dicts (service, method, path, query,
  target, headers, body_size, body).
- ``handler=fn``: ``fn(req, conn)`` answers each request (its body already read unless
  ``read_body=False``) with ``conn.send`` / ``conn.respond``, and returns False to close
  the connection.  For tests that script their upstream per path or per header; a test
  that needs odd wire behaviour writes it here, on the shared server.

``tls=`` (a server ``ssl.SSLContext``) serves any mode over TLS.

In every mode it records *everything* it receives: accepted connections, every request
head the moment it is complete (``log``), and the raw byte count, so a test can prove
that nothing malformed or smuggled ever reached an upstream.

Every socket has a timeout and every thread is a daemon; ``stop()`` closes the listener
and all open connections.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
from http import HTTPStatus
from typing import Callable
from urllib.parse import urlsplit

SOCK_TIMEOUT = 10.0


def response(status: int = 200, headers=(), body: bytes = b"", *, length: bool = True,
             head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response: status line, ``headers`` ((name, value) str pairs),
    Content-Length (unless ``length`` is False, or the status has no body), then ``body``
    (not for ``head_only``: the answer to a HEAD)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "X"
    out = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())]
    out += [b"%s: %s\r\n" % (str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in headers]
    bodiless = status in (204, 304) or status < 200
    if length and not bodiless:
        out.append(b"content-length: %d\r\n" % len(body))
    out.append(b"\r\n")
    if not head_only and not bodiless:
        out.append(body)
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket, up: "FakeUpstream") -> None:
        self.sock = sock
        self.up = up
        self.buf = bytearray()

    def _fill(self) -> bool:
        try:
            d = self.sock.recv(262144)
        except (socket.timeout, OSError):
            return False
        if not d:
            return False
        with self.up.lock:
            self.up.bytes_received += len(d)
        self.buf += d
        return True

    def until(self, sep: bytes, limit: int = 1 << 20) -> bytes | None:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit or not self._fill():
                return None

    def exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def discard(self, n: int, rate: float = 0.0, digest=None) -> int:
        """Read and drop n bytes, at most ``rate`` bytes/s if given; returns bytes read.
        ``digest`` (a hashlib object) is updated with every byte."""
        got = 0
        start = time.monotonic()
        while got < n:
            if self.buf:
                k = min(len(self.buf), n - got)
                if digest is not None:
                    digest.update(self.buf[:k])
                del self.buf[:k]
                got += k
                continue
            if rate:
                ahead = got / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            try:
                d = self.sock.recv(min(65536, n - got))
            except (socket.timeout, OSError):
                break
            if not d:
                break
            with self.up.lock:
                self.up.bytes_received += len(d)
            if digest is not None:
                digest.update(d)
            got += len(d)
        return got


class Request:
    """One request head as received (``headers``: lower-case names; ``header_list``: as sent)."""

    __slots__ = ("conn_id", "method", "target", "version", "headers", "header_list", "body", "complete",
                 "raw_head")

    def __init__(self, conn_id, method, target, version, headers, raw_head) -> None:
        self.conn_id = conn_id
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list[(lower name str, value str)]
        self.header_list = headers
        self.body = b""
        self.complete = False
        self.raw_head = raw_head

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_map(self) -> dict[str, str]:
        """Lower-case name -> value (the last one of a repeated header)."""
        return dict(self.headers)

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class Conn:
    """What a ``handler`` answers through: the socket, its buffered reader, its number."""

    __slots__ = ("sock", "reader", "id", "stopping")

    def __init__(self, sock: socket.socket, reader: _Reader, cid: int, stopping: threading.Event) -> None:
        self.sock = sock
        self.reader = reader
        self.id = cid
        self.stopping = stopping  # set when the server stops

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def respond(self, status: int = 200, headers=(), body: bytes = b"", **kw) -> None:
        self.sock.sendall(response(status, headers, body, **kw))


def _chunks(n: int, size: int) -> bytes:
    """A chunked body of ``n`` bytes of "c" in chunks of ``size``, with its last chunk."""
    out = []
    while n > 0:
        k = min(n, size)
        out.append(b"%x\r\n%s\r\n" % (k, b"c" * k))
        n -= k
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def never_answer(req: Request, conn: Conn) -> bool:
    """A handler: take the request, never answer (a hanging upstream) until the server stops."""
    conn.stopping.wait()
    return False


class FakeUpstream:
    """The one fake upstream (module doc): ``with FakeUpstream(...) as up:``, at ``up.addr``."""

    def __init__(self, mode: str = "raw", handler: Callable | None = None, name: str = "echo",
                 read_body: bool = True, tls: ssl.SSLContext | None = None) -> None:
        if handler is None and mode not in ("raw", "echo"):
            raise ValueError(f"mode {mode!r}: raw or echo (or give a handler)")
        self.mode = "handler" if handler is not None else mode
        self.handler = handler
        self.name = name
        self.read_body = read_body
        self.tls = tls  # a server context: TLS, the handshake in the connection's thread
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        # a small backlog drops SYNs when the gateway opens a pool of 50, and the client's
        # retransmit (1 s, 3 s, ...) shows up as a multi-second stall
        self.lsock.listen(1024)
        self.lsock.settimeout(0.05)
        self.lock = threading.Lock()
        self.conns = 0
        self.bytes_received = 0
        self.log: list[Request] = []          # every head, in every mode
        self.echoed: list[dict] = []          # echo mode: the demo's record of each request
        self.open_socks: set = set()
        self.events: list[str] = []  # e.g. "reset:<conn>" when a client of ours went away
        self._stop = threading.Event()
        self._t = None

    @property
    def requests(self) -> list:
        """Echo mode: the demo's dicts; otherwise the ``Request`` of every head."""
        return self.echoed if self.mode == "echo" else self.log

    @property
    def addr(self) -> str:
        return "127.0.0.1:%d" % self.lsock.getsockname()[1]

    @property
    def port(self) -> int:
        return self.lsock.getsockname()[1]

    def __enter__(self) -> "FakeUpstream":
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join(2)
        self.lsock.close()
        with self.lock:
            socks = list(self.open_socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.conns, len(self.log), self.bytes_received

    def since(self, snap) -> list[Request]:
        with self.lock:
            return list(self.log[snap[1]:])

    # ---------------------------------------------------------------- serving
    def _accept(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            n += 1
            with self.lock:
                self.conns += 1
                self.open_socks.add(s)
            s.settimeout(SOCK_TIMEOUT)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s: socket.socket, cid: int) -> None:
        if self.tls is not None:
            try:
                s = self.tls.wrap_socket(s, server_side=True)
            except OSError:
                with self.lock:
                    self.open_socks.discard(s)
                s.close()
                return
            with self.lock:
                self.open_socks.add(s)
        r = _Reader(s, self)
        conn = Conn(s, r, cid, self._stop)
        try:
            while not self._stop.is_set():
                head = r.until(b"\r\n\r\n")
                if head is None:
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                rl = lines[0].split(" ")
                if len(rl) != 3:
                    if self.mode == "echo":  # as http.server
                        s.sendall(response(400, [("connection", "close")]))
                    return
                pairs = []
                for ln in lines[1:]:
                    name, _, v = ln.partition(":")
                    pairs.append((name.strip(), v.strip()))
                req = Request(cid, rl[0], rl[1], rl[2], [(n.lower(), v) for n, v in pairs], head)
                req.header_list = pairs
                with self.lock:
                    self.log.append(req)
                try:
                    if self.mode == "raw":
                        keep = self._dispatch(s, r, req)
                    elif self.mode == "echo":
                        keep = self._echo(s, r, req)
                    else:
                        if self.read_body and not self._read_body(r, req):
                            return
                        keep = self.handler(req, conn) is not False
                    if not keep:
                        return
                except OSError:  # the gateway closed/reset this connection
                    with self.lock:
                        self.events.append(f"reset:{cid}")
                    return
        finally:
            with self.lock:
                self.open_socks.discard(s)
            try:
                s.close()
            except OSError:
                pass

    # ---------------------------------------------------------------- echo mode
    def _echo(self, s: socket.socket, r: _Reader, req: Request) -> bool:
        """The demo echo's behaviour (fastgw.demo.echo), on this server."""
        if req.version == "HTTP/1.1" and (req.header("expect") or "").lower() == "100-continue":
            s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self._read_body(r, req):
            return False
        u = urlsplit(req.target)
        parts = [p for p in u.path.split("/") if p]
        rec = {"service": self.name, "method": req.method, "path": u.path, "query": u.query,
               "target": req.target, "headers": {k.lower(): v for k, v in req.header_list},
               "header_list": list(req.header_list), "body_size": len(req.body)}
        with self.lock:
            self.echoed.append(dict(rec, body=req.body))
        conn_hdr = (req.header("connection") or "").lower()
        keep = "close" not in conn_hdr and (req.version == "HTTP/1.1" or "keep-alive" in conn_hdr)
        head_only = req.method == "HEAD"
        std = [("server", "echo"), ("date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))]
        arg = parts[1] if len(parts) > 1 else None
        if parts[:1] == ["garbage"]:
            s.sendall(b"this is not http\r\n\r\n")
            return False
        if parts[:1] == ["status"] and arg:
            st = int(arg)
            s.sendall(response(st, std + [("content-type", "application/json")], json.dumps(rec).encode(),
                               head_only=head_only))
            return keep
        if parts[:1] == ["delay"] and arg:
            time.sleep(int(arg) / 1000)
        if parts[:1] == ["bytes"] and arg:
            s.sendall(response(200, std + [("content-type", "application/octet-stream")], b"b" * int(arg),
                               head_only=head_only))
            return keep
        if parts[:1] == ["chunked"] and arg:
            n = int(arg)
            s.sendall(response(200, std + [("content-type", "application/octet-stream"),
                                           ("transfer-encoding", "chunked")], length=False) + _chunks(n, 16384))
            return keep
        if parts[:1] == ["stream"] and arg:
            s.sendall(response(200, std + [("content-type", "application/octet-stream"), ("connection", "close")],
                               length=False) + b"s" * int(arg))
            return False
        if parts[:1] == ["slow"] and len(parts) > 2:
            n, ms = int(parts[1]), int(parts[2])
            s.sendall(response(200, std + [("content-length", str(n))], length=False))
            while n > 0:
                k = min(n, 16384)
                s.sendall(b"w" * k)
                n -= k
                time.sleep(ms / 1000)
            return keep
        if parts[:1] == ["truncate"] and arg:
            n = int(arg)
            s.sendall(response(200, std + [("content-length", str(n))], length=False) + b"t" * (n // 2))
            s.shutdown(socket.SHUT_RDWR)
            return False
        if parts[-1:] == ["health"]:
            s.sendall(response(200, std + [("content-type", "application/json")], b'{"status":"ok"}',
                               head_only=head_only))
            return keep
        rec.pop("header_list")
        s.sendall(response(200, std + [("content-type", "application/json")], json.dumps(rec).encode(),
                           head_only=head_only))
        return keep

    # ---------------------------------------------------------------- raw mode
    def _read_body(self, r: _Reader, req: Request) -> bool:
        te = (req.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                line = r.until(b"\r\n")
                if line is None:
                    return False
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    return False
                if size == 0:
                    while True:
                        t = r.until(b"\r\n")
                        if t is None:
                            return False
                        if t == b"\r\n":
                            break
                    break
                d = r.exact(size + 2)
                if d is None:
                    return False
                body += d[:-2]
            req.body = bytes(body)
        else:
            n = int(req.header("content-length") or 0)
            if n:
                d = r.exact(n)
                if d is None:
                    return False
                req.body = d
        req.complete = True
        return True

    def _dispatch(self, s: socket.socket, r: _Reader, req: Request) -> bool:
        segs = [x for x in req.path.split("/") if x]
        kw, args = "", []
        for i, x in enumerate(segs):
            if x in _KEYWORDS:
                kw, args = x, segs[i + 1:]
                break
        if kw == "sink":
            rate = float(req.header("x-rate") or 0)
            n = int(req.header("content-length") or 0)
            h = hashlib.sha256()
            got = r.discard(n, rate, h)
            req.complete = got == n
            # bytes beyond Content-Length would be a framing error by the gateway
            extra = len(r.buf)
            if not extra:
                s.settimeout(0.2)
                try:
                    extra = len(s.recv(65536))
                except (socket.timeout, OSError):
                    extra = 0
                s.settimeout(SOCK_TIMEOUT)
            if extra:
                with self.lock:
                    self.events.append(f"extra-bytes-after-body:{req.conn_id}:{extra}")
            body = json.dumps({"received": got, "sha256": h.hexdigest(), "extra": extra}).encode()
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                      % (len(body), body))
            return req.complete
        if kw == "early":  # answer at once, the request body still unread
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return True
        if not self._read_body(r, req):
            return False
        if kw == "fixed":
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return True
        if kw == "big":
            n = int(args[0])
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % n)
            if req.method != "HEAD":
                block = b"z" * (1 << 20)
                left = n
                while left > 0:
                    k = min(left, len(block))
                    s.sendall(block if k == len(block) else block[:k])
                    left -= k
            return True
        if kw == "ws":
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                      b"x-ws: yes\r\n\r\n")
            if r.buf:
                s.sendall(b"echo:" + bytes(r.buf))
                r.buf.clear()
            while True:
                try:
                    d = s.recv(65536)
                except OSError:
                    return False
                if not d:
                    return False
                s.sendall(b"echo:" + d)
        if kw == "close":
            n = int(args[0]) if args else 10
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n")
            s.sendall(b"r" * n)
            return False
        if kw == "chunked":
            n = int(args[0]) if args else 10
            s.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + _chunks(n, 1000))
            return True
        if kw == "status":
            st = int(args[0])
            if st in (204, 304):
                s.sendall(b"HTTP/1.1 %d X\r\netag: \"e1\"\r\nx-st: %d\r\n\r\n" % (st, st))
            else:
                s.sendall(b"HTTP/1.1 %d X\r\ncontent-length: 3\r\n\r\nabc" % st)
            return True
        if kw == "delay":
            time.sleep(int(args[0]) / 1000)
        if kw == "hop":
            body = b"hop"
            s.sendall(b"HTTP/1.1 200 OK\r\nconnection: x-hop-resp, keep-alive\r\nx-hop-resp: 1\r\n"
                      b"keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\ntrailer: x-t\r\n"
                      b"upgrade: foo\r\nproxy-authenticate: Basic\r\nx-end-to-end: 1\r\n"
                      b"content-length: 3\r\n\r\n" + body)
            return True
        if kw == "garbage":
            s.sendall(b"this is not http\r\n\r\n")
            return False
        if kw == "truncate":
            n = int(args[0])
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n + b"t" * (n // 2))
            time.sleep(0.05)
            return False
        if kw == "conflict-cl":
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabcde")
            return False
        if kw == "bighead":
            s.sendall(b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(200))
                      + b"content-length: 0\r\n\r\n")
            return False
        if kw == "interim":
            s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nfinally")
            return True
        doc = {"method": req.method, "target": req.target, "headers": req.headers, "body_len": len(req.body),
               "conn": req.conn_id}
        body = json.dumps(doc).encode()
        if req.method == "HEAD":
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
        else:
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                      % (len(body), body))
        return True


_KEYWORDS = frozenset({"sink", "early", "fixed", "big", "ws", "close", "chunked", "status", "delay", "hop", "garbage",
                       "truncate", "conflict-cl", "bighead", "interim"})


def RawUpstream() -> FakeUpstream:
    """The raw, keyword-scripted fake upstream (module doc)."""
    return FakeUpstream("raw")


def EchoUpstream(name: str = "echo") -> FakeUpstream:
    """The fake upstream answering as the demo echo service, named ``name`` (module doc)."""
    return FakeUpstream("echo", name=name)
