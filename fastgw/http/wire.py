"""Wire-format helpers (L2): prebuilt status lines, hop-by-hop rules, head serialisation.

Everything here is computed at import time or per call without str decoding of header
values that are only forwarded (STYLE.md items 6-7).  A head is serialised with one
``b"".join`` so each message leaves in one ``write()`` whenever its body is known.
"""

from __future__ import annotations

from http import HTTPStatus

from fastgw.clock import date_header

# "HTTP/1.1 200 OK\r\n" for every known status; unknown ones are built on demand.
STATUS_LINES: dict[int, bytes] = {
    int(s): b"HTTP/1.1 %d %s\r\n" % (int(s), s.phrase.encode("ascii")) for s in HTTPStatus
}
STATUS_LINES[413] = b"HTTP/1.1 413 Content Too Large\r\n"


# The framing of a response body on its way to the client, as ``heads.response_head``
# decides it and the upstream client applies it (bits): re-chunked for an HTTP/1.1
# client (the upstream sent no length), and/or ended by the upstream's close.
RECHUNK, CLOSE_DELIMITED = 1, 2
# with RECHUNK: a body filter returns the whole body at its end, so the head waits for it
# and goes out with the body's Content-Length instead of chunked (unless the filter gives
# up midway and streams: then the head goes out as built, chunked)
WHOLE = 4

def status_line(status: int, reason: bytes = b"") -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")
    return line


# Hop-by-hop headers (RFC 9110 7.6.1) never forwarded in either direction; the
# headers named by Connection are removed too (done by the caller).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})

CRLF = b"\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


_colon_join = b": ".join   # (name, value) -> b"name: value", in C
_join_lines = b"\r\n".join


def header_lines(headers) -> bytes:
    """``name: value\r\n`` for each pair (``map`` over C joins: no Python call per header)."""
    return _join_lines(map(_colon_join, headers)) + CRLF if headers else b""


def serialize_headers(out: list, headers) -> None:
    """Append the ``name: value\r\n`` lines of ``headers`` to ``out`` (as one piece)."""
    if headers:
        out.append(_join_lines(map(_colon_join, headers)) + CRLF)


def reply_bytes(status: int, headers, body: bytes, *, keep_alive: bool, head_only: bool = False,
                extra=None, server: bytes | None = None, raw: bytes = b"") -> bytes:
    """A complete response with Content-Length, in one buffer."""
    out = [status_line(status), date_header()]
    if server:
        out.append(server)
    serialize_headers(out, headers)
    if extra:
        serialize_headers(out, extra)
    if raw:
        out.append(raw)
    if status >= 200 and status not in (204, 304):
        out.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        out.append(b"connection: close\r\n")
    out.append(CRLF)
    if body and not head_only and status not in (204, 304):
        out.append(body)
    return b"".join(out)


class Prebuilt:
    """A local answer serialised ahead of time, shared by the exchanges it answers and
    never changed once made (the cache's hit: ``cache.store.Entry.heat``).

    ``Engine.send_local`` writes it in one join: ``line`` (the status line), the
    exchange's Date, Server and response lines, ``lines`` (its header lines), the tail
    that frames its ``body`` and says the connection's fate (``keep``, ``keep10`` for an
    HTTP/1.0 client kept alive, ``close``: ``framing_tails``), then ``body``, left out for
    a HEAD.  No response filter sees it: its maker hands one only where none applies,
    and otherwise makes a ``Reply`` of ``headers`` (the same head as a list) and ``body``.
    """

    __slots__ = ("status", "headers", "body", "line", "lines", "keep", "keep10", "close")

    def __init__(self, status: int, headers: list, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.line = status_line(status)
        self.lines = header_lines(headers)
        self.keep, self.keep10, self.close = framing_tails(status, len(body))


def framing_tails(status: int, length: int) -> tuple:
    """``Prebuilt``'s tails for a whole body of ``length`` bytes: what ``reply_bytes``
    ends a head with (the same Content-Length rule) when the connection is kept alive, kept alive for an HTTP/1.0
    client, or closed."""
    cl = b"content-length: %d\r\n" % length if status >= 200 and status not in (204, 304) else b""
    return cl + CRLF, b"connection: keep-alive\r\n" + cl + CRLF, cl + b"connection: close\r\n" + CRLF


def cut_spans(raw: bytes, spans) -> bytes:
    """``raw`` without the byte ranges ``spans`` (sorted, non-overlapping ``(a, e)``):
    how the response filters and the response head drop whole header lines from a raw
    header block."""
    if len(spans) == 1:  # the usual case: one line (e.g. Connection: keep-alive)
        a, e = spans[0]
        return raw[:a] + raw[e:]
    parts = []
    pos = 0
    for a, e in spans:
        parts.append(raw[pos:a])
        pos = e
    parts.append(raw[pos:])
    return b"".join(parts)


def connection_tokens(value: bytes) -> set[bytes]:
    """Lower-case tokens of a Connection header value."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never called with empty data)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
