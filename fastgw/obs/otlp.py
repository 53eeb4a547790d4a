"""OTLP/HTTP export of the gateway's spans, off the request path (L4).

The tracing middleware hands over each sampled request as a plain tuple (``SpanRecord``
order below; ids as hex strings, the parent None for a root span): no SDK object, no protobuf, no clock call beyond the monotonic one the
request already has.  ``SpanExporter`` owns:

- a bounded queue (a list) per worker: ``offer`` appends, or counts a drop when the queue
  holds ``max_queue`` spans.  It is the only thing the request path calls;
- one background task per worker that, every ``export_interval``, takes up to
  ``max_batch`` spans, encodes them as an ``ExportTraceServiceRequest`` and POSTs it
  (``application/x-protobuf``) to ``otlp_endpoint``; a failed POST drops its batch (no
  retry: the next batch is already waiting) and is counted.

Encoding uses the OpenTelemetry project's generated messages (``opentelemetry-proto``,
upb-backed protobuf): the collector's own schema, so the wire format cannot drift, at
about 10 µs per span in the background task.  The SDK is not used: it creates objects,
context tokens and locks per span on the request path.

Metrics: ``fastgw_tracing_spans_total{result}`` with result ``exported``,
``dropped_queue_full`` or ``dropped_export_failed``, published by the task.

Span attributes follow the OpenTelemetry HTTP server conventions: ``http.request.method``,
``url.path``, ``url.scheme``, ``http.route`` (the route's name), ``server.address``,
``client.address``, ``http.response.status_code``, ``error.type`` (the gateway's error
kind); plus ``fastgw.request_id`` and ``fastgw.upstream``.  A 5xx sets the status to
ERROR (a server span's 4xx is the client's error).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from urllib.parse import urlsplit

M_SPANS = "fastgw_tracing_spans_total"


def trace_ids(notes) -> tuple[str | None, str | None]:
    """(trace_id, span_id) of a request as lower-case hex, from ``ctx.notes["trace"]``
    (``(traceparent line sent upstream, trace_id, span_id)``, set by the tracing
    middleware), or (None, None) when tracing is off."""
    t = notes.get("trace")
    if t is None:
        return None, None
    return t[1], t[2]

# SpanRecord: the tuple the middleware queues, in this order
(R_TRACE, R_SPAN, R_PARENT, R_START, R_END, R_METHOD, R_PATH, R_SCHEME, R_STATUS, R_ROUTE, R_HOST,
 R_CLIENT, R_UPSTREAM, R_RID, R_ERROR, R_TRACESTATE) = range(16)


def encode(records, service_name: str, mono_to_wall_ns) -> bytes:
    """One ``ExportTraceServiceRequest`` (serialised) holding ``records``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _attrs(rs.resource.attributes, (("service.name", service_name),
                                    ("service.instance.id", f"{socket.gethostname()}:{os.getpid()}"),
                                    ("telemetry.sdk.name", "fastgw")))
    ss = rs.scope_spans.add()
    ss.scope.name = "fastgw"
    for r in records:
        sp = ss.spans.add()
        sp.trace_id = bytes.fromhex(r[R_TRACE])
        sp.span_id = bytes.fromhex(r[R_SPAN])
        if r[R_PARENT]:
            sp.parent_span_id = bytes.fromhex(r[R_PARENT])
        if r[R_TRACESTATE]:
            sp.trace_state = r[R_TRACESTATE]
        route = r[R_ROUTE]
        sp.name = f"{r[R_METHOD]} {route}" if route else r[R_METHOD]
        sp.kind = Span.SpanKind.SPAN_KIND_SERVER
        sp.start_time_unix_nano = mono_to_wall_ns(r[R_START])
        sp.end_time_unix_nano = mono_to_wall_ns(r[R_END])
        status = r[R_STATUS]
        a = [("http.request.method", r[R_METHOD]), ("url.path", r[R_PATH]), ("url.scheme", r[R_SCHEME]),
             ("server.address", r[R_HOST]), ("client.address", r[R_CLIENT]),
             ("http.response.status_code", status), ("fastgw.request_id", r[R_RID])]
        if route:
            a.append(("http.route", route))
        if r[R_UPSTREAM]:
            a.append(("fastgw.upstream", r[R_UPSTREAM]))
        if r[R_ERROR]:
            a.append(("error.type", r[R_ERROR]))
        _attrs(sp.attributes, a)
        if status >= 500:
            sp.status.code = Status.StatusCode.STATUS_CODE_ERROR
            sp.status.message = r[R_ERROR] or f"HTTP {status}"
    return req.SerializeToString()


def _attrs(field, pairs) -> None:
    for k, v in pairs:
        kv = field.add()
        kv.key = k
        if isinstance(v, int):
            kv.value.int_value = v
        else:
            kv.value.string_value = v


class ExportError(Exception):
    """One POST failed; the message says how."""


async def post(url: str, body: bytes, *, timeout: float, ssl_ctx=None) -> int:
    """POST ``body`` to ``url`` as OTLP protobuf on a new connection; the status code.

    One connection per batch (``Connection: close``): batches are a second or more apart
    per worker, so keeping a connection alive saves nothing worth its failure modes.
    """
    u = urlsplit(url)
    https = u.scheme == "https"
    port = u.port or (443 if https else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    host = u.hostname
    hosthdr = u.netloc.rsplit("@", 1)[-1]

    async def run() -> int:
        ctx = (ssl_ctx or ssl.create_default_context()) if https else None
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if https else None)
        try:
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-protobuf\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\nUser-Agent: fastgw\r\n\r\n"
                         % (path.encode("latin-1"), hosthdr.encode("latin-1"), len(body)))
            writer.write(body)
            await writer.drain()
            line = await reader.readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise ExportError(f"bad status line {line[:80]!r}")
            # the rest of the answer (headers, an ExportTraceServiceResponse) is not needed
            return int(parts[1])
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        raise ExportError(f"no answer within {timeout:g}s") from None
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
        raise ExportError(str(e) or type(e).__name__) from None


class SpanExporter:
    """A worker's span queue and its export task (see the module docstring)."""

    def __init__(self, cfg, *, loop=None, metrics=None, log=None) -> None:
        self.endpoint = cfg.otlp_endpoint
        self.service_name = cfg.service_name
        self.interval = float(cfg.export_interval)
        self.timeout = float(cfg.export_timeout)
        self.max_queue = cfg.max_queue
        self.max_batch = cfg.max_batch
        self.queue: list = []
        self.dropped = 0          # queue full (counted on the request path, published by the task)
        self.metrics = metrics
        self.log = log
        self._published_drops = 0
        self._failing = False
        self._task = None
        self._closed = False
        if metrics is not None:  # the series exist from the start (dashboards, alerts)
            for result in ("exported", "dropped_queue_full", "dropped_export_failed"):
                metrics.inc(M_SPANS, (("result", result),), 0)
        if loop is not None and self.endpoint:
            self._task = loop.create_task(self._run(), name="otlp-export")

    def offer(self, rec) -> None:
        """Queue one span (the request path): an append, or a drop when full."""
        q = self.queue
        if len(q) < self.max_queue:
            q.append(rec)
        else:
            self.dropped += 1

    def _count(self, result: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.inc(M_SPANS, (("result", result),), n)

    async def _run(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.interval)
            await self.export_pending()

    async def export_pending(self) -> None:
        """Send everything queued now, ``max_batch`` spans per POST."""
        d = self.dropped - self._published_drops
        if d:
            self._published_drops += d
            self._count("dropped_queue_full", d)
        while self.queue:
            batch = self.queue[:self.max_batch]
            del self.queue[:self.max_batch]
            await self._send(batch)

    async def _send(self, batch) -> None:
        off = time.time_ns() - time.monotonic_ns()
        try:
            body = encode(batch, self.service_name, lambda m: int(m * 1e9) + off)
            status = await post(self.endpoint, body, timeout=self.timeout)
            if not 200 <= status < 300:
                raise ExportError(f"HTTP {status}")
        except Exception as e:
            self._count("dropped_export_failed", len(batch))
            if not self._failing and self.log is not None:
                self.log.warning("OTLP export to %s failed, spans dropped: %s", self.endpoint, e)
            self._failing = True
            return
        if self._failing and self.log is not None:
            self.log.info("OTLP export to %s works again", self.endpoint)
        self._failing = False
        self._count("exported", len(batch))

    def close(self) -> None:
        """The config is retired: send what is queued once more, then stop."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            if self.queue and not task.get_loop().is_closed():
                task.get_loop().create_task(self.export_pending())
