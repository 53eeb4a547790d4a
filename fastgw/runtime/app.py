"""Build a runnable App (one config snapshot) from a validated Config (L7).

An ``App`` is immutable once built: the router, each route's compiled middleware chain,
the global chain (replies with no route), and the upstream pools.  Pools are keyed by
pool identity (``upstream.peer``: scheme, host, port, TLS settings) and pool sizing; a
route holds ``Instance`` objects (pool + base path + Host header), so services sharing a
host:port share its connections and keep their own base paths.  A reload builds a new App
that takes over the pools whose key it still uses, so a HUP keeps warm keep-alive
connections while routes and chains switch at once; a changed base path is a new
``Instance`` on the same pool, a changed TLS setting a new identity and a new pool, and
the old pool is retired (``App.retire``): it closes its idle connections at once and each
busy one when its exchange ends.
"""

from __future__ import annotations

from fastgw.http.netaddr import TrustedNets
from fastgw.middleware import sessions
from fastgw.middleware.registry import builders
from fastgw.pipeline.chain import Chain
from fastgw.pipeline.middleware import overrides
from fastgw.resilience.identity import instance_key
from fastgw.resilience.retry import Budget, RetryPolicy
from fastgw.routing import Router
from fastgw.routing.split import Splitter
from fastgw.runtime import discovered
from fastgw.upstream import balance
from fastgw.upstream.balance import RoundRobin
from fastgw.upstream.peer import Instance, make_peer, peer_key
from fastgw.upstream.pool import Pool


class Route:
    """A compiled route: what the engine reads per request (all precomputed)."""

    __slots__ = ("name", "service", "cfg", "chain", "instances", "max_body", "allow_encoded_slash",
                 "t_head", "t_read", "preserve_host", "response_body_filter", "answers_preflight",
                 # failover: the health table's ``down`` bytes, the distinct instances, the
                 # panic threshold (percent) and the retry policy (None: ``retries: 0``)
                 "down", "distinct", "panic", "retry",
                 # with retries: the wait for the response head across all attempts
                 # (``t_head`` is then each attempt's); 0.0 without (upstream.client rule 5)
                 "t_total",
                 # balancing (upstream.balance): the service's balancer, shared by its
                 # routes, and its bound ``pick(ctx)``/``pick_other(tried, ctx)`` (one call)
                 "lb", "pick", "pick_other")

    def __init__(self, name, service, cfg, chain, instances, max_body, allow_encoded_slash,
                 t_head, t_read, preserve_host) -> None:
        self.name = name
        self.service = service
        self.cfg = cfg
        self.chain = chain
        self.instances = instances  # the distinct instances
        self.max_body = max_body
        self.allow_encoded_slash = allow_encoded_slash
        self.t_head = t_head
        self.t_total = 0.0
        self.t_read = t_read
        self.preserve_host = preserve_host
        self.response_body_filter = chain.response_body_filter()
        # a CORS middleware on this route answers preflights (else OPTIONS needs the method)
        self.answers_preflight = any(m.answers_preflight() for m in chain.mws)
        self.down = _NEVER_DOWN
        self.distinct = tuple(dict.fromkeys(instances))
        self.panic = 50.0
        self.retry = None
        self.use(_NO_LB)   # (App gives it the service's balancer)

    def use(self, lb) -> None:
        """Pick with the balancer ``lb`` (``pick``: the instance for a request; ``pick_other``:
        a usable one not tried yet, for a retry)."""
        self.lb = lb
        self.pick = lb.pick
        self.pick_other = lb.pick_other

    @property
    def on_panic(self):
        return self.lb.on_panic

    @on_panic.setter
    def on_panic(self, fn) -> None:
        self.lb.on_panic = fn


_NEVER_DOWN = bytes(1)  # ``down`` without a health table: slot -1 reads the one 0 byte
_NO_LB = RoundRobin("", ())
_SPLIT_LB = RoundRobin("", ())
_SPLIT_LB.solo = False


class SplitRoute(Route):
    """A route with ``split``: each request goes to one side (``routing.split``), and the
    side's service's own balancer picks the instance (its algorithm, weights, health,
    panic threshold and drains); a retry stays on the side of the request's first
    attempt.  ``sticky`` of a side's service is not applied: the split chose the side.
    (``pick``/``pick_other`` are slots of ``Route``: the App binds them to
    ``side_pick``/``side_pick_other``.)"""

    __slots__ = ("split", "side_lbs")

    def side_pick(self, ctx):
        a = ctx.attempt   # None for the first attempt; a one-shot retry re-picks on its side
        i = self.split.side(ctx) if a is None else self.side_of(a.instance)
        return self.side_lbs[i].pick(ctx)

    def side_pick_other(self, tried, x=None):
        i = self.side_of(tried[-1]) if tried else 0   # (``tried`` is newest first)
        return self.side_lbs[i].pick_other(tried, x)

    def side_of(self, inst) -> int:
        """The side whose service's balancer holds ``inst`` (0 if none does)."""
        for i, lb in enumerate(self.side_lbs):
            if inst in lb.distinct:
                return i
        return 0

    @property
    def on_panic(self):
        return self.side_lbs[0].on_panic

    @on_panic.setter
    def on_panic(self, fn) -> None:
        for lb in self.side_lbs:
            lb.on_panic = fn


class App:
    def __init__(self, config, deps, *, loop, metrics, log, old: "App | None" = None) -> None:
        self.config = config
        self.deps = deps
        self.loop = loop
        self.metrics = metrics
        self.log = log
        gw = config.gateway
        self.trusted_nets = TrustedNets(gw.trusted_proxies)
        self.any_trusted = bool(self.trusted_nets)  # (read per request: no __bool__ call)
        self.health_path = gw.health_path
        self.max_connections = gw.max_connections
        self.server_header = (b"server: " + gw.server_header.encode("latin-1") + b"\r\n") if gw.server_header else None
        # Host for HTTP/1.0 requests without one (None: the local address; pipeline.heads)
        self.default_host = gw.default_host.encode("latin-1") if gw.default_host else None
        self.trust_forwarded_host = gw.trust_forwarded_host
        self.pools: dict = {}
        old_pools = old.pools if old is not None else {}
        blds = builders()
        self.global_chain = Chain(self._mws(blds, None, None))
        entries = []
        for rc in sessions.routes(config):  # auth.refresh/logout: answered locally (issue 27)
            chain = Chain(self._mws(blds, None, None) + [sessions.build(config, None, rc, deps)])
            entries.append((rc, Route(rc.name, "", rc, chain, (), 64 * 1024, False, float(gw.timeout),
                                      float(gw.timeout), False)))
        distinct: dict[str, tuple] = {}
        all_insts = []
        for sname, svc in config.services.items():
            # instances with weight 0 get no traffic; the balancer weighs the others
            weighted = [(svc.url, 1)] if svc.url else [(i.url, int(i.weight)) for i in svc.instances]
            insts = []
            pc = svc.pool
            max_waiters = pc.max_waiters if pc.max_waiters is not None else gw.max_connections
            for url, weight in weighted:
                if weight <= 0:
                    continue
                key = peer_key(url, svc.tls)
                pk = (key, pc, max_waiters, float(svc.connect_timeout))
                pool = self.pools.get(pk) or old_pools.get(pk)
                if pool is None:
                    pool = Pool(make_peer(url, svc.tls, key), loop, max_idle=pc.max_idle,
                                max_connections=pc.max_connections, max_waiters=max_waiters,
                                wait_timeout=float(pc.wait_timeout), idle_timeout=float(pc.idle_timeout),
                                connect_timeout=float(svc.connect_timeout),
                                stats=metrics.pool_event if metrics is not None else None,
                                exhausted=metrics.pool_exhausted if metrics is not None else None)
                self.pools[pk] = pool
                inst = Instance(pool, url, weight)
                inst.service = sname
                insts.append(inst)
                all_insts.append(inst)
            distinct[sname] = insts = tuple(insts)
            budget = Budget(float(svc.retry.budget_percent), svc.retry.min_retries_per_second)
            t_head = float(svc.timeout if svc.timeout is not None else gw.timeout)
            for rc in svc.routes:
                chain = Chain(self._mws(blds, svc, rc))
                max_body = int(rc.max_body_size if rc.max_body_size is not None else gw.limits.max_body_size)
                route = (SplitRoute if rc.split is not None else Route)(
                    rc.name, sname, rc, chain, insts, max_body, rc.allow_encoded_slash,
                    float(rc.timeout) if rc.timeout is not None else t_head,
                    float(svc.read_timeout), svc.preserve_host)
                route.panic = float(svc.panic_threshold)
                if svc.retries > 0:
                    pol = route.retry = RetryPolicy(svc, rc, budget)
                    route.t_total = route.t_head  # the service's timeout: all attempts together
                    if pol.per_try is not None:   # each attempt's wait for the head
                        route.t_head = min(route.t_head, pol.per_try)
                entries.append((rc, route))
                for inst in insts:  # connection timers are armed at most this far ahead
                    inst.pool.tmin = min(inst.pool.tmin, route.t_head, route.t_read)
        # A split's sides use their services' instances (all built now); ``route.instances``
        # holds them all, so the engine calls ``pick`` (a side without instances gets no traffic).
        for rc, route in entries:
            if rc.split is not None:
                route.split = Splitter(rc.split)
                route.instances = tuple(i for side in rc.split.to for i in distinct[side.service])
                for inst in route.instances:
                    inst.pool.tmin = min(inst.pool.tmin, route.t_head, route.t_read)
        down = self._health_slots(all_insts, deps)
        old_lbs = old.balancers if old is not None else None
        self.balancers = {sname: balance.build(sname, config.services[sname], insts, down=down,
                                               old=old_lbs.get(sname) if old_lbs is not None else None,
                                               first=old is None)
                          for sname, insts in distinct.items()}
        for _, route in entries:
            route.down = down
            route.distinct = route.instances = tuple(dict.fromkeys(route.instances))
            lb = self.balancers.get(route.service)
            if isinstance(route, SplitRoute):
                route.side_lbs = tuple(getattr(b, "inner", b) for b in   # (Sticky: its inner)
                                       (self.balancers[s] for s in route.split.services))
                route.use(_SPLIT_LB)            # (``solo`` False: always the sides' picking)
                route.pick = route.side_pick
                route.pick_other = route.side_pick_other
            elif lb is not None:
                route.use(lb)
            if metrics is not None:
                route.on_panic = metrics.upstream_panic
        self.router = Router(entries, gw.versioning)
        self.routes = [r for _, r in entries]
        discovered.install(self, old)  # services with DNS discovery: the set published so far
        # (host, method, raw target) -> (query, path, route, params) for routers whose
        # answer depends on nothing else; filled and bounded by Engine.dispatch
        self.match_cache = {} if self.router.cacheable else None
        # readiness contributed by middlewares (e.g. the first JWKS fetch)
        self.ready_checks = tuple({id(m): m.ready for m in self.middlewares().values()
                                   if overrides(m, "ready")}.values())

    def live_instances(self):
        """Every service's current instances (discovery may have changed a set since the
        build): the tick publishes their attempt counts."""
        for lb in self.balancers.values():
            yield from lb.distinct

    def tick(self) -> None:
        """The worker tick: slow start ramps and recoveries, then this worker's
        per-instance requests, in-flight attempts and effective weights into its row of
        the health table (read by the control process: /admin/upstreams, metrics)."""
        for lb in self.balancers.values():
            lb.tick()
            for i in lb.distinct:   # (the current set: discovery may have changed it)
                row = i.row
                if row is not None:
                    row.publish(i.slot, i.requests, i.requests - i.done, i.eff)

    def _health_slots(self, insts, deps):
        """Each instance's slot in the shared health table (``shm.health``) and this
        worker's failure row; the ``down`` bytes routes read.  Without a table (or with
        an instance that found no slot: the table is full), no instance is ever down."""
        region = getattr(deps, "shm", None)
        table = getattr(region, "health", None)
        if table is None or not insts:
            return _NEVER_DOWN
        slots = table.assign([instance_key(i.service, i.url) for i in insts])  # found, or claimed
        row = table.row(getattr(deps, "worker_id", 0))
        for i in insts:
            i.slot = slots.get(instance_key(i.service, i.url), -1)
            i.row = row
        if any(i.slot < 0 for i in insts):
            self.log.warning("gateway.max_upstream_instances (%d) is too small for %d instances: "
                             "health checks and outlier ejection are off", table.slots, len(insts))
            for i in insts:
                i.slot = -1
            return _NEVER_DOWN
        for i in insts:
            i.fails = row.consecutive(i.slot)
        return table.down

    def _mws(self, blds, svc, rc):
        out = []
        for _name, build in blds:
            mw = build(self.config, svc, rc, self.deps)
            if mw is not None:
                out.append(mw)
        return out

    def middlewares(self) -> dict:
        """Every distinct middleware object of this snapshot, by id."""
        out = {}
        for ch in [self.global_chain] + [r.chain for r in self.routes]:
            for m in ch.mws:
                out[id(m)] = m
        return out

    def retire(self, new: "App | None") -> None:
        """This snapshot is replaced: close the pools and middlewares the new one does not use.

        Connections in flight keep their pool object alive until they finish; a closed
        pool closes them instead of parking them.
        """
        keep = new.pools if new is not None else {}
        for pk, pool in self.pools.items():
            if pk not in keep:
                pool.close()
        keep_mw = new.middlewares() if new is not None else {}
        for mid, m in self.middlewares().items():
            if mid not in keep_mw:
                try:
                    m.close()
                except Exception as e:  # a failing close must not stop the reload
                    self.log.warning("closing middleware %s failed: %s", m.name, e)
