"""Rules that span sections or routes, and the final touches of a loaded config (L1).

``crosscheck`` runs on whatever the walker could build, even when other parts of the file
have errors, so one run reports everything.  Rules:

1. a route's ``service``, if given, is the key of the service it sits under;
2. route names (given, or the default ``<service>-<index>``) are unique in the file;
3. ``auth: true`` or ``roles`` on a route needs an ``auth`` section with a key
   (``AUTH_KEY_FIELDS``), otherwise the route would be open;
4. when ``auth.roles`` is non-empty, every role named by a route, by a rate-limit tier or
   by ``rate_limit.exempt_roles`` is one of them;
5. two routes with the same host, path shape, match conditions and a common method are
   ambiguous; a route on ``gateway.health_path`` would never be reached;
6. the admin listener and the data listener do not share a port;
7. no ``transform`` header operation names an identity header (``_check_transform_identity``);
8. a split does not go to a service with ``discovery``; at most ``config.discovery.MAX_SERVICES``
   services use discovery.

``finalize`` runs only on a valid config: it fills each route's ``name`` and ``service``
and sets ``auth: true`` on routes that list ``roles``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import msgspec

from fastgw.config.discovery import MAX_SERVICES as MAX_DISCOVERED
from fastgw.config.ratelimit_section import BUILTIN_TIERS
from fastgw.config.root import Config
from fastgw.config.routes import RouteConfig
from fastgw.config.transform import identity_conflicts
from fastgw.config.paths import Path, render

# Fields of AuthConfig any of which, when set, gives the gateway a key to verify tokens
# (used only if AuthConfig has no ``has_keys()``).
AUTH_KEY_FIELDS = ("jwt_secret", "keys", "jwks_url", "jwks", "public_keys", "public_key_file")

BROKEN: Any = object()  # a section present in the file that failed to convert
RECORD = frozenset(("gateway", "auth", "rate_limit", "monitoring", "services.*", "services.*.routes[]"))

Report = Callable[[Path, str], None]


def _has_key(auth: Any) -> bool:
    has_keys = getattr(auth, "has_keys", None)
    if has_keys is not None:
        return bool(has_keys())
    return any(getattr(auth, f, None) for f in AUTH_KEY_FIELDS)


def _default_name(path: Path) -> str:
    return f"{path[1]}-{path[3]}"  # ("services", key, "routes", i)


def crosscheck(
    sections: dict[str, Any], services: list, routes: list, routes_complete: bool, error: Report, warn: Report
) -> None:
    """Check the rules above. ``sections``: top-level name -> value, None (absent) or BROKEN;
    ``services``/``routes``: (path, struct) pairs for every service/route that was built;
    ``routes_complete``: whether that is all of them (no error under ``services``)."""
    auth, gw, rl, mon = (sections[k] for k in ("auth", "gateway", "rate_limit", "monitoring"))
    names: dict[str, Path] = {}
    shapes: dict[tuple, list[tuple[Path, RouteConfig]]] = {}
    for path, route in routes:
        key = path[1]
        if route.service is not None and route.service != key:
            error(path + ("service",), f"must be {key!r} (the service this route is under), got {route.service!r}")
        name = route.name or _default_name(path)
        if name in names:
            error(path + ("name",), f"duplicate route name {name!r} (also {render(names[name])})")
        else:
            names[name] = path
        _check_route_auth(path, route, auth, error)
        if gw is not BROKEN and route.match is not None and route.match.uses_version() \
                and getattr(gw, "versioning", None) is None:
            error(path + ("match",), "a 'version' condition needs gateway.versioning (how requests name a version)")
        if gw is not BROKEN and route.path == gw.health_path:
            error(path + ("path",), f"{route.path!r} is gateway.health_path, which the gateway answers itself")
        shape = _shape(route)
        for other_path, other in shapes.get(shape, ()):
            common = sorted(_methods(route) & _methods(other))
            if common:
                error(path + ("path",), (
                    f"ambiguous: {render(other_path)} has the same host, path and match conditions "
                    f"and also allows {', '.join(common)}"
                ))
                break
        shapes.setdefault(shape, []).append((path, route))
    if routes_complete:
        known = {p[1] for p, _svc in services}
        for path, route in routes:
            for i, side in enumerate(route.split.to if route.split is not None else ()):
                if side.service not in known:
                    error(path + ("split", "to", i, "service"), f"no service named {side.service!r}")
                elif any(p[1] == side.service and s.discovery is not None for p, s in services):
                    error(path + ("split", "to", i, "service"),
                          f"{side.service!r} finds its instances by discovery: a split needs url or instances")
            mirror = route.mirror
            if mirror is not None:
                if mirror.service not in known:
                    error(path + ("mirror", "service"), f"no service named {mirror.service!r}")
                elif mirror.service == path[1]:
                    error(path + ("mirror", "service"), "is the route's own service: mirror to a shadow service")
                else:
                    svc = dict((p[1], s) for p, s in services)[mirror.service]
                    if not svc.upstreams() or not svc.upstreams()[0].url.lower().startswith("http://"):
                        error(path + ("mirror", "service"), f"{mirror.service!r} needs an http:// URL "
                              "(a mirror does not speak TLS yet)")
    _check_rate_limit(rl, auth, error, warn)
    _check_redis_rules(rl, services, routes, error)
    _check_transform_identity(gw, auth, services, routes, error)
    per_route = getattr(auth, "routes", None) if auth not in (None, BROKEN) else None
    if isinstance(per_route, dict) and routes_complete:
        for rname in per_route:
            if rname not in names:
                error(("auth", "routes", rname), f"no route is named {rname!r}")
    discovered = [path for path, svc in services if svc.discovery is not None]
    for path in discovered[MAX_DISCOVERED:]:
        error(path + ("discovery",), f"more than {MAX_DISCOVERED} services use discovery (the shared-memory "
              "table's rows)")
    for path, svc in services:
        schemes = {u.url.split(":", 1)[0].lower() for u in svc.upstreams()}
        if svc.discovery is not None:
            schemes.add(svc.discovery.scheme)
        if "https" not in schemes and svc.tls != type(svc.tls)():
            warn(path + ("tls",), "ignored: the service's URLs are http://, tls applies to https:// only")
    if gw not in (None, BROKEN) and mon not in (None, BROKEN):
        wildcard = ("0.0.0.0", "::", "")
        overlap = gw.host == mon.metrics_host or gw.host in wildcard or mon.metrics_host in wildcard
        if overlap and mon.metrics_port and mon.metrics_port == gw.port:
            error(("monitoring", "metrics_port"), f"the same port as gateway.port ({gw.port})")


def _check_route_auth(path: Path, route: RouteConfig, auth: Any, error: Report) -> None:
    if not (route.auth or route.roles) or auth is BROKEN:
        return
    what = "auth" if route.auth else "roles"
    if auth is None:
        error(path + (what,), "needs an 'auth' section with a key (auth.jwt_secret, keys or jwks); there is none")
        return
    if not _has_key(auth):
        error(path + (what,), "needs a key in the 'auth' section (auth.jwt_secret, keys or jwks); none is set")
    known = set(auth.roles)
    if not known or route.roles is None:
        return
    items = route.roles.items() if isinstance(route.roles, dict) else [(None, route.roles)]
    for method, roles in items:
        for i, role in enumerate(roles):
            if role not in known:
                p = path + ("roles",) + ((method,) if method else ()) + (i,)
                error(p, f"unknown role {role!r} (not in auth.roles)")


def _check_transform_identity(gw: Any, auth: Any, services: list, routes: list, error: Report) -> None:
    """Rule 7: no ``transform`` header operation names an identity header: the ones the
    auth middleware sets or strips (always ``X-User-Id``/``X-User-Roles``, plus the
    configured ``identity_headers`` and ``strip_headers``) and the request id header."""
    names = {"x-user-id", "x-user-roles"}
    if auth not in (None, BROKEN):
        ih = auth.identity_headers
        names.update(n.lower() for n in (ih.user, ih.roles, *ih.claims.values(), *auth.strip_headers) if n)
    if gw not in (None, BROKEN):
        names.add(gw.request_id_header.lower())
    else:
        names.add("x-request-id")
    identity = frozenset(names)
    found = [(("gateway",), gw)] if gw not in (None, BROKEN) else []
    found += [*services, *routes]
    for path, section in found:
        for rel, msg in identity_conflicts(getattr(section, "transform", None), identity):
            error(path + ("transform",) + rel, msg)


def _check_redis_rules(rl: Any, services: list, routes: list, error: Report) -> None:
    """``backend: redis`` (the tiers' or a rule's) needs ``rate_limit.redis.url`` (the one
    place this is checked)."""
    if rl is BROKEN:
        return
    redis = getattr(rl, "redis", None) if rl is not None else None
    if redis is not None and getattr(redis, "url", None):
        return
    if rl is not None and getattr(rl, "backend", "memory") == "redis":
        error(("rate_limit", "backend"), "'redis' needs rate_limit.redis.url")
    for path, obj in list(services) + list(routes):
        rule = getattr(obj, "rate_limit", None)
        if rule is not None and getattr(rule, "backend", "memory") == "redis":
            error(path + ("rate_limit", "backend"), "'redis' needs rate_limit.redis.url")


def _check_rate_limit(rl: Any, auth: Any, error: Report, warn: Report) -> None:
    if rl in (None, BROKEN) or auth is BROKEN:
        return
    known = set(auth.roles) if auth is not None else set()
    for tier in rl.tiers:
        if tier in BUILTIN_TIERS:
            if tier == "authenticated" and auth is None:
                warn(("rate_limit", tier), "never applies: there is no 'auth' section")
        elif auth is None:
            warn(("rate_limit", tier), "never applies: a role tier needs an 'auth' section")
        elif known and tier not in known:
            error(("rate_limit", tier), (
                f"unknown tier {tier!r}: a tier is 'default', 'authenticated' or a role from auth.roles"
            ))
    for i, role in enumerate(rl.exempt_roles):
        if known and role not in known:
            error(("rate_limit", "exempt_roles", i), f"unknown role {role!r} (not in auth.roles)")


_PARAM = re.compile(r"\{[^}]*\}")


def _methods(route: RouteConfig) -> set[str]:
    """The methods a route answers: HEAD comes with GET (as the router does)."""
    ms = set(route.methods)
    return ms | {"HEAD"} if "GET" in ms else ms


def _shape(route: RouteConfig) -> tuple:
    m = route.match
    conds = msgspec.json.encode(m, order="sorted") if m else b""
    path = _PARAM.sub("{}", route.path) if isinstance(route.path, str) else ("regex", route.path.regex)
    return (route.host, path, conds)


def finalize(config: Config) -> Config:
    """Fill route names and services, and ``auth`` for routes with roles."""
    services = {}
    for key, svc in config.services.items():
        routes = [
            msgspec.structs.replace(
                r,
                name=r.name or f"{key}-{i}",
                service=key,
                auth=r.auth or r.roles is not None,
            )
            for i, r in enumerate(svc.routes)
        ]
        services[key] = msgspec.structs.replace(svc, routes=routes)
    return msgspec.structs.replace(config, services=services)
