"""The control process (L7): the probe/metrics listener and the admin API, on one uvloop loop.

Forked by the supervisor next to the workers and respawned like one.  It serves two
sockets, both bound by the supervisor before fork (a respawned control process answers
on the same ports):

- ``monitoring.metrics_host:metrics_port``, what Kubernetes probes and Prometheus scrape
  (no secrets, no auth):

  ==================  ====================================================================
  ``/livez``          200 while this process runs (the gateway's processes are up)
  ``/readyz``         200 when the config is loaded, every desired worker is ready and the
                      gateway is not draining; else 503 with the reasons
  ``/metrics``        Prometheus text, summed over every worker's shared-memory area plus
                      the retired area at scrape time (so it answers while a worker is
                      stopped, and counters stay monotonic across respawns and reloads)
  ==================  ====================================================================

- ``monitoring.admin.host:port`` when ``monitoring.admin`` is set: the admin API
  (``/admin/*``, bearer token; endpoints and rules in ``fastgw.admin``).

It also runs the active health checks and outlier ejection (``resilience.checker.Monitor``,
which owns the health table's ``down`` bytes, drains included) and DNS discovery
(``resilience.discovery.Discovery``, which publishes each discovered service's instances
in the discovery table that workers poll on their tick).

The control process reads shared memory and never writes a worker's cells; what it
cannot read there (desired worker count, draining, config generation) the supervisor
tells it with ``Workers`` messages (``set_workers``).  ``POST /admin/reload`` asks the
supervisor (``ReloadRequest``) and answers with its ``ReloadResult``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time

import orjson

from fastgw import __version__, clock
from fastgw.admin.api import AdminApi, ProbeApp
from fastgw.admin.router import problem_reply
from fastgw.admin.server import HttpServerProtocol
from fastgw.obs import oplog
from fastgw.obs.logbuf import LogBuffer
from fastgw.obs.prom import CONTENT_TYPE, render
from fastgw.resilience.checker import Monitor
from fastgw.resilience.discovery import Discovery
from fastgw.resilience.identity import config_instances
from fastgw.config.monitoring import circuit_breaker_of
from fastgw.shm.breaker import key_for as breaker_key, view as breaker_view
from fastgw.shm.health import DRAINED, FAIL_KINDS, STATE_NAMES as HEALTH_NAMES, UNHEALTHY, UNKNOWN
from fastgw.runtime.revocation_sync import RevocationSync, redis_url
from fastgw.shm.workers import READY, STATE_NAMES

log = logging.getLogger("fastgw")


RELOAD_TIMEOUT = 60.0
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
_PY = "%d.%d.%d" % sys.version_info[:3]


class Control:
    def __init__(self, config, sock, region, *, desired: int, generation: int = 0,
                 draining: bool = False, api_sock=None) -> None:
        self.config = config
        self.sock = sock
        self.api_sock = api_sock
        self.api_server = None
        self.to_supervisor = None   # (id, client) -> sends ReloadRequest; set by control_main
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.region = region
        self.desired = desired
        self.generation = generation
        self.draining = draining
        self.loop = None
        self.server = None
        self.stopping = None
        self.start_hooks = []
        self.tick_hooks = []
        self.started = time.monotonic()
        self.audit = None  # LogBuffer of monitoring.logging.audit.output, opened in run()
        self.monitor = None  # active health checks and outlier ejection (fastgw.resilience)
        self.discovery = None  # DNS discovery (fastgw.resilience.discovery)
        self.metrics = None  # obs.metrics.Metrics over the control process's area (set by the supervisor)
        self.revocation_sync = None  # revocation_sync.RevocationSync with auth.revocation.backend: redis

    # ------------------------------------------------------------------ life
    def run(self) -> int:
        import uvloop

        loop = self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.stopping = loop.create_future()
        out = self.config.monitoring.logging.audit.output if self.config is not None else None
        if out:
            self.audit = LogBuffer(out)
        probe, api = ProbeApp(self), AdminApi(self)
        self.server = loop.run_until_complete(
            loop.create_server(lambda: HttpServerProtocol(probe, loop), sock=self.sock, backlog=128))
        if self.api_sock is not None:
            self.api_server = loop.run_until_complete(
                loop.create_server(lambda: HttpServerProtocol(api, loop), sock=self.api_sock, backlog=128))
        if threading.current_thread() is threading.main_thread():
            for sig, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int"), (signal.SIGHUP, "hup"),
                              (signal.SIGUSR1, "usr1")):
                loop.add_signal_handler(sig, self._on_signal, name)
        if self.config is not None and getattr(self.region, "health", None) is not None:
            self.monitor = Monitor(self.region.health, loop)
            self.monitor.apply(self.config)
            self.discovery = Discovery(self.region, loop, self.monitor, self.metrics)
            self.discovery.apply(self.config)
        for hook in self.start_hooks:
            hook(self)
        url = redis_url(self.config) if self.config is not None and self.region is not None else None
        if url:
            rv = self.config.auth.revocation
            self.revocation_sync = RevocationSync(self.region.revocation, url, timeout=float(rv.timeout),
                                                  resync_interval=float(rv.resync_interval), metrics=self.metrics)
            self.revocation_sync.start(loop)
        self._tick()
        try:
            return loop.run_until_complete(self.stopping)
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            if self.discovery is not None:
                self.discovery.stop()
            if self.revocation_sync is not None:
                self.revocation_sync.stop()
            self.server.close()
            if self.api_server is not None:
                self.api_server.close()
            if self.audit is not None:
                self.audit.close()
            loop.close()

    def _tick(self) -> None:
        clock.tick()
        if self.audit is not None:
            self.audit.flush()
        for hook in self.tick_hooks:
            try:
                hook()
            except Exception as e:
                log.exception("control tick hook failed: %s", e)
        self.loop.call_later(1.0, self._tick)

    def _on_signal(self, name: str) -> None:
        getattr(self, "handle_" + name)()

    def handle_term(self) -> None:
        """Stop serving the admin API (the supervisor stops it last)."""
        self.stop()

    def handle_int(self) -> None:
        """Stop now."""
        self.stop()

    def handle_hup(self) -> None:
        """Ignored: reloads come from the supervisor."""

    def handle_usr1(self) -> None:
        """Reopen the operational and audit logs (logrotate)."""
        oplog.reopen()
        if self.audit is not None:
            self.audit.reopen()

    def audit_record(self, rec: dict) -> None:
        """One audit line (the admin API's calls and writes)."""
        if self.audit is not None:
            self.audit.write(orjson.dumps(rec))

    def revoke(self, kind: str, key: str, expiry: float, before: float = 0.0) -> bool:
        """Record a revocation (admin API) in shared memory, and in Redis when
        ``auth.revocation.backend`` is redis; False when the table is full."""
        ok = self.region.revocation.revoke(kind, key, expiry, before)
        if self.revocation_sync is not None:
            self.revocation_sync.publish(kind, key, expiry, before)
        return ok

    # ------------------------------------------------------------------ reload over the admin API
    def request_reload(self, client: str) -> asyncio.Future:
        """Ask the supervisor to reload (as HUP); the future gets its outcome document."""
        self.next_id += 1
        fut = self.loop.create_future()
        if self.to_supervisor is None:
            fut.set_result({"result": "refused", "generation": self.generation,
                            "errors": ["no supervisor (standalone mode): send HUP instead"]})
            return fut
        self.pending[self.next_id] = fut
        self.to_supervisor(self.next_id, client)
        return asyncio.wait_for(fut, RELOAD_TIMEOUT)

    def on_reload_result(self, rid: int, result: dict) -> None:
        fut = self.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def stop(self) -> None:
        if self.stopping is not None and not self.stopping.done():
            self.stopping.set_result(0)

    # ------------------------------------------------------------------ state from the supervisor
    def set_workers(self, desired: int, draining: bool, generation: int) -> None:
        self.desired = desired
        self.draining = draining
        self.generation = generation

    def apply_config(self, cfg, generation: int) -> bool:
        self.config = cfg
        self.generation = generation
        if self.monitor is not None:
            self.monitor.apply(cfg)
        if self.discovery is not None:
            self.discovery.apply(cfg)
        return True

    # ------------------------------------------------------------------ endpoints
    def livez(self) -> tuple[int, bytes]:
        return 200, b'{"status":"alive"}'

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if self.config is None:
            reasons.append("no config loaded")
        if self.draining:
            reasons.append("draining")
        ready = sum(1 for w in self.region.workers.read_all() if w.state == READY)
        if ready < self.desired:
            reasons.append(f"{ready} of {self.desired} workers ready")
        return not reasons, reasons

    def readyz(self) -> tuple[int, bytes]:
        ok, reasons = self.readiness()
        return (200 if ok else 503), orjson.dumps({"status": "ready" if ok else "not ready", "reasons": reasons})

    def metrics_text(self) -> str:
        snap = self.region.metrics.snapshot()
        states = {name: 0 for name in STATE_NAMES[1:]}
        for w in self.region.workers.read_all():
            if 0 < w.state < len(STATE_NAMES):
                states[STATE_NAMES[w.state]] += 1
        extra = [(f'fastgw_build_info{{version="{__version__}",python="{_PY}"}}', 1),
                 ("fastgw_workers_desired", self.desired),
                 ("fastgw_config_generation", self.generation)]
        extra += [(f'fastgw_workers{{state="{s}"}}', n) for s, n in states.items()]
        extra += self.upstream_series()
        return render(snap, extra)

    # ------------------------------------------------------------------ upstreams
    def _instances(self):
        """(service, url, slot, weight, source) of every configured or discovered instance."""
        table = self.region.health
        out = []
        for sname, url, key in config_instances(self.config) if self.config is not None else ():
            svc = self.config.services[sname]
            weight = next((i.weight for i in svc.upstreams() if i.url == url), 1)
            out.append((sname, url, table.find(key), weight, "file"))
        if self.discovery is not None:
            out += [(s, u, slot, w, "dns") for s, u, slot, w in self.discovery.instances()]
        return out

    def drain(self, service: str, instance: str, on: bool) -> dict:
        """Drain (``on``) or undrain an instance, named by its URL as ``/admin/upstreams``
        shows it or by its slot; raises LookupError naming what exists, ValueError for the
        only instance of a service."""
        rows = [r for r in self._instances() if r[0] == service]
        if self.config is None or service not in self.config.services:
            raise LookupError(f"no service {service!r}")
        hit = [r for r in rows if r[1] == instance or (instance.isdigit() and r[2] == int(instance))]
        if not hit:
            raise LookupError(f"service {service!r} has no instance {instance!r} "
                              f"(its instances: {', '.join(r[1] for r in rows) or 'none yet'})")
        _s, url, slot, _w, _src = hit[0]
        if on and len(rows) < 2:
            raise ValueError(f"{url} is the only instance of {service!r}: a single-instance route reads no "
                             "health, so a drain would not stop its traffic")
        if slot < 0 or self.monitor is None or not self.monitor.drain(slot, on):
            raise LookupError(f"instance {url} of {service!r} has no health-table slot "
                              "(gateway.max_upstream_instances is full): it cannot be drained")
        log.warning("upstream %s %s %s by the admin API", service, url, "drained" if on else "undrained")
        return {"service": service, "instance": url, "slot": slot, "drained": on}

    def upstream_series(self) -> list:
        table = getattr(self.region, "health", None)
        if table is None:
            return []
        out = []
        now = time.monotonic_ns()
        for sname, url, slot, _w, _src in self._instances():
            if slot < 0:
                continue
            lab = f'service="{sname}",instance="{_label(url)}"'
            st = table.state(slot)
            out.append((f"fastgw_upstream_instance_healthy{{{lab}}}", -1 if st == UNKNOWN else int(st != UNHEALTHY)))
            out.append((f"fastgw_upstream_instance_ejected{{{lab}}}", int(table.ejected_until(slot) > now)))
            out.append((f"fastgw_upstream_instance_ejections_total{{{lab}}}", table.ejections(slot)))
            _req, _con, kinds = table.sums(slot)
            for k, n in zip(FAIL_KINDS, kinds):
                out.append((f'fastgw_upstream_instance_failures_total{{{lab},kind="{k}"}}', n))
            out.append((f"fastgw_upstream_in_flight{{{lab}}}", table.balance(slot)[0]))
        out.append(("fastgw_health_checks_total", self.monitor.probes if self.monitor is not None else 0))
        out += [(f'fastgw_circuit_breaker_state{{service="{s}"}}', d["state_code"]) for s, d in self._breakers()]
        return out

    def _breakers(self):
        """(service, its breaker as ``/admin/upstreams`` shows it) of every service with one."""
        table = getattr(self.region, "breaker", None)
        if table is None or self.config is None:
            return []
        out, now = [], time.monotonic_ns()
        for sname, svc in self.config.services.items():
            cb = circuit_breaker_of(self.config.monitoring, svc)
            if cb is not None:
                out.append((sname, breaker_view(table, table.find(breaker_key(sname)), cb, now)))
        return out

    def upstreams_doc(self) -> dict:
        """``GET /admin/upstreams``: every service's instances as this host sees them."""
        table = self.region.health
        now, wall = time.monotonic_ns(), time.time_ns()
        services: dict = {}
        for sname, url, slot, weight, source in self._instances():
            svc = self.config.services[sname]
            row = {"url": url, "source": source, "weight": weight, "slot": slot}
            if slot >= 0:
                until = table.ejected_until(slot)
                req, con, kinds = table.sums(slot)
                chk = table.last_check(slot)
                row.update({
                    "health": HEALTH_NAMES[table.state(slot)] if svc.health else "not checked",
                    "last_check_age_s": round((wall - chk) / 1e9, 3) if chk else None,
                    "ejected": until > now,
                    "ejected_for_s": round((until - now) / 1e9, 3) if until > now else 0,
                    "times_ejected": table.ejections(slot),
                    "usable": not table.down[slot],
                    "drained": table.down[slot] == DRAINED,
                    "consecutive_failures": con,
                    "failures": dict(zip(FAIL_KINDS, kinds)),
                })
                in_flight, eff = table.balance(slot)
                # (published by the workers on their tick: up to a second old)
                row.update({"requests": req, "in_flight": in_flight,
                            "effective_weight": weight if eff is None else eff})
            d = services.setdefault(sname, {"health": svc.health, "retries": svc.retries,
                                            "load_balancing": svc.load_balancing,
                                            "panic_threshold": float(svc.panic_threshold), "instances": []})
            d["instances"].append(row)
        for sname, f in (self.discovery.found.items() if self.discovery is not None else ()):
            svc = self.config.services[sname]
            d = services.setdefault(sname, {"health": svc.health, "retries": svc.retries,
                                            "panic_threshold": float(svc.panic_threshold), "instances": []})
            d["discovery"] = {"type": f.dcfg.type, "name": f.dcfg.name, "resolved": bool(f.resolved_at),
                              "last_resolved_age_s": round(time.time() - f.resolved_at, 3) if f.resolved_at else None,
                              "failures": f.failures, "last_error": f.last_error or None}
        breakers = dict(self._breakers())
        for sname, d in services.items():   # the service's circuit breaker (None: none)
            d["circuit_breaker"] = breakers.get(sname)
        return {"generation": self.generation, "services": services}

    def workers_doc(self) -> dict:
        now_ns, wall_ns = time.monotonic_ns(), time.time_ns()
        table = self.region.workers
        rows = [{
            "slot": w.slot,
            "pid": w.pid,
            "state": w.state_name,
            "generation": w.generation,
            "uptime_s": round(max(0, wall_ns - w.started_ns) / 1e9, 3),
            "heartbeat_age_s": round(max(0, now_ns - w.heartbeat_ns) / 1e9, 3),
            "requests": w.requests,
        } for w in table.read_all()]
        return {"desired": self.desired, "draining": self.draining, "generation": self.generation,
                "workers": rows,
                "retired": {"workers": table.retired_workers, "requests": table.retired_requests}}

    def respond(self, method: str, path: str) -> tuple[int, list, bytes]:
        if path == "/livez":
            st, body = self.livez()
            return st, [_JSON, _NO_STORE], body
        if path == "/readyz":
            st, body = self.readyz()
            return st, [_JSON, _NO_STORE], body
        if path == "/metrics":
            return 200, [(b"content-type", CONTENT_TYPE.encode()), _NO_STORE], self.metrics_text().encode()
        return problem_reply(404, f"no endpoint {path} on this listener (/livez, /readyz, /metrics)", "")


def _label(url: str) -> str:
    """An instance's metric label: its host:port (as the access log's ``upstream``)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.netloc.rsplit("@", 1)[-1] or url
