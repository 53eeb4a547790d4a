"""The auth middleware around the verifier: RBAC, identity headers, token sources, the
verified-token cache, metrics, audit, build/close/ready, and the config schema."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from fastgw.config.auth import AuthConfig, check_files
from fastgw.config.base import dec_hook
from fastgw.middleware import auth as auth_mw
from fastgw.middleware.auth import Auth, JwksAuth, StripIdentity, build
from fastgw.pipeline.deps import Deps
from fastgw.pipeline.middleware import overrides

from tests.support.auth import (SECRET, Root, Route, bearer, claims, ctx, deps, mint, mint_hs256, problem_of,
                                root, upstream_headers, www)

SEED_ROLES = ["admin", "editor", "viewer", "maintenance", "analyst", "auditor", "security", "monitor"]
SEED = dict(jwt_secret=SECRET, token_expiry="24h", refresh_token_expiry="7d", roles=SEED_ROLES)


def make(route=None, d=None, **cfg):
    if d is None:
        d, audit, m = deps()
    else:
        audit, m = None, None
    mw = build(root(**(cfg or SEED)), None, route or Route("api", auth=True), d)
    return mw, audit, m


def tok(**kw) -> bytes:
    return mint("HS256", claims(**kw))


def run(mw, token=None, method="GET", headers=()):
    hs = [(b"Host", b"gw"), (b"Accept", b"*/*")] + list(headers)
    if token is not None:
        hs.append(bearer(token))
    c = ctx(hs, method=method)
    return mw.request_filter(c), c


# -- RBAC --------------------------------------------------------------------------------
def test_roles_any_of():
    mw, _, m = make(Route("admin", auth=True, roles=["admin", "security"]))
    assert run(mw, tok(roles=["security"]))[0] is None
    r, _ = run(mw, tok(roles=["viewer", "editor"]))
    assert r.status == 403
    assert problem_of(r)["status"] == 403 and problem_of(r)["request_id"] == "req-1"
    assert www(r).startswith(b'Bearer error="insufficient_scope"')
    assert m.get("fastgw_auth_decisions_total", route="admin", result="forbidden") == 1


def test_roles_per_method():
    roles = {"GET": ["viewer", "editor", "admin"], "POST": ["editor", "admin"], "PUT": ["editor", "admin"],
             "DELETE": ["admin"]}
    mw, _, _ = make(Route("docs", auth=True, roles=roles))
    viewer, editor, admin = tok(roles=["viewer"]), tok(roles=["editor"]), tok(roles=["admin"])
    table = [("GET", viewer, None), ("HEAD", viewer, None), ("POST", viewer, 403), ("POST", editor, None),
             ("PUT", editor, None), ("DELETE", editor, 403), ("DELETE", admin, None),
             ("PATCH", admin, 403),  # not listed, no "*": fail closed
             ("OPTIONS", admin, 403)]
    for method, t, want in table:
        r, _ = run(mw, t, method=method)
        assert (r.status if r else None) == want, (method, want)


def test_roles_star_default_and_empty_list():
    mw, _, _ = make(Route("x", auth=True, roles={"DELETE": ["admin"], "*": []}))
    assert run(mw, tok(roles=[]), method="PATCH")[0] is None
    assert run(mw, tok(roles=[]), method="DELETE")[0].status == 403


def test_roles_imply_auth():
    mw, _, _ = make(Route("x", auth=False, roles=["admin"]))
    assert isinstance(mw, Auth)
    assert run(mw)[0].status == 401


def test_roles_from_scope_and_nested_claims():
    cfg = dict(jwt_secret=SECRET, roles_claim=["scope", "realm_access.roles"])
    mw, _, _ = make(Route("x", auth=True, roles=["files.write", "admin"]), **cfg)
    r, c = run(mw, tok(roles=None, scope="openid files.write"))
    assert r is None and c.roles == {"openid", "files.write"}
    r, c = run(mw, tok(roles=None, realm_access={"roles": ["admin"]}))
    assert r is None and c.roles == {"admin"}
    r, c = run(mw, tok(roles=None, scope=["files.write"], realm_access="admin"))  # list scope
    assert r is None and c.roles == {"files.write"}
    assert run(mw, tok(roles=None, scope=None))[0].status == 403


def test_seed_roles_work_out_of_the_box():
    mw, _, _ = make(Route("svg", auth=True, roles=SEED_ROLES))
    for role in SEED_ROLES:
        assert run(mw, tok(roles=[role]))[0] is None


# -- identity headers ------------------------------------------------------------------------
FORGED = [(b"X-User-Id", b"root"), (b"x-user-roles", b"admin"), (b"X-USER-ID", b"root2"),
          (b"X-Tenant", b"evil"), (b"X-Extra-Strip", b"1")]


def test_forged_identity_headers_stripped_on_auth_route():
    cfg = dict(jwt_secret=SECRET, identity_headers={"claims": {"tenant": "X-Tenant"}},
               strip_headers=["X-Extra-Strip"])
    mw, _, _ = make(**cfg)
    r, c = run(mw, tok(roles=["viewer", "editor"], tenant="acme"), headers=FORGED)
    assert r is None
    names = [n.lower() for n, _ in c.fwd]
    assert not {b"x-user-id", b"x-user-roles", b"x-tenant", b"x-extra-strip"} & set(names)
    assert upstream_headers(c) == [(b"X-User-Id", b"alice"), (b"X-User-Roles", b"editor,viewer"),
                                  (b"X-Tenant", b"acme")]


def test_headers_of_an_identity_name_length_are_forwarded_unless_they_are_one():
    """Forged headers are found by their lengths first (``_forged``): a header of the same
    length as an identity name (Content-Type and x-user-roles: 12) is compared, and kept."""
    same_len = [(b"Content-Type", b"text/plain"), (b"X-USER-idx", b"1"), (b"Accept-Lang", b"x")]
    d, _, _ = deps()
    open_mw = build(root(jwt_secret=SECRET), None, Route("public", auth=False), d)
    c = ctx(same_len)
    assert open_mw.request_filter(c) is None and c.fwd == same_len
    c = ctx([*same_len, (b"x-User-ROLES", b"admin")])
    assert open_mw.request_filter(c) is None and c.fwd == same_len
    mw, _, _ = make()
    r, c = run(mw, tok(roles=["viewer"]), headers=[*same_len, (b"X-user-id", b"root")])
    assert r is None and [h for h in c.fwd if h[0] not in (b"Accept", b"Authorization")] == same_len
    assert upstream_headers(c)[0] == (b"X-User-Id", b"alice")


def test_forged_identity_headers_stripped_on_denied_request():
    mw, _, _ = make()
    r, c = run(mw, None, headers=FORGED)
    assert r.status == 401
    assert all(n.lower() not in (b"x-user-id", b"x-user-roles") for n, _ in c.fwd)


def test_forged_identity_headers_stripped_on_open_route():
    cfg = dict(jwt_secret=SECRET, identity_headers={"user": "X-Auth-User"})
    d, _, _ = deps()
    mw = build(root(**cfg), None, Route("public", auth=False), d)
    assert isinstance(mw, StripIdentity)
    c = ctx([(b"Host", b"gw"), (b"X-Auth-User", b"root"), *FORGED[:3]])
    assert mw.request_filter(c) is None
    assert c.fwd == []  # (Host is the Request's raw_host, never in the forwarded list)
    assert c.user is None and upstream_headers(c) == []


def test_open_route_without_auth_section_still_strips():
    d, _, _ = deps()
    mw = build(Root(None), None, Route("public"), d)
    c = ctx([(b"X-User-Id", b"root"), (b"A", b"b")])
    mw.request_filter(c)
    assert c.fwd == [(b"A", b"b")]


def test_global_chain_gets_nothing():
    d, _, _ = deps()
    assert build(root(**SEED), None, None, d) is None


def test_unsafe_roles_kept_out_of_roles_header():
    mw, _, _ = make(Route("x", auth=True, roles=["admin"]))
    r, c = run(mw, tok(roles=["viewer,admin", "a b", "ok"]))
    assert r.status == 403  # "viewer,admin" is not "admin"
    mw, _, _ = make(jwt_secret=SECRET)
    r, c = run(mw, tok(roles=["viewer,admin", "ok"]))
    assert (b"X-User-Roles", b"ok") in upstream_headers(c)


def test_identity_headers_can_be_disabled():
    mw, _, _ = make(jwt_secret=SECRET, identity_headers={"user": None, "roles": None})
    r, c = run(mw, tok(), headers=[(b"X-User-Id", b"root")])
    assert r is None and upstream_headers(c) == [] and c.user == "alice"
    assert all(n.lower() != b"x-user-id" for n, _ in c.fwd)   # always stripped


def test_claims_are_read_only_and_shared():
    mw, _, _ = make()
    t = tok()
    _, c1 = run(mw, t)
    _, c2 = run(mw, t)
    assert c1.claims is c2.claims
    with pytest.raises(TypeError):
        c1.claims["sub"] = "mallory"


# -- token sources -------------------------------------------------------------------------------
def test_missing_token_401_without_error_attribute():
    mw, audit, m = make()
    r, _ = run(mw)
    assert r.status == 401 and www(r) == b"Bearer"
    assert r.get(b"content-type") == b"application/problem+json"
    assert m.get("fastgw_auth_decisions_total", result="missing") == 1
    assert audit[-1]["reason"] == "missing"


def test_realm():
    mw, _, _ = make(jwt_secret=SECRET, realm="fastgw")
    assert www(run(mw)[0]) == b'Bearer realm="fastgw"'
    r, _ = run(mw, b"x.y.z")
    assert www(r).startswith(b'Bearer realm="fastgw", error="invalid_token", error_description=')


def test_other_auth_scheme_is_missing():
    mw, _, _ = make()
    r, _ = run(mw, headers=[(b"Authorization", b"Basic YWxpY2U6cHc=")])
    assert r.status == 401 and www(r) == b"Bearer"


def test_scheme_case_insensitive_and_spaces():
    mw, _, _ = make()
    t = tok()
    for v in (b"bearer " + t, b"BEARER  " + t, b"Bearer " + t + b" "):
        assert run(mw, headers=[(b"authorization", v)])[0] is None, v


def test_empty_bearer():
    mw, _, _ = make()
    r, _ = run(mw, headers=[(b"Authorization", b"Bearer   ")])
    assert r.status == 401 and b"malformed" in www(r)


def test_duplicate_authorization_headers_400():
    mw, _, _ = make()
    r, _ = run(mw, headers=[bearer(tok()), bearer(tok(sub="bob"))])
    assert r.status == 400 and b'error="invalid_request"' in www(r)


def test_cookie_and_custom_header_sources():
    cfg = dict(jwt_secret=SECRET, tokens=[{"header": "X-Api-Token"}, {"cookie": "access_token"},
                                          {"header": "Authorization", "scheme": "Bearer"}])
    mw, _, _ = make(**cfg)
    t = tok()
    assert run(mw, headers=[(b"x-api-token", t)])[0] is None
    assert run(mw, headers=[(b"Cookie", b"theme=dark; access_token=" + t + b"; x=1")])[0] is None
    assert run(mw, headers=[(b"Cookie", b"a=1"), (b"Cookie", b"access_token=" + t)])[0] is None
    assert run(mw, headers=[bearer(t)])[0] is None
    r, _ = run(mw, headers=[(b"Cookie", b"access_token=" + t), (b"Cookie", b"access_token=other")])
    assert r.status == 400
    assert run(mw, headers=[(b"Cookie", b"theme=dark")])[0].status == 401


def test_forward_token_false_drops_the_header():
    mw, _, _ = make(jwt_secret=SECRET, forward_token=False)
    r, c = run(mw, tok())
    assert r is None and all(n.lower() != b"authorization" for n, _ in c.fwd)
    mw, _, _ = make()
    r, c = run(mw, tok())
    assert any(n.lower() == b"authorization" for n, _ in c.fwd)


# -- the verified-token cache ----------------------------------------------------------------------
def test_cache_hit_and_miss_metrics():
    mw, _, m = make()
    t = tok()
    for _ in range(3):
        assert run(mw, t)[0] is None
    assert m.get("fastgw_jwt_cache_total", result="miss") == 1
    assert m.get("fastgw_jwt_cache_total", result="hit") == 2
    assert m.get("fastgw_auth_decisions_total", route="api", result="ok") == 3


def test_cached_token_expires_while_cached(monkeypatch):
    mw, audit, _ = make(jwt_secret=SECRET, leeway="0s")
    now = time.time()
    t = mint("HS256", claims(iat=int(now), exp=int(now) + 2))
    assert run(mw, t)[0] is None
    assert run(mw, t)[0] is None                      # served from the cache
    assert len(mw.verifier.cache) == 1
    monkeypatch.setattr(auth_mw, "wall", lambda: now + 5)
    r, _ = run(mw, t)
    assert r.status == 401 and b"expired" in www(r)
    assert audit[-1]["reason"] == "expired" and audit[-1]["user"] == "alice"
    assert len(mw.verifier.cache) == 0                # dropped


def test_raw_value_memo_is_emptied_with_the_cache():
    """The hit by the Authorization value as sent (``Verifier.front``) goes when the cache
    does (what a JWKS key-set change does), so the token is verified again."""
    mw, _, m = make()
    t = tok(roles=["viewer"])
    assert run(mw, t)[0] is None and len(mw.front) == 1
    assert run(mw, t)[0] is None
    assert m.get("fastgw_jwt_cache_total", result="hit") == 1
    mw.state.clear_cache()
    assert len(mw.front) == 0 and len(mw.verifier.cache) == 0
    assert run(mw, t)[0] is None
    assert m.get("fastgw_jwt_cache_total", result="miss") == 2
    # a refused request never enters it
    r, _ = run(mw, tok(roles=["viewer"], exp=int(time.time()) - 100))
    assert r.status == 401 and len(mw.front) == 1


def test_cached_token_nbf_rechecked(monkeypatch):
    mw, _, _ = make(jwt_secret=SECRET, leeway="0s")
    now = time.time()
    t = mint("HS256", claims(nbf=int(now) - 1))
    assert run(mw, t)[0] is None
    monkeypatch.setattr(auth_mw, "wall", lambda: now - 100)   # clock stepped back
    assert run(mw, t)[0].status == 401


def test_cache_is_shared_by_routes_with_the_same_rules_and_rbac_still_per_route():
    d, _, m = deps()
    rt = root(**SEED)
    a = build(rt, None, Route("a", auth=True, roles=["viewer"]), d)
    b = build(rt, None, Route("b", auth=True, roles=["admin"]), d)
    assert a.verifier is b.verifier
    t = tok(roles=["viewer"])
    assert run(a, t)[0] is None
    assert run(b, t)[0].status == 403
    assert m.get("fastgw_jwt_cache_total", result="hit") == 1


def test_cache_disabled():
    mw, _, m = make(jwt_secret=SECRET, cache_size=0)
    t = tok()
    run(mw, t)
    run(mw, t)
    assert m.get("fastgw_jwt_cache_total", result="miss") == 2


def test_cache_is_bounded():
    mw, _, _ = make(jwt_secret=SECRET, cache_size=3)
    for i in range(10):
        run(mw, tok(sub=f"u{i}"))
    assert len(mw.verifier.cache) == 3


def test_reload_gets_a_fresh_cache_and_releases():
    d, _, _ = deps()
    r1, r2 = root(**SEED), root(**SEED)
    a1 = build(r1, None, Route("a", auth=True), d)
    a1b = build(r1, None, Route("b", auth=True), d)
    a2 = build(r2, None, Route("a", auth=True), d)
    assert a1.verifier.cache is a1b.verifier.cache
    assert a1.verifier.cache is not a2.verifier.cache
    for mw in (a1, a1b, a1b):  # double close is harmless
        mw.close()
    assert a1.state.refs == 0 and a2.state.refs == 1


# -- audit and metrics -------------------------------------------------------------------------
def test_audit_records_never_contain_the_token():
    mw, audit, _ = make(Route("api", auth=True, roles=["admin"]))
    good = tok(roles=["viewer"])
    bad = good[:-3] + b"abc"
    expired = mint("HS256", claims(exp=int(time.time()) - 100))
    for t in (None, good, bad, expired, b"garbage"):
        run(mw, t)
    assert [a["status"] for a in audit] == [401, 403, 401, 401, 401]
    blob = json.dumps(audit)
    for t in (good, bad, expired):
        for part in t.split(b"."):
            assert part.decode() not in blob
    rec = audit[1]
    assert rec["event"] == "auth" and rec["decision"] == "deny" and rec["reason"] == "role"
    assert rec["user"] == "alice" and rec["client_ip"] == "198.51.100.7"
    assert rec["request_id"] == "req-1" and rec["route"] == "api" and rec["method"] == "GET"
    assert audit[2]["user"] is None   # bad signature: the payload is not trusted


def test_audit_allow_optional():
    mw, audit, _ = make(jwt_secret=SECRET, audit_allow=True)
    run(mw, tok())
    assert audit[-1]["decision"] == "allow" and audit[-1]["user"] == "alice"
    mw, audit, _ = make(jwt_secret=SECRET)
    run(mw, tok())
    assert audit == []


def test_failing_audit_sink_does_not_fail_the_request():
    def sink(rec):
        raise OSError("disk full")
    d = Deps(None, audit=sink)
    mw = build(root(**SEED), None, Route("api", auth=True), d)
    assert run(mw)[0].status == 401


def test_no_metrics_no_audit_no_deps():
    mw = build(root(**SEED), None, Route("api", auth=True), None)
    assert run(mw, tok())[0] is None
    assert run(mw)[0].status == 401


# -- contract ----------------------------------------------------------------------------------
def test_hooks_compiled_in():
    mw, _, _ = make()
    assert overrides(mw, "request_filter")
    for hook in ("upstream_request_filter", "response_filter", "response_body_filter", "logging"):
        assert not overrides(mw, hook)
    d, _, _ = deps()
    s = build(root(**SEED), None, Route("x"), d)
    assert overrides(s, "request_filter") and not overrides(s, "logging")


def test_static_keys_use_the_synchronous_class():
    import inspect
    mw, _, _ = make()
    assert type(mw) is Auth and not inspect.iscoroutinefunction(type(mw).request_filter)
    assert inspect.iscoroutinefunction(JwksAuth.request_filter)


def test_ready_without_jwks():
    mw, _, _ = make()
    assert mw.ready() is True
    assert auth_mw.ready(Deps()) is True


# -- config schema ------------------------------------------------------------------------------
def conv(**kw):
    return msgspec.convert(kw, AuthConfig, dec_hook=dec_hook)


def test_seed_section_validates_with_defaults():
    c = conv(**SEED)
    assert c.token_expiry == 86400 and c.refresh_token_expiry == 7 * 86400
    assert c.algorithms == ["HS256"] and c.leeway == 30 and c.max_token_size == 8192
    assert c.require == ["exp"] and c.roles_claim == "roles" and c.cache_size == 10000
    assert c.tokens[0].header == "Authorization" and c.tokens[0].scheme == "Bearer"
    assert c.identity_headers.user == "X-User-Id" and c.identity_headers.roles == "X-User-Roles"
    assert "***" in repr(c) and SECRET not in repr(c)


@pytest.mark.parametrize("bad, msg", [
    (dict(jwt_secret="short"), "at least 32 bytes"),
    (dict(jwt_secret="x" * 40, algorithms=["HS512"]), "at least 64 bytes"),
    (dict(jwt_secret=SECRET, algorithms=["RS256"]), "only HS256"),
    (dict(algorithms=["none"]), "Invalid enum value 'none'"),
    (dict(keys=[{"secret": SECRET, "algorithms": ["RS256"]}]), "only takes HMAC"),
    (dict(keys=[{"pem": "x", "algorithms": ["HS256"]}]), "need a 'secret'"),
    (dict(keys=[{"pem": "x", "file": "y"}]), "exactly one"),
    (dict(jwks=[{"url": "http://idp/jwks"}]), "must be https"),
    (dict(jwks=[{"url": "https://idp/jwks", "algorithms": ["HS256"]}]), "cannot come from a JWKS"),
    (dict(jwks=[{"url": "https://idp/jwks", "refresh_interval": "1s"}]), "refresh_interval"),
    (dict(tokens=[{"header": "A", "cookie": "b"}]), "exactly one"),
    (dict(tokens=[]), "length >= 1"),
    (dict(tokens=[{"header": "Bad Header"}]), "regex"),
    (dict(leeway="10m"), "leeway"),
    (dict(realm='a"b'), "regex"),
    (dict(cache_size=-1), ">= 0"),
    (dict(unknown_key=1), "unknown field"),
])
def test_config_errors(bad, msg):
    with pytest.raises(msgspec.ValidationError, match=msg):
        conv(**bad)


def test_http_jwks_allowed_only_with_flag():
    assert conv(jwks=[{"url": "http://127.0.0.1:1/j", "allow_http": True}]).jwks[0].allow_http


def test_check_files(tmp_path):
    c = conv(keys=[{"file": str(tmp_path / "nope.pem")}],
             jwks=[{"url": "https://idp/j", "ca_file": str(tmp_path / "ca.pem")}])
    errs = check_files(c)
    assert len(errs) == 2 and "auth.keys[0].file" in errs[0] and "auth.jwks[0].ca_file" in errs[1]


def test_malformed_claim_values_from_hand_built_token():
    mw, _, _ = make()
    r, _ = run(mw, mint_hs256(claims(exp="tomorrow")))
    assert r.status == 401


# -- integration points with the rest of the gateway ---------------------------------------
def test_with_the_real_metrics_registry():
    from fastgw.obs.metrics import METRICS, Metrics
    reg = Metrics()
    d = Deps(None, metrics=reg)
    mw = build(root(**SEED), None, Route("svg", auth=True, roles=["admin"]), d)
    t = tok(roles=["admin"])
    run(mw, t)
    run(mw, t)
    run(mw)
    run(mw, tok(roles=["viewer"]))
    snap = reg.store.snapshot()
    assert snap['fastgw_auth_decisions_total{route="svg",result="ok"}'] == 2
    assert snap['fastgw_auth_decisions_total{route="svg",result="missing"}'] == 1
    assert snap['fastgw_auth_decisions_total{route="svg",result="forbidden"}'] == 1
    assert snap['fastgw_jwt_cache_total{result="hit"}'] == 1
    assert snap['fastgw_jwt_cache_total{result="miss"}'] == 2
    for name in ("fastgw_auth_decisions_total", "fastgw_jwt_cache_total", "fastgw_jwks_refresh_total"):
        assert name in METRICS


def test_demo_minted_token_is_accepted(monkeypatch, capsys):
    from fastgw.auth.mint import main, mint_token
    mw, _, _ = make(Route("x", auth=True, roles=["admin"]))
    t = mint_token(SECRET, "alice", ["admin"], 3600)
    r, c = run(mw, t.encode())
    assert r is None and c.user == "alice"
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert main(["--sub", "x"]) == 2
    monkeypatch.setenv("JWT_SECRET", SECRET)
    assert main(["--sub", "bob", "--roles", "editor,viewer", "--ttl", "15m"]) == 0
    r, c = run(mw, capsys.readouterr().out.strip().encode())
    assert r.status == 403 and c.user is None
    r, c = run(make(Route("y", auth=True, roles=["editor"]))[0], mint_token(SECRET, "bob", ["editor"]).encode())
    assert r is None and c.roles == {"editor"}


def test_modules_import_alone_and_keep_their_layer():
    """Each auth module imports in a fresh interpreter; fastgw.auth never pulls in the
    pipeline, a middleware, the engine, the protocol or the runtime."""
    import subprocess
    import sys
    mods = ["fastgw.auth", "fastgw.auth.keys", "fastgw.auth.token", "fastgw.auth.rbac", "fastgw.auth.jwks",
            "fastgw.auth.fetch", "fastgw.auth.mint", "fastgw.config.auth", "fastgw.middleware.auth"]
    code = ("import sys, importlib\n"
            "for m in sys.argv[1:]:\n"
            "    before = set(sys.modules)\n"
            "    importlib.import_module(m)\n"
            "    if m.startswith('fastgw.auth'):\n"
            "        bad = [x for x in sys.modules if x.startswith(('fastgw.pipeline', 'fastgw.middleware',"
            " 'fastgw.runtime', 'fastgw.http.protocol', 'fastgw.upstream'))]\n"
            "        assert not bad, (m, bad)\n")
    for m in mods:
        subprocess.run([sys.executable, "-c", code, m], check=True, cwd=__import__("tests.support").support.ROOT)


@pytest.mark.parametrize("prebuilt", [False, True])
def test_fast_path_with_and_without_the_header_map(prebuilt):
    """request_id builds ctx's header map before auth runs; both paths give one answer."""
    mw, _, _ = make()
    t = tok()

    def go(headers):
        c = ctx(headers)
        if prebuilt:
            c.header(b"x-request-id")
        return mw.request_filter(c), c

    r, c = go([(b"Host", b"gw"), (b"x-user-id", b"root"), bearer(t)])
    assert r is None and [n for n, _ in c.fwd] == [b"Authorization"]
    assert upstream_headers(c)[0] == (b"X-User-Id", b"alice")
    r, c = go([(b"Host", b"gw"), bearer(t), (b"AUTHORIZATION", b"Bearer " + tok(sub="bob"))])
    assert r.status == 400
    r, c = go([(b"Accept", b"a"), (b"Accept", b"b"), (b"X-User-Roles", b"admin"), bearer(t)])
    assert r is None and all(n != b"X-User-Roles" for n, _ in c.fwd)
    r, c = go([(b"Host", b"gw")])
    assert r.status == 401
    r, c = go([(b"Authorization", b"Basic eA==")])
    assert r.status == 401 and www(r) == b"Bearer"


@pytest.mark.parametrize("prebuilt", [False, True])
def test_open_route_strip_with_and_without_the_header_map(prebuilt):
    d, _, _ = deps()
    mw = build(root(**SEED), None, Route("open"), d)
    for headers, left in (([(b"A", b"1"), (b"X-User-Id", b"r")], [b"A"]),
                          ([(b"A", b"1"), (b"a", b"2"), (b"x-user-roles", b"r")], [b"A", b"a"]),
                          ([(b"A", b"1")], [b"A"])):
        c = ctx(headers)
        if prebuilt:
            c.header(b"x-request-id")
        assert mw.request_filter(c) is None
        assert [n for n, _ in c.fwd] == left


# -- Authorization as a Request field (captured while parsing) vs the header scan --------
@pytest.mark.parametrize("headers", [
    [],
    [(b"Authorization", b"Basic dXNlcjpwYXNz")],
    [(b"Authorization", b"Bearer ")],
    [(b"X-User-Id", b"root"), (b"x-user-roles", b"admin")],
    [(b"X-USER-ID", b"root"), (b"X-Other", b"1")],
    [(b"Accept", b"a"), (b"Accept", b"b"), (b"X-User-Roles", b"admin")],
    [(b"Authorization", b"Bearer x"), (b"authorization", b"Bearer y")],
    [(b"X-Tenant", b"t1")],
])
@pytest.mark.parametrize("with_token", [True, False])
def test_captured_authz_matches_header_lookup(headers, with_token):
    """Same answer, same forwarded headers, same identity, whether the token is read from
    the Request's captured field or found by the header scan."""
    cfg = dict(SEED, identity_headers={"claims": {"tenant": "X-Tenant"}})
    out = []
    for capture in (True, False):
        mw, audit, m = make(**cfg)
        hs = [(b"Host", b"gw")] + list(headers)
        if with_token:
            hs.append(bearer(tok(roles=["viewer"], tenant="t9")))
        c = ctx(hs)
        if not capture:
            mw.captured = False  # the scan a config with another token source takes
        r = mw.request_filter(c)
        out.append((None if r is None else (r.status, r.headers, problem_of(r)),
                    c.fwd, upstream_headers(c), c.user,
                    [{k: v for k, v in a.items() if k != "ts"} for a in audit], m.counts))
    assert out[0] == out[1]


def test_captured_strips_identity_headers_any_case():
    mw, _, _ = make()
    c = (ctx([(b"Host", b"gw"), (b"x-UsEr-Id", b"root"), bearer(tok(roles=["viewer"]))]))
    assert mw.request_filter(c) is None
    assert all(n.lower() != b"x-user-id" for n, _v in c.fwd)
    assert c.user is not None


def test_strip_identity_route_captured():
    mw, _, _ = make(Route("open"))
    assert isinstance(mw, StripIdentity)
    c = (ctx([(b"Host", b"gw"), (b"X-User-Roles", b"admin"), (b"X-A", b"1")]))
    assert mw.request_filter(c) is None
    assert c.fwd == [(b"X-A", b"1")]
    c = (ctx([(b"Host", b"gw")]))
    hs = c.fwd
    assert mw.request_filter(c) is None and c.fwd is hs  # untouched: nothing to strip


def test_hit_counters_with_the_real_registry_store():
    """Admitted cache hits count in the registry's accumulators (``Metrics.counter``),
    added to the store's cells on the tick (``publish``); the series are the ones inc writes."""
    from fastgw.obs.metrics import Metrics
    reg = Metrics()
    mw, _, _ = make(d=Deps(None, metrics=reg))
    t = tok(roles=["viewer"])
    snap0 = dict(reg.store.snapshot())
    assert not any("fastgw_jwt_cache_total" in k for k in snap0)  # nothing before first use
    for _ in range(3):
        assert mw.request_filter((ctx([(b"Host", b"gw"), bearer(t)]))) is None
    reg.publish()                                                 # (the worker tick)
    snap = reg.store.snapshot()
    assert snap['fastgw_jwt_cache_total{result="miss"}'] == 1
    assert snap['fastgw_jwt_cache_total{result="hit"}'] == 2
    assert snap['fastgw_auth_decisions_total{route="api",result="ok"}'] == 3
    reg.inc("fastgw_jwt_cache_total", (("result", "hit"),), 1)  # the same cell
    assert reg.store.snapshot()['fastgw_jwt_cache_total{result="hit"}'] == 3


# -- the admitted-token memo (the usual hit: RBAC decided once per token and route) -----------
def _real_deps():
    from fastgw.obs.metrics import Metrics

    audit: list = []
    m = Metrics()
    return Deps(None, metrics=m, audit=audit.append), m


def _count(m, name: str, labels: str) -> float:
    m.publish()                         # (the worker tick: the hit path's counts are accumulated)
    return m.store.snapshot().get(f"{name}{{{labels}}}", 0)


def test_admitted_memo_keeps_expiry_to_the_second_and_rbac_per_route(monkeypatch):
    d, m = _real_deps()
    rt = root(jwt_secret=SECRET, leeway="0s", roles=SEED_ROLES)
    a = build(rt, None, Route("a", auth=True, roles=["viewer"]), d)
    b = build(rt, None, Route("b", auth=True, roles=["admin"]), d)
    now = time.time()
    exp = int(now) + 30
    t = mint("HS256", claims(iat=int(now), exp=exp))
    for _ in range(4):
        r, c = run(a, t)
        assert r is None and c.user == "alice" and upstream_headers(c)
    assert len(a.admitted) == 1                       # the hit of the hit: memoised for route a
    for _ in range(4):                                # same token, route b: refused every time
        assert run(b, t)[0].status == 403
    assert len(b.admitted) == 0
    assert _count(m, "fastgw_jwt_cache_total", 'result="hit"') == 3 + 4     # one miss: a's first
    assert _count(m, "fastgw_auth_decisions_total", 'route="a",result="ok"') == 4
    monkeypatch.setattr(auth_mw, "wall", lambda: exp - 0.001)
    assert run(a, t)[0] is None                       # the last moment it is valid
    monkeypatch.setattr(auth_mw, "wall", lambda: float(exp))
    r, _ = run(a, t)
    assert r.status == 401 and b"expired" in www(r)   # at exp itself: refused
    assert len(a.admitted) == 0


def test_admitted_memo_not_used_when_roles_depend_on_the_method():
    d, _m = _real_deps()
    mw = build(root(**SEED), None, Route("docs", auth=True, roles={"GET": ["viewer"], "POST": ["editor"]}), d)
    t = tok(roles=["viewer"])
    assert [run(mw, t)[0] for _ in range(3)] == [None] * 3
    assert len(mw.admitted) == 0
    assert run(mw, t, method="POST")[0].status == 403


def test_admitted_memo_honours_a_revocation_made_after_it():
    from fastgw.shm import Region
    from fastgw.shm.revocation import Mirror

    d, _m = _real_deps()
    mw = build(root(**SEED), None, Route("api", auth=True), d)
    with Region.create(1, metrics_series=8, table_slots=64, health_slots=1, revocation_slots=64,
                       name="test-admitted") as region:
        mirror = Mirror(region.revocation)
        mw._revoked = mirror.revoked
        t = tok(roles=["viewer"], jti="j-1")
        assert [run(mw, t)[0] for _ in range(3)] == [None] * 3
        assert len(mw.admitted) == 1
        assert region.revocation.revoke("jti", "j-1", time.time() + 600)
        r, _ = run(mw, t)
        assert r.status == 401 and b"revoked" in www(r)
        assert run(mw, t)[0].status == 401
        assert run(mw, tok(roles=["viewer"], jti="j-2"))[0] is None
        mw.close()
