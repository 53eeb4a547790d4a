"""What the auth routes of one config generation share (L2): the key ring, the verified-token
cache, the verifiers per rule set, the identity headers to strip and the token sources,
the ``WWW-Authenticate`` values; one ``AuthState`` per generation, kept in ``deps.state``
(``_state``).  The auth middleware (``fastgw.middleware.auth``) is its only user; this is
its configuration-time half, kept apart so that the middleware's module stays the
request path.
"""

from __future__ import annotations

from fastgw.auth.jwks import SourcePool
from fastgw.auth.keys import KeyIndex, KeyRing, load_static, secret_key
from fastgw.auth.token import REASONS, Rules, TokenCache, Verifier
from fastgw.config.auth import AuthConfig, RouteAuth
from fastgw.shm.revocation import mirror_for

ALWAYS_STRIPPED = ("x-user-id", "x-user-roles")
STATE_KEY = "fastgw.auth"
STRIP = 0


def _lower_list(v) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def _www(realm: str | None, error: str | None = None, desc: str | None = None) -> bytes:
    parts = []
    if realm is not None:
        parts.append(f'realm="{realm}"')
    if error:
        parts.append(f'error="{error}"')
    if desc:
        parts.append(f'error_description="{desc}"')
    return ("Bearer " + ", ".join(parts) if parts else "Bearer").encode()


class AuthState:
    """What the auth routes of one config generation share."""

    def __init__(self, cfg: AuthConfig, deps, pool: SourcePool) -> None:
        self.cfg = cfg
        self.deps = deps
        self.pool = pool
        # deps: the runtime's Deps, a test's stand-in with fewer fields, or None (unit
        # tests): not a config Struct, so its fields stay optional
        self.metrics = getattr(deps, "metrics", None)
        self.audit = getattr(deps, "audit", None)
        self.log = getattr(deps, "log", None)
        self.cache = TokenCache(cfg.cache_size) if cfg.cache_size else None
        self.revocations = mirror_for(deps)   # None: no shared table here
        self.refs = 0
        self.ring: KeyRing | None = None
        self.sources: list = []
        self.verifiers: dict = {}
        ih = cfg.identity_headers
        names = [*ALWAYS_STRIPPED, ih.user, ih.roles, *ih.claims.values(), *cfg.strip_headers]
        self.strip = frozenset(n.lower().encode() for n in names if n)
        # one dict lookup per request header: identity header to strip, or token carrier
        self.want: dict[bytes, object] = dict.fromkeys(self.strip, STRIP)
        self.token_sources = []
        for s in cfg.tokens:
            lname = b"cookie" if s.cookie else s.header.lower().encode()
            prefix = (s.scheme.lower() + " ").encode() if s.scheme else None
            self.token_sources.append((lname, prefix, s.cookie.encode() if s.cookie else None))
            self.want[lname] = lname
        self.token_headers = frozenset(
            s.header.lower().encode() for s in cfg.tokens if s.header and not cfg.forward_token)
        realm = cfg.realm
        self.www_missing = _www(realm)
        self.www = {r: _www(realm, "invalid_token", d) for r, (_res, d) in REASONS.items()}
        self.www_dup = _www(realm, "invalid_request", "The access token was given more than once")
        self.www_forbidden = _www(realm, "insufficient_scope",
                                  "The access token lacks a role this route requires")

    # -- keys (built on the first auth route, so an unused JWKS is never fetched) ---------
    def _ring(self) -> KeyRing:
        if self.ring is None:
            cfg = self.cfg
            static = []
            if cfg.jwt_secret is not None:
                static.append(secret_key(cfg.jwt_secret, cfg.algorithms))
            static += [load_static(k, f"auth.keys[{i}]") for i, k in enumerate(cfg.keys)]
            d = self.deps
            for j in cfg.jwks:
                src = self.pool.acquire(j, loop=getattr(d, "loop", None), log=self.log,
                                        metrics=self.metrics)
                src.listeners.add(self.clear_cache)
                self.sources.append(src)
            self.ring = KeyRing(KeyIndex(static), self.sources)
        return self.ring

    def clear_cache(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    def verifier(self, override: RouteAuth | None) -> Verifier:
        cfg = self.cfg
        iss = override.issuer if override is not None and override.issuer is not None else cfg.issuer
        aud = override.audience if override is not None and override.audience is not None else cfg.audience
        ih = cfg.identity_headers
        rules = Rules(issuers=_lower_list(iss), audiences=_lower_list(aud), require=cfg.require,
                      leeway=cfg.leeway, max_lifetime=cfg.token_expiry, typ=cfg.typ,
                      user_claim=cfg.user_claim, roles_claims=_lower_list(cfg.roles_claim),
                      user_header=ih.user, roles_header=ih.roles,
                      claim_headers=tuple(ih.claims.items()))
        v = self.verifiers.get(rules.key)
        if v is None:
            v = self.verifiers[rules.key] = Verifier(self._ring(), rules, self.cache)
        return v

    def acquire(self) -> None:
        self.refs += 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            for s in self.sources:
                s.listeners.discard(self.clear_cache)
                self.pool.release(s)
            self.sources = []


def state_for(root_cfg, auth_cfg: AuthConfig, deps) -> AuthState:
    """The shared state for ``root_cfg``: created on its first route, reused by the rest."""
    st = getattr(deps, "state", None)
    if st is None:
        return AuthState(auth_cfg, deps, SourcePool())
    slot = st.setdefault(STATE_KEY, {"pool": SourcePool(), "cfg": None, "state": None})
    if slot["cfg"] is not root_cfg or slot["state"] is None:
        slot["cfg"] = root_cfg
        slot["state"] = AuthState(auth_cfg, deps, slot["pool"])
    return slot["state"]
