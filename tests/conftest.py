"""Shared fixtures and helpers for the proxy-core integration tests.

``RawUpstream`` is a small threaded raw-socket HTTP/1.1 server that records *everything*
it receives: accepted connections, every request head it manages to parse, and the raw
byte count.  The stdlib echo server (fastgw.demo.echo) only records what it manages to
parse as a whole request, which is not enough to prove that nothing malformed or
smuggled ever reached an upstream; this one records a head the moment it is complete,
and counts bytes that never became a head.

Behaviour is chosen by a path keyword anywhere in the path (so routes with prefixes
reach it): ``/x/big/N`` (N bytes, Content-Length, sent as fast as possible),
``/x/sink`` (read the body at ``x-rate`` bytes/s, discard it, answer its size), ``/x/ws``
(101 then echo bytes), ``/x/close/N`` (read-until-close body), ``/x/chunked/N``,
``/x/status/NNN``, ``/x/delay/MS``, ``/x/hop``, ``/x/garbage``, ``/x/truncate/N``,
``/x/conflict-cl``, ``/x/bighead``, ``/x/interim`` (a 100 before the 200), ``/x/fixed``.
Anything else: a JSON echo of the request.

Every socket has a timeout and every thread is a daemon; ``stop()`` closes the listener
and all open connections.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest

from tests.harness import Gateway

SOCK_TIMEOUT = 10.0


# ---------------------------------------------------------------------- client helpers
def exchange(port: int, data: bytes | list, *, timeout: float = 5.0, host: str = "127.0.0.1",
             pause: float = 0.0) -> tuple[bytes, bool]:
    """Send ``data`` (bytes, or a list of pieces sent ``pause`` seconds apart) on a new
    connection and read until the peer closes or ``timeout`` passes.

    Returns ``(received, closed)``: ``closed`` is True when the gateway closed the
    connection (EOF or reset) within the timeout.
    """
    s = socket.create_connection((host, port), timeout=timeout)
    out = bytearray()
    closed = False
    try:
        pieces = data if isinstance(data, list) else [data]
        for i, p in enumerate(pieces):
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause and i + 1 < len(pieces):
                time.sleep(pause)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    finally:
        s.close()
    return bytes(out), closed


def parse_head(data: bytes) -> tuple[int, dict[str, str], list[tuple[str, str]], bytes]:
    """(status, lower-case header dict (last wins), header list, rest) of one response."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0] == "HTTP/1.1", f"bad status line {lines[0]!r}"
    hl = []
    for ln in lines[1:]:
        n, _, v = ln.partition(":")
        hl.append((n.strip().lower(), v.strip()))
    return int(parts[1]), dict(hl), hl, rest


def parse_responses(data: bytes, *, head_only_methods: list[bool] | None = None) -> list[tuple[int, dict, bytes]]:
    """Split a byte stream into complete responses (Content-Length or chunked framed).

    A response without either is read until the end of ``data``.  Stops at an
    incomplete response (not returned).
    """
    out = []
    i = 0
    while data:
        if b"\r\n\r\n" not in data:
            break
        st, hd, _hl, rest = parse_head(data)
        head_only = head_only_methods[i] if head_only_methods and i < len(head_only_methods) else False
        if head_only or st in (204, 304) or 100 <= st < 200:
            body, data = b"", rest
        elif "content-length" in hd:
            n = int(hd["content-length"])
            if len(rest) < n:
                break
            body, data = rest[:n], rest[n:]
        elif "chunked" in hd.get("transfer-encoding", ""):
            body, data, ok = _dechunk(rest)
            if not ok:
                break
        else:
            body, data = rest, b""
        out.append((st, hd, body))
        i += 1
    return out


def _dechunk(rest: bytes) -> tuple[bytes, bytes, bool]:
    body = bytearray()
    while True:
        line, sep, after = rest.partition(b"\r\n")
        if not sep:
            return bytes(body), rest, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            # no trailers expected from the gateway
            if not after.startswith(b"\r\n"):
                return bytes(body), rest, False
            return bytes(body), after[2:], True
        if len(after) < size + 2:
            return bytes(body), rest, False
        body += after[:size]
        rest = after[size + 2:]


def one_response(data: bytes) -> tuple[int, dict, bytes]:
    rs = parse_responses(data)
    assert rs, f"no complete response in {data[:400]!r}"
    return rs[0]


def problem_of(body: bytes) -> dict:
    doc = json.loads(body)
    for k in ("type", "title", "status", "detail", "request_id"):
        assert k in doc, f"problem+json without {k!r}: {doc}"
    return doc


# ---------------------------------------------------------------------- memory
def worker_pids(pid: int) -> list[int]:
    """The gateway's worker processes: its children if it forked, else itself."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    return kids or [pid]


def vmrss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def gateway_rss_kb(gw: Gateway) -> int:
    return sum(vmrss_kb(p) for p in worker_pids(gw.proc.pid))


class RssSampler:
    """Samples the gateway's RSS every 20 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.base = gateway_rss_kb(gw)
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, gateway_rss_kb(self.gw))
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(2)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 1024


# ---------------------------------------------------------------------- raw upstream
class _Reader:
    def __init__(self, sock: socket.socket, up: "RawUpstream") -> None:
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
    __slots__ = ("conn_id", "method", "target", "version", "headers", "body", "complete", "raw_head")

    def __init__(self, conn_id, method, target, version, headers, raw_head) -> None:
        self.conn_id = conn_id
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list[(lower name str, value str)]
        self.body = b""
        self.complete = False
        self.raw_head = raw_head

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class RawUpstream:
    def __init__(self) -> None:
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(512)
        self.lsock.settimeout(0.1)
        self.lock = threading.Lock()
        self.conns = 0
        self.bytes_received = 0
        self.requests: list[Request] = []
        self.open_socks: set = set()
        self.events: list[str] = []  # e.g. "reset:<conn>" when a client of ours went away
        self._stop = threading.Event()
        self._t = None

    @property
    def addr(self) -> str:
        return "127.0.0.1:%d" % self.lsock.getsockname()[1]

    @property
    def port(self) -> int:
        return self.lsock.getsockname()[1]

    def __enter__(self) -> "RawUpstream":
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
            return self.conns, len(self.requests), self.bytes_received

    def since(self, snap) -> list[Request]:
        with self.lock:
            return list(self.requests[snap[1]:])

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
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s: socket.socket, cid: int) -> None:
        r = _Reader(s, self)
        try:
            while not self._stop.is_set():
                head = r.until(b"\r\n\r\n")
                if head is None:
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                rl = lines[0].split(" ")
                if len(rl) != 3:
                    return
                hdrs = []
                for ln in lines[1:]:
                    name, _, v = ln.partition(":")
                    hdrs.append((name.strip().lower(), v.strip()))
                req = Request(cid, rl[0], rl[1], rl[2], hdrs, head)
                with self.lock:
                    self.requests.append(req)
                try:
                    if not self._dispatch(s, r, req):
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
            out = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
            while n > 0:
                k = min(n, 1000)
                out.append(b"%x\r\n%s\r\n" % (k, b"c" * k))
                n -= k
            out.append(b"0\r\n\r\n")
            s.sendall(b"".join(out))
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


_KEYWORDS = frozenset({"sink", "fixed", "big", "ws", "close", "chunked", "status", "delay", "hop", "garbage",
                       "truncate", "conflict-cl", "bighead", "interim"})


class Client:
    """One keep-alive client connection with an incremental response reader."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        try:
            d = self.sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return False
        if not d:
            return False
        self.buf += d
        return True

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._more():
                raise AssertionError(f"connection ended before {marker!r}; got {self.buf[:300]!r}")
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        """Read exactly one complete response (Content-Length, chunked, or close-delimited)."""
        while True:
            if b"\r\n\r\n" in self.buf:
                st, hd, _hl, rest = parse_head(self.buf)
                if not ("content-length" in hd or "chunked" in hd.get("transfer-encoding", "")
                        or head_only or st in (204, 304) or st < 200):
                    while self._more():
                        pass
                    st, hd, _hl, rest = parse_head(self.buf)
                    self.buf = b""
                    return st, hd, rest
                rs = parse_responses(self.buf, head_only_methods=[head_only])
                if rs:
                    st, hd, body = rs[0]
                    consumed = len(self.buf) - len(_after_first(self.buf, head_only))
                    self.buf = self.buf[consumed:]
                    return st, hd, body
            if not self._more():
                raise AssertionError(f"connection ended before a complete response; got {self.buf[:300]!r}")

    def closed_within(self, seconds: float) -> bool:
        """True if the peer closes (EOF/reset) within ``seconds`` (any data read is kept)."""
        self.sock.settimeout(seconds)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _after_first(data: bytes, head_only: bool) -> bytes:
    """The bytes after the first complete response in ``data``."""
    st, hd, _hl, rest = parse_head(data)
    if head_only or st in (204, 304) or st < 200:
        return rest
    if "content-length" in hd:
        return rest[int(hd["content-length"]):]
    return _dechunk(rest)[1]


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(pred, timeout: float = 3.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# ---------------------------------------------------------------------- config + fixtures
ACCESS_LOG_BLOCK = """
monitoring:
  metrics_port: 0
  logging:
    level: warning
    access_log:
      enabled: true
      output: "{ACCESS_LOG}"
"""

CORE_CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: []
services:
  main:
    url: "http://{UP}"
    routes:
      - path: "/api/*"
        name: api
        methods: ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
      - path: "/small/*"
        name: small
        methods: ["POST", "PUT"]
        max_body_size: 1024
      - path: "/enc/*"
        name: enc
        methods: ["GET"]
        allow_encoded_slash: true
      - path: "/only-get"
        name: only-get
        methods: ["GET"]
  slowsvc:
    url: "http://{UP}"
    timeout: 500ms
    routes:
      - path: "/slowsvc/*"
        methods: ["GET"]
  refused:
    url: "http://127.0.0.1:{CLOSED}"
    connect_timeout: 2s
    routes:
      - path: "/refused/*"
        methods: ["GET", "POST"]
""" + ACCESS_LOG_BLOCK


def core_config(up, **repl) -> str:
    text = CORE_CONFIG.replace("{UP}", up.addr).replace("{CLOSED}", str(closed_port()))
    for k, v in repl.items():
        text = text.replace("{" + k + "}", v)
    return text


@pytest.fixture(scope="module")
def raw_up():
    with RawUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def core_gw(raw_up):
    with Gateway(core_config(raw_up)) as gw:
        yield gw


def flushed_access_lines(gw: Gateway, pred, timeout: float = 3.0) -> list[dict]:
    """Access log lines, waiting (the log is flushed on the worker's 1 s tick) until ``pred(lines)``."""
    lines: list[dict] = []

    def ok():
        nonlocal lines
        lines = gw.access_lines()
        return pred(lines)

    wait_for(ok, timeout, 0.05)
    return lines
