"""Schemas of the edge security middlewares: ``cors``, ``security_headers``,
``ip_filter`` and a route's ``validate`` block (L1).

Each of the first three is set globally (``cors:`` at the top of the file) and per route.
A route's value is omitted (inherit the global section), ``false`` (off on this route) or
an object that *replaces* the global one whole: no key-by-key merge, so a route reads the
same wherever it is moved.  ``effective()`` is that rule in one place.

Rules kept here, so that a bad value is a load error naming its path (the walker reports
``Check`` failures and ``_check()`` pairs at the field they name), never a surprise on the
first request:

1. CORS origins are exact ``scheme://host[:port]`` strings, ``"*"``, ``"null"`` or patterns
   whose ``*`` stands for whole leading DNS labels (``https://*.example.com``) or any port
   (``http://localhost:*``); a path, a ``*`` inside a label, a wildcard right under a TLD,
   and ``"*"`` together with ``allow_credentials`` are refused.
2. Header presets take only their registered tokens where there are some (frame options,
   referrer, COOP, CORP); free-form values are printable ASCII.  ``true`` is refused where
   ``false`` disables (it would read as "on" while meaning nothing).
3. CIDRs are strict (``10.0.0.1/8`` is a typo for ``10.0.0.0/8``; the message says so).
4. A JSON Schema is checked against its meta-schema and compiled here, with remote
   ``$ref`` retrieval disabled and a backtracking budget for ``pattern`` regexes
   (``compile_schema``, which the validation middleware calls again to build its validator).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Iterator

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration

__all__ = [
    "CorsConfig", "HstsConfig", "SecurityHeadersConfig", "IpFilterConfig", "ValidateConfig",
    "effective", "compile_schema", "parse_origin", "parse_network", "REGEX_BACKTRACK_LIMIT",
]

Cidr = Annotated[str, Check(v.cidr)]
HeaderName = Annotated[str, Check(v.header_name)]
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def effective(global_value: Any, route_value: Any) -> Any:
    """The section that applies: route ``None`` inherits, ``False`` disables, an object replaces.

    None means the middleware is off (also for a block with ``enabled: false``).
    """
    val = global_value if route_value is None else route_value
    if val is None or val is False or val is True or getattr(val, "enabled", True) is False:
        return None
    return val


def _token_or_star(what: str) -> Any:
    def check(x: str) -> str:
        if x != "*" and not _TOKEN.match(x):
            raise ValueError(f"invalid {what} {x!r}: expected an HTTP token or '*'")
        return x
    return Check(check)


# ----------------------------------------------------------------------------- CORS

_DEFAULT_PORT = {"http": "80", "https": "443"}
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST = re.compile(r"(?:\*\.)?(?:" + _LABEL + r"\.)*" + _LABEL + r"\Z|\[[0-9a-f:.]+\]\Z")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")


def parse_origin(entry: str) -> tuple[str, str | None]:
    """Normalise one ``allow_origins`` entry.

    ``("exact", origin)`` for a literal origin, serialised as a browser sends it (lower
    case, default port dropped); ``("any", None)`` for ``*``; ``("regex", source)`` for a
    pattern: regex source to be matched whole, where a leading ``*.`` is one or more DNS
    labels and ``:*`` any port or none.  ValueError for anything else.
    """
    e = entry.strip()
    if e == "*":
        return "any", None
    if e == "null":
        return "exact", "null"
    scheme, sep, rest = e.lower().partition("://")
    if not sep or not _SCHEME.match(scheme):
        raise ValueError(f"invalid origin {entry!r}: expected scheme://host[:port], '*' or 'null'")
    if any(c in rest for c in "/?#@ "):
        raise ValueError(f"invalid origin {entry!r}: an origin has no path, query, fragment or userinfo")
    host, port = rest, None
    if rest.startswith("["):
        end = rest.find("]")
        host, tail = rest[: end + 1], rest[end + 1:]
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"invalid origin {entry!r}: bad IPv6 literal")
            port = tail[1:]
    elif ":" in rest:
        host, _, port = rest.rpartition(":")
    if not _HOST.match(host):
        raise ValueError(f"invalid origin {entry!r}: bad host {host!r} ('*' stands only for whole "
                         f"leading labels, as in 'https://*.example.com')")
    if port is not None and port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"invalid origin {entry!r}: bad port {port!r}")
    if port == _DEFAULT_PORT.get(scheme):
        port = None
    wild = host.startswith("*.")
    if not wild and port != "*":
        return "exact", scheme + "://" + host + (":" + str(int(port)) if port else "")
    if wild and host.count(".") < 2:
        raise ValueError(f"invalid origin {entry!r}: a wildcard needs a domain under it "
                         f"('https://*.example.com', not 'https://*.com')")
    src = re.escape(scheme + "://")
    src += ("(?:" + _LABEL + r"\.)+" + re.escape(host[2:])) if wild else re.escape(host)
    if port == "*":
        src += r"(?::[0-9]{1,5})?"
    elif port:
        src += re.escape(":" + str(int(port)))
    return "regex", src


def _origin(x: str) -> str:
    parse_origin(x)
    return x


class CorsConfig(Base):
    """Cross-origin resource sharing (docs/security.md#cors)."""

    allow_origins: list[Annotated[str, Check(_origin)]] = []
    # None: the route's own methods (GET, HEAD, POST in the global chain); "*" echoes the request's
    allow_methods: list[Annotated[str, _token_or_star("method")]] | None = None
    # "*" echoes the requested headers (Authorization included: it is listed by the browser)
    allow_headers: list[Annotated[str, _token_or_star("header name")]] = msgspec.field(
        default_factory=lambda: ["Content-Type"])
    expose_headers: list[Annotated[str, _token_or_star("header name")]] = []
    allow_credentials: bool = False
    max_age: Duration = Duration(600.0)

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.allow_credentials:
            if "*" in (o.strip() for o in self.allow_origins):
                yield "allow_origins", ("'*' cannot be combined with allow_credentials: true (every site "
                                        "could act with your users' cookies); list the origins")
            if "*" in self.expose_headers:
                yield "expose_headers", ("'*' is a literal header name when allow_credentials is true; "
                                         "list the headers to expose")


# ----------------------------------------------------------------------------- security headers

_ENUMS = {
    "content_type_options": {"nosniff"},
    "frame_options": {"DENY", "SAMEORIGIN"},
    "cross_origin_opener_policy": {"same-origin", "same-origin-allow-popups", "noopener-allow-popups",
                                   "unsafe-none"},
    "cross_origin_resource_policy": {"same-origin", "same-site", "cross-origin"},
}
_REFERRER = {"no-referrer", "no-referrer-when-downgrade", "origin", "origin-when-cross-origin", "same-origin",
             "strict-origin", "strict-origin-when-cross-origin", "unsafe-url"}

# (field, header name) of the presets, in the order they are sent
PRESETS = (
    ("content_type_options", "X-Content-Type-Options"),
    ("frame_options", "X-Frame-Options"),
    ("content_security_policy", "Content-Security-Policy"),
    ("referrer_policy", "Referrer-Policy"),
    ("permissions_policy", "Permissions-Policy"),
    ("cross_origin_opener_policy", "Cross-Origin-Opener-Policy"),
    ("cross_origin_resource_policy", "Cross-Origin-Resource-Policy"),
)

HeaderValue = Annotated[str, Check(v.header_value)] | bool


class HstsConfig(Base):
    max_age: Duration = Duration(31536000.0)  # 365 days
    include_subdomains: bool = True
    preload: bool = False

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.preload and (not self.include_subdomains or self.max_age < 31536000):
            yield "preload", "needs include_subdomains: true and a max_age of at least 365d (hstspreload.org)"

    def value(self) -> str:
        out = f"max-age={int(self.max_age)}"
        if self.include_subdomains:
            out += "; includeSubDomains"
        if self.preload:
            out += "; preload"
        return out


class SecurityHeadersConfig(Base):
    """Security header presets on every response; each preset is a value or ``false``."""

    enabled: bool = True
    hsts: HstsConfig | bool = msgspec.field(default_factory=HstsConfig)
    content_type_options: HeaderValue = "nosniff"
    frame_options: HeaderValue = "DENY"
    content_security_policy: HeaderValue = "default-src 'none'; frame-ancestors 'none'"
    referrer_policy: HeaderValue = "no-referrer"
    permissions_policy: HeaderValue = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
    cross_origin_opener_policy: HeaderValue = "same-origin"
    cross_origin_resource_policy: HeaderValue = False
    custom: dict[HeaderName, Annotated[str, Check(v.header_value)]] = {}
    # header names whose upstream value, when there is one, wins over the preset
    keep_upstream: list[HeaderName] = msgspec.field(default_factory=lambda: ["Content-Security-Policy"])
    # removed from upstream responses, on top of Server and X-Powered-By
    remove: list[HeaderName] = []

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.hsts is True:
            yield "hsts", "'true' is not allowed: omit the key for the defaults, or give an object or false"
        for field, _name in PRESETS:
            val = getattr(self, field)
            if val is True:
                yield field, "'true' is not allowed: give a value, or false to send no header"
            elif val is not False and field in _ENUMS and val not in _ENUMS[field]:
                yield field, f"expected one of {', '.join(sorted(_ENUMS[field]))} or false, got {val!r}"
        if isinstance(self.referrer_policy, str):
            for tok in self.referrer_policy.split(","):
                if tok.strip() not in _REFERRER:
                    yield "referrer_policy", f"unknown policy {tok.strip()!r}"

    def header_values(self) -> list[tuple[str, str]]:
        """(Header-Name, value) of every enabled preset except HSTS, then the custom headers."""
        out = [(name, getattr(self, f)) for f, name in PRESETS if isinstance(getattr(self, f), str)]
        out.extend(self.custom.items())
        return out


# ----------------------------------------------------------------------------- IP allow/deny

def parse_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR or single address (strict); IPv4-mapped IPv6 ranges become IPv4 ranges."""
    net = ipaddress.ip_network(entry.strip(), strict=True)
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


class IpFilterConfig(Base):
    """Client-address rules: a ``deny`` match is refused; a non-empty ``allow`` refuses the rest."""

    allow: list[Cidr] = []
    deny: list[Cidr] = []


# ----------------------------------------------------------------------------- request validation

# Budget of backtracking steps for a JSON Schema ``pattern`` that needs the backtracking
# regex engine (lookaround, backreferences); other patterns run on the linear-time engine.
# A match that exceeds it fails (400), so a pathological pattern costs ~1 ms per string
# instead of seconds.
REGEX_BACKTRACK_LIMIT = 20_000

_MEDIA = re.compile(r"[a-z0-9!#$&^_.+-]+/(?:\*|[a-z0-9!#$&^_.+-]+)\Z")


def _media_range(x: str) -> str:
    m = x.strip().lower()
    if not _MEDIA.match(m) or m.startswith("*/"):
        raise ValueError(f"expected a media type like 'application/json' or 'text/*', got {x!r}")
    return m


def _refuse_remote(uri: str) -> Any:
    raise ValueError(f"remote $ref {uri!r} is never fetched; put the schema under $defs")


def compile_schema(schema: Any, *, validate_formats: bool = True) -> Any:
    """A jsonschema-rs validator for ``schema``; ValueError saying what is wrong."""
    try:
        import jsonschema_rs
    except ModuleNotFoundError:  # pragma: no cover - depends on the install
        raise ValueError("a JSON Schema needs the jsonschema-rs package (pip install jsonschema-rs)") from None
    try:
        jsonschema_rs.meta.validate(schema)
        return jsonschema_rs.validator_for(
            schema,
            validate_formats=validate_formats,
            retriever=_refuse_remote,
            pattern_options=jsonschema_rs.FancyRegexOptions(backtrack_limit=REGEX_BACKTRACK_LIMIT),
        )
    except jsonschema_rs.ValidationError as e:
        where = "".join("/" + str(p) for p in e.instance_path)
        msg = e.message.split("\n", 1)[0]
        raise ValueError(f"invalid JSON Schema{' at ' + where if where else ''}: {msg}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid JSON Schema: {e}") from None


class ValidateConfig(Base):
    """Per-route request validation; the body size limit is the route's ``max_body_size``."""

    # media types a request body may have ("type/subtype" or "type/*"); empty = any,
    # except that with a ``schema`` it means JSON (application/json, application/*+json)
    content_types: list[Annotated[str, Check(_media_range)]] = []
    required_headers: list[HeaderName] = []
    required_query: list[Annotated[str, Check(v.non_empty)]] = []
    schema: dict[str, Any] | bool | None = None
    validate_formats: bool = True
    body_required: bool = False
    max_errors: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.schema is not None:
            try:
                compile_schema(self.schema, validate_formats=self.validate_formats)
            except ValueError as e:
                yield "schema", str(e)


def cors_with_security_headers(root_cfg, route_cfg):
    """The route's effective ``CorsConfig`` when the route also has security headers, else
    None.  Then the security headers' response filter applies CORS's response headers too
    (one sweep of the upstream head and one prebuilt block for both; the cors and
    security_headers middlewares both decide it here, so they always agree)."""
    if route_cfg is None:
        return None
    cors = effective(getattr(root_cfg, "cors", None), getattr(route_cfg, "cors", None))
    if cors is None or effective(getattr(root_cfg, "security_headers", None),
                                 getattr(route_cfg, "security_headers", None)) is None:
        return None
    return cors


def cors_varies(cfg) -> bool:
    """Whether CORS's answer depends on the origin (``Vary: Origin``): not with ``*``."""
    return not any(parse_origin(e)[0] == "any" for e in cfg.allow_origins)
