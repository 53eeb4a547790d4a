"""Schema of ``cache`` (issue 21): the response cache, gateway-wide defaults and per
service/route switches (L1).

The top-level ``cache:`` section holds what is per worker (``memory``,
``max_object_size``) and the URLs to warm; it also gives the defaults of a route's
settings.  A route (or its service) turns the cache on with ``cache: true`` or an object
(``default_ttl``, ``key``, ``stale_while_revalidate``, ``stale_if_error``,
``store_set_cookie``); ``cache: false`` turns it off there.  The names are a contract
(issue 21): tooling outside the repository writes them.

Rules kept here, so that a bad value is a load error naming its path:
1. ``key.query`` is ``all``, ``none`` or a list of parameter names.
2. ``key.headers`` are header names; hop-by-hop names and ``cookie``/``authorization``
   are refused (a key on a credential would keep one copy per user: use ``Vary``).
"""

from __future__ import annotations

from typing import Annotated, Iterator, Literal

import msgspec

from fastgw.config.base import Base, Check, Duration, Size

_HEADER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")
_REFUSED = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                      "cookie", "authorization", "proxy-authorization", "host"})


def _header_name(x: str) -> str:
    n = x.strip().lower()
    if not n or set(n) - _HEADER_CHARS:
        raise ValueError(f"expected a header name, got {x!r}")
    if n in _REFUSED:
        raise ValueError(f"{x!r} cannot be part of a cache key (hop-by-hop, the Host, or a credential)")
    return n


class CacheKeyConfig(Base):
    query: Literal["all", "none"] | list[str] = "all"  # which query parameters are part of the key
    headers: list[Annotated[str, Check(_header_name)]] = []  # request headers part of the key


class CacheRouteConfig(Base):
    """What a route (or service) that caches uses; unset fields take the top-level's."""

    default_ttl: Duration | None = None  # freshness when the upstream gives none; None = store only explicit
    key: CacheKeyConfig | None = None
    stale_while_revalidate: Duration | None = None  # on top of the response's own directive
    stale_if_error: Duration | None = None
    store_set_cookie: bool = False  # store a Set-Cookie response without its Set-Cookie


class CacheConfig(Base):
    memory: Size = Size(64 * 1024 * 1024)  # per worker, bodies and heads counted
    max_object_size: Size = Size(1024 * 1024)  # larger responses stream through, not stored
    warm: list[str] = []  # absolute URLs fetched after start and after each reload
    coalesce_wait: Duration = Duration(5.0)  # how long a concurrent miss waits for the first fetch
    # the route defaults
    default_ttl: Duration | None = None
    key: CacheKeyConfig = msgspec.field(default_factory=CacheKeyConfig)
    stale_while_revalidate: Duration | None = None
    stale_if_error: Duration | None = None

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.max_object_size > self.memory:
            yield "max_object_size", "cannot exceed memory"
        for i, u in enumerate(self.warm):
            if not (u.startswith("http://") or u.startswith("https://")) or "/" not in u.split("://", 1)[1]:
                yield f"warm[{i}]", f"expected an absolute URL like 'https://api.example.com/path', got {u!r}"


class Effective(msgspec.Struct, frozen=True):
    """The settings one route runs with (``effective_cache``)."""

    default_ttl: float | None
    query: str | tuple
    headers: tuple
    swr: float
    sie: float
    store_set_cookie: bool
    memory: int
    max_object_size: int
    coalesce_wait: float


def effective_cache(top, service, route) -> Effective | None:
    """The route's cache settings, or None when the route does not cache: the route's
    value, else the service's, else off (the top-level section only gives defaults)."""
    v = route if route is not None else service
    if v is None or v is False:
        return None
    top = top if isinstance(top, CacheConfig) else CacheConfig()
    rc = v if isinstance(v, CacheRouteConfig) else CacheRouteConfig()
    key = rc.key if rc.key is not None else top.key
    q = key.query if isinstance(key.query, str) else tuple(sorted(key.query))
    return Effective(
        default_ttl=rc.default_ttl if rc.default_ttl is not None else top.default_ttl,
        query=q, headers=tuple(key.headers),
        swr=float(rc.stale_while_revalidate if rc.stale_while_revalidate is not None
                  else (top.stale_while_revalidate or 0.0)),
        sie=float(rc.stale_if_error if rc.stale_if_error is not None else (top.stale_if_error or 0.0)),
        store_set_cookie=rc.store_set_cookie, memory=int(top.memory),
        max_object_size=int(top.max_object_size), coalesce_wait=float(top.coalesce_wait))
