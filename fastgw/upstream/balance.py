"""Load balancing: which instance of a service takes a request (L3).

One balancer per service and config snapshot (``runtime.app`` builds it from the
service's *distinct* instances; every route of the service shares it), chosen by
``load_balancing:``:

- ``round_robin`` (default): nginx's *smooth* weighted round-robin.  Its sequence is
  periodic (one period = the sum of the weights after dividing by their gcd), so the
  period is computed once per build into a table and a pick is what a plain cycle costs:
  an index, a modulo, one ``down`` byte.  Weights 5,1,1 give ``a a b a c a a``: the
  heaviest instance never gets a burst of its whole share.  A table is at most
  ``TABLE_CAP`` entries x instances; past that the weights are scaled down (shares stay
  within 1/``TABLE_CAP``).
- ``least_request``: Envoy's power of two choices on *this worker's* in-flight attempts
  (``Instance.requests - Instance.done``, kept by ``pipeline.proxy``): two candidates drawn by weight, the
  one with the lower in-flight/weight wins (ties: the first).
- ``random``: weighted random (a draw into the same table).
- ``ring_hash`` / ``maglev``: consistent hashing of ``hash_key`` (``ip``, ``user`` =
  the verified token's subject, ``path``, ``header:NAME``, ``cookie:NAME``).  Points and
  table entries are placed by the instance's identity (``resilience.identity``'s: service
  and URL, BLAKE2b), keys are hashed with BLAKE2b, never Python's salted ``hash()``: every
  worker and every reload maps a key to the same instance, and removing one of N
  instances moves about 1/N of the keys.  An unusable instance passes the key to the
  next point of the ring (the next table entry for maglev).  A request without the key
  (no header, no cookie, no user) goes round-robin.

Health (``shm.health``): ``down[slot]`` 0 = usable, 1 = unhealthy or ejected, 2 = drained
by an operator.  The fast path reads one byte; anything but 0 takes ``_spread``, a smooth
weighted round-robin over the usable instances computed on the fly (O(instances), only
while one is down).  Panic (Envoy's): with fewer than ``panic`` percent of the
non-drained instances usable, unhealthy ones count as usable again; a drained instance
is never used, not even in panic.

Retries: ``pick_other(tried, x)`` returns a usable instance not in ``tried`` when one
exists; the hashing ones walk on along the ring from the request's key (the same next
instance in every worker), the others spread by weight.

Slow start (``slow_start: DURATION``, the weighted algorithms only): an instance first
seen after a reload or a discovery update (not the initial set of a process), or whose
``down`` byte went back to 0 (seen on the worker tick), has its effective weight ramp
from ``RAMP_FLOOR`` of its weight to all of it, linearly over the duration; the table is
rebuilt on each tick while something ramps.

Sticky sessions (``sticky``): ``Sticky`` wraps a balancer.  The cookie value is the
instance's ``affinity`` token, an HMAC-SHA256 of its identity with ``sticky.secret``
(truncated to 128 bits, base64url): the same on every worker and every gateway host that
shares the secret, and a client cannot turn it into an address of its choosing.  A
request with a token of a usable instance goes there; any other value goes to the
balancer (``middleware.sticky`` re-issues the cookie).

Contract with discovery: ``update(instances)`` rebuilds the tables for a new list of
distinct instances (the caller keeps ``route.instances``/``route.distinct``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from bisect import bisect_right
from math import gcd

from fastgw.clock import monotonic
from fastgw.config.balance import parse_hash_key
from fastgw.http.cookies import cookie_value
from fastgw.shm.health import DRAINED   # a ``down`` byte written by an operator's drain: never used

TABLE_CAP = 250_000  # smooth round-robin table entries x instances, at most
RAMP_FLOOR = 0.1     # slow start begins at this share of the weight
RAMP_STEPS = 100     # table resolution of a ramping weight (percent of the heaviest)
RING_MIN = 1024      # ring_hash points, at least (Envoy's minimum_ring_size)
RING_PER = 160       # ... and per instance
MAGLEV_SIZES = (1021, 2053, 4099, 8191, 16381, 32771, 65537)  # primes; >= 100 x instances
_NEVER_DOWN = bytes(1)
_random = random.random


def instance_key(service: str, url: str) -> int:
    """An instance's identity: ``resilience.identity.instance_key``'s formula (a sibling
    layer: not imported; a unit test keeps the two equal)."""
    h = hashlib.blake2b(f"{service}\0{url}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 1) or 1


def hash64(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def smooth_sequence(weights) -> list[int]:
    """One period of nginx's smooth weighted round-robin over integer weights (indexes):
    each pick adds every weight to its current value, takes the largest (the first on a
    tie) and subtracts the total from it."""
    n, total = len(weights), sum(weights)
    cur = [0] * n
    out = []
    for _ in range(total):
        best = 0
        for i in range(n):
            c = cur[i] = cur[i] + weights[i]
            if c > cur[best]:
                best = i
        cur[best] -= total
        out.append(best)
    return out


def table_weights(weights) -> list[int]:
    """Integer weights for the table: divided by their gcd, scaled down past the cap."""
    ws = [max(1, int(w)) for w in weights]
    g = 0
    for w in ws:
        g = gcd(g, w)
    ws = [w // g for w in ws] if g > 1 else ws
    total = sum(ws)
    if total * len(ws) > TABLE_CAP:
        f = TABLE_CAP / (total * len(ws))
        ws = [max(1, round(w * f)) for w in ws]
    return ws


def affinity_token(secret: str, service: str, url: str) -> bytes:
    mac = hmac.new(str(secret).encode(), f"{service}\0{url}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=")


class Balancer:
    """The shared part: the instances, their weights and slow start, the table, the
    health-aware slow path.  Subclasses define ``pick``."""

    kind = "round_robin"
    __slots__ = ("service", "distinct", "ids", "down", "panic", "on_panic", "seq", "n", "rr",
                 "cur", "slow_start", "ramp", "was_down", "solo")

    def __init__(self, service: str, instances, *, down=_NEVER_DOWN, panic: float = 50.0,
                 slow_start: float | None = None, key=None, now: float | None = None) -> None:
        self.service = service
        self.down = down
        self.panic = panic
        self.on_panic = None
        self.slow_start = slow_start
        self.ramp: dict[int, float] = {}     # identity -> ramp start (monotonic)
        self.rr = -1   # (the first pick takes the table's first entry)
        self.solo = None
        self.distinct = ()
        self.ids = ()
        self._build(tuple(instances), None, now)

    # ------------------------------------------------------------------ building
    def update(self, instances, now: float | None = None, down=None) -> None:
        """A new set of distinct instances (discovery): instances not seen before start
        their slow start; ``down``: the health bytes they are read in, when that changed
        (a set without health slots reads none)."""
        if down is not None:
            self.down = down
        self._build(tuple(dict.fromkeys(instances)), set(self.ids), now)

    def _build(self, insts: tuple, known: set | None, now: float | None) -> None:
        self.distinct = insts
        if self.solo is not False:   # (False: never, a split route's)
            self.solo = None
            self._solo()
        self.ids = tuple(instance_key(i.service, i.url) for i in insts)
        self.was_down = [0] * len(insts)
        self.cur = [0.0] * len(insts)
        if self.slow_start and known is not None:
            t = monotonic() if now is None else now
            for k in self.ids:
                if k not in known:
                    self.ramp[k] = t
        live = set(self.ids)
        self.ramp = {k: t0 for k, t0 in self.ramp.items() if k in live}
        for i in insts:
            i.eff = float(i.weight)
        if self.ramp:
            self._reweigh(monotonic() if now is None else now)
        else:
            self._table()
        self._tables()

    def _table(self) -> None:
        """The smooth round-robin period over the effective weights."""
        insts = self.distinct
        if not insts:
            self.seq, self.n = (), 0
            return
        if self.ramp:
            top = max(i.eff for i in insts) or 1.0
            ws = table_weights([max(1, round(i.eff / top * RAMP_STEPS)) for i in insts])
        else:
            ws = table_weights([i.weight for i in insts])
        self.seq = tuple(insts[k] for k in smooth_sequence(ws))
        self.n = len(self.seq)
        self.rr %= self.n

    def _tables(self) -> None:
        """Hook for the hashing balancers' own tables."""

    def _solo(self) -> None:
        """``solo``: the one instance of a one-instance service, unless drained: the
        engine then takes it without calling ``pick`` (a down one is used anyway: panic)."""
        insts = self.distinct
        if len(insts) == 1 and self.solo is not False:   # (False: a split route's)
            self.solo = None if self.down[insts[0].slot] == DRAINED else insts[0]

    # ------------------------------------------------------------------ slow start
    def tick(self, now: float | None = None) -> None:
        """The worker tick: a drained or undrained single instance; recoveries (``down``
        back to 0) and the ramps of slow start."""
        if len(self.distinct) == 1:
            self._solo()
        if not self.slow_start:
            return
        now = monotonic() if now is None else now
        down, was = self.down, self.was_down
        for k, inst in enumerate(self.distinct):
            d = down[inst.slot]
            if was[k] and not d:
                self.ramp[self.ids[k]] = now
            was[k] = d
        if self.ramp:
            self._reweigh(now)

    def _reweigh(self, now: float) -> None:
        dur = self.slow_start
        for k, inst in enumerate(self.distinct):
            t0 = self.ramp.get(self.ids[k])
            if t0 is None:
                inst.eff = float(inst.weight)
                continue
            f = (now - t0) / dur
            if f >= 1.0:
                del self.ramp[self.ids[k]]
                inst.eff = float(inst.weight)
            else:
                inst.eff = inst.weight * (RAMP_FLOOR + (1.0 - RAMP_FLOOR) * max(0.0, f))
        self._table()

    # ------------------------------------------------------------------ picking
    def pick(self, x):
        """Smooth weighted round-robin (the table); a down instance takes the slow path."""
        try:
            rr = self.rr = (self.rr + 1) % self.n
        except ZeroDivisionError:
            return None
        inst = self.seq[rr]
        if self.down[inst.slot]:   # one byte load from shared memory (shm.health)
            return self._spread(())
        return inst

    def pick_other(self, tried, x=None):
        """An instance for a retry of request ``x``: a usable one not in ``tried`` when one
        exists."""
        return self._spread(tried)

    def in_panic(self) -> bool:
        down = self.down
        up = total = 0
        for i in self.distinct:
            d = down[i.slot]
            if d != DRAINED:
                total += 1
                up += not d
        return up * 100 < self.panic * total

    def _spread(self, tried):
        """Smooth weighted round-robin over the usable instances not in ``tried``, on the
        fly; when every usable one was tried, any other not drained, else the same one."""
        down, cur, insts = self.down, self.cur, self.distinct
        panic = self.in_panic()
        if panic and self.on_panic is not None:
            self.on_panic(self)
        best = -1
        total = 0.0
        for k, inst in enumerate(insts):
            d = down[inst.slot]
            if (d and not (panic and d != DRAINED)) or inst in tried:
                continue
            w = inst.eff
            total += w
            c = cur[k] = cur[k] + w
            if best < 0 or c > cur[best]:
                best = k
        if best >= 0:
            cur[best] -= total
            return insts[best]
        again = None
        for inst in insts:
            if down[inst.slot] != DRAINED:
                if inst not in tried:
                    return inst
                if again is None:
                    again = inst
        return again


class RoundRobin(Balancer):
    __slots__ = ()


class Random(Balancer):
    kind = "random"
    __slots__ = ()

    def pick(self, x):
        try:
            inst = self.seq[int(_random() * self.n)]
        except IndexError:
            return None
        if self.down[inst.slot]:
            return self._spread(())
        return inst


class LeastRequest(Balancer):
    """Power of two choices, weighted (Envoy): lower in flight / ``eff`` wins."""

    kind = "least_request"
    __slots__ = ()

    def pick(self, x):
        seq, n = self.seq, self.n
        try:
            a = seq[int(_random() * n)]
        except IndexError:
            return None
        b = seq[int(_random() * n)]
        for _ in range(3):   # two distinct candidates when the draw allows
            if b is not a:
                break
            b = seq[int(_random() * n)]
        down = self.down
        if down[a.slot]:
            if b is a or down[b.slot]:
                return self._spread(())
            return b
        if b is not a and not down[b.slot] and (b.requests - b.done) * a.eff < (a.requests - a.done) * b.eff:
            return b
        return a


class _Hashing(Balancer):
    """Consistent hashing of a request key; no key: round-robin."""

    __slots__ = ("key_kind", "key_name", "points", "owners")

    def __init__(self, service, instances, *, key=("ip", None), **kw) -> None:
        kind, name = key
        self.key_kind = kind
        self.key_name = None if name is None else name.encode("latin-1")
        self.points = ()
        self.owners = ()
        super().__init__(service, instances, **kw)

    def key_of(self, x) -> bytes | None:
        kind = self.key_kind
        if kind == "header":
            return x.header(self.key_name)
        if kind == "ip":
            return x.client_ip.encode("ascii", "replace")
        if kind == "user":
            u = x.user
            return u.encode("utf-8", "replace") if u else None
        if kind == "path":
            return x.request.path.encode("utf-8", "surrogateescape")
        return cookie_value(x.header(b"cookie"), self.key_name)

    def pick(self, x):
        key = self.key_of(x) if x is not None else None
        if not key:
            return Balancer.pick(self, x)
        owners = self.owners
        if not owners:
            return None
        i = self.index(hash64(key))
        inst = owners[i]
        if self.down[inst.slot]:
            return self._walk(i, 1, ())
        return inst

    def pick_other(self, tried, x=None):
        """A retry goes on along the ring from the key's point: the first usable owner not
        tried yet, so every worker and gateway host sends a key's retries to the same next
        instance (its cache stays warm for that key); no key: as ``Balancer``."""
        key = self.key_of(x) if x is not None else None
        if not key or not self.owners:
            return self._spread(tried)
        return self._walk(self.index(hash64(key)), 0, tried)

    def _walk(self, i: int, start: int, tried):
        """The first usable owner from position ``i + start`` on that is not in ``tried``
        (in panic: the first not drained); none: ``_spread``'s choice."""
        owners, down = self.owners, self.down
        panic = self.in_panic()
        if panic and self.on_panic is not None:
            self.on_panic(self)
        n = len(owners)
        for k in range(start, n):
            inst = owners[(i + k) % n]
            d = down[inst.slot]
            if (not d or (panic and d != DRAINED)) and inst not in tried:
                return inst
        return self._spread(tried)


class RingHash(_Hashing):
    kind = "ring_hash"
    __slots__ = ()

    def _tables(self) -> None:
        insts = self.distinct
        if not insts:
            self.points, self.owners = (), ()
            return
        total = sum(i.weight for i in insts)
        size = max(RING_MIN, RING_PER * len(insts))
        pts = []
        for k, inst in enumerate(insts):
            ident = self.ids[k].to_bytes(8, "little")
            for j in range(max(1, round(size * inst.weight / total))):
                pts.append((hash64(ident + j.to_bytes(4, "little")), self.ids[k], k))
        pts.sort()
        self.points = tuple(p[0] for p in pts)
        self.owners = tuple(insts[p[2]] for p in pts)

    def index(self, h: int) -> int:
        i = bisect_right(self.points, h)
        return 0 if i == len(self.points) else i


class Maglev(_Hashing):
    kind = "maglev"
    __slots__ = ()

    def _tables(self) -> None:
        """Maglev's table (Eisenbud et al., 2016), weighted as Envoy does: each instance
        fills its next preferred free entry in turn, a lighter one skipping turns."""
        insts = self.distinct
        if not insts:
            self.points, self.owners = (), ()
            return
        m = next((p for p in MAGLEV_SIZES if p >= 100 * len(insts)), MAGLEV_SIZES[-1])
        # turns in identity order: the table must not depend on the order of the list
        order = sorted(range(len(insts)), key=lambda k: self.ids[k])
        ids = [self.ids[k] for k in order]
        insts = [insts[k] for k in order]
        offs, skips = [], []
        for k in range(len(insts)):
            ident = ids[k].to_bytes(8, "little")
            offs.append(hash64(ident + b"o") % m)
            skips.append(hash64(ident + b"s") % (m - 1) + 1)
        wmax = max(i.weight for i in insts)
        nxt = [0] * len(insts)
        target = [0.0] * len(insts)
        table = [-1] * m
        filled = 0
        it = 0
        while filled < m:
            it += 1
            for k, inst in enumerate(insts):
                if filled >= m:
                    break
                w = inst.weight / wmax
                if it * w < target[k]:
                    continue
                target[k] += 1.0
                off, skip, j = offs[k], skips[k], nxt[k]
                c = (off + skip * j) % m
                while table[c] >= 0:
                    j += 1
                    c = (off + skip * j) % m
                table[c] = k
                nxt[k] = j + 1
                filled += 1
        self.owners = tuple(insts[k] for k in table)
        self.points = (m,)

    def index(self, h: int) -> int:
        return h % self.points[0]


class Sticky:
    """``sticky``: a valid affinity cookie of a usable instance wins; else ``inner``."""

    __slots__ = ("inner", "name", "secret", "tokens")

    def __init__(self, inner: Balancer, cfg) -> None:
        self.inner = inner
        self.name = cfg.cookie.encode("latin-1")
        self.secret = cfg.secret
        self._tokens()

    def _tokens(self) -> None:
        tokens = {}
        for inst in self.inner.distinct:
            inst.affinity = affinity_token(self.secret, inst.service, inst.url)
            tokens[inst.affinity] = inst
        self.tokens = tokens

    def pick(self, x):
        if x is not None:
            inst = self.tokens.get(cookie_value(x.header(b"cookie"), self.name))
            if inst is not None and not self.inner.down[inst.slot]:
                return inst
        return self.inner.pick(x)

    def pick_other(self, tried, x=None):
        return self.inner.pick_other(tried, x)

    def update(self, instances, now: float | None = None, down=None) -> None:
        self.inner.update(instances, now, down)
        self._tokens()

    def tick(self, now: float | None = None) -> None:
        self.inner.tick(now)

    @property
    def on_panic(self):
        return self.inner.on_panic

    @on_panic.setter
    def on_panic(self, fn) -> None:
        self.inner.on_panic = fn

    def __getattr__(self, name):   # distinct, ids, down, panic, ramp, kind ...: the inner's
        return getattr(self.inner, name)


KINDS = {"round_robin": RoundRobin, "least_request": LeastRequest, "random": Random,
         "ring_hash": RingHash, "maglev": Maglev}


def build(service: str, svc_cfg, instances, *, down=_NEVER_DOWN, old=None, first: bool = True):
    """The balancer of a service (``svc_cfg``: its ``ServiceConfig``).  ``old``: the
    service's balancer in the snapshot being replaced (its ramps continue; instances it
    did not have start one); ``first``: the process's initial set (nothing ramps)."""
    cls = KINDS[svc_cfg.load_balancing]
    kw = {"down": down, "panic": float(svc_cfg.panic_threshold),
          "slow_start": float(svc_cfg.slow_start) if svc_cfg.slow_start else None}
    if svc_cfg.hash_key is not None and cls in (RingHash, Maglev):
        kw["key"] = parse_hash_key(svc_cfg.hash_key)
    lb = cls(service, (), **kw)
    if isinstance(old, Sticky):
        old = old.inner
    known = None if first else set()
    if old is not None:
        known = set(old.ids)
        lb.ramp = dict(old.ramp)
    lb._build(tuple(dict.fromkeys(instances)), known, None)
    if svc_cfg.sticky is not None:
        return Sticky(lb, svc_cfg.sticky)
    return lb
