"""Tracing middleware: W3C Trace Context in and out, the gateway's span, OTLP export.

On (``monitoring.tracing`` present), every request gets a trace:

1. An incoming ``traceparent`` is continued only when the peer is trusted
   (``gateway.trusted_proxies``) and the header is valid (W3C Trace Context §3.2: version
   not ``ff``, lower-case hex, trace id and parent id not all zeros, version 00 exactly
   55 characters, one header only).  Otherwise the gateway starts a new trace, and the
   request's ``traceparent`` and ``tracestate`` are dropped, never forwarded: an
   untrusted client must not pick the trace or force sampling.
2. The gateway's span gets a new span id; the upstream request carries
   ``traceparent: 00-<trace id>-<gateway span id>-<flags>``, so the upstream's span is
   the gateway span's child.  A continued trace keeps its ``tracestate`` (forwarded as
   received, up to 512 bytes) and its sampled flag; a new trace is sampled with
   probability ``sample_ratio`` (head sampling).
3. ``ctx.notes["trace"]`` is ``(the traceparent line sent upstream, trace_id, span_id)``,
   the ids as lower-case hex strings: the access log writes both, and the header-variable
   feature reads them with ``fastgw.obs.otlp.trace_ids(ctx.notes)``.
4. A sampled request, once finished (logging phase, errors and local replies included),
   is queued as a plain tuple to the worker's ``SpanExporter`` (``fastgw.obs.otlp``),
   which batches and POSTs spans to ``otlp_endpoint`` from a background task.

Cost on the request path when the request has no trace header and is not sampled: a
``list.pop`` of a ready-made trace, one note and one line appended to the upstream head.
New traces are made 1024 at a time (one ``os.urandom`` read; the hex, the header lines
and the id strings cut by C code: ``bytes.hex``, one ``re.sub``, one ``re.findall``),
and the protocol flags trace headers while parsing (``Request.trace_hdrs``), so the usual
request needs no header lookup.  Measured: ``docs/operations.md``, "Tracing".

Ctx surface used: ``request`` (``trace_hdrs``, set by the protocol; ``headers``, only to
see a repeated ``traceparent``; ``method``, ``path``, ``host``), ``header()``,
``remove_request_headers()``, ``add_request_lines()`` (one prebuilt line),
``trusted_peer``, ``notes``; in the logging phase ``start``, ``scheme``, ``status``,
``route.name``, ``client_ip``, ``upstream``, ``request_id``.
"""

from __future__ import annotations

import os
import re
from random import getrandbits, random

from fastgw.clock import monotonic
from fastgw.obs.otlp import SpanExporter, trace_ids  # noqa: F401 (trace_ids: re-exported)
from fastgw.pipeline.middleware import Middleware

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").match
_DROP_PARENT = frozenset({b"traceparent"})
_DROP_BOTH = frozenset({b"traceparent", b"tracestate"})
# ctx.notes["trace"] = (the traceparent line sent upstream, trace id, span id); the ids
# as lower-case hex str, as the access log writes them
_LINE = (b"traceparent: 00-%032x-%016x-00\r\n", b"traceparent: 00-%032x-%016x-01\r\n")
POOL = 1024
_SPLIT_IDS = re.compile(r"([0-9a-f]{32})([0-9a-f]{16})").findall
_SPLIT_IDS_B = re.compile(rb"([0-9a-f]{32})([0-9a-f]{16})").sub
_LINE_TEMPLATE = rb"traceparent: 00-\1-\2-00\r\n"
MAX_TRACESTATE = 512


def parse_traceparent(value: bytes):
    """``(trace_id, parent_id, flags)`` as ints, or None when ``value`` is not valid."""
    v = value.strip(b" \t")
    m = _TRACEPARENT(v)
    if m is None:
        return None
    version = m.group(1)
    if version == b"00":
        if len(v) != 55:
            return None
    elif version == b"ff" or (len(v) > 55 and v[55] != 45):  # a later version: "-" after flags
        return None
    tid = int(m.group(2), 16)
    pid = int(m.group(3), 16)
    if not tid or not pid:
        return None
    return tid, pid, int(m.group(4), 16)


class Tracing(Middleware):
    """Ids and propagation only (no ``otlp_endpoint``): no logging hook."""

    name = "tracing"

    def __init__(self, cfg, deps, exporter: SpanExporter | None, key=None) -> None:
        super().__init__(cfg, deps)
        self.ratio = cfg.monitoring.tracing.sample_ratio
        self.exporter = exporter
        self.offer = exporter.offer if exporter is not None else None
        self.key = key
        # ids for new traces, made POOL at a time; filled on first use, which is after
        # fork (requests are served by workers only), so no two workers share ids
        self.pool: list = []

    def leaves_log_notes(self) -> bool:
        return True   # ``trace``: the access log's trace_id and span_id

    def request_filter(self, ctx):
        # The usual request carries no trace header (the protocol flags one in
        # Request.trace_hdrs: no header lookup here) and takes a ready-made trace from the
        # pool: its upstream line and its ids as the access log writes them.
        if ctx.request.trace_hdrs:
            return self._incoming(ctx)
        try:
            t = self.pool.pop()
        except IndexError:
            t = self._refill()
        if self.ratio and random() < self.ratio:
            t = (t[0][:-4] + b"01\r\n", t[1], t[2])
            if self.offer is not None:
                ctx.notes["tracing"] = (t[1], t[2], None, None)
        ctx.notes["trace"] = t
        ctx.add_request_lines(t[0])
        return None

    def _refill(self):
        """Make POOL traces at once (one urandom read, the formatting done by C code) and
        return one.  (An all-zero id has probability 2^-64 per span id: not checked.)"""
        h = os.urandom(24 * POOL).hex()
        lines = _SPLIT_IDS_B(_LINE_TEMPLATE, h.encode("ascii")).splitlines(True)
        traces, spans = zip(*_SPLIT_IDS(h))
        self.pool = pool = list(zip(lines, traces, spans))
        return pool.pop()

    def _incoming(self, ctx):
        """A request with trace headers (or a hand-made Ctx): continue or replace them."""
        tp = ctx.header(b"traceparent")
        sid = getrandbits(64) or 1
        state = None
        if tp is not None and ctx.trusted_peer and (p := parse_traceparent(tp)) is not None and _once(ctx):
            tid, parent, flags = p
            sampled = flags & 1
            state = ctx.header(b"tracestate")
            if state is not None and len(state) > MAX_TRACESTATE:
                ctx.remove_request_headers(_DROP_BOTH)
                state = None
            else:
                ctx.remove_request_headers(_DROP_PARENT)
        else:
            if tp is not None or ctx.header(b"tracestate") is not None:
                ctx.remove_request_headers(_DROP_BOTH)
            tid = getrandbits(128) or 1
            parent = 0
            ratio = self.ratio
            sampled = 1 if ratio and random() < ratio else 0
        t = (_LINE[sampled] % (tid, sid), "%032x" % tid, "%016x" % sid)
        ctx.notes["trace"] = t
        ctx.add_request_lines(t[0])
        if sampled and self.offer is not None:
            ctx.notes["tracing"] = (t[1], t[2], "%016x" % parent if parent else None, state)
        return None

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
        if self.deps is not None and self.key is not None:
            self.deps.state.pop(self.key, None)


class TracingExport(Tracing):
    """With ``otlp_endpoint``: sampled requests are queued for export when they finish."""

    def logging(self, ctx, error) -> None:
        t = ctx.notes.get("tracing")
        if t is None:
            return
        route = ctx.route
        state = t[3]
        self.offer((t[0], t[1], t[2], ctx.start, monotonic(), ctx.request.method, ctx.request.path, ctx.scheme, ctx.status,
                    route.name if route is not None else None, ctx.request.host, ctx.client_ip, ctx.upstream,
                    ctx.request_id, error.kind if error is not None else None,
                    state.decode("latin-1") if state else None))


def _once(ctx) -> bool:
    """True when the request has one ``traceparent`` header (W3C: several are invalid)."""
    n = 0
    for name, _v in ctx.request.headers:
        if len(name) == 11 and name.lower() == b"traceparent":
            n += 1
    return n == 1


def build(root_cfg, service_cfg, route_cfg, deps):
    tc = root_cfg.monitoring.tracing
    if tc is None:
        return None
    # one middleware (and exporter) per worker and tracing config, shared by every route
    # and kept across reloads that leave monitoring.tracing as it is
    key = ("tracing", tc)
    shared = deps.state.get(key) if deps is not None else None
    if shared is None:
        exporter = None
        if tc.otlp_endpoint is not None and deps is not None:
            exporter = SpanExporter(tc, loop=deps.loop, metrics=deps.metrics, log=deps.log)
        shared = (TracingExport if exporter is not None else Tracing)(root_cfg, deps, exporter, key)
        if deps is not None:
            deps.state[key] = shared
    return shared
