"""Schema of ``transform`` (issue 25), at gateway, service and route level (L1).

The shape is a contract (tooling outside the repo writes it)::

    transform:
      request:
        strip_prefix: true                     # wildcard routes: drop the literal part before '*'
        path: "/v2/items/{id}"                 # or {regex: '^/a/(.*)$', replacement: '/b/\\1'} (RE2)
        query: {set: {src: gw, user: "$jwt.sub"}, remove: [debug]}   # values: templates, as headers
        headers: {set: {X-User: "$jwt.sub"}, add: {...}, remove: [X-Debug], rename: {X-Old: X-New}}
        body: {set: {"/source": "gateway"}, remove: ["/internal"], rename: {"/a": "/b"}, max_size: 1m}
      response:
        headers: {remove: [Server], set: {X-Served-By: "$worker_pid"}}
        body: {unwrap: "/data", max_size: 1m}  # or wrap: "/data"

Rules kept here, each reported at the path of the bad field:
- header values are templates: text with ``$variable`` references (``VARIABLES``,
  ``$jwt.<claim>``); ``$$`` is a literal ``$``; an unknown variable is an error, and so is
  a control character in the constant text;
- no operation names a hop-by-hop header, ``Host``, ``Content-Length`` or
  ``Transfer-Encoding`` (the gateway frames and routes the message itself), nor, on the
  request, ``X-Forwarded-For/Proto/Host`` (the gateway writes them);
- ``$upstream_addr`` is known only once an upstream answered: response headers only;
- ``unwrap``/``wrap`` are response-only; JSON Pointers are RFC 6901.

The rule that needs the ``auth`` section (no operation writes, renames into or keeps an
identity header) is ``identity_conflicts``, called by ``semantics.crosscheck``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Iterator

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Size

HeaderName = Annotated[str, Check(v.header_name)]

VARIABLES = frozenset(("request_id", "remote_addr", "host", "scheme", "route", "service", "upstream_addr",
                       "worker_pid", "trace_id"))
# "$$" (a literal "$") or "$name" / "$jwt.claim"
TEMPLATE_RE = re.compile(r"\$(\$|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_:\-]+)?)")

# names no transform may touch: the gateway frames, routes and forwards with them
FORBIDDEN = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive",
                       "proxy-connection", "te", "trailer", "upgrade", "proxy-authenticate",
                       "proxy-authorization"))
GATEWAY_SET = frozenset(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"))


def _pointer(p: str) -> str:
    if p != "" and not p.startswith("/"):
        raise ValueError(f"expected a JSON Pointer such as '/a/b', got {p!r}")
    return p


Pointer = Annotated[str, Check(_pointer)]


def _regex(p: str) -> str:
    try:
        import re2  # google-re2: linear time, no backtracking
        re2.compile(p)
    except Exception as e:  # re2.error
        raise ValueError(f"invalid RE2 regex: {e}") from None
    return p


class PathRegexRewrite(Base):
    regex: Annotated[str, Check(_regex)]
    replacement: str  # RE2 groups: \1, \g<name>


class QueryOps(Base):
    set: dict[str, str] = {}   # values are templates, as header values ($request_id, $jwt.sub, ...)
    remove: list[str] = []

    def _check(self) -> Iterator[tuple[str, str]]:
        for k, val in self.set.items():
            for msg in template_errors(val):
                yield f"set.{k}", msg
            if "upstream_addr" in variables(val):
                yield f"set.{k}", "$upstream_addr is known only for response headers"


class HeaderOps(Base):
    set: dict[HeaderName, str] = {}
    add: dict[HeaderName, str] = {}
    remove: list[HeaderName] = []
    rename: dict[HeaderName, HeaderName] = {}

    def names(self) -> Iterator[tuple[tuple, str]]:
        """(relative path, header name) of every name an operation writes or reads."""
        for op in ("set", "add", "rename"):
            for k in getattr(self, op):
                yield (op, k), k
        for i, k in enumerate(self.remove):
            yield ("remove", i), k
        for k, target in self.rename.items():
            yield ("rename", k), target

    def _check(self) -> Iterator[tuple[str, str]]:
        for path, name in self.names():
            if name.lower() in FORBIDDEN:
                yield _rel(path), f"{name!r} is managed by the gateway and cannot be transformed"
        for op in ("set", "add"):
            for k, val in getattr(self, op).items():
                for msg in template_errors(val):
                    yield f"{op}.{k}", msg


class BodyOps(Base):
    set: dict[Pointer, Any] = {}
    remove: list[Pointer] = []
    rename: dict[Pointer, Pointer] = {}
    unwrap: Pointer | None = None  # response only: the body becomes this field's value
    wrap: Pointer | None = None    # response only: the body becomes {"<key>": body}
    max_size: Size = Size(1024 * 1024)

    def _check(self) -> Iterator[tuple[str, str]]:
        for k in (*self.set, *self.remove, *self.rename, *self.rename.values()):
            if k == "":
                yield "", "the whole document ('') cannot be set, removed or renamed: use unwrap/wrap"
        if self.wrap == "":
            yield "wrap", "give a pointer such as '/data'"


class RequestTransform(Base):
    strip_prefix: bool = False
    path: str | PathRegexRewrite | None = None
    query: QueryOps | None = None
    headers: HeaderOps | None = None
    body: BodyOps | None = None

    def _check(self) -> Iterator[tuple[str, str]]:
        p = self.path
        if isinstance(p, str) and not p.startswith("/"):
            yield "path", f"must start with '/', got {p!r}"
        if self.strip_prefix and p is not None:
            yield "strip_prefix", "give strip_prefix or path, not both"
        h = self.headers
        if h is not None:
            for path, name in h.names():
                if name.lower() in GATEWAY_SET:
                    yield "headers." + _rel(path), f"{name!r} is written by the gateway"
            for op in ("set", "add"):
                for k, val in getattr(h, op).items():
                    if "upstream_addr" in variables(val):
                        yield f"headers.{op}.{k}", "$upstream_addr is known only for response headers"
        b = self.body
        if b is not None and (b.unwrap is not None or b.wrap is not None):
            yield "body", "unwrap and wrap apply to response bodies only"


class ResponseTransform(Base):
    headers: HeaderOps | None = None
    body: BodyOps | None = None


class TransformConfig(Base):
    request: RequestTransform | None = None
    response: ResponseTransform | None = None


def _rel(path: tuple) -> str:
    """("remove", 0) -> "remove[0]", ("set", "X-A") -> "set.X-A" (the loader's path syntax)."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def variables(template: str) -> list[str]:
    """The variables a header value template names (``$$`` excluded)."""
    return [m.group(1) for m in TEMPLATE_RE.finditer(template) if m.group(1) != "$"]


def template_errors(template: str) -> Iterator[str]:
    """Why a header value template is refused (nothing when it is valid)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in template):
        yield "control characters (CR, LF, ...) are not allowed in a header value"
    for name in variables(template):
        if name not in VARIABLES and not (name.startswith("jwt.") and len(name) > 4):
            yield f"unknown variable ${name} (known: ${', $'.join(sorted(VARIABLES))}, $jwt.<claim>; $$ is a '$')"
    if "$" in TEMPLATE_RE.sub("", template):
        yield "a '$' that starts no variable: write $$ for a literal '$'"


def identity_conflicts(t: TransformConfig | None, identity: frozenset) -> Iterator[tuple[tuple, str]]:
    """(relative path, message) for every header operation that names an identity header
    (``identity``: lower-case names the gateway sets for upstreams or strips from clients)."""
    if t is None:
        return
    for side in ("request", "response"):
        part = getattr(t, side)
        h = part.headers if part is not None else None
        if h is None:
            continue
        for path, name in h.names():
            if name.lower() in identity:
                yield (side, "headers", *path), (
                    f"{name!r} is an identity header (set by the gateway from a verified token or stripped "
                    "from clients): no transform may write, rename or keep it; use $jwt.<claim> under another name")


__all__ = ["TransformConfig", "RequestTransform", "ResponseTransform", "HeaderOps", "BodyOps", "QueryOps",
           "PathRegexRewrite", "identity_conflicts", "variables", "template_errors"]


def stripped_prefix(root_cfg, service_cfg, route_cfg) -> str | None:
    """The literal path prefix the route's effective ``transform.request.strip_prefix``
    removes (``/api/v1`` of ``/api/v1/*``), or None.  The path rewrite comes whole from the
    most specific level that sets ``strip_prefix`` or ``path`` (the transform middleware
    merges it so); redirect_rewrite reads this to put the prefix back on a Location."""
    if route_cfg is None:
        return None
    chosen = None
    for t in (getattr(getattr(root_cfg, "gateway", None), "transform", None),
              getattr(service_cfg, "transform", None), getattr(route_cfg, "transform", None)):
        r = t.request if t is not None else None
        if r is not None and (r.strip_prefix or r.path is not None):
            chosen = r
    path = route_cfg.path
    if chosen is None or not chosen.strip_prefix or not (isinstance(path, str) and path.endswith("/*")):
        return None
    return path[:-2] or None
