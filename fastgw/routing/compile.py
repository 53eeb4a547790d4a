"""Compiling one route rule into a matcher record (L3, build time only).

Owns the route-rule grammar and its validation; nothing here runs per request.

Path patterns (always a normalised path, see ``fastgw.http.normalize``):
    ``/a/b``          exact; ``/a/b/`` is another path (a trailing slash is significant)
    ``/a/b/*``        prefix wildcard: ``/a/b/`` and everything under it, NOT ``/a/b``
                      (as nginx's ``location /a/b/``); add an exact ``/a/b`` route for it
    ``/u/{id}/items`` ``{name}`` is one whole, non-empty segment (an identifier name)
    ``/u/{id}/*``     combinations; ``*`` only as the whole last segment
Anything else (``/a*``, ``/x{id}``, ``%61``, ``%2f``, ``//``, ``..``) is refused with
``ValueError`` naming the route, so a rule can never be written in a form that no request
can match; a literal ``%2F`` only on a route with ``allow_encoded_slash``.  (The config
validator ``fastgw.config.validators.route_path`` applies the same grammar at load time.)

Regex paths: ``path: {regex: "^/files/(?P<name>[^/]+)\\.pdf$"}`` (RE2, compiled here once)
must match the whole normalised path (``fullmatch``); named groups are the path
parameters.  They come after every exact and pattern route (router rule 1).

Hosts: ``api.example.com`` (exact), ``[::1]`` (IPv6 literal) or ``*.example.com`` (any
subdomain at any depth, not ``example.com`` itself); lower-cased, no port; ``*`` or empty
means any host.
"""

from __future__ import annotations

from fastgw.errors import GatewayError
from fastgw.http.normalize import normalize_path
from fastgw.routing.conditions import Re2, compile_match

# Canonical order of methods in an Allow header; others follow alphabetically.
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")

LIT, PARAM = 0, 1


class CompiledRoute:
    """One route rule, precomputed for ``Router.match``."""

    __slots__ = (
        "target", "name", "index",
        "prefix",        # str: literal prefix (whole path for exact routes; ends in "/" otherwise)
        "exact",         # bool: no params, no wildcard
        "tail",          # tuple[(LIT, text) | (PARAM, name)]: segments after the prefix
        "ntail",         # int: len(tail)
        "wild",          # bool: ends in "/*"
        "nparams",       # int
        "methods",       # frozenset[str] | None (None: any method)
        "host_exact",    # str | None
        "host_suffix",   # str | None: ".example.com" for "*.example.com"
        "regex",         # compiled RE2 of a ``path: {regex}`` route, else None
        "cond",          # test(RequestView) -> bool of the ``match`` conditions, or None
        "ncond",         # int: number of leaf conditions (rule 1e)
        "cond_key",      # str: the conditions as written (shadowing check)
        "simple",        # bool: no host, no conditions: only the method is checked
        "host_only",     # bool: a host, no match conditions
        "allow_encoded_slash",
        "shape",         # tuple: the pattern after the prefix, as ordered by rule 1c
        "order",         # sort key: (shape, host rank, -conditions, file index)
    )


def _fail(name: str, msg: str) -> ValueError:
    return ValueError(f"route {name!r}: {msg}")


def _parse_path(name: str, path: str, allow_encoded_slash: bool):
    if not isinstance(path, str) or not path.startswith("/"):
        raise _fail(name, f"path must start with '/', got {path!r}")
    try:
        norm, enc = normalize_path(path.encode("ascii"))
    except (UnicodeEncodeError, GatewayError):
        norm, enc = None, False
    if norm != path:
        raise _fail(name, f"path {path!r} is not in normalised form (expected {norm!r})")
    if enc and not allow_encoded_slash:
        raise _fail(name, f"path {path!r} holds %2F, which only a route with "
                          "allow_encoded_slash can receive")
    segs = path.split("/")[1:]
    wild = segs[-1] == "*"
    if wild:
        segs = segs[:-1]
    elems: list[tuple[int, str]] = []
    seen: set[str] = set()
    for s in segs:
        if s.startswith("{") and s.endswith("}") and s[1:-1].isidentifier() and s.isascii():
            if s[1:-1] in seen:
                raise _fail(name, f"parameter {s} appears twice in {path!r}")
            seen.add(s[1:-1])
            elems.append((PARAM, s[1:-1]))
        elif "*" in s or "{" in s or "}" in s:
            raise _fail(name, f"segment {s!r} of {path!r}: '*' must be the whole last segment "
                              "and a parameter a whole segment '{name}'")
        else:
            elems.append((LIT, s))
    nlit = 0
    while nlit < len(elems) and elems[nlit][0] == LIT:
        nlit += 1
    if not wild and nlit == len(elems):
        return path, True, (), False, 0
    prefix = "/" + "".join(text + "/" for _k, text in elems[:nlit])
    return prefix, False, tuple(elems[nlit:]), wild, len(seen)


def _parse_host(name: str, host) -> tuple[str | None, str | None, tuple]:
    if not host or host == "*":
        return None, None, (2,)
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]") and h[1:-1].replace(":", "").replace(".", "").isalnum():
        return h, None, (0,)  # IPv6 literal, as in a Host header
    if not h or not h.replace("*", "").replace(".", "").replace("-", "").replace("_", "").isalnum() \
            or not h.isascii():
        raise _fail(name, f"host {host!r}: give a host name (letters, digits, '.', '-'), "
                          "no port or scheme")
    if h.startswith("*."):
        suffix = h[1:]
        if "*" in suffix or suffix == ".":
            raise _fail(name, f"host {host!r}: only a leading '*.' wildcard is supported")
        return None, suffix, (1, -len(suffix))
    if "*" in h:
        raise _fail(name, f"host {host!r}: only a leading '*.' wildcard is supported")
    return h, None, (0,)


def compile_route(cfg, target, index: int) -> CompiledRoute:
    """Compile ``cfg`` (attributes path, methods, host, match, name) into a ``CompiledRoute``."""
    # ``cfg`` is a RouteConfig from the loader, or a duck-typed stand-in with just the
    # attributes above (tests/routing/test_router.py, bench/micro): optional ones stay getattr
    name = getattr(cfg, "name", None) or f"#{index}"
    r = CompiledRoute()
    r.target = target
    r.name = name
    r.index = index
    r.allow_encoded_slash = bool(getattr(cfg, "allow_encoded_slash", False))
    path = cfg.path
    if isinstance(path, str):
        r.regex = None
        r.prefix, r.exact, r.tail, r.wild, r.nparams = _parse_path(name, path, r.allow_encoded_slash)
    else:  # {regex: ...}
        try:
            r.regex = Re2(path.regex)
        except ValueError as e:
            raise _fail(name, str(e)) from None
        r.prefix, r.exact, r.tail, r.wild, r.nparams = "", False, (), False, r.regex.groups
    r.ntail = len(r.tail)
    methods = getattr(cfg, "methods", None)
    if methods:
        ms = {m.upper() for m in methods}
        if "GET" in ms:
            ms.add("HEAD")  # HEAD is allowed wherever GET is
        r.methods = frozenset(ms)
    else:
        r.methods = None
    r.host_exact, r.host_suffix, host_rank = _parse_host(name, getattr(cfg, "host", None))
    m = getattr(cfg, "match", None)
    try:
        r.cond, r.ncond = compile_match(m)
    except ValueError as e:
        raise _fail(name, str(e)) from None
    r.cond_key = repr(m) if r.cond is not None else ""
    has_host = r.host_exact is not None or r.host_suffix is not None
    r.simple = not has_host and r.cond is None
    r.host_only = has_host and r.cond is None
    # Within one literal prefix: literal < param < wildcard, segment by segment.
    shape = tuple((0, t) if k == LIT else (1, "") for k, t in r.tail) + (((2, ""),) if r.wild else ())
    r.shape = shape
    r.order = (shape, host_rank, -r.ncond, index)
    return r


def allow_header(methods: set[str]) -> bytes:
    """The Allow header value for ``methods`` in canonical order."""
    known = [m for m in METHOD_ORDER if m in methods]
    rest = sorted(m for m in methods if m not in METHOD_ORDER)
    return ", ".join(known + rest).encode("ascii")
