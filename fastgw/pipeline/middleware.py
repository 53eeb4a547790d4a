"""The middleware contract (L4).

A middleware is one class in ``fastgw/middleware/``, built once per config and route.
Every hook and capability is a method here with a default; a subclass overrides what it
uses, and only the hooks it overrides end up in a route's compiled chain
(``pipeline.chain``), so an unused hook costs nothing per request.  The engine never
probes a middleware with ``getattr`` and never names one.

Hooks, in the order a request meets them:

    request_filter(ctx)                    None = continue; a Reply = answer locally.
                                           May be ``async def`` when it must await;
                                           a plain one that must wait only sometimes
                                           returns a coroutine then (the engine drives
                                           it like an async hook: the cache's coalesced
                                           miss), so its usual path pays no coroutine.
                                           A ``http.wire.Prebuilt`` = answer with these
                                           bytes, no response filter run: only where none
                                           of a middleware that ran (its own aside) would
                                           change it (the cache's hit)
    request_body_filter(ctx, body)         the whole request body (only when
                                           ``needs_body()``); None = forward it, bytes =
                                           forward these instead, a Reply = answer locally
    upstream_request_filter(ctx, head)     edit the RequestHead of one attempt (in place);
                                           runs once per attempt, for that instance
    response_filter(ctx, head)             edit the ResponseHead or a local Reply (in
                                           place); runs in reverse chain order
    response_block_filter(ctx, status, block)
                                           the same edit of an upstream head given as its
                                           raw header block (hop-by-hop and framing lines
                                           cut); returns the block to send.  Overriding it
                                           says the response filter reads nothing else of
                                           an upstream head and changes no status: when
                                           every response filter of a route has this form,
                                           the head builder calls these (same order) and
                                           makes no ResponseHead.  Local replies still go
                                           through ``response_filter``.
                                           ``response_block_statuses()`` may name the
                                           only statuses it acts on: the usual response
                                           of another status then skips the call;
                                           ``response_block_memo()`` may name the
                                           middleware whose request filter chooses a
                                           memo of its edit per request state
    response_body_filter(ctx, chunk, end)  return the bytes to send; only if the
                                           middleware really transforms bodies
    logging(ctx, error)                    always runs once per request, errors included
    error_filter(ctx)                      a reply the gateway makes before any request
                                           filter ran (malformed request, no route):
                                           set what that reply needs (the request id)

Capabilities (read once, when a chain or a config snapshot is built):

    needs_body() -> bool          buffer the request body for ``request_body_filter``
    answers_preflight() -> bool   this route answers CORS preflights (an OPTIONS
                                  request then matches on its path alone)
    ready() -> bool               readiness contribution (e.g. the first JWKS fetch);
                                  asked on every readiness probe, only of middlewares
                                  that override it
    leaves_log_notes() -> bool    this middleware leaves a note the access log
                                  records (``trace``, ``content_encoding``,
                                  ``cache_result``): on a route without one, the
                                  access log reads no note
    makes_request_ids() -> bool   this middleware's ``request_filter`` gives each
                                  request its id (the request id middleware): the
                                  engine runs it before every other request filter,
                                  and makes the usual id itself (see the method)
    close()                       release background resources when a config is retired

The order of middlewares is the gateway's (``middleware/registry``), never the config
file's.  Middlewares share state only through ``ctx`` (``pipeline.ctx``; private notes
in ``ctx.notes[self.name]``).  A local reply passes through the ``response_filter`` of
every middleware that already ran (including the one that answered), so CORS and
security headers decorate 401/429s.  A middleware imports neither the engine, the
client protocol nor ``upstream/`` (an import-linter contract).
"""

from __future__ import annotations

HOOKS = ("request_filter", "request_body_filter", "upstream_request_filter", "response_filter",
         "response_body_filter", "logging", "error_filter", "response_block_filter")


class Middleware:
    name = "middleware"

    def __init__(self, cfg, deps) -> None:
        self.cfg = cfg
        self.deps = deps

    # ------------------------------------------------------------------ hooks
    def request_filter(self, ctx):
        return None

    def request_body_filter(self, ctx, body: bytes):
        return None

    def upstream_request_filter(self, ctx, head) -> None:
        return None

    def response_filter(self, ctx, head) -> None:
        return None

    def response_body_filter(self, ctx, chunk: bytes, end: bool) -> bytes:
        return chunk

    def response_block_filter(self, ctx, status: int, block: bytes) -> bytes:
        return block

    def response_block_statuses(self) -> frozenset | None:
        """The statuses of an upstream head that ``response_block_filter`` acts on (it
        returns any other's block unchanged, with no side effect), or None: any status."""
        return None

    def response_block_memo(self) -> str | None:
        """The name of the middleware whose ``request_filter`` sets ``ctx.usual_edit``: a
        dict (upstream header block -> this filter's result) for the request's state,
        which it partitions finely enough that the result is a function of the block
        alone there (never of the status; no side effect).  When this is the route's only
        raw-block filter on the usual response (``Chain.usual_memo``), ``Proxy.upstream_head``
        looks the block up there and calls the filter only on a miss.  None: no memo."""
        return None

    def logging(self, ctx, error) -> None:
        return None

    def error_filter(self, ctx) -> None:
        return None

    # ------------------------------------------------------------------ capabilities
    def needs_body(self) -> bool:
        return False

    def answers_preflight(self) -> bool:
        return False

    def ready(self) -> bool:
        return True

    def leaves_log_notes(self) -> bool:
        return False

    def makes_request_ids(self) -> bool:
        """True for the middleware that gives each request its id.  Its ``request_filter``
        is then not in the chain's request hooks: the engine runs it first, before the
        request filters, and for the usual request (no incoming id, the default header)
        takes the next id itself from the middleware's ``pool`` of ready ``(header line,
        id)`` pairs (``refill()`` when it is empty), without a Python call
        (``pipeline.engine``)."""
        return False

    def close(self) -> None:
        """Release background resources (tasks, connections) when a config is retired."""
        return None


def overrides(mw: Middleware, hook: str) -> bool:
    """True when ``mw``'s class defines ``hook`` itself rather than inheriting the default."""
    return getattr(type(mw), hook) is not getattr(Middleware, hook)
