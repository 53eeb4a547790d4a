"""Deciding one request against a set of limits (L4 helper of the rate-limit middlewares).

Three objects, by lifetime:

- ``Limiter``: one per worker, kept in ``deps.state`` so it survives reloads.  It owns the
  GCRA table (``deps.shm.ratelimit`` under the supervisor; without one, a process-local
  region created once), the clock (``time.monotonic_ns``, the same in every process;
  tests replace it), the Redis backends by URL, and one timer that publishes the
  table's gauges and counters (``PUBLISH_EVERY``).
- ``Limit`` / ``LimitSet``: built per config.  A ``Limit`` is one budget definition (name,
  numbers, backend, key function, its metric cells, its header prefixes); a ``LimitSet``
  is the tuple of limits one kind of request must pass, with everything precomputed
  (which are in memory and which in Redis, the ``RateLimit-Policy`` value).
- ``Enforcer``: one per config, the options (dry run, headers, on_error) and the decision
  functions ``check`` (memory only, synchronous) and ``check_async`` (with Redis).

Rules:

1. All or nothing: a request passes only if every limit of its set allows it; a refused
   request consumes nothing anywhere (``RateTable.check_all``; the Redis script).
2. Mixed sets (memory and Redis): the memory limits are peeked first (a refusal there costs
   no round trip), then the Redis limits run atomically, then the memory limits are
   charged.  The one inexact case: a memory limit that emptied during the Redis round trip
   refuses a request whose Redis budget was already spent (at most the requests in flight
   on that key).
3. Redis unavailable: ``on_error: open`` skips the Redis limits (memory limits still
   apply), ``closed`` answers 503; ``dry_run`` never refuses, so it behaves as open.
   Either way every Redis limit of the set counts a ``backend_error`` decision.
4. ``dry_run``: the state evolves as if enforcing (refused requests consume nothing), the
   decisions are counted as ``dry_run_limited``, the request goes on, flagged
   ``ratelimit_dry_run`` in the access log.

Metrics (``fastgw_ratelimit_decisions_total{limit,result}``): an allowed request counts
``allowed`` once per limit of its set; a refused one counts ``limited`` (or
``dry_run_limited``) for each limit that refused it.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from fastgw.config.ratelimit_section import TABLE_SLOTS
from fastgw.obs.metrics import series_key
from fastgw.ratelimit import headers as H
from fastgw.ratelimit.keys import MEMO_MAX
from fastgw.ratelimit.redis_backend import BackendDown, RedisBackend
from fastgw.shm import locks as _locks
from fastgw.shm.ratelimit import admit, decide, decisions, pair_gate, spec  # noqa: F401 (admit, decide: for the middlewares)

M_DECISIONS = "fastgw_ratelimit_decisions_total"
M_SLOTS = "fastgw_ratelimit_table_slots"
M_OCCUPIED = "fastgw_ratelimit_table_occupied_slots"
M_EVICTIONS = "fastgw_ratelimit_table_evictions_total"
M_RECLAIMS = "fastgw_ratelimit_table_reclaims_total"
M_LOCK_RECOVERIES = "fastgw_ratelimit_lock_recoveries_total"
M_LOCK_TIMEOUTS = "fastgw_ratelimit_lock_timeouts_total"
RESULTS = ("allowed", "limited", "dry_run_limited", "backend_error")
PUBLISH_EVERY = 2.0             # seconds between two publications of the table metrics
SAMPLE_BUCKETS = 1024           # buckets read per occupancy sample (8192 slots)
SAMPLE_WINDOW = 8               # samples the occupancy estimate is scaled from
STATE_KEY = "fastgw.ratelimit"
RETIRE_GRACE = 30.0            # seconds a retired config's Redis pool stays open
_log = logging.getLogger("fastgw")
# the table's per-process counters, published as deltas: (metric, RateTable attribute);
# lock timeouts last (publish() also logs them)
_COUNTED = ((M_EVICTIONS, "evicted"), (M_RECLAIMS, "reclaimed"), (M_LOCK_RECOVERIES, "recovered"),
            (M_LOCK_TIMEOUTS, "lock_timeouts"))


class _NullStore:
    """Metric store for a limiter without a metrics registry (``--check``, unit tests)."""

    def cell(self, key: str) -> int:
        return 0

    def add(self, i: int, v: float = 1) -> None:
        return None

    def set(self, i: int, v: float) -> None:
        return None


class Limiter:
    """Per worker: the table, the clock, the Redis backends, the metrics timer."""

    def __init__(self, deps, table_slots: int) -> None:
        # deps: the runtime's Deps, a test's stand-in, or None: not a config Struct
        shm = getattr(deps, "shm", None)
        self.region = None
        if shm is not None:
            self.table = shm.ratelimit
        else:   # single process: one local region, kept for the life of the process
            from fastgw.shm import Region
            self.region = Region.create(1, metrics_series=8, table_slots=table_slots, health_slots=1,
                                        name="fastgw-ratelimit")
            self.table = self.region.ratelimit
        self.clock = time.monotonic_ns
        self.metrics = getattr(deps, "metrics", None)
        self.store = self.metrics.store if self.metrics is not None else _NullStore()
        # the occupancy gauge describes the one shared table: one process publishes it
        self.owns_gauges = shm is None or getattr(deps, "worker_id", 0) == 0
        self.backends: dict[tuple[str, float], RedisBackend] = {}
        self.loop = None
        self._timer = None
        self._published = None   # the first publish exports every counter, at 0 if need be
        self._sample_at = 0
        self._samples: deque = deque(maxlen=1)

    def cell(self, name: str, labels: tuple) -> int:
        return self.store.cell(series_key(name, labels))

    def backend(self, url: str, timeout: float) -> RedisBackend:
        k = (url, timeout)
        b = self.backends.get(k)
        if b is None:
            b = self.backends[k] = RedisBackend(url, timeout)
            cell, add = self.cell("fastgw_redis_errors_total", (("backend", b.label),)), self.store.add
            b.on_failure = lambda: add(cell)
        return b

    def retire_backend(self, b: RedisBackend) -> None:
        """Close ``b`` (no config uses it any more) after a grace period for the requests
        of the retired config still waiting on it."""
        k = (b.url, b.timeout)
        if self.backends.get(k) is b:
            del self.backends[k]
        if self.loop is not None:
            self.loop.call_later(RETIRE_GRACE, lambda: self.loop.create_task(b.aclose()))

    # -- metrics tick ---------------------------------------------------------------------
    def start(self, loop) -> None:
        """Start the publication timer (once per worker; needs the worker's loop)."""
        if loop is None or self._timer is not None:
            return
        self.loop = loop
        self._timer = loop.call_later(PUBLISH_EVERY, self._tick)

    def _tick(self) -> None:
        try:
            self.publish()
        finally:
            self._timer = self.loop.call_later(PUBLISH_EVERY, self._tick)

    def publish(self) -> None:
        """The table counters of ``_COUNTED`` since the last call (this process's), and, in the process
        that owns the gauges, the table size and its estimated occupancy."""
        m = self.metrics
        if m is None:
            return
        t = self.table
        now = tuple(getattr(t, attr) for _name, attr in _COUNTED)
        first = self._published is None
        published = (0,) * len(_COUNTED) if first else self._published
        for (name, _attr), v, was in zip(_COUNTED, now, published):
            # (a counter born at 0 rather than at its first event: an alert's increase()
            # sees that first event, deploy/prometheus/alerts.yml)
            if v != was or first:
                m.inc(name, (), v - was)
        timeouts = now[-1] - published[-1]
        if timeouts:
            _log.warning("rate limit: %d decisions taken without charging: a stripe lock stayed busy "
                         "over %.1f s (a worker stopped inside it?)", timeouts, _locks.WAIT)
        self._published = now
        if self.owns_gauges:
            m.set(M_SLOTS, (), t.slots)
            m.set(M_OCCUPIED, (), self.occupancy())

    def occupancy(self, now: int | None = None) -> int:
        """Slots holding a key that is still refilling.

        Exact up to ``SAMPLE_BUCKETS`` buckets.  Above, ``RateTable.occupancy`` would scan
        every slot (8 ms at 65536 slots, 3 s at 2^24: too long for a worker's loop), so
        each call reads every k-th bucket from a rotating offset (``SAMPLE_BUCKETS``
        buckets, about 0.7 ms) and the estimate is scaled from the last ``SAMPLE_WINDOW``
        samples (a full, at most 8-calls-old pass when k <= 8; the first call fills the
        window).  Buckets are chosen by a keyed hash, so any subset is a fair sample."""
        t = self.table
        now = self.clock() if now is None else now
        nb = t.buckets
        if nb <= SAMPLE_BUCKETS:
            return t.occupancy(now)
        k = nb // SAMPLE_BUCKETS
        window = min(k, SAMPLE_WINDOW)
        samples = self._samples
        if samples.maxlen != window:
            samples = self._samples = deque(maxlen=window)
        for _ in range(window if not samples else 1):
            samples.append(t.live(now, self._sample_at % k, k, SAMPLE_BUCKETS))
            self._sample_at += 1
        return sum(samples) * nb // (len(samples) * SAMPLE_BUCKETS)


def limiter(deps, table_slots: int = TABLE_SLOTS) -> Limiter:
    """The worker's limiter (created on first use, then shared by every config)."""
    st = deps.state
    lim = st.get(STATE_KEY)
    if lim is None:
        lim = st[STATE_KEY] = Limiter(deps, table_slots)
    lim.start(getattr(deps, "loop", None))
    return lim


class Limit:
    """One budget definition of a config."""

    __slots__ = ("name", "rate", "burst", "spec", "redis", "key", "policy_item", "rl_head", "burst_b", "cells",
                 "_lim")

    def __init__(self, name: str, rate: float, burst: int, key, redis: bool, lim: Limiter) -> None:
        self.name = name
        self.rate = float(rate)
        self.burst = int(burst)
        self.spec = spec(self.rate, self.burst)     # (T, tau) for the table
        self.redis = redis
        self.key = key                  # fn(ctx) -> bytes
        self.policy_item = H.policy_item(name, self.rate, self.burst)
        self.rl_head = b'"%s";r=' % name.encode()
        self.burst_b = b"%d" % self.burst
        # metric cells by result, registered on first use: a config with many rules must
        # not fill the worker's metric area with series that never move
        self.cells: list = [None] * len(RESULTS)
        self._lim = lim

    def cell(self, which: int) -> int:
        c = self.cells[which]
        if c is None:
            c = self.cells[which] = self._lim.cell(M_DECISIONS, (("limit", self.name), ("result", RESULTS[which])))
        return c

    def __repr__(self) -> str:
        return f"Limit({self.name!r}, {self.rate:g}/s, burst {self.burst}{', redis' if self.redis else ''})"


ALLOWED, LIMITED, DRY_LIMITED, BACKEND_ERROR = range(4)


class LimitSet:
    """The limits one kind of request must all pass, with what is precomputed for them."""

    __slots__ = ("limits", "keys", "specs", "gate", "allowed_cells", "mem", "red", "policy", "red_specs",
                 "mem_specs", "mem_only", "by_user", "memo")

    def __init__(self, limits) -> None:
        self.limits = tuple(limits)
        self.keys = tuple(lim.key for lim in self.limits)
        # When every key depends on nothing but the client address (``fn.by``: "ip" or
        # "") or nothing but the verified subject ("user" or ""), a request's table
        # slots are memoised per address / subject (``memo``, bounded): a repeat client
        # costs one lookup instead of a key function per limit and a slot lookup per key
        # (a Slot is a pure function of the key: a memoised one never goes stale).
        bys = {getattr(k, "by", None) for k in self.keys}
        self.by_user = "user" in bys
        self.memo: dict | None = {} if self.limits and None not in bys and not {"user", "ip"} <= bys else None
        self.specs = tuple(lim.spec for lim in self.limits)
        self.gate = pair_gate(self.specs)   # (``RateTable.take_pair``: two limits)
        self.allowed_cells: tuple[int, ...] | None = None      # see allowed_cells_now()
        self.mem = tuple(i for i, lim in enumerate(self.limits) if not lim.redis)
        self.red = tuple(i for i, lim in enumerate(self.limits) if lim.redis)
        self.policy = b", ".join(lim.policy_item for lim in self.limits)
        self.red_specs = [(self.limits[i].rate, self.limits[i].burst) for i in self.red]
        self.mem_specs = tuple(self.specs[i] for i in self.mem)
        # what is reported when Redis cannot answer and fails open
        self.mem_only = LimitSet([self.limits[i] for i in self.mem]) if self.red and self.mem else None

    def allowed_cells_now(self) -> tuple[int, ...]:
        """The ``allowed`` metric cell of every limit, registered on the set's first allowed
        request (a set that is never allowed registers none)."""
        cells = self.allowed_cells
        if cells is None:
            cells = self.allowed_cells = tuple(lim.cell(ALLOWED) for lim in self.limits)
        return cells

    def allowed_counter(self, metrics) -> int:
        """One accumulator of ``metrics`` for every limit's ``allowed`` cell
        (``Metrics.counter``): what a middleware's fast path counts an allowed request
        in, published on the tick."""
        return metrics.counter(*self.allowed_cells_now())

    def __repr__(self) -> str:
        return f"LimitSet{self.limits!r}"


class Enforcer:
    """The rate-limit options of one config and the decision functions."""

    def __init__(self, lim: Limiter, *, dry_run: bool, fields: H.Fields, on_error: str = "open",
                 backend: RedisBackend | None = None) -> None:
        self.lim = lim
        self.table = lim.table
        self.add = lim.store.add
        # the store's counter cells, written in place by an allowed request (obs.metrics'
        # hot-path API); a store without them (``_NullStore``, tests) gets ``add``
        self.ints = getattr(lim.store, "ints", None)
        self.dry_run = dry_run
        self.fields = fields
        self.on_allowed = fields.on_allowed
        self.fail_closed = on_error == "closed" and not dry_run
        self.backend = backend
        self.fallback_cell = lim.cell("fastgw_ratelimit_redis_fallback_total",
                                      (("mode", "closed" if self.fail_closed else "open"),))

    # -- memory only ------------------------------------------------------------------
    def check(self, ctx, ls: LimitSet):
        """None (go on) or the 429 reply, for a set of memory limits.

        The hot path of every limited request: the decisions (four numbers per limit) are
        only built when a reply carries them (``on_allowed`` fields, a refusal)."""
        memo = ls.memo
        rec = None
        if memo is not None:
            who = ctx.user if ls.by_user else ctx.client_ip
            if who:     # (no verified subject: the user keys fall back to the address)
                rec = memo.get(who)
                if rec is None:
                    rec = self._memo_slots(ctx, ls, who)
        if rec is not None:
            now = self.lim.clock()
            pair, slots = rec
            if pair is not None and not self.on_allowed:    # the usual two-limit set: one straight decision
                tats = self.table.take_pair(pair, ls.gate, now)
                ok = tats is None
            else:
                ok, tats = self.table.take_slots(slots, ls.specs, now)
        else:
            kf = ls.keys
            # unrolled for the usual sizes (a list comprehension costs a call per request)
            if len(kf) == 2:
                keys = (kf[0](ctx), kf[1](ctx))
            elif len(kf) == 1:
                keys = (kf[0](ctx),)
            else:
                keys = [f(ctx) for f in kf]
            slots = list(map(self.table.slot, keys))
            now = self.lim.clock()
            ok, tats = self.table.take_slots(slots, ls.specs, now)
        if ok:
            ints = self.ints
            if ints is not None:
                for c in ls.allowed_cells or ls.allowed_cells_now():
                    ints[c] += 1
            else:
                add = self.add
                for c in ls.allowed_cells or ls.allowed_cells_now():
                    add(c)
            if self.on_allowed:
                for n, v in self.fields.build(ls, decisions(tats, ls.specs, now)):
                    ctx.add_response_header(n, v)
            return None
        return self.refused(ctx, ls, decisions(tats, ls.specs, now))

    def _memo_slots(self, ctx, ls: LimitSet, who) -> tuple:
        """``(pair, slots)`` of ``ls``'s keys for this client (``LimitSet.memo``), computed
        once: the slots, and for a set of two limits on two keys their
        ``RateTable.pair()`` record (else None)."""
        t = self.table
        slots = tuple(map(t.slot, [f(ctx) for f in ls.keys]))
        rec = (t.pair(*slots) if len(slots) == 2 and ls.gate is not None else None, slots)
        memo = ls.memo
        if len(memo) >= MEMO_MAX:
            memo.clear()
        memo[who] = rec
        return rec

    def allowed(self, ctx, ls: LimitSet, ds) -> None:
        add = self.add
        for c in ls.allowed_cells or ls.allowed_cells_now():
            add(c)
        if self.on_allowed:
            for n, v in self.fields.build(ls, ds):
                ctx.add_response_header(n, v)

    def refused(self, ctx, ls: LimitSet, ds):
        """Count a refusal; the 429 reply, or None in dry run."""
        which = DRY_LIMITED if self.dry_run else LIMITED
        add = self.add
        fixed = []
        for lm, d in zip(ls.limits, ds):
            if not d[0]:
                add(lm.cell(which))
                fixed.append(d)
            else:   # a limit that would have passed reads as "after this request": it was not spent
                fixed.append((True, min(lm.burst, d[1] + 1), max(0.0, d[2] - 1.0 / lm.rate), 0.0))
        ds = fixed
        if self.dry_run:
            ctx.flags.append("ratelimit_dry_run")
            if self.on_allowed:
                for n, v in self.fields.build(ls, ds):
                    ctx.add_response_header(n, v)
            return None
        return H.too_many(ctx, ls, ds, self.fields)

    # -- with Redis -------------------------------------------------------------------
    async def check_async(self, ctx, ls: LimitSet):
        """None or a reply (429, or 503 when Redis fails closed), for a set with Redis limits."""
        limits = ls.limits
        keys = [lm.key(ctx) for lm in limits]
        mem = ls.mem
        mem_req = [keys[i] for i in mem]
        ds: list = [None] * len(limits)
        if mem_req:                                 # peek: a refusal here costs no round trip
            ok, mds = self._memory(ls, mem_req, dry=True)
            if not ok:
                for i, d in zip(mem, mds):
                    ds[i] = d
                for i in ls.red:
                    ds[i] = (True, limits[i].burst, 0.0, 0.0)   # not asked: reported as full
                return self.refused(ctx, ls, ds)
        red = ls.red
        try:
            rok, rds = await self.backend.check([keys[i] for i in red], ls.red_specs)
        except BackendDown:
            add = self.add
            for i in red:
                add(limits[i].cell(BACKEND_ERROR))
            add(self.fallback_cell)
            if self.fail_closed:
                return H.backend_down(ctx, [limits[i].name for i in red])
            if not mem_req:
                return None
            return self._charge_memory(ctx, ls, mem_req, ds, skip_red=True)
        for i, d in zip(red, rds):
            ds[i] = d
        if not rok:
            if mem_req:
                _, mds = self._memory(ls, mem_req, dry=True)
                for i, d in zip(mem, mds):
                    ds[i] = d
            return self.refused(ctx, ls, ds)
        if not mem_req:
            return self.allowed(ctx, ls, ds)
        return self._charge_memory(ctx, ls, mem_req, ds, skip_red=False)

    def _memory(self, ls: LimitSet, keys: list[bytes], dry: bool) -> tuple[bool, list]:
        """The memory limits of a mixed set: ``(allowed, decisions)``."""
        now = self.lim.clock()
        ok, tats = self.table.take_all(keys, ls.mem_specs, now, dry=dry)
        return ok, decisions(tats, ls.mem_specs, now)

    def _charge_memory(self, ctx, ls: LimitSet, mem_req, ds, skip_red: bool):
        ok, mds = self._memory(ls, mem_req, dry=False)
        for i, d in zip(ls.mem, mds):
            ds[i] = d
        if skip_red:                # Redis could not answer: report and count memory only
            sub = ls.mem_only
            return self.allowed(ctx, sub, mds) if ok else self.refused(ctx, sub, mds)
        return self.allowed(ctx, ls, ds) if ok else self.refused(ctx, ls, ds)
