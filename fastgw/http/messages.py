"""Messages the gateway builds itself (L2): local replies and RFC 9457 problems.

``Reply`` is what a middleware returns to answer locally (401, 403, 429, a preflight, a
cache hit).  ``ResponseHead`` is the upstream's response head as the response filters see
it; ``RequestHead`` is the request head as the upstream-request filters see it.  Header
names are bytes as received (any case); values are bytes.  Helpers compare names
case-insensitively.  Serialisation lives in ``http/wire``.
"""

from __future__ import annotations

import orjson

from fastgw.errors import KINDS, GatewayError
from fastgw.http.wire import header_lines

PROBLEM_CT = b"application/problem+json"


def _find(headers: list, lname: bytes) -> int:
    for i, (n, _v) in enumerate(headers):
        if n.lower() == lname:
            return i
    return -1


class _HeadersMixin:
    __slots__ = ()
    headers: list

    def get(self, lname: bytes, default: bytes | None = None) -> bytes | None:
        """First value of header ``lname`` (lower-case bytes), or ``default``."""
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return default

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every ``name`` header with one value."""
        self.remove(name.lower())
        self.headers.append((name, value))

    def add(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def setdefault(self, name: bytes, value: bytes) -> None:
        """Add ``name`` only if absent."""
        if _find(self.headers, name.lower()) < 0:
            self.headers.append((name, value))

    def remove(self, lname: bytes) -> None:
        hs = self.headers
        if _find(hs, lname) >= 0:
            hs[:] = [h for h in hs if h[0].lower() != lname]


class Reply(_HeadersMixin):
    """A response made by the gateway: status, header list, whole body."""

    __slots__ = ("status", "headers", "body", "kind")

    def __init__(self, status: int, headers: list | None = None, body: bytes = b"", kind: str = "") -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
        self.kind = kind  # error kind for logs/metrics ("" for a normal local answer)


class ResponseHead(_HeadersMixin):
    """An upstream response head as the response filters see it (mutable).

    It starts as the upstream's raw header block (bytes, already validated by llhttp and
    stripped of hop-by-hop fields), so a route whose filters never look at the headers
    forwards them untouched.  The first access to ``headers`` parses the block into a
    list of (name, value) pairs; ``block()`` serialises whichever form is current.
    """

    __slots__ = ("status", "reason", "_headers", "raw")

    def __init__(self, status: int, reason: bytes, headers: list | None = None, raw: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self._headers = headers
        self.raw = raw

    @property
    def headers(self) -> list:
        hs = self._headers
        if hs is None:
            hs = self._headers = parse_block(self.raw)
        return hs

    @headers.setter
    def headers(self, value: list) -> None:
        self._headers = value

    def block(self) -> bytes:
        """The header lines (``name: value\r\n`` each) in their current form."""
        hs = self._headers
        if hs is None:
            return self.raw
        return header_lines(hs)


def parse_block(raw: bytes) -> list:
    """``b"A: 1\r\nB: 2\r\n"`` -> ``[(b"A", b"1"), (b"B", b"2")]`` (input validated by llhttp)."""
    out = []
    for line in raw.split(b"\r\n"):
        if line:
            n, _, v = line.partition(b":")
            out.append((n, v.strip(b" \t")))
    return out


class RequestHead(_HeadersMixin):
    """The request head about to be sent upstream (mutable by upstream_request_filter)."""

    __slots__ = ("method", "target", "headers")

    def __init__(self, method: bytes, target: bytes, headers: list) -> None:
        self.method = method
        self.target = target
        self.headers = headers


def problem(
    status: int,
    detail: str,
    request_id: str = "",
    *,
    title: str | None = None,
    type: str = "about:blank",
    kind: str = "",
    headers: list | None = None,
    extra: dict | None = None,
) -> Reply:
    """An RFC 9457 application/problem+json reply with a ``request_id`` member."""
    if title is None:
        title = _TITLES.get(status, "Error")
    doc = {"type": type, "title": title, "status": status, "detail": detail, "request_id": request_id}
    if extra:
        doc.update(extra)
    hs = [(b"content-type", PROBLEM_CT)]
    if headers:
        hs.extend(headers)
    return Reply(status, hs, orjson.dumps(doc), kind=kind)


def error_reply(err: GatewayError, request_id: str = "") -> Reply:
    """The one place that turns a GatewayError into a response."""
    hs = None
    if err.allow is not None:
        hs = [(b"allow", err.allow)]
    return problem(err.status, err.detail, request_id, title=err.title, kind=err.kind, headers=hs)


_TITLES: dict[int, str] = {st: t for st, t in KINDS.values()}
_TITLES.update({400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"})
