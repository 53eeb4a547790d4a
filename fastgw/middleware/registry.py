"""The explicit middleware registry: the gateway's fixed order (DESIGN.md).

Each entry is ``(name, module_path)``; the module exposes
``build(root_cfg, service_cfg, route_cfg, deps) -> Middleware | None`` returning None when
the middleware is not enabled for that route.  ``route_cfg``/``service_cfg`` are None for
the global chain (replies with no route: 400/404/405).

Order of request filters (response filters run in reverse):
tracing -> request_id -> access_log -> security_headers -> ip_filter -> cors -> deprecation ->
ratelimit_ip -> auth (JWT + RBAC) -> ratelimit (user/route/service) -> validation -> mirror ->
redirect_rewrite (services with preserve_host: false) ->
compression (last, so its response filter runs first: DESIGN.md's "compression, then
per-request decorations")
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
    ("redirect_rewrite", "fastgw.middleware.redirect"),
    ("compression", "fastgw.middleware.compression"),
)


def builders():
    """(name, build) for every registered middleware whose module exists."""
    out = []
    for name, mod in ORDER:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        out.append((name, m.build))
    return out
