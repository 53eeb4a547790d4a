"""The engine (L5): runs one request through the phases of DESIGN.md.

It is the handler of both protocols: ``DownstreamProtocol`` reports parsed requests and
body bytes, ``UpstreamProtocol`` reports the response.  The engine decides (route,
middlewares, upstream) and builds the bytes; the protocols own sockets and timers.

    dispatch -> health path? -> normalise + route (errors: global chain) -> request filters
             -> local Reply (response filters of the middlewares that ran) | proxy
    proxy    -> pool.acquire (idle first) -> one write: head + body at hand
    upstream_head -> response filters (reverse) -> head bytes (joined with the first body bytes)
    upstream_done -> pool.release -> proto.request_done -> logging phase (``finish``)
    errors   -> GatewayError -> error_reply (problem+json) or abort if the head was sent

The current config snapshot is ``self.app`` (a runtime ``App``); a request keeps the
snapshot it started on (``ctx.app``), so a reload never changes a request mid-flight.
"""

from __future__ import annotations

import asyncio

from fastgw.clock import monotonic
from fastgw.errors import GatewayError
from fastgw.http.messages import Reply, error_reply
from fastgw.http.netaddr import client_from_xff
from fastgw.http.normalize import normalize_path, split_target
from fastgw.http.protocol import PAUSE_UPSTREAM, PAUSE_WAIT
from fastgw.pipeline.heads import keep_client, request_head, response_head
from fastgw.http.wire import CONTINUE_100, LAST_CHUNK, chunk, reply_bytes

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
MAX_PENDING_BODY = 256 * 1024  # body bytes held while the upstream connection is made
# The match cache (App.match_cache): entries before it is emptied and started again, and
# the longest request target it keeps (long targets rarely repeat).  A full cache is
# cleared rather than evicted in order: a workload of ever-new targets pays one failed
# lookup and one insert per request either way.
MATCH_CACHE_SIZE = 1024
MATCH_CACHE_TARGET = 512



class Engine:
    def __init__(self, app) -> None:
        self.app = app
        self.connections: set = set()
        self.draining = False
        self.ready = True
        self.inflight = 0

    # ------------------------------------------------------------------ config
    def swap(self, app) -> None:
        """Install a new config snapshot; requests in flight finish on the old one."""
        self.app = app

    def is_trusted(self, ip: str) -> bool:
        return ip in self.app.trusted_nets

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

    def connection_lost(self, proto, cur) -> None:
        self.connections.discard(proto)
        self.app.metrics.conn_open(-1)
        if cur is not None:
            cancel = cur.notes.pop("_cancel", None)
            if cancel is not None:  # still waiting for a pooled connection: give the slot back
                cancel()
            self._drop_upstream(cur)
            cur.flags.append("client_abort")
            if cur.status == 0:
                cur.status = 499
            self.finish(proto, cur)

    def downstream_paused(self, proto, paused: bool) -> None:
        cur = proto.cur
        if cur is not None and cur.up is not None:
            cur.up.pause_reading(paused)

    # ------------------------------------------------------------------ requests
    def dispatch(self, proto, ctx, body) -> None:
        app = self.app
        ctx.app = app
        self.inflight += 1  # (published as a gauge on the worker tick)
        peer = ctx.client_ip = proto.peer_ip
        if ctx.tls:
            ctx.scheme = "https"
        if app.any_trusted and self.is_trusted(peer):
            ctx.trusted_peer = True
            xff = ctx.xff
            if xff is not None:
                ctx.client_ip = client_from_xff(xff, peer, self.is_trusted)
            xfp = ctx.xfp
            if xfp is not None:
                # the proxy nearest to us (last element) says how the client connected
                ctx.scheme = "https" if xfp.rpartition(b",")[2].strip().lower() == b"https" else "http"
        if body:
            ctx.pending = body
            ctx.notes["_pending_size"] = sum(len(b) for b in body)
        try:
            raw = ctx.raw_target
            cache = app.match_cache
            hit = None
            if cache is not None:
                key = (ctx.host, ctx.method, raw)
                hit = cache.get(key)
            if hit is not None:
                # the same target seen before on this config: split, normalised and matched
                # then (callgrind: ~10k instructions less per request); the health path and
                # errors are never cached
                ctx.query, ctx.path, route, params = hit
                if params:
                    params = params.copy()
            else:
                path, query, authority = split_target(raw)
                if authority is not None:  # absolute-form: the authority replaces Host (RFC 9112 3.2.2)
                    ctx.host = authority.decode("latin-1").lower()
                    ctx.raw_host = authority
                ctx.query = query
                norm, enc_slash = normalize_path(path)
                ctx.path = norm
                if norm == app.health_path:
                    self._health(proto, ctx)
                    return
                route, params = app.router.match(ctx.host, ctx.method, norm, ctx.header, query,
                                                 ctx.method == "OPTIONS" and self._is_preflight(ctx), enc_slash)
                if ctx.method == "OPTIONS" and not route.answers_preflight and route.cfg is not None \
                        and "OPTIONS" not in route.cfg.methods:
                    # matched on path alone as a preflight, but this route has no CORS to answer
                    # it: the method list applies like for any other request
                    route, params = app.router.match(ctx.host, ctx.method, norm, ctx.header, query, False, enc_slash)
                elif cache is not None and authority is None and ctx.method != "OPTIONS" and len(raw) <= MATCH_CACHE_TARGET:
                    # (OPTIONS: a preflight is matched on its headers; absolute-form: the key's host is not the one used)
                    if len(cache) >= MATCH_CACHE_SIZE:
                        cache.clear()
                    cache[key] = (query, norm, route, params.copy() if params else params)
            ctx.route = route
            ctx.path_params = params
            if (ctx.content_length is not None and ctx.content_length > route.max_body) or \
                    (ctx.chunked and ctx.bytes_received > route.max_body):
                raise GatewayError("body_too_large", f"request body exceeds {route.max_body} bytes")
        except GatewayError as err:
            ctx.error = err
            self._reply_error(proto, ctx, err, app.global_chain)
            return
        if ctx.upgrade is not None and (ctx.method != "GET" or ctx.upgrade.lower() != b"websocket"):
            # Only WebSocket is tunnelled; another Upgrade (h2c, ...) is not forwarded, and
            # the parser stops at an upgrade head, so this connection ends after the answer.
            ctx.upgrade = None
            ctx.keep_alive = False
        chain = route.chain
        hooks = chain.request_sync
        if hooks is None:
            self._run_chain(proto, ctx, chain.request, 0)
            return
        # the usual chain (every hook synchronous), in a plain loop
        try:
            for idx, fn in hooks:
                r = fn(ctx)
                if r is not None:
                    self.send_local(proto, ctx, r, idx)
                    return
        except Exception as e:  # a middleware bug must not kill the connection silently
            self._pipeline_failed(proto, ctx, e)
            return
        if chain.direct and ctx.expect is None:
            self.proxy(proto, ctx)
        else:
            self._after_request_chain(proto, ctx)

    def _run_chain(self, proto, ctx, hooks, start: int) -> None:
        """Run request filters from ``start``.  An ``async`` hook is driven eagerly: if it
        finishes without suspending (a cached token, a warm key set) no task is created;
        only a hook that really waits (a JWKS refetch, Redis) continues in a task."""
        try:
            for pos in range(start, len(hooks)):
                idx, fn, is_async = hooks[pos]
                if is_async:
                    coro = fn(ctx)
                    try:
                        waiting = coro.send(None)
                    except StopIteration as stop:
                        r = stop.value
                    else:
                        ctx.app.loop.create_task(self._resume(proto, ctx, hooks, pos, coro, waiting))
                        return
                else:
                    r = fn(ctx)
                if r is not None:
                    self.send_local(proto, ctx, r, idx)
                    return
        except Exception as e:  # a middleware bug must not kill the connection silently
            self._pipeline_failed(proto, ctx, e)
            return
        self._after_request_chain(proto, ctx)

    async def _resume(self, proto, ctx, hooks, pos, coro, waiting) -> None:
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
            self._pipeline_failed(proto, ctx, e)
            return
        if proto.closed or proto.cur is not ctx:
            return
        if r is not None:
            self.send_local(proto, ctx, r, hooks[pos][0])
            return
        self._run_chain(proto, ctx, hooks, pos + 1)

    def _pipeline_failed(self, proto, ctx, e: Exception) -> None:
        err = GatewayError("internal", "internal error in the request pipeline")
        ctx.error = err
        ctx.app.log.exception("middleware failed: %s", e)
        if proto.cur is ctx and not proto.closed:
            self._reply_error(proto, ctx, err, ctx.route.chain)

    def _after_request_chain(self, proto, ctx) -> None:
        route = ctx.route
        if route.chain.request_body:
            ctx.notes["_buffer_body"] = []
            ctx.notes["_buffer_size"] = 0
            self._maybe_continue(proto, ctx)
            if proto.cur_complete and proto.cur is ctx:
                self.on_body_end(proto, ctx)
            return
        if ctx.expect is not None:
            self._maybe_continue(proto, ctx)
        self.proxy(proto, ctx)

    def _maybe_continue(self, proto, ctx) -> None:
        exp = ctx.expect
        if exp is not None and not proto.cur_complete:
            if exp.lower() == b"100-continue":
                proto.write(CONTINUE_100)

    @staticmethod
    def _is_preflight(ctx) -> bool:
        return ctx.method == "OPTIONS" and ctx.header(b"access-control-request-method") is not None \
            and ctx.header(b"origin") is not None

    def _health(self, proto, ctx) -> None:
        ok = self.ready and not self.draining and all(check() for check in self.app.ready_checks)
        body = b'{"status":"ready"}' if ok else b'{"status":"not ready"}'
        ctx.status = 200 if ok else 503
        ctx.notes["_nolog"] = True
        keep = keep_client(ctx, proto, self.draining)
        proto.write(reply_bytes(ctx.status, [(b"content-type", b"application/json"),
                                             (b"cache-control", b"no-store")], body,
                                keep_alive=keep, head_only=ctx.method == "HEAD"))
        proto.request_done(ctx, keep)

    # ------------------------------------------------------------------ local replies
    def send_local(self, proto, ctx, reply: Reply, upto: int) -> None:
        """Send a reply made by the middleware at chain index ``upto``."""
        for idx, fn in ctx.route.chain.response:
            if idx <= upto:
                fn(ctx, reply)
        self._write_reply(proto, ctx, reply, False)

    def _reply_error(self, proto, ctx, err: GatewayError, chain) -> None:
        """Answer ``err`` (problem+json) through ``chain``'s response filters; the error
        table's ``closes_connection`` column says whether the connection ends with it."""
        reply = error_reply(err, ctx.request_id)
        if chain is not None:
            if chain is self.app.global_chain and not ctx.request_id and chain.error:
                # no request filter ran for this reply: what it needs (the request id)
                for fn in chain.error:
                    fn(ctx)
                reply = error_reply(err, ctx.request_id)
            for _idx, fn in chain.response:
                fn(ctx, reply)
        self._write_reply(proto, ctx, reply, err.closes_connection)

    def _write_reply(self, proto, ctx, reply: Reply, err_closes: bool) -> None:
        keep = not err_closes and keep_client(ctx, proto, self.draining)
        extra = ctx.resp_headers
        if keep and ctx.version == "1.0":
            extra = extra + [(b"connection", b"keep-alive")]
        data = reply_bytes(reply.status, reply.headers, reply.body, keep_alive=keep,
                           head_only=ctx.method == "HEAD", extra=extra, server=self.app.server_header,
                           raw=ctx.resp_raw)
        ctx.status = reply.status
        ctx.bytes_sent += len(reply.body)
        if reply.kind and ctx.error is None:
            ctx.flags.append(reply.kind)
        proto.write(data)
        proto.request_done(ctx, keep)

    # ------------------------------------------------------------------ request body
    def on_body(self, proto, ctx, data: bytes) -> None:
        notes = ctx.notes
        if ctx.chunked and ctx.bytes_received > ctx.route.max_body:
            if ctx.status == 0:
                self._body_too_large(proto, ctx)
            return
        buf = notes.get("_buffer_body")
        if buf is not None:
            buf.append(data)
            return
        up = ctx.up
        if up is not None and up.handler is self:
            up.write(chunk(data) if ctx.chunked else data)
            return
        pend = ctx.pending
        if pend is None:
            pend = ctx.pending = []
            notes["_pending_size"] = 0
        pend.append(data)
        notes["_pending_size"] += len(data)
        if notes["_pending_size"] > MAX_PENDING_BODY:
            proto.pause_for(PAUSE_WAIT)

    def _body_too_large(self, proto, ctx) -> None:
        cancel = ctx.notes.pop("_cancel", None)
        if cancel is not None:
            cancel()
        self._drop_upstream(ctx)
        err = GatewayError("body_too_large", f"request body exceeds {ctx.route.max_body} bytes")
        ctx.error = err
        self._reply_error(proto, ctx, err, ctx.route.chain)

    def on_body_end(self, proto, ctx) -> None:
        notes = ctx.notes
        if ctx.chunked and ctx.bytes_received > ctx.route.max_body and ctx.status == 0:
            self._body_too_large(proto, ctx)
            return
        buf = notes.get("_buffer_body")
        if buf is not None:
            if ctx.pending:
                buf[:0] = ctx.pending
                ctx.pending = None
            if ctx.route is None or proto.cur is not ctx:
                return
            body = b"".join(buf)
            notes.pop("_buffer_body")
            for idx, fn in ctx.route.chain.request_body:
                r = fn(ctx, body)
                if r is not None:
                    self.send_local(proto, ctx, r, idx)
                    return
            # forward as a Content-Length body now that it is whole
            ctx.pending = [body] if body else []
            notes["_pending_size"] = len(body)
            ctx.content_length = len(body)
            ctx.chunked = False
            self.proxy(proto, ctx)
            return
        up = ctx.up
        if up is not None and up.handler is self:
            if ctx.chunked:
                up.write(LAST_CHUNK)
        else:
            notes["_body_done"] = True

    def body_timeout(self, proto, ctx) -> None:
        self._drop_upstream(ctx)
        err = GatewayError("request_timeout", "request body not received in time")
        ctx.error = err
        cancel = ctx.notes.pop("_cancel", None)
        if cancel is not None:
            cancel()
        if ctx.status == 0:
            self._reply_error(proto, ctx, err, ctx.route.chain if ctx.route else None)
        else:
            proto.abort()

    def abort_current(self, proto, kind: str) -> None:
        ctx = proto.cur
        if ctx is not None:
            ctx.flags.append("bad_body")
            self._drop_upstream(ctx)

    def parse_error(self, proto, kind: str, detail: str) -> None:
        """A malformed or timed-out request head: answer and close, forward nothing."""
        ctx = proto.ctx_factory()
        ctx.app = self.app
        ctx.peer_ip = ctx.client_ip = proto.peer_ip
        ctx.method = "GET"
        ctx.path = "-"
        err = GatewayError(kind, detail)
        ctx.error = err
        proto.cur = ctx
        proto.cur_complete = True
        ctx.keep_alive = False
        self.inflight += 1
        self._reply_error(proto, ctx, err, self.app.global_chain)

    # ------------------------------------------------------------------ proxying
    def proxy(self, proto, ctx) -> None:
        route = ctx.route
        pools = route.pools
        pool = pools[0] if len(pools) == 1 else route.pick(ctx)
        if pool is None:
            self.fail(proto, ctx, GatewayError("no_upstream", f"no healthy instance for service {route.service}"))
            return
        ctx.upstream = pool.peer.label
        head = ctx.head = request_head(ctx, route, pool.peer)
        ctx.upstream_start = monotonic()
        conn = pool.acquire_idle()
        if conn is None:
            cancel = pool.acquire(lambda conn, err: self._on_conn(proto, ctx, pool, conn, err))
            if cancel is not None:
                ctx.notes["_cancel"] = cancel
        elif ctx.pending is None and not ctx.chunked:
            # fast path: a warm keep-alive connection and nothing but the head to send
            # (a body, if any, follows through on_body)
            ctx.up = conn
            conn.send(self, proto, ctx, head, route)
            if proto.write_paused:
                conn.pause_reading(True)
        else:
            self._on_conn(proto, ctx, pool, conn, None)

    def _on_conn(self, proto, ctx, pool, conn, err) -> None:
        notes = ctx.notes
        if notes:
            notes.pop("_cancel", None)
        if proto.closed or proto.cur is not ctx:
            if conn is not None:
                pool.release(conn, True)
            return
        if err is not None:
            self.fail(proto, ctx, err)
            return
        data = ctx.head
        pend, ctx.pending = ctx.pending, None
        if pend:
            if ctx.chunked:
                data += b"".join([chunk(b) for b in pend])
            else:
                data += b"".join(pend)
            notes["_resend"] = pend if (proto.cur_complete and len(pend) < 64) else None
            proto.resume_for(PAUSE_WAIT)
        if ctx.chunked and (notes.get("_body_done") or proto.cur_complete):
            data += LAST_CHUNK
        ctx.up = conn
        conn.send(self, proto, ctx, data, ctx.route)
        if proto.write_paused:
            conn.pause_reading(True)

    def fail(self, proto, ctx, err: GatewayError) -> None:
        """An upstream-side failure before the response head: retry or answer 502/503/504."""
        ctx.error = err
        route = ctx.route
        notes = ctx.notes
        if (err.retryable and ctx.method in IDEMPOTENT and not notes.get("_retried")
                and not ctx.chunked and (not ctx.content_length or notes.get("_resend"))):
            notes["_retried"] = True
            ctx.flags.append("retried")
            if notes.get("_resend"):
                ctx.pending = notes.pop("_resend")
            ctx.error = None
            pool = route.pick(ctx)
            if pool is not None:
                ctx.upstream = pool.peer.label
                cb = (lambda conn, e: self._on_conn(proto, ctx, pool, conn, e))
                # a fresh connection (the reused one just failed), within the pool's cap
                cancel = pool.connect_fresh(cb)
                if cancel is not None:
                    notes["_cancel"] = cancel
                return
            ctx.error = err
        app = ctx.app
        app.metrics.upstream_error(route, err.kind)
        self._reply_error(proto, ctx, err, route.chain)

    @staticmethod
    def _drop_upstream(ctx) -> None:
        """The exchange ends without its response (client gone, body refused or late):
        the bound upstream connection is released as not reusable."""
        up = ctx.up
        if up is not None:
            ctx.up = None
            up.pool.release(up, False)

    # ------------------------------------------------------------------ upstream events
    def upstream_head(self, up, status: int, reason: bytes, block: bytes, keep: bool) -> bytes:
        """The upstream's response head arrived: timing, then the client's head bytes."""
        ctx = up.ctx
        ctx.upstream_status = status
        ctx.upstream_duration = monotonic() - ctx.upstream_start
        down = up.down
        return response_head(ctx, down, status, reason, block, keep_client(ctx, down, self.draining),
                             self.app.server_header)

    def upstream_done(self, up, reusable: bool) -> None:
        ctx = up.ctx
        proto = up.down
        pool = up.pool
        ctx.up = None
        # An upstream that answered before the whole request body was sent still expects
        # the rest of it: that connection must not carry another request.
        if proto is None or proto.cur is not ctx or not proto.cur_complete:
            reusable = False
        pool.release(up, reusable)
        if proto is not None and proto.cur is ctx:
            proto.request_done(ctx, ctx.keep_alive)

    def upstream_error(self, up, err: GatewayError) -> None:
        ctx = up.ctx
        proto = up.down
        ctx.up = None
        if proto is None or proto.cur is not ctx:
            return
        if not up.head_sent:
            self.fail(proto, ctx, err)
            return
        # The head is out: the only honest signal left is an aborted connection, never a
        # truncated response that looks complete.
        ctx.error = err
        ctx.flags.append("upstream_abort")
        ctx.app.metrics.upstream_error(ctx.route, err.kind)
        proto.abort()

    def upstream_paused(self, up, paused: bool) -> None:
        proto = up.down
        if proto is not None:
            if paused:
                proto.pause_for(PAUSE_UPSTREAM)
            else:
                proto.resume_for(PAUSE_UPSTREAM)

    def upstream_upgraded(self, up, rest: bytes) -> None:
        """The upstream answered 101: both connections become one byte tunnel."""
        proto = up.down
        ctx = up.ctx
        up.handler = None
        up.tunnel = proto
        up.dl.kind = 0
        ctx.up = None
        ctx.flags.append("upgraded")
        if rest:
            proto.write(rest)
        proto.start_tunnel(up.transport)

    # ------------------------------------------------------------------ logging phase
    def finish(self, proto, ctx) -> None:
        self.inflight -= 1
        route = ctx.route
        chain = route.chain if route is not None else ctx.app.global_chain if ctx.app else None
        err = ctx.error
        notes = ctx.notes
        if notes and notes.get("_nolog"):
            # the health path: not logged, not counted (a load balancer probes it every few
            # seconds per gateway host)
            return
        if chain is not None:
            for fn in chain.logging:
                try:
                    fn(ctx, err)
                except Exception as e:  # logging must never break the connection
                    ctx.app.log.exception("logging hook failed: %s", e)
        if ctx.app is not None:
            ctx.app.metrics.request_done(ctx)
