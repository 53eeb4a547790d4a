"""Schema of the ``auth`` section (L1).

What it owns: every knob of JWT validation, role-based access and the identity handed
upstream.  The seed's four keys (``jwt_secret``, ``token_expiry``,
``refresh_token_expiry``, ``roles``) keep their meaning; everything else has a default
that is safe on its own, so the seed file validates unchanged.

Rules this schema keeps (checked here, at decode time, so ``fastgw --check`` reports them
with the rest of the config):

1. Algorithms are pinned per key.  ``none`` is not a member of ``Algorithm``; an HMAC
   algorithm is only accepted for a shared secret, an asymmetric one only for a public key
   or a JWKS URL.  A token whose ``alg`` is not pinned for the key that would verify it is
   refused (RFC 8725 §3.1).
2. HMAC secrets are at least as long as the hash output (RFC 7518 §3.2): 32 bytes for
   HS256, 48 for HS384, 64 for HS512.
3. JWKS URLs are ``https`` unless ``allow_http`` is set (meant for loopback tests).
4. A token's own ``kid``/``jku``/``x5u``/``jwk`` never name a location to fetch from:
   the only URLs fetched are the ones written here.

Key material in files is read when the middleware is built, not here (L1 reads no files);
``check_files()`` lets the loader report unreadable key files with the other errors.
A route's ``auth``/``roles`` against this section: fastgw/config/semantics.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from fastgw.config.base import Base, Duration, Secret, Size

Algorithm = Literal[
    "HS256", "HS384", "HS512",
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512",
    "EdDSA",
]

# RFC 7518 §3.2: the HMAC key is at least the hash output size.
HMAC_MIN_BYTES: dict[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
HMAC_ALGS = frozenset(HMAC_MIN_BYTES)

_NonEmpty = Annotated[str, Meta(min_length=1)]
_HeaderName = Annotated[str, Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


def _as_list(v: str | list[str] | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def _check_secret(where: str, secret: str, algs: list[str]) -> None:
    n = len(secret.encode())
    for a in algs:
        if a in HMAC_MIN_BYTES and n < HMAC_MIN_BYTES[a]:
            raise ValueError(
                f"{where}: {a} needs a secret of at least {HMAC_MIN_BYTES[a]} bytes "
                f"(RFC 7518 §3.2), got {n}")


class StaticKey(Base):
    """One verification key written in the config: a shared secret or a PEM public key."""

    kid: _NonEmpty | None = None          # only tokens naming this kid (or no kid) use it
    secret: Secret | None = None          # HMAC shared secret
    file: _NonEmpty | None = None         # PEM public key or X.509 certificate, read at build
    pem: str | None = None                # the same, inline
    algorithms: list[Algorithm] = []      # [] = the key type's usual one (HS256/RS256/ES*/EdDSA)

    def __post_init__(self) -> None:
        given = [n for n in ("secret", "file", "pem") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("a key needs exactly one of 'secret', 'file' or 'pem', got "
                             + (" and ".join(given) or "none"))
        hs = [a for a in self.algorithms if a in HMAC_ALGS]
        if self.secret is not None:
            if len(hs) != len(self.algorithms):
                raise ValueError("algorithms: a 'secret' key only takes HMAC algorithms (HS256/384/512)")
            _check_secret("secret", self.secret, self.algorithms or ["HS256"])
        elif hs:
            raise ValueError("algorithms: HMAC algorithms need a 'secret', not a public key (RFC 8725 §2.1)")


class JwksSource(Base):
    """A JSON Web Key Set fetched from the identity provider."""

    url: _NonEmpty
    name: _NonEmpty | None = None          # label in metrics/logs; default: the URL's host
    algorithms: Annotated[list[Algorithm], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["RS256"])
    refresh_interval: Duration = Duration(300)    # longest a key set is kept before refetching
    min_refetch_interval: Duration = Duration(30) # floor between two fetches (unknown kid, max-age)
    timeout: Duration = Duration(5)               # whole fetch: connect, TLS, headers, body
    max_size: Size = Size(256 * 1024)             # response body limit
    max_keys: Annotated[int, Meta(ge=1, le=1000)] = 64
    ca_file: _NonEmpty | None = None               # extra trust anchors (PEM); default: system store
    allow_http: bool = False                       # plain http (tests on loopback only)

    def __post_init__(self) -> None:
        u = self.url.lower()
        if not (u.startswith("https://") or (self.allow_http and u.startswith("http://"))):
            raise ValueError(f"url: must be https:// (allow_http is for loopback tests), got {self.url!r}")
        if [a for a in self.algorithms if a in HMAC_ALGS]:
            raise ValueError("algorithms: HMAC algorithms cannot come from a JWKS (symmetric keys are not fetched)")
        if self.timeout <= 0:
            raise ValueError("timeout: must be positive")
        if self.refresh_interval < self.min_refetch_interval:
            raise ValueError("refresh_interval: must be at least min_refetch_interval")


class TokenSource(Base):
    """Where a request carries its token: a header (with an auth scheme) or a cookie."""

    header: _HeaderName | None = None
    scheme: _NonEmpty | None = None        # e.g. "Bearer"; None = the whole header value
    cookie: _NonEmpty | None = None

    def __post_init__(self) -> None:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("a token source needs exactly one of 'header' or 'cookie'")
        if self.cookie is not None and self.scheme is not None:
            raise ValueError("scheme: only applies to a header token source")


def _default_sources() -> list[TokenSource]:
    return [TokenSource(header="Authorization", scheme="Bearer")]


class IdentityHeaders(Base):
    """Headers carrying the verified identity upstream.  Client-sent copies are removed."""

    user: _HeaderName | None = "X-User-Id"       # from ``user_claim``
    roles: _HeaderName | None = "X-User-Roles"   # comma-separated
    claims: dict[str, _HeaderName] = {}          # claim name -> header name (string/number claims)


class RouteAuth(Base):
    """Per-route claim rules: ``auth.routes.<route name>`` (or a route's ``auth`` block)."""

    issuer: str | list[str] | None = None
    audience: str | list[str] | None = None


class EndpointLimit(Base):
    """The refresh endpoint's own rate limit (per client IP by default)."""

    requests_per_second: Annotated[float, Meta(gt=0)] = 1.0
    burst: Annotated[int, Meta(ge=1)] = 5
    key: Literal["ip"] = "ip"


class RefreshConfig(Base):
    """``auth.refresh``: the gateway's refresh endpoint (rotation, reuse detection)."""

    path: Annotated[str, Meta(pattern=r"^/")] = "/auth/refresh"
    key: Secret | None = None                 # HS256 key of refresh tokens; None = jwt_secret (warned)
    audience: _NonEmpty = "fastgw-refresh"    # ``aud`` of refresh tokens (never an access audience)
    cookie: bool = False                      # answer with HttpOnly cookies and read the refresh cookie
    cookie_names: tuple[str, str] = ("fastgw_access", "fastgw_refresh")
    reuse_grace: Duration = Duration(5)       # a duplicate within this gets the same new pair
    session_max_lifetime: Duration = Duration(30 * 86400)  # absolute: rotation never extends it
    rate_limit: EndpointLimit | None = msgspec.field(default_factory=EndpointLimit)

    def __post_init__(self) -> None:
        if self.reuse_grace > 60:
            raise ValueError("reuse_grace: at most 60s (a long grace hides token theft), got %gs"
                             % self.reuse_grace)
        if self.key is not None:
            _check_secret("key", self.key, ["HS256"])


class LogoutConfig(Base):
    """``auth.logout``: POST with an access or refresh token revokes its session."""

    path: Annotated[str, Meta(pattern=r"^/")] = "/auth/logout"


class RevocationConfig(Base):
    """``auth.revocation``: the shared revocation set (shared memory, optionally Redis)."""

    backend: Literal["memory", "redis"] = "memory"
    max_entries: Annotated[int, Meta(ge=64, le=16_000_000)] = 1_000_000  # restart-only
    retention: Duration = Duration(30 * 86400)    # expiry of an entry whose token's is unknown
    reserved: Annotated[float, Meta(ge=0.1, le=0.9)] = 0.5   # share only revocations may use
    redis_url: _NonEmpty | None = None            # default: rate_limit.redis_url
    resync_interval: Duration = Duration(30)      # full resync from Redis (pub/sub drops on disconnect)
    timeout: Duration = Duration(1)


class AuthConfig(Base):
    # --- the seed's keys -------------------------------------------------------------
    jwt_secret: Secret | None = None          # HMAC shared secret (``${JWT_SECRET}``)
    token_expiry: Duration | None = None      # caps an accepted token's lifetime (exp - iat)
    refresh_token_expiry: Duration | None = None  # lifetime of refresh tokens the refresh endpoint issues
    roles: list[_NonEmpty] = []               # known roles: routes may only name these
    # --- keys --------------------------------------------------------------------------
    algorithms: Annotated[list[Algorithm], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["HS256"])    # pinned for ``jwt_secret``
    keys: list[StaticKey] = []
    jwks: list[JwksSource] = []
    # --- claims ------------------------------------------------------------------------
    issuer: str | list[str] | None = None     # accepted ``iss`` values (then iss is required)
    audience: str | list[str] | None = None   # accepted ``aud`` values (then aud is required)
    leeway: Duration = Duration(30)              # clock skew allowed on exp/nbf/iat (<= 5m)
    require: list[_NonEmpty] = msgspec.field(default_factory=lambda: ["exp"])
    typ: _NonEmpty | None = None              # required ``typ`` header, e.g. "at+jwt" (RFC 9068)
    user_claim: _NonEmpty = "sub"
    roles_claim: _NonEmpty | list[_NonEmpty] = "roles"  # dotted paths allowed: realm_access.roles
    routes: dict[str, RouteAuth] = {}         # per-route issuer/audience, by route name
    # --- requests ----------------------------------------------------------------------
    tokens: Annotated[list[TokenSource], Meta(min_length=1)] = msgspec.field(
        default_factory=_default_sources)
    max_token_size: Size = Size(8 * 1024)
    forward_token: bool = True                # False: drop the token header before forwarding
    identity_headers: IdentityHeaders = msgspec.field(default_factory=IdentityHeaders)
    strip_headers: list[_HeaderName] = []     # more client headers removed on every route
    realm: Annotated[str, Meta(pattern=r'^[\x20\x21\x23-\x5b\x5d-\x7e]*$')] | None = None
    # --- operations --------------------------------------------------------------------
    cache_size: Annotated[int, Meta(ge=0)] = 10_000   # verified tokens per worker; 0 = off
    audit_allow: bool = False                 # also audit-log successful authentications
    # --- sessions (issue 27) -----------------------------------------------------------
    refresh: RefreshConfig | None = None      # the refresh endpoint (off when absent)
    logout: LogoutConfig | None = None        # the logout endpoint (off when absent)
    revocation: RevocationConfig = msgspec.field(default_factory=RevocationConfig)

    def __post_init__(self) -> None:
        if self.leeway > 300:
            raise ValueError("leeway: at most 5m (more defeats expiry), got %gs" % self.leeway)
        if self.jwt_secret is not None:
            if [a for a in self.algorithms if a not in HMAC_ALGS]:
                raise ValueError("algorithms: pins jwt_secret, so only HS256/HS384/HS512 apply")
            _check_secret("jwt_secret", self.jwt_secret, self.algorithms)
        if self.refresh is not None and self.logout is not None and self.refresh.path == self.logout.path:
            raise ValueError("logout.path: must differ from refresh.path")
        names = [s.name for s in self.jwks]
        if len(set(names)) != len(names) and None not in names:
            raise ValueError("jwks: names must be unique")

    def has_keys(self) -> bool:
        return bool(self.jwt_secret is not None or self.keys or self.jwks)


def session_errors(auth: AuthConfig | None, rate_limit=None) -> list[str]:
    """``--check`` errors of the session endpoints: refresh needs a key to sign with;
    the Redis revocation backend needs a server."""
    if auth is not None and auth.revocation.backend == "redis" and not auth.revocation.redis_url:
        red = getattr(rate_limit, "redis", None)
        if getattr(red, "url", None) is None:
            return ["auth.revocation.backend: redis needs auth.revocation.redis_url or rate_limit.redis.url"]
    if auth is None or (auth.refresh is None and auth.logout is None):
        return []
    if auth.refresh is not None and auth.jwt_secret is None:
        return ["auth.refresh: the gateway signs new access tokens with auth.jwt_secret, "
                "which is not set (no signing key)"]
    if not auth.has_keys():
        return ["auth.logout: needs auth.jwt_secret, keys or jwks to verify tokens"]
    return []


def session_warnings(auth: AuthConfig | None) -> list[str]:
    if auth is not None and auth.refresh is not None and auth.refresh.key is None:
        return ["auth.refresh.key: not set, refresh tokens are signed with auth.jwt_secret "
                "(a leaked access key then also mints refresh tokens): set a separate key"]
    return []


def check_files(auth: AuthConfig) -> list[str]:
    """Unreadable key or CA files (the loader may call this to report them at --check)."""
    errs = []
    paths = [(f"auth.keys[{i}].file", k.file) for i, k in enumerate(auth.keys) if k.file]
    paths += [(f"auth.jwks[{i}].ca_file", j.ca_file) for i, j in enumerate(auth.jwks) if j.ca_file]
    for where, p in paths:
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as e:
            errs.append(f"{where}: cannot read {p!r}: {e.strerror}")
    return errs
