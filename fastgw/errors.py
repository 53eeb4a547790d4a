"""One error vocabulary for the whole gateway (L0).

Every failure that turns into an HTTP answer is a ``GatewayError`` carrying its HTTP
meaning: the status the client gets, where it came from (``downstream``: the client sent
something wrong; ``upstream``: the service failed; ``internal``: the gateway itself), the
``kind`` (a short stable token used in logs, metrics and the problem ``type``), and
whether retrying the request elsewhere is safe.  One function in ``http/messages`` maps an
error to a prebuilt RFC 9457 response; nothing else builds error bodies.

Rule: raise or return these; never build an ad-hoc error response in a protocol,
middleware or upstream module.
"""

from __future__ import annotations

# The whole vocabulary, one row per kind; adding a kind means adding a row here.
#   status             the HTTP status the client gets
#   title              the problem's title
#   source             "downstream" (the client sent something wrong), "upstream" (the
#                      service failed) or "internal" (the gateway itself)
#   closes_connection  the answer ends the client connection: after it the request
#                      stream cannot be trusted (a malformed or half-read request, an
#                      unreadable path) or the gateway is in trouble (5xx of its own)
#   retryable          another instance may be tried: the request provably did not reach
#                      the upstream application (the connect failed).  A reused
#                      keep-alive connection that died before any byte came back is
#                      retryable too, but only that case: ``GatewayError(retryable=True)``.
# The engine reads these columns; it never tests kinds or status ranges itself.
D, U, I = "downstream", "upstream", "internal"
KINDS: dict[str, tuple[int, str, str, bool, bool]] = {
    # downstream (client) errors
    "bad_request": (400, "Bad Request", D, True, False),
    "bad_path": (400, "Bad Request", D, True, False),
    "bad_framing": (400, "Bad Request", D, True, False),
    "missing_host": (400, "Bad Request", D, True, False),
    "unauthorized": (401, "Unauthorized", D, False, False),
    "forbidden": (403, "Forbidden", D, False, False),
    "no_route": (404, "Not Found", D, False, False),
    "method_not_allowed": (405, "Method Not Allowed", D, False, False),
    "request_timeout": (408, "Request Timeout", D, True, False),
    "body_too_large": (413, "Content Too Large", D, True, False),
    "uri_too_long": (414, "URI Too Long", D, True, False),
    "unsupported_media_type": (415, "Unsupported Media Type", D, False, False),
    "expectation_failed": (417, "Expectation Failed", D, False, False),
    "rate_limited": (429, "Too Many Requests", D, False, False),
    "headers_too_large": (431, "Request Header Fields Too Large", D, True, False),
    # upstream errors (the client connection stays usable)
    "upstream_refused": (502, "Bad Gateway", U, False, True),
    "upstream_unreachable": (502, "Bad Gateway", U, False, True),
    "upstream_reset": (502, "Bad Gateway", U, False, False),
    "upstream_bad_response": (502, "Bad Gateway", U, False, False),
    "upstream_tls": (502, "Bad Gateway", U, False, True),
    "no_upstream": (503, "Service Unavailable", U, False, False),
    "pool_exhausted": (503, "Service Unavailable", U, False, False),
    "circuit_open": (503, "Service Unavailable", U, False, False),
    "draining": (503, "Service Unavailable", I, True, False),
    "upstream_timeout": (504, "Gateway Timeout", U, False, False),
    "upstream_connect_timeout": (504, "Gateway Timeout", U, False, True),
    # the gateway itself
    "internal": (500, "Internal Server Error", I, True, False),
    "too_many_connections": (503, "Service Unavailable", I, True, False),
}
del D, U, I

SOURCES = ("downstream", "upstream", "internal")


class GatewayError(Exception):
    """An error with its HTTP meaning (the columns of its ``KINDS`` row).

    ``retryable`` comes from the table; ``retryable=True`` marks the one dynamic case
    (a reused connection that died before any byte came back), so that retrying an
    idempotent request elsewhere cannot do the work twice.
    """

    __slots__ = ("kind", "status", "title", "detail", "source", "closes_connection", "retryable", "allow")

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        retryable: bool | None = None,
        status: int | None = None,
        allow: bytes | None = None,
    ) -> None:
        try:
            st, title, source, closes, retry = KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown error kind {kind!r}") from None
        self.kind = kind
        self.status = status if status is not None else st
        self.title = title
        self.detail = detail or title
        self.source = source
        self.closes_connection = closes
        self.retryable = retry if retryable is None else retryable
        self.allow = allow  # the Allow header value of a 405
        super().__init__(f"{kind}: {self.detail}")

    def __repr__(self) -> str:
        return f"GatewayError({self.kind!r}, {self.detail!r}, status={self.status}, source={self.source!r})"
