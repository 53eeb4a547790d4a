"""Host, X-Forwarded-Host and redirect rewriting (issue #16, item 1), real processes."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support.wire import read_to_close, parse_head
from tests.support.gateway import Gateway
from tests.support.upstream import FakeUpstream


def _answer(req, conn) -> bool:
    """A JSON echo of Host and X-Forwarded-Host; ``/redirect`` and ``/elsewhere`` redirect."""
    me = "http://127.0.0.1:%d" % conn.sock.getsockname()[1]
    body = json.dumps({"host": req.header("host"), "xfh": req.header_all("x-forwarded-host") or None,
                       "path": req.target}).encode()
    headers = []
    if "/redirect" in req.target:
        headers += [("Location", me + req.target.replace("redirect", "next") + "?a=1"),
                    ("Content-Location", me + "/base"), ("Refresh", "0; url=" + me + "/base/r"),
                    ("X-Other", me + "/base/kept")]
    elif "/elsewhere" in req.target:
        headers.append(("Location", me + "/basement"))  # not the base path: kept
    headers.append(("content-type", "application/json"))
    conn.respond(302 if "/redirect" in req.target else 200, headers, body)
    return True


@pytest.fixture(scope="module")
def up():
    with FakeUpstream(handler=_answer) as srv:
        yield srv.addr


CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: ["127.0.0.1/32"]
  trust_forwarded_host: {TRUST}
services:
  kept:
    url: "http://{UP}/base"
    routes: [{path: "/k/*"}]
  own:
    url: "http://{UP}/base"
    preserve_host: false
    routes: [{path: "/o/*"}]
  listed:
    url: "http://{UP}/base"
    preserve_host: false
    redirect_rewrite: [{from: "http://{UP}/base/l/next", to: "/moved"}]
    routes: [{path: "/l/*"}]
  noop:
    url: "http://{UP}/base"
    preserve_host: false
    redirect_rewrite: off  # (YAML reads a bare off as false: the same)
    routes: [{path: "/f/*"}]
monitoring:
  metrics_port: 0
  logging: {level: warning}
"""


def _get(gw, raw: bytes):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        s.sendall(raw)
        data = read_to_close(s)
    finally:
        s.close()
    st, hdrs, _, body = parse_head(data)
    return st, hdrs, body


@pytest.fixture(scope="module")
def gw(up):
    with Gateway(CONFIG.replace("{UP}", up).replace("{TRUST}", "true")) as g:
        yield g


def test_client_host_is_forwarded_by_default(gw, up):
    st, _, body = _get(gw, b"GET /k/x HTTP/1.1\r\nHost: shop.example:8443\r\nConnection: close\r\n\r\n")
    assert st == 200
    seen = json.loads(body)
    assert seen["host"] == "shop.example:8443" and seen["path"] == "/base/k/x"


def test_http10_without_host_gets_local_address(gw, up):
    st, _, body = _get(gw, b"GET /k/x HTTP/1.0\r\n\r\n")
    assert st == 200
    assert json.loads(body)["host"] == f"127.0.0.1:{gw.port}"


def test_preserve_host_false_sends_instance_host_and_rewrites_redirects(gw, up):
    st, h, body = _get(gw, b"GET /o/redirect HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    assert st == 302
    assert json.loads(body)["host"] == up
    assert h["location"] == "http://shop.example/o/next?a=1"
    assert h["content-location"] == "http://shop.example/"
    assert h["refresh"] == "0; url=http://shop.example/r"
    assert h["x-other"] == f"http://{up}/base/kept"  # only the three headers
    st, h, _ = _get(gw, b"GET /o/elsewhere HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    assert h["location"] == f"http://{up}/basement"


def test_redirect_rewrite_list_and_off(gw, up):
    st, h, _ = _get(gw, b"GET /l/redirect HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    assert h["location"] == "/moved?a=1"
    assert h["content-location"] == f"http://{up}/base"
    st, h, _ = _get(gw, b"GET /f/redirect HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    assert h["location"] == f"http://{up}/base/f/next?a=1"


def test_x_forwarded_host_trusted_only_with_flag_and_trusted_peer(gw, up):
    raw = b"GET /k/x HTTP/1.1\r\nHost: lb.internal\r\nX-Forwarded-Host: shop.example\r\nConnection: close\r\n\r\n"
    _, _, body = _get(gw, raw)
    assert json.loads(body)["xfh"] == ["shop.example"]  # flag on, peer 127.0.0.1 trusted
    with Gateway(CONFIG.replace("{UP}", up).replace("{TRUST}", "false")) as g2:
        _, _, body = _get(g2, raw)
        assert json.loads(body)["xfh"] == ["lb.internal"]  # peer trusted, flag off: the Host received


@pytest.mark.parametrize("text, path", [
    ("gateway: {default_host: 'a b'}", "gateway.default_host"),
    ("gateway: {timeouts: {request_body_min_rate: 0}}", "gateway.timeouts.request_body_min_rate"),
    ("gateway: {timeouts: {lingering_time: 0s}}", "gateway.timeouts.lingering_time"),
    ("services: {a: {url: 'http://h', redirect_rewrite: maybe, routes: [{path: /}]}}", "services.a.redirect_rewrite"),
    ("services: {a: {url: 'http://h', redirect_rewrite: [{from: '', to: /}], routes: [{path: /}]}}",
     "services.a.redirect_rewrite[0].from"),
])
def test_bad_settings_are_refused_with_their_path(text, path):
    from fastgw.config.errors import ConfigError
    from fastgw.config.loader import load_config_text

    with pytest.raises(ConfigError) as e:
        load_config_text(text + "\n" + ("services: {a: {url: 'http://h', routes: [{path: /}]}}"
                                        if "services" not in text else ""))
    assert path in str(e.value), str(e.value)


def test_redirect_rewrite_unit():
    """The rewriter alone: boundary rule, default port written or not, Refresh's url=."""
    from types import SimpleNamespace

    from fastgw.http.messages import Reply
    from fastgw.middleware.redirect import RedirectRewrite

    mw = RedirectRewrite("auto", None, ["http://10.0.0.5:80/app"])
    ctx = SimpleNamespace(scheme="https", request=SimpleNamespace(raw_host=b"gw.example"))
    r = Reply(302, [(b"Location", b"http://10.0.0.5/app/x"), (b"content-location", b"http://10.0.0.5:80/app"),
                    (b"Refresh", b"3; URL=http://10.0.0.5/app?q"), (b"location", b"http://10.0.0.5/apple")])
    mw.response_filter(ctx, r)
    assert r.headers == [(b"Location", b"https://gw.example/x"), (b"content-location", b"https://gw.example/"),
                         (b"Refresh", b"3; URL=https://gw.example?q"), (b"location", b"http://10.0.0.5/apple")]
