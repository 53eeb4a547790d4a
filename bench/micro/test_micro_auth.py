"""Micro-benchmarks of authentication on the request path.

Run separately: ``python -m pytest bench/micro/test_micro_auth.py -p no:xdist``.

Targets: a verified-token cache hit well under 2 us (the whole ``request_filter`` of an
auth route: header scan, identity-header strip check, token slice, LRU lookup, exp/nbf
re-check, role check, ctx fill); the strip-only filter of an open route well under 1 us.
The miss benchmarks show what the cache saves (one full verification per algorithm, cache
off).  No assertion on timings.

Tokens are IdP-sized (RS256, ~650 bytes) and the token bytes are sliced from the header on
every call, so the cache key is hashed each time as it is for a real request.
``..._captured`` is the real request path: Authorization is a field of the Request
(``ctx.request.authorization``) and the forged-identity check is one C-level pass over
the header names.  The other cases take the header scan another token source takes (the
middleware's ``captured`` off) and the Request's lazy header map, built once or, in
``..._map_cold``, on every call.
"""

from __future__ import annotations

import time

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fastgw.auth.keys import Key, KeyIndex, KeyRing
from fastgw.auth.token import Rules, Verifier
from fastgw.config.auth import AuthConfig
from fastgw.config.base import dec_hook
from fastgw.middleware.auth import build
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from fastgw.pipeline.deps import Deps

SECRET = "bench-secret-" + "b" * 40
RSA = rsa.generate_private_key(65537, 2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()


class Root(msgspec.Struct):
    auth: AuthConfig


class Route(msgspec.Struct):
    name: str
    auth: bool = False
    roles: object = None


def _pem(priv) -> str:
    return priv.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _claims() -> dict:
    now = int(time.time())
    return {"iss": "https://idp.example.com/realms/arxos", "aud": "arxos-api", "sub": "f3b1c2d4-5e6f-7a8b-9c0d-e1f2a3b4c5d6",
            "roles": ["viewer", "analyst"], "scope": "openid profile email", "email": "alice@example.com",
            "iat": now, "exp": now + 3600, "jti": "5b0f3c7e-2d1a-4b8e-9f6a-0c1d2e3f4a5b"}


CFG = msgspec.convert({"keys": [{"pem": _pem(RSA), "algorithms": ["RS256"], "kid": "k1"}],
                       "issuer": "https://idp.example.com/realms/arxos", "audience": "arxos-api",
                       "roles": ["viewer", "analyst", "admin"]}, AuthConfig, dec_hook=dec_hook)
TOKEN = jwt.encode(_claims(), RSA, algorithm="RS256", headers={"kid": "k1"}).encode()
HEADERS = [(b"Host", b"api.example.com"), (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
           (b"Accept", b"application/json"), (b"Accept-Encoding", b"gzip, br"),
           (b"Accept-Language", b"en-US,en;q=0.9"), (b"X-Forwarded-For", b"203.0.113.9"),
           (b"Authorization", b"Bearer " + TOKEN), (b"Connection", b"keep-alive")]


def _ctx(headers) -> Ctx:
    return Ctx(Request.build("GET", b"/", list(headers)))


def _captured(headers) -> Ctx:
    """A Ctx as the downstream protocol leaves it (Authorization captured, still forwarded)."""
    return _ctx(headers)


def _mw(route: Route, captured: bool = False):
    mw = build(Root(CFG), None, route, Deps())
    mw.captured = captured and mw.captured
    return mw


def test_baseline_call(benchmark):
    """The floor: pytest-benchmark calling a function that resets one attribute."""
    c = _ctx(HEADERS)

    def run():
        c.up_lines = b""
    benchmark(run)


def test_cached_hit_request_filter(benchmark):
    """The whole hook on a cached token (includes the ~0.05 us reset of the added request headers)."""
    mw = _mw(Route("docs", auth=True, roles=["viewer", "admin"]))
    c = _ctx(HEADERS)
    assert mw.request_filter(c) is None  # warm the cache

    def run():
        c.up_lines = b""
        return mw.request_filter(c)
    assert benchmark(run) is None
    assert c.user == "f3b1c2d4-5e6f-7a8b-9c0d-e1f2a3b4c5d6"


def test_cached_hit_request_filter_captured(benchmark):
    """The hook on a cached token as a real request runs it (protocol-captured token)."""
    mw = _mw(Route("docs", auth=True, roles=["viewer", "admin"]))
    mw = _mw(Route("docs", auth=True, roles=["viewer", "admin"]), captured=True)
    c = _captured(HEADERS)
    assert mw.request_filter(c) is None

    def run():
        c.up_lines = b""
        return mw.request_filter(c)
    assert benchmark(run) is None


def test_cached_hit_request_filter_map_cold(benchmark):
    """Same, with ctx's header map rebuilt on every call (no middleware built it before)."""
    mw = _mw(Route("docs", auth=True, roles=["viewer", "admin"]))
    c = _ctx(HEADERS)
    assert mw.request_filter(c) is None

    def run():
        c.up_lines = b""
        c.request.hmap = None
        return mw.request_filter(c)
    assert benchmark(run) is None


def test_cached_hit_verifier_only(benchmark):
    """Just the cache: slice the token, LRU lookup, exp/nbf re-check."""
    mw = _mw(Route("docs", auth=True))
    mw.request_filter(_ctx(HEADERS))
    v = mw.verifier
    hv = b"Bearer " + TOKEN
    now = time.time()
    assert benchmark(lambda: v.cached(hv[7:], now)) is not None


def test_open_route_strip_only(benchmark):
    """An open route: make sure no identity header came from the client (one C-level
    pass over the 8 header names)."""
    mw = _mw(Route("open"))
    c = _ctx(HEADERS)
    benchmark(mw.request_filter, c)


def test_missing_token_401(benchmark):
    """The 401 path (problem body, audit off): bounded cost for junk traffic."""
    mw = _mw(Route("docs", auth=True))
    c = _ctx(HEADERS[:-2])
    assert benchmark(mw.request_filter, c).status == 401


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "EdDSA"])
def test_miss_full_verification(benchmark, alg):
    """Cache off: shape, header, signature, claims, Identity; what each miss costs."""
    material = {"HS256": SECRET.encode(), "RS256": RSA, "ES256": EC, "EdDSA": ED}[alg]
    signing = SECRET if alg == "HS256" else material
    pub = material if alg == "HS256" else material.public_key()
    ring = KeyRing(KeyIndex([Key(pub, [alg], "k1", "bench")]))
    v = Verifier(ring, Rules(issuers=["https://idp.example.com/realms/arxos"], audiences=["arxos-api"]), None)
    tok = jwt.encode(_claims(), signing, algorithm=alg, headers={"kid": "k1"}).encode()
    now = time.time()
    assert benchmark(v.verify, tok, now).user is not None
