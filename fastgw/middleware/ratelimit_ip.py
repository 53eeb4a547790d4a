"""Rate limits decided before authentication: ``ratelimit_ip``.

Runs after ``ip_filter``/``cors`` and before ``auth``, on ``ctx.client_ip`` (resolved by
the core through PROXY protocol and trusted ``X-Forwarded-For``; a header from an
untrusted peer never changes it).  Which limits are decided here and why:
``fastgw/ratelimit/plan.py`` (rules 4 and 5); in short:

- ``IpLimits`` / ``IpLimitsAsync`` (a route without ``auth``): the whole set of the
  route (the ``default`` tier by client IP, the service's and the route's rules) is
  checked and charged here; nothing after auth could change it.  The async class is
  chosen only when a limit of the set uses Redis.
- ``AuthFailureGuard`` (a route with ``auth``, when a ``default`` tier exists): peeks the
  client IP's failed-authentication budget, so a flood of bad tokens from one address
  gets 429 before any signature is checked; ``response_filter`` charges that budget when
  auth answered 401/400 without a verified user.  The budgets are marked keys of the
  table (``RateTable.take_marked``): while no budget of the address's stripe can be
  refilling (the usual case), the peek is one shared-memory cell read, in every worker.

Hook contract: ``request_filter`` returns None to continue (allowed, or refused in dry
run), or the 429 problem+json reply (``Retry-After``, ``RateLimit-Policy``/``RateLimit``,
legacy fields if enabled), or a 503 when a Redis limit fails closed.
"""

from __future__ import annotations

from fastgw.pipeline.middleware import Middleware
from fastgw.ratelimit.keys import MEMO_MAX
from fastgw.ratelimit.limiter import ALLOWED, LIMITED, admit, decide, decisions
from fastgw.ratelimit.plan import hold, release, route_plan

_PENDING = "ratelimit_ip"       # ctx.notes key: the guard let a token through unverified
_AUTH_REFUSALS = frozenset({400, 401})   # the statuses of auth's refusals: what is charged


class IpLimits(Middleware):
    """A route without auth, memory limits only."""

    name = "ratelimit_ip"

    def __init__(self, rp, deps=None) -> None:
        super().__init__(rp, deps)
        hold(self, rp)
        self.ls = ls = rp.anon
        enf = rp.plan.enforcer
        self.enf = enf
        self.check = enf.check
        # The usual request, decided here rather than in ``Enforcer.check`` (one call
        # less): a set whose slots are memoised per client address (``LimitSet.memo``)
        # holding two memory limits (their ``RateTable.pair`` record), counted in the
        # store's cells and reporting nothing on an allowed request; anything else (and
        # an address's first request, which fills the memo) goes to ``check``.
        ok = ls.memo is not None and not ls.by_user and not ls.red and enf.ints is not None \
            and not enf.on_allowed and len(ls.limits) == 2
        self.memo = ls.memo if ok else None
        self.lim = enf.lim
        self.take_pair = enf.table.take_pair
        self.counts = enf.lim.metrics.counts if ok else None
        self.j = None           # the set's allowed counter in ``counts`` (both limits': ``Metrics.counter``)

    def request_filter(self, ctx):
        memo = self.memo
        if memo is not None:
            rec = memo.get(ctx.client_ip)
            if rec is not None and rec[0] is not None:
                ls = self.ls
                j = self.j
                if j is None and ls.allowed_cells is not None:   # (registered by its first check)
                    j = self.j = ls.allowed_counter(self.lim.metrics)
                if j is not None:
                    now = self.lim.clock()
                    tats = self.take_pair(rec[0], ls.gate, now)
                    if tats is None:
                        self.counts[j] += 1
                        return None
                    return self.enf.refused(ctx, ls, decisions(tats, ls.specs, now))
        return self.check(ctx, self.ls)

    def close(self) -> None:
        release(self)


class IpLimitsAsync(IpLimits):
    """A route without auth whose set has a Redis limit (an ``async`` hook)."""

    def __init__(self, rp, deps=None) -> None:
        super().__init__(rp, deps)
        self.check_async = rp.plan.enforcer.check_async

    async def request_filter(self, ctx):
        return await self.check_async(ctx, self.ls)


class AuthFailureGuard(Middleware):
    """A route with auth: the failed-authentication budget of the client IP."""

    name = "ratelimit_ip"

    def __init__(self, rp, deps=None) -> None:
        super().__init__(rp, deps)
        hold(self, rp)
        self.ls = ls = rp.authfail
        self.limit = ls.limits[0]
        enf = rp.plan.enforcer
        self.enf = enf
        self.table = enf.table
        self.cells = enf.table.cells
        self.peek = enf.table.peek_slot
        self.lim = enf.lim
        self.T, self.tau = self.limit.spec
        # client address -> (the budget's table slot, its stripe's mark cell) (bounded; a
        # Slot never goes stale), when the key is the address's (the plan's
        # ``auth_failures`` limit always is)
        self.slots: dict = {} if getattr(self.limit.key, "by", None) == "ip" else None

    def request_filter(self, ctx):
        """Refuse only while this address's budget is empty: no lock, nothing consumed.

        The budgets are charged with ``take_marked``, so the mark of the slot's stripe
        says when none of them there can be refilling (0: none ever failed; else not
        after now): the usual request reads that one cell and neither looks for its key
        nor reads the clock."""
        slots = self.slots
        if slots is not None:
            rec = slots.get(ctx.client_ip)
            if rec is None:
                rec = self._slot(ctx)
        else:
            rec = self._rec(self.limit.key(ctx))
        mark = self.cells[rec[1]]
        if mark:
            now = self.lim.clock()
            if mark > now:
                tat = self.peek(rec[0])
                # (a key absent, or whose failures are forgiven: a full bucket, and
                # burst >= 1 (config), so it passes)
                if tat > now and not admit(tat, self.T, self.tau, now):
                    return self.enf.refused(ctx, self.ls, (decide(tat, self.T, self.tau, now),))
        ctx.notes[_PENDING] = True
        return None

    def _rec(self, key: bytes) -> tuple:
        slot = self.table.slot(key)
        return slot, self.table.mark_cell(slot)

    def _slot(self, ctx):
        slots = self.slots
        if len(slots) >= MEMO_MAX:
            slots.clear()
        rec = slots[ctx.client_ip] = self._rec(self.limit.key(ctx))
        return rec

    def response_filter(self, ctx, head) -> None:
        """Charge the budget when auth refused the request (no verified user)."""
        if ctx.user is None and (head.status == 401 or head.status == 400) and ctx.notes.get(_PENDING):
            self._charge(ctx)

    def response_block_statuses(self) -> frozenset:
        return _AUTH_REFUSALS   # (the usual response of another status does not call it)

    def response_block_filter(self, ctx, status: int, block: bytes) -> bytes:
        """``response_filter`` on an upstream head (it reads only the status)."""
        if ctx.user is None and (status == 401 or status == 400) and ctx.notes.get(_PENDING):
            self._charge(ctx)
        return block

    def _charge(self, ctx) -> None:
        ctx.notes[_PENDING] = False
        lm = self.limit
        slots = self.slots
        rec = slots.get(ctx.client_ip) if slots is not None else None
        slot = rec[0] if rec is not None else self.table.slot(lm.key(ctx))
        ok, _ = self.table.take_marked(slot, lm.spec, self.lim.clock())
        self.enf.add(lm.cell(ALLOWED if ok else LIMITED))

    def close(self) -> None:
        release(self)


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's pre-auth limits, or None when it has none."""
    rp = route_plan(root_cfg, service_cfg, route_cfg, deps)
    if rp is None:
        return None
    if rp.has_auth:
        return AuthFailureGuard(rp, deps) if rp.authfail is not None else None
    if rp.anon is None:
        return None
    return IpLimitsAsync(rp, deps) if rp.anon.red else IpLimits(rp, deps)
