"""Traffic splitting: which side of a route's ``split`` takes a request (L3).

Owns the choice of side (the schema and its rules are in ``fastgw.config.split``).
``Splitter(cfg)`` is built once per config snapshot; ``side(ctx)`` returns the index of
the side for one request.  The instance on that side is the side's service's own
balancer's pick (``runtime.app.SplitRoute``): its ``load_balancing``, weights, slow
start, health, panic threshold and drains, as for the service's own routes; a retry stays
on the side of the first attempt (a split decides which service answers, and a retry
must not change it).

Order of decision: the override (header or cookie set: the canary) first, then the hash
of ``hash_key`` if configured (a stable hash, BLAKE2b of the key: the same side in every
worker and after restarts; Python's ``hash()`` is salted per process), else a uniform
random draw.  Either number in [0, total weight) is mapped to a side through the
cumulative weights (``bisect``).  Per request: at most one header lookup, one hash of a
short string or one ``random()``, and one bisect.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from hashlib import blake2b

from fastgw.http.cookies import cookie_value

_OFF = frozenset({b"", b"0", b"false", b"no", b"off"})


class Splitter:
    __slots__ = ("services", "weights", "_cum", "_total", "_canary",
                 "_o_header", "_o_cookie", "_kind", "_kname")

    def __init__(self, cfg) -> None:
        self.services = tuple(s.service for s in cfg.to)
        self.weights = tuple(float(s.weight) for s in cfg.to)
        cum, t = [], 0.0
        for w in self.weights:
            t += w
            cum.append(t)
        self._cum = tuple(cum)
        self._total = t
        self._canary = self.services.index(cfg.canary())
        o = cfg.override
        self._o_header = o.header.lower().encode("latin-1") if o is not None and o.header else None
        self._o_cookie = o.cookie.encode("latin-1") if o is not None and o.cookie else None
        k = cfg.hash_key
        if k is None:
            self._kind, self._kname = None, None
        elif k in ("ip", "user"):
            self._kind, self._kname = k, None
        else:
            kind, _, name = k.partition(":")
            self._kind, self._kname = kind, name.lower().encode("latin-1") if kind == "header" else name.encode("latin-1")

    def _at(self, x: float) -> int:
        i = bisect_right(self._cum, x)
        n = len(self._cum)
        while i < n and self.weights[i] == 0:  # (x == a boundary shared with an empty side)
            i += 1
        return i if i < n else n - 1

    def side(self, ctx) -> int:
        """Index of the side for this request (module doc)."""
        hget = ctx.header
        if self._o_header is not None and hget(self._o_header) not in (None, *_OFF):
            return self._canary
        if self._o_cookie is not None:
            c = cookie_value(hget(b"cookie"), self._o_cookie, unquote=False)
            if c is not None and c.lower() not in _OFF:
                return self._canary
        kind = self._kind
        if kind is None:
            return self._at(random.random() * self._total)
        if kind == "user":
            key = ctx.user.encode("utf-8", "replace") if ctx.user else None
        elif kind == "header":
            key = hget(self._kname)
        elif kind == "cookie":
            key = cookie_value(hget(b"cookie"), self._kname, unquote=False)
        else:
            key = None
        if not key:  # no key (or kind "ip"): the client address
            key = ctx.client_ip.encode("ascii", "replace")
        h = int.from_bytes(blake2b(key, digest_size=8).digest(), "big")
        return self._at(h / 18446744073709551616.0 * self._total)
