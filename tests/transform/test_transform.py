"""Transformations (issue 25): a real gateway (2 workers) in front of a recording upstream
that answers chosen JSON, text and gzip bodies; config refusals through the loader."""

from __future__ import annotations

import gzip
import http.client
import json
import time
from urllib.parse import quote, unquote

import jwt
import pytest

from fastgw.config.errors import ConfigError
from fastgw.config.loader import load_config_text
from tests.support.gateway import Gateway
from tests.support.upstream import FakeUpstream

SECRET = "transform-test-secret-0123456789abcdef"
DOC = {"data": {"id": 7, "name": "x"}, "meta": {"page": 1}}
BIG = json.dumps({"items": ["y" * 100] * 400}).encode()  # ~41 KB, over the 8k max_size


class _Recorder(FakeUpstream):
    """The shared fake upstream, recording (path, headers as sent, body) in ``seen``."""

    def __init__(self) -> None:
        super().__init__(handler=self._any)
        self.seen: list[dict] = []

    def _any(self, req, conn) -> bool:
        self.seen.append({"path": req.target, "headers": list(req.header_list), "body": req.body})
        p, _, q = req.target.partition("?")
        if p.endswith("/redir"):  # a redirect to the Location the query names (to=...)
            conn.respond(302, [("Location", unquote(q.partition("to=")[2].partition("&")[0]))])
            return True
        extra = []
        if p.endswith("/gz"):
            out, ctype, extra = gzip.compress(json.dumps(DOC).encode()), "application/json", [("Content-Encoding", "gzip")]
        elif p.endswith("/text"):
            out, ctype = b"plain words", "text/plain"
        elif p.endswith("/big"):
            out, ctype = BIG, "application/json"
        else:
            out, ctype = json.dumps(DOC).encode(), "application/json"
        conn.respond(200, [("Content-Type", ctype), ("Server", "recorder"), ("X-Up-Old", "moved")] + extra, out)
        return True


@pytest.fixture(scope="module")
def up():
    with _Recorder() as srv:
        yield srv


CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  transform: {response: {headers: {set: {X-Served-By: "$worker_pid"}}}}
services:
  items:
    url: "http://127.0.0.1:%(port)d/base"
    transform:
      request: {headers: {set: {X-Svc: "$service", X-Level: service}}}
    routes:
      - path: "/api/items/*"
        name: items
        methods: [GET, POST]
        auth: true
        transform:
          request:
            strip_prefix: true
            query: {set: {src: gw, who: "$jwt.sub", tm: "$jwt.team", via: "$scheme $route"}, remove: [debug]}
            headers:
              set: {X-User: "$jwt.sub", X-Level: route, X-Team: "$jwt.team", X-Const: "a $$5 b"}
              add: {X-Via: "$scheme://$host ($route)"}
              remove: [X-Debug]
              rename: {X-Old: X-New}
            body: {set: {"/source": "gateway"}, remove: ["/internal"], rename: {"/a": "/b"}, max_size: 8k}
          response:
            headers: {remove: [Server], rename: {X-Up-Old: X-Up-New}, add: {X-Up: "$upstream_addr"}}
            body: {unwrap: "/data", max_size: 8k}
      - path: "/v1/things/{id}"
        name: things
        transform: {request: {path: "/v2/items/{id}"}}
      - path: {regex: "^/re/(\\\\w+)/(\\\\w+)$"}
        name: re
        transform: {request: {path: {regex: "^/re/(\\\\w+)/(\\\\w+)$", replacement: "/swapped/\\\\2/\\\\1"}}}
      - path: "/esc/*"
        name: esc
        transform: {request: {path: {regex: "^/esc/(.*)$", replacement: "/safe/../../\\\\1"}}}
      - path: "/wrap/*"
        name: wrap
        compression: true
        transform: {response: {body: {wrap: "/result"}}}
auth:
  jwt_secret: "%(secret)s"
monitoring:
  metrics_port: 0
  logging:
    level: warning
"""


@pytest.fixture(scope="module")
def gw(up):
    g = Gateway(CONFIG % {"port": up.port, "secret": SECRET}, workers=2)
    with g:
        yield g


def tok(**claims) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "iat": now, "exp": now + 300, **claims}, SECRET, algorithm="HS256")


def call(gw, method, path, headers=None, body=None):
    """(status, [(name, value)] as sent, body) on a fresh connection."""
    c = http.client.HTTPConnection(gw.host, gw.port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheaders(), r.read()
    finally:
        c.close()


def values(pairs, name):
    return [v for k, v in pairs if k.lower() == name.lower()]


def test_path_forms(gw, up):
    auth = {"Authorization": "Bearer " + tok()}
    up.seen.clear()
    s, _h, _b = call(gw, "GET", "/api/items/42?x=1&debug=1", auth)
    assert s == 200
    # prefix stripped, base path kept in front; debug removed, src set; values with
    # variables rendered and encoded, a key whose variable is absent ($jwt.team) left out
    assert up.seen[-1]["path"] == "/base/42?x=1&src=gw&who=alice&via=http%20items"
    s, _h, _b = call(gw, "GET", "/api/items/42?tm=client", {"Authorization": "Bearer " + tok(team="a&b=c")})
    assert s == 200 and up.seen[-1]["path"] == "/base/42?src=gw&who=alice&tm=a%26b%3Dc&via=http%20items"
    s, _h, _b = call(gw, "GET", "/v1/things/abc")
    assert s == 200 and up.seen[-1]["path"] == "/base/v2/items/abc"
    s, _h, _b = call(gw, "GET", "/re/one/two")
    assert s == 200 and up.seen[-1]["path"] == "/base/swapped/two/one"
    n = len(up.seen)
    s, h, b = call(gw, "GET", "/esc/etc/passwd")
    assert s == 500 and values(h, "content-type")[0].startswith("application/problem+json")
    assert len(up.seen) == n, "a refused rewrite must never be forwarded"
    assert values(h, "x-served-by"), "per-request response headers decorate local replies too"
    deadline = time.monotonic() + 5
    while not any("refused" in ln and "/esc/etc/passwd" in ln for ln in gw.stderr_lines + gw.stdout_lines):
        assert time.monotonic() < deadline, "no log line for the refused rewrite"
        time.sleep(0.05)


def test_redirect_puts_the_stripped_prefix_back(gw, up):
    """The route strips /api/items and the service's base is /base: the upstream's
    redirects name its own paths, the client gets its own (redirect_rewrite: auto, with
    preserve_host true, the default)."""
    auth = {"Authorization": "Bearer " + tok()}
    origin = "http://%s:%d" % (gw.host, gw.port)
    cases = {
        "/base/items/7": "/api/items/items/7",           # path-absolute, under the base path
        "/base": "/api/items/",
        "/base/x?y=1#f": "/api/items/x?y=1#f",
        origin + "/base/items/7": origin + "/api/items/items/7",  # the client's own origin
        "/elsewhere/1": "/elsewhere/1",                  # outside the base path: untouched
        "/basement": "/basement",                        # no boundary after the base
        "items/7": "items/7",                            # relative: resolves the same on both sides
        "http://other.example/base/1": "http://other.example/base/1",
    }
    for sent, want in cases.items():
        s, h, _b = call(gw, "GET", "/api/items/redir?to=" + quote(sent, safe=""), auth)
        assert s == 302 and values(h, "location") == [want], (sent, values(h, "location"))


def test_request_headers_and_variables(gw, up):
    t = tok(team="core\r\nX-Injected: 1")
    up.seen.clear()
    s, _h, _b = call(gw, "GET", "/api/items/1", {
        "Authorization": "Bearer " + t, "X-Debug": "1", "X-Old": "admin", "X-New": "forged",
        "X-User": "mallory", "X-Team": "client-copy", "Host": "shop.example"})
    assert s == 200
    got = up.seen[-1]["headers"]
    assert values(got, "x-user") == ["alice"]            # $jwt.sub, the client's copy gone
    assert values(got, "x-team") == []                     # a claim with CR/LF: dropped, no client copy
    assert values(got, "x-injected") == []
    assert values(got, "x-debug") == []                    # remove
    assert values(got, "x-old") == [] and values(got, "x-new") == ["admin"]  # rename, forged target gone
    assert values(got, "x-level") == ["route"]             # route over service for the same name
    assert values(got, "x-svc") == ["items"]               # service level, constant variable
    assert values(got, "x-const") == ["a $5 b"]
    assert values(got, "x-via") == ["http://shop.example (items)"]


def test_response_headers_and_worker_pid(gw, up):
    auth = {"Authorization": "Bearer " + tok()}
    pids = set()
    for _ in range(40):
        s, h, _b = call(gw, "GET", "/api/items/1", auth)
        assert s == 200
        assert values(h, "server") == []                   # removed
        assert values(h, "x-up-new") == ["moved"] and values(h, "x-up-old") == []
        assert values(h, "x-up") == ["127.0.0.1:%d" % up.port]
        pids.update(values(h, "x-served-by"))
        if len(pids) == 2:
            break
    assert len(pids) == 2 and all(p.isdigit() for p in pids), pids
    # gateway level reaches a route with no transform of its own
    s, h, _b = call(gw, "GET", "/v1/things/9")
    assert s == 200 and values(h, "x-served-by")


def test_json_bodies(gw, up):
    auth = {"Authorization": "Bearer " + tok(), "Content-Type": "application/json"}
    up.seen.clear()
    s, h, b = call(gw, "POST", "/api/items/1", auth, json.dumps({"a": 1, "internal": 2, "keep": 3}).encode())
    assert s == 200
    sent = up.seen[-1]
    assert json.loads(sent["body"]) == {"b": 1, "keep": 3, "source": "gateway"}
    assert int(values(sent["headers"], "content-length")[0]) == len(sent["body"])
    assert json.loads(b) == DOC["data"]                    # response unwrap
    # the edited body is sent whole, with its own length, not chunked
    assert values(h, "content-length") == [str(len(b))] and not values(h, "transfer-encoding")
    s, h, b = call(gw, "GET", "/wrap/x")
    assert s == 200 and json.loads(b) == {"result": DOC}
    assert values(h, "content-length") == [str(len(b))] and not values(h, "transfer-encoding")
    # the edited body is what compression encodes (transform runs first)
    s, h, b = call(gw, "GET", "/wrap/x", {"Accept-Encoding": "gzip"})
    assert s == 200 and values(h, "content-encoding") == ["gzip"]
    assert json.loads(gzip.decompress(b)) == {"result": DOC}
    assert values(h, "content-length") == [str(len(b))] or values(h, "transfer-encoding") == ["chunked"]


def test_pass_through(gw, up):
    auth = {"Authorization": "Bearer " + tok()}
    # request: not JSON, and too large
    up.seen.clear()
    call(gw, "POST", "/api/items/1", dict(auth, **{"Content-Type": "text/plain"}), b'{"internal": 1}')
    assert up.seen[-1]["body"] == b'{"internal": 1}'
    big = json.dumps({"internal": "z" * 9000}).encode()
    call(gw, "POST", "/api/items/1", dict(auth, **{"Content-Type": "application/json"}), big)
    assert up.seen[-1]["body"] == big
    # response: too large, not JSON, compressed
    s, _h, b = call(gw, "GET", "/api/items/big", auth)
    assert s == 200 and b == BIG
    s, _h, b = call(gw, "GET", "/api/items/text", auth)
    assert s == 200 and b == b"plain words"
    s, h, b = call(gw, "GET", "/api/items/gz", auth)
    assert s == 200 and values(h, "content-encoding") == ["gzip"] and json.loads(gzip.decompress(b)) == DOC


BASE = """
services:
  s:
    url: "http://127.0.0.1:9"
    routes:
      - path: "/a/*"
        transform: %s
auth:
  jwt_secret: "%s"
  strip_headers: [X-Tenant]
"""


@pytest.mark.parametrize("transform, where, says", [
    ('{request: {headers: {rename: {X-Old: X-User-Id}}}}', "transform.request.headers.rename.X-Old", "identity"),
    ('{request: {headers: {set: {X-Tenant: "t"}}}}', "transform.request.headers.set.X-Tenant", "identity"),
    ('{request: {headers: {remove: [Host]}}}', "transform.request.headers.remove[0]", "managed by the gateway"),
    ('{response: {headers: {set: {Transfer-Encoding: x}}}}', "transform.response.headers.set.Transfer-Encoding",
     "managed"),
    ('{request: {headers: {set: {X-A: "a\\r\\nB: c"}}}}', "transform.request.headers.set.X-A", "control"),
    ('{request: {headers: {set: {X-A: "$nope"}}}}', "transform.request.headers.set.X-A", "unknown variable"),
    ('{request: {headers: {set: {X-A: "$upstream_addr"}}}}', "transform.request.headers.set.X-A", "response"),
    ('{request: {path: {regex: "(", replacement: x}}}', "transform.request.path.regex", "RE2"),
    ('{request: {query: {set: {k: "$nope"}}}}', "transform.request.query.set.k", "unknown variable"),
    ('{request: {query: {set: {k: "$upstream_addr"}}}}', "transform.request.query.set.k", "response"),
    ('{request: {query: {set: {k: "5$"}}}}', "transform.request.query.set.k", "$$"),
    ('{request: {body: {unwrap: "/d"}}}', "transform.request.body", "response"),
    ('{request: {path: "/v2/{id}"}}', "transform.request.path", "not a parameter"),
])
def test_refused_at_load(transform, where, says):
    with pytest.raises(ConfigError) as e:
        load_config_text(BASE % (transform, SECRET))
    text = str(e.value)
    assert where in text and says in text, text


def test_strip_prefix_needs_wildcard_and_no_warning_left():
    with pytest.raises(ConfigError) as e:
        load_config_text((BASE % ("{request: {strip_prefix: true}}", SECRET)).replace('"/a/*"', '"/a"'))
    assert "strip_prefix" in str(e.value) and "wildcard" in str(e.value)
    _cfg, warnings = load_config_text(BASE % ("{request: {strip_prefix: true}}", SECRET))
    assert not [w for w in warnings if "transform" in w]


def test_redirect_prefix_with_instance_origins():
    """preserve_host false: an instance's absolute URL becomes the client's, prefix put back."""
    from types import SimpleNamespace

    from fastgw.middleware.redirect import RedirectRewrite

    rr = RedirectRewrite("auto", None, ["http://10.0.0.5:8080/app"], "/api/v1", origins=True)
    ctx = SimpleNamespace(request=SimpleNamespace(raw_host=b"gw.example"), scheme="https")
    for sent, want in [(b"http://10.0.0.5:8080/app/items/7", b"https://gw.example/api/v1/items/7"),
                       (b"HTTP://10.0.0.5:8080/app?x=1", b"https://gw.example/api/v1/?x=1"),
                       (b"/app/items/7", b"/api/v1/items/7"),
                       (b"https://gw.example/app/l", b"https://gw.example/api/v1/l"),
                       (b"http://10.0.0.5:8080/apple", None),
                       (b"//evil.example/app/x", None)]:
        assert rr._rewrite(ctx, sent) == want, sent
    # without a stripped prefix: the origin only, paths untouched (as before)
    plain = RedirectRewrite("auto", None, ["http://10.0.0.5:8080/app"])
    assert plain._rewrite(ctx, b"http://10.0.0.5:8080/app/items/7") == b"https://gw.example/items/7"
    assert plain._rewrite(ctx, b"/app/items/7") is None
