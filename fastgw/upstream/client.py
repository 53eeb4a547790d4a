"""The upstream (service-side) HTTP/1.1 client protocol (L3).

One ``UpstreamProtocol`` per upstream TCP connection, kept in its peer's ``Pool`` between
requests.  It sends one request at a time (no upstream pipelining), parses the response
with ``httptools.HttpResponseParser`` and hands events to a handler (the engine):

    handler.upstream_head(up, status, reason, block, keep_alive) -> (bytes, framing)
        the bytes to send downstream for the head and the body framing (RECHUNK,
        CLOSE_DELIMITED bits)
    handler.upstream_done(up, reusable)      the response is complete and flushed
    handler.upstream_error(up, err)          failure (GatewayError), before or after the head
    handler.upstream_paused(up, paused)      back-pressure from the upstream socket

Rules:
1. One write per downstream message: everything a single ``data_received`` produces for
   the client (head, body pieces, the last chunk) is joined and written once.
2. Body bytes are passed through untouched unless the client needs chunked framing that
   the upstream did not use (``rechunk``), or a body filter is installed.
3. A connection goes back to the pool only when its response was read to the end and
   both sides allow keep-alive.  Anything odd (early data while idle, a parse error, a
   timeout, a client that went away) closes it.
4. One timer per connection: response-head timeout, then read (idle-gap) timeout, then
   the pool's idle timeout while parked.
5. A route with retries (``route.t_total`` > 0) bounds the wait for the response head
   across all attempts: the first attempt's head timer start (the end of the request)
   sets ``ctx.deadline`` (loop time) = then + ``t_total``, and each attempt's head timer
   is min(``route.t_head`` (the per-try timeout), time left to ``ctx.deadline``).  The
   proxy starts no retry past it (``pipeline.proxy``).  Other routes read one attribute.
6. The usual response skips the parser: an HTTP/1.1 head with one Content-Length whose
   whole body is in the same read (``upstream.whole``: a strict subset of what llhttp
   accepts, its verdict remembered per head) goes to ``upstream_head``, out in one write
   and to ``upstream_done`` from ``data_received`` itself, on a route without a response
   body filter, for a request other than HEAD.  Anything else is fed to the parser,
   which has seen none of it (its state stays at a message start).  The parser path's
   per-request state is put back by ``_end`` when the connection stays (the fast path
   changes none of it), so ``send`` does not reset it.
"""

from __future__ import annotations

import httptools

from fastgw.errors import GatewayError
from fastgw.http.deadline import Deadline
from fastgw.http.wire import CLOSE_DELIMITED, LAST_CHUNK, RECHUNK, STATUS_LINES, WHOLE
from fastgw.upstream.whole import read_head

IDLE, BUSY, CLOSED = 0, 1, 2
T_NONE, T_HEAD, T_READ, T_IDLE = 0, 1, 2, 3


class UpstreamProtocol:
    __slots__ = (
        # per-connection
        "pool", "loop", "transport", "parser", "state", "reused", "handler", "dl",
        "idle_since", "max_head", "write_paused", "read_paused",
        # per-request
        "down", "ctx", "head_only", "got_bytes", "head_sent", "rechunk", "close_delimited",
        "status", "hbuf", "hoff", "out", "body_filter", "t_read", "keep", "t_head",
        "tunnel", "held", "whole", "last",
    )

    def __init__(self, pool, loop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport = None
        self.parser = None
        self.state = IDLE
        self.reused = False
        self.handler = None
        # the one timer; armed at most pool.tmin ahead (the shortest timeout any route
        # sets on this pool when the connection is made; a later, shorter one re-arms it)
        self.dl = Deadline(loop, self._expired, pool.tmin)
        self.idle_since = 0.0
        self.max_head = 64 * 1024
        self.write_paused = False
        self.read_paused = False
        self.tunnel = None
        self.held = None  # the head kept until the whole body is at hand (WHOLE)
        self.whole = False  # this response may be read without the parser (upstream.whole)
        self.last = None    # the last head read that way (upstream.whole rule 4)
        self.head_only = False
        self.body_filter = None
        self.t_read = 60.0
        self.t_head = 30.0
        self.down = None
        self.ctx = None
        self.got_bytes = False
        self.head_sent = False
        self.rechunk = False
        self.close_delimited = False
        self.status = 0
        self.hbuf = b""   # bytes received until the response head is complete
        self.hoff = 0     # where the current head starts in hbuf (after interim 1xx heads)
        self.out = None
        self.keep = True

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        prev = self.state
        self.state = CLOSED
        self.dl.cancel()
        self.pool.forget(self)
        if self.tunnel is not None:
            d, self.tunnel = self.tunnel, None
            d.close()
            return
        if prev == BUSY and self.handler is not None:
            if exc is None and self.close_delimited and self.head_sent and self.parser is not None:
                # read-until-close body: the close is the end of the message
                try:
                    self.parser.feed_data(b"")
                except Exception:
                    pass
                self._end(reusable=False)
                return
            retryable = self.reused and not self.got_bytes
            kind = "upstream_reset"
            err = GatewayError(kind, "upstream closed the connection" + (" mid-body" if self.head_sent else ""),
                               retryable=retryable)
            h, self.handler = self.handler, None
            h.upstream_error(self, err)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:  # WebSocket: a slow upstream pauses the client side
            self.tunnel.pause_upstream_side(True)
        elif self.handler is not None:
            self.handler.upstream_paused(self, True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.pause_upstream_side(False)
        elif self.handler is not None:
            self.handler.upstream_paused(self, False)

    def eof_received(self):
        return False  # close our side too; connection_lost follows

    # ------------------------------------------------------------------ requests
    def send(self, handler, down, ctx, data: bytes, route) -> None:
        """Start an exchange for ``ctx`` on ``route``: write the request head (and any
        body already at hand).  The route gives the timeouts and the body filter."""
        self.state = BUSY
        self.handler = handler
        self.down = down
        self.ctx = ctx
        # (the parser path's per-request state is at its start values here: set in
        # __init__, put back by ``_end`` when the connection stays; the usual response,
        # read without the parser, changes none of it)
        head_only = self.head_only = ctx.request.method == "HEAD"
        self.t_read = route.t_read
        f = self.body_filter = route.response_body_filter
        self.whole = f is None and not head_only
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        # the response timeout counts from the end of the request: now if the body is
        # whole (or there is none), else from ``request_sent``, when the engine has
        # written its end (the client's body timers bound the upload meanwhile)
        t = self.t_head = route.t_head
        if down is None or down.cur_complete:
            dl = self.dl
            if route.t_total:   # (a route with retries: rule 5)
                dl.set(T_HEAD, self._head_left(t))
            else:
                # the two-store move when the armed timer fires first (http.deadline): a
                # Python call less per exchange
                at = self.loop.time() + t
                if dl.timer is not None and dl.timer_at <= at:
                    dl.at = at
                    dl.kind = T_HEAD
                else:
                    dl.set(T_HEAD, t)
        else:
            self.dl.kind = T_NONE
        self.transport.write(data)

    def request_sent(self) -> None:
        """The request body's end was written: arm the response timeout."""
        if self.state == BUSY and self.status == 0 and self.dl.kind == T_NONE:
            t = self.t_head
            self.dl.set(T_HEAD, self._head_left(t) if self.ctx.route.t_total else t)

    def _head_left(self, t: float) -> float:
        """This attempt's head timeout on a route with retries (rule 5): ``t`` (per try),
        at most the time left overall; the first attempt starts the overall deadline."""
        x = self.ctx
        total = x.route.t_total
        now = self.loop.time()
        end = x.deadline
        if not end:
            x.deadline = now + total
            return t if t < total else total
        left = end - now
        return t if t < left else (left if left > 0.0 else 0.0)

    def write(self, data: bytes) -> None:
        if self.state == BUSY:
            self.transport.write(data)

    # httptools callbacks --------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.state != BUSY:
            # An idle connection that becomes readable is closing or broken: drop it.
            self.close()
            return
        if self.whole:
            # The usual response, whole in this read with a Content-Length body
            # (``upstream.whole``): relayed without the parser's callbacks.  Anything else
            # goes to the parser, which has seen none of it.
            w = self.last
            # (a slice compare: cheaper than ``startswith``, whose argument is parsed as a tuple)
            if w is None or data[:w[2]] != w[0]:
                w = read_head(data)
                if w is not None:
                    self.last = w
            if w is not None and len(data) == w[1]:
                _head, total, hlen, status, reason, block, keep = w
                h = self.handler
                try:
                    head, framing = h.upstream_head(self, status, reason, block, keep)
                except Exception as e:   # as the parser path reports a failed callback
                    self._fail(e if isinstance(e, GatewayError) else GatewayError(
                        "upstream_bad_response", "invalid response from upstream: User callback error"))
                    return
                if self.state == CLOSED:
                    return  # dropped (a retry elsewhere), as in on_headers_complete
                body = data[hlen:]
                if framing:
                    # a response filter framed the body anew (rare): the parser path's steps
                    self.status = status
                    self.out = []
                    self._head_out(head, framing)
                    self.on_body(body)
                    self._end(keep and not self.close_delimited)
                    return
                self.ctx.bytes_sent += total - hlen
                down = self.down
                if down is not None:
                    # (the client protocol's ``write`` written out: rule 1, one write)
                    t = down.transport
                    if t is not None and not down.closed:
                        t.write(head + body)
                # ``_end`` for this case
                self.dl.kind = T_NONE
                self.handler = None
                if keep:
                    self.state = IDLE
                else:
                    self.close()
                h.upstream_done(self, keep)
                return
            self.whole = False
        self.got_bytes = True
        if not self.head_sent:
            # keep the raw bytes of the head: it is forwarded untouched (rule 2)
            self.hbuf = self.hbuf + data if self.hbuf else data
        out = self.out = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.status == 101 and self.handler is not None:
                self._flush()
                off = e.args[0] if e.args else len(data)
                self.handler.upstream_upgraded(self, data[off:])
                return
            self._fail(GatewayError("upstream_bad_response", "unexpected upgrade from upstream"))
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause if isinstance(cause, GatewayError) else
                       GatewayError("upstream_bad_response", f"invalid response from upstream: {e}"))
            return
        except httptools.HttpParserError as e:
            self._fail(GatewayError("upstream_bad_response", f"invalid response from upstream: {e}"))
            return
        if self.state != BUSY:
            return  # the response ended (and was flushed) in this read: the usual case
        if self.out:
            self._flush()
        if not self.head_sent:
            # the response head is bounded (llhttp itself sets no limit)
            if len(self.hbuf) > self.max_head:
                self._fail(GatewayError("upstream_bad_response", "upstream response head too large"))
            return
        # the body is still due: the read (idle-gap) deadline runs from now
        dl = self.dl
        if dl.kind == T_READ:
            dl.at = self.loop.time() + self.t_read
        else:
            self.dl.set(T_READ, self.t_read)

    def _flush(self) -> None:
        out, self.out = self.out, None
        if out and self.down is not None:
            self.down.write(out[0] if len(out) == 1 else b"".join(out))

    def on_headers_complete(self) -> None:
        p = self.parser
        status = p.get_status_code()
        self.status = status
        hbuf = self.hbuf
        start = self.hoff
        end = hbuf.find(b"\r\n\r\n", start)
        if 100 <= status < 200 and status != 101:
            # Interim responses are not relayed: the gateway answers Expect itself.
            self.hoff = end + 4
            return
        line_end = hbuf.find(13, start)  # the status line's CR (llhttp: no CR inside it)
        if status in STATUS_LINES:
            reason = b""  # the gateway's own status line is sent (no upstream reason text)
        else:
            line = hbuf[start:line_end]
            reason = line.split(b" ", 2)[2] if line.count(b" ") >= 2 else b""
        block = hbuf[line_end + 2:end + 2] if end > line_end else b""
        self.hbuf = b""
        self.hoff = 0
        keep = self.keep = p.should_keep_alive()
        head, framing = self.handler.upstream_head(self, status, reason, block, keep)
        if self.state == CLOSED:
            return  # the handler dropped this response (a retry elsewhere): nothing is forwarded
        self._head_out(head, framing)
        # (the read deadline is set after the parser returns, if the body is still due)
        if self.head_only and status != 101:
            # No body follows a response to HEAD, whatever Content-Length says; the
            # parser would wait for it, so it is dropped and a fresh one made next time.
            self.parser = None
            self._end(reusable=keep)

    def _head_out(self, head, framing: int) -> None:
        """The response head is out (into ``out``), with the body's framing."""
        if framing:
            # how the body goes to the client (the engine's decision, ``pipeline.heads``)
            self.rechunk = bool(framing & RECHUNK)
            self.close_delimited = bool(framing & CLOSE_DELIMITED)
            # (``held`` is read only while ``rechunk`` is set: set with it, here)
            self.held = head if framing & WHOLE else None
            if self.held is not None:
                head = None
        self.head_sent = True
        if head is not None:
            self.out.append(head)

    def on_body(self, body: bytes) -> None:
        if not self.head_sent:
            return
        f = self.body_filter
        if f is not None:
            body = f(self.ctx, body, False)
            if not body:
                return
        self.ctx.bytes_sent += len(body)
        if self.rechunk:
            if self.held is not None:  # the filter streams after all: the head as built
                self.out.append(self.held)
                self.held = None
            self.out.append(b"%x\r\n" % len(body))
            self.out.append(body)
            self.out.append(b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if not self.head_sent:
            # end of an interim (1xx) response: keep reading for the final one
            return
        if self.state != BUSY or self.status == 101:
            return  # (101: httptools reports the upgrade right after; the tunnel starts there)
        self._end(reusable=self.keep and not self.close_delimited)

    def _end(self, reusable: bool) -> None:
        out = self.out
        if self.body_filter is not None:
            tail = self.body_filter(self.ctx, b"", True)
            held = self.held if self.rechunk else None
            if held is not None:
                # WHOLE: nothing of the body went out, and here it is whole: the head
                # with its Content-Length in place of the chunked framing
                self.held = None
                self.rechunk = False
                if out is None:
                    out = self.out = []
                out.append(held.replace(b"\r\ntransfer-encoding: chunked\r\n",
                                        b"\r\ncontent-length: %d\r\n" % len(tail), 1))
                if tail:
                    self.ctx.bytes_sent += len(tail)
                    out.append(tail)
            elif tail:
                self.ctx.bytes_sent += len(tail)
                if out is None:
                    out = self.out = []
                out.append(b"%x\r\n%s\r\n" % (len(tail), tail) if self.rechunk else tail)
        if self.rechunk:
            if out is None:
                out = self.out = []
            out.append(LAST_CHUNK)
        if out:
            self.out = None
            down = self.down
            if down is not None:
                # (the client protocol's ``write`` written out: a Python call less per response)
                t = down.transport
                if t is not None and not down.closed:
                    t.write(out[0] if len(out) == 1 else b"".join(out))
        self.dl.kind = T_NONE
        h = self.handler
        self.handler = None
        if self.state == BUSY:
            self.state = IDLE if reusable else self.state
        if not reusable:
            self.close()
        else:
            # the next exchange starts from the start values (``send`` sets none of these)
            self.got_bytes = False
            self.head_sent = False
            self.rechunk = False
            self.close_delimited = False
            self.status = 0
            self.hbuf = b""
            self.hoff = 0
            self.out = None
            self.keep = True
        if h is not None:
            h.upstream_done(self, reusable)

    def _fail(self, err: GatewayError) -> None:
        self.out = None
        h, self.handler = self.handler, None
        self.close()
        if h is not None:
            h.upstream_error(self, err)

    def start_tunnel(self, down) -> None:
        """After a 101: relay bytes between this connection and the client's ``down``;
        no handler and no deadline any more (the client side owns the tunnel's end)."""
        self.handler = None
        self.tunnel = down
        self.dl.kind = T_NONE

    def drop(self) -> None:
        """Forget the exchange and close (``Pool.release`` of a connection that is not
        reusable): aborted if a request or response was in progress, since the bytes in
        flight are not at a message boundary."""
        self.handler = None
        self.down = None
        if self.state == BUSY:
            self.abort()
        else:
            self.close()

    def pause_reading(self, paused: bool) -> None:
        """Back-pressure from the client: stop (or resume) reading the response."""
        t = self.transport
        if t is None or paused == self.read_paused:
            return
        self.read_paused = paused
        if paused:
            t.pause_reading()
        else:
            t.resume_reading()

    def close(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()

    # ------------------------------------------------------------------ timers
    def _expired(self, kind: int) -> None:
        """The connection's deadline passed (``Deadline.fire``)."""
        if self.state == CLOSED:
            return
        if kind == T_IDLE:
            self.close()
        elif kind == T_HEAD:
            self._fail(GatewayError("upstream_timeout", "upstream did not answer in time"))
        elif kind == T_READ:
            self._fail(GatewayError("upstream_timeout", "upstream response body stalled"))
