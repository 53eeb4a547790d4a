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

# kind -> (status, title).  The table is the whole vocabulary; adding a kind means
# adding a row here.
KINDS: dict[str, tuple[int, str]] = {
    # downstream (client) errors
    "bad_request": (400, "Bad Request"),
    "bad_path": (400, "Bad Request"),
    "bad_framing": (400, "Bad Request"),
    "missing_host": (400, "Bad Request"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "no_route": (404, "Not Found"),
    "method_not_allowed": (405, "Method Not Allowed"),
    "request_timeout": (408, "Request Timeout"),
    "body_too_large": (413, "Content Too Large"),
    "uri_too_long": (414, "URI Too Long"),
    "unsupported_media_type": (415, "Unsupported Media Type"),
    "expectation_failed": (417, "Expectation Failed"),
    "rate_limited": (429, "Too Many Requests"),
    "headers_too_large": (431, "Request Header Fields Too Large"),
    # upstream errors
    "upstream_refused": (502, "Bad Gateway"),
    "upstream_unreachable": (502, "Bad Gateway"),
    "upstream_reset": (502, "Bad Gateway"),
    "upstream_bad_response": (502, "Bad Gateway"),
    "upstream_tls": (502, "Bad Gateway"),
    "no_upstream": (503, "Service Unavailable"),
    "pool_exhausted": (503, "Service Unavailable"),
    "circuit_open": (503, "Service Unavailable"),
    "draining": (503, "Service Unavailable"),
    "upstream_timeout": (504, "Gateway Timeout"),
    "upstream_connect_timeout": (504, "Gateway Timeout"),
    # the gateway itself
    "internal": (500, "Internal Server Error"),
    "too_many_connections": (503, "Service Unavailable"),
}

SOURCES = ("downstream", "upstream", "internal")


class GatewayError(Exception):
    """An error with its HTTP meaning.

    ``retryable`` is True only when the request provably did not reach the upstream
    application (connect failure, a reused connection that died before any byte came
    back), so that retrying an idempotent request elsewhere cannot do the work twice.
    """

    __slots__ = ("kind", "status", "title", "detail", "source", "retryable", "allow")

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        source: str | None = None,
        retryable: bool = False,
        status: int | None = None,
        allow: bytes | None = None,
    ) -> None:
        try:
            st, title = KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown error kind {kind!r}") from None
        self.kind = kind
        self.status = status if status is not None else st
        self.title = title
        self.detail = detail or title
        if source is None:
            source = "upstream" if kind.startswith(("upstream", "no_upstream", "pool", "circuit")) else (
                "downstream" if self.status < 500 else "internal"
            )
        self.source = source
        self.retryable = retryable
        self.allow = allow  # the Allow header value of a 405
        super().__init__(f"{kind}: {self.detail}")

    def __repr__(self) -> str:
        return f"GatewayError({self.kind!r}, {self.detail!r}, status={self.status}, source={self.source!r})"
