"""The downstream (client-side) HTTP/1.1 protocol (L3).

One ``DownstreamProtocol`` per client connection, an ``asyncio.Protocol`` fed by uvloop
and parsed by ``httptools.HttpRequestParser`` in strict mode (no leniency flag is ever
set: framing ambiguity is a smuggling vector).  It owns the connection's and the
current request's state (STYLE.md item 4) and does the I/O; what happens to a request
(routing, middlewares, choosing an upstream) is the handler's business: the runtime
passes a handler (``pipeline.engine.Engine``; what it must offer is
``pipeline.boundary.ClientHandler``).  Each request is a ``Request``
(``http.request``), made on the first bytes of its target and filled in place while its
head is parsed; the handler gets it in ``dispatch`` and in every later event.

Rules this file keeps:
1. One request is in flight at a time.  Pipelined requests that arrive meanwhile are
   parsed into queued ``Request`` objects (bounded: reading pauses once the queue or the
   raw backlog is over its limit), and dispatched in order when the previous response is
   complete.  A client that pipelines 10,000 requests without reading costs one socket
   buffer, not 10,000 contexts.
2. Nothing is forwarded before the whole head is parsed and validated; a malformed
   request gets its 400/408/413/414/431 and the connection is closed.
3. Reading pauses for several independent reasons (pipeline backlog, upstream not
   accepting the body, connecting); ``_pause``/``_resume`` keep a bit mask so that one
   reason ending does not resume reading another still wants paused (STYLE.md item 5).
4. One timer per connection, rescheduled by deadline (STYLE.md item 8).
5. ``connection_lost`` releases everything: the handler is told, so the upstream
   connection bound to this request is aborted, never pooled.
6. An answer sent before the request was read to its end (413, 401 on an upload, 408,
   a parse error) ends with a lingering close: the write side is shut down after the
   answer, then input is read and discarded for at most ``timeouts.lingering_time`` and
   ``lingering_size`` bytes, then the connection closes.  Closing with unread input
   would make the kernel answer with RST, and a client still writing its body would
   lose the answer.  A lingering connection stays in the engine's connection count.
7. A read that is one whole usual head skips the parser (``http.fasthead``: a strict
   subset of what llhttp accepts, the same Request); only at a message boundary the
   parser has kept no byte of (``fresh``), and the parser is then as if it had read it.
"""

from __future__ import annotations

import httptools

from fastgw.errors import GatewayError
from fastgw.http.conninfo import (PAUSE_BACKLOG, PAUSE_UPSTREAM, PAUSE_WAIT, T_BODY, T_HEAD,  # noqa: F401
                                  T_IDLE, T_LINGER, T_NONE, T_SEND, ConnInfo)
from fastgw.http.deadline import Deadline
from fastgw.http.fasthead import CLOSED, new_request, verdict
from fastgw.http.linger import Linger
from fastgw.http.linger import start as start_linger
from fastgw.http.parsefail import PARSER_RAISES as _PARSER_RAISES, ParseFailures
from fastgw.http.request import Request, start_request
from fastgw.http.reqhead import (H_AUTHZ, H_CL, H_CONN, H_EXPECT, H_HOST, H_ORIGIN, H_RID, H_TE, H_TRACE, H_UA,
                                 H_UPGRADE, H_XFF, H_XFH, H_XFP, METHODS, REPEATED, special_kind, valid_host)

MAX_QUEUED = 16          # pipelined requests parsed ahead of the one in flight
MAX_BACKLOG = 64 * 1024  # raw bytes held while requests are queued
FEED_SLICE = 4096        # a larger read is parsed in slices while requests queue up
_new = object.__new__    # + start_request: a Request without a class call (http/request.py)

class DownstreamProtocol(ParseFailures):
    __slots__ = (
        # per-connection
        "handler", "info", "loop", "transport", "parser", "peer_ip", "peer_port", "closed",
        "paused", "write_paused", "dl",
        "queue", "backlog", "n_requests", "draining", "tunnel", "unread", "fresh",
        # per-request (the request being parsed)
        "p_req", "p_size", "p_hosts", "p_cl", "p_te", "p_error", "host_ok", "host_str",
        "max_line", "max_head",
        # per-request (the request in flight)
        "cur", "cur_complete", "body_start", "body_end",
        "__weakref__",
    )

    def __init__(self, handler, info: ConnInfo, loop) -> None:
        self.handler = handler
        self.info = info
        self.loop = loop
        self.transport = None
        self.parser = None
        self.peer_ip = ""
        self.peer_port = 0
        self.closed = False
        self.paused = 0
        self.write_paused = False
        self.dl = Deadline(loop, self._expired, info.t_min)  # the one timer (rule 4)
        self.queue = []  # a list, not a deque: 88 B instead of 760 B per idle connection
        self.backlog = None
        self.n_requests = 0
        self.draining = False
        self.tunnel = None
        self.unread = False  # input left unparsed (a parse error): the close lingers
        # the parser holds no byte of a message it has not finished: the last bytes it was
        # fed ended with LF (before a request target, llhttp only skips CR and LF; any
        # other byte it keeps is a method, and a LF there is an error).  With p_req None
        # (no partial head, nothing queued, the last request kept alive) a read may
        # skip the parser (http.fasthead).
        self.fresh = True
        self.cur = None
        self.cur_complete = False
        self.body_start = 0.0  # when the body of the request in flight started
        self.body_end = 0.0  # its deadline (request_body_total; inf: off)
        self.p_error = None
        # the request being parsed: its Request is made on the first bytes of its target
        # (on_url) and filled in place by the header callbacks; the counters below are
        # reset when its head is complete
        self.p_req = None
        self.p_size = 0
        self.p_hosts = 0
        self.p_cl = None
        self.p_te = None
        # the last Host value that passed validation, and its str form (a keep-alive
        # connection sends the same Host every time: one bytes compare, no regex)
        self.host_ok = None
        self.host_str = ""
        # the header limits, copied from info (read for every header line)
        self.max_line = info.max_header_size
        self.max_head = info.max_headers_size

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
        self.parser = httptools.HttpRequestParser(self)
        self.handler.connection_made(self)
        # a new connection's first head must be complete request_header after accept
        # (a later one's: after its first byte, _feed; before that the keep-alive timeout)
        self.dl.set(T_HEAD, self.info.t_head)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.dl.cancel()
        cur = self.cur
        self.cur = None
        self.queue.clear()
        if self.tunnel is not None:
            t, self.tunnel = self.tunnel, None
            t.abort()
        self.handler.connection_lost(self, cur)
        self.transport = None

    def eof_received(self):
        # A half-close from the client: finish the response in flight, then close.
        if type(self.tunnel) is Linger:
            self.tunnel.end("client")
            return True
        if self.cur is None:
            self._close()
        return True  # keep the transport open for writing the response in flight

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:  # WebSocket: a slow client pauses the upstream side
            self.tunnel.pause_reading()
            return
        self.handler.downstream_paused(self, True)
        self.dl.set(T_SEND, self.info.t_send)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
            return
        self.handler.downstream_paused(self, False)
        if self.dl.kind == T_SEND:
            self.dl.kind = T_NONE

    # ------------------------------------------------------------------ reading
    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.p_error is not None or (self.cur is not None and self.cur_complete):
            self._hold(data)
            return
        if len(data) <= FEED_SLICE:
            if self.p_req is None and self.fresh and data[-1] == 10:
                # one whole usual head: its Request without the parser (http.fasthead)
                v = self.info.heads.get(data)
                if v is None:
                    v = verdict(data, self.info)
                if v:
                    req = new_request(v, self)
                    if not req.keep_alive:   # (as the parser leaves them after such a request)
                        self.p_req = req
                        self.parser = CLOSED
                    self.n_requests += 1
                    self.cur = req
                    self.cur_complete = True
                    k = self.dl.kind
                    if k != T_NONE and k != T_SEND:
                        self.dl.kind = T_NONE
                    self.handler.dispatch(self, req, None)
                    return
            # ``_feed`` written out for the usual read (one head, or a body piece): a
            # Python call less per request; its error handling stays in ``_feed_failed``
            try:
                self.parser.feed_data(data)
            except _PARSER_RAISES as e:
                self._feed_failed(e, data)
                return
            self.fresh = data[-1] == 10
            if self.cur is None:
                q = self.queue
                if q:
                    nxt = q[0]
                    if nxt.qcomplete and nxt.qbody is None:
                        # ``_next`` written out for the usual request (whole, no body held)
                        del q[0]
                        self.cur = nxt
                        self.cur_complete = True
                        k = self.dl.kind
                        if k != T_NONE and k != T_SEND:
                            self.dl.kind = T_NONE
                        self.handler.dispatch(self, nxt, None)
                    else:
                        self._next()
                elif self.dl.kind == T_IDLE and self.p_error is None and not self.closed:
                    self.dl.set(T_HEAD, self.info.t_head)   # (as in ``_feed``: slowloris)
            return
        # A large read: parse it in slices while requests queue up, so that a client
        # pipelining thousands of requests in one read costs a few queued contexts and
        # a raw backlog, not a context per request (rule 1).  The body of the request in
        # flight is fed in one go.
        off, n = 0, len(data)
        while off < n and not self.closed:
            if self.p_error is not None or (self.cur is not None and self.cur_complete) \
                    or len(self.queue) >= MAX_QUEUED:
                self._hold(data[off:])
                return
            if self.cur is not None and not self.queue:
                self._feed(data[off:] if off else data)
                return
            end = off + FEED_SLICE
            self._feed(data[off:end])
            off = end

    def _local_host(self) -> bytes:
        """``host:port`` of the local end of this connection (IPv6 in brackets)."""
        sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
        if not sock:
            return b"localhost"
        h = sock[0]
        return (f"[{h}]:{sock[1]}" if ":" in h else f"{h}:{sock[1]}").encode("ascii")

    def _hold(self, data) -> None:
        """Keep bytes raw until the request in flight is answered (rule 1)."""
        if self.backlog is None:
            self.backlog = bytearray(data)
        else:
            self.backlog += data
        if len(self.backlog) > MAX_BACKLOG:
            self._pause(PAUSE_BACKLOG)

    def _feed(self, data) -> None:
        try:
            self.parser.feed_data(data)
        except _PARSER_RAISES as e:
            self._feed_failed(e, data)
        else:
            self.fresh = data[-1] == 10
            if self.cur is None:
                if self.queue:
                    self._next()
                elif self.dl.kind == T_IDLE and self.p_error is None and not self.closed:
                    # bytes of a head that is not complete yet: from now on the whole
                    # head must arrive within request_header (slowloris)
                    self.dl.set(T_HEAD, self.info.t_head)

    # httptools callbacks ------------------------------------------------------
    # (no on_message_begin: a request starts with its target, and the state it needs is
    # a fresh Request; one callback less per request)
    def on_url(self, url: bytes) -> None:
        req = self.p_req
        if req is None or req.method_b is not None:
            req = self.p_req = start_request(_new(Request), url)
        else:
            url = req.raw_target = req.raw_target + url
        if len(url) > self.info.max_request_line:
            raise GatewayError("uri_too_long", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self.p_size += size
        if size > self.max_line or self.p_size > self.max_head:
            raise GatewayError("headers_too_large", "request header fields too large")
        kind = special_kind(name.lower())
        if kind is None or kind >= H_RID:
            if kind is not None:
                # forwarded, and captured so that no middleware needs a header lookup
                if kind == H_UA:
                    self.p_req.user_agent = value
                elif kind == H_AUTHZ:
                    req = self.p_req
                    req.authorization = value if req.authorization is None else REPEATED
                elif kind == H_ORIGIN:
                    self.p_req.origin = value  # (the last one, as header() answers)
                elif kind == H_TRACE:
                    self.p_req.trace_hdrs = True
                else:
                    self.p_req.x_request_id = value
            elif 95 in name:  # "_" (an int test is a memchr; ``b"_" in`` goes through the buffer protocol)
                # Dropped, as nginx does by default: CGI-style upstreams map X_User_Id and
                # X-User-Id to the same variable, so an underscore spelling could forge a
                # header the gateway strips or sets (identity, forwarding).
                return
            fwd = self.p_req.headers
            fwd.append((name, value))
            if len(fwd) > self.info.max_headers:
                raise GatewayError("headers_too_large", "too many request header fields")
            return
        req = self.p_req
        if kind == H_HOST:
            req.raw_host = value
            self.p_hosts += 1
        elif kind == H_CONN:
            req.conn_hdr = value if req.conn_hdr is None else req.conn_hdr + b", " + value
        elif kind == H_CL:
            self.p_cl = value
        elif kind == H_TE:
            self.p_te = value
        elif kind == H_UPGRADE:
            req.upgrade = value
        elif kind == H_EXPECT:
            req.expect = value
        elif kind == H_XFF:
            req.xff = value if req.xff is None else req.xff + b", " + value
        elif kind == H_XFP:
            req.xfp = value
        elif kind == H_XFH:
            req.xfh = value  # (believed only from a trusted peer with gateway.trust_forwarded_host)
        # H_HOP, H_XFWD: dropped here; H_XFWD values are re-derived by the handler.

    def on_headers_complete(self) -> None:
        parser = self.parser
        req = self.p_req
        if req is None or req.method_b is not None:  # (llhttp always reports a target first)
            raise GatewayError("bad_request", "missing request target")
        keep = parser.should_keep_alive()
        if keep and req.conn_hdr is None:
            # llhttp accepts HTTP/0.9, 1.0, 1.1 and 2.0, and without a Connection header
            # only 1.1 keeps alive: no get_http_version(), which formats a new str per
            # call
            version = "1.1"
        else:
            version = parser.get_http_version()
        hosts = self.p_hosts
        if version != "1.1":
            if version != "1.0":
                raise GatewayError("bad_request", f"unsupported HTTP version {version}")
            if hosts > 1:
                raise GatewayError("missing_host", "duplicate Host header")
        elif hosts != 1:
            raise GatewayError("missing_host", "missing Host header" if not hosts else "duplicate Host header")
        host = req.raw_host
        if host is not None:
            if host != self.host_ok:
                if not valid_host(host):
                    raise GatewayError("bad_request", "invalid Host header")
                self.host_ok = host
                self.host_str = host.decode("latin-1").lower()
            req.host = self.host_str
        else:
            # HTTP/1.0 without Host: the upstream gets gateway.default_host, by default the
            # local address the client connected to (pipeline.heads.request_head)
            req.local_host = self._local_host()
        mb = req.method_b = parser.get_method()
        req.method = METHODS.get(mb) or mb.decode("ascii")
        req.version = version
        req.keep_alive = keep  # what the client asked (the handler decides, draining included)
        req.tls = self.info.tls
        req.peer_ip = self.peer_ip
        if self.p_cl is not None:
            req.content_length = int(self.p_cl)
            self.p_cl = None
        elif self.p_te is not None:
            req.chunked = True  # llhttp only accepts a final "chunked" coding
            self.p_te = None
        # an Upgrade only counts with "Connection: upgrade" (as llhttp decides it)
        if req.upgrade is not None and (req.conn_hdr is None or b"upgrade" not in req.conn_hdr.lower()):
            req.upgrade = None
        self.p_size = 0
        self.p_hosts = 0
        self.n_requests += 1
        # Queued, not dispatched: a request starts only after the bytes that carried it
        # parsed cleanly (llhttp reports some framing errors after on_headers_complete).
        q = self.queue
        q.append(req)
        if len(q) >= MAX_QUEUED:
            self._pause(PAUSE_BACKLOG)

    def on_body(self, body: bytes) -> None:
        req = self.p_req
        req.bytes_received += len(body)
        if req is self.cur:
            dl = self.dl
            if dl.kind == T_BODY:
                now = self.loop.time()
                at = now + self.info.t_body
                if at > self.body_end:
                    at = self.body_end  # request_body_total
                dl.at = at
                rate = self.info.body_rate
                if rate and not self.paused:  # (reading paused by us: not the client's rate)
                    self._check_rate(req, now, rate)
            self.handler.on_body(self, req, body)
        elif req.qbody is None:
            req.qbody = [body]
        else:
            req.qbody.append(body)

    def _check_rate(self, req, now: float, rate: float) -> None:
        """request_body_min_rate: past the grace period, the body's average rate since it
        started must be at least ``rate`` bytes/s; else 408 (the handler aborts upstream)."""
        took = now - self.body_start
        if took > self.info.body_grace and req.bytes_received < rate * took:
            self.dl.kind = T_NONE
            self.handler.body_timeout(self, req)

    def on_message_complete(self) -> None:
        req = self.p_req
        if req is None:
            return
        if req is self.cur:
            self.cur_complete = True
            if self.dl.kind in (T_BODY, T_HEAD):
                self.dl.kind = T_NONE
            self.handler.on_body_end(self, req)
        else:
            req.qcomplete = True

    def _next(self) -> None:
        """Start the oldest queued request (the one in flight is finished)."""
        nxt = self.queue.pop(0)  # (at most MAX_QUEUED entries)
        body, nxt.qbody = nxt.qbody, None
        complete = nxt.qcomplete
        self.cur = nxt
        self.cur_complete = complete
        if complete:
            # (the handler sees cur_complete and ends the body itself: no on_body_end
            # for a request that was whole before it started)
            k = self.dl.kind
            if k != T_NONE and k != T_SEND:
                self.dl.kind = T_NONE
        else:
            info = self.info
            now = self.loop.time()
            self.body_start = now
            self.body_end = now + info.body_total
            self.dl.set(T_BODY, info.t_body if info.t_body < info.body_total else info.body_total, now)
        self.handler.dispatch(self, nxt, body)

    def request_done(self, req, keep_alive: bool) -> None:
        """Called by the handler when the response to ``req`` is completely written."""
        if req is not self.cur:
            return
        self.handler.finish(self, req)
        self.cur = None
        if self.closed:
            return
        if not keep_alive or not req.keep_alive or not self.cur_complete:
            # ``keep_alive`` is the handler's decision (pipeline.heads.keep_client); the
            # rest is this file's guard, whatever a handler says: a client that asked to
            # close, or a request body not read to its end (its rest cannot be told from
            # the next request), ends the connection; with unread input, by a lingering close
            if not self.cur_complete or self.unread:
                self._linger()
            else:
                self._close()
            return
        if not self.queue and self.p_error is None and self.backlog is None:
            # the usual case: nothing pipelined behind this request
            if self.p_req is req:
                self.p_req = None   # an idle connection holds no finished request (memory)
            if self.paused & PAUSE_BACKLOG:
                self._resume(PAUSE_BACKLOG)
            if self.draining:
                self._close()
                return
            # the keep-alive deadline: the two-store move when the armed timer fires
            # first (http.deadline), a Python call less on every kept-alive request
            dl = self.dl
            at = self.loop.time() + self.info.t_idle
            if dl.timer is not None and dl.timer_at <= at:
                dl.at = at
                dl.kind = T_IDLE
            else:
                dl.set(T_IDLE, self.info.t_idle)
            return
        if self.queue:
            self._next()
        elif self.p_error is not None:
            self._emit_parse_error()
            return
        elif self.backlog is not None:
            data, self.backlog = bytes(self.backlog), None
            self._resume(PAUSE_BACKLOG)
            self.data_received(data)
        if self.cur is None and not self.closed:
            if not self.queue and self.p_error is None:
                self._resume(PAUSE_BACKLOG)
            if self.draining:
                self._close()
            else:
                self.dl.set(T_IDLE, self.info.t_idle)

    # ------------------------------------------------------------------ writing
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def close(self) -> None:
        self._close()

    def _linger(self) -> None:
        """Lingering close (rule 6): ``http.linger.start``."""
        start_linger(self)

    def _abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def abort(self) -> None:
        self._abort()

    def start_drain(self) -> None:
        """Graceful drain: idle connections close now, busy ones after their response."""
        self.draining = True
        if self.cur is None:
            self._close()

    # ------------------------------------------------------------------ flow control
    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def pause_for(self, reason: int) -> None:
        self._pause(reason)

    def resume_for(self, reason: int) -> None:
        self._resume(reason)

    def pause_upstream_side(self, paused: bool) -> None:
        """The upstream cannot take more bytes (or can again): stop (resume) reading the client."""
        if paused:
            self._pause(PAUSE_UPSTREAM)
        else:
            self._resume(PAUSE_UPSTREAM)

    def start_tunnel(self, upstream_transport) -> None:
        """Switch to a byte tunnel (after an upstream 101)."""
        self.tunnel = upstream_transport
        self.dl.kind = T_NONE
        if self.backlog:
            data, self.backlog = bytes(self.backlog), None
            upstream_transport.write(data)
        self._resume(PAUSE_BACKLOG | PAUSE_WAIT | PAUSE_UPSTREAM)

    # ------------------------------------------------------------------ timers
    def _expired(self, kind: int) -> None:
        """The connection's deadline passed (``Deadline.fire``)."""
        if kind == T_LINGER:
            if type(self.tunnel) is Linger:
                self.tunnel.end("time")
            return
        if self.closed:
            return
        if kind == T_IDLE:
            self._close()
        elif kind == T_HEAD:
            if self.p_req is None and self.backlog is None and self.n_requests == 0:
                self._close()  # a new connection that sent no request target: nothing to answer
                return
            self.handler.parse_error(self, "request_timeout", "request head not received in time")
        elif kind == T_BODY:
            if self.cur is not None and not self.cur_complete:
                self.handler.body_timeout(self, self.cur)
        elif kind == T_SEND:
            self._abort()
