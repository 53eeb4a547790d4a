"""Client side of the wire: send raw bytes, parse what comes back.

``exchange`` sends bytes on a new connection and reads until close; ``Client`` is one
keep-alive connection with an incremental response reader; ``parse_head`` /
``parse_responses`` / ``one_response`` split a byte stream into responses (Content-Length
or chunked framed); ``problem_of`` checks a problem+json body.
"""

from __future__ import annotations

import json
import socket
import time


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


def read_to_close(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer closes (its timeout still applies)."""
    out = bytearray()
    while True:
        d = sock.recv(65536)
        if not d:
            return bytes(out)
        out += d


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p
