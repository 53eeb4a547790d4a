"""The per-request context (L4).

One ``Ctx`` per request, with ``__slots__``; it is the only way middlewares share state
(DESIGN.md).  The downstream protocol fills the request fields, the engine fills the
routing and upstream fields, middlewares fill identity and their own notes.

Header values stay bytes as received; ``header()`` looks one up case-insensitively,
building a small dict on first use so that a chain that never asks pays nothing.
"""

from __future__ import annotations

from fastgw.clock import monotonic
from fastgw.http.messages import Reply, problem


_NO_ROLES: frozenset = frozenset()


class Ctx:
    __slots__ = (
        # connection
        "peer_ip",          # str: socket peer (or PROXY-protocol source) address
        "client_ip",        # str: resolved client address (trusted X-Forwarded-For applied)
        "trusted_peer",     # bool: the peer is in gateway.trusted_proxies
        "tls",              # bool: client connection is TLS
        "scheme",           # str: "http"/"https" as the client sees it
        # request head
        "method",           # str, e.g. "GET"
        "raw_target",       # bytes: request-target as received
        "path",             # str: normalised path (what routing matched, what upstream gets)
        "query",            # bytes: query string without '?', b"" if none
        "version",          # str: "1.1" or "1.0"
        "headers",          # list[tuple[bytes, bytes]]: request headers as received
        "host",             # str: Host header value (lower-case, port kept)
        "keep_alive",       # bool: client wants keep-alive
        "content_length",   # int | None
        "chunked",          # bool: request body is chunked
        "_hmap",            # dict | None: lazy lower-name -> value
        # routing
        "route",            # compiled route or None (global chain)
        "path_params",      # dict[str, str] | None
        # identity (auth middleware)
        "request_id",       # str
        "user",             # str | None: 'sub' of a verified token
        "roles",            # frozenset[str]
        "claims",           # dict | None
        # response side
        "status",           # int: status sent to the client (0 until sent)
        "resp_headers",     # list: headers every response to this request gets (e.g. RateLimit)
        "upstream_headers", # list: headers to add to the upstream request
        "resp_raw",         # bytes: header lines ("name: value\r\n" each) every response gets
        "up_raw",           # bytes: header lines to add to the upstream request
        "bytes_received",   # int: request body bytes
        "bytes_sent",       # int: response bytes written to the client
        "upstream",         # str: "host:port" of the instance used, "" if none
        "upstream_status",  # int
        "upstream_start",   # float
        "upstream_duration",  # float | None
        "start",            # float: monotonic time the head was complete
        "flags",            # list[str]: response flags for the access log (e.g. "client_abort")
        "error",            # GatewayError | None
        "notes",            # dict: free-form per-middleware state, keyed by middleware name
        "up",               # the bound upstream connection (engine-owned) or None
        "app",              # the config snapshot (runtime App) this request runs on
        # protocol/engine private (hot, so slots rather than notes)
        "xff", "xfp", "rid", "ua", "authz", "origin", "trace_hdrs", "captured", "method_b", "raw_host", "conn_hdr", "expect", "upgrade", "qbody", "qcomplete", "pending", "head",
    )

    def __init__(self) -> None:
        self.peer_ip = ""
        self.client_ip = ""
        self.trusted_peer = False
        self.tls = False
        self.scheme = "http"
        self.method = "GET"
        self.raw_target = b"/"
        self.path = "/"
        self.query = b""
        self.version = "1.1"
        self.headers = []
        self.host = ""
        self.keep_alive = True
        self.content_length = None
        self.chunked = False
        self._hmap = None
        self.route = None
        self.path_params = None
        self.request_id = ""
        self.user = None
        self.roles = _NO_ROLES
        self.claims = None
        self.status = 0
        self.resp_headers = []
        self.upstream_headers = []
        self.resp_raw = b""
        self.up_raw = b""
        self.bytes_received = 0
        self.bytes_sent = 0
        self.upstream = ""
        self.upstream_status = 0
        self.upstream_start = 0.0
        self.upstream_duration = None
        self.start = monotonic()
        self.flags = []
        self.error = None
        self.notes = {}
        self.up = None
        self.app = None
        self.xff = None         # bytes: incoming X-Forwarded-For (joined)
        self.xfp = None         # bytes: incoming X-Forwarded-Proto (believed from trusted peers)
        self.rid = None         # bytes: incoming X-Request-ID (captured by the protocol)
        self.ua = None          # bytes: User-Agent (captured by the protocol, for the access log)
        # captured by the protocol (still forwarded): Authorization (fastgw.http.reqhead
        # .REPEATED if sent more than once) and Origin (the last one); None if absent.
        # ``captured`` is True when the protocol parsed this request (so these fields are
        # authoritative); a hand-made Ctx (tests, internal replies) has it False and its
        # readers fall back to header().
        self.authz = None
        self.origin = None
        self.trace_hdrs = False  # traceparent or tracestate present (captured; the tracing middleware)
        self.captured = False
        self.method_b = b"GET"  # the method as bytes (forwarded as is)
        self.raw_host = None    # bytes: Host as received
        self.conn_hdr = None    # bytes: Connection header value
        self.expect = None      # bytes: Expect header value
        self.upgrade = None     # bytes: Upgrade header value (WebSocket only is tunnelled)
        self.qbody = None       # list[bytes]: body parsed while the request was queued
        self.qcomplete = False  # the whole request was parsed while queued
        self.pending = None     # list[bytes]: body waiting for the upstream connection
        self.head = b""         # the upstream request head being sent

    def header(self, lname: bytes, default: bytes | None = None) -> bytes | None:
        """Value of request header ``lname`` (lower-case bytes); the last one if repeated."""
        m = self._hmap
        if m is None:
            m = self._hmap = {n.lower(): v for n, v in self.headers}
        return m.get(lname, default)

    def drop_headers(self, lnames: frozenset[bytes] | set[bytes]) -> None:
        """Remove request headers by lower-case name before they are forwarded."""
        hs = self.headers
        for n, _v in hs:
            if n.lower() in lnames:
                self.headers = [h for h in hs if h[0].lower() not in lnames]
                self._hmap = None
                return

    def problem(self, status: int, detail: str, *, title: str | None = None, type: str = "about:blank",
                kind: str = "", headers: list | None = None, extra: dict | None = None) -> Reply:
        """An RFC 9457 reply carrying this request's id."""
        return problem(status, detail, self.request_id, title=title, type=type, kind=kind,
                       headers=headers, extra=extra)
