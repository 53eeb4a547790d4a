"""Refresh tokens: verification and the deterministic minting of a rotated pair (issue 27).

Pure functions; the endpoint (``fastgw.middleware.sessions``) owns the request, the shared
table and the answers.  The session model and the login service's contract are in
docs/auth.md; in short:

- a refresh token is an HS256 JWS with header ``typ: refresh+jwt``, ``aud`` the refresh
  audience, claims ``sub``, ``sid``, ``jti``, ``iat``, ``exp`` and optionally
  ``auth_time`` (the session's start; default its ``iat``), signed with
  ``auth.refresh.key`` (``jwt_secret`` when unset);
- rotating it at time ``at`` yields one access token and one refresh token whose ``jti``
  are HMACs of the old ``jti`` and whose ``iat`` is ``int(at)``: the pair is a pure
  function of (old token, ``at``), so any worker on any host answers a duplicate within
  ``reuse_grace`` with the very same pair from the time of the first rotation alone,
  without storing tokens;
- nothing outlives the session: every ``exp`` is capped at ``auth_time +
  session_max_lifetime``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import jwt

from fastgw.auth.token import REFRESH_TYP

REFRESH_ALG = "HS256"
# claims that belong to one token, never carried over into the next one
_OWN = frozenset(("aud", "exp", "iat", "nbf", "jti", "typ"))
DEFAULT_ACCESS_TTL = 900.0


class RefreshError(Exception):
    """A refresh token that is not accepted (``reason`` for logs and the answer)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Keys:
    """Everything minting and verification need, computed once per config."""

    __slots__ = ("refresh_key", "access_key", "access_alg", "audience", "access_aud", "issuer",
                 "access_typ", "access_ttl", "refresh_ttl", "max_lifetime", "leeway")

    def __init__(self, auth) -> None:
        r = auth.refresh
        self.refresh_key = (r.key if r is not None and r.key is not None else auth.jwt_secret) or ""
        self.access_key = auth.jwt_secret or ""
        self.access_alg = auth.algorithms[0]
        self.audience = r.audience if r is not None else "fastgw-refresh"
        aud = auth.audience
        self.access_aud = (aud if isinstance(aud, str) else aud[0]) if aud else None
        iss = auth.issuer
        self.issuer = (iss if isinstance(iss, str) else iss[0]) if iss else None
        self.access_typ = auth.typ or "JWT"
        self.access_ttl = float(auth.token_expiry) if auth.token_expiry is not None else DEFAULT_ACCESS_TTL
        self.max_lifetime = float(r.session_max_lifetime) if r is not None else 30 * 86400.0
        self.refresh_ttl = float(auth.refresh_token_expiry) if auth.refresh_token_expiry is not None \
            else self.max_lifetime
        self.leeway = float(auth.leeway)


def verify_refresh(keys: Keys, token: str, now: float) -> dict:
    """The claims of a valid refresh token; raises ``RefreshError``."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise RefreshError("malformed") from None
    t = header.get("typ")
    if not isinstance(t, str) or t.lower() not in (REFRESH_TYP, "application/" + REFRESH_TYP):
        raise RefreshError("not a refresh token")
    try:
        claims = jwt.decode(token, keys.refresh_key, algorithms=[REFRESH_ALG], audience=keys.audience,
                            leeway=keys.leeway, options={"require": ["exp", "iat", "jti", "sid", "sub"]})
    except jwt.ExpiredSignatureError:
        raise RefreshError("expired") from None
    except jwt.PyJWTError as e:
        raise RefreshError(type(e).__name__) from None
    for c in ("jti", "sid", "sub"):
        if not isinstance(claims[c], str) or not claims[c]:
            raise RefreshError(f"claim {c}")
    if session_end(keys, claims) <= now:
        raise RefreshError("session lifetime over")
    return claims


def session_end(keys: Keys, claims: dict) -> float:
    """When the session of ``claims`` ends (``auth_time`` or ``iat``, plus the maximum)."""
    start = claims.get("auth_time", claims.get("iat"))
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        start = claims["iat"]
    return float(start) + keys.max_lifetime


def _jti(keys: Keys, old: str, what: bytes) -> str:
    d = hmac.new(keys.refresh_key.encode(), what + old.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(d[:18]).decode()


def mint_pair(keys: Keys, claims: dict, at: float) -> tuple[str, str, int]:
    """(access token, refresh token, access lifetime) rotated from ``claims`` at ``at``."""
    iat = int(at)
    end = int(session_end(keys, claims))
    carried = {k: v for k, v in claims.items() if k not in _OWN}
    carried.setdefault("auth_time", int(claims["iat"]))
    a_exp = min(iat + int(keys.access_ttl), end)
    access = dict(carried, iat=iat, exp=a_exp, jti=_jti(keys, claims["jti"], b"a:"))
    access.pop("auth_time", None)
    if keys.access_aud is not None:
        access["aud"] = keys.access_aud
    if keys.issuer is not None:
        access["iss"] = keys.issuer
    refresh = dict(carried, iat=iat, exp=min(iat + int(keys.refresh_ttl), end),
                   jti=_jti(keys, claims["jti"], b"r:"), aud=keys.audience)
    a = jwt.encode(access, keys.access_key, algorithm=keys.access_alg, headers={"typ": keys.access_typ})
    r = jwt.encode(refresh, keys.refresh_key, algorithm=REFRESH_ALG, headers={"typ": REFRESH_TYP})
    return a, r, max(a_exp - iat, 0)


def issue_refresh(secret: str, *, sub: str, sid: str, jti: str, ttl: float, now: float,
                  audience: str = "fastgw-refresh", **claims) -> str:
    """A first refresh token as a login service issues it (demo, tests, docs/auth.md)."""
    body = dict(claims, sub=sub, sid=sid, jti=jti, iat=int(now), exp=int(now + ttl), aud=audience)
    body.setdefault("auth_time", int(now))
    return jwt.encode(body, secret, algorithm=REFRESH_ALG, headers={"typ": REFRESH_TYP})
