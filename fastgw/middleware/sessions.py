"""The refresh and logout endpoints (issue 27): ``auth.refresh.path``, ``auth.logout.path``.

What it owns: two local endpoints the runtime adds as routes of their own (``routes``),
answered here and never forwarded.  Token logic is ``fastgw.auth.sessions`` (pure); the
shared state is the region's revocation table (``fastgw.shm.revocation``).

Refresh (``POST``; JSON body ``{"refresh_token": ...}``, or the refresh cookie when
``auth.refresh.cookie``), in this order:

1. the endpoint's own rate limit (per client IP, shared by the workers): 429;
2. the refresh token: signature with ``auth.refresh.key``, ``typ: refresh+jwt``, the
   refresh audience, ``exp``, the session's absolute lifetime; not revoked (jti, sid,
   sub-before): else 401 ``invalid_grant``;
3. check-and-rotate, one step under the table's lock (``RevocationTable.rotate``): a
   first presentation rotates it now; a second within ``reuse_grace`` of the first gets the
   same pair again (``mint_pair`` is a function of the token and the rotation time);
   later is reuse: the session is revoked (audited) and the answer is 401.  When the
   rotations' share of the table is full: 503 and ``fastgw_session_rotations_refused_total``
   (revocations keep their reserved share);
4. 200 with ``{"access_token", "refresh_token", "token_type": "Bearer", "expires_in"}``
   (RFC 6749 §5.1, ``Cache-Control: no-store``), or in cookie mode the two tokens as
   ``HttpOnly; Secure; SameSite=Strict`` cookies and a body without them.

Logout (``POST``): the session of the presented token (a Bearer access token signed with
``jwt_secret``, or the refresh token in the body or cookie) is revoked; 204 (cookies
cleared in cookie mode).
"""

from __future__ import annotations

import time

import jwt
import orjson

from fastgw.auth.sessions import Keys, RefreshError, mint_pair, session_end, verify_refresh
from fastgw.auth.token import rev_key
from fastgw.config.routes import RouteConfig
from fastgw.http.messages import Reply
from fastgw.pipeline.middleware import Middleware
from fastgw.shm.revocation import RotFull, mirror_for

M_REFRESH = "fastgw_session_refresh_total"
M_REFUSED = "fastgw_session_rotations_refused_total"
M_LOGOUT = "fastgw_session_logout_total"
REFRESH_ROUTE = "fastgw-auth-refresh"
LOGOUT_ROUTE = "fastgw-auth-logout"
_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
_WWW = (b"www-authenticate", b'Bearer error="invalid_token"')


def routes(root_cfg) -> list[RouteConfig]:
    """The endpoint routes the config asks for (the runtime adds them before the services')."""
    auth = root_cfg.auth
    out = []
    if auth is not None and auth.refresh is not None:
        out.append(RouteConfig(path=auth.refresh.path, name=REFRESH_ROUTE, methods=["POST"]))
    if auth is not None and auth.logout is not None:
        out.append(RouteConfig(path=auth.logout.path, name=LOGOUT_ROUTE, methods=["POST"]))
    return out


def _cookie(ctx, name: bytes):
    for n, v in ctx.request.headers:
        if n.lower() == b"cookie":
            for part in v.split(b";"):
                k, sep, val = part.strip().partition(b"=")
                if sep and k == name:
                    return val.strip().strip(b'"').decode("latin-1")
    return None


class SessionEndpoint(Middleware):
    """One endpoint (refresh or logout): answers every request locally."""

    name = "sessions"

    def __init__(self, auth, logout: bool, deps) -> None:
        super().__init__(auth, deps)
        self.auth = auth
        self.logout = logout
        self.keys = Keys(auth)
        r = auth.refresh
        self.cookie = r is not None and r.cookie
        self.cookie_names = tuple(n.encode() for n in r.cookie_names) if r is not None else (b"", b"")
        self.grace = float(r.reuse_grace) if r is not None else 0.0
        self.limit = r.rate_limit if r is not None and not logout else None
        # deps (and its shm) may be None or a test's stand-in: not config Structs
        shm = getattr(deps, "shm", None)
        self.table = getattr(shm, "revocation", None)
        self.rl = getattr(shm, "ratelimit", None)
        if self.table is not None and self.table.slots:
            self.table.rot_cap = int(self.table.slots * (1 - auth.revocation.reserved))
        else:
            self.table = None
        self.mirror = mirror_for(deps)
        self.metrics = getattr(deps, "metrics", None)
        self.audit = getattr(deps, "audit", None)
        self.log = getattr(deps, "log", None)
        self.retention = float(auth.revocation.retention)
        self.sync = getattr(deps, "revocation_sync", None)

    # -- hooks ------------------------------------------------------------------------
    def request_filter(self, ctx):
        if self.limit is not None and self.rl is not None:
            lim = self.limit
            d = self.rl.check(b"fastgw-refresh:" + ctx.client_ip.encode(), lim.requests_per_second,
                              lim.burst, time.monotonic_ns())
            if not d[0]:
                self._count(M_REFRESH, "limited")
                return ctx.problem(429, "Too many refresh calls from this address", kind="rate_limited",
                                   headers=[(b"retry-after", str(max(1, int(d[3] + 0.999))).encode())])
        if self.cookie or self.logout and _bearer(ctx) is not None:
            return self._answer(ctx, None)
        return None         # the token is in the JSON body: request_body_filter

    def needs_body(self) -> bool:
        return True

    def request_body_filter(self, ctx, body: bytes):
        token = None
        if body:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                return self._bad(ctx, "the body is not JSON")
            if not isinstance(doc, dict):
                return self._bad(ctx, 'the body is not a JSON object {"refresh_token": ...}')
            token = doc.get("refresh_token")
            if token is not None and not isinstance(token, str):
                return self._bad(ctx, "refresh_token: a string")
        return self._answer(ctx, token)

    # -- the two endpoints -------------------------------------------------------------
    def _answer(self, ctx, token):
        if token is None and self.cookie:
            token = _cookie(ctx, self.cookie_names[1])
        if self.logout:
            return self._logout(ctx, token)
        if not token:
            return self._bad(ctx, "refresh_token is required")
        return self._refresh(ctx, token)

    def _refresh(self, ctx, token: str):
        now = time.time()
        try:
            claims = verify_refresh(self.keys, token, now)
        except RefreshError as e:
            return self._deny(ctx, "invalid", e.reason)
        if self._revoked(claims, now):
            return self._deny(ctx, "revoked", "session revoked")
        if self.table is None:
            return ctx.problem(503, "No revocation table in this process", kind="unavailable")
        exp = float(claims["exp"]) + self.keys.leeway
        try:
            first = self.table.rotate(claims["jti"], exp, now)
        except RotFull:
            self._count(M_REFRESH, "full")
            if self.metrics is not None:
                self.metrics.inc(M_REFUSED, (), 1)
            if self.log is not None:
                self.log.error("refresh refused: the rotations' share of the revocation table is full "
                               "(auth.revocation.max_entries)")
            return ctx.problem(503, "Refresh is unavailable: the session table is full", kind="unavailable",
                               headers=[(b"retry-after", b"60")])
        result = "ok"
        if first is None:
            at = now
        elif now - first <= self.grace:
            at, result = first, "grace"
        else:
            end = session_end(self.keys, claims)
            self.revoke("sid", claims["sid"], end)
            self._record(ctx, "reuse", 401, claims, "a rotated refresh token was presented again: "
                                                    "session revoked")
            return self._deny(ctx, "reuse", "refresh token reused", audit=False)
        access, refresh, ttl = mint_pair(self.keys, claims, at)
        self._count(M_REFRESH, result)
        if self.cookie:
            a, r = self.cookie_names
            sec = b"; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age="
            rmax = max(int(session_end(self.keys, claims) - now), 0)
            headers = _JSON + [(b"set-cookie", a + b"=" + access.encode() + sec + str(ttl).encode()),
                               (b"set-cookie", r + b"=" + refresh.encode() + sec + str(rmax).encode())]
            body = {"token_type": "Bearer", "expires_in": ttl}
        else:
            headers = list(_JSON)
            body = {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                    "expires_in": ttl}
        return Reply(200, headers, orjson.dumps(body))

    def _logout(self, ctx, token):
        now = time.time()
        claims = None
        bearer = _bearer(ctx)
        if bearer is not None:
            try:
                claims = jwt.decode(bearer, self.auth.jwt_secret or "", algorithms=list(self.auth.algorithms),
                                    leeway=float(self.auth.leeway),
                                    options={"verify_aud": False, "require": ["exp", "sid"]})
                h = jwt.get_unverified_header(bearer).get("typ")
                if isinstance(h, str) and h.lower().endswith("refresh+jwt"):
                    claims = None
            except jwt.PyJWTError:
                claims = None
        elif token:
            try:
                claims = verify_refresh(self.keys, token, now)
            except RefreshError:
                claims = None
        if claims is None or not isinstance(claims.get("sid"), str) or not claims["sid"]:
            self._count(M_LOGOUT, "invalid")
            return ctx.problem(401, "A valid access or refresh token of the session is required",
                               kind="unauthorized", headers=[_WWW])
        end = session_end(self.keys, claims) if "iat" in claims else now + self.retention
        self.revoke("sid", claims["sid"], max(end, float(claims.get("exp", 0))))
        self._count(M_LOGOUT, "ok")
        self._record(ctx, "logout", 204, claims, "session revoked")
        headers = [(b"cache-control", b"no-store")]
        if self.cookie:
            for n in self.cookie_names:
                headers.append((b"set-cookie", n + b"=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"))
        return Reply(204, headers, b"")

    # -- helpers ------------------------------------------------------------------------
    def revoke(self, kind: str, key: str, expiry: float, before: float = 0.0) -> None:
        if self.table is not None and not self.table.revoke(kind, key, expiry, before):
            if self.log is not None:
                self.log.error("revocation table full of live revocations: %s not recorded", kind)
        if self.sync is not None:
            self.sync.publish(kind, key, expiry, before)

    def _revoked(self, claims: dict, now: float) -> bool:
        m = self.mirror
        if m is None:
            return False
        rev = (rev_key(claims["jti"]), rev_key(claims["sid"]), rev_key(claims["sub"]), claims["iat"])
        return m.revoked(rev, now)

    def _bad(self, ctx, detail: str):
        self._count(M_LOGOUT if self.logout else M_REFRESH, "invalid")
        return ctx.problem(400, detail, kind="bad_request", extra={"error": "invalid_request"})

    def _deny(self, ctx, result: str, detail: str, audit: bool = True):
        self._count(M_REFRESH, result)
        return ctx.problem(401, "The refresh token is not accepted", kind="unauthorized",
                           headers=[_WWW], extra={"error": "invalid_grant", "reason": detail})

    def _count(self, name: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, (("result", result),), 1)

    def _record(self, ctx, event: str, status: int, claims: dict, detail: str) -> None:
        if self.audit is None:
            return
        rec = {"ts": time.time(), "event": "session", "action": event, "status": status,
               "sub": claims.get("sub"), "sid": claims.get("sid"), "client_ip": ctx.client_ip,
               "request_id": ctx.request_id, "detail": detail}
        try:
            self.audit(rec)
        except Exception:  # noqa: BLE001 - an audit sink failure must not fail the request
            if self.log is not None:
                self.log.exception("audit write failed")


def _bearer(ctx):
    a = ctx.request.authorization
    if a is None or a.__class__ is not bytes or a[:7].lower() != b"bearer ":
        return None
    return a[7:].strip().decode("latin-1")


def build(root_cfg, service_cfg, route_cfg, deps):
    """The endpoint middleware of a session route (``routes``); None elsewhere."""
    name = route_cfg.name if route_cfg is not None else None  # None: the global chain
    if service_cfg is not None or name not in (REFRESH_ROUTE, LOGOUT_ROUTE):
        return None
    return SessionEndpoint(root_cfg.auth, name == LOGOUT_ROUTE, deps)
