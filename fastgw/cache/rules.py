"""RFC 9111 rules of a shared cache (L2): what may be stored, for how long, what a
request's Cache-Control asks.  Pure functions over a response's ``fields`` (the header
fields the rules read, found in one pass over the head: ``fields``/``fields_of``); no
I/O.

Rules (the RFC sections in brackets):
1. Stored only: GET responses with a status that is cacheable by default or made
   cacheable by explicit freshness [3, 4.2.2]; never ``no-store`` or ``private``
   [5.2.2.3, 5.2.2.7], never ``Vary: *`` [4.1], never ``Set-Cookie`` unless the route
   stores without it, never over ``max_object_size``.
2. A request carrying credentials (any token source the gateway authenticated, or an
   ``Authorization`` header) is stored only when the response says ``public``,
   ``s-maxage`` or ``must-revalidate`` [3.5].
3. Freshness lifetime: ``s-maxage``, else ``max-age``, else ``Expires - Date``, else the
   route's ``default_ttl`` (heuristic freshness is off unless configured) [4.2.1].
4. Age = max(0, now - Date) combined with the Age received, plus the time resident
   [4.2.3]; an entry is fresh while its current age is below its lifetime.
5. ``no-cache`` and ``must-revalidate``/``proxy-revalidate`` in the response forbid
   serving it stale; ``stale-while-revalidate``/``stale-if-error`` (RFC 5861) extend
   how long it may be served stale in those two cases.
"""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

# what a stored head never keeps (hop-by-hop, framing, and what the cache sets itself)
SKIP_STORE = frozenset({b"age", b"date", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                        b"cache-status", b"proxy-connection", b"trailer", b"upgrade", b"te"})
# ... and Set-Cookie (a response with one is stored without it only when allowed)
NOT_STORED = SKIP_STORE | {b"set-cookie"}

# cacheable by default (RFC 9110 15.1)
HEURISTIC_STATUS = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
STORE_STATUS = HEURISTIC_STATUS | frozenset({302, 303, 307, 403})


def parse_cc(value: bytes | None) -> dict:
    """``Cache-Control`` directives: name (lower-case str) -> value str or None."""
    out: dict = {}
    if not value:
        return out
    for part in value.split(b","):
        name, eq, arg = part.partition(b"=")
        name = name.strip().lower()
        if not name:
            continue
        out[name.decode("latin-1")] = arg.strip().strip(b'"').decode("latin-1") if eq else None
    return out


def seconds(v) -> int | None:
    """A delta-seconds argument, None if absent or malformed."""
    if v is None:
        return None
    try:
        n = int(v)
    except ValueError:
        return None
    return n if n >= 0 else None


_DATES: dict = {}  # http_date's memo: the Date of every response in one second is one value


def http_date(v: bytes | None) -> float | None:
    """An HTTP-date as a timestamp, None if absent or invalid.  Remembered: a second's
    responses carry one Date, and ``email.utils`` parses it with several Python calls."""
    if not v:
        return None
    try:
        return _DATES[v]
    except KeyError:
        pass
    try:
        t = parsedate_to_datetime(v.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        t = None
    if len(_DATES) >= 256:
        _DATES.clear()
    _DATES[v] = t
    return t


# The fields the rules and the stored entry read (rules 1-4, validators, tags), found in
# one pass: ``fields`` over a raw header block (one regex, nothing parsed into a list),
# ``fields_of`` over a header list.  Both give lower-case name -> value, a repeated field
# joined with ", " (its list form).  llhttp refuses whitespace before a colon, so
# "\nname:" is exact.
FIELDS = (b"cache-control", b"expires", b"date", b"vary", b"set-cookie", b"content-length", b"content-encoding",
          b"age", b"etag", b"last-modified", b"cache-tag", b"surrogate-key")
_FIELD_SET = frozenset(FIELDS)
_FIELDS_RE = re.compile(rb"\n(" + b"|".join(FIELDS) + rb"):[ \t]*([^\r\n]*)", re.I).findall


def fields(block: bytes) -> dict:
    """The ``FIELDS`` of a raw header block (``name: value\\r\\n`` lines)."""
    out: dict = {}
    for n, v in _FIELDS_RE(b"\n" + block):
        ln = n.lower()
        v = v.rstrip(b" \t")
        have = out.get(ln)
        out[ln] = v if have is None else have + b", " + v
    return out


def fields_of(headers: list) -> dict:
    """The ``FIELDS`` of a header list."""
    out: dict = {}
    for n, v in headers:
        ln = n.lower()
        if ln in _FIELD_SET:
            have = out.get(ln)
            out[ln] = v if have is None else have + b", " + v
    return out


def lifetime(cc: dict, f: dict, default_ttl: float | None) -> float | None:
    """The freshness lifetime in seconds (rule 3), or None when there is none."""
    n = seconds(cc.get("s-maxage"))
    if n is not None:
        return float(n)
    n = seconds(cc.get("max-age"))
    if n is not None:
        return float(n)
    exp = f.get(b"expires")
    if exp is not None:
        e = http_date(exp)
        if e is None:
            return 0.0  # an invalid Expires means already expired [5.3]
        d = http_date(f.get(b"date"))
        return max(0.0, e - d) if d is not None else 0.0
    return default_ttl


def why_not_stored(status: int, f: dict, cc: dict, authed: bool, store_set_cookie: bool,
                   ttl: float | None) -> str | None:
    """None when the response (its ``fields``) may be stored (rules 1, 2), else the
    reason (for the ``Cache-Status`` ``detail`` and the bypass metric)."""
    if "no-store" in cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if authed and not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return "authorization"
    vary = f.get(b"vary")
    if vary is not None and b"*" in [t.strip() for t in vary.split(b",")]:
        return "vary-star"
    if not store_set_cookie and b"set-cookie" in f:
        return "set-cookie"
    if status not in STORE_STATUS:
        return "status"
    if ttl is None and "public" not in cc:
        return "no-freshness"
    if status not in HEURISTIC_STATUS and ttl is None:
        return "no-freshness"
    return None


def vary_names(f: dict) -> tuple:
    """The lower-case header names ``Vary`` lists, sorted, as bytes."""
    vary = f.get(b"vary")
    if vary is None:
        return ()
    return tuple(sorted({t.strip().lower() for t in vary.split(b",") if t.strip()}))


def initial_age(f: dict, now: float, request_time: float) -> float:
    """The corrected initial age at receipt (RFC 9111 4.2.3)."""
    age = f.get(b"age")
    age = (seconds(age.decode("latin-1")) or 0) if age else 0
    d = http_date(f.get(b"date"))
    apparent = max(0.0, now - d) if d is not None else 0.0
    return max(apparent, age + (now - request_time))


class RequestCC:
    """What a request's Cache-Control asks of the cache (RFC 9111 5.2.1)."""

    __slots__ = ("no_store", "no_cache", "max_age", "min_fresh", "max_stale", "only_if_cached")

    def __init__(self, value: bytes | None, pragma: bytes | None) -> None:
        cc = parse_cc(value)
        self.no_store = "no-store" in cc
        self.no_cache = "no-cache" in cc or (value is None and pragma is not None
                                              and b"no-cache" in pragma.lower())
        self.max_age = seconds(cc.get("max-age"))
        self.min_fresh = seconds(cc.get("min-fresh")) or 0
        ms = cc.get("max-stale", False)
        # max-stale without a value: any staleness is accepted
        self.max_stale = None if ms is False else (float("inf") if ms is None else (seconds(ms) or 0))
        self.only_if_cached = "only-if-cached" in cc


def not_modified(inm: bytes | None, ims: bytes | None, etag: bytes | None, last_modified: bytes | None) -> bool:
    """A request's ``If-None-Match`` / ``If-Modified-Since`` (``inm``, ``ims``) match a
    stored response's validators (RFC 9110 13.1.2, 13.1.3): weak comparison for
    ``If-None-Match``, which wins over ``If-Modified-Since`` when both are sent."""
    if inm is not None:
        if etag is None:
            return False
        if inm.strip() == b"*":
            return True
        want = etag.strip().removeprefix(b"W/")
        return any(t.strip().removeprefix(b"W/") == want for t in inm.split(b","))
    if ims is not None and last_modified is not None:
        a, b = http_date(ims), http_date(last_modified)
        return a is not None and b is not None and b <= a
    return False
