"""Verification keys: loading, algorithm pinning, and the index tokens are matched against.

Rules this module keeps:

1. A ``Key`` carries the exact algorithms it may verify (``algs``), fixed when it is
   loaded.  An algorithm is only ever pinned to a key whose type can use it (HS* to a
   secret, RS*/PS* to an RSA key of at least 2048 bits, ES256/384/512 to the matching
   P-256/P-384/P-521 curve, EdDSA to Ed25519/Ed448), so HS/RS confusion cannot be
   configured, let alone forced by a token header.
2. The gateway only holds public keys: a PEM private key in the config is an error, and a
   JWK with private members is skipped (its publisher leaked it).
3. Matching (``KeyIndex.candidates``) follows Envoy's rule: a token naming a ``kid`` is
   checked against the keys with that kid and the keys without one; a token without a kid
   against every key; always filtered by the token's ``alg``.  Except: a fetched set with
   more than one key needs the token to name a ``kid`` (OIDC Core §10.1 requires one), so
   a kid-less junk token costs at most one signature check per JWKS, not one per key.

The crypto itself is pyjwt's ``Algorithm`` objects; each key is prepared once here.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from fastgw.config.auth import HMAC_ALGS, StaticKey

ALGORITHMS = get_default_algorithms()   # name -> pyjwt Algorithm instance (incl. "none": never used)
MIN_RSA_BITS = 2048
MAX_KID_LEN = 256

_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class BadKey(ValueError):
    """A key that cannot be used, with the reason."""


def compatible(key, alg: str) -> bool:
    """True when ``alg`` can be used with ``key`` (a public key object or secret bytes)."""
    if isinstance(key, bytes):
        return alg in HMAC_ALGS
    if isinstance(key, rsa.RSAPublicKey):
        return alg[:2] in ("RS", "PS")
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVE_ALG.get(key.curve.name) == alg
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return alg == "EdDSA"
    return False


def default_algs(key) -> list[str]:
    if isinstance(key, bytes):
        return ["HS256"]
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        a = _CURVE_ALG.get(key.curve.name)
        return [a] if a else []
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return ["EdDSA"]
    return []


def _describe(key) -> str:
    if isinstance(key, bytes):
        return "shared secret"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size} key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name} key"
    return type(key).__name__.replace("PublicKey", "") + " key"


class Key:
    """One usable key: its kid, pinned algorithms and a prepared verifier per algorithm."""

    __slots__ = ("kid", "algs", "verifiers", "origin", "fingerprint")

    def __init__(self, material, algs: list[str], kid: str | None, origin: str) -> None:
        if isinstance(material, rsa.RSAPublicKey) and material.key_size < MIN_RSA_BITS:
            raise BadKey(f"RSA key of {material.key_size} bits; at least {MIN_RSA_BITS} required")
        if not algs:
            raise BadKey(f"no algorithm applies to this {_describe(material)}")
        for a in algs:
            if a == "none" or a not in ALGORITHMS or not compatible(material, a):
                raise BadKey(f"algorithm {a} does not apply to this {_describe(material)}")
        self.kid = kid
        self.algs = frozenset(algs)
        self.origin = origin
        # alg -> (pyjwt Algorithm, prepared key); prepare_key also refuses PEM-looking
        # HMAC secrets, a second guard against confusion.
        self.verifiers = {a: (ALGORITHMS[a], ALGORITHMS[a].prepare_key(material)) for a in algs}
        if isinstance(material, bytes):
            pub = material
        else:
            pub = material.public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        self.fingerprint = (kid, tuple(sorted(algs)), pub)

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r}, algs={sorted(self.algs)}, origin={self.origin!r})"


def load_pem(data: bytes):
    """A public key from PEM (SPKI/PKCS#1 public key or an X.509 certificate)."""
    if b"PRIVATE KEY" in data:
        raise BadKey("a private key; give the gateway the public key or certificate only")
    if b"-----BEGIN CERTIFICATE" in data:
        try:
            return x509.load_pem_x509_certificate(data).public_key()
        except ValueError as e:
            raise BadKey(f"not a valid PEM certificate: {e}") from None
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise BadKey(f"not a valid PEM public key: {e}") from None


def load_static(cfg: StaticKey, where: str) -> Key:
    """A ``Key`` from one ``auth.keys`` entry (reads ``file``); errors name ``where``."""
    try:
        if cfg.secret is not None:
            material = cfg.secret.encode()
        else:
            if cfg.file is not None:
                try:
                    with open(cfg.file, "rb") as f:
                        data = f.read(1 << 20)
                except OSError as e:
                    raise BadKey(f"cannot read {cfg.file!r}: {e.strerror}") from None
            else:
                data = cfg.pem.encode()
            material = load_pem(data)
        algs = list(cfg.algorithms) or default_algs(material)
        return Key(material, algs, cfg.kid, where)
    except BadKey as e:
        raise ValueError(f"{where}: {e}") from None


def secret_key(secret: str, algs: list[str]) -> Key:
    return Key(secret.encode(), list(algs), None, "auth.jwt_secret")


def key_from_jwk(jwk: dict, allowed: list[str], origin: str) -> Key:
    """A ``Key`` from one JWK of a fetched set, pinned to ``allowed`` ∩ what the JWK says."""
    if not isinstance(jwk, dict):
        raise BadKey("not a JSON object")
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LEN):
        raise BadKey("bad 'kid'")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise BadKey(f"use={use!r}, not a signature key")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise BadKey("key_ops does not include 'verify'")
    if any(m in jwk for m in _PRIVATE_JWK_MEMBERS):
        raise BadKey(f"kty={kty!r} with private or symmetric members; refused")
    try:
        if kty == "RSA":
            material = RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC":
            material = ECAlgorithm.from_jwk(jwk)
        elif kty == "OKP":
            material = OKPAlgorithm.from_jwk(jwk)
        else:
            raise BadKey(f"unsupported kty {kty!r}")
    except BadKey:
        raise
    except Exception as e:  # noqa: BLE001 - pyjwt raises InvalidKeyError/ValueError/KeyError/TypeError on bad members
        raise BadKey(f"invalid {kty} key: {e}") from None
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in allowed:
            raise BadKey(f"alg {alg!r} is not pinned for this JWKS")
        algs = [alg]
    else:
        algs = [a for a in allowed if compatible(material, a)]
    return Key(material, algs, kid, origin)


class KeyIndex:
    """Keys by kid, for one key source; immutable once built."""

    __slots__ = ("keys", "by_kid", "nokid", "fingerprint", "kid_required")

    def __init__(self, keys: list[Key], *, fetched: bool = False) -> None:
        self.keys = tuple(keys)
        self.kid_required = fetched and len(keys) > 1
        by_kid: dict[str, list[Key]] = {}
        nokid = []
        for k in keys:
            if k.kid is None:
                nokid.append(k)
            else:
                by_kid.setdefault(k.kid, []).append(k)
        self.by_kid = {kid: tuple(v) for kid, v in by_kid.items()}
        self.nokid = tuple(nokid)
        self.fingerprint = frozenset(k.fingerprint for k in keys)

    def candidates(self, kid: str | None, alg: str, out: list) -> None:
        """Append to ``out`` the (Algorithm, prepared key) pairs that may verify the token."""
        if kid is None:
            if self.kid_required:
                return
            pool = self.keys
        else:
            pool = self.by_kid.get(kid, ()) + self.nokid
        for k in pool:
            v = k.verifiers.get(alg)
            if v is not None:
                out.append(v)

    def has_kid(self, kid: str) -> bool:
        return kid in self.by_kid


EMPTY = KeyIndex([])


class KeyRing:
    """Every key a verifier may use: the static keys, then each JWKS source's current set.

    ``sources`` are objects with an ``index`` (a ``KeyIndex`` swapped on refresh), a
    ``ready`` flag and ``algorithms``; see ``jwks.JwksSource``.
    """

    __slots__ = ("static", "sources", "algs", "has_jwks")

    def __init__(self, static: KeyIndex, sources=()) -> None:
        self.static = static
        self.sources = tuple(sources)
        algs = set()
        for k in static.keys:
            algs |= k.algs
        for s in self.sources:
            algs.update(s.algorithms)
        self.algs = frozenset(algs)
        self.has_jwks = bool(self.sources)

    def candidates(self, kid: str | None, alg: str) -> list:
        out: list = []
        self.static.candidates(kid, alg, out)
        for s in self.sources:
            s.index.candidates(kid, alg, out)
        return out

    def knows_kid(self, kid: str) -> bool:
        return self.static.has_kid(kid) or any(s.index.has_kid(kid) for s in self.sources)

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.sources)
