"""JWT validation: every algorithm with tokens from three libraries, the claim rules, and
the RFC 8725 attack list, driven through the middleware's ``request_filter`` with
hand-built Ctx objects."""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest

from fastgw.auth.token import AuthFailure, Rules, Verifier
from fastgw.auth.keys import KeyIndex, KeyRing, secret_key
from fastgw.middleware import auth as auth_mw
from fastgw.middleware.auth import build

from tests.support.auth import (ALL_ALGS, MINTERS, SECRET, Route, b64, bearer, claims, ctx, deps, ed_key, jwk_of,
                                mint, mint_hs256, private_for, private_pem, public_pem, root, rsa_key, unb64,
                                upstream_headers, www)


def key_cfg(alg: str, key=None, kid: str | None = None) -> dict:
    """Config for one key verifying ``alg``: jwt_secret for HS*, an inline PEM otherwise."""
    if alg.startswith("HS"):
        return {"jwt_secret": SECRET, "algorithms": [alg]}
    priv = private_for(alg) if key is None else key
    k = {"pem": public_pem(priv), "algorithms": [alg]}
    if kid:
        k["kid"] = kid
    return {"keys": [k]}


def make(route=None, **cfg):
    d, audit, m = deps()
    mw = build(root(**cfg), None, route or Route("api", auth=True), d)
    return mw, audit, m


def call(mw, token: bytes | None, method="GET", extra=()):
    hs = [(b"Host", b"gw")] + ([bearer(token)] if token is not None else []) + list(extra)
    c = ctx(hs, method=method)
    return mw.request_filter(c), c


def reason(reply) -> str:
    """The error_description of a 401, for readable asserts."""
    return www(reply).decode()


# -- every algorithm, three minting libraries ----------------------------------------------
@pytest.mark.parametrize("alg", ALL_ALGS)
@pytest.mark.parametrize("lib", ["pyjwt", "jwcrypto", "joserfc"])
def test_every_algorithm_from_every_library(alg, lib):
    mw, _, _ = make(**key_cfg(alg))
    tok = MINTERS[lib](alg, claims(roles=["editor"]))
    r, c = call(mw, tok)
    assert r is None, reason(r)
    assert c.user == "alice" and c.roles == frozenset({"editor"})
    assert (b"X-User-Id", b"alice") in upstream_headers(c)


@pytest.mark.parametrize("lib", ["pyjwt", "jwcrypto", "joserfc"])
def test_ed448(lib):
    priv = ed_key("Ed448")
    mw, _, _ = make(keys=[{"pem": public_pem(priv), "algorithms": ["EdDSA"]}])
    r, c = call(mw, MINTERS[lib]("EdDSA", claims(), priv))
    assert r is None and c.user == "alice"


@pytest.mark.parametrize("alg", [a for a in ALL_ALGS if not a.startswith("HS")])
def test_algorithm_defaults_from_key_type(alg):
    """A PEM key without 'algorithms' gets its type's usual algorithm only."""
    mw, _, _ = make(keys=[{"pem": public_pem(private_for(alg))}])
    r, _ = call(mw, mint(alg))
    usual = {"RS256", "ES256", "ES384", "ES512", "EdDSA"}
    assert (r is None) == (alg in usual)


# -- claims ----------------------------------------------------------------------------------
def test_expired_and_leeway():
    mw, _, m = make(**key_cfg("HS256"), leeway="30s")
    now = int(time.time())
    r, _ = call(mw, mint("HS256", claims(exp=now - 10, iat=now - 100)))
    assert r is None  # inside the leeway
    r, _ = call(mw, mint("HS256", claims(exp=now - 31, iat=now - 100)))
    assert r.status == 401 and "expired" in reason(r)
    assert m.get("fastgw_auth_decisions_total", result="expired") == 1


def test_exp_required_by_default():
    mw, _, _ = make(**key_cfg("HS256"))
    r, _ = call(mw, mint("HS256", claims(exp=None)))
    assert r.status == 401 and "lacks a required claim" in reason(r)
    mw, _, _ = make(**key_cfg("HS256"), require=[])
    r, _ = call(mw, mint("HS256", claims(exp=None)))
    assert r is None


def test_nbf_and_iat_in_future():
    mw, _, _ = make(**key_cfg("HS256"), leeway="5s")
    now = int(time.time())
    r, _ = call(mw, mint("HS256", claims(nbf=now + 60)))
    assert r.status == 401 and "not valid yet" in reason(r)
    r, _ = call(mw, mint("HS256", claims(iat=now + 60, exp=now + 120)))
    assert r.status == 401 and "not valid yet" in reason(r)
    r, _ = call(mw, mint("HS256", claims(nbf=now + 3)))
    assert r is None


@pytest.mark.parametrize("bad", ["soon", True, [1], {"a": 1}])
def test_non_numeric_time_claims(bad):
    mw, _, _ = make(**key_cfg("HS256"))
    for claim in ("exp", "nbf", "iat"):
        r, _ = call(mw, mint("HS256", claims(**{claim: bad})))
        assert r.status == 401 and "invalid claim" in reason(r), claim


def test_token_expiry_caps_lifetime():
    mw, _, _ = make(**key_cfg("HS256"), token_expiry="1h")
    now = int(time.time())
    assert call(mw, mint("HS256", claims(iat=now, exp=now + 3600)))[0] is None
    r, _ = call(mw, mint("HS256", claims(iat=now, exp=now + 3601)))
    assert r.status == 401 and "lifetime" in reason(r)
    r, _ = call(mw, mint("HS256", claims(iat=None)))  # lifetime unknown: iat required
    assert r.status == 401 and "required claim" in reason(r)


def test_issuer():
    mw, _, _ = make(**key_cfg("HS256"), issuer=["https://idp.example", "https://idp2.example"])
    assert call(mw, mint("HS256", claims(iss="https://idp2.example")))[0] is None
    for iss in ("https://evil.example", None, ["https://idp.example"], 7):
        r, _ = call(mw, mint_hs256(claims(iss=iss)))
        assert r.status == 401 and "issuer" in reason(r), iss


def test_audience():
    mw, _, _ = make(**key_cfg("HS256"), audience="api")
    assert call(mw, mint("HS256", claims(aud="api")))[0] is None
    assert call(mw, mint("HS256", claims(aud=["other", "api"])))[0] is None
    for aud in ("other", ["other"], None, 5, [5]):
        r, _ = call(mw, mint("HS256", claims(aud=aud)))
        assert r.status == 401 and "audience" in reason(r), aud


def test_token_with_audience_refused_where_none_configured():
    """RFC 7519 §4.1.3: a recipient not named in aud must reject the token."""
    mw, _, _ = make(**key_cfg("HS256"))
    r, _ = call(mw, mint("HS256", claims(aud="payments")))
    assert r.status == 401 and "audience" in reason(r)


def test_per_route_audience_via_auth_routes():
    cfg = dict(**key_cfg("HS256"), audience="api", routes={"billing": {"audience": "billing"}})
    d, _, _ = deps()
    rt = root(**cfg)
    api = build(rt, None, Route("api", auth=True), d)
    billing = build(rt, None, Route("billing", auth=True), d)
    tok_api = mint("HS256", claims(aud="api"))
    tok_bill = mint("HS256", claims(aud="billing"))
    assert call(api, tok_api)[0] is None
    assert call(billing, tok_bill)[0] is None
    assert call(billing, tok_api)[0].status == 401   # cached for 'api', still refused here
    assert call(api, tok_bill)[0].status == 401
    assert api.verifier is not billing.verifier


def test_per_route_audience_via_route_auth_block():
    from fastgw.config.auth import RouteAuth
    mw, _, _ = make(route=Route("x", auth=RouteAuth(audience="x-api")), **key_cfg("HS256"))
    assert call(mw, mint("HS256", claims(aud="x-api")))[0] is None
    assert call(mw, mint("HS256", claims(aud="api")))[0].status == 401


def test_typ_enforced_when_configured():
    """RFC 8725 §3.11 explicit typing: an ID token or other JWT is not an access token."""
    mw, _, _ = make(**key_cfg("HS256"), typ="at+jwt")
    assert call(mw, mint("HS256", headers={"typ": "at+jwt"}))[0] is None
    assert call(mw, mint("HS256", headers={"typ": "application/at+JWT"}))[0] is None
    r, _ = call(mw, mint("HS256"))  # pyjwt writes typ: JWT
    assert r.status == 401 and "header" in reason(r)


def test_sub_with_control_characters_is_refused():
    mw, _, _ = make(**key_cfg("HS256"))
    r, _ = call(mw, mint("HS256", claims(sub="alice\r\nX-User-Roles: admin")))
    assert r.status == 401 and "invalid claim" in reason(r)


def test_numeric_sub_is_stringified():
    mw, _, _ = make(**key_cfg("HS256"))
    r, c = call(mw, mint("HS256", claims(sub=1234)))
    assert r is None and c.user == "1234"


# -- RFC 8725 attack list --------------------------------------------------------------------
def test_alg_none_refused():
    mw, _, _ = make(**key_cfg("HS256"))
    h = b64({"alg": "none", "typ": "JWT"})
    p = b64(claims(roles=["admin"]))
    for tok in (h + b"." + p + b".", h + b"." + p + b"." + b64(b"sig")):
        r, _ = call(mw, tok)
        assert r.status == 401, tok
    for alg in ("None", "NONE", "nOnE"):
        r, _ = call(mw, b64({"alg": alg}) + b"." + p + b"." + b64(b"x"))
        assert r.status == 401 and "algorithm" in reason(r)


def test_hs_rs_confusion_refused():
    """HS256 signed with the RSA public key's PEM as the HMAC secret."""
    import hashlib
    import hmac
    priv = rsa_key()
    pem = public_pem(priv).encode()
    mw, _, _ = make(keys=[{"pem": pem.decode(), "algorithms": ["RS256"], "kid": "rsa"}])
    for hdr in ({"alg": "HS256", "kid": "rsa"}, {"alg": "HS256"}):
        signing = b64(hdr) + b"." + b64(claims(roles=["admin"]))
        tok = signing + b"." + b64(hmac.new(pem, signing, hashlib.sha256).digest())
        r, _ = call(mw, tok)
        assert r.status == 401 and "algorithm" in reason(r)
    # and with an HS key configured beside it, the forged token still fails
    mw, _, _ = make(jwt_secret=SECRET, keys=[{"pem": pem.decode(), "algorithms": ["RS256"]}])
    signing = b64({"alg": "HS256"}) + b"." + b64(claims(roles=["admin"]))
    tok = signing + b"." + b64(hmac.new(pem, signing, hashlib.sha256).digest())
    r, _ = call(mw, tok)
    assert r.status == 401 and "signature" in reason(r)


def test_alg_not_pinned_for_key_refused():
    """PS256 on a key pinned to RS256; ES384 on a P-256 key pinned to ES256."""
    mw, _, _ = make(keys=[{"pem": public_pem(rsa_key()), "algorithms": ["RS256"]}])
    assert call(mw, mint("PS256"))[0].status == 401
    assert call(mw, mint("RS256"))[0] is None
    mw, _, _ = make(keys=[{"pem": public_pem(private_for("ES256")), "algorithms": ["ES256"]},
                          {"pem": public_pem(private_for("ES384")), "algorithms": ["ES384"], "kid": "p384"}])
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    for hdr in ({"alg": "ES384", "kid": "p384"}, {"alg": "ES384"}):
        signing = b64(hdr) + b"." + b64(claims())
        r_, s_ = decode_dss_signature(private_for("ES256").sign(signing, ec.ECDSA(hashes.SHA384())))
        forged = signing + b"." + b64(r_.to_bytes(48, "big") + s_.to_bytes(48, "big"))
        assert call(mw, forged)[0].status == 401
    assert call(mw, mint("ES256"))[0] is None


def test_unknown_kid_refused():
    mw, _, m = make(keys=[{"pem": public_pem(rsa_key()), "algorithms": ["RS256"], "kid": "k1"}])
    assert call(mw, mint("RS256", headers={"kid": "k1"}))[0] is None
    r, _ = call(mw, mint("RS256", headers={"kid": "k2"}))
    assert r.status == 401 and "key is unknown" in reason(r)
    assert m.get("fastgw_auth_decisions_total", result="unknown_key") == 1


def test_kid_matching_rules():
    """kid names a key: only that one (or kid-less keys) are tried; no kid: all keys."""
    a, b = rsa_key(0), rsa_key(1)
    mw, _, _ = make(keys=[{"pem": public_pem(a), "kid": "a"}, {"pem": public_pem(b), "kid": "b"}])
    assert call(mw, mint("RS256", key=a, headers={"kid": "a"}))[0] is None
    assert call(mw, mint("RS256", key=b))[0] is None                         # no kid: tries all
    assert call(mw, mint("RS256", key=b, headers={"kid": "a"}))[0].status == 401  # wrong key named
    mw, _, _ = make(jwt_secret=SECRET)
    assert call(mw, mint("HS256", headers={"kid": "anything"}))[0] is None   # kid-less key


def test_tampered_signature_payload_header():
    mw, _, _ = make(**key_cfg("RS256", kid="k"))
    tok = mint("RS256", claims(roles=["viewer"]), headers={"kid": "k"})
    h, p, s = tok.split(b".")
    flipped = s[:10] + (b"A" if s[10:11] != b"A" else b"B") + s[11:]
    assert call(mw, h + b"." + p + b"." + flipped)[0].status == 401
    evil = json.loads(unb64(p))
    evil["roles"] = ["admin"]
    assert "signature" in reason(call(mw, h + b"." + b64(evil) + b"." + s)[0])
    hdr = json.loads(unb64(h))
    hdr["typ"] = "at+jwt"
    assert call(mw, b64(hdr) + b"." + p + b"." + s)[0].status == 401
    assert call(mw, tok)[0] is None


def test_oversized_token_refused_before_crypto(monkeypatch):
    mw, _, m = make(**key_cfg("RS256"))
    big = mint("RS256", claims(pad="x" * 9000))
    assert len(big) > 8192

    def boom(*a, **k):
        raise AssertionError("crypto reached")
    monkeypatch.setattr(Verifier, "verify", boom)
    monkeypatch.setattr(Verifier, "cached", boom)
    r, _ = call(mw, big)
    assert r.status == 401 and "too large" in reason(r)
    assert m.get("fastgw_auth_decisions_total", result="malformed") == 1


def test_max_token_size_configurable():
    mw, _, _ = make(**key_cfg("HS256"), max_token_size="16k")
    assert call(mw, mint("HS256", claims(pad="x" * 9000)))[0] is None


@pytest.mark.parametrize("tok", [
    b"not-a-token",
    b"a.b",
    b"a.b.c.d",
    b"a.b.c.d.e",                                   # a JWE's shape
    b64(b"not json") + b"." + b64({"sub": "x"}) + b".c2ln",
    b64(b"[1,2]") + b"." + b64({"sub": "x"}) + b".c2ln",
    b64({"alg": 256}) + b"." + b64({"sub": "x"}) + b".c2ln",
    b64({"alg": "HS256", "kid": 5}) + b"." + b64({"sub": "x"}) + b".c2ln",
    b64({"alg": "HS256"}) + b"=." + b64({"sub": "x"}) + b".c2ln",   # padding
    b64({"alg": "HS256"}) + b"." + b64({"sub": "x"}) + b".c2l+",    # not url-safe
    b64({"alg": "HS256"}) + b" ." + b64({"sub": "x"}) + b".c2ln",
    b"\xff\xfe.\x00.\x01",
])
def test_malformed_tokens(tok):
    mw, _, _ = make(**key_cfg("HS256"))
    r, _ = call(mw, tok)
    assert r.status == 401
    assert www(r).startswith(b'Bearer error="invalid_token"')


def test_non_json_payload_with_valid_signature():
    import hashlib
    import hmac
    mw, _, _ = make(**key_cfg("HS256"))
    signing = b64({"alg": "HS256"}) + b"." + b64(b"\x00not json")
    tok = signing + b"." + b64(hmac.new(SECRET.encode(), signing, hashlib.sha256).digest())
    assert "malformed" in reason(call(mw, tok)[0])


def test_embedded_jwk_and_jku_are_ignored():
    """A token carrying its own key (jwk) or a key URL (jku/x5u) gains nothing."""
    attacker = rsa_key(7)
    mw, _, _ = make(keys=[{"pem": public_pem(rsa_key()), "algorithms": ["RS256"]}])
    hdrs = {"jwk": jwk_of(attacker), "jku": "http://127.0.0.1:1/jwks", "x5u": "http://127.0.0.1:1/x"}
    r, _ = call(mw, mint("RS256", claims(roles=["admin"]), key=attacker, headers=hdrs))
    assert r.status == 401 and "signature" in reason(r)


def test_crit_and_b64_refused():
    mw, _, _ = make(**key_cfg("HS256"))
    assert call(mw, mint("HS256", headers={"crit": ["exp"]}))[0].status == 401
    assert call(mw, mint("HS256", headers={"b64": False, "crit": ["b64"]}))[0].status == 401
    assert call(mw, mint("HS256", headers={"b64": False}))[0].status == 401


def test_ecdsa_der_signature_and_bad_length_refused():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    priv = private_for("ES256")
    mw, _, _ = make(**key_cfg("ES256"))
    signing = b64({"alg": "ES256"}) + b"." + b64(claims())
    der = priv.sign(signing, ec.ECDSA(hashes.SHA256()))
    assert call(mw, signing + b"." + b64(der))[0].status == 401
    good = mint("ES256")
    h, p, s = good.split(b".")
    assert call(mw, h + b"." + p + b"." + b64(unb64(s) + b"\x00"))[0].status == 401
    assert call(mw, good)[0] is None


def test_weak_rsa_key_refused_at_build():
    with pytest.raises(ValueError, match="2048"):
        make(keys=[{"pem": public_pem(rsa_key(0, 1024)), "algorithms": ["RS256"]}])


def test_private_pem_refused_at_build():
    with pytest.raises(ValueError, match="private key"):
        make(keys=[{"pem": private_pem(rsa_key()).decode()}])


def test_key_type_algorithm_mismatch_refused_at_build():
    with pytest.raises(ValueError, match="does not apply"):
        make(keys=[{"pem": public_pem(private_for("ES256")), "algorithms": ["ES384"]}])
    with pytest.raises(ValueError, match="does not apply"):
        make(keys=[{"pem": public_pem(rsa_key()), "algorithms": ["EdDSA"]}])


def test_key_file_and_certificate(tmp_path):
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    priv = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(priv.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(priv, hashes.SHA256()))
    f = tmp_path / "idp.crt"
    f.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    mw, _, _ = make(keys=[{"file": str(f), "algorithms": ["RS256", "PS256"]}])
    assert call(mw, mint("RS256"))[0] is None
    assert call(mw, mint("PS256"))[0] is None
    with pytest.raises(ValueError, match=r"auth.keys\[0\].*cannot read"):
        make(keys=[{"file": str(tmp_path / "missing.pem")}])


# -- the verifier alone ----------------------------------------------------------------------
def test_verifier_is_deterministic_about_reasons():
    ring = KeyRing(KeyIndex([secret_key(SECRET, ["HS256"])]))
    v = Verifier(ring, Rules(), None)
    now = time.time()
    with pytest.raises(AuthFailure) as e:
        v.verify(mint("HS256", claims(exp=int(now) - 100)), now)
    assert e.value.reason == "expired" and e.value.user == "alice"   # signature was valid
    with pytest.raises(AuthFailure) as e:
        v.verify(mint("HS256", claims(), key="y" * 32), now)
    assert e.value.reason == "signature" and e.value.user is None     # never trust the payload


@pytest.mark.parametrize("case", [
    dict(exp=-10), dict(exp=-40), dict(nbf=20), dict(nbf=40), dict(iat=20), dict(iat=40),
    dict(aud="api"), dict(aud="other"), dict(aud=["x", "api"]), dict(iss="https://idp"), dict(iss="bad"),
])
def test_claims_agree_with_pyjwt(case):
    """Differential check of the claim rules against pyjwt.decode."""
    import jwt as pyjwt
    now = int(time.time())
    c = claims()
    for k, v in case.items():
        c[k] = now + v if k in ("exp", "nbf", "iat") else v
    c.setdefault("aud", "api")
    c.setdefault("iss", "https://idp")
    tok = mint("HS256", c)
    try:
        pyjwt.decode(tok, SECRET, algorithms=["HS256"], audience="api", issuer="https://idp", leeway=30)
        theirs = True
    except pyjwt.PyJWTError:
        theirs = False
    mw, _, _ = make(jwt_secret=SECRET, audience="api", issuer="https://idp", leeway="30s")
    ours = call(mw, tok)[0] is None
    assert ours == theirs


def test_module_exports():
    assert callable(auth_mw.build) and callable(auth_mw.ready)


# -- self-tests: the minting libraries agree ----------------------------------------------
@pytest.mark.parametrize("alg", ALL_ALGS)
@pytest.mark.parametrize("lib", ["jwcrypto", "joserfc"])
def test_independent_libraries_produce_tokens_pyjwt_accepts(alg, lib):
    tok = MINTERS[lib](alg, claims())
    priv = private_for(alg)
    key = priv if isinstance(priv, str) else priv.public_key()
    out = pyjwt.decode(tok, key, algorithms=[alg])
    assert out["sub"] == "alice"
