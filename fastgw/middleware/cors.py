"""CORS: answer preflights at the edge and decorate cross-origin responses (L6).

What it owns: the CORS protocol of the Fetch standard for one route (or the global chain),
from a ``CorsConfig`` compiled once into byte strings, a dict of exact origins and, when
the config has wildcard patterns, one anchored regex.

Rules:

1. A request without ``Origin`` costs one attribute read in ``request_filter`` (the
   protocol captures ``Origin`` while parsing, ``ctx.request.origin``); its
   response only gets ``Vary: Origin`` when the answer depends on the origin (Fetch
   §3.2.8 "CORS protocol and HTTP caches": a shared cache must not serve a response made
   for one origin to another, nor one made without ``Origin`` to a CORS request).
2. A preflight (``OPTIONS`` + ``Origin`` + ``Access-Control-Request-Method``; the router
   matches it on path alone) is answered here with 204 and never reaches auth or the
   upstream.  A disallowed origin, method or request header gets 403 (problem+json) with
   no CORS headers, so the browser fails the request.
3. ``Access-Control-Allow-Origin: *`` is sent only without credentials (the config
   refuses ``*`` with credentials); with credentials the origin is echoed, and only when
   allowed.  An origin outside the list gets no CORS headers at all.
4. On a CORS request, the upstream's own ``Access-Control-*`` response headers are
   dropped: the gateway's policy is the only one (two ``Allow-Origin`` values make the
   browser fail the request, and an upstream's ``*`` must not widen the gateway's list).
5. Every response to a request that passed ``request_filter`` gets the headers, local
   replies included (auth's 401, a 429): the engine runs this ``response_filter`` on them.
   On a route that also has security headers (``config.security.cors_with_security_headers``)
   the middleware is ``CorsRequest``, without a response filter: its request filter
   leaves its decision in ``ctx.notes["cors"]`` (the prebuilt ``Lines``; ``False`` for a
   request without ``Origin``) and the security headers' response filter applies it with
   its own presets: one sweep of the upstream head and one append for both.  It also
   chooses the memo of that edit for the request's state (``ctx.usual_edit``: the note
   and whether HSTS applies, what the security headers' edit reads), so the usual
   upstream response costs one dict lookup (``Middleware.response_block_memo``).
   In the global chain (no route: 400/404/405) preflights are not answered, only decorated;
   the engine runs only that chain's response filters, so there the origin is read on the
   way out.
"""

from __future__ import annotations

import re

from fastgw.config.security import CorsConfig, cors_with_security_headers, effective, parse_origin
from fastgw.http.messages import Lines, Names, Reply, ResponseHead, edit_remembered
from fastgw.pipeline.middleware import Middleware

_ACAO = b"access-control-allow-origin"
_ACAC = (b"access-control-allow-credentials", b"true")
_VARY_ORIGIN = (b"vary", b"Origin")
_VARY_PREFLIGHT = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# the upstream's own CORS headers, dropped on a CORS request (rule 4)
_UPSTREAM_CORS = Names(prefix=b"access-control-")
_NOTHING = Lines(())  # the note of a request whose response gets no CORS header
_MAX_ORIGIN = 300  # a serialised origin longer than this is not one we could have listed
_DEFAULT_METHODS = ("GET", "HEAD", "POST")


class Cors(Middleware):
    name = "cors"

    def __init__(self, cfg: CorsConfig, deps=None, *, route_methods=None, answer_preflights: bool = True) -> None:
        Middleware.__init__(self, cfg, deps)  # (shared by CorsRequest, not a subclass)
        self._preflights = answer_preflights
        creds = cfg.allow_credentials
        exact: list[bytes] = []
        patterns: list[str] = []
        any_origin = False
        for entry in cfg.allow_origins:
            kind, val = parse_origin(entry)
            if kind == "any":
                any_origin = True
            elif kind == "exact":
                exact.append(val.encode("ascii"))
            else:
                patterns.append(val)
        if any_origin:
            if creds:
                raise ValueError("cors: allow_origins '*' cannot be combined with allow_credentials")
            exact, patterns = [], []  # '*' covers them, with one answer for every origin

        # headers of an actual (non-preflight) response, after Allow-Origin
        tail: list[tuple[bytes, bytes]] = []
        if creds:
            tail.append(_ACAC)
        if cfg.expose_headers:
            tail.append((b"access-control-expose-headers", ", ".join(cfg.expose_headers).encode("ascii")))
        self._varies = not any_origin  # with '*' the answer is the same for every origin
        if self._varies:
            tail.append(_VARY_ORIGIN)
        self._tail = tuple(tail)
        # what the response gets, prebuilt (``Lines``: pairs and their serialisation)
        self._any = Lines(((_ACAO, b"*"), *tail)) if any_origin else None
        self._exact = {o: Lines(((_ACAO, o), *tail)) for o in exact}
        self._pattern = re.compile(("(?:" + "|".join(patterns) + r")\Z").encode("ascii")).match if patterns else None
        self._denied = Lines((_VARY_ORIGIN,)) if self._varies else _NOTHING
        self._no_origin = self._denied
        self._memo: dict = {}   # response_filter's edit memo: (block, lines) -> block

        # preflight
        methods = [m.upper() for m in cfg.allow_methods] if cfg.allow_methods is not None else None
        if methods is None:
            methods = list(route_methods) if route_methods else list(_DEFAULT_METHODS)
            if "GET" in methods and "HEAD" not in methods:
                methods.append("HEAD")
        self._any_method = "*" in methods
        self._methods = frozenset(m.encode("ascii") for m in methods if m != "*")
        self._any_header = "*" in cfg.allow_headers
        self._headers = frozenset(h.lower().encode("ascii") for h in cfg.allow_headers if h != "*")
        fixed: list[tuple[bytes, bytes]] = []
        if creds:
            fixed.append(_ACAC)
        if not self._any_method:
            fixed.append((b"access-control-allow-methods", ", ".join(m for m in methods).encode("ascii")))
        if not self._any_header and self._headers:
            fixed.append((b"access-control-allow-headers",
                          ", ".join(h for h in cfg.allow_headers).encode("ascii")))
        fixed.append((b"access-control-max-age", str(int(cfg.max_age)).encode("ascii")))
        fixed.append(_VARY_PREFLIGHT if (self._varies or self._any_method or self._any_header) else _VARY_ORIGIN)
        self._pf_fixed = tuple(fixed)

    # -- hooks ----------------------------------------------------------------------

    def answers_preflight(self) -> bool:
        """A route's CORS answers preflights; the global chain's only decorates errors."""
        return self._preflights

    def request_filter(self, ctx):
        """Answer a preflight (204/403); note the CORS headers for the response; else None."""
        req = ctx.request
        origin = req.origin  # (captured while parsing: no header lookup)
        if origin is None:
            return None
        # an origin of the list: its response headers, prebuilt (one dict lookup)
        allowed = self._exact.get(origin)
        if allowed is None:
            allowed = self._allowed(origin)
        if req.method == "OPTIONS" and self._preflights:
            acrm = ctx.header(b"access-control-request-method")
            if acrm is not None:
                ctx.notes["cors"] = _NOTHING  # the reply is complete; add nothing on the way out
                return self._preflight(ctx, origin, allowed, acrm)
        ctx.notes["cors"] = allowed if allowed is not None else self._denied
        return None

    def response_filter(self, ctx, head) -> None:
        """Add the headers decided in ``request_filter`` (``Vary: Origin`` when there was no Origin)."""
        add = ctx.notes.get("cors")
        if add is None:
            if not self._preflights:
                # global chain: the engine runs only its response filters on a 400/404/405,
                # so the origin is looked at here (once, on an error path)
                origin = ctx.request.origin
                add = self._no_origin if origin is None else (self._allowed(origin) or self._denied)
            else:
                add = self._no_origin
            if add is self._no_origin:
                if add is not _NOTHING:
                    head.add_lines(add)
                return
        if add is _NOTHING:
            return
        if head.__class__ is ResponseHead and head.parsed is None:
            head.raw = self._edit(head.raw, add)
            return
        _replace_cors(head, add)

    def response_block_filter(self, ctx, status: int, block: bytes) -> bytes:
        """``response_filter`` on an upstream head's raw block."""
        add = ctx.notes.get("cors")
        if add is None or add is _NOTHING:  # (not the usual: the general path, on a head)
            head = ResponseHead(status, b"", raw=block)
            self.response_filter(ctx, head)
            return head.raw
        return self._edit(block, add)

    def _edit(self, block: bytes, add: Lines) -> bytes:
        """``block`` without the upstream's CORS headers, with ``add``: a function of the
        two, kept in the edit memo (``http.messages.edit_remembered``)."""
        key = (block, add)
        edited = self._memo.get(key)
        if edited is None:
            edited = edit_remembered(self._memo, key, 0, block, _replace_cors, add)
        return edited

    # -- helpers --------------------------------------------------------------------

    def _allowed(self, origin: bytes):
        """The actual-response headers (``Lines``) for an allowed ``origin``, else None."""
        hit = self._exact.get(origin)
        if hit is not None:
            return hit
        if self._any is not None:
            return self._any
        if self._pattern is not None and len(origin) <= _MAX_ORIGIN and self._pattern(origin):
            return Lines(((_ACAO, origin), *self._tail))
        return None

    def _preflight(self, ctx, origin: bytes, allowed, acrm: bytes) -> Reply:
        if allowed is None:
            return self._refuse(ctx, "origin is not allowed")
        method = acrm.strip()
        if not _TOKEN.match(method):
            return self._refuse(ctx, "invalid Access-Control-Request-Method")
        if not self._any_method and method not in self._methods:
            return self._refuse(ctx, f"method {method.decode('latin-1')} is not allowed")
        hs = [(_ACAO, b"*" if allowed is self._any else origin)]
        hs.extend(self._pf_fixed)
        if self._any_method:
            hs.append((b"access-control-allow-methods", method))
        acrh = ctx.header(b"access-control-request-headers")
        if acrh:
            names = [n.strip().lower() for n in acrh.split(b",")]
            names = [n for n in names if n]
            for n in names:
                if not _TOKEN.match(n):
                    return self._refuse(ctx, "invalid Access-Control-Request-Headers")
                if not self._any_header and n not in self._headers:
                    return self._refuse(ctx, f"request header {n.decode('latin-1')} is not allowed")
            if self._any_header and names:
                hs.append((b"access-control-allow-headers", b", ".join(names)))
        return Reply(204, hs, kind="")

    @staticmethod
    def _refuse(ctx, why: str) -> Reply:
        ctx.flags.append("cors_denied")
        return ctx.problem(403, f"CORS preflight refused: {why}", kind="forbidden")


class CorsRequest(Middleware):
    """``Cors`` whose response headers the route's security headers apply (rule 5): the
    same request side, which also notes a request without Origin (``False``) and chooses
    the memo of the usual response's edit; no response filter.  A direct Middleware
    subclass sharing Cors's functions (STYLE: one level of inheritance)."""

    name = "cors"
    answers_preflight = Cors.answers_preflight
    _allowed = Cors._allowed
    _preflight = Cors._preflight
    _refuse = Cors.__dict__["_refuse"]

    def __init__(self, cfg: CorsConfig, deps=None, *, route_methods=None, answer_preflights: bool = True) -> None:
        Cors.__init__(self, cfg, deps, route_methods=route_methods, answer_preflights=answer_preflights)
        # The usual upstream response's edit (the security headers' sweep and block) is
        # remembered per state of the request that it depends on
        # (``Middleware.response_block_memo``): the note (one per origin of the list, the
        # denied one, no Origin) and whether the connection counts as secure (HSTS: TLS,
        # or a trusted ``X-Forwarded-Proto: https``): a pair of memos (plain, secure) per
        # note.  An origin allowed by a pattern gets a note of its own each time: no
        # memo, the filter runs.  ``_usual``: origin of the list -> (its note, its pair),
        # or with ``*`` allowed, nothing (``_any_usual`` holds the one answer's).
        self._usual = {o: (note, ({}, {})) for o, note in self._exact.items()}
        self._any_usual = (self._any, ({}, {})) if self._any is not None else None
        self._denied_usual = (self._denied, ({}, {}))
        self._no_origin_edits = ({}, {})

    def request_filter(self, ctx):
        """``Cors.request_filter``, and the memo of the usual response's edit for the
        request's state (``ctx.usual_edit``)."""
        req = ctx.request
        origin = req.origin  # (captured while parsing: no header lookup)
        if origin is None:
            ctx.notes["cors"] = False   # (for the security headers: Vary only)
            ctx.usual_edit = self._no_origin_edits[req.tls or ctx.scheme == "https"]
            return None
        if req.method == "OPTIONS" and self._preflights:
            acrm = ctx.header(b"access-control-request-method")
            if acrm is not None:
                ctx.notes["cors"] = _NOTHING  # the reply is complete; add nothing on the way out
                return self._preflight(ctx, origin, self._allowed(origin), acrm)
        # an origin of the list: its note and memos, prebuilt (one dict lookup)
        usual = self._usual.get(origin)
        if usual is None:
            usual = self._any_usual
            if usual is None:
                allowed = self._allowed(origin)
                if allowed is not None:   # by a pattern: a note of its own, no memo
                    ctx.notes["cors"] = allowed
                    return None
                usual = self._denied_usual
        ctx.notes["cors"] = usual[0]
        ctx.usual_edit = usual[1][req.tls or ctx.scheme == "https"]
        return None


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's CORS middleware, or None when CORS is off for it."""
    cfg = effective(root_cfg.cors, route_cfg.cors if route_cfg is not None else None)
    if cfg is None:
        return None
    cls = CorsRequest if cors_with_security_headers(root_cfg, route_cfg) is not None else Cors
    return cls(cfg, deps, route_methods=route_cfg.methods if route_cfg is not None else None,
               answer_preflights=route_cfg is not None)


def _replace_cors(head, add: Lines) -> None:
    """The upstream's CORS headers out, this request's in."""
    head.sweep(_UPSTREAM_CORS)
    head.add_lines(add)
