"""Route selection (fastgw.routing), from tables; bypass attempts through normalisation."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from fastgw.errors import GatewayError
from fastgw.http.normalize import normalize_path, split_target
from fastgw.routing import Router

ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def route(path, methods=ALL, host=None, headers=None, query=None, name=None, **extra):
    match = None if headers is None and query is None else SimpleNamespace(headers=headers or {}, query=query or {})
    return SimpleNamespace(path=path, methods=list(methods) if methods is not None else None,
                           host=host, match=match, name=name or path, **extra)


def router(*cfgs):
    """Targets are the route names."""
    return Router([(c, c.name) for c in cfgs])


def hdrs(**kv):
    d = {k.replace("_", "-").encode(): v.encode() for k, v in kv.items()}
    return d.get


NOH = hdrs()


def m(r, path, method="GET", host="gw.example.com", headers=NOH, query=b"", **kw):
    return r.match(host, method, path, headers, query, **kw)


def err(r, path, method="GET", **kw) -> GatewayError:
    with pytest.raises(GatewayError) as ei:
        m(r, path, method, **kw)
    return ei.value


# --- path specificity, independent of file order --------------------------------------

SPEC_ROUTES = [
    route("/users/{id}"),
    route("/users/{id}/items"),
    route("/users/{id}/*"),
    route("/users/me"),
    route("/users/me/*"),
    route("/users/*"),
    route("/users/{id}/items/{item}"),
    route("/orgs/{org}/users/{id}"),
    route("/orgs/{org}/*"),
    route("/orgs/acme/{x}/*"),
    route("/*"),
    route("/"),
    route("/api/v1/svg/*"),
    route("/api/v1/svg"),
    route("/api/*"),
]

SPEC_CASES = [
    ("/users/me", "/users/me", None),                      # exact beats params and wildcard
    ("/users/42", "/users/{id}", {"id": "42"}),              # param beats wildcard
    ("/users/42/items", "/users/{id}/items", {"id": "42"}),  # literal after param beats *
    ("/users/me/items", "/users/me/*", None),               # longer literal prefix wins
    ("/users/42/other", "/users/{id}/*", {"id": "42"}),
    ("/users/42/items/7", "/users/{id}/items/{item}", {"id": "42", "item": "7"}),
    ("/users/42/items/7/x", "/users/{id}/*", {"id": "42"}),
    ("/users/", "/users/*", None),                           # empty segment is no {id}
    ("/users", "/*", None),                                   # "/users/*" needs the slash
    ("/orgs/acme/users/1", "/orgs/acme/{x}/*", {"x": "users"}),  # literal 'acme' beats {org}
    ("/orgs/other/users/1", "/orgs/{org}/users/{id}", {"org": "other", "id": "1"}),
    ("/orgs/other/x", "/orgs/{org}/*", {"org": "other"}),
    ("/api/v1/svg/", "/api/v1/svg/*", None),                 # the prefix itself
    ("/api/v1/svg/a/b.svg", "/api/v1/svg/*", None),
    ("/api/v1/svg", "/api/v1/svg", None),                    # exact route for the bare prefix
    ("/api/v1/svgx", "/api/*", None),                        # segment-wise, not string prefix
    ("/api/v1", "/api/*", None),
    ("/", "/", None),
    ("/anything/else", "/*", None),
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("path, want, params", SPEC_CASES)
def test_specificity_whatever_the_file_order(seed, path, want, params):
    cfgs = list(SPEC_ROUTES)
    random.Random(seed).shuffle(cfgs)
    assert m(router(*cfgs), path) == (want, params)


def test_wildcard_does_not_match_bare_prefix():
    r = router(route("/api/v1/svg/*"))
    assert m(r, "/api/v1/svg/") == ("/api/v1/svg/*", None)
    assert m(r, "/api/v1/svg/x/y") == ("/api/v1/svg/*", None)
    for p in ("/api/v1/svg", "/api/v1/svgx", "/api/v1", "/"):
        assert err(r, p).kind == "no_route"


def test_trailing_slash_is_significant_for_exact_and_params():
    r = router(route("/a"), route("/u/{id}"))
    assert err(r, "/a/").kind == "no_route"
    assert err(r, "/u/1/").kind == "no_route"
    r = router(route("/u/{id}/"))
    assert m(r, "/u/1/") == ("/u/{id}/", {"id": "1"})
    assert err(r, "/u/1").kind == "no_route"


def test_param_values_are_normalised_segments():
    r = router(route("/files/{name}", allow_encoded_slash=True))
    path, enc = normalize_path(b"/files/a%2fb%20c%7e")
    assert m(r, path, encoded_slash=enc) == ("/files/{name}", {"name": "a%2Fb%20c~"})


def test_root_wildcard_matches_everything_but_nothing_else_leaks():
    r = router(route("/*"))
    for p in ("/", "/a", "/a/b/", "/.well-known/x"):
        assert m(r, p)[0] == "/*"


# --- host ------------------------------------------------------------------------------

def test_host_ranking_and_forms():
    cfgs = [
        route("/x/*", name="any"),
        route("/x/*", host="*.example.com", name="wild"),
        route("/x/*", host="*.eu.example.com", name="wild-eu"),
        route("/x/*", host="api.example.com", name="exact"),
    ]
    for seed in range(4):
        random.Random(seed).shuffle(cfgs)
        r = router(*cfgs)
        assert m(r, "/x/1", host="api.example.com")[0] == "exact"
        assert m(r, "/x/1", host="API.Example.COM:8443")[0] == "exact"   # no port, any case
        assert m(r, "/x/1", host="api.example.com.")[0] == "exact"       # trailing dot
        assert m(r, "/x/1", host="www.example.com")[0] == "wild"
        assert m(r, "/x/1", host="a.b.example.com")[0] == "wild"         # any depth
        assert m(r, "/x/1", host="a.eu.example.com")[0] == "wild-eu"     # longer suffix
        assert m(r, "/x/1", host="example.com")[0] == "any"              # apex is not *.
        assert m(r, "/x/1", host="badexample.com")[0] == "any"
        assert m(r, "/x/1", host="")[0] == "any"
        assert m(r, "/x/1", host="[::1]:8080")[0] == "any"


def test_host_only_route_gives_404_elsewhere():
    r = router(route("/x", host="api.example.com"))
    assert m(r, "/x", host="api.example.com:80")[0] == "/x"
    assert err(r, "/x", host="other.example.com").kind == "no_route"


def test_path_specificity_comes_before_host():
    r = router(route("/*", host="api.example.com", name="host-catch-all"),
               route("/api/v1/svg/*", name="svg"))
    assert m(r, "/api/v1/svg/a", host="api.example.com")[0] == "svg"
    assert m(r, "/other", host="api.example.com")[0] == "host-catch-all"


def test_ipv6_host():
    r = router(route("/x", host="[::1]"))
    assert m(r, "/x", host="[::1]:8080")[0] == "/x"
    assert m(r, "/x", host="[::1]")[0] == "/x"


# --- match conditions ------------------------------------------------------------------

def test_header_conditions():
    cfgs = [
        route("/c/*", name="plain"),
        route("/c/*", headers={"X-Beta": "1"}, name="beta"),
        route("/c/*", headers={"x-beta": "1", "X-Tenant": "*"}, name="beta-tenant"),
    ]
    for seed in range(3):
        random.Random(seed).shuffle(cfgs)
        r = router(*cfgs)
        assert m(r, "/c/a")[0] == "plain"
        assert m(r, "/c/a", headers=hdrs(x_beta="1"))[0] == "beta"
        assert m(r, "/c/a", headers=hdrs(x_beta="2"))[0] == "plain"
        assert m(r, "/c/a", headers=hdrs(x_beta="1", x_tenant=""))[0] == "beta-tenant"
        assert m(r, "/c/a", headers=hdrs(x_beta="1", x_tenant="acme"))[0] == "beta-tenant"


def test_query_conditions():
    r = router(route("/q", name="plain"),
               route("/q", query={"v": "2"}, name="v2"),
               route("/q", query={"debug": "*"}, headers={"x-a": "*"}, name="debug"))
    assert m(r, "/q")[0] == "plain"
    assert m(r, "/q", query=b"v=2")[0] == "v2"
    assert m(r, "/q", query=b"a=1&v=1&v=2")[0] == "v2"            # any occurrence
    assert m(r, "/q", query=b"v=%32")[0] == "v2"                 # decoded
    assert m(r, "/q", query=b"v=3")[0] == "plain"
    assert m(r, "/q", query=b"debug", headers=hdrs(x_a="1"))[0] == "debug"
    assert m(r, "/q", query=b"debug")[0] == "plain"


class ExplodingQuery(bytes):
    def decode(self, *a, **kw):  # noqa: D401
        raise AssertionError("query parsed although no candidate route has query conditions")


def test_query_parsed_only_when_a_candidate_needs_it():
    r = router(route("/a/*"), route("/b", query={"v": "1"}), route("/c", headers={"x": "*"}))
    q = ExplodingQuery(b"v=1")
    assert m(r, "/a/x", query=q)[0] == "/a/*"
    assert m(r, "/c", query=q, headers=hdrs(x="1"))[0] == "/c"
    with pytest.raises(AssertionError):
        m(r, "/b", query=q)


def test_more_conditions_beat_fewer_but_not_a_more_specific_path():
    r = router(route("/p/*", headers={"x-a": "1", "x-b": "1"}, name="two"),
               route("/p/{id}", name="param"))
    assert m(r, "/p/1", headers=hdrs(x_a="1", x_b="1"))[0] == "param"
    assert m(r, "/p/1/2", headers=hdrs(x_a="1", x_b="1"))[0] == "two"


# --- methods ---------------------------------------------------------------------------

def test_405_with_allow_union_and_head():
    r = router(route("/m", ["POST"], name="post"), route("/m", ["GET", "delete"], name="get"),
               route("/other", ["PUT"]))
    assert m(r, "/m", "POST")[0] == "post"
    assert m(r, "/m", "GET")[0] == "get"
    assert m(r, "/m", "HEAD")[0] == "get"           # HEAD wherever GET
    assert m(r, "/m", "DELETE")[0] == "get"
    e = err(r, "/m", "PATCH")
    assert e.kind == "method_not_allowed" and e.status == 405
    assert e.allow == b"GET, HEAD, POST, DELETE"
    assert err(r, "/nothing", "PATCH").kind == "no_route"


def test_head_not_added_without_get():
    r = router(route("/w", ["POST"]))
    e = err(r, "/w", "HEAD")
    assert e.allow == b"POST"


def test_a_refused_method_never_falls_through_to_a_less_specific_pattern():
    r = router(route("/api/upload", ["POST"], name="upload"), route("/api/*", ["GET"], name="read"),
               route("/admin/*", ["GET"], name="admin"), route("/*", ALL, name="public"),
               route("/u/{id}", ["GET"], name="user"))
    assert m(r, "/api/upload", "POST")[0] == "upload"
    assert m(r, "/api/other", "GET")[0] == "read"
    e = err(r, "/api/upload", "GET")
    assert e.kind == "method_not_allowed" and e.allow == b"POST"
    e = err(r, "/admin/x", "POST")
    assert e.kind == "method_not_allowed" and e.allow == b"GET, HEAD"
    assert err(r, "/u/1", "DELETE").allow == b"GET, HEAD"
    assert m(r, "/u/1/x", "DELETE")[0] == "public"  # "/u/{id}" does not apply there


def test_same_pattern_routes_share_the_request_by_method():
    r = router(route("/x/*", ["GET"], host="a.example.com", name="host-get"),
               route("/x/*", ["POST"], name="any-post"),
               route("/x/*", ["PUT"], headers={"x-v": "2"}, name="v2-put"),
               route("/*", ALL, name="public"))
    assert m(r, "/x/1", "GET", host="a.example.com")[0] == "host-get"
    assert m(r, "/x/1", "POST", host="a.example.com")[0] == "any-post"
    assert m(r, "/x/1", "PUT", headers=hdrs(x_v="2"))[0] == "v2-put"
    e = err(r, "/x/1", "DELETE", host="a.example.com", headers=hdrs(x_v="2"))
    assert e.allow == b"GET, HEAD, POST, PUT"
    assert err(r, "/x/1", "GET", host="b.example.com").allow == b"POST"


def test_allow_only_counts_applicable_routes():
    r = router(route("/h", ["GET"], host="a.example.com"), route("/h", ["POST"]))
    e = err(r, "/h", "PUT", host="b.example.com")
    assert e.allow == b"POST"


def test_no_methods_means_any():
    r = router(route("/any", None))
    assert m(r, "/any", "PROPFIND")[0] == "/any"


def test_preflight_ignores_methods_but_not_path_host_conditions():
    r = router(route("/cors/*", ["POST"]), route("/h", ["GET"], host="a.example.com"))
    assert m(r, "/cors/x", "OPTIONS", preflight=True)[0] == "/cors/*"
    assert err(r, "/cors/x", "OPTIONS").kind == "method_not_allowed"
    assert err(r, "/nope", "OPTIONS", preflight=True).kind == "no_route"
    assert err(r, "/h", "OPTIONS", preflight=True, host="b.example.com").kind == "no_route"


# --- encoded slash ---------------------------------------------------------------------

def test_encoded_slash_rejected_unless_route_allows():
    r = router(route("/files/*", allow_encoded_slash=True), route("/docs/*"))
    path, enc = normalize_path(b"/files/a%2Fb")
    assert enc and m(r, path, encoded_slash=enc)[0] == "/files/*"
    path, enc = normalize_path(b"/docs/a%2Fb")
    e = err(r, path, encoded_slash=enc)
    assert e.kind == "bad_path" and e.status == 400


# --- compile-time validation -----------------------------------------------------------

@pytest.mark.parametrize(
    "path",
    ["", "api", "/a*", "/a/*/b", "/a/x{id}", "/a/{id", "/a/{1x}", "/a/{}", "/a/{id}/{id}",
     "/a//b", "/a/./b", "/a/../b", "/%61", "/a%3a", "/a;b", "/caf\u00e9", "/a/{\u00e9}",
     "/a/%2F/*", "/a b"],
)
def test_invalid_route_paths_are_refused(path):
    with pytest.raises(ValueError) as ei:
        router(route(path, name="svc-route"))
    assert "svc-route" in str(ei.value)


@pytest.mark.parametrize("host", ["a.example.com:80", "a.*.com", "**.a.com", "http://a.com", "*."])
def test_invalid_hosts_are_refused(host):
    with pytest.raises(ValueError):
        router(route("/x", host=host))


def test_literal_encoded_slash_needs_allow_encoded_slash():
    with pytest.raises(ValueError):
        router(route("/a%2Fb"))
    r = router(route("/a%2Fb", allow_encoded_slash=True))
    path, enc = normalize_path(b"/a%2fb")
    assert m(r, path, encoded_slash=enc)[0] == "/a%2Fb"


def test_shadowed_routes_are_reported():
    r = router(route("/a/*", ["GET", "POST"], name="first"), route("/a/*", ["GET"], name="second"),
               route("/a/*", ["PUT"], name="third"))
    assert len(r.warnings) == 1 and "'second'" in r.warnings[0] and "'first'" in r.warnings[0]


# --- bypass attempts: normalisation + routing together ---------------------------------

GUARD = [route("/admin/*", ["GET"], name="admin"), route("/admin", ["GET"], name="admin-root"),
         route("/*", ALL, name="public")]


def route_request(r, target: bytes, method="GET"):
    """What the protocol does: split, normalise, match."""
    raw_path, query, _authority = split_target(target)
    path, enc = normalize_path(raw_path)
    return r.match("gw.example.com", method, path, NOH, query, encoded_slash=enc)[0]


@pytest.mark.parametrize(
    "target",
    [
        b"/admin/users",
        b"//admin/users",
        b"/admin//users",
        b"///admin/users",
        b"/./admin/users",
        b"/x/../admin/users",
        b"/public/../admin/users",
        b"/%61dmin/users",
        b"/%61%64%6D%69%6E/users",
        b"/adm%69n/users",
        b"/%2e/admin/users",
        b"/x/%2e%2e/admin/users",
        b"/x/.%2E/admin/users",
        b"/admin/./users",
        b"/admin/users?x=/../../public",
        b"http://gw.example.com//admin/users",
    ],
)
def test_bypass_spellings_reach_the_admin_route(target):
    assert route_request(router(*GUARD), target) == "admin"


@pytest.mark.parametrize(
    "target",
    [
        b"/admin;x/users",          # path parameter
        b"/admin;/users",
        b"/public;/../admin/users",
        b"/admin%3b/users",
        b"/admin\\users",           # backslash
        b"/admin%5cusers",
        b"/admin%00/users",
        b"/admin%2Fusers",          # encoded slash, public route does not allow it
        b"/%2e%2e/admin/users",     # above the root
        b"/admin/../../admin/x",
    ],
)
def test_bypass_spellings_are_refused(target):
    with pytest.raises(GatewayError) as ei:
        route_request(router(*GUARD), target)
    assert ei.value.kind == "bad_path"


_PIECES = [
    "/", "//", ".", "..", "/./", "/../", "admin", "adm", "in", "a", "d", "x", "public",
    "%61", "%2e", "%2E", "%2f", "%2F", "%25", "%6e", ";", "\\", "%5c", "%00", "%3b", "~",
]


_METHODS = ["GET", "HEAD", "POST", "DELETE"]


def _admin_cases():
    """Every path of up to three pieces (each with a method in turn), 6,000 seeded random
    ones of four to ten pieces, and two known tricks: a plain loop over the input space
    (hypothesis spent most of its time generating and de-duplicating these examples)."""
    yield ["/", "admin", "/", "x"], "GET"
    yield ["//", "admin", "/../", "admin", "/", "x"], "POST"
    i = 0
    for n in range(4):
        for pieces in itertools.product(_PIECES, repeat=n):
            yield list(pieces), _METHODS[i % 4]
            i += 1
    rnd = random.Random(404)
    for _ in range(6000):
        yield rnd.choices(_PIECES, k=rnd.randint(4, 10)), rnd.choice(_METHODS)


def test_admin_paths_only_ever_reach_admin_routes():
    """Whatever a client sends, a request whose normalised path is under /admin/ (or is
    /admin) is routed to an admin route or refused (400/405), and no other path reaches
    one."""
    r = router(*GUARD)
    for pieces, method in _admin_cases():
        raw = ("/" + "".join(pieces)).encode("latin-1")
        try:
            path, enc = normalize_path(raw)
        except GatewayError:
            continue
        is_admin = path.startswith("/admin/") or path == "/admin"
        try:
            got = r.match("gw.example.com", method, path, NOH, b"", encoded_slash=enc)[0]
        except GatewayError as e:
            assert (e.kind == "bad_path" and enc) or (e.kind == "method_not_allowed" and is_admin), (raw, method)
            continue
        assert (got in ("admin", "admin-root") if is_admin else got == "public"), (raw, method, got)
