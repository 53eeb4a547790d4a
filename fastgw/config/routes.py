"""Schema of a route (``services.<name>.routes[i]``) (L1).

A route says which requests go to its parent service: path (exact ``/a/b``, prefix
``/a/*``, parameter segments ``/a/{id}``, or ``{regex: ...}``), methods, optional host and
``match`` conditions (``config.match``), its API ``version`` and ``deprecation``
(``config.versioning``), and the per-route policy (auth, roles, limits, middleware
overrides).

Rules kept here (cross-route and cross-section rules live in ``crosscheck``):
- methods are upper-cased; TRACE/CONNECT and unknown methods are errors; a list may not
  be empty or repeat a method;
- ``roles`` is a list (any of them may call) or a map method -> roles, where ``"*"``
  stands for every method not listed; a map names only methods of the route and covers
  each of them (HEAD is covered by GET, everything by ``"*"``);
- ``roles`` implies ``auth: true`` (the loader sets it), ``roles: []`` is an error;
- ``cors``/``security_headers``/``ip_filter``: an object replaces the global section for
  this route, ``false`` disables it here, omitted inherits it; ``true`` is an error (it
  would read as "enable" while meaning nothing).
"""

from __future__ import annotations

import re
from typing import Annotated, Iterator

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, PositiveDuration, Size
from fastgw.config.cache import CacheRouteConfig
from fastgw.config.compression import CompressionConfig
from fastgw.config.match import MatchConfig, PathRegex, VersionLabel
from fastgw.config.ratelimit import RateLimitRule
from fastgw.config.security import CorsConfig, IpFilterConfig, SecurityHeadersConfig, ValidateConfig
from fastgw.config.mirror import MirrorConfig
from fastgw.config.split import SplitConfig
from fastgw.config.transform import TransformConfig
from fastgw.config.versioning import DeprecationConfig

Method = Annotated[str, Check(v.http_method)]
RolesKey = Annotated[str, Check(v.roles_key)]
Role = Annotated[str, Check(v.non_empty)]

# Route keys whose value may be an object (replace the global section) or false (disable).
OVERRIDABLE = ("cors", "security_headers", "ip_filter")


def _default_methods() -> list[str]:
    return ["GET", "HEAD"]


class RouteConfig(Base):
    path: Annotated[str, Check(v.route_path)] | PathRegex  # {regex: ...}: see config.match
    name: Annotated[str, Check(v.name)] | None = None  # after load: "<service>-<index>" unless set
    service: str | None = None  # after load: the parent service key
    methods: list[Method] = msgspec.field(default_factory=_default_methods)
    host: Annotated[str, Check(v.host_pattern)] | None = None
    match: MatchConfig | None = None
    auth: bool = False
    roles: list[Role] | dict[RolesKey, list[Role]] | None = None
    rate_limit: RateLimitRule | None = None
    max_body_size: Size | None = None  # None = gateway.limits.max_body_size
    allow_encoded_slash: bool = False
    transform: TransformConfig | None = None  # config.transform: path, query, headers, JSON bodies
    timeout: PositiveDuration | None = None  # None = the service's timeout
    cors: CorsConfig | bool | None = None
    security_headers: SecurityHeadersConfig | bool | None = None
    ip_filter: IpFilterConfig | bool | None = None
    validate: ValidateConfig | None = None
    compression: CompressionConfig | bool | None = None  # None = the service's, else the top-level
    cache: CacheRouteConfig | bool | None = None  # response cache (config.cache); None = the service's / off
    version: VersionLabel | None = None  # the API version this route serves (config.versioning)
    deprecation: DeprecationConfig | None = None
    mirror: MirrorConfig | None = None  # fire-and-forget copies to a shadow service (config.mirror)
    retry_non_idempotent: bool = False  # POST/PATCH retried too, only when the connect failed
    split: SplitConfig | None = None  # sides by weight (config.split); the route's service is then only its home

    def _check(self) -> Iterator[tuple[str, str]]:
        mv = self.match.version if self.match is not None else None
        if mv is not None and self.version is not None and mv != self.version:
            yield "version", f"{self.version!r} differs from match.version {mv!r}; give one, or the same"
        if not self.methods:
            yield "methods", "must list at least one method"
        seen: set[str] = set()
        for i, m in enumerate(self.methods):
            if m in seen:
                yield f"methods[{i}]", f"duplicate method {m!r}"
            seen.add(m)
        yield from self._check_roles()
        yield from self._check_transform()
        for key in OVERRIDABLE:
            if getattr(self, key) is True:
                yield key, (
                    "'true' is not allowed: omit the key to inherit the global section, "
                    "give an object to replace it, or 'false' to disable it on this route"
                )

    def _check_transform(self) -> Iterator[tuple[str, str]]:
        req = self.transform.request if self.transform is not None else None
        if req is None:
            return
        wild = isinstance(self.path, str) and self.path.endswith("/*")
        if req.strip_prefix and not wild:
            yield "transform.request.strip_prefix", "needs a wildcard route path ending in '/*'"
        if isinstance(req.path, str):
            have = set(re.findall(r"\{([^}]*)\}", self.path)) if isinstance(self.path, str) else set()
            for name in re.findall(r"\{([^}]*)\}", req.path):
                if name not in have:
                    yield "transform.request.path", f"{{{name}}} is not a parameter of the route's path"

    def _check_roles(self) -> Iterator[tuple[str, str]]:
        roles = self.roles
        if roles is None:
            return
        if not roles:
            yield "roles", "must not be empty (nobody could call the route); remove it or list roles"
            return
        if isinstance(roles, dict):
            methods = set(self.methods)
            for m, rs in roles.items():
                if m != "*" and m not in methods and not (m == "HEAD" and "GET" in methods):
                    yield f"roles.{m}", f"{m} is not one of the route's methods"
                if not rs:
                    yield f"roles.{m}", "must not be empty (nobody could call it); remove the method from the route"
            for m in self.methods if "*" not in roles else ():
                if m not in roles and not (m == "HEAD" and "GET" in roles):
                    yield "roles", f"no entry for {m}: every method of the route needs roles"

    def served_version(self) -> str | None:
        """The API version the route serves: ``version``, else ``match.version``."""
        if self.version is not None:
            return self.version
        return self.match.version if self.match is not None else None

    def allowed_roles(self, method: str) -> list[str] | None:
        """Roles that may call ``method`` (None = any authenticated caller or no auth)."""
        roles = self.roles
        if roles is None or isinstance(roles, list):
            return roles
        if method == "HEAD" and "HEAD" not in roles and "GET" in roles:
            method = "GET"
        return roles.get(method, roles.get("*", []))

