"""The engine (L5): runs one request through the phases of DESIGN.md.

It is the client protocol's handler (``pipeline.boundary.ClientHandler``):
``DownstreamProtocol`` reports parsed ``Request`` objects and body bytes; the engine
makes one ``Exchange`` per request (``pipeline.exchange``, the ``Ctx`` middlewares see),
decides (route, middlewares) and builds the bytes; the protocols own sockets and timers.
The upstream half (attempts, retries, the upstream protocol's events) is ``Proxy``
(``pipeline.proxy``).

    dispatch -> Exchange -> health path? -> normalise + route (errors: global chain)
             -> request filters -> local Reply (response filters of the middlewares
             that ran) | whole-body filters | Proxy.forward
    errors   -> GatewayError -> reply_error (problem+json) or abort if the head was sent
    finish   -> logging phase (always, errors included)

The current config snapshot is ``self.app`` (a runtime ``App``); a request keeps the
snapshot it started on (``x.app``), so a reload never changes a request mid-flight.
"""

from __future__ import annotations

import asyncio
import types

from fastgw import clock as _clock
from fastgw.clock import date_header
from fastgw.errors import GatewayError
from fastgw.http.messages import Reply, error_reply
from fastgw.http.netaddr import client_from_xff
from fastgw.http.normalize import normalize_path, split_target
from fastgw.http.protocol import PAUSE_WAIT
from fastgw.http.request import Request
from fastgw.http.wire import CONTINUE_100, LAST_CHUNK, Prebuilt, chunk, reply_bytes
from fastgw.pipeline.exchange import Exchange, fill_exchange
from fastgw.pipeline.heads import keep_client
from fastgw.pipeline.proxy import Proxy

MAX_PENDING_BODY = 256 * 1024  # body bytes held while the upstream connection is made
# The match cache (App.match_cache): entries before it is emptied and started again, and
# the longest request target it keeps (long targets rarely repeat).  A full cache is
# cleared rather than evicted in order: a workload of ever-new targets pays one failed
# lookup and one insert per request either way.
MATCH_CACHE_SIZE = 1024
MATCH_CACHE_TARGET = 512
_new = object.__new__


class Engine:
    def __init__(self, app) -> None:
        self.app = app
        self.connections: set = set()
        self.draining = False
        self.ready = True
        self.proxy = Proxy(self)  # the upstream half (attempts)

    # ------------------------------------------------------------------ config
    def swap(self, app) -> None:
        """Install a new config snapshot; requests in flight finish on the old one."""
        self.app = app

    def is_trusted(self, ip: str) -> bool:
        return ip in self.app.trusted_nets

    @property
    def inflight(self) -> int:
        """Requests being processed: the connections with a request in flight (the
        worker tick publishes it as a gauge).  Counted when read, once a second, rather
        than by an increment and a decrement per request."""
        n = 0
        for proto in self.connections:
            if proto.cur is not None:
                n += 1
        return n

    # ------------------------------------------------------------------ connections
    def connection_made(self, proto) -> None:
        self.connections.add(proto)
        app = self.app
        if len(self.connections) > app.max_connections:
            # Past gateway.max_connections for this worker: a clear 503 and close,
            # rather than a silent reset; the load balancer retries elsewhere.
            err = GatewayError("too_many_connections", "the gateway worker is at its connection limit")
            proto.write(reply_bytes(503, error_reply(err).headers, error_reply(err).body, keep_alive=False))
            proto.close()
        app.metrics.conn_open(1)

    def connection_lost(self, proto, req) -> None:
        self.connections.discard(proto)
        self.app.metrics.conn_open(-1)
        if req is not None:
            x = req.exchange
            self.proxy.drop(x)
            x.flags.append("client_abort")
            if x.status == 0:
                x.status = 499
            self.finish(proto, req)

    def downstream_paused(self, proto, paused: bool) -> None:
        req = proto.cur
        if req is not None:
            a = req.exchange.attempt
            if a is not None and a.conn is not None:
                a.conn.pause_reading(paused)

    # ------------------------------------------------------------------ requests
    def dispatch(self, proto, req, body) -> None:
        app = self.app
        x = fill_exchange(_new(Exchange), req, app)  # (Exchange(req, app) without a class call)
        peer = req.peer_ip
        if app.any_trusted and self.is_trusted(peer):
            x.trusted_peer = True
            xff = req.xff
            if xff is not None:
                x.client_ip = client_from_xff(xff, peer, self.is_trusted)
            xfp = req.xfp
            if xfp is not None:
                # the proxy nearest to us (last element) says how the client connected
                x.scheme = "https" if xfp.rpartition(b",")[2].strip().lower() == b"https" else "http"
        if body:
            x.pending = body
            x.pending_size = sum(len(b) for b in body)
        try:
            raw = req.raw_target
            cache = app.match_cache
            hit = None
            if cache is not None:
                key = (req.host, req.method, raw)
                hit = cache.get(key)
            if hit is not None:
                # the same target seen before on this config: split, normalised and matched
                # then, so that work is not repeated per request; the health path and
                # errors are never cached
                req.query, req.path, route, params = hit
                if route is None:  # conditional candidates (Router.cache_entry): match them per request
                    route, params = app.router.match(req.host, req.method, req.path, req.header, req.query,
                                                     False, params)
                elif params:
                    params = params.copy()
            else:
                path, query, authority = split_target(raw)
                if authority is not None:  # absolute-form: the authority replaces Host (RFC 9112 3.2.2)
                    req.host = authority.decode("latin-1").lower()
                    req.raw_host = authority
                req.query = query
                norm, enc_slash = normalize_path(path)
                req.path = norm
                if norm == app.health_path:
                    self._health(proto, x)
                    return
                method = req.method
                route, params = app.router.match(req.host, method, norm, req.header, query,
                                                 method == "OPTIONS" and self._is_preflight(req), enc_slash)
                if method == "OPTIONS" and not route.answers_preflight and route.cfg is not None \
                        and "OPTIONS" not in route.cfg.methods:
                    # matched on path alone as a preflight, but this route has no CORS to answer
                    # it: the method list applies like for any other request
                    route, params = app.router.match(req.host, method, norm, req.header, query, False, enc_slash)
                elif cache is not None and authority is None and method != "OPTIONS" and len(raw) <= MATCH_CACHE_TARGET:
                    # (OPTIONS: a preflight is matched on its headers; absolute-form: the key's host is not the one used)
                    if len(cache) >= MATCH_CACHE_SIZE:
                        cache.clear()
                    cache[key] = app.router.cache_entry(query, norm, route, params, enc_slash)
            x.route = route
            x.path_params = params
            if (req.content_length is not None and req.content_length > route.max_body) or \
                    (req.chunked and req.bytes_received > route.max_body):
                raise GatewayError("body_too_large", f"request body exceeds {route.max_body} bytes")
        except GatewayError as err:
            x.error = err
            self.reply_error(proto, x, err, app.global_chain)
            return
        if x.upgrade is not None and (req.method != "GET" or x.upgrade.lower() != b"websocket"):
            # Only WebSocket is tunnelled; another Upgrade (h2c, ...) is not forwarded, and
            # the parser stops at an upgrade head, so this connection ends after the answer.
            x.upgrade = None
            x.keep_alive = False
        ids = route.chain.ids
        if ids is not None:
            # the request id, before every request filter (``Middleware.makes_request_ids``):
            # the usual request's is taken here, the middleware's ``request_filter``
            # written out (no request filter ran yet, so the header lines are still empty)
            if req.x_request_id is None and ids.captured:
                try:
                    line, x.request_id = ids.pool.pop()
                except IndexError:
                    line, x.request_id = ids.refill()
                x.up_lines = x.resp_lines = line
            else:
                ids.request_filter(x)
        chain = route.chain
        hooks = chain.request_sync
        if hooks is None:
            self._run_chain(proto, x, chain.request, 0)
            return
        # the usual chain (every hook synchronous), in a plain loop
        try:
            for idx, fn in hooks:
                r = fn(x)
                if r is not None:
                    if r.__class__ is _COROUTINE:   # a plain hook that must wait this time
                        self._waited(proto, x, idx, r)
                    else:
                        self.send_local(proto, x, r, idx)
                    return
        except Exception as e:  # a middleware bug must not kill the connection silently
            self._pipeline_failed(proto, x, e)
            return
        if chain.direct and req.expect is None:
            self.proxy.forward(proto, x)
        else:
            self._after_request_chain(proto, x)

    def _run_chain(self, proto, x, hooks, start: int) -> None:
        """Run request filters from ``start``.  An ``async`` hook is driven eagerly: if it
        finishes without suspending (a cached token, a warm key set) no task is created;
        only a hook that really waits (a JWKS refetch, Redis) continues in a task."""
        try:
            for pos in range(start, len(hooks)):
                idx, fn, is_async = hooks[pos]
                r = fn(x)
                if r is None:
                    continue
                if is_async or r.__class__ is _COROUTINE:
                    # an async hook, or a plain one that must wait this time (the
                    # middleware contract)
                    r = self._drive(proto, x, hooks, pos, r)
                    if r is None:
                        continue
                    if r is _WAITING:
                        return
                self.send_local(proto, x, r, idx)
                return
        except Exception as e:  # a middleware bug must not kill the connection silently
            self._pipeline_failed(proto, x, e)
            return
        self._after_request_chain(proto, x)

    def _drive(self, proto, x, hooks, pos, coro):
        """Step the coroutine of hook ``hooks[pos]`` eagerly: its result when it finished
        without suspending (no task made), else ``_WAITING``: it goes on in a task
        (``_resume``), which then runs the rest of the chain."""
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            return stop.value
        x.app.loop.create_task(self._resume(proto, x, hooks, pos, coro, waiting))
        return _WAITING

    def _waited(self, proto, x, idx: int, coro) -> None:
        """The all-synchronous loop of ``dispatch`` met a coroutine from the hook at chain
        index ``idx``: drive it, then go on as ``_run_chain`` would."""
        hooks = x.route.chain.request
        pos = [h[0] for h in hooks].index(idx)
        r = self._drive(proto, x, hooks, pos, coro)
        if r is None:
            self._run_chain(proto, x, hooks, pos + 1)
        elif r is not _WAITING:
            self.send_local(proto, x, r, idx)

    async def _resume(self, proto, x, hooks, pos, coro, waiting) -> None:
        """Finish a suspended async hook, then the rest of the chain."""
        try:
            while True:
                # The hook's first step ran outside this task: the future it yielded is
                # still marked as being awaited by someone; clear that before awaiting it.
                if waiting is None:
                    waiting = asyncio.sleep(0)
                elif getattr(waiting, "_asyncio_future_blocking", False):
                    waiting._asyncio_future_blocking = False
                try:
                    await waiting
                except BaseException as e:  # deliver the failure into the hook
                    try:
                        waiting = coro.throw(e)
                    except StopIteration as stop:
                        r = stop.value
                        break
                    continue
                try:
                    waiting = coro.send(None)
                except StopIteration as stop:
                    r = stop.value
                    break
        except Exception as e:
            self._pipeline_failed(proto, x, e)
            return
        if proto.closed or proto.cur is not x.request:
            return
        if r is not None:
            self.send_local(proto, x, r, hooks[pos][0])
            return
        self._run_chain(proto, x, hooks, pos + 1)

    def _pipeline_failed(self, proto, x, e: Exception) -> None:
        err = GatewayError("internal", "internal error in the request pipeline")
        x.error = err
        x.app.log.exception("middleware failed: %s", e)
        if proto.cur is x.request and not proto.closed:
            self.reply_error(proto, x, err, x.route.chain)

    def _after_request_chain(self, proto, x) -> None:
        if x.route.chain.request_body:
            x.buffer = []
            self._maybe_continue(proto, x)
            if proto.cur_complete and proto.cur is x.request:
                self.on_body_end(proto, x.request)
            return
        if x.request.expect is not None:
            self._maybe_continue(proto, x)
        self.proxy.forward(proto, x)

    @staticmethod
    def _maybe_continue(proto, x) -> None:
        exp = x.request.expect
        if exp is not None and not proto.cur_complete:
            if exp.lower() == b"100-continue":
                proto.write(CONTINUE_100)

    @staticmethod
    def _is_preflight(req) -> bool:
        return req.method == "OPTIONS" and req.header(b"access-control-request-method") is not None \
            and req.header(b"origin") is not None

    def _health(self, proto, x) -> None:
        ok = self.ready and not self.draining and all(check() for check in self.app.ready_checks)
        body = b'{"status":"ready"}' if ok else b'{"status":"not ready"}'
        x.status = 200 if ok else 503
        x.nolog = True
        keep = keep_client(x, proto, self.draining)
        proto.write(reply_bytes(x.status, [(b"content-type", b"application/json"),
                                           (b"cache-control", b"no-store")], body,
                                keep_alive=keep, head_only=x.request.method == "HEAD"))
        proto.request_done(x.request, keep)

    # ------------------------------------------------------------------ local replies
    def send_local(self, proto, x, reply: Reply, upto: int) -> None:
        """Send a reply made by the middleware at chain index ``upto``."""
        if reply.__class__ is Prebuilt:
            # (the cache's hit) its maker checked that no response filter up to ``upto``
            # applies and no response header is dropped: the exchange's own lines around
            # its bytes, one join (of a tuple: fewer instructions than a ``%`` format of
            # seven pieces, callgrind), one write (``keep``: heads.keep_client inline;
            # the client protocol's ``write`` written out, as upstream.client does)
            req = x.request
            keep = x.keep_alive and not self.draining and not proto.draining and proto.cur_complete
            t = proto.transport
            if t is not None and not proto.closed:
                t.write(_join((
                    reply.line, _clock.date_line or date_header(), x.app.server_header or b"", reply.lines,
                    x.resp_lines, reply.close if not keep else reply.keep if req.version == "1.1" else reply.keep10,
                    reply.body if req.method != "HEAD" else b"")))
            x.status = reply.status
            x.bytes_sent += len(reply.body)
            proto.request_done(req, keep)
            return
        for idx, fn in x.route.chain.response:
            if idx <= upto:
                fn(x, reply)
        self._write_reply(proto, x, reply, False)

    def reply_error(self, proto, x, err: GatewayError, chain) -> None:
        """Answer ``err`` (problem+json) through ``chain``'s response filters; the error
        table's ``closes_connection`` column says whether the connection ends with it."""
        reply = error_reply(err, x.request_id)
        if chain is not None:
            if chain is self.app.global_chain and not x.request_id and chain.error:
                # no request filter ran for this reply: what it needs (the request id)
                for fn in chain.error:
                    fn(x)
                reply = error_reply(err, x.request_id)
            for _idx, fn in chain.response:
                fn(x, reply)
        self._write_reply(proto, x, reply, err.closes_connection)

    def _write_reply(self, proto, x, reply: Reply, err_closes: bool) -> None:
        req = x.request
        keep = not err_closes and keep_client(x, proto, self.draining)
        headers = reply.headers
        drop = x.resp_drop
        if drop:
            headers = [h for h in headers if h[0].lower() not in drop]
        data = reply_bytes(reply.status, headers, reply.body, keep_alive=keep,
                           head_only=req.method == "HEAD",
                           extra=_KEEP_ALIVE_10 if keep and req.version == "1.0" else None,
                           server=self.app.server_header, raw=x.resp_lines)
        x.status = reply.status
        x.bytes_sent += len(reply.body)
        if reply.kind and x.error is None:
            x.flags.append(reply.kind)
        proto.write(data)
        proto.request_done(req, keep)

    # ------------------------------------------------------------------ request body
    def on_body(self, proto, req, data: bytes) -> None:
        x = req.exchange
        if req.chunked and req.bytes_received > x.route.max_body:
            if x.status == 0:
                self._body_too_large(proto, x)
            return
        buf = x.buffer
        if buf is not None:
            buf.append(data)
            return
        a = x.attempt
        if a is not None:
            up = a.conn
            if up is not None and up.handler is not None:
                up.write(chunk(data) if x.chunked else data)
                return
        pend = x.pending
        if pend is None:
            pend = x.pending = []
            x.pending_size = 0
        pend.append(data)
        x.pending_size += len(data)
        if x.pending_size > MAX_PENDING_BODY:
            proto.pause_for(PAUSE_WAIT)

    def _body_too_large(self, proto, x) -> None:
        self.proxy.drop(x)
        err = GatewayError("body_too_large", f"request body exceeds {x.route.max_body} bytes")
        x.error = err
        self.reply_error(proto, x, err, x.route.chain)

    def on_body_end(self, proto, req) -> None:
        x = req.exchange
        if req.chunked and req.bytes_received > x.route.max_body and x.status == 0:
            self._body_too_large(proto, x)
            return
        buf = x.buffer
        if buf is not None:
            if x.pending:
                buf[:0] = x.pending
                x.pending = None
            if x.route is None or proto.cur is not req:
                return
            body = b"".join(buf)
            x.buffer = None
            for idx, fn in x.route.chain.request_body:
                r = fn(x, body)
                if r is not None:
                    if r.__class__ is bytes:  # the filter rewrote the body (transform)
                        body = r
                        continue
                    self.send_local(proto, x, r, idx)
                    return
            # forward as a Content-Length body now that it is whole
            x.pending = [body] if body else []
            x.pending_size = len(body)
            x.content_length = len(body)
            x.chunked = False
            self.proxy.forward(proto, x)
            return
        a = x.attempt
        up = a.conn if a is not None else None
        if up is not None and up.handler is not None:
            if x.chunked:
                up.write(LAST_CHUNK)
            up.request_sent()  # the upstream timeout starts when the whole request is sent
        else:
            x.body_done = True

    def body_timeout(self, proto, req) -> None:
        x = req.exchange
        self.proxy.drop(x)
        err = GatewayError("request_timeout", "request body not received in time")
        x.error = err
        if x.status == 0:
            self.reply_error(proto, x, err, x.route.chain if x.route else None)
        else:
            proto.abort()

    def linger_start(self, proto) -> None:
        self.app.metrics.inc("fastgw_downstream_lingering_connections", (), 1)

    def linger_done(self, proto, end: str) -> None:
        m = self.app.metrics
        m.inc("fastgw_downstream_lingering_connections", (), -1)
        m.inc("fastgw_downstream_lingering_closes_total", (("end", end),))

    def abort_current(self, proto, kind: str) -> None:
        req = proto.cur
        if req is not None:
            x = req.exchange
            x.flags.append("bad_body")
            self.proxy.drop(x)

    def parse_error(self, proto, kind: str, detail: str) -> None:
        """A malformed or timed-out request head: answer and close, forward nothing."""
        req = Request()
        req.peer_ip = proto.peer_ip
        req.path = "-"
        req.keep_alive = False
        x = Exchange(req, self.app)
        err = GatewayError(kind, detail)
        x.error = err
        proto.cur = req
        proto.cur_complete = True
        self.reply_error(proto, x, err, self.app.global_chain)

    # ------------------------------------------------------------------ logging phase
    def finish(self, proto, req) -> None:
        x = req.exchange
        # the Request and its Exchange refer to each other: break the cycle here, so both
        # are freed by reference counting, not by the cycle collector (whose
        # collections, triggered by per-request garbage, would walk every live object)
        req.exchange = None
        a = x.attempt
        if a:   # the last attempt ends with the exchange (in flight: pipeline.proxy)
            a.instance.done += 1
        if x.nolog:
            # the health path: not logged, not counted (a load balancer probes it every few
            # seconds per gateway host)
            return
        route = x.route
        if route is not None:
            chain = route.chain
            if route.retry is not None and x.attempt is not None:
                route.retry.budget.done(x)   # the live count of the retry budget (forward: +1)
        else:
            chain = x.app.global_chain
        err = x.error
        for fn in chain.logging:
            try:
                fn(x, err)
            except Exception as e:  # logging must never break the connection
                x.app.log.exception("logging hook failed: %s", e)
        x.app.metrics.request_done(x)


_join = b"".join
_KEEP_ALIVE_10 = [(b"connection", b"keep-alive")]  # an HTTP/1.0 client kept alive
_COROUTINE = types.CoroutineType
_WAITING = object()  # _drive: the hook suspended and goes on in a task
