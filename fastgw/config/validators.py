"""Field checks used with ``Check(fn)`` in the schema modules (L1).

Each function takes an already-decoded value, returns it (normalised where the docstring
says so) or raises ``ValueError`` with a message that reads well after ``"<path>: "``.
Nothing here knows where a value sits in the file; paths are the walker's job.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

# Methods a route may list.  TRACE and CONNECT are known but refused (see METHOD_REFUSED).
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
METHOD_REFUSED = {
    "TRACE": "TRACE is not proxied (it echoes credentials back: cross-site tracing)",
    "CONNECT": "CONNECT is not supported: fastgw is a reverse proxy, not a forward proxy",
}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,99}")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def name(v: str) -> str:
    """A service key or route name: used in paths, logs and metric labels."""
    if not _NAME_RE.fullmatch(v):
        raise ValueError(
            f"invalid name {v!r}: use letters, digits, '-' and '_', starting with a letter or digit (at most 100)"
        )
    return v


def roles_key(v: str) -> str:
    """A key of a route's roles map: an HTTP method (upper-cased) or '*' (any other method)."""
    return v if v == "*" else http_method(v)


def http_method(v: str) -> str:
    """Upper-cased HTTP method; unknown ones are errors."""
    m = v.upper()
    if m in METHOD_REFUSED:
        raise ValueError(METHOD_REFUSED[m])
    if m not in METHODS:
        raise ValueError(f"unknown method {v!r}")
    return m


def header_name(v: str) -> str:
    """A valid header field name, kept as written."""
    if not _TOKEN_RE.fullmatch(v):
        raise ValueError(f"invalid header name {v!r}")
    return v


def header_name_lower(v: str) -> str:
    """A valid header field name, lower-cased."""
    return header_name(v).lower()


def header_value(v: str) -> str:
    """A header value without control characters or surrounding whitespace."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in v) or v != v.strip():
        raise ValueError("invalid header value: control characters or leading/trailing whitespace")
    if not v:
        raise ValueError("must not be empty")
    return v


def non_empty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


def cidr(v: str) -> str:
    """An IPv4/IPv6 network ('10.0.0.0/8') or address; stored as written."""
    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError:
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"invalid CIDR {v!r}: expected an address or network like '10.0.0.0/8'") from None
        raise ValueError(f"invalid CIDR {v!r}: host bits set (did you mean '{net}'?)") from None
    return v


def http_url(v: str) -> str:
    """``http://`` or ``https://`` host[:port][/base-path], no credentials, query or fragment."""
    try:
        u = urlsplit(v)
        port = u.port
    except ValueError as e:
        raise ValueError(f"invalid URL {v!r}: {e}") from None
    if u.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL like 'http://host:8080', got {v!r}")
    if not u.hostname:
        raise ValueError(f"invalid URL {v!r}: no host")
    if u.username is not None or u.password is not None:
        raise ValueError("invalid URL: credentials in the URL are not supported")
    if u.query or u.fragment or "?" in v or "#" in v:
        raise ValueError(f"invalid URL {v!r}: a query or fragment is not allowed")
    if port == 0:
        raise ValueError(f"invalid URL {v!r}: port 0")
    if u.path and not u.path.startswith("/"):
        raise ValueError(f"invalid URL {v!r}: bad path")
    if any(c in v for c in " \t\r\n\\"):
        raise ValueError(f"invalid URL {v!r}: whitespace or backslash")
    return v


def url_or_path(v: str) -> str:
    """A full http(s) URL, or a path starting with '/' (relative to the service URL)."""
    if v.startswith("/"):
        return simple_path(v)
    try:
        return http_url(v)
    except ValueError:
        raise ValueError(f"expected an http(s) URL or a path starting with '/', got {v!r}") from None


def simple_path(v: str) -> str:
    """A literal absolute path (no wildcard, no parameters)."""
    if not v.startswith("/"):
        raise ValueError(f"must start with '/', got {v!r}")
    if any(c in v for c in "*{}?# \t\r\n\\;"):
        raise ValueError(f"invalid path {v!r}: only a literal path is allowed here")
    return v


def route_path(v: str) -> str:
    """Route path syntax: exact '/a/b', prefix '/a/*', parameter segments '/a/{id}'."""
    if not v.startswith("/"):
        raise ValueError(f"must start with '/', got {v!r}")
    if "?" in v or "#" in v:
        raise ValueError(f"invalid path {v!r}: a query or fragment is not part of a route path (use match.query)")
    segments = v[1:].split("/")
    params: set[str] = set()
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "*":
            if not last:
                raise ValueError(f"invalid path {v!r}: '*' is only allowed as the last segment, as in '/api/*'")
            continue
        if seg == "" and not last:
            raise ValueError(f"invalid path {v!r}: empty segment ('//')")
        if seg in (".", ".."):
            raise ValueError(f"invalid path {v!r}: dot segments are not allowed")
        if "{" in seg or "}" in seg:
            m = _PARAM_RE.fullmatch(seg)
            if not m:
                raise ValueError(
                    f"invalid path {v!r}: a parameter is a whole segment named like '{{id}}', got {seg!r}"
                )
            if m.group(1) in params:
                raise ValueError(f"invalid path {v!r}: parameter {m.group(1)!r} appears twice")
            params.add(m.group(1))
            continue
        if "*" in seg:
            raise ValueError(f"invalid path {v!r}: '*' is only allowed as the whole last segment, as in '/api/*'")
        _check_pchars(v, seg)
    return v


def _check_pchars(v: str, seg: str) -> None:
    """Literal segment chars as the normaliser leaves them (fastgw.http.normalize, rules 2-3)."""
    pos = 0
    while pos < len(seg):
        c = seg[pos]
        if c == "%":
            hx = seg[pos + 1 : pos + 3]
            if len(hx) != 2 or not all(h in "0123456789ABCDEFabcdef" for h in hx):
                raise ValueError(f"invalid path {v!r}: '%' must start an escape like '%20'")
            ch = chr(int(hx, 16))
            if ch in _UNRESERVED:
                raise ValueError(f"invalid path {v!r}: %{hx} encodes {ch!r}; write it decoded (paths are normalised)")
            if ord(ch) < 0x20 or ord(ch) == 0x7F or ch in "\\;":
                raise ValueError(f"invalid path {v!r}: %{hx} is refused in every request path")
            if hx != hx.upper():
                raise ValueError(f"invalid path {v!r}: write %{hx.upper()} (escapes are normalised to upper case)")
            pos += 3
            continue
        if not (0x21 <= ord(c) < 0x7F) or c in "\\;#":
            raise ValueError(f"invalid path {v!r}: character {c!r} is not allowed in a route path")
        pos += 1


def host_pattern(v: str) -> str | None:
    """A host name or '*.' wildcard (any subdomain), no port; lower-cased. '*' = any host (None)."""
    h = v.strip().lower().rstrip(".")
    if h == "*":
        return None
    name_part = h[2:] if h.startswith("*.") else h
    try:
        ipaddress.IPv4Address(name_part)
        return h
    except ValueError:
        pass
    if ":" in h or "/" in h:
        raise ValueError(f"invalid host {v!r}: give a host name without port or scheme")
    labels = name_part.split(".")
    if not name_part or len(name_part) > 253 or not all(_LABEL_RE.fullmatch(lb) for lb in labels):
        raise ValueError(f"invalid host {v!r}: expected a host name like 'api.example.com' or '*.example.com'")
    return h


def hostname(v: str) -> str:
    """A plain host name or IPv4 address (no wildcard, no port); lower-cased."""
    if "*" in v:
        raise ValueError(f"invalid host name {v!r}: no wildcard here")
    h = host_pattern(v)
    assert h is not None
    return h


def host_port(v: str) -> str:
    """A Host header value: a host name, IPv4 or bracketed IPv6 address, optional ``:port``."""
    h, sep, port = v.rpartition(":") if not v.endswith("]") else (v, "", "")
    if not sep or "]" in port:
        h, port = v, ""
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid port in {v!r}")
    if h.startswith("[") and h.endswith("]"):
        import ipaddress
        try:
            ipaddress.IPv6Address(h[1:-1])
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {v!r}") from None
        return v
    hostname(h)
    return v


def log_level(v: str) -> str:
    lv = v.lower()
    if lv not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected one of 'debug', 'info', 'warning', 'error', got {v!r}")
    return lv


def power_of_two(v: int) -> int:
    if v < 1 or v & (v - 1):
        raise ValueError(f"must be a power of two, got {v}")
    return v
