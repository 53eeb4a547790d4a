"""A worker process's life (L7): event loop, listeners, tick, reload, drain.

``Worker`` is created after fork (or directly by ``fastgw`` without a supervisor): it
makes the uvloop loop, builds the App from the config snapshot, serves the listening
sockets it was given, and runs one tick per second for chores (Date header, log flush,
heartbeat).  Nothing here runs at import time.

Signals (standalone mode; under the supervisor the supervisor drives the same methods):
TERM = graceful drain, INT = fast exit, HUP = reload the config file (standalone only),
USR1 = reopen log files.  Handlers only record the signal; ``_on_signal`` dispatches to
``handle_<name>`` on the loop (STYLE.md item 1).

Under the supervisor (``fastgw.supervisor.child``) the worker is driven through hooks:
``start_hooks`` run once the sockets are served (the worker reports ready),
``tick_hooks`` every second (heartbeat), ``drain_hooks`` when a drain starts; a reload
arrives as a validated snapshot for ``apply_config``.  A direct HUP is ignored there: only
the supervisor's snapshot may change the config, so all workers run the same one.

The listener: one ``DownstreamProtocol`` per connection, behind a
``ProxyProtocolGate`` when ``gateway.proxy_protocol.enabled`` (the gate then also starts
TLS after the header); with ``gateway.tls`` the certificate is reloaded on every reload.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading

from fastgw import clock
from fastgw.http.netaddr import TrustedNets
from fastgw.http.protocol import ConnInfo, DownstreamProtocol
from fastgw.http.proxyproto import ProxyProtocolGate
from fastgw.obs import oplog
from fastgw.obs.logbuf import LogBuffer
from fastgw.obs.metrics import Metrics
from fastgw.pipeline.deps import Deps
from fastgw.pipeline.engine import Engine
from fastgw.runtime import discovered
from fastgw.runtime.app import App

log = logging.getLogger("fastgw")


def bind_socket(host: str, port: int, *, reuse_port: bool = True, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket (SO_REUSEPORT so several workers may each have one)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(backlog)
    s.setblocking(False)
    return s


# Drain: how long a connection opened before the drain stopped accepting, with no
# request yet, may take to send its first request before it is closed.
FRESH_GRACE = 1.0


class BootError(Exception):
    """The worker cannot start; the message is for the operator, as is."""


def _log_target(cfg) -> str:
    lg = cfg.monitoring.logging
    al = lg.access_log
    return al.output or lg.output


def without_control(cfg) -> str | None:
    """What a worker alone cannot do (no supervisor, so no shared health table and no
    control process): active checks and outlier ejection; None when no service uses them.
    Said once at start, precisely, rather than silently never marking an instance down."""
    checked = [n for n, s in cfg.services.items() if s.health]
    multi = [n for n, s in cfg.services.items() if len(s.instances) > 1 and s.outlier_detection.enabled]
    if not checked and not multi:
        return None
    parts = []
    if checked:
        parts.append("active health checks (services " + ", ".join(checked) + ")")
    if multi:
        parts.append("outlier ejection (services " + ", ".join(multi) + ")")
    return ("running as one process without the supervisor: " + " and ".join(parts)
            + (" are" if len(parts) > 1 else " is") + " off (they run in the control process and publish in shared memory); every "
            "instance stays in the rotation; retries still apply")


class Worker:
    def __init__(self, config, sockets, *, worker_id: int = 0, shm=None, metrics_store=None,
                 config_path: str | None = None, standalone: bool = True) -> None:
        self.config = config
        self.sockets = sockets
        self.worker_id = worker_id
        self.shm = shm
        self.metrics_store = metrics_store
        self.config_path = config_path
        self.standalone = standalone
        self.loop = None
        self.engine = None
        self.servers = []
        self.access_buf = None
        self.audit_buf = None
        self.stopping = None
        self.tick_handle = None
        self.tick_hooks = []
        self.start_hooks = []
        self.drain_hooks = []
        self.generation = 0
        self.ssl_ctx = None
        self.conn_info = None
        self.pp_nets = TrustedNets(())
        self.draining = False       # a drain started (readiness fails; see ``drain``)
        self.drain_counts = None    # (drained, aborted) connections once a drain ends
        self._factory = None        # the listener's protocol factory and TLS context, kept
        self._server_ssl = None     # to serve the accept queue a drain empties by hand

    # ------------------------------------------------------------------ setup
    def _deps(self, config) -> Deps:
        deps = Deps(config, loop=self.loop, shm=self.shm, metrics=self.metrics, log=log,
                    worker_id=self.worker_id)
        if self.access_buf is not None:
            deps.state["access_log_buffer"] = self.access_buf
        if self.audit_buf is not None:
            import orjson
            buf = self.audit_buf
            deps.audit = lambda rec: buf.write(orjson.dumps(rec))
        return deps

    def build_app(self, config, old=None) -> App:
        deps = self.deps if old is None else self._deps(config)
        if old is not None:
            deps.state = self.deps.state  # long-lived per-worker state survives reloads
            self.deps = deps
        return App(config, deps, loop=self.loop, metrics=self.metrics, log=log, old=old)

    def run(self) -> int:
        import uvloop

        loop = self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.metrics = Metrics(self.metrics_store)
        cfg = self.config
        lg = cfg.monitoring.logging
        if lg.access_log.enabled:
            self.access_buf = LogBuffer(_log_target(cfg))
        audit_out = getattr(lg.audit, "output", None)
        if audit_out:
            self.audit_buf = LogBuffer(audit_out)
        self.deps = self._deps(cfg)
        app = self.build_app(cfg)
        self.engine = Engine(app)
        if self.standalone and self.shm is None:
            w = without_control(cfg)
            if w:
                log.warning("%s", w)
        self.stopping = loop.create_future()
        loop.run_until_complete(self._serve())
        if threading.current_thread() is threading.main_thread():
            for sig, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int"), (signal.SIGHUP, "hup"),
                              (signal.SIGUSR1, "usr1")):
                loop.add_signal_handler(sig, self._on_signal, name)
        for hook in self.start_hooks:
            hook(self)
        if threading.current_thread() is threading.main_thread():
            # Everything built so far (modules, config, app, uvloop) lives as long as the
            # worker: move it out of the cyclic collector's sight, so the collections
            # that per-connection garbage triggers do not walk it again and again (a cost
            # paid on every new connection; docs/bench.md has the figures).  Only at
            # start: a reload's old snapshot must stay collectable.
            gc.freeze()
        self._tick()
        try:
            code = loop.run_until_complete(self.stopping)
        finally:
            if self.engine is not None:
                self.metrics.publish_instances(self.engine.app.live_instances())
            self.metrics.publish()
            self._flush_logs()
            loop.close()
        return code

    async def _serve(self) -> None:
        cfg = self.config
        tls = cfg.gateway.tls
        if tls is not None:
            import ssl
            self.ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                self.ssl_ctx.load_cert_chain(tls.cert_file, tls.key_file)
            except (OSError, ssl.SSLError) as e:
                raise BootError(f"gateway.tls: cannot load cert_file {tls.cert_file} / key_file {tls.key_file}: "
                                f"{getattr(e, 'strerror', None) or e}") from e
        self._listener(cfg)
        engine = self.engine
        loop = self.loop

        def http_factory():
            return DownstreamProtocol(engine, self.conn_info, loop)

        factory, server_ssl = http_factory, self.ssl_ctx
        if cfg.gateway.proxy_protocol.enabled:
            # the PROXY header is cleartext before any TLS: the gate starts TLS after it
            def factory():
                return ProxyProtocolGate(http_factory, self._pp_trusted, loop, timeout=self.conn_info.t_head,
                                         ssl_ctx=self.ssl_ctx, on_reject=self._pp_rejected)
            server_ssl = None

        self._factory, self._server_ssl = factory, server_ssl
        for s in self.sockets:
            srv = await loop.create_server(factory, sock=s, ssl=server_ssl, backlog=2048)
            self.servers.append(srv)

    def _listener(self, cfg) -> None:
        """Per-connection settings of the data listener, rebuilt on every reload."""
        gw = cfg.gateway
        self.conn_info = ConnInfo(gw.limits, gw.timeouts, tls=gw.tls is not None)
        pp = gw.proxy_protocol
        cidrs = pp.effective_cidrs(gw.trusted_proxies) if pp.enabled else []
        self.pp_nets = TrustedNets(cidrs)

    def _pp_trusted(self, ip: str) -> bool:
        return ip in self.pp_nets

    def _pp_rejected(self, reason: str) -> None:
        log.debug("PROXY protocol: connection closed: %s", reason)
        self.metrics.inc("fastgw_proxy_protocol_rejected_total")

    # ------------------------------------------------------------------ tick
    def _tick(self) -> None:
        clock.tick()
        if self.access_buf is not None:
            self.access_buf.flush()
        if self.audit_buf is not None:
            self.audit_buf.flush()
        if self.engine is not None:
            if self.engine.app.discovered:  # DNS discovery published a new set: swap it in
                discovered.poll(self.engine.app)
            self.metrics.publish_pools(self.engine.app.pools.values())
            self.metrics.publish_instances(self.engine.app.live_instances())
            self.engine.app.tick()   # slow start; per-instance in flight into the health table
            self.metrics.set_inflight(self.engine.inflight)
        self.metrics.publish()
        for hook in self.tick_hooks:
            try:
                hook()
            except Exception as e:
                log.exception("tick hook failed: %s", e)
        self.tick_handle = self.loop.call_later(1.0, self._tick)

    def _flush_logs(self) -> None:
        for b in (self.access_buf, self.audit_buf):
            if b is not None:
                b.flush()

    # ------------------------------------------------------------------ signals
    def _on_signal(self, name: str) -> None:
        getattr(self, "handle_" + name)()

    def handle_term(self) -> None:
        """Graceful drain: stop accepting after the drain delay, finish in-flight requests, exit 0."""
        if self.draining:
            self.handle_int()
            return
        self.loop.create_task(self.drain())

    def handle_int(self) -> None:
        """Fast exit: close everything now."""
        if not self.stopping.done():
            self.stopping.set_result(0)

    def handle_hup(self) -> None:
        """Reload the config file (standalone mode): validate, then swap in place."""
        if not self.standalone:
            log.warning("HUP sent to a worker is ignored: send it to the supervisor (pid %d)", os.getppid())
            return
        if not self.config_path:
            return
        from fastgw.config import ConfigError, load_config
        try:
            cfg, _warnings = load_config(self.config_path)
        except ConfigError as e:
            for line in e.errors:
                log.error("reload refused: %s", line)
            self.metrics.inc("fastgw_config_reloads_total", (("result", "failed"),))
            return
        except OSError as e:
            log.error("reload refused: %s", e)
            self.metrics.inc("fastgw_config_reloads_total", (("result", "failed"),))
            return
        self.apply_config(cfg)

    def handle_usr1(self) -> None:
        """Reopen log files (logrotate)."""
        oplog.reopen()
        for b in (self.access_buf, self.audit_buf):
            if b is not None:
                b.reopen()

    # ------------------------------------------------------------------ reload & drain
    def apply_config(self, cfg, generation: int | None = None) -> bool:
        """Swap to a validated config snapshot; in-flight requests finish on the old one.

        Returns False (old config kept) if the snapshot cannot be built here.  Standalone,
        the worker counts its reloads; under the supervisor, the supervisor does (once).
        """
        old = self.engine.app
        try:
            self._reload_tls(cfg)
            app = self.build_app(cfg, old=old)
        except Exception as e:
            log.exception("reload failed while building the new config: %s", e)
            if self.standalone:
                self.metrics.inc("fastgw_config_reloads_total", (("result", "failed"),))
            return False
        self.config = cfg
        self._listener(cfg)
        self.engine.swap(app)
        old.retire(app)
        self.metrics.publish_instances(old.live_instances())  # (the new snapshot has its own Instances)
        self.generation = self.generation + 1 if generation is None else generation
        if self.standalone:
            self.metrics.inc("fastgw_config_reloads_total", (("result", "ok"),))
        log.info("config reloaded (generation %d)", self.generation)
        return True

    def _reload_tls(self, cfg) -> None:
        """Load the listener certificate again (it may have been renewed under the same
        names); a bad pair raises and leaves the live context untouched."""
        tls = cfg.gateway.tls
        if tls is None or self.ssl_ctx is None:
            return
        import ssl
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(tls.cert_file, tls.key_file)
        self.ssl_ctx.load_cert_chain(tls.cert_file, tls.key_file)  # new handshakes use it

    async def drain(self, delay: float | None = None, timeout: float | None = None) -> None:
        """Graceful drain, the timeline of docs/operations.md ("Draining"):

        1. now: readiness answers 503 (``engine.ready``); everything else is unchanged
           for ``delay``: keep-alive connections stay open and new ones are accepted, so
           the load balancer can notice before anything is refused;
        2. after ``delay``: stop accepting, without resetting what the accept queues hold
           (``_stop_accepting``); from now every response says ``Connection: close``
           (``engine.draining``), idle connections close, busy ones after their response;
           a connection that has not sent its first request yet gets ``FRESH_GRACE`` to
           send it (closing it at once would race that request into a reset);
        3. at ``delay + timeout``: what is still open is aborted; the worker exits 0 and
           logs the counts (connections drained, aborted).
        """
        gw = self.config.gateway
        delay = float(gw.drain.delay) if delay is None else delay
        timeout = float(gw.drain.timeout) if timeout is None else timeout
        engine = self.engine
        loop = self.loop
        self.draining = True
        engine.ready = False  # readiness answers 503 from now on; keep-alive unchanged
        for hook in self.drain_hooks:
            hook()
        start = loop.time()
        await asyncio.sleep(delay)
        engine.draining = True  # each further response: Connection: close
        queued = await self._stop_accepting()
        total = len(engine.connections)
        fresh = []
        for proto in list(engine.connections):
            if proto.n_requests == 0 and proto.cur is None:
                # opened but no request yet (just accepted, or its head still arriving):
                # closing it now would race the request the client is sending; it gets
                # FRESH_GRACE to send one (answered with Connection: close)
                proto.draining = True
                fresh.append(proto)
            else:
                proto.start_drain()
        grace_end = loop.time() + min(FRESH_GRACE, timeout)
        while engine.connections and loop.time() - start < delay + timeout:
            if fresh and loop.time() >= grace_end:
                for proto in fresh:
                    if proto.cur is None and not proto.closed:
                        proto.start_drain()
                fresh = []
            await asyncio.sleep(0.02)
        aborted = len(engine.connections)
        for proto in list(engine.connections):
            proto.abort()
        self.drain_counts = (total - aborted, aborted)
        log.info("worker %d drained: %d connections closed cleanly (%d from the accept queue), %d aborted",
                 self.worker_id, total - aborted, queued, aborted)
        if not self.stopping.done():
            self.stopping.set_result(0)

    async def _stop_accepting(self) -> int:
        """Close the listeners without dropping a queued connection; returns how many
        connections were taken from the accept queues.

        Closing a listening socket resets the connections waiting in its accept queue
        (handshake done, not yet accepted).  So each socket is duplicated first; the
        server is closed (the event loop stops watching it), then the duplicate is
        accepted from until the queue is empty, each connection served like any other
        (with ``Connection: close``), and only then closed.  A connection that arrives
        after that, past ``drain.delay``, is refused.
        """
        dups = []
        for s in self.sockets:
            try:
                dups.append(socket.socket(fileno=os.dup(s.fileno())))
            except OSError:
                pass
        for srv in self.servers:
            srv.close()
        loop, factory, ssl_ctx = self.loop, self._factory, self._server_ssl
        pending = []
        for d in dups:
            d.setblocking(False)
            while True:
                try:
                    conn, _addr = d.accept()
                except OSError:         # BlockingIOError: the queue is empty
                    break
                pending.append(loop.connect_accepted_socket(factory, conn, ssl=ssl_ctx))
            d.close()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
