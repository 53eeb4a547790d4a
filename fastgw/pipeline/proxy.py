"""The engine's upstream half (L5): attempts against upstream instances.

``Proxy`` is what ``UpstreamProtocol`` reports to (``pipeline.boundary.UpstreamHandler``)
and what the engine asks to forward a request once its request phases passed:

    forward(x)   -> pick an instance -> Attempt: head built for that instance
                 -> pool.acquire (idle first) -> one write: head + body at hand
    fail(x, err) -> a new Attempt on another instance (once: idempotent, retryable error,
                    nothing sent, body at hand) or the error reply; with ``retries``
                    (``_policy_retry``): up to ``retries`` more, within the retry budget
                    and the service's timeout counted over all attempts (``x.deadline``,
                    set by the first attempt's head timer, ``upstream.client`` rule 5)
    upstream_head -> timing, response filters (reverse) -> head bytes + body framing
    upstream_done -> Pool.release -> proto.request_done -> logging phase

Every connection leaves an attempt through ``Pool.release`` (parked when reusable,
else dropped); ``drop(x)`` is the one place an exchange gives its connection (or its
wait for one) back early.

In flight (``Instance.requests - Instance.done``, read by ``least_request``):
``requests`` +1 when an attempt binds an instance (``forward``, ``_retry``), ``done`` +1
when a retry replaces it (``_retry``) or the exchange ends whatever the path (success,
error reply, client gone: ``Engine.finish``, called once per exchange), so every attempt
is counted out exactly once.
"""

from __future__ import annotations

from fastgw.clock import monotonic
from fastgw.errors import GatewayError
from fastgw.http.protocol import PAUSE_UPSTREAM, PAUSE_WAIT
from fastgw.http.messages import EDIT_MEMO_BLOCK
from fastgw.http.wire import LAST_CHUNK, chunk
from fastgw.pipeline.exchange import Attempt, new_attempt
from fastgw.pipeline.heads import _CUTS, request_head, response_head
from fastgw.resilience.retry import CONNECT_FAILURE
from fastgw.shm.health import KIND_OF
from fastgw.upstream.client import T_IDLE

STATUS_5XX = 3  # shm.health FAIL_KINDS index
# blocks kept per ``Ctx.usual_edit`` memo (one per request state, e.g. per allowed CORS
# origin: an upstream's head changes with its Date, so a few recent blocks are enough)
USUAL_EDIT_SIZE = 16

def failed(inst, kind: int) -> None:
    """An attempt on ``inst`` failed (an upstream failure, never a gateway-made answer):
    this worker's consecutive count and its row in the health table (outlier detection)."""
    if kind < 0:
        return
    inst.fails += 1
    row = inst.row
    if row is not None:
        row.failed(inst.slot, kind, inst.fails, inst.requests)


def succeeded(inst) -> None:
    """The first good head after failures: the consecutive count starts again."""
    inst.fails = 0
    row = inst.row
    if row is not None:
        row.succeeded(inst.slot, inst.requests)


def _remember_edit(memo: dict, x, status: int, block: bytes, edits) -> bytes:
    """A miss of the usual response's edit memo (``Ctx.usual_edit``): the filters run, and
    their result is kept for the block (bounded; long blocks are not kept)."""
    edited = block
    for fn in edits:
        edited = fn(x, status, edited)
    if len(block) <= EDIT_MEMO_BLOCK:
        if len(memo) >= USUAL_EDIT_SIZE:
            memo.clear()
        memo[block] = edited
    return edited


def _tried(x) -> tuple:
    out = []
    a = x.attempt
    while a is not None:
        out.append(a.instance)
        a = a.prev
    return tuple(out)


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RESEND_PIECES = 64  # a whole body in fewer pieces than this is kept for a retry


class Proxy:
    __slots__ = ("engine",)

    def __init__(self, engine) -> None:
        self.engine = engine  # for the error reply and the draining flag

    # ------------------------------------------------------------------ attempts
    def forward(self, proto, x) -> None:
        """The request phases passed: the first attempt."""
        route = x.route
        # ``solo``: a service's one instance, unless drained (no balancer then)
        inst = route.lb.solo or route.pick(x)
        if inst is None:
            self.fail(proto, x, GatewayError("no_upstream", f"no healthy instance for service {route.service}"))
            return
        inst.requests += 1   # in flight until the exchange ends (Engine.finish) or a retry
        # the first attempt (a retry is ``_retry``), with a head built for its instance
        x.upstream = inst.label
        if route.retry is not None:
            route.retry.budget.active += 1   # until Engine.finish (resilience.retry)
            x.deadline = 0.0
            x.retrying = False
        pool = inst.pool
        head = request_head(x, route, inst)
        # the newest idle connection when it is usable (``Pool.acquire_idle``'s test written
        # out: a Python call less per request); else the pool's own way
        idle = pool.idle
        conn = idle[-1] if idle else None
        if conn is not None and conn.state == 0 and conn.transport is not None and not conn.transport.is_closing():
            idle.pop()
            pool.reused += 1   # (published on the worker tick)
        else:
            conn = pool.acquire_idle()
        if conn is not None and x.pending is None and not x.chunked:
            # fast path: a warm keep-alive connection and nothing but the head to send
            # (a body, if any, follows through Engine.on_body); the attempt is made bound
            # to it (``new_attempt`` written out, with its connection: a store on the
            # Struct less)
            x.attempt = Attempt(inst, pool, head, conn, monotonic(), 0.0, None, None, 0)
            conn.send(self, proto, x, head, route)
            if proto.write_paused:
                conn.pause_reading(True)
            return
        a = x.attempt = Attempt(inst, pool, head, None, monotonic(), 0.0, None, None, 0)
        if conn is None:
            cancel = pool.acquire(lambda conn, err: self._on_conn(proto, x, a, conn, err))
            if cancel is not None:
                x.cancel = cancel
        else:
            self._on_conn(proto, x, a, conn, None)

    def _retry(self, proto, x, inst, fresh: bool = True) -> None:
        """A new attempt on the instance ``inst``, with a head built for it, on a fresh
        connection (a reused one just failed), within its pool's cap; ``fresh=False``
        (a policy retry on another instance) takes an idle connection first."""
        x.cancel = None
        if proto.closed or proto.cur is not x.request:
            return
        x.upstream = x.upstream + ", " + inst.label if x.upstream else inst.label
        prev = x.attempt
        if prev is not None:   # that attempt ended: it is no longer in flight
            prev.instance.done += 1
        inst.requests += 1
        pool = inst.pool
        a = x.attempt = new_attempt(inst, request_head(x, x.route, inst), monotonic(), x.attempt)
        if not fresh:
            conn = pool.acquire_idle()
            if conn is not None:
                self._on_conn(proto, x, a, conn, None)
                return
            cancel = pool.acquire(lambda conn, err: self._on_conn(proto, x, a, conn, err))
        else:
            cancel = pool.connect_fresh(lambda conn, err: self._on_conn(proto, x, a, conn, err))
        if cancel is not None:
            x.cancel = cancel

    def _on_conn(self, proto, x, a, conn, err) -> None:
        x.cancel = None
        if proto.closed or proto.cur is not x.request or x.attempt is not a:
            if conn is not None:
                conn.pool.release(conn, True)
            return
        if err is not None:
            self.fail(proto, x, err)
            return
        data = a.head
        pend, x.pending = x.pending, None
        if pend:
            if x.chunked:
                data += b"".join([chunk(b) for b in pend])
            else:
                data += b"".join(pend)
            x.resend = pend if (proto.cur_complete and len(pend) < RESEND_PIECES) else None
            proto.resume_for(PAUSE_WAIT)
        if x.chunked and (x.body_done or proto.cur_complete):
            data += LAST_CHUNK
        a.conn = conn
        conn.send(self, proto, x, data, x.route)
        if proto.write_paused:
            conn.pause_reading(True)

    def fail(self, proto, x, err: GatewayError) -> None:
        """An upstream-side failure before the response head: retry or answer 502/503/504."""
        x.error = err
        a = x.attempt
        if a is not None:
            a.error = err
            a.end = monotonic()
        route = x.route
        if a is not None and err.source == "upstream":
            failed(a.instance, KIND_OF.get(err.kind, -1))
        pol = route.retry
        if pol is not None and a is not None:
            cond = pol.condition(err.kind)
            if cond is not None and self._policy_retry(proto, x, pol, cond):
                return
        # the one-shot retry (of a reused connection that died before any byte, or of a
        # refused connect), independent of ``retries``
        if (err.retryable and x.request.method in IDEMPOTENT and not x.retried
                and not x.chunked and (not x.content_length or x.resend)
                and not (pol is not None and a is not None and x.deadline
                         and x.app.loop.time() >= x.deadline)):
            x.retried = True
            x.flags.append("retried")
            if x.resend:
                x.pending, x.resend = x.resend, None
            inst = route.pick(x) if route.retry is None else route.pick_other(_tried(x), x)
            if inst is not None:
                x.error = None
                self._retry(proto, x, inst)
                return
        x.app.metrics.upstream_error(route, err.kind)
        self.engine.reply_error(proto, x, err, route.chain)

    def _policy_retry(self, proto, x, pol, reason: str, status: bool = False) -> bool:
        """``retries``: another attempt, on another instance when one exists, after a
        jittered backoff, if the request allows it and the budget does (resilience.retry).
        Idempotent methods on any ``retry.on`` condition; an opted-in other method only
        on a connect failure (nothing reached the upstream)."""
        req = x.request
        if req.method not in IDEMPOTENT and not (pol.non_idempotent and reason == CONNECT_FAILURE):
            return False
        if proto.closed or proto.cur is not req or x.chunked or not proto.cur_complete:
            return False
        if status:
            body = None if not x.content_length else x.resend
        else:
            body = x.pending if x.pending is not None else x.resend
        if x.content_length and (body is None or sum(map(len, body)) > pol.max_body):
            return False
        tried = _tried(x)
        if len(tried) > pol.retries:
            return False
        delay = pol.backoff(len(tried))
        end = x.deadline
        if end and x.app.loop.time() + delay >= end:
            # the service's timeout bounds all attempts together (upstream.client rule 5)
            x.flags.append("retry_deadline")
            return False
        route = x.route
        if not pol.budget.allow(x, monotonic()):
            x.app.metrics.retry_budget_exhausted(route.service)
            x.flags.append("retry_budget_exhausted")
            return False
        inst = route.pick_other(tried, x)
        if inst is None:
            return False
        x.app.metrics.upstream_retry(route.service, reason)
        x.flags.append("retried")
        x.error = None
        if body is not None and x.pending is None:
            x.pending, x.resend = body, None
        if delay > 0.0:
            h = x.app.loop.call_later(delay, self._retry, proto, x, inst, False)
            x.cancel = h.cancel
        else:
            self._retry(proto, x, inst, False)
        return True

    @staticmethod
    def drop(x) -> None:
        """The exchange ends without its response (client gone, body refused or late):
        a wait for a connection is given back, a bound connection released as not
        reusable."""
        cancel = x.cancel
        if cancel is not None:
            x.cancel = None
            cancel()
        a = x.attempt
        if a is not None:
            up = a.conn
            if up is not None:
                a.conn = None
                up.pool.release(up, False)

    # ------------------------------------------------------------------ upstream events
    def upstream_head(self, up, status: int, reason: bytes, block: bytes, keep: bool):
        """The upstream's response head arrived: timing, then the client's head bytes and
        the body framing."""
        x = up.ctx
        x.upstream_status = status
        a = x.attempt
        x.upstream_duration = monotonic() - a.start
        if status > 499:
            if self._bad_status(up, x, a, status):
                return None, 0   # not forwarded: a retry is under way (client.py stops here)
        elif a.instance.fails:
            succeeded(a.instance)
        down = up.down
        # (``heads.keep_client`` written out, the same test: a Python call less per response)
        keep = x.keep_alive and down is not None and not self.engine.draining and not down.draining \
            and down.cur_complete
        if keep:
            cut = _CUTS.get(block)
            chain = x.route.chain
            line = chain.usual_lines.get(status)
            if line is not None and cut is not None and cut[1] and cut[3] is None and x.resp_drop is None \
                    and x.request.version == "1.1":
                # The usual response: a header block seen before (its cut remembered), with
                # its Content-Length and no Connection list, one of the route's usual
                # statuses, no response filter but raw-block ones (security headers, CORS:
                # ``Chain.usual_block``) and no removal, an HTTP/1.1 client kept alive.
                # ``response_head``'s result for it written out (a Python call and its
                # general tests less per exchange; keep the two in step,
                # tests/proxy/test_pipeline_model.py compares them).
                block = cut[0]
                edits = chain.usual_block
                if edits:
                    memo = x.usual_edit
                    if memo is not None and chain.usual_memo:
                        # the edit for this request's state, remembered per block
                        # (``Middleware.response_block_memo``): no call when seen before
                        edited = memo.get(block)
                        block = edited if edited is not None else _remember_edit(memo, x, status, block, edits)
                    else:
                        for fn in edits:
                            block = fn(x, status, block)
                x.status = status
                return b"%s%s%s%s\r\n" % (line, x.app.server_header or b"", block, x.resp_lines), 0
        return response_head(x, down, status, reason, block, keep, x.app.server_header)

    def _bad_status(self, up, x, a, status: int) -> bool:
        """A 5xx head: counted against the instance; retried (the head not forwarded, the
        connection dropped) when ``retry.on`` lists the status and the request allows it."""
        failed(a.instance, STATUS_5XX)
        pol = x.route.retry
        if pol is None or status not in pol.statuses:
            return False
        proto = up.down
        if proto is None or x.request.method not in IDEMPOTENT:
            return False
        # decided first: the 5xx is forwarded as it is unless a retry really starts
        a.end = monotonic()
        a.conn = None
        a.status = status   # (the access log's ``tries``)
        if not self._policy_retry(proto, x, pol, str(status), status=True):
            a.conn = up
            a.end = 0.0
            a.status = 0
            return False
        up.pool.release(up, False)
        return True

    def upstream_done(self, up, reusable: bool) -> None:
        x = up.ctx
        proto = up.down
        x.attempt.conn = None
        req = x.request
        pool = up.pool
        # An upstream that answered before the whole request body was sent still expects
        # the rest of it: that connection must not carry another request.
        if proto is None or proto.cur is not req or not proto.cur_complete:
            pool.release(up, False)
            if proto is not None and proto.cur is req:
                proto.request_done(req, x.keep_alive)
            return
        if reusable and up.state == 0 and not up.read_paused and not pool.waiters and not pool.closed \
                and len(pool.idle) < pool.max_idle and up.transport is not None:
            # the usual keep-alive exchange: ``Pool.release``'s parking written out (a
            # Python call less per exchange; keep the two in step)
            up.down = None
            up.ctx = None
            up.reused = True
            up.idle_since = now = pool.loop.time()
            dl = up.dl
            at = now + pool.idle_timeout
            if dl.timer is not None and dl.timer_at <= at:
                dl.at = at
                dl.kind = T_IDLE
            else:
                dl.set(T_IDLE, pool.idle_timeout, now)
            pool.idle.append(up)
        else:
            pool.release(up, reusable)
        proto.request_done(req, x.keep_alive)

    def upstream_error(self, up, err: GatewayError) -> None:
        x = up.ctx
        proto = up.down
        x.attempt.conn = None
        if proto is None or proto.cur is not x.request:
            return
        if not up.head_sent:
            self.fail(proto, x, err)
            return
        # The head is out: the only honest signal left is an aborted connection, never a
        # truncated response that looks complete.
        x.error = err
        x.flags.append("upstream_abort")
        x.app.metrics.upstream_error(x.route, err.kind)
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
        x = up.ctx
        up.start_tunnel(proto)
        x.attempt.conn = None
        x.flags.append("upgraded")
        if rest:
            proto.write(rest)
        proto.start_tunnel(up.transport)
