"""Accept-Encoding negotiation (RFC 9110 §12.5.3) (L2).

Rules kept here, in the RFC's order:

1. No Accept-Encoding field: the client states no preference; the gateway sends identity
   (the RFC allows any coding, but clients that send nothing are scripts and probes that
   rarely decode; nginx, Envoy and Traefik answer them uncompressed too).
2. An empty field: identity only.
3. A coding listed with q > 0 is acceptable; with q = 0 it is not.  ``*`` gives its q to
   every coding the field does not name.  ``x-gzip`` is ``gzip`` (§8.4.1.3).  Names are
   case-insensitive.  A q that is not a valid qvalue (``q=abc``, ``q=2``) makes that
   element unacceptable rather than preferred.
4. Identity is acceptable unless ``identity;q=0``, or ``*;q=0`` without an ``identity``
   entry.  Unlisted, it ranks below every listed coding; listed with a q higher than the
   best coding's, it wins.
5. Among the acceptable codings with the highest q, the server's preference decides: the
   order of ``compression.algorithms``.

``Negotiator.choose(value)`` returns ``(coding or None, identity_refused)``.  A worker
sees few distinct Accept-Encoding values (one per browser family), so results are kept
in a dict keyed by the raw value (cleared when it reaches ``CACHE_SIZE``): the usual
request pays one dict lookup.
"""

from __future__ import annotations

import re

CACHE_SIZE = 512
_ALIASES = {"x-gzip": "gzip"}


def parse(value: bytes) -> dict[str, float]:
    """Accept-Encoding value -> {lower-case coding: q}; a repeated coding keeps its lowest q."""
    out: dict[str, float] = {}
    for elem in value.decode("latin-1").split(","):
        name, _sep, params = elem.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        name = _ALIASES.get(name, name)
        q = 1.0
        for p in params.split(";"):
            k, eq, v = p.partition("=")
            if k.strip().lower() == "q" and eq:
                q = _qvalue(v.strip())
        prev = out.get(name)
        out[name] = q if prev is None else min(prev, q)
    return out


_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?").fullmatch


def _qvalue(s: str) -> float:
    """RFC 9110 §12.4.2 qvalue: "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]; invalid -> 0."""
    return float(s) if _QVALUE(s) else 0.0


class Negotiator:
    """Picks the response coding among ``algorithms`` (server preference order)."""

    __slots__ = ("algorithms", "_cache")

    def __init__(self, algorithms) -> None:
        self.algorithms = tuple(algorithms)
        self._cache: dict[bytes, tuple[str | None, bool]] = {}

    def choose(self, value: bytes | None) -> tuple[str | None, bool]:
        """(the coding to use or None for identity, identity refused by the client)."""
        if value is None:
            return None, False
        cache = self._cache
        r = cache.get(value)
        if r is None:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            r = cache[value] = self._choose(value)
        return r

    def _choose(self, value: bytes) -> tuple[str | None, bool]:
        prefs = parse(value)
        star = prefs.get("*")
        best, best_q = None, 0.0
        for alg in self.algorithms:
            q = prefs.get(alg, star if star is not None else 0.0)
            if q > best_q:  # strictly greater: the earlier algorithm wins a tie
                best, best_q = alg, q
        ident = prefs.get("identity")
        refused = ident == 0.0 or (ident is None and star == 0.0)
        if best is not None and ident is not None and ident > best_q:
            best = None
        return best, refused
