"""``Exchange`` and ``Attempt``: one request's way through the gateway (L4).

``Exchange`` is owned by the engine (``pipeline.engine``): one per request, made when
the client protocol dispatches a ``Request``.  It is the ``Ctx`` the middlewares get
(a subclass: one allocation per request), plus the engine's own typed slots: the
config snapshot, the body held or buffered on its way upstream, the attempts, the
response decisions.  Nothing of this lives in ``ctx.notes``.

``Attempt`` is one try against one upstream instance: the pool (instance) chosen, the
request head built *for that instance* (its Host and base path), the connection, when
it started and ended, and how it failed.  A retry is a new ``Attempt`` with its own
head; ``Exchange.attempt`` is the current one and ``Attempt.prev`` links the earlier
ones (``Exchange.attempts()`` lists them, oldest first).
"""

from __future__ import annotations

from typing import Any

import msgspec

from fastgw.clock import monotonic
from fastgw.pipeline.ctx import _NO_ROLES, Ctx


class Exchange(Ctx):
    __slots__ = (
        "app",            # the config snapshot (runtime App) this request runs on
        "keep_alive",     # bool: the client connection stays open after the response
        "content_length",  # int | None: the body framing sent upstream (a buffered
        "chunked",        # bool:        chunked body is forwarded with a length)
        "upgrade",        # bytes | None: the Upgrade forwarded (WebSocket only)
        "attempt",        # Attempt | None: the current try
        "pending",        # list[bytes] | None: body waiting for the upstream connection
        "pending_size",   # int: bytes in ``pending``
        "buffer",         # list[bytes] | None: body buffered for request_body_filter
        "body_done",      # bool: the client's body ended before a connection was bound
        "resend",         # list[bytes] | None: a small whole body kept for a retry
        "retried",        # bool: the one retry was used
        "nolog",          # bool: not logged nor counted (the health path)
        "cancel",         # callable | None: gives back a pool wait or connect in progress
        # failover, on routes with ``retries`` only (set by ``Proxy.forward`` there, never
        # read elsewhere: the bare path pays no store): the overall deadline for the
        # response head (loop time; 0.0 until the first attempt's head timer starts,
        # upstream.client rule 5) and whether this exchange holds a place among the
        # retries in flight (resilience.retry)
        "deadline",
        "retrying",
    )

    def __init__(self, request, app) -> None:
        fill_exchange(self, request, app)

    def attempts(self) -> list:
        """Every attempt, oldest first."""
        out = []
        a = self.attempt
        while a is not None:
            out.append(a)
            a = a.prev
        out.reverse()
        return out

    def tries(self) -> list:
        """Each attempt as ``"instance outcome"``, oldest first (the access log's
        ``tries``): the outcome is the error kind without ``upstream_`` (``refused``,
        ``reset``, ``timeout``, ``connect_timeout``, ...), the status of the response head
        (``503``), or ``-`` when the attempt has none (the client left while it ran)."""
        out = []
        last = self.attempt
        for a in self.attempts():
            e = a.error
            if e is not None:
                k = e.kind
                what = k[9:] if k.startswith("upstream_") else k
            elif a.status:
                what = str(a.status)
            elif a is last and self.upstream_status:
                what = str(self.upstream_status)
            else:
                what = "-"
            out.append(a.instance.label + " " + what)
        return out


def fill_exchange(self, request, app) -> "Exchange":
    """Set every field (``Exchange(request, app)``; the engine calls it on
    ``object.__new__(Exchange)``: ~240 instructions less than a class call, callgrind)."""
    # Ctx's fields, stored here rather than through Ctx.__init__: one Python call
    # less per request (callgrind); keep the two lists in step
    self.request = request
    self.client_ip = request.peer_ip
    self.scheme = "https" if request.tls else "http"
    self.trusted_peer = False
    self.request_id = ""
    self.user = None
    self.roles = _NO_ROLES
    self.claims = None
    self.route = None
    self.path_params = None
    self.fwd = request.headers
    self.up_lines = b""
    self.resp_lines = b""
    self.resp_drop = None
    self.usual_edit = None
    self.up_target = None
    self.notes = {}
    self.status = 0
    self.bytes_sent = 0
    self.upstream = ""
    self.upstream_status = 0
    self.upstream_duration = None
    self.start = monotonic()
    self.flags = []
    self.error = None
    # the engine's own
    self.app = app
    self.keep_alive = request.keep_alive
    self.content_length = request.content_length
    self.chunked = request.chunked
    self.upgrade = request.upgrade
    self.attempt = None
    self.pending = None
    self.pending_size = 0
    self.buffer = None
    self.body_done = False
    self.resend = None
    self.retried = False
    self.nolog = False
    self.cancel = None
    request.exchange = self
    return self


class Attempt(msgspec.Struct, eq=False):
    """One try (``new_attempt``; ``Proxy.forward`` calls ``Attempt(...)`` with every
    field, in order, for the first attempt of every request).  A msgspec Struct rather
    than a ``__slots__`` class: its constructor is one C call that stores the fields, not
    a Python store per field.  Every field is passed, none has a default (filling
    defaults in msgspec costs more than it saves).  Never encoded; ``eq=False`` keeps
    identity comparison and hashing (an attempt is one event, never equal to another)."""

    instance: Any   # the upstream.peer.Instance tried (base path, Host, label, pool)
    pool: Any       # the instance's connection pool (its ``peer`` says where and how)
    head: bytes     # the request head built for this instance
    conn: Any       # the upstream connection bound to this attempt, or None
    start: float    # monotonic time the attempt started
    end: float      # when it ended (0.0 while running)
    error: Any      # GatewayError | None: how it failed (``error.source``, ``retryable``)
    prev: Any       # Attempt | None: the attempt before this one
    status: int     # a 5xx head dropped for a retry (0 otherwise; the last one is x.upstream_status)


def new_attempt(inst, head: bytes, start: float, prev) -> Attempt:
    """An attempt on instance ``inst`` with the head built for it, started at ``start``."""
    return Attempt(inst, inst.pool, head, None, start, 0.0, None, prev, 0)
