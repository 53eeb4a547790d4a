"""The instances of services with DNS discovery, in a worker (L7).

The control process publishes each discovered service's set in the discovery table
(``shm.discovery``, ``fastgw.resilience.discovery``).  A worker:

- when it builds an App (start, reload): ``install`` gives each discovered service the
  set the table holds now (none yet: the service has no instance and its requests get
  503 ``no_upstream``; ``/readyz`` does not depend on it);
- on its tick: ``poll`` compares each discovered service's row sequence word with the one
  it built from (one load per service per second) and, when it moved, rebuilds that
  service's instances and swaps them in with ``replace_instances``.

Rules:
- ``replace_instances`` is the one place where a service's routes get new instances: it
  sets ``route.instances`` and ``route.distinct`` (the distinct instances, as ``App``
  builds them) and ``route.down``, and calls the service's balancer's ``update`` once
  (``upstream.balance``: weights, slow start, sticky tokens, the health bytes).  It runs between two requests (on the loop), so a
  request sees the old set or the new one; one in flight keeps its instance and pool.
- Pools are keyed as ``App`` keys them; an address still present keeps its pool (and its
  warm connections); a pool no route uses any more is closed (idle connections at once,
  busy ones when their exchange ends) and leaves ``app.pools``.
- An instance's health-table slot is the one the control process claimed and published
  (a worker never claims for discovered instances); the table's ``down`` bytes apply to
  it as to a configured instance.
- The Host header of a discovered instance (``preserve_host: false``) and the TLS server
  name (``https``, unless ``tls.server_name`` is set) are the DNS name, not the address.
"""

from __future__ import annotations

import logging

import msgspec

from fastgw.resilience.identity import instance_url
from fastgw.upstream.peer import Instance, make_peer, peer_key
from fastgw.upstream.pool import Pool

log = logging.getLogger("fastgw")

NEVER_DOWN = bytes(1)   # ``down`` when an instance has no slot: slot -1 reads this 0 byte


class Watch:
    """One discovered service in one App: its row, the sequence word built from."""

    __slots__ = ("service", "svc", "row", "seq", "host")

    def __init__(self, service: str, svc) -> None:
        self.service = service
        self.svc = svc
        self.row = -1
        self.seq = 0
        self.host = svc.discovery.host_port()[0].rstrip(".")


def install(app, old=None) -> None:
    """``App`` building: the discovered services' current sets (called once, at the end)."""
    app.discovered = [Watch(s, svc) for s, svc in app.config.services.items() if svc.discovery is not None]
    region = getattr(app.deps, "shm", None)
    app.discovery_table = getattr(region, "discovery", None)
    app.health_table = getattr(region, "health", None)
    app.old_pools = old.pools if old is not None else {}
    for w in app.discovered:
        _refresh(app, w)
    app.old_pools = {}


def poll(app) -> None:
    """The worker's tick: rebuild the services whose published set moved."""
    table = app.discovery_table
    if table is None:
        return
    for w in app.discovered:
        if w.row < 0:
            w.row = table.find(w.service)
            if w.row < 0:
                continue
        if table.seq(w.row) != w.seq:
            try:
                _refresh(app, w)
            except Exception as e:  # the old set stays until the next publication
                w.seq = table.seq(w.row)
                log.exception("discovery %s: cannot build the published instances: %s", w.service, e)


def _refresh(app, w: Watch) -> None:
    table = app.discovery_table
    if table is None:
        return
    w.row = table.find(w.service)   # again: a row whose service left is reused by another
    if w.row < 0:
        return
    got = table.read(w.row)
    if got is None:         # being written: next tick
        return
    seq, entries = got
    w.seq = seq
    insts = build(app, w, entries)
    replace_instances(app, w.service, insts)


def _tls_for(svc, host: str):
    tls = svc.tls
    if getattr(tls, "server_name", None) is None and svc.discovery.scheme == "https":
        tls = msgspec.structs.replace(tls, server_name=host)
    return tls


def build(app, w: Watch, entries) -> list:
    """``Instance`` objects for published ``entries`` (address, port, weight, slot)."""
    svc, gw = w.svc, app.config.gateway
    pc = svc.pool
    max_waiters = pc.max_waiters if pc.max_waiters is not None else gw.max_connections
    tls = _tls_for(svc, w.host)
    health = app.health_table
    row = health.row(getattr(app.deps, "worker_id", 0)) if health is not None else None
    metrics = app.metrics
    out = []
    for addr, port, weight, slot in entries:
        url = instance_url(svc.discovery.scheme, addr, port)
        key = peer_key(url, tls)
        pk = (key, pc, max_waiters, float(svc.connect_timeout))
        pool = app.pools.get(pk) or app.old_pools.get(pk)
        if pool is None:
            pool = Pool(make_peer(url, tls, key), app.loop, max_idle=pc.max_idle,
                        max_connections=pc.max_connections, max_waiters=max_waiters,
                        wait_timeout=float(pc.wait_timeout), idle_timeout=float(pc.idle_timeout),
                        connect_timeout=float(svc.connect_timeout),
                        stats=metrics.pool_event if metrics is not None else None,
                        exhausted=metrics.pool_exhausted if metrics is not None else None)
        app.pools[pk] = pool
        inst = Instance(pool, url, int(weight))
        inst.service = w.service
        default = 443 if svc.discovery.scheme == "https" else 80
        inst.host_header = (w.host if port == default else f"{w.host}:{port}").encode("ascii")
        if health is not None and 0 <= slot < health.slots:
            inst.slot = slot
            inst.row = row
            inst.fails = row.consecutive(slot)
        out.append(inst)
    return out


def replace_instances(app, service: str, insts: list) -> None:
    """Swap ``service``'s instances on each of its routes (see the module's rules)."""
    distinct = tuple(insts)
    health = app.health_table
    if health is not None and all(i.slot >= 0 for i in insts):
        down = health.down
    else:           # an instance without a slot: nothing is ever down (as App does)
        down = NEVER_DOWN
        for i in insts:
            i.slot = -1
    seen = set()
    for route in app.routes:
        if route.service != service or getattr(route, "split", None) is not None:
            continue
        route.instances = route.distinct = distinct
        route.down = down
        lb = getattr(route, "lb", None)
        if lb is not None and id(lb) not in seen:   # (one balancer per service, shared)
            seen.add(id(lb))
            lb.update(distinct, down=down)
        for i in distinct:   # connection timers are armed at most this far ahead
            i.pool.tmin = min(i.pool.tmin, route.t_head, route.t_read)
    _close_unused(app)


def _close_unused(app) -> None:
    used = {id(i.pool) for r in app.routes for i in r.instances}
    for pk, pool in list(app.pools.items()):
        if id(pool) not in used:
            del app.pools[pk]
            pool.close()
