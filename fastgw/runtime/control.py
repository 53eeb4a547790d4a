"""The control process (L7): the admin listener, on its own uvloop loop.

Forked by the supervisor next to the workers and respawned like one.  It serves
``monitoring.metrics_host:metrics_port`` (the socket is bound by the supervisor before
fork, so a respawned control process answers on the same port):

==================  ======================================================================
``/livez``          200 while this process runs (the gateway's processes are up)
``/readyz``         200 when the config is loaded, every desired worker is ready and the
                    gateway is not draining; else 503 with the reasons
``/metrics``        Prometheus text, summed over every worker's shared-memory area plus the
                    retired area at scrape time (so it answers while a worker is stopped,
                    and counters stay monotonic across respawns and reloads)
``/admin/workers``  JSON: per worker slot pid, state, uptime, config generation, requests
==================  ======================================================================

The control process reads shared memory and never writes a worker's cells; what it
cannot read there (desired worker count, draining, config generation) the supervisor
tells it with ``Workers`` messages (``set_workers``).  Later issues add active health
checks (writing the health table) and cache purges here.

The admin protocol is deliberately small: HTTP/1.1 GET/HEAD only, no request bodies,
heads up to 8 KiB, keep-alive with an idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time

import httptools
import orjson

from fastgw import __version__, clock
from fastgw.http.wire import reply_bytes
from fastgw.obs.logbuf import LogBuffer
from fastgw.obs.prom import CONTENT_TYPE, render
from fastgw.shm.workers import READY, STATE_NAMES

log = logging.getLogger("fastgw")

MAX_HEAD = 8 * 1024
IDLE_TIMEOUT = 30.0
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
_PY = "%d.%d.%d" % sys.version_info[:3]


class Control:
    def __init__(self, config, sock, region, *, desired: int, generation: int = 0,
                 draining: bool = False) -> None:
        self.config = config
        self.sock = sock
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

    # ------------------------------------------------------------------ life
    def run(self) -> int:
        import uvloop

        loop = self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.stopping = loop.create_future()
        out = self.config.monitoring.logging.audit.output if self.config is not None else None
        if out:
            self.audit = LogBuffer(out)
        self.server = loop.run_until_complete(
            loop.create_server(lambda: AdminProtocol(self), sock=self.sock, backlog=128))
        if threading.current_thread() is threading.main_thread():
            for sig, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int"), (signal.SIGHUP, "hup"),
                              (signal.SIGUSR1, "usr1")):
                loop.add_signal_handler(sig, self._on_signal, name)
        for hook in self.start_hooks:
            hook(self)
        self._tick()
        try:
            return loop.run_until_complete(self.stopping)
        finally:
            self.server.close()
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
        """Reopen the audit log (logrotate)."""
        if self.audit is not None:
            self.audit.reopen()

    def audit_admin(self, client: str, method: str, path: str, status: int) -> None:
        """One audit line per call of the management API (``/admin/*``); probes and
        scrapes (``/livez``, ``/readyz``, ``/metrics``) are not audited."""
        if self.audit is not None and path.startswith("/admin"):
            self.audit.write(orjson.dumps({"ts": time.time(), "event": "admin_request", "client_ip": client,
                                           "method": method, "path": path, "status": status}))

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
        return render(snap, extra)

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
        if path == "/admin/workers":
            return 200, [_JSON, _NO_STORE], orjson.dumps(self.workers_doc())
        return 404, [_JSON], b'{"status":404,"title":"Not Found"}'


class AdminProtocol(asyncio.Protocol):
    """One admin connection: GET/HEAD requests answered in order, bodies refused."""

    __slots__ = ("control", "transport", "parser", "url", "size", "timer", "closed", "peer")

    def __init__(self, control: Control) -> None:
        self.control = control
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.size = 0
        self.timer = None
        self.closed = False
        self.peer = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self._arm()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.control.loop.call_later(IDLE_TIMEOUT, self._close)

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, [_JSON], b'{"status":400,"title":"Bad Request"}', False, False)
        if self.size > MAX_HEAD and not self.closed:
            self._send(431, [_JSON], b'{"status":431,"title":"Request Header Fields Too Large"}', False, False)

    def on_message_begin(self) -> None:
        self.url = b""
        self._arm()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        if self.closed:
            return
        p = self.parser
        method = p.get_method().decode("ascii", "replace")
        keep = p.should_keep_alive()
        self.size = 0
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        if method not in ("GET", "HEAD"):
            self.control.audit_admin(self.peer, method, path, 405)
            self._send(405, [_JSON, (b"allow", b"GET, HEAD")], b'{"status":405,"title":"Method Not Allowed"}',
                       keep, method == "HEAD")
            return
        try:
            st, headers, body = self.control.respond(method, path)
        except Exception as e:
            log.exception("admin %s failed: %s", path, e)
            st, headers, body = 500, [_JSON], b'{"status":500,"title":"Internal Server Error"}'
        self.control.audit_admin(self.peer, method, path, st)
        self._send(st, headers, body, keep, method == "HEAD")

    def _send(self, status, headers, body, keep, head_only) -> None:
        if self.closed:
            return
        self.transport.write(reply_bytes(status, headers, body, keep_alive=keep, head_only=head_only))
        if not keep:
            self._close()
        else:
            self._arm()
