"""The response cache against a real gateway and a real upstream (issue 21).

The upstream answers each path as the test scripted it (``up.script[path]``: status,
headers, delay, or a function of the request), counts the requests per path and echoes
the request headers it got in the body, so a test sees both what reached the upstream
and what the client was served.  One gateway (one worker) serves most tests, each on its
own paths; coalescing, purge and warming start their own.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from tests.support.gateway import flushed_access_lines
from tests.support.config import ADMIN_ACCESS_LOG_BLOCK
from tests.support.gateway import Gateway
from tests.support.procs import admin, metrics_text, series
from tests.support.upstream import FakeUpstream

SECRET = "cache-test-secret-0123456789abcdef0123"


class Upstream(FakeUpstream):
    """The shared fake upstream with a handler: answers ``script[path]``, counts per path."""

    def __init__(self) -> None:
        super().__init__(handler=self._answer)
        self.script: dict = {}
        self.hits: dict = {}
        self.seen: dict = {}  # path -> request headers of the last request
        self.down = False

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits.get(path, 0)

    def _answer(self, req, conn) -> bool:
        if self.down:
            return False  # close without an answer
        path, hdrs = req.path, req.header_map()
        with self.lock:
            self.hits[path] = k = self.hits.get(path, 0) + 1
            self.seen[path] = hdrs
        spec = self.script.get(path, {})
        if callable(spec):
            spec = spec(hdrs, k)
        if spec.get("delay"):
            time.sleep(spec["delay"])
        status = spec.get("status", 200)
        headers = list(spec.get("headers", [("cache-control", "max-age=60")]))
        body = spec.get("body")
        if body is None:
            body = json.dumps({"n": k, "path": req.target, "headers": hdrs}).encode()
        if status not in (204, 304):
            headers.append(("content-type", "application/json"))
        conn.respond(status, headers, body, head_only=req.method == "HEAD")
        return True


CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  drain: {delay: 0s, timeout: 2s}
cache:
  memory: 4m
  max_object_size: 64k
  coalesce_wait: 2s
services:
  up:
    url: "http://{UP}"
    routes:
      - path: "/c/*"
        name: c
        methods: ["GET", "HEAD", "POST"]
        cache: true
      - path: "/ttl/*"
        name: ttl
        cache: {default_ttl: 30s}
      - path: "/q/*"
        name: q
        cache: {key: {query: [a, b], headers: [x-tenant]}}
      - path: "/swr/*"
        name: swr
        cache: {stale_while_revalidate: 30s, stale_if_error: 5m}
      - path: "/sc/*"
        name: sc
        cache: {store_set_cookie: true}
      - path: "/auth/*"
        name: authd
        auth: true
        cache: true
      - path: "/z/*"
        name: z
        cache: true
        compression: {min_size: 10}
      - path: "/tx/*"
        name: tx
        auth: true
        cache: true
        transform: {request: {headers: {set: {X-User: "$jwt.sub"}}}}
      - path: "/nocache/*"
        name: nocache
auth:
  jwt_secret: "%s"
  tokens:
    - {header: Authorization, scheme: Bearer}
    - {cookie: session}
    - {header: X-Api-Token}
""" % SECRET + ADMIN_ACCESS_LOG_BLOCK


@pytest.fixture(scope="module")
def env():
    with Upstream() as up:
        gw = Gateway(CONFIG, upstream=up).start()
        try:
            yield gw, up
        finally:
            gw.stop()


def get(gw, path, headers=None, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def n_of(body: bytes) -> int:
    return json.loads(body)["n"]


def token(sub="alice") -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 300}, SECRET, algorithm="HS256")


# ----------------------------------------------------------------------------- freshness
def test_hit_age_and_cache_status(env):
    gw, up = env
    up.script["/c/fresh"] = {"headers": [("cache-control", "max-age=60"), ("age", "10")]}
    s, h, b = get(gw, "/c/fresh")
    assert s == 200 and "fwd=miss" in h["cache-status"] and "stored" in h["cache-status"]
    time.sleep(1.1)
    s, h2, b2 = get(gw, "/c/fresh")
    assert b2 == b and up.count("/c/fresh") == 1
    assert h2["cache-status"].startswith("fastgw; hit; ttl=")
    age = int(h2["age"])
    assert 11 <= age <= 13  # the Age received plus the time resident
    ttl = int(h2["cache-status"].split("ttl=")[1].split(";")[0])
    assert ttl == 60 - age or ttl == 60 - age - 1
    # HEAD is answered from the GET's entry, without a body
    s, h3, b3 = get(gw, "/c/fresh", method="HEAD")
    assert s == 200 and b3 == b"" and "hit" in h3["cache-status"] and up.count("/c/fresh") == 1


def test_expiry_and_s_maxage_over_max_age(env):
    gw, up = env
    up.script["/c/short"] = {"headers": [("cache-control", "max-age=60, s-maxage=1")]}
    get(gw, "/c/short")
    assert "hit" in get(gw, "/c/short")[1]["cache-status"]
    time.sleep(1.2)
    s, h, b = get(gw, "/c/short")
    assert n_of(b) == 2 and "fwd=stale" in h["cache-status"]


def test_expires_header_and_default_ttl(env):
    gw, up = env
    from email.utils import formatdate
    now = time.time()
    up.script["/c/exp"] = lambda h, k: {"headers": [("date", formatdate(now, usegmt=True)),
                                                    ("expires", formatdate(now + 100, usegmt=True))]}
    get(gw, "/c/exp")
    assert n_of(get(gw, "/c/exp")[2]) == 1
    # no explicit freshness: not stored on a route without default_ttl ...
    up.script["/c/none"] = {"headers": []}
    get(gw, "/c/none")
    s, h, b = get(gw, "/c/none")
    assert n_of(b) == 2 and "detail=no-freshness" in h["cache-status"]
    # ... stored for default_ttl where the route sets one
    up.script["/ttl/x"] = {"headers": []}
    get(gw, "/ttl/x")
    s, h, b = get(gw, "/ttl/x")
    assert n_of(b) == 1 and "hit" in h["cache-status"]


# ----------------------------------------------------------------------------- what is never stored
@pytest.mark.parametrize("path,headers,detail", [
    ("/c/nostore", [("cache-control", "no-store, max-age=60")], "no-store"),
    ("/c/private", [("cache-control", "private, max-age=60")], "private"),
    ("/c/varystar", [("cache-control", "max-age=60"), ("vary", "*")], "vary-star"),
    ("/c/cookie", [("cache-control", "max-age=60"), ("set-cookie", "sid=secret")], "set-cookie"),
    ("/c/status", [("cache-control", "max-age=60")], "status"),
])
def test_never_stored(env, path, headers, detail):
    gw, up = env
    up.script[path] = {"headers": headers, "status": 500 if detail == "status" else 200}
    get(gw, path)
    s, h, b = get(gw, path)
    assert up.count(path) == 2 and f"detail={detail}" in h["cache-status"]


def test_set_cookie_stored_without_it_when_configured(env):
    gw, up = env
    up.script["/sc/a"] = {"headers": [("cache-control", "max-age=60"), ("set-cookie", "sid=alice-secret")]}
    s, h, b = get(gw, "/sc/a")
    assert h.get("set-cookie") == "sid=alice-secret"  # the first client gets its cookie
    s, h, b = get(gw, "/sc/a")
    assert "hit" in h["cache-status"] and "set-cookie" not in h and up.count("/sc/a") == 1


def test_too_large_streams_through(env):
    gw, up = env
    up.script["/c/big"] = {"headers": [("cache-control", "max-age=60")], "body": b"x" * 100_000}
    assert len(get(gw, "/c/big")[2]) == 100_000
    s, h, b = get(gw, "/c/big")
    assert len(b) == 100_000 and up.count("/c/big") == 2 and "too-large" in h["cache-status"]


# ----------------------------------------------------------------------------- request directives
def test_request_cache_control(env):
    gw, up = env
    p = "/c/rcc"
    up.script[p] = {"headers": [("cache-control", "max-age=60"), ("etag", '"v1"')]}
    get(gw, p)
    time.sleep(1.1)
    assert n_of(get(gw, p)[2]) == 1
    # no-store: bypasses, not stored
    s, h, b = get(gw, p, {"Cache-Control": "no-store"})
    assert n_of(b) == 2 and "fwd=request" in h["cache-status"]
    # max-age=0: too old for this client -> forwarded (revalidated with our validator)
    get(gw, p, {"Cache-Control": "max-age=0"})
    assert up.count(p) == 3 and up.seen[p].get("if-none-match") == '"v1"'
    # min-fresh beyond what is left -> forwarded
    get(gw, p, {"Cache-Control": "min-fresh=3600"})
    assert up.count(p) == 4
    # no-cache: forwarded
    get(gw, p, {"Cache-Control": "no-cache"})
    assert up.count(p) == 5
    # field names in any case (the hit path compares them lower-cased)
    get(gw, p, {"pRAGMA": "no-cache"})
    get(gw, p, {"CACHE-control": "no-cache"})
    assert up.count(p) == 7
    # only-if-cached: served when present, 504 when not
    assert get(gw, p, {"Cache-Control": "only-if-cached"})[0] == 200 and up.count(p) == 7
    assert get(gw, "/c/never-seen", {"Cache-Control": "only-if-cached"})[0] == 504
    assert up.count("/c/never-seen") == 0


def test_one_target_on_two_hosts_is_two_entries(env):
    gw, up = env
    p = "/c/hosts"
    up.script[p] = {"headers": [("cache-control", "max-age=60")]}
    assert n_of(get(gw, p, {"Host": "a.test"})[2]) == 1
    assert n_of(get(gw, p, {"Host": "b.test"})[2]) == 2
    for _ in range(3):  # hits (the hit path remembers a target's key: with its host)
        assert n_of(get(gw, p, {"Host": "a.test"})[2]) == 1
        assert n_of(get(gw, p, {"Host": "a.test"})[2]) == 1
        assert n_of(get(gw, p, {"Host": "b.test"})[2]) == 2
    assert up.count(p) == 2


def test_max_stale(env):
    gw, up = env
    p = "/c/maxstale"
    up.script[p] = {"headers": [("cache-control", "max-age=1")]}
    get(gw, p)
    time.sleep(1.3)
    s, h, b = get(gw, p, {"Cache-Control": "max-stale=30"})
    assert n_of(b) == 1 and "hit" in h["cache-status"] and up.count(p) == 1
    assert n_of(get(gw, p)[2]) == 2


def test_conditional_requests_answered_304(env):
    gw, up = env
    p = "/c/cond"
    up.script[p] = {"headers": [("cache-control", "max-age=60"), ("etag", '"abc"'),
                                ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]}
    get(gw, p)
    s, h, b = get(gw, p, {"If-None-Match": 'W/"zzz", "abc"'})
    assert s == 304 and b == b"" and h["etag"] == '"abc"' and up.count(p) == 1
    s, h, b = get(gw, p, {"If-Modified-Since": "Wed, 02 Dec 2026 10:00:00 GMT"})
    assert s == 304
    s, h, b = get(gw, p, {"If-None-Match": '"other"'})
    assert s == 200 and n_of(b) == 1


def test_revalidation_refreshes_on_304(env):
    gw, up = env
    p = "/c/reval"

    def answer(h, k):
        if h.get("if-none-match") == '"r1"':
            return {"status": 304, "headers": [("cache-control", "max-age=60"), ("etag", '"r1"'), ("x-fresh", "yes")]}
        return {"headers": [("cache-control", "max-age=1"), ("etag", '"r1"')]}
    up.script[p] = answer
    s, h, b1 = get(gw, p)
    time.sleep(1.2)
    s, h, b2 = get(gw, p)
    assert s == 200 and b2 == b1 and up.count(p) == 2 and h.get("x-fresh") == "yes"
    assert h["content-length"] == str(len(b2)) and "transfer-encoding" not in h  # the stored body, whole
    assert up.seen[p]["if-none-match"] == '"r1"'
    s, h, b3 = get(gw, p)  # refreshed: fresh for 60 s now
    assert b3 == b1 and "hit" in h["cache-status"] and up.count(p) == 2


# ----------------------------------------------------------------------------- keys and Vary
def test_query_and_header_key(env):
    gw, up = env
    get(gw, "/q/k?b=2&a=1&utm=x")
    assert n_of(get(gw, "/q/k?a=1&b=2&utm=y")[2]) == 1  # sorted, unlisted parameter ignored
    assert n_of(get(gw, "/q/k?a=2&b=2")[2]) == 2
    assert n_of(get(gw, "/q/k?a=1&b=2", {"X-Tenant": "t2"})[2]) == 3
    assert n_of(get(gw, "/q/k?a=1&b=2", {"X-Tenant": "t2"})[2]) == 3


def test_vary_on_client_header(env):
    gw, up = env
    p = "/c/vary"
    up.script[p] = {"headers": [("cache-control", "max-age=60"), ("vary", "Accept-Language")]}
    en = get(gw, p, {"Accept-Language": "en"})[2]
    fr = get(gw, p, {"Accept-Language": "fr"})[2]
    assert n_of(en) != n_of(fr)
    assert get(gw, p, {"Accept-Language": "en"})[2] == en
    assert get(gw, p, {"Accept-Language": "fr"})[2] == fr
    assert up.count(p) == 2


def test_vary_on_identity_header_separates_users(env):
    gw, up = env
    p = "/auth/me"
    up.script[p] = {"headers": [("cache-control", "public, max-age=60"), ("vary", "X-User-Id")]}
    a = get(gw, p, {"Authorization": "Bearer " + token("alice")})[2]
    # bob forges alice's identity header: the gateway replaces it, the key reads the sent value
    b = get(gw, p, {"Authorization": "Bearer " + token("bob"), "X-User-Id": "alice"})[2]
    assert json.loads(a)["headers"]["x-user-id"] == "alice"
    assert json.loads(b)["headers"]["x-user-id"] == "bob"
    assert get(gw, p, {"Authorization": "Bearer " + token("alice")})[2] == a
    assert up.count(p) == 2


def test_vary_on_a_header_a_transform_sets_separates_users(env):
    """The cache lookup runs after the request transforms (the transform's request side is
    before the cache in the gateway's order): a Vary on the header a transform sets from
    the verified token keys on the value sent upstream, not on the client's own copy."""
    gw, up = env
    p = "/tx/me"
    up.script[p] = {"headers": [("cache-control", "public, max-age=60"), ("vary", "X-User")]}
    a = get(gw, p, {"Authorization": "Bearer " + token("alice")})[2]
    b = get(gw, p, {"Authorization": "Bearer " + token("bob"), "X-User": "alice"})[2]
    assert json.loads(a)["headers"]["x-user"] == "alice"
    assert json.loads(b)["headers"]["x-user"] == "bob"
    assert get(gw, p, {"Authorization": "Bearer " + token("alice")})[2] == a
    assert up.count(p) == 2


@pytest.mark.parametrize("src", ["bearer", "cookie", "custom"])
def test_authenticated_requests_by_every_token_source(env, src):
    gw, up = env
    t = token("carol")
    hdr = {"bearer": {"Authorization": "Bearer " + t}, "cookie": {"Cookie": "session=" + t},
           "custom": {"X-Api-Token": t}}[src]
    p = f"/auth/plain-{src}"
    up.script[p] = {"headers": [("cache-control", "max-age=60")]}  # no public: not shareable
    get(gw, p, hdr)
    s, h, b = get(gw, p, hdr)
    assert s == 200 and up.count(p) == 2 and "detail=authorization" in h["cache-status"]
    p2 = f"/auth/public-{src}"
    up.script[p2] = {"headers": [("cache-control", "public, max-age=60")]}
    get(gw, p2, hdr)
    s, h, b = get(gw, p2, hdr)
    assert up.count(p2) == 1 and "hit" in h["cache-status"]
    # a hit is never served to a client the route refuses
    assert get(gw, p2)[0] == 401


def test_poisoning_through_unkeyed_headers(env):
    gw, up = env
    p = "/c/poison"
    get(gw, p, {"X-Forwarded-Host": "evil.example", "X-Original-URL": "/admin",
                "X-HTTP-Method-Override": "DELETE", "Forwarded": "host=evil.example"})
    seen = up.seen[p]
    assert not {"x-original-url", "x-http-method-override", "forwarded"} & set(seen)
    assert seen.get("x-forwarded-host") != "evil.example"
    s, h, b = get(gw, p)
    assert b"evil" not in b and b"/admin" not in b and "hit" in h["cache-status"]


def test_compressed_variant_keyed_by_negotiated_coding(env):
    gw, up = env
    import gzip
    p = "/z/comp"
    up.script[p] = {"headers": [("cache-control", "max-age=60")], "body": b'{"k": "' + b"v" * 2000 + b'"}'}
    s, h, gz = get(gw, p, {"Accept-Encoding": "gzip"})
    assert h["content-encoding"] == "gzip"
    s, h, gz2 = get(gw, p, {"Accept-Encoding": "gzip, deflate"})  # negotiates gzip too
    assert h["content-encoding"] == "gzip" and "hit" in h["cache-status"] and gzip.decompress(gz2) == gzip.decompress(gz)
    s, h, ident = get(gw, p)
    assert "content-encoding" not in h and ident == gzip.decompress(gz)
    assert up.count(p) == 2


def test_unsafe_method_invalidates(env):
    gw, up = env
    p = "/c/inval"
    get(gw, p)
    assert n_of(get(gw, p)[2]) == 1
    get(gw, p, method="POST")
    assert n_of(get(gw, p)[2]) == 3


def test_route_without_cache_has_no_cache_status(env):
    gw, up = env
    s, h, b = get(gw, "/nocache/x")
    assert s == 200 and "cache-status" not in h


def test_access_log_has_the_cache_result(env):
    gw, up = env
    get(gw, "/c/logged")
    get(gw, "/c/logged")
    get(gw, "/nocache/logged")
    lines = flushed_access_lines(gw, lambda ls: sum(1 for r in ls if r["path"].endswith("/logged")) >= 3)
    got = [(r["path"], r.get("cache")) for r in lines if r["path"].endswith("/logged")]
    assert got == [("/c/logged", "miss"), ("/c/logged", "hit"), ("/nocache/logged", None)]


# ----------------------------------------------------------------------------- stale serving
def test_stale_while_revalidate_and_stale_if_error(env):
    gw, up = env
    p = "/swr/a"
    up.script[p] = {"headers": [("cache-control", "max-age=1")]}
    get(gw, p)
    time.sleep(1.2)
    s, h, b = get(gw, p)
    assert n_of(b) == 1 and "stale-while-revalidate" in h["cache-status"]
    deadline = time.time() + 3
    while up.count(p) < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert up.count(p) == 2  # refreshed once, in the background
    time.sleep(0.1)
    s, h, b = get(gw, p)
    assert n_of(b) == 2 and "hit" in h["cache-status"]
    # the upstream fails: a stale entry within stale-if-error answers
    p2 = "/swr/err"
    up.script[p2] = {"headers": [("cache-control", "max-age=1, must-understand")]}
    get(gw, p2)
    # an upstream 500/502/503/504 is an error too (RFC 5861 section 4): stale within
    # stale-if-error, the upstream's own answer on a route without it
    five = {"/swr/5xx": 503, "/swr/500": 500, "/c/5xx": 503}
    for p5, code in five.items():
        up.script[p5] = (lambda code: lambda hdrs, k: {"headers": [("cache-control", "max-age=1")]} if k == 1
                         else {"status": code, "headers": [("x-up", "failed")], "body": b"upstream failed" * 9})(code)
        assert get(gw, p5)[0] == 200
    time.sleep(1.2)
    up.down = True
    try:
        s, h, b = get(gw, "/swr/err", {"Cache-Control": "max-age=0"})
    finally:
        up.down = False
    assert s == 200 and n_of(b) == 1 and "stale-if-error" in h["cache-status"]
    for p5, code in five.items():
        s, h, b = get(gw, p5, {"Cache-Control": "max-age=0"})  # (no stale-while-revalidate answer)
        assert up.count(p5) == 2
        if p5.startswith("/swr/"):
            assert (s, n_of(b), h.get("x-up")) == (200, 1, None), (p5, s, h, b)
            cs = h["cache-status"]
            assert "fwd=stale; fwd-status=%d;" % code in cs and cs.endswith("detail=stale-if-error"), cs
            assert int(h["age"]) >= 1 and h["content-length"] == str(len(b)) and "transfer-encoding" not in h
            s, _h, b = get(gw, p5, {"Cache-Control": "max-age=0"}, method="HEAD")  # the stale head, no body
            assert (s, b, up.count(p5)) == (200, b"", 3)
        else:
            assert (s, b, h["x-up"]) == (code, b"upstream failed" * 9, "failed")


# ----------------------------------------------------------------------------- coalescing, purge, warming
COAL = """
gateway: {host: 127.0.0.1, port: 0, drain: {delay: 0s, timeout: 2s}}
cache: {memory: 1m, coalesce_wait: 3s, warm: ["http://warm.test/w/one"]}
services:
  up:
    url: "http://{UP}"
    routes:
      - {path: "/w/*", name: w, cache: true}
monitoring:
  metrics_port: 0
  admin: {port: 0, token: "t0ken"}
  logging: {level: warning}
"""


def test_coalescing_purge_and_warming_two_workers():
    with Upstream() as up:
        up.script["/w/one"] = {"headers": [("cache-control", "max-age=300"), ("cache-tag", "cat-1 cat-2")]}
        gw = Gateway(COAL, upstream=up, workers=2).start()
        try:
            # warming: every worker fetched the URL after start
            deadline = time.time() + 5
            while up.count("/w/one") < 2 and time.time() < deadline:
                time.sleep(0.05)
            assert up.count("/w/one") == 2
            # the upstream counts a warm fetch when it answers; the worker stores it a moment
            # later (and publishes the count on its 1 s tick): wait for both stores
            deadline = time.time() + 5
            while sum(series(metrics_text(gw), "fastgw_cache_stored_total").values()) < 2 \
                    and time.time() < deadline:
                time.sleep(0.1)
            for _ in range(6):
                s, h, b = get(gw, "/w/one", {"Host": "warm.test"})
                assert "hit" in h["cache-status"]
            assert up.count("/w/one") == 2
            # coalescing: 8 concurrent misses -> at most one upstream request per worker
            up.script["/w/slow"] = {"headers": [("cache-control", "max-age=300")], "delay": 0.5}
            with ThreadPoolExecutor(8) as ex:
                res = list(ex.map(lambda _i: get(gw, "/w/slow"), range(8)))
            assert all(r[0] == 200 for r in res) and 1 <= up.count("/w/slow") <= 2
            # the waiters were answered with the fetch's entry
            assert any("detail=coalesced" in r[1]["cache-status"] for r in res)
            # a private answer is not handed to waiters: each goes upstream
            up.script["/w/priv"] = {"headers": [("cache-control", "private, max-age=300")], "delay": 0.4}
            with ThreadPoolExecutor(6) as ex:
                res = list(ex.map(lambda _i: get(gw, "/w/priv"), range(6)))
            assert sorted(n_of(r[2]) for r in res) == list(range(1, 7))
            # a purge reaches every worker before the call returns: no answer after it is
            # an entry stored before it (the kernel picks the worker of each connection)
            auth = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
            st, _h, body = admin(gw, "/admin/cache/purge", method="POST", headers=auth,
                                 body=json.dumps({"tag": "cat-2"}).encode())
            assert st == 200, body
            after = [n_of(get(gw, "/w/one", {"Host": "warm.test"})[2]) for _ in range(12)]
            assert min(after) >= 3 and up.count("/w/one") <= 4
            before = up.count("/w/slow")
            assert admin(gw, "/admin/cache/purge", method="POST", headers=auth, body=b'{"prefix": "/w/"}')[0] == 200
            after = [n_of(get(gw, "/w/slow")[2]) for _ in range(12)]
            assert min(after) > before and up.count("/w/slow") - before <= 2
            before = up.count("/w/slow")
            assert admin(gw, "/admin/cache/purge", method="POST", headers=auth,
                         body=b'{"url": "http://127.0.0.1/w/slow"}')[0] == 200
            after = [n_of(get(gw, "/w/slow")[2]) for _ in range(12)]
            assert min(after) > before
            st, _h, body = admin(gw, "/admin/cache/purge", method="POST", headers=auth, body=b'{"bogus": 1}')
            assert st == 400
            text = metrics_text(gw)
            hits = series(text, "fastgw_cache_lookups_total")
            assert any('result="hit"' in k and v > 0 for k, v in hits.items())
            assert len(series(text, "fastgw_cache_objects")) == 2
        finally:
            gw.stop()


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("snippet,where", [
    ("cache: {key: {headers: [Authorization]}}", "services.up.routes[0].cache.key.headers[0]"),
    ("cache: {key: {query: some}}", "services.up.routes[0].cache.key.query"),
    ("cache: {default_ttl: soon}", "services.up.routes[0].cache.default_ttl"),
])
def test_bad_cache_config_names_the_field(snippet, where):
    from fastgw.config.errors import ConfigError
    from fastgw.config.loader import load_config_text
    text = "services:\n  up:\n    url: http://127.0.0.1:1\n    routes:\n      - path: /a/*\n        %s\n" % snippet
    with pytest.raises(ConfigError) as e:
        load_config_text(text)
    assert where in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config_text("cache: {memory: 1m, max_object_size: 2m}\n" + text.replace(snippet, "cache: true"))
    assert "cache.max_object_size" in str(e.value)
