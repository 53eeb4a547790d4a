"""DNS discovery: services whose instances DNS names, resolved by the control process (L3).

One task per service with ``discovery`` (``config.discovery``), in the control process
only (N workers must not multiply DNS traffic), with dnspython's asyncio resolver:

- ``dns``: the A and AAAA records of the name (asked together); each address is an
  instance on the configured port, weight 1.
- ``dns_srv``: the SRV records of the name; the lowest priority's targets are the
  instances (RFC 2782: a higher priority is only for when every lower one is gone, which
  health checks and ejection handle here), each with its port and its SRV weight (0
  counts as 1, above 10,000 as 10,000); a target's addresses come from the answer's
  additional section, else from an A/AAAA lookup of the target.
- The next lookup comes after the answer's smallest TTL, bounded by ``min_ttl`` and
  ``max_ttl``, and never later than ``refresh``.
- A failed lookup (timeout, SERVFAIL, NXDOMAIN, or an answer with no address) keeps the
  last good set: ``fastgw_discovery_failures_total{service}`` counts it, a log line says
  why, and the next try comes after ``min(refresh, max(min_ttl, 1s))``.

A changed set gets health-table slots (``HealthTable.assign``: under its claim lock, the
supervisor may be claiming for a reload at the same moment), is published in the
discovery table (``shm.discovery``) and handed to the ``Monitor`` (health checks,
ejection, drain of the new instances).  When ``gateway.max_upstream_instances`` is full,
an instance without a slot is published with ``NO_SLOT`` and the service then runs
without health, ejection and drain (as ``App`` does for configured instances), with a
warning.  Workers pick it up on their next tick, without
a reload.  A respawned control process starts from what the table holds.
"""

from __future__ import annotations

import asyncio
import logging
import time

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from fastgw.config.discovery import MAX_ENTRIES, parse_resolver
from fastgw.resilience.identity import config_instances, instance_key, instance_url

log = logging.getLogger("fastgw")

MAX_WEIGHT = 10_000
M_FAILURES = "fastgw_discovery_failures_total"
NO_SLOT = (1 << 32) - 1   # a published instance that found no health-table slot


class LookupError_(Exception):
    """A lookup that gave no usable answer (the reason is the message)."""


def make_resolver(dcfg) -> dns.asyncresolver.Resolver:
    """A resolver for one service: its ``resolvers`` (none: the system's), no cache (the
    TTL logic is ours), ``timeout`` for the whole lookup."""
    if dcfg.resolvers:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(*parse_resolver(a)) for a in dcfg.resolvers]
    else:
        r = dns.asyncresolver.Resolver()
    r.cache = None
    r.lifetime = float(dcfg.timeout)
    r.timeout = float(dcfg.timeout)
    return r


async def _addresses(r, name: str, additional=None) -> tuple[list[str], float]:
    """The A and AAAA addresses of ``name`` and the smallest TTL; raises LookupError_."""
    if additional:
        got = [(rr.address, rrset.ttl) for rrset in additional
               if rrset.name.to_text().rstrip(".").lower() == name.rstrip(".").lower()
               and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rr in rrset]
        if got:
            return [a for a, _ in got], min(t for _, t in got)
    res = await asyncio.gather(r.resolve(name, "A", raise_on_no_answer=False, search=False),
                               r.resolve(name, "AAAA", raise_on_no_answer=False, search=False),
                               return_exceptions=True)
    addrs, ttls, errors = [], [], []
    for ans in res:
        if isinstance(ans, BaseException):
            if isinstance(ans, asyncio.CancelledError):
                raise ans
            errors.append(_why(ans))
            continue
        if ans.rrset is not None:
            addrs += [rr.address for rr in ans.rrset]
            ttls.append(ans.rrset.ttl)
    if not addrs:
        raise LookupError_(f"{name}: " + ("; ".join(errors) if errors else "no A or AAAA record"))
    return addrs, min(ttls)


def _why(e: BaseException) -> str:
    if isinstance(e, dns.resolver.NXDOMAIN):
        return "NXDOMAIN"
    if isinstance(e, (dns.exception.Timeout, dns.resolver.LifetimeTimeout)):
        return "timeout"
    if isinstance(e, dns.resolver.NoNameservers):
        return "no nameserver answered (SERVFAIL or refused)"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def lookup(r, dcfg) -> tuple[list[tuple[str, int, int]], float]:
    """One resolution: ([(address, port, weight)], ttl), sorted; raises LookupError_."""
    name, port = dcfg.host_port()
    if dcfg.type == "dns":
        addrs, ttl = await _addresses(r, name)
        return sorted({(a, port, 1) for a in addrs}), ttl
    try:
        ans = await r.resolve(name, "SRV", search=False)
    except dns.resolver.NoAnswer:
        raise LookupError_(f"{name}: no SRV record") from None
    except dns.exception.DNSException as e:
        raise LookupError_(f"{name}: {_why(e)}") from None
    recs = list(ans.rrset)
    best = min(rr.priority for rr in recs)
    recs = [rr for rr in recs if rr.priority == best]
    ttl = ans.rrset.ttl
    out = set()
    for rr in recs:
        target = rr.target.to_text()
        if target == ".":      # "service decidedly not available at this domain"
            continue
        addrs, t = await _addresses(r, target, ans.response.additional)
        ttl = min(ttl, t)
        w = min(max(rr.weight, 1), MAX_WEIGHT)
        out |= {(a, rr.port, w) for a in addrs}
    if not out:
        raise LookupError_(f"{name}: the SRV records name no reachable target")
    return sorted(out), ttl


def next_wait(dcfg, ttl: float | None) -> float:
    """Seconds until the next lookup (``ttl`` None: after a failure)."""
    if ttl is None:
        return min(float(dcfg.refresh), max(float(dcfg.min_ttl), 1.0))
    return min(float(dcfg.refresh), max(float(dcfg.min_ttl), min(float(ttl), float(dcfg.max_ttl))))


class Found:
    """What discovery knows of one service."""

    __slots__ = ("service", "entries", "urls", "resolved_at", "failures", "last_error", "task", "dcfg")

    def __init__(self, service: str, dcfg) -> None:
        self.service = service
        self.dcfg = dcfg
        self.entries: list = []     # (address, port, weight, slot) as published
        self.urls: dict[str, tuple[int, int]] = {}   # url -> (slot, weight)
        self.resolved_at = 0.0      # wall time of the last good answer (0: none yet)
        self.failures = 0
        self.last_error = ""
        self.task = None


class Discovery:
    """The control process's resolvers, one task per discovered service."""

    def __init__(self, region, loop, monitor=None, metrics=None) -> None:
        self.region = region
        self.metrics = metrics  # the control process's shm metric area (None: not counted)
        self.table = region.discovery
        self.health = region.health
        self.loop = loop
        self.monitor = monitor
        self.cfg = None
        self.found: dict[str, Found] = {}

    def apply(self, cfg) -> None:
        """Start, restart (changed settings) or stop the services' lookups for ``cfg``."""
        self.cfg = cfg
        want = {s: svc.discovery for s, svc in cfg.services.items() if svc.discovery is not None}
        for s in list(self.found):
            f = self.found[s]
            if want.get(s) != f.dcfg:
                if f.task is not None:
                    f.task.cancel()
                if s not in want:
                    del self.found[s]
                    continue
                f.dcfg = want[s]
                f.task = None
        for s, dcfg in want.items():
            f = self.found.get(s)
            if f is None:
                f = self.found[s] = Found(s, dcfg)
                self._recover(f)
            if f.task is None:
                f.task = self.loop.create_task(self._run(f))

    def stop(self) -> None:
        for f in self.found.values():
            if f.task is not None:
                f.task.cancel()

    def _recover(self, f: Found) -> None:
        """A respawned control process starts from the set the workers already use."""
        r = self.table.find(f.service)
        got = self.table.read(r) if r >= 0 else None
        if got is not None and got[0]:
            self._remember(f, got[1])
            f.resolved_at = time.time()

    def _remember(self, f: Found, entries) -> None:
        f.entries = list(entries)
        f.urls = {instance_url(f.dcfg.scheme, a, p): (slot if slot < self.health.slots else -1, w)
                  for a, p, w, slot in entries}
        if self.monitor is not None:
            self.monitor.set_discovered(f.service, list(f.urls))

    async def _run(self, f: Found) -> None:
        r = make_resolver(f.dcfg)
        while True:
            try:
                found, ttl = await lookup(r, f.dcfg)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                why = str(e) if isinstance(e, LookupError_) else _why(e)
                f.failures += 1
                f.last_error = why
                if self.metrics is not None:
                    self.metrics.inc(M_FAILURES, (("service", f.service),))
                kept = len(f.entries)
                log.warning("discovery %s: lookup failed (%s); keeping the last good set of %d instance%s",
                            f.service, why, kept, "" if kept == 1 else "s")
                await asyncio.sleep(next_wait(f.dcfg, None))
                continue
            f.resolved_at = time.time()
            f.last_error = ""
            try:
                self.publish(f, found)
            except Exception as e:   # never stop the loop
                log.exception("discovery %s: publishing failed: %s", f.service, e)
            await asyncio.sleep(next_wait(f.dcfg, ttl))

    def publish(self, f: Found, found: list[tuple[str, int, int]]) -> bool:
        """Give the found instances slots and publish them if the set changed."""
        found = found[:MAX_ENTRIES]
        urls = [instance_url(f.dcfg.scheme, a, p) for a, p, _w in found]
        keys = [instance_key(f.service, u) for u in urls]
        keep = set(keys)
        if self.cfg is not None:
            keep |= {k for _s, _u, k in config_instances(self.cfg)}
        for other in self.found.values():
            keep |= {instance_key(other.service, u) for u in other.urls}
        slots = self.health.assign(keys, keep)
        entries = [(a, p, w, slots.get(k, NO_SLOT)) for (a, p, w), k in zip(found, keys)]
        if len(slots) < len(found):
            log.warning("discovery %s: gateway.max_upstream_instances (%d) is full: %d of %d instances have no "
                        "slot, so the service's health checks, ejection and drain are off",
                        f.service, self.health.slots, len(found) - len(slots), len(found))
        r = self.table.find(f.service)
        if entries == f.entries and r >= 0 and self.table.seq(r):
            return False
        if r < 0:
            r = self.table.claim(f.service, set(self.found))
            if r < 0:
                log.error("discovery %s: no free row in the discovery table", f.service)
                return False
        gen = self.table.publish(r, entries)
        before = set(f.urls)
        self._remember(f, entries)
        added, gone = sorted(set(f.urls) - before), sorted(before - set(f.urls))
        log.info("discovery %s: %d instance%s (generation %d)%s%s", f.service, len(entries),
                 "" if len(entries) == 1 else "s", gen, f"; added {', '.join(added)}" if added else "",
                 f"; removed {', '.join(gone)}" if gone else "")
        return True

    # ------------------------------------------------------------------ readers (admin API, metrics)
    def instances(self) -> list[tuple[str, str, int, int]]:
        """(service, url, slot, weight) of every discovered instance."""
        return [(s, u, slot, w) for s, f in self.found.items() for u, (slot, w) in f.urls.items()]
