"""Circuit breaker per upstream service: refuse at once while the service keeps failing (L6).

What it owns: for each route of a service with a breaker (``monitoring.circuit_breaker``
or the service's own, ``config.monitoring.circuit_breaker_of``), the admission of a
request (``request_filter``) and the reading of its final outcome (``logging``).  The
state and its transitions are the shared table's (``fastgw.shm.breaker``, one slot per
service, shared by every worker and kept across reloads).

What counts (the *final* outcome of the exchange, after retries and ejection):

- a failure: the answer was an upstream failure (``error.kind`` a connect failure,
  reset, bad response, TLS failure or timeout: the kinds outlier detection counts,
  ``shm.health.KIND_OF``), or the upstream's own 5xx head;
- a success: any other upstream answer (1xx-4xx);
- nothing: an answer the gateway made itself (no route instance, pool full, the open
  circuit itself, a refusal of an earlier middleware: 401, 403, 429, a cache hit, ...)
  and a client that left before the upstream's head.  ``no_upstream`` (no usable
  instance) is one of these on purpose: health checks and ejection own that signal,
  and it is already a fast 503 that reaches no instance.

Rules:

1. Order: after auth, the rate limits, validation and the cache (middleware/registry),
   so a refused request never takes a half-open permit and a cache hit is served while
   the circuit is open; the open circuit's 503 sets ``ctx.error`` (``circuit_open``), so
   the cache may answer it with a stale entry (stale-if-error).
2. Hot path, closed breaker: one load of the slot's word in ``request_filter`` and one
   in ``logging`` (no lock, no syscall, no write); failures and transitions take the
   table's lock.
3. The refusal: 503 problem+json of kind ``circuit_open`` with ``Retry-After`` (whole
   seconds left, rounded up, at least 1).
4. Each transition is logged, audited (``event: circuit_breaker``) and counted
   (``fastgw_circuit_breaker_transitions_total{service,to}``) by the worker that made it.
5. A route with ``split`` has no breaker (its requests go to other services' instances).
6. ``failure_ratio`` (``RatioBreaker``, a subclass: the default breaker's hot path does
   not even test for it): each outcome that counts goes into this worker's row of the
   service's shared window (no lock: one writer per row); a failure while closed then
   sums every worker's row (``shm.breaker`` rule 5).
"""

from __future__ import annotations

import time

from fastgw.config.monitoring import circuit_breaker_of
from fastgw.errors import GatewayError
from fastgw.http.messages import error_reply
from fastgw.pipeline.middleware import Middleware
from fastgw.shm.breaker import ADMIT, BUCKETS, REJECT, STATE_NAMES, BreakerTable, Policy, key_for
from fastgw.shm.health import KIND_OF

NOTE = "circuit_breaker"           # ctx.notes: the half-open permit (token) this request holds
M_TRANSITIONS = "fastgw_circuit_breaker_transitions_total"
_LOCAL_KEY = "fastgw.breaker.local_table"
FAILURES = frozenset(KIND_OF)      # upstream failures (the error kinds outlier detection counts)
_NOT_SENT = frozenset({"no_upstream", "pool_exhausted"})  # gateway-made: nothing reached an instance


class CircuitBreaker(Middleware):
    name = "circuit_breaker"

    def __init__(self, cfg, deps, service: str, table: BreakerTable, slot: int) -> None:
        super().__init__(cfg, deps)
        self.service = service
        self.table = table
        self.slot = slot
        self.pol = Policy(cfg.failure_threshold, float(cfg.timeout), cfg.half_open_requests)
        self.q = table.q
        self.w = table.word_index(slot)
        self.metrics = getattr(deps, "metrics", None)
        self.audit = getattr(deps, "audit", None)
        self.log = getattr(deps, "log", None)
        self.worker = getattr(deps, "worker_id", 0)

    # ------------------------------------------------------------------ hooks
    def request_filter(self, ctx):
        """None to continue; the 503 while the circuit is open (or half-open with every
        trial permit taken)."""
        if self.q[self.w]:
            return self._gate(ctx)
        return None

    def logging(self, ctx, error) -> None:
        """The exchange's final outcome moves the breaker (see the module doc)."""
        if error is None:
            if ctx.upstream_status < 500:
                if self.q[self.w]:      # failures counted, or not closed
                    self._settled(ctx, ctx.upstream_status != 0)
                return
        elif error.kind not in FAILURES:
            if self.q[self.w]:
                self._settled(ctx, False)
            return
        self._failed(ctx)

    # ------------------------------------------------------------------ slow paths
    def _gate(self, ctx):
        verdict, v, trans = self.table.admit(self.slot, self.pol, time.monotonic_ns())
        if trans is not None:
            self._transition(trans, ctx)
        if verdict == ADMIT:
            return None
        if verdict != REJECT:
            ctx.notes[NOTE] = v      # a trial: its outcome decides
            return None
        secs = max(1, -(-v // 1_000_000_000))
        err = GatewayError("circuit_open", f"the circuit breaker of service {self.service} is open: "
                                           f"retry in {secs} s")
        ctx.error = err             # (an error in place of the upstream's answer: stale-if-error may serve)
        reply = error_reply(err, ctx.request_id)
        reply.headers.append((b"retry-after", b"%d" % secs))
        return reply

    def _settled(self, ctx, success: bool) -> None:
        token = ctx.notes.get(NOTE)
        if success:
            trans = self.table.succeeded(self.slot, token)
            if trans is not None:
                self._transition(trans, ctx)
        elif token is not None:
            err = ctx.error
            if not ctx.upstream or (err is not None and err.kind in _NOT_SENT):
                # the trial never reached an instance: another request may try
                self.table.give_back(self.slot, token)

    def _failed(self, ctx) -> None:
        trans = self.table.failed(self.slot, self.pol, time.monotonic_ns(), ctx.notes.get(NOTE))
        if trans is not None:
            self._transition(trans, ctx)

    def _transition(self, trans, ctx, by_ratio: bool = False) -> None:
        old, new = STATE_NAMES[trans[0]], STATE_NAMES[trans[1]]
        if self.metrics is not None:
            self.metrics.inc(M_TRANSITIONS, (("service", self.service), ("to", new)))
        timeout = float(self.cfg.timeout)
        if self.log is not None:
            why = {"open": f"open for {timeout:g}s" if old == "half_open" else
                   (f"{self.cfg.failure_ratio:g}% or more of the outcomes in {float(self.cfg.window):g}s failed"
                    if by_ratio else f"{self.pol.threshold} consecutive failures") + f"; open for {timeout:g}s",
                   "half_open": f"admitting {self.pol.half_open} trial request(s)",
                   "closed": "a trial request succeeded"}[new]
            (self.log.warning if new == "open" else self.log.info)(
                "circuit breaker of service %s: %s -> %s (%s)", self.service, old, new,
                "a trial request failed; " + why if old == "half_open" and new == "open" else why)
        if self.audit is not None:
            rec = {"ts": time.time(), "event": "circuit_breaker", "service": self.service, "from": old,
                   "to": new, "worker": self.worker, "request_id": ctx.request_id}
            if new == "open":
                rec["open_for_s"] = timeout
                if old == "closed":
                    rec["reason"] = "failure_ratio" if by_ratio else "consecutive_failures"
            try:
                self.audit(rec)
            except Exception:  # noqa: BLE001 - an audit sink failure must not fail the request
                if self.log is not None:
                    self.log.exception("audit write failed")


class RatioBreaker(CircuitBreaker):
    """A breaker that also opens on a failure ratio over a window (rule 6)."""

    def __init__(self, cfg, deps, service: str, table: BreakerTable, slot: int) -> None:
        super().__init__(cfg, deps, service, table, slot)
        self.row = table.window_row(slot, self.worker)
        bucket = float(cfg.window) / BUCKETS
        self.per_s = 1.0 / bucket                 # buckets per second
        self.bucket_ns = int(bucket * 1e9)
        self.ratio = float(cfg.failure_ratio)
        self.min_requests = cfg.min_requests

    def logging(self, ctx, error) -> None:
        if error is None and 0 < ctx.upstream_status < 500:
            # a success (a failure is counted by ``_failed``)
            self.table.count(self.row, int(time.monotonic() * self.per_s) + 1, 1, 0)
        CircuitBreaker.logging(self, ctx, error)

    def _failed(self, ctx) -> None:
        stamp = int(time.monotonic() * self.per_s) + 1
        self.table.count(self.row, stamp, 0, 1)
        w = self.q[self.w]
        reached = False
        if not w & 3:                   # closed: judge the window, this failure included
            ok, failed = self.table.window(self.slot, stamp, self.bucket_ns)
            n = ok + failed
            reached = n >= self.min_requests and failed * 100.0 >= self.ratio * n
        trans = self.table.failed(self.slot, self.pol, time.monotonic_ns(), ctx.notes.get(NOTE), reached)
        if trans is not None:
            # (opened by the ratio unless this failure also completed the consecutive run)
            self._transition(trans, ctx, reached and (w >> 2) + 1 < self.pol.threshold)


def table_of(deps) -> BreakerTable:
    """The shared region's breaker table; without a region, this process's own (kept in
    ``deps.state`` so a reload keeps the state)."""
    shm = getattr(deps, "shm", None)
    table = getattr(shm, "breaker", None)
    if table is not None:
        return table
    state = getattr(deps, "state", None)
    if state is None:
        return BreakerTable.local()
    table = state.get(_LOCAL_KEY)
    if table is None:
        table = state[_LOCAL_KEY] = BreakerTable.local()
    return table


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's breaker: its service's (own or the default), None when off."""
    if service_cfg is None or route_cfg is None or getattr(route_cfg, "split", None) is not None:
        return None
    cfg = circuit_breaker_of(root_cfg.monitoring, service_cfg)
    if cfg is None:
        return None
    service = route_cfg.service
    table = table_of(deps)
    key = key_for(service)
    slot = table.find(key)
    if slot < 0:
        live = [key_for(s) for s, sc in root_cfg.services.items() if circuit_breaker_of(root_cfg.monitoring, sc)]
        slot = table.slot(key, live)
    if slot < 0:
        log = getattr(deps, "log", None)
        if log is not None:
            log.warning("no circuit-breaker slot left for service %s (gateway.max_upstream_instances is %d): "
                        "its breaker is off", service, table.slots)
        return None
    cls = CircuitBreaker if cfg.failure_ratio is None else RatioBreaker
    return cls(cfg, deps, service, table, slot)
