"""Access log middleware: one JSON line per request, in the logging phase.

Fields follow DESIGN.md (Envoy's spirit, snake_case).  Each request adds one ``AccessRecord``
to the worker's ``LogBuffer``, which encodes the pending records in one batch
(``msgspec`` ``encode_lines``) and writes them on the tick, whole lines only.  Measured
with callgrind, a record plus its share of the batch encoding costs about half as many
instructions as building a dict and ``orjson.dumps`` per request; the output is the same
bytes (same keys, same order, same number formatting).  The health path is not logged
unless ``monitoring.logging.access_log.log_health``.
"""

from __future__ import annotations

import msgspec

from fastgw.clock import monotonic, wall
from fastgw.pipeline.middleware import Middleware


class AccessRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """One access log line; the field order is the line's key order.

    Only ``trace_id``, ``span_id`` (from the tracing middleware's note) and
    ``content_encoding`` and ``cache`` have a default, so they are the only keys left out (when None):
    ``omit_defaults`` never drops a field without a default.  ``gc=False``: a record holds
    strings, numbers and a list of strings, never a cycle, so the collector need not track it.
    """

    ts: float                        # wall-clock seconds
    request_id: str
    client_ip: str
    method: str
    authority: str
    path: str
    status: int
    bytes_received: int
    bytes_sent: int
    duration_s: float
    upstream: str
    upstream_status: int | None      # None when no upstream answered
    upstream_duration_s: float | None
    route: str | None                # None for the global chain's own replies
    user: str | None
    user_agent: str | None
    response_flags: list[str] | tuple[str, ...]
    trace_id: str | None = None
    span_id: str | None = None       # the gateway's span (the upstream's parent)
    content_encoding: str | None = None  # the response's coding when the gateway compressed it
    cache: str | None = None         # the response cache's result on a caching route (hit, miss, ...)


class TriedRecord(AccessRecord, omit_defaults=True, gc=False):
    """An ``AccessRecord`` of a request where an attempt failed or there were several:
    ``attempts`` and ``tries``, each attempt as "instance outcome" (``Exchange.tries``:
    "127.0.0.1:9001 refused", "127.0.0.1:9002 200").  A subclass, made only then: the
    usual record neither carries nor encodes two more defaults."""

    attempts: int | None = None
    tries: list[str] | None = None


class ReplayRecord(TriedRecord, omit_defaults=True, gc=False):
    """An ``AccessRecord`` (or ``TriedRecord``) with the opt-in fields ``fastgw replay`` routes on
    (``access_log.query``, ``access_log.headers``): ``query`` (raw, without ``?``) and
    ``headers`` (every configured name, null when the request had none)."""

    query: str | None = None
    headers: dict[str, str | None] | None = None


_NO_FLAGS = ()  # encodes as [] like an empty list, and nothing can append to it later


class AccessLog(Middleware):
    name = "access_log"

    def __init__(self, cfg, deps, buf) -> None:
        super().__init__(cfg, deps)
        self.buf = buf
        # the buffer's pending-record list (the same list object for the buffer's life) and
        # its size limit: appending here directly saves a method call per request
        self.recs = buf.recs
        self.max_recs = buf.max_recs

    def logging(self, ctx, error) -> None:
        route = ctx.route
        # records are encoded later (on the tick): pass a list nobody else holds, since the
        # request's own list could in principle still be appended to after this phase
        flags = ctx.flags
        if error is not None and error.kind not in flags:
            flags = flags + [error.kind]
        elif flags:
            flags = flags.copy()
        else:
            flags = _NO_FLAGS
        req = ctx.request
        ua = req.user_agent
        recs = self.recs
        notes = ctx.notes
        if notes and (route is None or route.chain.log_notes):
            # (traceparent line, trace_id, span_id) of the tracing middleware
            # (fastgw.obs.otlp.trace_ids, inlined), the compression middleware's coding, the
            # cache middleware's result
            tp = notes.get("trace")
            recs.append(AccessRecord(
                wall(), ctx.request_id, ctx.client_ip, req.method, req.host, req.path, ctx.status,
                req.bytes_received, ctx.bytes_sent, monotonic() - ctx.start, ctx.upstream,
                ctx.upstream_status or None, ctx.upstream_duration,
                route.name if route is not None else None, ctx.user,
                ua.decode("latin-1") if ua else None, flags, tp[1] if tp is not None else None,
                tp[2] if tp is not None else None, notes.get("content_encoding"), notes.get("cache_result")))
        else:
            # no note to read (a route without a middleware that leaves one for the log,
            # ``Chain.log_notes``: the bare route, the policy chain), the optional keys keep
            # their defaults
            recs.append(AccessRecord(
                wall(), ctx.request_id, ctx.client_ip, req.method, req.host, req.path, ctx.status,
                req.bytes_received, ctx.bytes_sent, monotonic() - ctx.start, ctx.upstream,
                ctx.upstream_status or None, ctx.upstream_duration,
                route.name if route is not None else None, ctx.user,
                ua.decode("latin-1") if ua else None, flags))
        if flags is not _NO_FLAGS:
            # (a retried or failed request has a flag or an error) failover: every
            # attempt's instance and outcome, when one failed or there were several
            a = ctx.attempt
            if a is not None and (a.prev is not None or a.error is not None):
                rec = recs[-1]
                t = ctx.tries()
                recs[-1] = TriedRecord(*(getattr(rec, f) for f in rec.__struct_fields__), len(t), t)
        if len(recs) >= self.max_recs:
            self.buf.flush()


class AccessLogReplay(AccessLog):
    """The access log with the replay fields: a subclass, so the default log's hot path
    does not even test for them."""

    def __init__(self, cfg, deps, buf) -> None:
        super().__init__(cfg, deps, buf)
        al = cfg.monitoring.logging.access_log
        self.with_query = al.query
        self.names = tuple((n, n.encode("ascii")) for n in al.headers)
        self.flush_at, self.max_recs = self.max_recs, 1 << 62    # the base never flushes: we do

    def logging(self, ctx, error) -> None:
        super().logging(ctx, error)
        recs = self.recs
        rec = recs[-1]
        recs[-1] = ReplayRecord(*(getattr(rec, f, None) for f in TriedRecord.__struct_fields__),
                                query=ctx.request.query.decode("latin-1") if self.with_query else None,
                                headers={n: _text(ctx.header(b)) for n, b in self.names} or None)
        if len(recs) >= self.flush_at:
            self.buf.flush()


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("latin-1")


def build(root_cfg, service_cfg, route_cfg, deps):
    if deps is None:
        return None
    buf = deps.state.get("access_log_buffer")
    if buf is None:
        return None
    al = root_cfg.monitoring.logging.access_log
    key = ("access_log", al.query, tuple(al.headers))     # a reload that changes the fields: a new one
    shared = deps.state.get(key)
    if shared is None:
        cls = AccessLogReplay if (al.query or al.headers) else AccessLog
        shared = deps.state[key] = cls(root_cfg, deps, buf)
    return shared
