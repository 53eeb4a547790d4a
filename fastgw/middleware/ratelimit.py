"""Rate limits decided after authentication: ``ratelimit``.

Runs after ``auth`` on routes that require a token, so ``ctx.user``/``ctx.roles`` are the
verified identity.  It picks the request's limit set (``fastgw/ratelimit/plan.py``, rules
2 and 3: the most generous role tier, else ``authenticated``, else ``default`` by client
IP; plus the service's and the route's rules) and decides it all or nothing.  Tokens with
a role of ``rate_limit.exempt_roles`` pass without any check.  Routes without ``auth``
have no verified identity: their limits are decided before auth, in ``ratelimit_ip``.

Hook contract: ``request_filter`` returns None to continue (allowed, exempt, or refused
in dry run), the 429 problem+json reply, or a 503 when a Redis limit fails closed.
``UserLimitsAsync`` (an ``async def`` hook, so the engine runs the chain in a task) is
chosen only for routes where some set uses Redis; it stays synchronous for the others.
"""

from __future__ import annotations

from fastgw.pipeline.middleware import Middleware
from fastgw.ratelimit.keys import MEMO_MAX
from fastgw.ratelimit.limiter import decisions
from fastgw.ratelimit.plan import ROLES_MEMO_MAX, hold, release, route_plan

_UNSET = object()


def _limit_set(mw, ctx):
    """The request's limit set, or None (exempt role, or no limit for this identity)."""
    roles = ctx.roles
    if roles:
        if not mw.exempt.isdisjoint(roles):
            return None
        return mw.rp.for_roles(roles)
    return mw.rp.user_default if ctx.user is not None else mw.rp.anon


class UserLimits(Middleware):
    """Memory limits only."""

    name = "ratelimit"

    def __init__(self, rp, deps=None) -> None:
        super().__init__(rp, deps)
        hold(self, rp)
        self.rp = rp
        self.exempt = rp.plan.exempt
        enf = rp.plan.enforcer
        self.enf = enf
        self.check = enf.check
        self.check_async = enf.check_async
        self.sets: dict = {}    # role set -> its LimitSet, None when exempt (or no limit)
        # The usual request, decided here rather than in ``Enforcer.check`` (one call
        # less, one lookup): a verified subject whose set is two memory limits keyed by
        # subject (or by nothing), counted in the store's cells and reporting nothing
        # on an allowed request.  ``fast`` maps the subject to (its role set, the two
        # keys' ``RateTable.pair`` record, the set, the index in ``counts`` of its
        # allowed counter: one for both limits), filled after ``check`` decided it once; a token of the same
        # subject with other roles (another role-set object) goes to ``check`` and
        # replaces it.  Anything else goes to ``check``.  The allowed decisions are
        # counted in the worker's accumulators (``Metrics.counter``), published on its
        # tick.
        self.lim = enf.lim
        self.take_pair = enf.table.take_pair
        self.ints = enf.ints if not enf.on_allowed else None
        self.counts = enf.lim.metrics.counts if self.ints is not None else None
        self.fast: dict = {}

    def request_filter(self, ctx):
        rec = self.fast.get(ctx.user)
        if rec is not None and rec[0] is ctx.roles:
            ls = rec[2]
            now = self.lim.clock()
            tats = self.take_pair(rec[1], ls.gate, now)
            if tats is None:
                self.counts[rec[3]] += 1
                return None
            return self.enf.refused(ctx, ls, decisions(tats, ls.specs, now))
        # ``_limit_set`` inlined for a verified token (the only kind on these routes
        # that has roles): its set by roles, memoised per role set (``RoutePlan.for_roles``)
        roles = ctx.roles
        if roles:
            ls = self.sets.get(roles, _UNSET)
            if ls is _UNSET:
                ls = self._for_roles(roles)
        else:
            ls = self.rp.user_default if ctx.user is not None else self.rp.anon
        if ls is None:
            return None
        r = self.check(ctx, ls)
        if ls.by_user and ls.memo is not None and self.ints is not None and ls.allowed_cells is not None:
            user = ctx.user
            rec = ls.memo.get(user) if user else None
            if rec is not None and rec[0] is not None and len(ls.allowed_cells) == 2:
                fast = self.fast
                if len(fast) >= MEMO_MAX:
                    fast.clear()
                fast[user] = (roles, rec[0], ls, ls.allowed_counter(self.lim.metrics))
        return r

    def _for_roles(self, roles):
        ls = None if not self.exempt.isdisjoint(roles) else self.rp.for_roles(roles)
        sets = self.sets
        if len(sets) >= ROLES_MEMO_MAX:
            sets.clear()
        sets[roles] = ls
        return ls

    def close(self) -> None:
        release(self)


class UserLimitsAsync(UserLimits):
    """Some limit set of the route uses Redis (an ``async`` hook)."""

    async def request_filter(self, ctx):
        ls = _limit_set(self, ctx)
        if ls is None:
            return None
        if ls.red:
            return await self.check_async(ctx, ls)
        return self.check(ctx, ls)


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's post-auth limits: only on routes with auth that have some limit."""
    rp = route_plan(root_cfg, service_cfg, route_cfg, deps)
    if rp is None or not rp.has_auth or not rp.any_user:
        return None
    return UserLimitsAsync(rp, deps) if rp.user_redis else UserLimits(rp, deps)
