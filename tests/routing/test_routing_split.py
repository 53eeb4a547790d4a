"""Traffic splitting (issue 26 item 2) through a real gateway and real upstreams: shares by
weight, pinning by hash_key, the override, and the route's own settings on either side."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fastgw.auth.mint import mint_token
from fastgw.config import ConfigError, load_config_text
from fastgw.routing.split import Splitter
from tests.support.wire import exchange, parse_responses
from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream

SECRET = "split-test-secret-0123456789abcdef0123456789"
CONFIG = """
gateway: {host: 127.0.0.1, port: 0}
services:
  items:
    url: "http://{MAIN}"
    routes:
      - path: "/random/*"
        split: {to: [{service: items, weight: 90}, {service: canary, weight: 10}]}
      - path: "/pinned/*"
        split: {to: [{service: items, weight: 50}, {service: canary, weight: 50}], hash_key: "header:X-User",
                override: {header: X-Canary, cookie: canary}}
      - path: "/limited"
        max_body_size: 4
        methods: [POST]
        split: {to: [{service: items, weight: 0}, {service: canary, weight: 1}]}
      - path: "/user/*"
        auth: true
        split: {to: [{service: items, weight: 50}, {service: canary, weight: 50}], hash_key: user}
  canary:
    url: "http://{CANARY}"
auth: {jwt_secret: "%s"}
monitoring: {metrics_port: 0, logging: {level: warning}}
""" % SECRET


@pytest.fixture(scope="module")
def gw():
    with EchoUpstream("items") as a, EchoUpstream("canary") as b, \
            Gateway(CONFIG.replace("{MAIN}", a.addr).replace("{CANARY}", b.addr)) as g:
        yield g


def _sides(gw, reqs: list[bytes]) -> list[str]:
    """Send raw request heads (without the final CRLF) pipelined on one connection; the echo
    service name of each answer."""
    raw = b"".join(r + b"\r\n" for r in reqs[:-1]) + reqs[-1] + b"Connection: close\r\n\r\n"
    data, _ = exchange(gw.port, raw, timeout=20)
    out = [json.loads(body)["service"] for _st, _h, body in parse_responses(data)]
    assert len(out) == len(reqs)
    return out


def test_random_split_shares_within_3_points_over_2000_requests(gw):
    got = []
    for _ in range(4):
        got += _sides(gw, [b"GET /random/x HTTP/1.1\r\nHost: gw\r\n"] * 500)
    share = got.count("canary") / len(got)
    assert abs(share - 0.10) <= 0.03, share


def test_hash_key_pins_each_client_to_one_side_and_override_forces_the_canary(gw):
    users = [f"user-{i}" for i in range(200)]
    req = [b"GET /pinned/x HTTP/1.1\r\nHost: gw\r\nX-User: %s\r\n" % u.encode() for u in users]
    first = _sides(gw, req)
    again = _sides(gw, req[::-1])[::-1]
    assert first == again                                   # pinned
    assert 0.35 <= first.count("canary") / len(first) <= 0.65
    main_users = [u for u, s in zip(users, first) if s == "items"][:20]
    forced = [b"GET /pinned/x HTTP/1.1\r\nHost: gw\r\nX-User: %s\r\nX-Canary: 1\r\n" % u.encode() for u in main_users]
    forced += [b"GET /pinned/x HTTP/1.1\r\nHost: gw\r\nX-User: %s\r\nCookie: a=b; canary=yes\r\n" % u.encode()
               for u in main_users]
    assert set(_sides(gw, forced)) == {"canary"}
    off = [b"GET /pinned/x HTTP/1.1\r\nHost: gw\r\nX-User: %s\r\nX-Canary: 0\r\n" % u.encode() for u in main_users]
    assert set(_sides(gw, off)) == {"items"}


def test_hash_key_user_pins_the_verified_subject(gw):
    users = [f"u{i}" for i in range(100)]
    req = [b"GET /user/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
           % mint_token(SECRET, u, []).encode() for u in users]
    first = _sides(gw, req)
    assert _sides(gw, req[::-1])[::-1] == first
    assert 0.3 <= first.count("canary") / len(first) <= 0.7
    assert gw.request("GET", "/user/x")[0] == 401                # the route's auth, whichever side


def test_route_settings_apply_on_every_side(gw):
    st, _hd, _body = gw.request("POST", "/limited", body=b"12345678")
    assert st == 413                                         # the route's max_body_size
    st, _hd, body = gw.request("POST", "/limited", body=b"123")
    assert st == 200 and json.loads(body)["service"] == "canary"


def test_splitter_is_stable_and_follows_weights():
    cfg, _ = load_config_text(CONFIG.replace("{MAIN}", "127.0.0.1:9").replace("{CANARY}", "127.0.0.1:9"))
    routes = cfg.services["items"].routes
    sp = Splitter(routes[1].split)
    ctx = lambda **h: SimpleNamespace(header={k.encode(): v.encode() for k, v in h.items()}.get,  # noqa: E731
                                      user=None, client_ip="10.0.0.1")
    assert sp.side(ctx(**{"x-user": "alice"})) == Splitter(routes[1].split).side(ctx(**{"x-user": "alice"}))
    assert sp.side(ctx()) == sp.side(ctx())                  # no key: the client address
    assert sp.side(ctx(**{"x-canary": "true"})) == 1
    assert sp.side(ctx(cookie="canary=0")) == sp.side(ctx())
    zero = Splitter(routes[2].split)
    assert {zero.side(ctx()) for _ in range(50)} == {1}       # weight 0 never chosen


@pytest.mark.parametrize("split, want", [
    ("{to: [{service: items, weight: 1}]}", "services.items.routes[0].split.to: must have at least 2 items"),
    ("{to: [{service: items, weight: 1}, {service: nope, weight: 1}]}",
     "services.items.routes[0].split.to[1].service: no service named 'nope'"),
    ("{to: [{service: items, weight: 0}, {service: canary, weight: 0}]}",
     "services.items.routes[0].split.to: every weight is 0: no side could get a request"),
    ("{to: [{service: items, weight: 1}, {service: items, weight: 1}]}",
     "services.items.routes[0].split.to[1].service: 'items' is already a side of this split"),
    ("{to: [{service: items, weight: 1}, {service: canary, weight: 1}], hash_key: session}",
     "services.items.routes[0].split.hash_key: expected 'ip', 'user', 'header:NAME' or 'cookie:NAME', got 'session'"),
    ("{to: [{service: items, weight: 1}, {service: canary, weight: 1}], override: {to: canary}}",
     "services.items.routes[0].split.override: give a 'header' or a 'cookie' (or both) that forces the canary"),
    ("{to: [{service: items, weight: 1}, {service: canary, weight: 1}], override: {header: X-C, to: other}}",
     "services.items.routes[0].split.override.to: 'other' is not one of the split's services (canary, items)"),
])
def test_invalid_split_is_refused_with_paths(split, want):
    text = ("services:\n  items:\n    url: http://127.0.0.1:9\n    routes:\n      - {path: /s, split: " + split + "}\n"
            "  canary:\n    url: http://127.0.0.1:9\n")
    with pytest.raises(ConfigError) as ei:
        load_config_text(text)
    assert want in ei.value.errors
