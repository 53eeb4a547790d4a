"""Compact JWS verification, claim rules and the verified-token cache.

A ``Verifier`` is one key ring plus one set of claim ``Rules``; routes with the same rules
share it.  ``Verifier.verify`` is the cache-miss path and reads straight down like RFC
7515/7519 processing, in an order that keeps attacker-controlled work small:

1. shape: three non-empty base64url segments (a JWE's five or an unsigned token's empty
   signature fail here), checked on the raw bytes;
2. header: a JSON object; ``alg`` a string pinned for some key (``none`` never is);
   ``crit`` and ``b64`` refused (we implement no extension); ``typ`` as configured;
   ``kid`` a short string.  ``jku``, ``x5u``, ``jwk`` and ``x5c`` are ignored: keys come
   only from the config;
3. signature, against the candidate keys for (kid, alg) (``keys.KeyIndex``), before the
   payload is even parsed;
4. claims: ``exp``/``nbf``/``iat`` numeric and within ``leeway``; ``exp - iat`` within
   ``token_expiry``; ``iss`` and ``aud`` when configured; a token carrying ``aud`` is
   refused where no audience is configured (RFC 7519 §4.1.3); required claims present.

The result is an ``Identity`` holding everything the request path needs, precomputed
(user, roles, read-only claims, the identity header pairs and their serialised lines),
cached under ``(verifier, raw token bytes)`` in a ``TokenCache``.  ``Verifier.cached`` is
the hit path: one dict lookup and two float comparisons (``exp``/``nbf`` re-checked against the current clock); no parsing
and no crypto.  ``Verifier.front`` maps the raw carrier value (the whole ``Authorization``
header value) to the same Identity, so the usual request's hit is one lookup of the value
as parsed.  Entries are dropped when the key set changes (``clear`` from the JWKS
source, which empties the fronts too) and on reload (a new config builds a new cache).
"""

from __future__ import annotations

import base64
import hashlib
import re
from types import MappingProxyType

import orjson

from fastgw.auth.keys import MAX_KID_LEN

_SHAPE = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_CTL = re.compile(r"[\x00-\x1f\x7f]")
_ROLE_UNSAFE = re.compile(r"[\x00-\x20\x7f,]")   # would split or break X-User-Roles
INF = float("inf")

# reason -> (metrics result, RFC 6750 error_description).  Descriptions are plain
# %x20-7E text without quotes or backslashes, so they sit in a quoted-string as they are.
REASONS: dict[str, tuple[str, str]] = {
    "too_large": ("malformed", "The access token is too large"),
    "malformed": ("malformed", "The access token is malformed"),
    "alg": ("invalid", "The access token algorithm is not accepted"),
    "header": ("invalid", "The access token header is not accepted"),
    "unknown_key": ("unknown_key", "The access token signing key is unknown"),
    "signature": ("invalid", "The access token signature is invalid"),
    "expired": ("expired", "The access token expired"),
    "not_yet_valid": ("not_yet_valid", "The access token is not valid yet"),
    "issuer": ("claims", "The access token issuer is not accepted"),
    "audience": ("claims", "The access token audience is not accepted"),
    "lifetime": ("claims", "The access token lifetime exceeds the allowed maximum"),
    "claim_missing": ("claims", "The access token lacks a required claim"),
    "claim_invalid": ("claims", "The access token has an invalid claim"),
    "revoked": ("revoked", "The access token was revoked"),
}


class AuthFailure(Exception):
    """A token that is not accepted: ``reason`` is a key of ``REASONS``.

    ``user`` is set only when the signature was valid (so it is not attacker-chosen),
    ``refetch`` when fetching the JWKS again could change the answer (unknown kid).
    """

    __slots__ = ("reason", "note", "user", "kid", "alg", "refetch")

    def __init__(self, reason: str, note: str = "", *, user=None, kid=None, alg=None,
                 refetch: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.note = note
        self.user = user
        self.kid = kid
        self.alg = alg
        self.refetch = refetch


class Rules:
    """The claim rules in force for a set of routes (hashable, for sharing verifiers)."""

    __slots__ = ("issuers", "audiences", "require", "leeway", "max_lifetime", "typ",
                 "user_claim", "roles_claims", "user_header", "roles_header", "claim_headers", "key")

    def __init__(self, *, issuers=(), audiences=(), require=("exp",), leeway=30.0,
                 max_lifetime=None, typ=None, user_claim="sub", roles_claims=("roles",),
                 user_header="X-User-Id", roles_header="X-User-Roles", claim_headers=()) -> None:
        self.issuers = frozenset(issuers)
        self.audiences = frozenset(audiences)
        self.require = tuple(dict.fromkeys(require))
        if max_lifetime is not None:
            self.require += tuple(c for c in ("exp", "iat") if c not in self.require)
        self.leeway = float(leeway)
        self.max_lifetime = max_lifetime
        self.typ = typ.lower() if typ else None
        self.user_claim = user_claim
        self.roles_claims = tuple(tuple(p.split(".")) for p in roles_claims)
        self.user_header = user_header.encode() if user_header else None
        self.roles_header = roles_header.encode() if roles_header else None
        self.claim_headers = tuple((c, h.encode()) for c, h in claim_headers)
        self.key = (self.issuers, self.audiences, self.require, self.leeway, self.max_lifetime,
                    self.typ, user_claim, self.roles_claims, self.user_header, self.roles_header,
                    self.claim_headers)


class TokenCache(dict):
    """The verified-token cache: a dict of at most ``maxsize`` entries; a new token past
    that evicts the oldest one stored.  A hit is a plain dict subscript, with no recency
    update (cachetools' ``LRUCache`` cost three Python calls per hit, callgrind): a token
    in use is verified again at most once per ``maxsize`` new tokens."""

    __slots__ = ("maxsize", "fronts")

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.fronts: list[TokenCache] = []

    def __setitem__(self, key, value) -> None:
        if len(self) >= self.maxsize and key not in self:
            del self[next(iter(self))]
        dict.__setitem__(self, key, value)

    def front(self) -> TokenCache:
        """A companion cache of the same size, emptied whenever this one is (``clear``):
        a verifier's map from the raw token carrier (``Verifier.front``)."""
        f = TokenCache(self.maxsize)
        self.fronts.append(f)
        return f

    def clear(self) -> None:
        dict.clear(self)
        for f in self.fronts:
            f.clear()


class Identity:
    """A verified token, ready for the request path."""

    __slots__ = ("user", "roles", "claims", "headers", "lines", "exp_until", "nbf_from", "kid", "alg", "rev")

    def __init__(self, user, roles, claims, headers, exp_until, nbf_from, kid, alg, rev=None) -> None:
        self.user = user            # str | None
        self.roles = roles          # frozenset[str]
        self.claims = claims        # read-only mapping (shared by every request with this token)
        self.headers = headers      # tuple[(bytes, bytes)] sent upstream
        # the same, serialised once per verified token (``name: value\r\n`` each): a cached
        # token's request adds them in one ``ctx.add_request_lines`` (issue 23)
        self.lines = b"".join([n + b": " + v + b"\r\n" for n, v in headers])
        self.exp_until = exp_until  # exp + leeway (inf without exp)
        self.nbf_from = nbf_from    # nbf - leeway (-inf without nbf)
        self.kid = kid
        self.alg = alg
        self.rev = rev              # (jti, sid, sub, iat) as revocation keys (rev_key), once


REFRESH_TYP = "refresh+jwt"


def rev_key(v) -> bytes | None:
    """A claim as a revocation-table key (``fastgw.shm.revocation.norm_key``'s rule)."""
    if v is None:
        return None
    b = (v if isinstance(v, str) else str(v)).encode()
    if len(b) <= 96:
        return b
    return b"#" + hashlib.blake2b(b, digest_size=40).hexdigest().encode()


def _b64(seg: bytes) -> bytes:
    if len(seg) % 4 == 1:
        raise ValueError("bad base64url length")
    return base64.urlsafe_b64decode(seg + b"=" * (-len(seg) % 4))


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _walk(payload: dict, path: tuple):
    v = payload
    for p in path:
        if not isinstance(v, dict):
            return None
        v = v.get(p)
    return v


def extract_roles(payload: dict, paths: tuple) -> frozenset:
    """Roles from each claim path: a list of strings or a space-separated string (scope)."""
    out: set[str] = set()
    for path in paths:
        v = _walk(payload, path)
        if isinstance(v, str):
            out.update(v.split())
        elif isinstance(v, list):
            out.update(r for r in v if isinstance(r, str) and r)
    return frozenset(out)


def _header_value(v) -> bytes | None:
    if isinstance(v, bool):
        v = "true" if v else "false"
    elif _num(v):
        v = str(v)
    if not isinstance(v, str) or _CTL.search(v):
        return None
    return v.encode()


class Verifier:
    """Verifies tokens against one key ring under one set of rules; caches the results."""

    __slots__ = ("ring", "rules", "cache", "front", "__weakref__")

    def __init__(self, ring, rules: Rules, cache) -> None:
        self.ring = ring      # keys.KeyRing-like: candidates(kid, alg), algs, knows_kid(kid), has_jwks
        self.rules = rules
        self.cache = cache    # TokenCache keyed (verifier, token) or None
        # the raw value of the request's token carrier (``Authorization: Bearer ...`` as
        # sent) -> its Identity, for the caller that reads the carrier itself (auth's
        # captured Authorization): a hit skips the scheme check, the slicing and the
        # (verifier, token) key.  Filled by that caller after a verification passed;
        # emptied with the cache.
        self.front = cache.front() if cache is not None else None

    # -- hit path --------------------------------------------------------------------
    def cached(self, token: bytes, now: float) -> Identity | None:
        """The cached Identity for ``token``, None on a miss; raises if it has expired."""
        cache = self.cache
        if cache is None:
            return None
        try:
            ident = cache[(self, token)]
        except KeyError:
            return None
        if now < ident.exp_until:
            if now >= ident.nbf_from:
                return ident
            raise AuthFailure("not_yet_valid", user=ident.user, kid=ident.kid, alg=ident.alg)
        try:
            del cache[(self, token)]
        except KeyError:
            pass
        raise AuthFailure("expired", user=ident.user, kid=ident.kid, alg=ident.alg)

    # -- miss path -------------------------------------------------------------------
    def verify(self, token: bytes, now: float) -> Identity:
        """Full verification; raises ``AuthFailure``.  Stores the Identity in the cache."""
        if _SHAPE.fullmatch(token) is None:
            raise AuthFailure("malformed", "not a compact JWS")
        h_seg, p_seg, s_seg = token.split(b".")
        try:
            header = orjson.loads(_b64(h_seg))
        except (ValueError, orjson.JSONDecodeError):
            raise AuthFailure("malformed", "header is not base64url JSON") from None
        if not isinstance(header, dict):
            raise AuthFailure("malformed", "header is not a JSON object")
        alg = header.get("alg")
        kid = header.get("kid")
        if not isinstance(alg, str):
            raise AuthFailure("malformed", "alg missing")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LEN):
            raise AuthFailure("malformed", "kid not a short string", alg=alg[:16])
        ring = self.ring
        if alg not in ring.algs:
            raise AuthFailure("alg", f"alg {alg[:16]!r} not pinned", kid=kid, alg=alg[:16])
        if "crit" in header or ("b64" in header and header["b64"] is not True):
            raise AuthFailure("header", "crit/b64 not supported", kid=kid, alg=alg)
        t = header.get("typ")
        t = t.lower() if isinstance(t, str) else ""
        if t == REFRESH_TYP or t == "application/" + REFRESH_TYP:
            # a refresh token is never an access token, whatever auth.typ says (issue 27)
            raise AuthFailure("header", "refresh token", kid=kid, alg=alg)
        typ = self.rules.typ
        if typ is not None:
            if t != typ and t != "application/" + typ:
                raise AuthFailure("header", "typ", kid=kid, alg=alg)
        try:
            sig = _b64(s_seg)
        except ValueError:
            raise AuthFailure("malformed", "signature is not base64url", kid=kid, alg=alg) from None
        cands = ring.candidates(kid, alg)
        refetch = kid is not None and ring.has_jwks and not ring.knows_kid(kid)
        if not cands:
            raise AuthFailure("unknown_key", kid=kid, alg=alg, refetch=refetch or
                              (kid is None and ring.has_jwks and not ring.ready))
        signing_input = token[: len(h_seg) + 1 + len(p_seg)]
        for algo, key in cands:
            try:
                if algo.verify(signing_input, key, sig):
                    break
            except Exception:  # noqa: BLE001 - a malformed signature is just a failure
                pass
        else:
            raise AuthFailure("signature", kid=kid, alg=alg, refetch=refetch)
        try:
            payload = orjson.loads(_b64(p_seg))
        except (ValueError, orjson.JSONDecodeError):
            raise AuthFailure("malformed", "payload is not base64url JSON", kid=kid, alg=alg) from None
        if not isinstance(payload, dict):
            raise AuthFailure("malformed", "payload is not a JSON object", kid=kid, alg=alg)
        ident = self._claims(payload, now, kid, alg)
        if self.cache is not None:
            self.cache[(self, token)] = ident
        return ident

    def _claims(self, payload: dict, now: float, kid, alg) -> Identity:
        r = self.rules
        user = payload.get(r.user_claim)
        if user is not None:
            user = str(user) if _num(user) else user
            if not isinstance(user, str) or _CTL.search(user):
                raise AuthFailure("claim_invalid", r.user_claim, kid=kid, alg=alg)

        def fail(reason, note=""):
            return AuthFailure(reason, note, user=user, kid=kid, alg=alg)

        for c in r.require:
            if payload.get(c) is None:
                raise fail("claim_missing", c)
        lw = r.leeway
        exp = payload.get("exp")
        nbf = payload.get("nbf")
        iat = payload.get("iat")
        for name, v in (("exp", exp), ("nbf", nbf), ("iat", iat)):
            if v is not None and not _num(v):
                raise fail("claim_invalid", name)
        exp_until = INF if exp is None else exp + lw
        nbf_from = -INF if nbf is None else nbf - lw
        if now >= exp_until:
            raise fail("expired")
        if now < nbf_from:
            raise fail("not_yet_valid", "nbf")
        if iat is not None and iat > now + lw:
            raise fail("not_yet_valid", "iat")
        if r.max_lifetime is not None and exp - iat > r.max_lifetime:
            raise fail("lifetime")
        if r.issuers:
            iss = payload.get("iss")
            if not isinstance(iss, str) or iss not in r.issuers:
                raise fail("issuer")
        aud = payload.get("aud")
        if aud is not None or r.audiences:
            if isinstance(aud, str):
                aud = (aud,)
            elif not isinstance(aud, list):
                raise fail("audience")
            if not r.audiences or r.audiences.isdisjoint(a for a in aud if isinstance(a, str)):
                raise fail("audience")
        roles = extract_roles(payload, r.roles_claims)
        hs = []
        if user is not None and r.user_header is not None:
            hs.append((r.user_header, user.encode()))
        if roles and r.roles_header is not None:
            safe = sorted(x for x in roles if not _ROLE_UNSAFE.search(x))
            if safe:
                hs.append((r.roles_header, ",".join(safe).encode()))
        for claim, hname in r.claim_headers:
            v = _header_value(payload.get(claim))
            if v is not None:
                hs.append((hname, v))
        sub = payload.get("sub")
        rev = (rev_key(payload.get("jti")), rev_key(payload.get("sid")), rev_key(sub), iat)
        return Identity(user, roles, MappingProxyType(payload), tuple(hs), exp_until, nbf_from, kid, alg, rev)
