"""Sticky sessions: the affinity cookie on responses (L6).

What it owns: the ``Set-Cookie`` of ``services.<name>.sticky``.  The choice itself is
the balancer's (``upstream.balance.Sticky``: a request whose cookie names a usable
instance goes there); this middleware only tells the client which instance answered,
when its cookie does not already say so (no cookie, an unknown or forged value, an
instance that was down or removed, a retry that went elsewhere): the cookie is
(re-)issued, and a client whose cookie is right gets no header at all.

The value is the instance's ``affinity`` token (an HMAC of its identity with
``sticky.secret``, computed by the balancer); the attributes are prebuilt once:
``Path``, ``Max-Age`` from ``ttl`` (none: a session cookie), ``HttpOnly`` always,
``Secure`` and ``SameSite`` as configured.  Only responses from an upstream get it: a
local reply or an error made before any attempt names no instance.

Its request filter does nothing; in the registry it sits before ``cache``, so its
response filter runs after the store: a cached response never carries one client's
cookie to another.
"""

from __future__ import annotations

from fastgw.http.cookies import cookie_value
from fastgw.pipeline.middleware import Middleware

_SET_COOKIE = b"set-cookie"


class StickyCookie(Middleware):
    name = "sticky"

    def __init__(self, cfg, deps=None) -> None:
        super().__init__(cfg, deps)
        self._name = cfg.cookie.encode("latin-1")
        attrs = [b"Path=" + cfg.path.encode("ascii")]
        if cfg.ttl is not None:
            attrs.append(b"Max-Age=%d" % max(1, int(cfg.ttl)))
        attrs.append(b"HttpOnly")
        if cfg.secure:
            attrs.append(b"Secure")
        attrs.append(b"SameSite=" + cfg.same_site.encode("ascii"))
        self._prefix = self._name + b"="
        self._suffix = b"; " + b"; ".join(attrs)

    def response_filter(self, ctx, head) -> None:
        """Set the cookie when the instance that answered is not the one it names."""
        if not ctx.upstream_status:
            return
        a = ctx.attempt   # (the engine's Exchange: the attempt whose response this is)
        token = a.instance.affinity if a is not None else b""
        if not token or cookie_value(ctx.header(b"cookie"), self._name) == token:
            return
        head.extend(((_SET_COOKIE, self._prefix + token + self._suffix),))


def build(root_cfg, service_cfg, route_cfg, deps):
    """The service's sticky cookie middleware, or None without ``sticky``."""
    if service_cfg is None or route_cfg is None or service_cfg.sticky is None:
        return None
    if route_cfg.split is not None:   # a split route picks by side (routing.split)
        return None
    return StickyCookie(service_cfg.sticky, deps)
