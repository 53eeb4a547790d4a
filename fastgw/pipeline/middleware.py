"""The middleware contract (L4).

A middleware is one class in ``fastgw/middleware/``, built once per config and route:

    __init__(cfg, deps)                    precompute everything here (bytes, sets, regexes)
    request_filter(ctx)                    None = continue; a Reply = answer locally.
                                           May be ``async def`` when it must await.
    upstream_request_filter(ctx, head)     edit the RequestHead sent upstream (in place)
    response_filter(ctx, head)             edit the ResponseHead or a local Reply (in place);
                                           runs in reverse chain order
    response_body_filter(ctx, chunk, end)  return the bytes to send; only if it transforms bodies
    logging(ctx, error)                    always runs once per request, errors included

Only the hooks a subclass overrides end up in a route's compiled chain (``overrides``),
so an unused hook costs nothing per request.  The order of middlewares is the gateway's
(``middleware/registry``), never the config file's.  Middlewares share state only
through ``ctx`` (``ctx.notes[self.name]`` for private notes).

A local reply passes through the ``response_filter`` of every middleware that already
ran (including the one that answered), so CORS and security headers decorate 401/429s.
"""

from __future__ import annotations

HOOKS = ("request_filter", "upstream_request_filter", "response_filter", "response_body_filter", "logging")


class Middleware:
    name = "middleware"

    def __init__(self, cfg, deps) -> None:
        self.cfg = cfg
        self.deps = deps

    def request_filter(self, ctx):
        return None

    def upstream_request_filter(self, ctx, head) -> None:
        return None

    def response_filter(self, ctx, head) -> None:
        return None

    def response_body_filter(self, ctx, chunk: bytes, end: bool) -> bytes:
        return chunk

    def logging(self, ctx, error) -> None:
        return None

    def close(self) -> None:
        """Release background resources (tasks, connections) when a config is retired."""
        return None


def overrides(mw: Middleware, hook: str) -> bool:
    """True when ``mw``'s class defines ``hook`` itself rather than inheriting the no-op."""
    return getattr(type(mw), hook) is not getattr(Middleware, hook)
