"""The explicit middleware registry: the gateway's fixed order (DESIGN.md).

Each entry is ``(name, module_path)`` or ``(name, "module_path:function")``; the module
(its ``build``, or the named function) is
``build(root_cfg, service_cfg, route_cfg, deps) -> Middleware | None`` returning None when
the middleware is not enabled for that route.  ``route_cfg``/``service_cfg`` are None for
the global chain (replies with no route: 400/404/405).

Order of request filters (response filters run in reverse):
tracing -> request_id -> access_log -> security_headers -> ip_filter -> cors -> deprecation ->
ratelimit_ip -> auth (JWT + RBAC) -> ratelimit (user/route/service) -> validation -> mirror ->
transform (the request side: after auth, so ``$jwt.*`` is known; before the cache, so a Vary
on a header it sets is read on the request as sent upstream) -> redirect_rewrite (services
with preserve_host: false; before cache, so its response filter runs after the store: the
rewrite depends on this request's Host) -> sticky (the affinity cookie: its response filter
runs after the cache's store, so no stored response carries a client's cookie) -> cache (after
every check and request change: a hit is served only to whom the route admits) ->
circuit_breaker (the service's breaker: after every refusal, so a refused request never takes
a half-open permit, and after the cache, so a hit is served while the circuit is open) ->
compression (its response filter runs first
of the policy ones: DESIGN.md's "compression, then per-request decorations") ->
transform_response (the response side of the route's transform: last, so its response and
body filters run first: the upstream's JSON is edited, then compressed, then stored)
"""

from __future__ import annotations

import importlib

ORDER: tuple[tuple[str, str], ...] = (
    ("tracing", "fastgw.middleware.tracing"),
    ("request_id", "fastgw.middleware.request_id"),
    ("access_log", "fastgw.middleware.access_log"),
    ("security_headers", "fastgw.middleware.security_headers"),
    ("ip_filter", "fastgw.middleware.ip_filter"),
    ("cors", "fastgw.middleware.cors"),
    ("deprecation", "fastgw.middleware.deprecation"),
    ("ratelimit_ip", "fastgw.middleware.ratelimit_ip"),
    ("auth", "fastgw.middleware.auth"),
    ("ratelimit", "fastgw.middleware.ratelimit"),
    ("validation", "fastgw.middleware.validation"),
    ("mirror", "fastgw.middleware.mirror"),
    ("transform", "fastgw.middleware.transform"),
    ("redirect_rewrite", "fastgw.middleware.redirect"),
    ("sticky", "fastgw.middleware.sticky"),
    ("cache", "fastgw.middleware.cache"),
    ("circuit_breaker", "fastgw.middleware.breaker"),
    ("compression", "fastgw.middleware.compression"),
    ("transform_response", "fastgw.middleware.transform:build_response"),
)


def builders():
    """(name, build) for every registered middleware whose module exists."""
    out = []
    for name, ref in ORDER:
        mod, _, fn = ref.partition(":")   # "module" (its ``build``) or "module:function"
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        out.append((name, getattr(m, fn or "build")))
    return out
