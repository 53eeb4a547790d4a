"""Redirect rewriting for services that do not see the client's Host (L6).

With ``preserve_host: false`` an upstream builds absolute URLs from its own address, so
a ``Location: http://10.0.0.5:8080/app/login`` would send the client past the gateway.
This middleware rewrites the values of ``Location``, ``Content-Location`` and the URL of
``Refresh`` (``5; url=...``), like nginx's default ``proxy_redirect``:

- ``redirect_rewrite: auto`` (the default): a value that starts with an instance's
  origin plus base path (``scheme://host[:port]/base``, the port written or implied),
  followed by ``/``, ``?``, ``#`` or nothing, gets the client's origin instead
  (``<scheme the client used>://<Host the client sent>``; a request without Host gets
  the path alone, a relative reference);
- a list of ``{from, to}``: the first ``from`` the value starts with is replaced by
  its ``to`` (as written; no boundary rule);
- ``off``, or ``preserve_host: true`` (the upstream already sees the client's Host) on a
  route that does not strip a prefix: the middleware is not built, so the route pays
  nothing.

A route whose ``transform.request.strip_prefix`` removes a prefix (``/api/v1`` of
``/api/v1/*``) sends the upstream paths without it, so the upstream's redirects name
paths without it too.  With ``auto`` the prefix is put back, as nginx's ``proxy_redirect``
maps a ``proxy_pass`` URI back to its ``location``: an absolute URL of an instance (or,
with ``preserve_host: true``, of the client's own origin) and a path-absolute reference
(``Location: /items/7``, under the instance's base path) both become the client's
``/api/v1/items/7``.  This is built even with ``preserve_host: true``.  Relative
references (``items/7``) resolve the same on both sides and are left alone.

Every response of a route that has it pays one ``sweep`` that only looks (one regex
over the raw header block, nothing removed); only one that carries one of the three
headers is parsed into a list and rewritten.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastgw.config.transform import stripped_prefix
from fastgw.http.messages import Names
from fastgw.pipeline.middleware import Middleware

_NAMES = frozenset({b"location", b"content-location", b"refresh"})
_WATCH = Names(watch=_NAMES)  # (a sweep that drops nothing: which of them are present)


def _origins(url: str) -> list[bytes]:
    """The prefixes an instance's own URLs start with: with and without its default port."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    default = 443 if scheme == "https" else 80
    port = u.port or default
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    base = (u.path or "").rstrip("/")
    out = [f"{scheme}://{host}:{port}{base}"]
    if port == default:
        out.append(f"{scheme}://{host}{base}")
    return [o.encode("ascii") for o in out]


class RedirectRewrite(Middleware):
    name = "redirect_rewrite"

    def __init__(self, cfg, deps, urls: list[str], prefix: str | None = None, origins: bool = True) -> None:
        super().__init__(cfg, deps)
        # the prefix the route strips (auto only), put back on the upstream's paths
        self.prefix = prefix.encode("latin-1") if prefix and (cfg == "auto" or cfg is True) else None
        # the instances' base paths (longest first): a path-absolute Location is in the
        # upstream's path space, under one of them
        self.bases = tuple(sorted({urlsplit(u).path.rstrip("/").encode("latin-1") for u in urls},
                                  key=len, reverse=True)) or (b"",)
        if cfg == "auto" or cfg is True:
            prefixes = []
            if origins:
                for url in urls:
                    prefixes.extend(_origins(url))
            # longest first: "http://h:80/app" before "http://h:80"
            self.rules = tuple((p.lower(), None) for p in sorted(set(prefixes), key=len, reverse=True))
        else:
            self.rules = tuple((r.from_.encode("latin-1"), r.to.encode("latin-1")) for r in cfg)

    def response_filter(self, ctx, head) -> None:
        if not head.sweep(_WATCH):
            return  # the usual response: no header to rewrite, the head stays unparsed
        hs = head.headers
        for i, (name, value) in enumerate(hs):
            low = name.lower()
            if low not in _NAMES:
                continue
            if low == b"refresh":
                j = value.lower().find(b"url=")
                if j < 0:
                    continue
                new = self._rewrite(ctx, value[j + 4:])
                if new is not None:
                    hs[i] = (name, value[:j + 4] + new)
                continue
            new = self._rewrite(ctx, value)
            if new is not None:
                hs[i] = (name, new)
        head.headers = hs

    def _rewrite(self, ctx, value: bytes):
        low = None
        prefix = self.prefix
        for frm, to in self.rules:
            if to is None:  # auto: an instance origin, then a boundary
                if low is None:
                    low = value.lower()
                if not low.startswith(frm):
                    continue
                rest = value[len(frm):]
                if rest and rest[0] not in b"/?#":
                    continue
                if prefix is not None:
                    return _client_origin(ctx) + prefix + (rest if rest[:1] == b"/" else b"/" + rest)
                return _client_origin(ctx) + (rest or b"/")
            if value.startswith(frm):
                return to + value[len(frm):]
        if prefix is None:
            return None
        if value[:1] == b"/" and value[:2] != b"//":
            return self._path(value)
        origin = _client_origin(ctx)
        if origin and value.lower().startswith(origin.lower()):
            # the client's own origin (the upstream saw its Host): its path as above
            rest = value[len(origin):]
            if not rest or rest[0] in b"/?#":
                new = self._path(rest if rest[:1] == b"/" else b"/" + rest)
                return origin + new if new is not None else None
        return None

    def _path(self, value: bytes):
        """A path-absolute reference in the upstream's path space (under an instance's
        base path) as the client's path: the stripped prefix put back."""
        for base in self.bases:
            rest = value[len(base):]
            if value.startswith(base) and (not rest or rest[0] in b"/?#"):
                return self.prefix + (rest if rest[:1] == b"/" else b"/" + rest)
        return None


def _client_origin(ctx) -> bytes:
    req = ctx.request
    host = req.raw_host
    if not host:
        return b""  # no Host: a relative reference (RFC 9110 10.2.2)
    return (b"https://" if ctx.scheme == "https" else b"http://") + host


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's redirect rewriter, or None (redirect_rewrite off, preserve_host true on
    a route that strips no prefix, or the global chain)."""
    rr = service_cfg.redirect_rewrite if service_cfg is not None else "off"
    if service_cfg is None or rr == "off" or rr is False:
        return None
    prefix = stripped_prefix(root_cfg, service_cfg, route_cfg) if rr == "auto" or rr is True else None
    if service_cfg.preserve_host and prefix is None:
        return None
    return RedirectRewrite(rr, deps, [u.url for u in service_cfg.upstreams()], prefix,
                           origins=not service_cfg.preserve_host)
