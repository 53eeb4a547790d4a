"""Traffic splitting: which side of a route's ``split`` takes a request (L3).

Owns the choice of side (the schema and its rules are in ``fastgw.config.split``).
``Splitter(cfg, instances_by_service)`` is built once per config snapshot; ``side(ctx)``
returns the index of the side for one request, ``pick_in(i, down, panic, tried, on_panic)``
the instance to use on side ``i``: round-robin over that side's instances, with the
health rules of ``runtime.app.Route.pick`` applied *within the side*:

- an instance whose ``down[slot]`` byte (``shm.health``) is non-zero is skipped;
- panic: when fewer than ``panic`` percent of the side's instances are up, down ones are
  used again, except a *drained* one (``down`` = 2, an operator's decision): never used;
- a retry (``tried`` not empty) goes to another instance of the same side when one is
  usable, else to any not drained one of that side (``side_of`` finds the side of the
  first attempt): a split decides which service answers, and a retry must not change it.

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
from fastgw.shm.health import DRAINED   # a ``down`` byte an operator set: never used, even in panic

_OFF = frozenset({b"", b"0", b"false", b"no", b"off"})




class _Side:
    """What the panic callback gets for a side (it reads ``.service``, as of a route)."""

    __slots__ = ("service",)

    def __init__(self, service: str) -> None:
        self.service = service


class Splitter:
    __slots__ = ("services", "weights", "_cum", "_total", "_pools", "_rr", "_canary",
                 "_o_header", "_o_cookie", "_kind", "_kname", "_distinct", "_sides")

    def __init__(self, cfg, pools_by_service: dict) -> None:
        self.services = tuple(s.service for s in cfg.to)
        self.weights = tuple(float(s.weight) for s in cfg.to)
        cum, t = [], 0.0
        for w in self.weights:
            t += w
            cum.append(t)
        self._cum = tuple(cum)
        self._total = t
        self._pools = tuple(tuple(pools_by_service.get(s, ())) for s in self.services)
        self._rr = [0] * len(self.services)
        self._distinct = tuple(tuple(dict.fromkeys(p)) for p in self._pools)
        self._sides = tuple(_Side(sv) for sv in self.services)
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

    def side_of(self, inst) -> int:
        """The side whose instances hold ``inst`` (0 if none does)."""
        for i, insts in enumerate(self._distinct):
            if inst in insts:
                return i
        return 0

    def pick_in(self, i: int, down, panic: float, tried=(), on_panic=None):
        """An instance of side ``i`` (module doc), or None when the side has none usable."""
        insts = self._pools[i]
        n = len(insts)
        if not n:
            return None
        rr = self._rr[i] = (self._rr[i] + 1) % n
        inst = insts[rr]
        if not down[inst.slot] and inst not in tried:
            return inst   # the usual case: one byte load from shared memory
        distinct = self._distinct[i]
        up = sum(1 for d in distinct if not down[d.slot])
        in_panic = up * 100 < panic * len(distinct)
        if in_panic and on_panic is not None:
            on_panic(self._sides[i])
        for k in range(n):
            inst = insts[(rr + k) % n]
            d = down[inst.slot]
            if (not d or (in_panic and d != DRAINED)) and inst not in tried:
                return inst
        for k in range(n):   # every usable one was tried: another one, else the same again
            inst = insts[(rr + k) % n]
            if down[inst.slot] != DRAINED and inst not in tried:
                return inst
        for k in range(n):
            inst = insts[(rr + k) % n]
            if down[inst.slot] != DRAINED:
                return inst
        return None

    def pick(self, ctx, down=bytes(1), panic: float = 50.0):
        """The instance for this request on its side (``pick_in`` without a retry)."""
        return self.pick_in(self.side(ctx), down, panic)
