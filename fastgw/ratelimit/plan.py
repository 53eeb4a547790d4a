"""Which limits apply to which request: the config turned into limit sets (L4 helper).

Built once per config per worker (``plan(root_cfg, deps)``, cached in ``deps.state``) and
shared by the two middlewares of every route, ``ratelimit_ip`` (before auth) and
``ratelimit`` (after auth).  The rules (docs/ratelimit.md says the same for operators):

1. Limits that can apply to a request: its client tier (``default`` for anonymous
   clients, keyed by client IP; ``authenticated`` or a role tier for verified tokens,
   keyed by ``sub``), its service's rule and its route's rule.
2. Tier of a verified token: among the role tiers of its roles, the most generous
   (highest rate, then burst); else ``authenticated``; else ``default`` keyed by client
   IP, so a config with only ``default`` still limits every client.
3. Tokens with a role of ``exempt_roles`` bypass every limit (checked after auth).
4. A route without ``auth``: nobody is verified there, every request is anonymous, and
   its whole set (``default`` + service + route rules) is checked and charged before
   auth, in ``ratelimit_ip``.  A rule keyed by ``user`` falls back to the client IP.
5. A route with ``auth``: the set is known only after the token is verified, so it is
   checked in ``ratelimit``.  Before auth, ``ratelimit_ip`` guards the crypto: each client
   IP has a failed-authentication budget (the ``default`` tier's numbers, its own key,
   memory backend: it shields this host's CPU), *peeked* before verification (a request
   from an address whose budget is empty gets 429 without any signature check) and
   *charged* when auth answers 401/400 without a verified user.  Anonymous traffic on
   open routes never spends it, so it cannot lock out the valid tokens behind a shared
   address; only failed authentications from that address can.
"""

from __future__ import annotations

from fastgw.config.ratelimit import key_parts
from fastgw.config.ratelimit_section import RateLimitSection, table_slots
from fastgw.ratelimit.headers import Fields
from fastgw.ratelimit.keys import IpParts, key_fn
from fastgw.ratelimit.limiter import Enforcer, Limit, LimitSet, limiter

PLAN_KEY = "fastgw.ratelimit.plan"
ROLES_MEMO_MAX = 1024
AUTH_FAILURES = "auth_failures"


def _route_has_auth(route_cfg) -> bool:
    return bool(route_cfg.auth or route_cfg.roles)


class RoutePlan:
    """The limit sets of one route."""

    __slots__ = ("plan", "name", "has_auth", "anon", "authfail", "user_default", "by_tier",
                 "roles_memo", "any_user", "user_redis")

    def __init__(self, plan: Plan, name: str, has_auth: bool, rules: list[Limit]) -> None:
        self.plan = plan
        self.name = name
        self.has_auth = has_auth
        default = plan.tiers.get("default")

        def ls(first):
            limits = ([first] if first is not None else []) + rules
            return LimitSet(limits) if limits else None

        self.anon = ls(default)                    # anonymous requests (rule 4)
        self.authfail = LimitSet([plan.authfail]) if plan.authfail is not None and has_auth else None
        auth = plan.tiers.get("authenticated")
        self.user_default = ls(auth) if auth is not None else self.anon     # rule 2
        self.by_tier = {name: ls(lm) for name, lm in plan.tiers.items() if name not in ("default", "authenticated")}
        self.roles_memo: dict[frozenset, LimitSet | None] = {}
        sets = [s for s in (self.user_default, *self.by_tier.values()) if s is not None]
        self.any_user = bool(sets)
        self.user_redis = any(s.red for s in sets)

    def for_roles(self, roles: frozenset) -> LimitSet | None:
        """The set of a verified token with these roles (rule 2), memoised."""
        memo = self.roles_memo
        try:
            return memo[roles]
        except KeyError:
            pass
        best = None
        for r in roles:
            lm = self.plan.tiers.get(r) if r not in ("default", "authenticated") else None
            if lm is not None and (best is None or (lm.rate, lm.burst) > (best.rate, best.burst)):
                best = lm
        s = self.by_tier[best.name] if best is not None else self.user_default
        if len(memo) >= ROLES_MEMO_MAX:
            memo.clear()
        memo[roles] = s
        return s


class Plan:
    """Every limit of one config, and the enforcer (options) they run under."""

    def __init__(self, root_cfg, deps) -> None:
        sect = root_cfg.rate_limit
        self.cfg = root_cfg
        self.section = sect
        self.lim = lim = limiter(deps, table_slots(sect))
        self.ips = IpParts((sect if sect is not None else RateLimitSection()).ipv6_prefix)
        rcfg = sect.redis if sect is not None else None
        self.backend = lim.backend(str(rcfg.url), float(rcfg.timeout)) if rcfg is not None and rcfg.url else None
        hc = sect.headers if sect is not None else None
        fields = Fields(hc.ietf, hc.legacy, hc.on_allowed) if hc is not None else Fields(True, False, False)
        self.enforcer = Enforcer(lim, dry_run=bool(sect is not None and sect.dry_run), fields=fields,
                                 on_error=rcfg.on_error if rcfg is not None else "open", backend=self.backend)
        self.exempt = frozenset(sect.exempt_roles) if sect is not None else frozenset()
        self.tiers: dict[str, Limit] = {}
        self.authfail: Limit | None = None
        if sect is not None:
            tier_redis = sect.backend == "redis"
            for name, rule in sect.tiers.items():
                parts = ("ip",) if name == "default" else ("user",)
                self.tiers[name] = self._limit(name, rule, b"t:" + name.encode() + b"\0", parts, tier_redis)
            d = sect.tiers.get("default")
            if d is not None:
                self.authfail = self._limit(AUTH_FAILURES, d, b"af\0", ("ip",), False)
        self._services: dict[str, Limit | None] = {}
        self._routes: dict[str, RoutePlan] = {}
        self._state = deps.state
        self.refs = 0                       # middlewares built on this plan and not closed

    def acquire(self) -> None:
        self.refs += 1

    def release(self) -> None:
        """A middleware of this plan's config was retired; the last one closes the Redis
        pool if the current config does not use it."""
        self.refs -= 1
        if self.refs > 0 or self.backend is None:
            return
        cur = self._state.get(PLAN_KEY)
        if cur is None or cur.backend is not self.backend:
            self.lim.retire_backend(self.backend)

    def _limit(self, name: str, rule, prefix: bytes, parts: tuple, redis: bool) -> Limit:
        # backend 'redis' without rate_limit.redis.url never gets here: config/semantics.py
        return Limit(name, rule.requests_per_second, rule.burst, key_fn(prefix, parts, self.ips), redis, self.lim)

    def _rule(self, kind: str, name: str, rule) -> Limit:
        return self._limit(f"{kind}:{name}", rule, f"{kind[0]}:{name}\0".encode(), key_parts(rule.key),
                           rule.backend == "redis")

    def route(self, service_name: str, service_cfg, route_cfg) -> RoutePlan:
        rname = route_cfg.name or ""
        rp = self._routes.get(rname)
        if rp is not None:
            return rp
        rules = []
        srule = service_cfg.rate_limit if service_cfg is not None else None
        if srule is not None:
            if service_name not in self._services:
                self._services[service_name] = self._rule("service", service_name, srule)
            rules.append(self._services[service_name])
        rrule = route_cfg.rate_limit
        if rrule is not None:
            rules.append(self._rule("route", rname, rrule))
        rp = self._routes[rname] = RoutePlan(self, rname, _route_has_auth(route_cfg), rules)
        return rp


def plan(root_cfg, deps) -> Plan:
    """The plan of ``root_cfg`` in this worker (built on its first route, then reused)."""
    st = deps.state
    cur = st.get(PLAN_KEY)
    if cur is None or cur.cfg is not root_cfg:
        cur = st[PLAN_KEY] = Plan(root_cfg, deps)
    return cur


def route_plan(root_cfg, service_cfg, route_cfg, deps) -> RoutePlan | None:
    """The route's plan, or None when no limit can apply to it (or for the global chain)."""
    if route_cfg is None:
        return None
    if root_cfg.rate_limit is None and route_cfg.rate_limit is None \
            and (service_cfg is None or service_cfg.rate_limit is None):
        return None
    svc = route_cfg.service or ""
    return plan(root_cfg, deps).route(svc, service_cfg, route_cfg)


def hold(mw, rp) -> None:
    """A middleware starts using route plan ``rp``: count it, so the plan's shared state
    (Redis pools, the local table) lives until the last user of a config closes."""
    rp.plan.acquire()
    mw._plan = rp.plan


def release(mw) -> None:
    """The middleware's ``close``: drop its hold on the plan, once."""
    plan = mw.__dict__.pop("_plan", None)
    if plan is not None:
        plan.release()
