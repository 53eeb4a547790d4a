"""``Ctx``: what a middleware sees of one request (L4).

The surface is small and has one way to do each thing (DESIGN.md, "one request through
a worker"):

- ``ctx.request``: what the client sent (``http.request.Request``: method, target,
  normalised ``path``, ``query``, ``headers``, the captured ``authorization``,
  ``origin``, ``user_agent``, ``x_request_id``, body framing).  Read only.
  ``ctx.header(lname)`` reads one request header as the client sent it.
- who: ``client_ip`` (trusted X-Forwarded-For applied), ``scheme``, ``trusted_peer``;
  identity set by middlewares: ``request_id``, ``user``, ``roles``, ``claims``.
- where: ``route`` (the compiled route, None for the global chain), ``path_params``.
- request headers sent upstream: ``set_request_header``, ``add_request_header``
  (``add_request_lines`` for prebuilt lines; ``add_request_and_response_lines`` for lines
  sent both ways), ``remove_request_headers``.  They apply to every attempt (each attempt builds its
  own head from them, ``pipeline.heads.request_head``).
- the upstream target: ``up_target`` (``path?query`` as bytes, before the instance's base
  path) replaces the client's path and query in every attempt's head when set (the
  transform middleware's rewrites; ``pipeline.heads.request_head`` reads it).
- response headers sent to the client: ``set_response_header``,
  ``add_response_header``, ``remove_response_headers``.  They apply to whatever
  answers the request: the upstream's response, a local reply, an error, a future cache
  hit (the heads are built from them, so a replay gets them too).
  ``response_filter(ctx, head)`` is for what depends on the response itself (reading
  its status or headers); it edits that ``head`` in place.  ``usual_edit``: the memo of
  a raw-block response filter's edit for this request's state, which the request filter
  named by that filter's ``response_block_memo()`` chooses (CORS for the security headers).
- ``problem(...)``: an RFC 9457 reply carrying the request id.
- ``notes``: data between middlewares, keyed by the middleware's name.
- after the fact (the logging phase): ``status``, ``bytes_sent``, ``upstream``,
  ``upstream_status``, ``upstream_duration``, ``start``, ``flags``, ``error``;
  ``attempt`` and ``tries()`` (every attempt's instance and outcome).

Header names are bytes in any case; lookups and removals take lower-case names.  Added
lines are kept serialised (``name: value\\r\\n``), so a head copies them in one piece.
The object a middleware gets is the engine's ``Exchange`` (``pipeline.exchange``), a
subclass that adds the engine's own slots: one allocation per request, and nothing on
this surface that a middleware should not touch.
"""

from __future__ import annotations

from fastgw.clock import monotonic
from fastgw.http.messages import Reply, problem

_NO_ROLES: frozenset = frozenset()


class Ctx:
    __slots__ = (
        "request",          # Request: what the client sent
        # who
        "client_ip",        # str: resolved client address
        "scheme",           # str: "http"/"https" as the client sees it
        "trusted_peer",     # bool: the peer is in gateway.trusted_proxies
        "request_id",       # str
        "user",             # str | None: 'sub' of a verified token
        "roles",            # frozenset[str]
        "claims",           # dict | None
        # where
        "route",            # compiled route or None (global chain)
        "path_params",      # dict[str, str] | None
        # header operations (read by the head builders; change them through the methods)
        "fwd",              # list[(bytes, bytes)]: client headers still forwarded (request.headers until a removal)
        "up_lines",         # bytes: header lines added to the upstream request
        "resp_lines",       # bytes: header lines added to the response
        "resp_drop",        # frozenset[bytes] | None: lower-case names removed from the response
        "usual_edit",       # dict | None: the raw-block response filters' edit of an upstream
                            # header block for this request's state, chosen by a request filter
                            # (``Middleware.response_block_memo``; read by ``Proxy.upstream_head``)
        "up_target",        # bytes | None: path?query sent upstream (before the base path), set by a rewrite
        # between middlewares
        "notes",            # dict
        # outcome (the logging phase reads these)
        "status",           # int: status sent to the client (0 until sent)
        "bytes_sent",       # int: response body bytes written to the client
        "upstream",         # str: "host:port" of the last instance tried, "" if none
        "upstream_status",  # int
        "upstream_duration",  # float | None
        "start",            # float: monotonic time the request was dispatched
        "flags",            # list[str]: response flags for the access log (e.g. "client_abort")
        "error",            # GatewayError | None
    )

    # failover, after the fact: the current attempt (``pipeline.exchange.Attempt``; the
    # engine's Exchange holds it in a slot, a bare Ctx has none) and ``tries()``, each
    # attempt as "instance outcome" (the access log's ``tries``)
    attempt = None

    def tries(self) -> list:
        return []

    def __init__(self, request) -> None:
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

    # ------------------------------------------------------------------ request headers
    def header(self, lname: bytes, default: bytes | None = None) -> bytes | None:
        """Request header ``lname`` (lower-case) as the client sent it; the last if repeated."""
        return self.request.header(lname, default)

    def add_request_header(self, name: bytes, value: bytes) -> None:
        """Send ``name: value`` upstream, after the client's headers."""
        self.up_lines += name + b": " + value + b"\r\n"

    def add_request_lines(self, lines: bytes) -> None:
        """Send prebuilt header lines (``name: value\r\n`` each, built at config time or
        in bulk, e.g. the tracing middleware's pool of ``traceparent`` lines) upstream,
        after the client's headers: ``add_request_header`` without the concatenation."""
        self.up_lines += lines

    def add_request_and_response_lines(self, lines: bytes) -> None:
        """The same prebuilt header lines sent upstream and to the client (an id echoed
        both ways, e.g. the request id): ``add_request_lines`` and the response side in
        one call (callgrind: a Python call less per request on every route)."""
        self.up_lines += lines
        self.resp_lines += lines

    def set_request_header(self, name: bytes, value: bytes) -> None:
        """Send ``name: value`` upstream instead of any ``name`` the client (or a middleware) set."""
        self.remove_request_headers(frozenset((name.lower(),)))
        self.up_lines += b"%s: %s\r\n" % (name, value)

    def remove_request_headers(self, lnames: frozenset) -> None:
        """Forward none of the headers named in ``lnames`` (lower-case; a frozenset built
        once, at config time)."""
        hs = self.fwd
        for n, _v in hs:
            if n.lower() in lnames:
                self.fwd = [h for h in hs if h[0].lower() not in lnames]
                break
        if self.up_lines:
            self.up_lines = _without(self.up_lines, lnames)

    # ------------------------------------------------------------------ response headers
    def add_response_header(self, name: bytes, value: bytes) -> None:
        """Send ``name: value`` to the client with whatever answers this request."""
        self.resp_lines += name + b": " + value + b"\r\n"

    def set_response_header(self, name: bytes, value: bytes) -> None:
        """As ``add_response_header``, replacing any ``name`` of the response."""
        self.remove_response_headers(frozenset((name.lower(),)))
        self.resp_lines += b"%s: %s\r\n" % (name, value)

    def remove_response_headers(self, lnames: frozenset) -> None:
        """Send the client none of the response headers named in ``lnames`` (lower-case),
        whoever set them (the upstream, a local reply, an earlier middleware)."""
        drop = self.resp_drop
        self.resp_drop = lnames if drop is None else drop | lnames
        if self.resp_lines:
            self.resp_lines = _without(self.resp_lines, lnames)

    # ------------------------------------------------------------------ replies
    def problem(self, status: int, detail: str, *, title: str | None = None, type: str = "about:blank",
                kind: str = "", headers: list | None = None, extra: dict | None = None) -> Reply:
        """An RFC 9457 reply carrying this request's id."""
        return problem(status, detail, self.request_id, title=title, type=type, kind=kind,
                       headers=headers, extra=extra)


def _without(lines: bytes, lnames: frozenset) -> bytes:
    """Serialised header ``lines`` without those named in ``lnames``."""
    keep = [ln for ln in lines.split(b"\r\n") if ln and ln.partition(b":")[0].lower() not in lnames]
    return b"".join(ln + b"\r\n" for ln in keep)
