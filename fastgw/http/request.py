"""``Request``: what the client sent, parsed once (L2).

One ``Request`` per request, with ``__slots__``, made by the client protocol
(``http.protocol``) while it parses the head, and never changed after dispatch except
for the fields the engine's routing step derives from the target (``path``, ``query``,
and ``host`` for an absolute-form target) and the body counter.  Everything else of a
request's way through the gateway (route, attempts, response, identity) belongs to the
engine's ``Exchange``; middlewares reach both through ``Ctx`` (``pipeline.ctx``).

Headers have one representation: ``headers``, the list of ``(name, value)`` pairs that
are forwarded as received (hop-by-hop, framing and ``X-Forwarded-*`` lines are not in
it: they are interpreted below or re-derived).  The values a middleware or the access
log reads on every request are fields, filled while parsing (``reqhead.SPECIAL``):
``authorization`` (``REPEATED`` if sent twice), ``origin``, ``user_agent`` and
``x_request_id``.  They are also in ``headers`` (they are forwarded), and they are
authoritative whoever built the request: ``Request.build`` (tests, tools) classifies
headers exactly as the protocol does.  ``header(lname)`` looks any other one up,
building a small dict on first use.
"""

from __future__ import annotations

from fastgw.http.reqhead import (H_AUTHZ, H_CL, H_CONN, H_EXPECT, H_HOST, H_ORIGIN, H_RID, H_TE, H_TRACE, H_UA,
                                 H_XFH,
                                 H_UPGRADE, H_XFF, H_XFP, METHODS, REPEATED, special_kind)


class Request:
    __slots__ = (
        # request line
        "method",          # str, e.g. "GET" (interned for the usual methods)
        "method_b",        # bytes: the method as received (forwarded as is); None while the head is parsed
        "raw_target",      # bytes: request-target as received
        "version",         # str: "1.1" or "1.0"
        "path",            # str: normalised path (set by the engine's routing step)
        "query",           # bytes: query string without '?' (set by the routing step)
        # head
        "host",            # str: Host, lower-case, port kept ("" if absent: HTTP/1.0)
        "raw_host",        # bytes | None: Host as received
        "headers",         # list[(bytes, bytes)]: forwardable headers, as received
        "keep_alive",      # bool: the client asked for keep-alive (its version and Connection)
        "conn_hdr",        # bytes | None: Connection value(s)
        "expect",          # bytes | None: Expect value
        "upgrade",         # bytes | None: Upgrade value (counted only with "Connection: upgrade")
        "xff",             # bytes | None: incoming X-Forwarded-For (joined)
        "xfp",             # bytes | None: incoming X-Forwarded-Proto
        "xfh",             # bytes | None: incoming X-Forwarded-Host (the last one; not forwarded)
        "local_host",      # bytes: the local address the client connected to ("host:port"); set only
                           # for a request without Host (HTTP/1.0), unset otherwise (read with getattr)
        "authorization",   # bytes | None | REPEATED
        "origin",          # bytes | None: the last Origin
        "user_agent",      # bytes | None
        "x_request_id",    # bytes | None: the incoming X-Request-ID
        "trace_hdrs",      # bool: traceparent or tracestate present (the tracing middleware)
        "hmap",            # dict | None: lower-name -> value, built on first use; from a
                           # fasthead template prebuilt, shared by its requests: never mutated
        # body framing
        "content_length",  # int | None
        "chunked",         # bool
        "bytes_received",  # int: body bytes so far
        # connection
        "peer_ip",         # str: socket peer (or PROXY-protocol source) address
        "tls",             # bool: the client connection is TLS
        # the protocol's queue (a pipelined request parsed ahead of the one in flight)
        "qbody",           # list[bytes] | None: body parsed while queued
        "qcomplete",       # bool: the whole request was parsed while queued
        # the handler's per-request object (the engine's Exchange); opaque to http/
        "exchange",
    )

    def __init__(self) -> None:
        fill_request(self)

    def header(self, lname: bytes, default: bytes | None = None) -> bytes | None:
        """Value of forwardable request header ``lname`` (lower-case bytes) as the client
        sent it; the last one if repeated."""
        m = self.hmap
        if m is None:
            m = self.hmap = {n.lower(): v for n, v in self.headers}
        return m.get(lname, default)

    def header_map(self) -> dict:
        """The lower-name -> last value dict ``header`` reads (built on first use)."""
        m = self.hmap
        if m is None:
            m = self.hmap = {n.lower(): v for n, v in self.headers}
        return m

    @classmethod
    def build(cls, method: str = "GET", target: bytes = b"/", headers=(), *, version: str = "1.1",
              peer_ip: str = "127.0.0.1", tls: bool = False) -> "Request":
        """A request as the protocol would have parsed it (tests, tools): header lines are
        classified by the same table, so the captured fields are authoritative."""
        r = cls()
        r.method = METHODS.get(method.encode()) or method
        r.method_b = method.encode("ascii")
        r.raw_target = target
        r.path = target.partition(b"?")[0].decode("latin-1") or "/"
        r.query = target.partition(b"?")[2]
        r.version = version
        r.keep_alive = version == "1.1"
        r.peer_ip = peer_ip
        r.tls = tls
        for name, value in headers:
            kind = special_kind(name.lower())
            if kind is None or kind >= H_RID:
                if kind == H_UA:
                    r.user_agent = value
                elif kind == H_AUTHZ:
                    r.authorization = value if r.authorization is None else REPEATED
                elif kind == H_ORIGIN:
                    r.origin = value
                elif kind == H_RID:
                    r.x_request_id = value
                elif kind == H_TRACE:
                    r.trace_hdrs = True
                r.headers.append((name, value))
            elif kind == H_HOST:
                r.raw_host = value
                r.host = value.decode("latin-1").lower()
            elif kind == H_CONN:
                r.conn_hdr = value
                low = value.lower()
                if b"close" in low:
                    r.keep_alive = False
                elif b"keep-alive" in low:
                    r.keep_alive = True
            elif kind == H_CL:
                r.content_length = int(value)
            elif kind == H_TE:
                r.chunked = True
            elif kind == H_UPGRADE:
                r.upgrade = value
            elif kind == H_EXPECT:
                r.expect = value
            elif kind == H_XFF:
                r.xff = value if r.xff is None else r.xff + b", " + value
            elif kind == H_XFP:
                r.xfp = value
            elif kind == H_XFH:
                r.xfh = value
        return r


def fill_request(self) -> "Request":
    """Set every field to its start value (``Request()``; the client protocol uses
    ``start_request`` on ``object.__new__(Request)`` instead: no class call)."""
    start_request(self, b"/")
    self.method = "GET"
    self.method_b = b"GET"
    self.version = "1.1"
    self.keep_alive = True
    self.peer_ip = ""
    self.tls = False
    return self


def start_request(self, target: bytes) -> "Request":
    """A request whose head the client protocol starts parsing at ``target``: ``fill_request``
    without the fields the protocol always sets when the head is complete (``method``,
    ``version``, ``keep_alive``, ``peer_ip``, ``tls``: ``http.protocol.on_headers_complete``), so a
    parsed request does not pay two stores for them.  ``method_b`` is None until then (it
    marks "head in progress").  ``fill_request`` is this plus those fields: one list of
    start values."""
    self.method_b = None
    self.raw_target = target
    self.path = "/"
    self.query = b""
    self.host = ""
    self.raw_host = None
    self.headers = []
    self.conn_hdr = None
    self.expect = None
    self.upgrade = None
    self.xff = None
    self.xfp = None
    self.xfh = None
    self.authorization = None
    self.origin = None
    self.user_agent = None
    self.x_request_id = None
    self.trace_hdrs = False
    self.hmap = None
    self.content_length = None
    self.chunked = False
    self.bytes_received = 0
    self.qbody = None
    self.qcomplete = False
    self.exchange = None
    return self
