"""Build a runnable App (one config snapshot) from a validated Config (L7).

An ``App`` is immutable once built: the router, each route's compiled middleware chain,
the global chain (replies with no route), and the upstream pools.  Pools are keyed by
peer; a reload builds a new App that takes over the pools of peers it still uses, so a
HUP keeps warm keep-alive connections (issue 3) while routes and chains switch at once.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from fastgw.http.netaddr import TrustedNets
from fastgw.middleware.registry import builders
from fastgw.pipeline.chain import Chain
from fastgw.pipeline.middleware import overrides
from fastgw.routing import Router
from fastgw.upstream.pool import Peer, Pool


class Route:
    """A compiled route: what the engine reads per request (all precomputed)."""

    __slots__ = ("name", "service", "cfg", "chain", "pools", "max_body", "allow_encoded_slash",
                 "t_head", "t_read", "preserve_host", "response_body_filter", "answers_preflight", "_rr")

    def __init__(self, name, service, cfg, chain, pools, max_body, allow_encoded_slash,
                 t_head, t_read, preserve_host) -> None:
        self.name = name
        self.service = service
        self.cfg = cfg
        self.chain = chain
        self.pools = pools
        self.max_body = max_body
        self.allow_encoded_slash = allow_encoded_slash
        self.t_head = t_head
        self.t_read = t_read
        self.preserve_host = preserve_host
        self.response_body_filter = chain.response_body_filter()
        # a CORS middleware on this route answers preflights (else OPTIONS needs the method)
        self.answers_preflight = any(m.answers_preflight() for m in chain.mws)
        self._rr = 0

    def pick(self, ctx):
        """The pool of the instance to use (round-robin until the balancer issue)."""
        pools = self.pools
        if not pools:
            return None
        if len(pools) == 1:
            return pools[0]
        self._rr = (self._rr + 1) % len(pools)
        return pools[self._rr]


def _tls_context(tls_cfg) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=getattr(tls_cfg, "ca_file", None))
    if not getattr(tls_cfg, "verify", True):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _peer(url: str, svc) -> Peer:
    u = urlsplit(url)
    tls = None
    if u.scheme == "https":
        tls = _tls_context(svc.tls)
    port = u.port or (443 if u.scheme == "https" else 80)
    return Peer(u.hostname, port, tls=tls, server_name=getattr(svc.tls, "server_name", None),
                base_path=u.path or "")


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
        self.pools: dict = {}
        old_pools = old.pools if old is not None else {}
        blds = builders()
        self.global_chain = Chain(self._mws(blds, None, None))
        entries = []
        for sname, svc in config.services.items():
            # instances with weight 0 get no traffic; a weight repeats the instance in the
            # round-robin cycle (a smooth weighted balancer comes with the balancing issue)
            weighted = [(svc.url, 1)] if svc.url else [(i.url, min(int(i.weight), 100)) for i in svc.instances]
            pools = []
            for url, weight in weighted:
                if weight <= 0:
                    continue
                peer = _peer(url, svc)
                pk = (peer.key, svc.pool)
                pool = self.pools.get(pk) or old_pools.get(pk)
                if pool is None:
                    pool = Pool(peer, loop, max_idle=svc.pool.max_idle, max_connections=svc.pool.max_connections,
                                max_waiters=svc.pool.max_waiters, wait_timeout=float(svc.pool.wait_timeout),
                                idle_timeout=float(svc.pool.idle_timeout), connect_timeout=float(svc.connect_timeout),
                                stats=metrics.pool_event if metrics is not None else None)
                self.pools[pk] = pool
                pools.extend([pool] * weight)
            t_head = float(svc.timeout if svc.timeout is not None else gw.timeout)
            for rc in svc.routes:
                chain = Chain(self._mws(blds, svc, rc))
                max_body = int(rc.max_body_size if rc.max_body_size is not None else gw.limits.max_body_size)
                route = Route(rc.name, sname, rc, chain, tuple(pools), max_body, rc.allow_encoded_slash,
                              float(rc.timeout) if rc.timeout is not None else t_head,
                              float(svc.read_timeout), svc.preserve_host)
                entries.append((rc, route))
                for pool in pools:  # connection timers are armed at most this far ahead
                    pool.tmin = min(pool.tmin, route.t_head, route.t_read)
        self.router = Router(entries)
        self.routes = [r for _, r in entries]
        # (host, method, raw target) -> (query, path, route, params) for routers whose
        # answer depends on nothing else; filled and bounded by Engine.dispatch
        self.match_cache = {} if self.router.cacheable else None
        # readiness contributed by middlewares (e.g. the first JWKS fetch)
        self.ready_checks = tuple({id(m): m.ready for m in self.middlewares().values()
                                   if overrides(m, "ready")}.values())

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
