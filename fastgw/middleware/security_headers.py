"""Security response headers and removal of headers that leak internals (L6).

What it owns: one ``response_filter`` that, on every response of a route (upstream
responses and the gateway's own replies alike, the global chain's 400/404/405 included),

1. drops ``Server``, ``X-Powered-By`` and the configured ``remove`` names coming from the
   upstream, and the upstream's own copy of every preset the gateway overrides;
2. appends the presets (prebuilt ``(name, value)`` byte tuples, STYLE.md item 6), except
   those listed in ``keep_upstream`` when the upstream already set one;
3. appends ``Strict-Transport-Security`` only when the client's connection is TLS, or a
   trusted proxy says it was with ``X-Forwarded-Proto: https`` (RFC 6797 §7.2: never over
   plain HTTP; an untrusted peer's X-Forwarded-Proto is not believed).

Cost per response: one ``sweep`` (on an upstream head: one regex pass over its raw header
block, which is never parsed into a list) and one append of a prebuilt block (``Lines``).
On an upstream head that edit is a function of its raw block and of the request's
decisions (HSTS; CORS's lines), so it is kept per (block, decisions) in a small memo
(``http.messages.edit_remembered``): an upstream that sends the same head again costs one dict
lookup; on a route that also has CORS, CORS chooses a memo of this edit per request
state, so the usual response makes no call at all (``Middleware.response_block_memo``).

On a route that also has CORS (``config.security.cors_with_security_headers``), this
filter applies CORS's response headers too (cors.py rule 5): CORS's request filter leaves
its decision in ``ctx.notes["cors"]`` and has no response filter.  Then one sweep drops the
upstream's leaking headers and, on a CORS request, its ``Access-Control-*`` ones, and one
prebuilt block carries CORS's lines followed by the presets: per allowed origin, built
the first time it is seen (bounded), ``Vary: Origin`` with the presets for a request
without ``Origin``.  CORS's lines come before the presets, as when each filter added its
own.  It sits early in the chain (after request id and access
log), so its response filter runs late and also sees the local replies of every later
middleware (ip_filter's 403, cors' preflight, auth's 401, a 429).
"""

from __future__ import annotations

from fastgw.config.security import SecurityHeadersConfig, cors_varies, cors_with_security_headers, effective
from fastgw.http.messages import Lines, Names, ResponseHead, edit_remembered
from fastgw.pipeline.middleware import Middleware

_ALWAYS_REMOVED = (b"server", b"x-powered-by")
_HSTS = b"strict-transport-security"
_MAX_COMBOS = 256  # CORS + presets blocks kept per route (one per allowed origin seen)


class SecurityHeaders(Middleware):
    name = "security_headers"

    def __init__(self, cfg: SecurityHeadersConfig, deps=None, cors=None) -> None:
        super().__init__(cfg, deps)
        keep = frozenset(n.lower().encode("ascii") for n in cfg.keep_upstream)
        override: list[tuple[bytes, bytes]] = []
        kept: list[tuple[bytes, tuple[bytes, bytes]]] = []
        for name, value in cfg.header_values():
            pair = (name.lower().encode("ascii"), value.encode("ascii"))
            if pair[0] in keep:
                kept.append((pair[0], pair))
            else:
                override.append(pair)
        self._override = tuple(override)
        self._kept = tuple(kept)
        strip = {*_ALWAYS_REMOVED, *(n.lower().encode("ascii") for n in cfg.remove), *(p[0] for p in override)}
        self._hsts = None
        self._hsts_keep = _HSTS in keep
        if cfg.hsts is not False and cfg.hsts is not True:
            self._hsts = (_HSTS, cfg.hsts.value().encode("ascii"))
            if not self._hsts_keep:
                strip.add(_HSTS)  # never pass on an upstream's HSTS the gateway did not decide
        self._strip = frozenset(strip)
        # what to look for in the upstream's headers: the names to strip, and the
        # keep_upstream presets (and HSTS when kept) whose presence decides what to add
        watch = {lname for lname, _pair in kept}
        if self._hsts_keep:
            watch.add(_HSTS)
        self._names = Names(drop=self._strip, watch=watch)
        # the headers to add when the upstream sent none of the watched names (the usual
        # case: one prebuilt tuple), without and with HSTS
        add = (*override, *(pair for _lname, pair in kept))
        self._add = Lines(add)
        self._add_hsts = Lines((*add, self._hsts)) if self._hsts is not None else self._add
        self._memo: dict = {}   # the edit memo (messages.edit_remembered): (block, decision) -> block
        self._memo_chooser = None   # (``response_block_memo``)
        if cors is not None:
            # CORS's response headers too (module doc): the sweep of a CORS request also
            # drops the upstream's Access-Control-*; the no-Origin block is prebuilt
            self._names_aca = Names(drop=self._strip, watch=watch, prefix=b"access-control-")
            vary = ((b"vary", b"Origin"),) if cors_varies(cors) else ()
            self._vary = Lines(vary) if vary else None
            self._no_origin = Lines((*vary, *self._add.pairs))
            self._no_origin_hsts = Lines((*vary, *self._add_hsts.pairs))
            self._combos: dict = {}       # CORS's Lines -> Lines of it and the presets
            self._combos_hsts: dict = {}  # the same with HSTS
            self.response_filter = self._response_filter_cors
            self.response_block_filter = self._block_filter_cors
            self._memo_chooser = "cors"

    def response_block_memo(self) -> str | None:
        """With CORS, CORS's request filter chooses the memo of this edit per request state
        (cors.py rule 5: the note and whether HSTS applies, all that it reads)."""
        return self._memo_chooser

    def response_filter(self, ctx, head) -> None:
        """Strip leaking/overridden upstream headers, then add the presets."""
        if head.__class__ is ResponseHead and head.parsed is None:
            head.raw = self.response_block_filter(ctx, head.status, head.raw)
            return
        # ctx.scheme is "https" only over TLS or when a trusted proxy's X-Forwarded-Proto
        # says so (the engine resolves it)
        self._apply(head, self._hsts is not None and (ctx.request.tls or ctx.scheme == "https"))

    def response_block_filter(self, ctx, status: int, block: bytes) -> bytes:
        """``response_filter`` on an upstream head's raw block: a function of the block
        and of HSTS (module doc: the edit memo)."""
        hsts = self._hsts is not None and (ctx.request.tls or ctx.scheme == "https")
        key = (block, hsts)
        edited = self._memo.get(key)
        if edited is None:
            edited = edit_remembered(self._memo, key, status, block, self._apply, hsts)
        return edited

    def _apply(self, head, hsts: bool) -> None:
        seen = head.sweep(self._names)
        if not seen:
            head.add_lines(self._add_hsts if hsts else self._add)
            return
        add = list(self._override)
        add.extend(pair for lname, pair in self._kept if lname not in seen)
        if hsts and _HSTS not in seen:
            add.append(self._hsts)
        head.extend(add)

    def _response_filter_cors(self, ctx, head) -> None:
        """``response_filter`` on a route whose CORS left its response headers here."""
        if head.__class__ is ResponseHead and head.parsed is None:
            head.raw = self._block_filter_cors(ctx, head.status, head.raw)
            return
        self._apply_cors(head, ctx.notes.get("cors"),
                         self._hsts is not None and (ctx.request.tls or ctx.scheme == "https"))

    def _block_filter_cors(self, ctx, status: int, block: bytes) -> bytes:
        """``response_block_filter`` on a route whose CORS left its response headers here."""
        note = ctx.notes.get("cors")
        hsts = self._hsts is not None and (ctx.request.tls or ctx.scheme == "https")
        key = (block, note, hsts)    # (``note``: False, or the origin's prebuilt Lines)
        edited = self._memo.get(key)
        if edited is None:
            edited = edit_remembered(self._memo, key, status, block, self._apply_cors, note, hsts)
        return edited

    def _apply_cors(self, head, note, hsts: bool) -> None:
        if note is None or (note is not False and not note.pairs):
            # CORS did not run (a reply made before it) or added nothing (its preflight)
            self._apply(head, hsts)
            return
        if note is False:  # CORS ran, the request had no Origin: its Vary only
            seen = head.sweep(self._names)
            if not seen:
                head.add_lines(self._no_origin_hsts if hsts else self._no_origin)
                return
            pre = self._vary
        else:  # a CORS request: the upstream's own CORS headers go (cors.py rule 4)
            seen = head.sweep(self._names_aca)
            if not seen:
                combos = self._combos_hsts if hsts else self._combos
                both = combos.get(note)
                if both is None:
                    both = Lines((*note.pairs, *(self._add_hsts if hsts else self._add).pairs))
                    if len(combos) < _MAX_COMBOS:
                        combos[note] = both
                head.add_lines(both)
                return
            pre = note
        if pre is not None:
            head.add_lines(pre)
        add = list(self._override)
        add.extend(pair for lname, pair in self._kept if lname not in seen)
        if hsts and _HSTS not in seen:
            add.append(self._hsts)
        head.extend(add)


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's security-header middleware, or None when it is off for it."""
    cfg = effective(root_cfg.security_headers, route_cfg.security_headers if route_cfg is not None else None)
    if cfg is None:
        return None
    return SecurityHeaders(cfg, deps, cors_with_security_headers(root_cfg, route_cfg))
