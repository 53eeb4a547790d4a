"""Messages the gateway builds itself (L2): local replies and RFC 9457 problems.

``Reply`` is what a middleware returns to answer locally (401, 403, 429, a preflight, a
cache hit).  ``ResponseHead`` is the upstream's response head as the response filters see
it; ``RequestHead`` is the request head as the upstream-request filters see it.  Header
names are bytes as received (any case); values are bytes.  Helpers compare names
case-insensitively.  Serialisation lives in ``http/wire``.
"""

from __future__ import annotations

import re

import orjson

from fastgw.errors import KINDS, GatewayError
from fastgw.http.wire import cut_spans, header_lines

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

    def extend(self, pairs) -> None:
        """Append ``(name, value)`` header pairs."""
        self.headers.extend(pairs)

    def add_lines(self, lines: Lines) -> None:
        """Append prebuilt header lines."""
        self.headers.extend(lines.pairs)

    def sweep(self, names: Names) -> frozenset:
        """Remove the headers ``names`` drops; return which of the names it watches were
        present (before the removal)."""
        hs = self.headers
        present = {n.lower() for n, _v in hs}
        if not present.isdisjoint(names.drop) or (
                names.prefix is not None and any(n.startswith(names.prefix) for n in present)):
            dropped = names.dropped
            hs[:] = [h for h in hs if not dropped(h[0].lower())]
        return names.watch.intersection(present)


class Lines:
    """Header pairs a filter adds as they are, with their serialisation made once (what
    ``ResponseHead.add_lines`` appends to a raw block): config-time constants."""

    __slots__ = ("pairs", "raw")

    def __init__(self, pairs) -> None:
        self.pairs = tuple(pairs)
        self.raw = header_lines(self.pairs)


class Names:
    """Header names a response filter removes (``drop``, exact lower-case names, plus
    every name starting with ``prefix``) or looks for (``watch``), compiled once for both
    forms of a head: sets for a header list, one regex for a raw header block.

    The regex runs over ``b"\n" + block.lower()`` (llhttp refuses whitespace before a
    colon, so ``"\nname:"`` is exact, as in ``pipeline.heads``); a match spans one whole
    line without its final ``"\n"``, so the match at ``[a, e)`` of that copy is the line
    ``block[a:e]``, ``"\r\n"`` included.  Its ``lastindex`` says what to do: 1 drop,
    2 watch, 3 both (a name in both sets).
    """

    __slots__ = ("drop", "watch", "prefix", "search")

    def __init__(self, drop=(), watch=(), prefix: bytes | None = None) -> None:
        self.drop = frozenset(n.lower() for n in drop)
        self.watch = frozenset(n.lower() for n in watch)
        self.prefix = prefix.lower() if prefix else None

        def alt(ns) -> bytes:
            return b"|".join(re.escape(n) for n in sorted(ns))

        drop_only = [alt(self.drop - self.watch)] if self.drop - self.watch else []
        if self.prefix is not None:
            drop_only.append(re.escape(self.prefix) + rb"[^:\n]*")
        groups = [b"|".join(drop_only), alt(self.watch - self.drop), alt(self.drop & self.watch)]
        # an empty group never matches (a name is never empty)
        body = b"|".join(b"(" + (g or rb"(?!)") + b")" for g in groups)
        self.search = re.compile(rb"\n(?:" + body + rb"):[^\n]*").search

    def dropped(self, lname: bytes) -> bool:
        return lname in self.drop or (self.prefix is not None and lname.startswith(self.prefix))


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

    ``extend``, ``add_lines`` and ``sweep`` (what the policy filters use: CORS, security headers) work
    on the raw block as long as nothing has parsed it: appended lines are serialised onto
    it and removed lines are cut out of it, so the usual response is never parsed into a
    list and serialised again (a parse costs more than both filters' own work).
    """

    __slots__ = ("status", "reason", "parsed", "raw", "length_dropped")

    def __init__(self, status: int, reason: bytes, headers: list | None = None, raw: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.parsed = headers  # the header list once parsed; None while ``raw`` is the head
        self.raw = raw
        self.length_dropped = False  # drop_length() was called: the body's length changes

    def drop_length(self) -> None:
        """Declare that a body filter changes the body's length (a streaming encoder):
        Content-Length is removed and the engine frames the body itself, chunked for an
        HTTP/1.1 client, close-delimited for HTTP/1.0, whatever the upstream's framing."""
        self.remove(b"content-length")
        self.length_dropped = True

    @property
    def headers(self) -> list:
        hs = self.parsed
        if hs is None:
            hs = self.parsed = parse_block(self.raw)
        return hs

    @headers.setter
    def headers(self, value: list) -> None:
        self.parsed = value

    def block(self) -> bytes:
        """The header lines (``name: value\r\n`` each) in their current form."""
        hs = self.parsed
        if hs is None:
            return self.raw
        return header_lines(hs)

    def extend(self, pairs) -> None:
        """Append ``(name, value)`` header pairs (to the raw block while it is unparsed)."""
        hs = self.parsed
        if hs is None:
            self.raw += header_lines(pairs)
        else:
            hs.extend(pairs)

    def add_lines(self, lines: Lines) -> None:
        """Append prebuilt header lines (their bytes, to the raw block while it is unparsed)."""
        hs = self.parsed
        if hs is None:
            self.raw += lines.raw
        else:
            hs.extend(lines.pairs)

    def sweep(self, names: Names) -> frozenset:
        """As ``_HeadersMixin.sweep``; on an unparsed head, a regex search over the block.

        (A ``search`` loop, not ``finditer``: the usual block has no match or one, and
        measured with callgrind the loop costs half as much.)"""
        if self.parsed is not None:
            return _HeadersMixin.sweep(self, names)
        low = b"\n" + self.raw.lower()
        search = names.search
        m = search(low)
        if m is None:
            return _NONE
        seen = None
        cuts = []
        while m is not None:
            k = m.lastindex
            if k != 1:
                if seen is None:
                    seen = set()
                seen.add(m.group(k))
            if k != 2:
                cuts.append(m.span())
            m = search(low, m.end())
        if cuts:
            self.raw = cut_spans(self.raw, cuts)
        return _NONE if seen is None else frozenset(seen)


_NONE: frozenset = frozenset()

# The edit memo of a response filter whose edit of an unparsed ``ResponseHead`` is a
# function of its raw block and of a per-request decision made from a few values (the
# security headers: HSTS or not; CORS: the origin's lines): ``(block, decision) -> edited
# block``.  An upstream sends the same head again and again (the same endpoint within
# the second of its Date, and ``pipeline.heads`` hands the filters the same cut block
# object, whose hash is kept), so the usual response costs one dict lookup instead of a
# lower-cased copy, a regex pass, a cut and an append.  Bounded per filter (cleared when
# full: a workload of ever-new heads pays one failed lookup and one insert); blocks
# longer than EDIT_MEMO_BLOCK are not kept.
EDIT_MEMO_SIZE = 64
EDIT_MEMO_BLOCK = 1024


def edit_remembered(memo: dict, key: tuple, status: int, block: bytes, edit, *args) -> bytes:
    """A memo miss: ``edit(head, *args)`` on an unparsed ``ResponseHead`` of ``block``,
    its edited block returned and kept under ``key`` (``key[0]`` is ``block``).  The
    caller looks ``key`` up first (``memo.get``), so a hit pays no call."""
    head = ResponseHead(status, b"", raw=block)
    edit(head, *args)
    edited = head.raw
    if len(block) <= EDIT_MEMO_BLOCK:
        if len(memo) >= EDIT_MEMO_SIZE:
            memo.clear()
        memo[key] = edited
    return edited


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


_TITLES: dict[int, str] = {row[0]: row[1] for row in KINDS.values()}
_TITLES.update({400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"})
