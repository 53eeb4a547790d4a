"""Active health checks and outlier ejection, run by the control process (L3).

``Monitor`` owns every write to the health table's control cells (``shm.health``):

- **Active checks** (services with ``health:``): one probe per instance per
  ``health_check.interval`` for the whole gateway host, whatever the worker count.  The
  probe is one HTTP/1.1 ``GET`` over a fresh connection (never reused, never shared
  between instances), spoken through h11, with ``timeout`` bounding the connect and the
  read each.  A status inside ``expected_status`` passes.  ``unhealthy_threshold``
  failures in a row mark the instance unhealthy, ``healthy_threshold`` passes in a row
  healthy again.  Until its first verdict an instance is ``unknown`` and usable.
- **Outlier ejection** (every ``TICK`` s): the workers' per-instance consecutive failures
  are summed; at ``consecutive_failures`` (and only when new failures arrived since the
  last decision) the instance is ejected for ``base_ejection_time x times ejected``,
  capped at ``max_ejection_time``, unless that would eject more than
  ``max_ejection_percent`` of the service's instances.  It returns when the time is up
  (or when an active check sees it recover).

- **Drain** (admin API): a drained instance's ``down`` byte is ``DRAINED`` (2) whatever
  its probes and ejections say, until undrained; workers never pick it, not even in
  panic mode, and its requests in flight finish.  The drained set lives in the health
  table (by identity), so it survives a reload and a respawn of the control process, not
  a restart of the gateway (a new region).

Targets are the config's instances plus those DNS discovery found (``set_discovered``).

``down[i]`` = 1 unhealthy or ejected, 2 drained, is what workers read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import h11

from fastgw.config.resilience import parse_status_ranges
from fastgw.resilience.identity import config_instances, instance_key
from fastgw.shm.health import DRAINED, HEALTHY, UNHEALTHY

log = logging.getLogger("fastgw")

TICK = 0.05  # outlier decisions: seconds between two looks at the workers' counts
MAX_PROBE_RESPONSE = 64 * 1024


class Target:
    """One instance as the monitor sees it."""

    __slots__ = ("service", "url", "slot", "svc", "probe", "passes", "fails", "task", "seen_fail_total",
                 "host", "port", "tls", "target", "host_header")

    def __init__(self, service, url, slot, svc) -> None:
        self.service = service
        self.url = url
        self.slot = slot
        self.svc = svc
        self.passes = 0
        self.fails = 0
        self.task = None
        self.seen_fail_total = -1


def probe_target(url: str, health: str) -> tuple[str, int, bool, str, str]:
    """(host, port, tls, request target, Host header) of the probe of ``url`` with
    ``health`` (a path on the instance, or a full URL)."""
    if "://" in health:
        u = urlsplit(health)
        target = (u.path or "/") + (("?" + u.query) if u.query else "")
    else:
        u = urlsplit(url)
        base = (u.path or "").rstrip("/")
        target = base + (health if health.startswith("/") else "/" + health)
    https = u.scheme.lower() == "https"
    port = u.port or (443 if https else 80)
    return u.hostname, port, https, target, u.netloc


async def probe(host: str, port: int, tls, target: str, host_header: str, headers: dict,
                timeout: float) -> int:
    """One probe: the response status (raises on connect/read failure or timeout)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls), timeout)
    try:
        conn = h11.Connection(h11.CLIENT)
        hs = [("Host", host_header), ("User-Agent", "fastgw-health"), ("Connection", "close")]
        hs += list(headers.items())
        writer.write(conn.send(h11.Request(method="GET", target=target, headers=hs)))
        writer.write(conn.send(h11.EndOfMessage()))
        got = 0
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(16384), timeout)
                got += len(data)
                if got > MAX_PROBE_RESPONSE:
                    raise ValueError("health response head too large")
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Response):
                return ev.status_code
            if isinstance(ev, h11.ConnectionClosed):
                raise ConnectionError("closed before a response")
    finally:
        writer.close()


class Monitor:
    """The control process's failover loop over one config snapshot's instances."""

    def __init__(self, table, loop, metrics=None) -> None:
        self.table = table
        self.loop = loop
        self.targets: dict[int, Target] = {}
        self.by_service: dict[str, list[Target]] = {}
        self.probes = 0  # probes sent (tests, metrics)
        self.tick_handle = None
        self.cfg = None
        self.discovered: dict[str, list[str]] = {}  # service -> URLs DNS discovery found
        self.drained: set[int] = set()               # slots drained by the admin API

    def set_discovered(self, service: str, urls: list[str]) -> None:
        """DNS discovery found these instances of ``service`` (their slots are assigned)."""
        self.discovered[service] = list(urls)
        if self.cfg is not None:
            self.apply(self.cfg)

    def drain(self, slot: int, on: bool = True) -> bool:
        """Drain (or undrain) instance ``slot``; False if it is no target."""
        if slot not in self.targets:
            return False
        (self.drained.add if on else self.drained.discard)(slot)
        self._recompute_down()
        return True

    def apply(self, cfg) -> None:
        """(Re)build the targets of ``cfg``: probes of removed instances stop, kept ones go on."""
        self.cfg = cfg
        old = self.targets
        new: dict[int, Target] = {}
        by_service: dict[str, list[Target]] = {}
        found = [(s, u, instance_key(s, u)) for s, urls in self.discovered.items()
                 if s in cfg.services and cfg.services[s].discovery is not None for u in urls]
        for sname, url, key in config_instances(cfg) + found:
            slot = self.table.find(key)
            if slot < 0:
                continue
            if self.table.down[slot] == DRAINED:   # a respawned control process keeps the drains
                self.drained.add(slot)
            svc = cfg.services[sname]
            t = old.pop(slot, None)
            if t is None or t.svc is not svc:
                if t is not None and t.task is not None:
                    t.task.cancel()
                t2 = Target(sname, url, slot, svc)
                if t is not None:
                    t2.passes, t2.fails, t2.seen_fail_total = t.passes, t.fails, t.seen_fail_total
                t = t2
            new[slot] = t
            by_service.setdefault(sname, []).append(t)
            if svc.health and t.task is None:
                host, port, https, target, hh = probe_target(url, svc.health)
                t.host, t.port, t.target, t.host_header = host, port, target, hh
                t.tls = _tls_context(svc.tls) if https else None
                t.task = self.loop.create_task(self._probe_loop(t, cfg))
            elif not svc.health:
                self.table.set(slot, 0)  # no active checks: unknown
        for t in old.values():
            if t.task is not None:
                t.task.cancel()
        self.targets = new
        self.by_service = by_service
        self.drained &= set(new)
        self._recompute_down()
        if self.tick_handle is None:
            self.tick_handle = self.loop.call_later(TICK, self._tick)

    def stop(self) -> None:
        for t in self.targets.values():
            if t.task is not None:
                t.task.cancel()
        if self.tick_handle is not None:
            self.tick_handle.cancel()
            self.tick_handle = None

    # ------------------------------------------------------------------ active checks
    async def _probe_loop(self, t: Target, cfg) -> None:
        hc = t.svc.health_check
        interval = float(hc.interval if hc.interval is not None else cfg.monitoring.health_check_interval)
        ranges = parse_status_ranges(hc.expected_status)
        timeout = float(hc.timeout)
        while True:
            start = self.loop.time()
            self.probes += 1
            try:
                status = await probe(t.host, t.port, t.tls, t.target, t.host_header, hc.headers, timeout)
                ok = any(a <= status <= b for a, b in ranges)
                why = f"status {status}"
            except asyncio.CancelledError:
                raise
            except Exception as e:
                ok, why = False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.table.checked(t.slot, time.time_ns())
            self._verdict(t, ok, why, hc)
            await asyncio.sleep(max(0.0, interval - (self.loop.time() - start)))

    def _verdict(self, t: Target, ok: bool, why: str, hc) -> None:
        if ok:
            t.passes += 1
            t.fails = 0
            if t.passes >= hc.healthy_threshold and self.table.set(t.slot, HEALTHY):
                log.info("upstream %s %s is healthy", t.service, t.url)
                self.table.uneject(t.slot)
                self._recompute_down()
        else:
            t.fails += 1
            t.passes = 0
            if t.fails >= hc.unhealthy_threshold and self.table.set(t.slot, UNHEALTHY):
                log.warning("upstream %s %s is unhealthy (%s)", t.service, t.url, why)
                self._recompute_down()

    # ------------------------------------------------------------------ outlier ejection
    def _tick(self) -> None:
        self.tick_handle = None
        try:
            self.outliers(time.monotonic_ns())
        except Exception as e:  # never stop the loop
            log.exception("outlier detection failed: %s", e)
        self.tick_handle = self.loop.call_later(TICK, self._tick)

    def outliers(self, now_ns: int) -> None:
        table = self.table
        changed = False
        for sname, ts in self.by_service.items():
            od = ts[0].svc.outlier_detection
            ejected = sum(1 for t in ts if table.ejected_until(t.slot) > now_ns)
            for t in ts:
                until = table.ejected_until(t.slot)
                if until and until <= now_ns:
                    table.uneject(t.slot)
                    changed = True
                    log.info("upstream %s %s returns from ejection", t.service, t.url)
                if not od.enabled or len(ts) < 2:
                    continue
                _req, con, kinds = table.sums(t.slot)
                total = sum(kinds)
                if total == t.seen_fail_total:
                    continue
                fresh = t.seen_fail_total >= 0
                t.seen_fail_total = total
                if not fresh or con < od.consecutive_failures or table.ejected_until(t.slot) > now_ns:
                    continue
                if (ejected + 1) * 100 > od.max_ejection_percent * len(ts):
                    continue
                n = table.ejections(t.slot) + 1
                dur = min(float(od.base_ejection_time) * n, float(od.max_ejection_time))
                table.eject(t.slot, now_ns + int(dur * 1e9))
                ejected += 1
                changed = True
                log.warning("upstream %s %s ejected for %.3gs (%d consecutive failures, ejection %d)",
                            t.service, t.url, dur, con, n)
        if changed:
            self._recompute_down(now_ns)

    def _recompute_down(self, now_ns: int | None = None) -> None:
        now = time.monotonic_ns() if now_ns is None else now_ns
        table = self.table
        for t in self.targets.values():
            if t.slot in self.drained:
                table.set_down(t.slot, DRAINED)
            else:
                table.set_down(t.slot, table.state(t.slot) == UNHEALTHY or table.ejected_until(t.slot) > now)


def _tls_context(tls_cfg):
    import ssl

    ctx = ssl.create_default_context(cafile=getattr(tls_cfg, "ca_file", None))
    if not getattr(tls_cfg, "verify", True):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
