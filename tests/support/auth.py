"""Shared helpers for the auth tests: keys for every algorithm, token minting with three
independent libraries (pyjwt, jwcrypto, joserfc), hand-built Ctx objects, config structs,
fake metrics/audit sinks, and a real JWKS server on 127.0.0.1 (http or https with a test
CA) that can rotate keys, go down and answer slowly.

Imported by the other ``test_auth*`` modules; its own tests check that the three minting
libraries agree with each other (so a bug in one cannot hide a bug in the gateway).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import warnings
from functools import lru_cache

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from fastgw.config.auth import AuthConfig
from fastgw.config.base import dec_hook
from fastgw.http.messages import parse_block
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from fastgw.pipeline.deps import Deps

SECRET = "test-secret-" + "x" * 52           # 64 bytes: enough for HS512
ALL_ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "ES512", "EdDSA"]
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


# -- keys -------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _gen(kind: str, param, n: int):
    if kind == "rsa":
        return rsa.generate_private_key(65537, param)
    if kind == "ec":
        return ec.generate_private_key(_CURVES[param]())
    return ed25519.Ed25519PrivateKey.generate() if param == "Ed25519" else ed448.Ed448PrivateKey.generate()


def rsa_key(n: int = 0, bits: int = 2048):
    """RSA key number ``n`` (the same object for the same arguments, however passed)."""
    return _gen("rsa", bits, n)


def ec_key(alg: str, n: int = 0):
    return _gen("ec", alg, n)


def ed_key(curve: str = "Ed25519", n: int = 0):
    return _gen("ed", curve, n)


def private_for(alg: str, n: int = 0, curve: str = "Ed25519"):
    """The signing key for ``alg`` (secret str for HS*)."""
    if alg.startswith("HS"):
        return SECRET
    if alg[:2] in ("RS", "PS"):
        return rsa_key(n)
    if alg.startswith("ES"):
        return ec_key(alg, n)
    return ed_key(curve, n)


def public_pem(priv) -> str:
    return priv.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_pem(priv) -> bytes:
    return priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())


def jwk_of(priv, kid: str | None = None, alg: str | None = None, **extra) -> dict:
    """The public JWK of a private key (via pyjwt's serialisers)."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
    pub = priv.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        d = OKPAlgorithm.to_jwk(pub, as_dict=True)
    d.pop("key_ops", None)
    if kid is not None:
        d["kid"] = kid
    if alg is not None:
        d["alg"] = alg
    d.update(extra)
    return d


# -- minting -----------------------------------------------------------------------------
def claims(ttl: float = 300, **kw) -> dict:
    now = int(time.time())
    c = {"sub": "alice", "roles": ["viewer"], "iat": now, "exp": now + ttl}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def mint(alg: str, payload: dict | None = None, key=None, headers: dict | None = None) -> bytes:
    """A token signed with pyjwt."""
    key = private_for(alg) if key is None else key
    return pyjwt.encode(payload or claims(), key, algorithm=alg, headers=headers).encode()


def mint_jwcrypto(alg: str, payload: dict, key=None, headers: dict | None = None) -> bytes:
    pytest.importorskip("jwcrypto")
    from jwcrypto import jwk, jwt as jjwt
    key = private_for(alg) if key is None else key
    k = jwk.JWK.from_password(key) if isinstance(key, str) else jwk.JWK.from_pem(private_pem(key))
    t = jjwt.JWT(header={"alg": alg, **(headers or {})}, claims=payload)
    t.make_signed_token(k)
    return t.serialize().encode()


def mint_joserfc(alg: str, payload: dict, key=None, headers: dict | None = None) -> bytes:
    pytest.importorskip("joserfc")  # not in fastgw[test]; jwcrypto covers every algorithm too
    from joserfc import jwt as fjwt
    from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
    key = private_for(alg) if key is None else key
    if isinstance(key, str):
        k = OctKey.import_key(key.encode())
    elif isinstance(key, rsa.RSAPrivateKey):
        k = RSAKey.import_key(private_pem(key))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        k = ECKey.import_key(private_pem(key))
    else:
        k = OKPKey.import_key(private_pem(key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc flags EdDSA as deprecated by RFC 9864
        return fjwt.encode({"alg": alg, **(headers or {})}, payload, k, algorithms=[alg]).encode()


MINTERS = {"pyjwt": lambda a, p, k=None, h=None: mint(a, p, k, h),
           "jwcrypto": mint_jwcrypto, "joserfc": mint_joserfc}


def mint_hs256(payload: dict, header: dict | None = None, secret: str = SECRET) -> bytes:
    """An HS256 token built by hand, for claim values that libraries refuse to encode."""
    import hashlib
    import hmac
    signing = b64(header or {"alg": "HS256", "typ": "JWT"}) + b"." + b64(payload)
    return signing + b"." + b64(hmac.new(secret.encode(), signing, hashlib.sha256).digest())


def b64(data: bytes | dict) -> bytes:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unb64(seg: bytes) -> bytes:
    return base64.urlsafe_b64decode(seg + b"=" * (-len(seg) % 4))


# -- config and context ------------------------------------------------------------------
class Root(msgspec.Struct):
    auth: AuthConfig | None = None


class Route(msgspec.Struct):
    name: str = "r"
    auth: object = False
    roles: object = None


def auth_cfg(**kw) -> AuthConfig:
    return msgspec.convert(kw, AuthConfig, dec_hook=dec_hook)


def root(**kw) -> Root:
    return Root(auth_cfg(**kw))


def ctx(headers=(), method: str = "GET", path: str = "/api/v1/x") -> Ctx:
    c = Ctx(Request.build(method, path.encode(), list(headers), peer_ip="198.51.100.7"))
    c.request_id = "req-1"
    return c


def upstream_headers(c) -> list:
    """The header pairs middlewares added to the upstream request."""
    return parse_block(c.up_lines)


def bearer(token: bytes) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + token)


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: dict = {}

    def inc(self, name, labels, value=1) -> None:
        key = (name, tuple(sorted(dict(labels).items())))
        self.counts[key] = self.counts.get(key, 0) + value

    def get(self, name, **labels) -> int:
        return sum(v for (n, ls), v in self.counts.items()
                   if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def deps(**kw) -> tuple[Deps, list, FakeMetrics]:
    audit: list = []
    m = FakeMetrics()
    d = Deps(None, metrics=m, audit=audit.append, **kw)
    return d, audit, m


def problem_of(reply) -> dict:
    return json.loads(reply.body)


def www(reply) -> bytes:
    return reply.get(b"www-authenticate")


# -- a real JWKS server ------------------------------------------------------------------
class JwksServer:
    """An asyncio HTTP(S) server answering one JWKS document, with knobs for failures."""

    def __init__(self, keys: list[dict], *, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.keys = keys
        self.ssl = ssl_ctx
        self.delay = 0.0            # seconds before answering
        self.status = 200
        self.body: bytes | None = None   # raw body instead of the key set
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.etag: str | None = None
        self.requests: list[dict] = []
        self.port = 0
        self._server = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def start(self) -> "JwksServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            self.requests.append({"line": lines[0], "headers": hdrs})
            if self.delay:
                await asyncio.sleep(self.delay)
            body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
            status = self.status
            extra = dict(self.headers)
            if self.etag:
                extra["ETag"] = self.etag
                if hdrs.get("if-none-match") == self.etag and status == 200:
                    status, body = 304, b""
            out = [f"HTTP/1.1 {status} X", "Content-Type: application/json", "Connection: close"]
            out += [f"{k}: {v}" for k, v in extra.items()]
            if self.chunked and body:
                out.append("Transfer-Encoding: chunked")
                mid = len(body) // 2
                payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:mid], body[mid:]) if p)
                payload += b"0\r\n\r\n"
            else:
                out.append(f"Content-Length: {len(body)}")
                payload = body
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + payload)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


