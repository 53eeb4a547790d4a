"""Authentication and role-based access: JWT, RBAC, identity headers.

What it owns: on every route, the removal of client-sent identity headers (``X-User-Id``,
``X-User-Roles`` and every configured name), so they can never be forged; on routes with
``auth: true`` (or ``roles``), the token check and the role check, and the verified
identity handed upstream.  The token logic itself is ``fastgw.auth`` (pure, tested alone).

Hook contract (``request_filter``):

- returns None to continue, with ``ctx.user``/``ctx.roles``/``ctx.claims`` set and the
  identity headers sent upstream (``ctx.add_request_header``);
- returns a 401 (no token: ``WWW-Authenticate: Bearer``; bad token: ``Bearer
  error="invalid_token", error_description=...``, RFC 6750), a 400 (the token given more
  than once: ``invalid_request``) or a 403 (roles: ``insufficient_scope``), each with the
  problem+json body; nothing goes upstream.

Three classes, chosen by ``build`` so each route pays only for what it uses:

- ``StripIdentity``   non-auth routes: one ``ctx.remove_request_headers`` call;
- ``Auth``            synchronous; static keys (secret, PEM);
- ``JwksAuth``        ``async def request_filter`` when a JWKS is configured: the only
  await is on a token whose ``kid`` no key has (a rate-limited, single-flight refetch);
  every other request completes without suspending, so an engine that drives the
  coroutine with ``send(None)`` never needs a task for it.

Per config generation, one ``AuthState`` (``fastgw.auth.shared``, kept in ``deps.state``)
holds the key ring, the verified-token LRU and the verifiers (one per distinct claim rules), shared by the
routes; JWKS sources live in a per-worker pool shared across reloads (keys and readiness
survive a reload that keeps the source).  ``close()`` on the last middleware of a config
releases its sources.

Readiness: ``ready(deps)`` (module level) or ``mw.ready()`` is False until every JWKS in
use has been fetched once; the runtime ANDs it into ``/readyz`` and ``gateway.health_path``.

Hot path: the downstream protocol captures ``Authorization`` while parsing (``ctx.request.authorization``,
``REPEATED`` when it came more than once), so the usual config (one ``Authorization:
Bearer`` source) needs no header lookup for the token, and forged identity headers are
found by their lengths first (``_forged``: a name of another length is not lower-cased
nor hashed).  Another token source falls back to the header map / one lower-casing scan.  A cache hit
then costs one lookup of the ``Authorization`` value as sent (``Verifier.front``) and two
float compares, the role check one lookup and one ``isdisjoint``, and its counters are
written straight into the metrics store's cells.  When the route's roles do not depend
on the method, the role check is made once per token and route: the route keeps the
values it admitted (``Auth.admitted``, a front of the same cache: bounded, emptied with
it), so a repeat token is one lookup, the exp/nbf compares and the revocation check.
"""

from __future__ import annotations

from fastgw.auth.jwks import all_ready
from fastgw.auth.rbac import Policy
from fastgw.auth.shared import STATE_KEY, STRIP, AuthState, state_for
from fastgw.auth.token import REASONS, AuthFailure, Verifier
from fastgw.clock import wall
from fastgw.config.auth import AuthConfig, RouteAuth
from fastgw.http.cookies import cookie_agreed
from fastgw.http.reqhead import REPEATED
from fastgw.obs.metrics import series_key
from fastgw.pipeline.middleware import Middleware

# names and label sets as declared in fastgw.obs.metrics.METRICS; labels are precomputed
# tuples of pairs (the registry's cell key as is: no per-call conversion)
M_DECISIONS = "fastgw_auth_decisions_total"   # {route, result}
M_CACHE = "fastgw_jwt_cache_total"            # {result: hit | miss}
L_HIT = (("result", "hit"),)
L_MISS = (("result", "miss"),)
_DUP = object()


def _forged(strip: frozenset, lens: frozenset, ctx) -> bool:
    """True if a request header is named in ``strip`` (any case); ``lens`` is the set of
    the names' lengths (``_lengths(strip)``).

    A name whose length is not one of them cannot match, so only those that have one are
    lower-cased and looked up: the usual request's headers (User-Agent, Authorization,
    Origin, ...) cost a ``len`` each, no copy and no hash, which makes this loop cheaper
    than a C-level ``isdisjoint`` over a lower-casing ``map`` (callgrind, 3 to 12 headers).
    A request that forwards no header at all (only Host) is not scanned."""
    for n, _v in ctx.request.headers:
        if len(n) in lens and n.lower() in strip:
            return True
    return False


def _lengths(strip: frozenset) -> frozenset:
    """The lengths of ``strip``'s names (lower-casing keeps a length)."""
    return frozenset(map(len, strip))


class StripIdentity(Middleware):
    """Non-auth routes: remove client-sent identity headers, nothing else."""

    name = "auth"

    def __init__(self, strip: frozenset, deps=None) -> None:
        super().__init__(None, deps)
        self.strip = strip
        self.lens = _lengths(strip)

    def request_filter(self, ctx):
        # (``Auth._check``'s test: this runs on every non-auth route)
        req = ctx.request
        hmap = req.hmap
        if hmap:
            if not self.strip.isdisjoint(hmap):
                ctx.remove_request_headers(self.strip)
        elif hmap is None:
            lens = self.lens
            for n, _v in req.headers:
                if len(n) in lens and n.lower() in self.strip:
                    ctx.remove_request_headers(self.strip)
                    break
        return None


class Auth(Middleware):
    """A route that requires a valid token (and maybe roles); static keys only."""

    name = "auth"

    def __init__(self, state: AuthState, verifier: Verifier, policy: Policy, route: str, deps=None) -> None:
        super().__init__(state.cfg, deps)
        self.state = state
        self.verifier = verifier
        self.policy = policy
        self.route = route
        self.want = state.want
        self.strip = state.strip
        self.lens = _lengths(state.strip)
        self.sources = state.token_sources
        self.max_size = int(state.cfg.max_token_size)
        # the usual config, one header source: scanned inline (prefix b"bearer " or None)
        self.fast = len(self.sources) == 1 and self.sources[0][2] is None
        self.tname = self.sources[0][0]
        self.prefix = self.sources[0][1] if self.fast else None
        self.strip_t = tuple(self.strip)
        # Authorization is a field of the Request: the usual config reads it there
        self.captured = self.fast and self.tname == b"authorization"
        self.drop_token = state.token_headers
        # the usual request's hit: the Authorization value as parsed -> Identity (one
        # lookup; ``Verifier.front``), filled here after a verification passed
        self.front = verifier.front if self.captured else None
        # the usual request's hit, with RBAC already decided: the Authorization value as
        # parsed -> Identity, for the tokens this route admitted on a hit of ``front``,
        # when the roles it needs do not depend on the method and the hit's counters are
        # cells (``_hot``).  A front of the verifier's cache too (bounded, emptied with
        # it); expiry and revocation are still checked on every request.
        self.admitted = verifier.cache.front() if self.front is not None else {}
        self._memo_rbac = self.front is not None and not policy.table
        # RBAC, compiled: method -> roles needed (a frozenset, empty: any valid token;
        # None: denied), and the answer for the other methods (``Policy``'s rules)
        self.need = policy.table
        self.need_default = policy.default
        m = state.metrics
        self._inc = m.inc if m is not None else None
        self._l_ok = (("route", route), ("result", "ok"))
        # With the real registry, the two counters of an admitted cache hit are plain-int
        # accumulators published on the worker's tick (``Metrics.counter``) instead of
        # two ``inc`` calls, and the other counts go straight into the store's cells;
        # cells are registered on first use, so a series appears only once it has
        # counted something, as with ``inc``.  Another metrics object (tests) gets ``inc``.
        store = getattr(m, "store", None)
        self._store = store if store is not None and hasattr(store, "ints") and hasattr(m, "counter") else None
        self._metrics = m
        self._c_hit = self._c_ok = None
        self._hot = None    # (counts, hit counter, ok counter, both) once both exist: the inlined hit
        self._audit_allow = state.cfg.audit_allow and state.audit is not None
        mirror = state.revocations
        self._revoked = mirror.revoked if mirror is not None else None
        self._closed = False
        state.acquire()
        if type(self) is Auth and not verifier.ring.has_jwks:
            # without a JWKS no failure asks for a refetch (``AuthFailure.refetch``), so
            # ``_check`` never answers a tuple: it is the hook itself (one frame less)
            self.request_filter = self._check

    # -- the hook ----------------------------------------------------------------------
    def request_filter(self, ctx):
        r = self._check(ctx)
        if r.__class__ is tuple:  # (token, failure): no JWKS here, so no refetch either
            return self._unauthorized(ctx, r[1])
        return r

    def _check(self, ctx):
        """None (allowed), a Reply, or (token, AuthFailure) when a key refetch may help."""
        if self.captured:
            # The usual config: Authorization is a field of the Request (it stays in
            # its headers and is forwarded), so there is no header lookup here.
            req = ctx.request
            raw = token = req.authorization
            hmap = req.hmap
            if hmap:            # (a fasthead head's prebuilt map: one C set test)
                if not self.strip.isdisjoint(hmap):
                    ctx.remove_request_headers(self.strip)
            elif hmap is None:  # (``_forged`` inlined)
                lens = self.lens
                for n, _v in req.headers:
                    if len(n) in lens and n.lower() in self.strip:
                        ctx.remove_request_headers(self.strip)
                        break
            ident = self.admitted.get(raw)
            if ident is not None:
                # a token this route admitted before: one lookup, then what can change
                # since (exp/nbf against the clock, revocation); RBAC was decided then
                now = wall()
                if ident.nbf_from <= now < ident.exp_until and \
                        (self._revoked is None or not self._revoked(ident.rev, now)):
                    hot = self._hot
                    hot[0][hot[3]] += 1     # (a cache hit and an ok decision: one counter)
                    ctx.user = ident.user
                    ctx.roles = ident.roles
                    ctx.claims = ident.claims
                    if ident.lines:
                        # (``ctx.add_request_lines`` written out: a Python call less per request)
                        ctx.up_lines += ident.lines
                    if self.drop_token:
                        ctx.remove_request_headers(self.drop_token)
                    return None
                del self.admitted[raw]  # expired, not valid yet or revoked: answered below
            front = self.front
            if front is not None:
                ident = front.get(raw)
                if ident is not None:
                    # a token verified before: the cache hit of ``Verifier.cached``
                    # (exp/nbf against the clock) without the scheme check and slicing
                    now = wall()
                    if ident.nbf_from <= now < ident.exp_until:
                        hot = self._hot
                        if hot is not None:
                            # ``_admit`` inlined (no audit of allows, the real registry,
                            # both counter cells registered): the usual request's whole hit
                            counts, j_hit, j_ok, _ = hot
                            counts[j_hit] += 1
                            if self._revoked is None or not self._revoked(ident.rev, now):
                                need = self.need.get(ctx.request.method, self.need_default) \
                                    if self.need else self.need_default
                                if need is not None and not (need and need.isdisjoint(ident.roles)):
                                    ctx.user = ident.user
                                    ctx.roles = ident.roles
                                    ctx.claims = ident.claims
                                    if ident.lines:
                                        ctx.add_request_lines(ident.lines)
                                    if self.drop_token:
                                        ctx.remove_request_headers(self.drop_token)
                                    counts[j_ok] += 1
                                    if self._memo_rbac:
                                        self.admitted[raw] = ident
                                    return None
                                return self._forbidden(ctx, ident)
                            return self._unauthorized(
                                ctx, AuthFailure("revoked", user=ident.user, kid=ident.kid, alg=ident.alg))
                        self._count_hit()
                        if self._revoked is not None and self._revoked(ident.rev, now):
                            return self._unauthorized(
                                ctx, AuthFailure("revoked", user=ident.user, kid=ident.kid, alg=ident.alg))
                        return self._admit(ctx, ident)
                    del front[raw]  # expired (or not valid yet): the full path answers
            if token is None:
                return self._missing(ctx)
            if token is REPEATED:
                return self._duplicate(ctx)
            prefix = self.prefix
            if prefix is not None:
                if token[: len(prefix)].lower() != prefix:
                    return self._missing(ctx)  # another auth scheme (Basic, ...): not our token
                token = token[len(prefix):]
            token = token.strip(b" \t")
        else:
            token = self._find_token(ctx)
            if token is None:
                return self._missing(ctx)
            if token is _DUP:
                return self._duplicate(ctx)
        if len(token) > self.max_size:
            return self._unauthorized(ctx, AuthFailure("too_large", f"{len(token)} bytes"))
        if not token:
            return self._unauthorized(ctx, AuthFailure("malformed", "empty token"))
        v = self.verifier
        now = wall()
        try:
            ident = v.cached(token, now)
            if ident is None:
                if self._inc is not None:
                    self._inc(M_CACHE, L_MISS, 1)
                ident = v.verify(token, now)
            else:
                self._count_hit()
        except AuthFailure as f:
            if f.refetch:
                return (token, f)
            return self._unauthorized(ctx, f)
        if self._revoked is not None and self._revoked(ident.rev, now):
            return self._unauthorized(ctx, AuthFailure("revoked", user=ident.user, kid=ident.kid, alg=ident.alg))
        if self.captured and self.front is not None:
            self.front[raw] = ident
        return self._admit(ctx, ident)

    def _find_token(self, ctx):
        """The token (prefix removed), _DUP or None, from the headers; drops forged identity
        headers.  For a config other than one Authorization source."""
        dirty = False
        if self.fast:
            # the lazy header map.  When no header name repeats (map size == list size),
            # one lookup finds the token and a few membership tests find forged identity
            # headers; otherwise the full scan also detects a repeated token header.
            m = ctx.request.header_map()
            token = m.get(self.tname)
            if len(m) == len(ctx.request.headers):
                for n in self.strip_t:
                    if n in m:
                        dirty = True
                        break
            else:
                token, dirty = self._scan_single(ctx)
            if token is not None and token is not _DUP:
                prefix = self.prefix
                if prefix is not None:
                    if token[: len(prefix)].lower() == prefix:
                        token = token[len(prefix):].strip(b" \t")
                    else:
                        token = None  # another auth scheme (Basic, ...): not our token
                else:
                    token = token.strip(b" \t")
        else:
            want = self.want
            found = None
            for n, v in ctx.request.headers:
                k = want.get(n.lower())
                if k is None:
                    continue
                if k is STRIP:
                    dirty = True
                elif found is None:
                    found = {k: [v]}
                else:
                    found.setdefault(k, []).append(v)
            token = self._token(found) if found is not None else None
        if dirty:
            ctx.remove_request_headers(self.strip)
        return token

    def _scan_single(self, ctx):
        """(token header value or _DUP or None, identity header seen) in one pass."""
        want = self.want
        token = None
        dirty = False
        for n, v in ctx.request.headers:
            k = want.get(n.lower())
            if k is None:
                continue
            if k is STRIP:
                dirty = True
            elif token is None:
                token = v
            else:
                token = _DUP
        return token, dirty

    def _count_hit(self) -> None:
        """Count a token-cache hit (``fastgw_jwt_cache_total{result="hit"}``): a cell of
        the worker's metric slot once it is known, else through the metrics API."""
        if self._store is not None:
            c = self._c_hit
            if c is None:
                c = self._c_hit = self._store.cell(series_key(M_CACHE, L_HIT))
            self._store.ints[c] += 1
        elif self._inc is not None:
            self._inc(M_CACHE, L_HIT, 1)

    def _admit(self, ctx, ident):
        # ``Policy.allows``, inlined: the roles needed for the method, then one set test
        need = self.need.get(ctx.request.method, self.need_default) if self.need else self.need_default
        if need is None or (need and need.isdisjoint(ident.roles)):
            return self._forbidden(ctx, ident)
        ctx.user = ident.user
        ctx.roles = ident.roles
        ctx.claims = ident.claims
        if ident.lines:  # the identity headers, serialised once per verified token
            ctx.add_request_lines(ident.lines)
        if self.drop_token:
            ctx.remove_request_headers(self.drop_token)
        if self._store is not None:
            c = self._c_ok
            if c is None:
                c = self._c_ok = self._store.cell(series_key(M_DECISIONS, self._l_ok))
            self._store.ints[c] += 1
            if self._hot is None and self._c_hit is not None and not self._audit_allow:
                m = self._metrics
                self._hot = (m.counts, m.counter(self._c_hit), m.counter(c), m.counter(self._c_hit, c))
        elif self._inc is not None:
            self._inc(M_DECISIONS, self._l_ok, 1)
        if self._audit_allow:
            self._record(ctx, "allow", 200, "ok", "ok", ident.user, ident.kid, ident.alg, "")
        return None

    def _token(self, found: dict):
        for lname, prefix, cookie in self.sources:
            vals = found.get(lname)
            if not vals:
                continue
            if cookie is not None:
                t = cookie_agreed(vals, cookie, _DUP)
                if t is not None:
                    return t
                continue
            if len(vals) > 1:
                return _DUP
            v = vals[0]
            if prefix is not None:
                if v[: len(prefix)].lower() != prefix:
                    continue  # another auth scheme (Basic, ...): not our token
                v = v[len(prefix):]
            return v.strip(b" \t")
        return None

    # -- answers -------------------------------------------------------------------------
    def _missing(self, ctx):
        self._record(ctx, "deny", 401, "missing", "missing", None, None, None, "")
        return ctx.problem(401, "An access token is required", kind="unauthorized",
                           headers=[(b"www-authenticate", self.state.www_missing)])

    def _duplicate(self, ctx):
        self._record(ctx, "deny", 400, "bad_request", "duplicate", None, None, None, "")
        return ctx.problem(400, "The access token was given more than once", kind="bad_request",
                           headers=[(b"www-authenticate", self.state.www_dup)])

    def _unauthorized(self, ctx, f: AuthFailure):
        result, desc = REASONS[f.reason]
        self._record(ctx, "deny", 401, result, f.reason, f.user, f.kid, f.alg, f.note)
        return ctx.problem(401, desc, kind="unauthorized",
                           headers=[(b"www-authenticate", self.state.www[f.reason])])

    def _forbidden(self, ctx, ident):
        self._record(ctx, "deny", 403, "forbidden", "role", ident.user, ident.kid, ident.alg, "")
        return ctx.problem(403, "The access token lacks a role this route requires", kind="forbidden",
                           headers=[(b"www-authenticate", self.state.www_forbidden)])

    def _record(self, ctx, decision, status, result, reason, user, kid, alg, note) -> None:
        """Metrics and one audit line per decision (never the token)."""
        if self._inc is not None and decision == "deny":
            self._inc(M_DECISIONS, (("route", self.route), ("result", result)), 1)
        audit = self.state.audit
        if audit is None:
            return
        rec = {"ts": wall(), "event": "auth", "decision": decision, "status": status,
               "result": result, "reason": reason, "route": self.route, "method": ctx.request.method,
               "path": ctx.request.path, "client_ip": ctx.client_ip, "request_id": ctx.request_id,
               "user": user}
        if kid is not None:
            rec["kid"] = kid
        if alg is not None:
            rec["alg"] = alg
        if note:
            rec["detail"] = note
        try:
            audit(rec)
        except Exception:  # noqa: BLE001 - an audit sink failure must not fail the request
            if self.state.log is not None:
                self.state.log.exception("audit write failed")

    # -- lifecycle -----------------------------------------------------------------------
    def ready(self) -> bool:
        """False until every JWKS this route uses has been fetched once."""
        return self.verifier.ring.ready

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.state.release()


class JwksAuth(Auth):
    """``Auth`` with JWKS keys: may wait for a key refetch when a token's kid is unknown."""

    async def request_filter(self, ctx):
        r = self._check(ctx)
        if r.__class__ is not tuple:
            return r
        token, f = r
        waits = [w for w in (s.refetch_for_unknown_kid() for s in self.verifier.ring.sources) if w]
        if not waits:
            return self._unauthorized(ctx, f)
        for w in waits:
            await w
        now = wall()
        try:
            ident = self.verifier.verify(token, now)
        except AuthFailure as f2:
            return self._unauthorized(ctx, f2)
        if self._revoked is not None and self._revoked(ident.rev, now):
            return self._unauthorized(ctx, AuthFailure("revoked", user=ident.user, kid=ident.kid, alg=ident.alg))
        return self._admit(ctx, ident)


def build(root_cfg, service_cfg, route_cfg, deps):
    """The auth middleware for a route (``StripIdentity`` when the route needs no token)."""
    if route_cfg is None:
        return None  # the global chain answers locally; nothing is forwarded
    auth_cfg = root_cfg.auth or AuthConfig()
    state = state_for(root_cfg, auth_cfg, deps)
    route_auth = route_cfg.auth
    roles = route_cfg.roles
    name = route_cfg.name or ""
    if not route_auth and not roles:
        return StripIdentity(state.strip, deps)
    # the route's auth rules (a key exists, its roles are declared) are the loader's:
    # fastgw/config/semantics.py
    override = route_auth if isinstance(route_auth, RouteAuth) else auth_cfg.routes.get(name)
    verifier = state.verifier(override)
    cls = JwksAuth if verifier.ring.has_jwks else Auth
    return cls(state, verifier, Policy(roles), name, deps)


def ready(deps=None) -> bool:
    """Readiness of this process's JWKS sources (those in ``deps``' pool when given)."""
    if deps is not None and getattr(deps, "state", None) is not None:
        slot = deps.state.get(STATE_KEY)
        if slot is None:
            return True
        return all(s.ready for s in slot["pool"].sources())
    return all_ready()


def status(deps) -> list[dict]:
    """Per-JWKS status (name, ready, keys, failures, last_error) for admin/readyz detail."""
    slot = (getattr(deps, "state", None) or {}).get(STATE_KEY)
    return [s.status() for s in slot["pool"].sources()] if slot else []
