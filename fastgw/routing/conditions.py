"""Route conditions: a ``match`` object compiled into tests, and the request view they read (L3).

Owns the meaning of ``match`` (grammar in ``fastgw.config.match``).  ``compile_match(m,
versioning)`` turns one ``match`` object into ``(test, count)``: ``test(view) -> bool``
is a conjunction of leaf tests, each a closure over precomputed data (lower-case header
name bytes, the expected value, a compiled RE2 regex); ``any``/``all``/``not`` nest them.
``count`` is the number of leaves, the precedence weight of the route (more first).

``RequestView`` is what the tests read: built by the router only when a candidate route
has conditions, once per request, and lazy: the query string is parsed (``parse_qsl``)
only if a query condition is evaluated, the ``Cookie`` header only for a cookie
condition, the version only for a version condition.

Leaf semantics:
- headers: exact bytes compare; ``"*"`` = present; ``{absent: true}``; ``{regex}`` =
  a match anywhere in the value bytes (read as UTF-8 by RE2), so anchor with ``^``/``$``
  when needed.  A
  repeated header is seen as its last value (``Ctx.header``).
- query: a condition holds if ANY occurrence of the key satisfies it (values decoded);
  absent = the key does not occur.
- cookies: the first ``name=value`` pair of that name in the ``Cookie`` header(s).
- version: the request's version (``request_version``) equals the label.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import re2
from re2 import _re2  # the binding's C++ objects (see Re2)

from fastgw.config.match import re2_compile

_UNSET = object()
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH


class Re2:
    """A compiled RE2 regex called through the binding's C++ object (``re2._re2.RE2``).

    ``google-re2``'s Python-level ``search`` re-encodes the text and maps every span back
    to str offsets in Python: ~10x the cost of the match itself on a short header (measured:
    ~49 us against ~6 us per call under load).  Conditions only ask "is there a match", on
    bytes they already have, so they call ``Match`` directly; regex paths are ASCII (the
    normalised path), where byte offsets are character offsets.
    """

    __slots__ = ("pattern", "_match", "_names")

    def __init__(self, pattern: str) -> None:
        re2_compile(pattern)  # validation, with RE2's message (config.match)
        opts = re2.Options()
        opts.log_errors = False
        low = _re2.RE2(pattern.encode("utf-8"), opts)
        self.pattern = pattern
        self._match = low.Match
        self._names = tuple((n.decode("utf-8"), i) for n, i in low.NamedCapturingGroups())

    @property
    def groups(self) -> int:
        return len(self._names)

    def search(self, b: bytes) -> bool:
        """Whether the regex matches somewhere in ``b``."""
        return self._match(_UNANCHORED, b, 0, len(b))[0][0] >= 0

    def fullmatch_path(self, path: str) -> dict[str, str] | None:
        """Named groups of a whole-path match (``{}`` without groups), or None."""
        b = path.encode("latin-1")
        spans = self._match(_BOTH, b, 0, len(b))
        if spans[0][0] < 0:
            return None
        return {n: path[spans[i][0]:spans[i][1]] for n, i in self._names if spans[i][0] >= 0}



def version_norm(s: str) -> str:
    """``" V2 "`` -> ``"2"``: how both sides of a version comparison are written."""
    s = s.strip().lower()
    return s[1:] if s[:1] == "v" and len(s) > 1 else s


def accept_version(accept: str) -> str | None:
    """The version named in an Accept header: ``application/vnd.arx.v2+json`` (a
    ``.v<digit>...`` last dot-part of a ``vnd.`` subtype) or a ``version=2`` parameter."""
    for part in accept.split(","):
        mt, _, params = part.partition(";")
        sub = mt.strip().lower().partition("/")[2]
        if sub.startswith("vnd."):
            last = sub.partition("+")[0].rpartition(".")[2]
            if len(last) > 1 and last[0] == "v" and last[1].isdigit():
                return last[1:]
        if params:
            for p in params.split(";"):
                k, _, val = p.partition("=")
                if k.strip().lower() == "version" and val.strip().strip('"'):
                    return version_norm(val.strip().strip('"'))
    return None


class Versioning:
    """``gateway.versioning`` precomputed: where a request's version comes from."""

    __slots__ = ("header", "media_type", "default")

    def __init__(self, cfg) -> None:
        h = cfg.header
        self.header = h.lower().encode("latin-1") if h else None
        self.media_type = bool(cfg.media_type)
        d = cfg.default
        self.default = version_norm(d) if d else None

    def of(self, headers_get) -> str | None:
        """The request's version: header, else Accept (media_type), else the default."""
        if self.header is not None:
            v = headers_get(self.header)
            if v:
                return version_norm(v.decode("latin-1"))
        if self.media_type:
            a = headers_get(b"accept")
            if a:
                v = accept_version(a.decode("latin-1"))
                if v:
                    return v
        return self.default


class RequestView:
    """What conditions read of one request (lazy, see the module doc)."""

    __slots__ = ("header", "_raw_query", "_query", "_cookies", "_version", "_versioning")

    def __init__(self, headers_get, query: bytes, versioning: Versioning | None) -> None:
        self.header = headers_get
        self._raw_query = query
        self._query = None
        self._cookies = None
        self._version = _UNSET
        self._versioning = versioning

    def query(self) -> dict[str, list[str]]:
        q = self._query
        if q is None:
            q = self._query = {}
            for k, v in parse_qsl(self._raw_query.decode("utf-8", "replace"), keep_blank_values=True):
                q.setdefault(k, []).append(v)
        return q

    def cookies(self) -> dict[str, str]:
        c = self._cookies
        if c is None:
            c = self._cookies = {}
            raw = self.header(b"cookie")
            if raw:
                for pair in raw.decode("latin-1").split(";"):
                    k, eq, v = pair.partition("=")
                    k = k.strip()
                    if eq and k and k not in c:
                        v = v.strip()
                        c[k] = v[1:-1] if len(v) > 1 and v[0] == v[-1] == '"' else v
        return c

    def version(self) -> str | None:
        v = self._version
        if v is _UNSET:
            vs = self._versioning
            v = self._version = vs.of(self.header) if vs is not None else None
        return v


def _rule(v):
    """(kind, arg) of a match value: ("eq", str) | ("present",) | ("absent",) | ("regex", rx)."""
    if isinstance(v, str):
        return ("present", None) if v == "*" else ("eq", v)
    if v.absent:  # a ValueRule: regex or absent
        return ("absent", None)
    return ("regex", Re2(v.regex))


def _header_test(name: str, v):
    lname = name.lower().encode("latin-1")
    kind, arg = _rule(v)
    if kind == "eq":
        want = arg.encode("latin-1")
        return lambda r: r.header(lname) == want
    if kind == "present":
        return lambda r: r.header(lname) is not None
    if kind == "absent":
        return lambda r: r.header(lname) is None
    search = arg.search

    def regex(r) -> bool:
        got = r.header(lname)
        return got is not None and search(got)
    return regex


def _query_test(name: str, v):
    kind, arg = _rule(v)
    if kind == "eq":
        return lambda r: arg in r.query().get(name, ())
    if kind == "present":
        return lambda r: name in r.query()
    if kind == "absent":
        return lambda r: name not in r.query()
    search = arg.search
    return lambda r: any(search(x.encode("utf-8")) for x in r.query().get(name, ()))


def _cookie_test(name: str, v):
    kind, arg = _rule(v)
    if kind == "eq":
        return lambda r: r.cookies().get(name) == arg
    if kind == "present":
        return lambda r: name in r.cookies()
    if kind == "absent":
        return lambda r: name not in r.cookies()
    search = arg.search

    def regex(r) -> bool:
        got = r.cookies().get(name)
        return got is not None and search(got.encode("latin-1"))
    return regex


def _tests(m) -> list:
    # ``m`` is a MatchConfig from the loader, or a duck-typed stand-in with only some of
    # its fields (tests/routing/test_router.py, bench/micro): missing fields read as empty
    out = []
    for k, v in sorted((getattr(m, "headers", None) or {}).items(), key=lambda kv: kv[0].lower()):
        out.append(_header_test(k, v))
    for k, v in sorted((getattr(m, "query", None) or {}).items()):
        out.append(_query_test(k, v))
    for k, v in sorted((getattr(m, "cookies", None) or {}).items()):
        out.append(_cookie_test(k, v))
    ver = getattr(m, "version", None)
    if ver is not None:
        want = version_norm(ver)
        out.append(lambda r: r.version() == want)
    for sub in getattr(m, "all", None) or ():
        out.extend(_tests(sub))
    anys = [_conj(_tests(sub)) for sub in getattr(m, "any", None) or ()]
    if anys:
        out.append(lambda r: any(t(r) for t in anys))
    neg = getattr(m, "not_", None)
    if neg is not None:
        t = _conj(_tests(neg))
        out.append(lambda r: not t(r))
    return out


def _conj(tests: list):
    if len(tests) == 1:
        return tests[0]
    tup = tuple(tests)
    return lambda r: all(t(r) for t in tup)


def count(m) -> int:
    """Number of leaf conditions in ``m`` (see ``fastgw.config.match.MatchConfig.count``)."""
    if m is None:
        return 0
    n = sum(len(getattr(m, k, None) or {}) for k in ("headers", "query", "cookies"))
    n += getattr(m, "version", None) is not None
    for key in ("any", "all"):
        n += sum(count(sub) for sub in getattr(m, key, None) or ())
    return n + count(getattr(m, "not_", None))


def compile_match(m):
    """``(test or None, count)`` for a route's ``match`` (None: no conditions)."""
    tests = _tests(m) if m is not None else []
    if not tests:
        return None, 0
    return _conj(tests), count(m)
