"""The engine's match cache (App.match_cache): a request target seen before on the same
config skips splitting, normalising and matching.  These tests repeat targets on one
keep-alive connection (one worker, so every request meets the cache filled by the ones
before) and check that the answer is always the one the router gives a fresh request:
host, method, query, normalisation, the health path and errors; and that routes with
``match`` conditions are matched per request while the others stay cached.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import uvloop

from fastgw.config import load_config_text
from fastgw.routing.router import Router
from tests.support.wire import exchange, parse_responses
from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream


def _config(services: str) -> str:
    """A gateway on 127.0.0.1:0 with ``services`` (YAML, indented as under ``services:``)."""
    return ("gateway:\n  host: 127.0.0.1\n  port: 0\nservices:\n" + services +
            "monitoring:\n  metrics_port: 0\n  logging: {level: warning}\n")


CONFIG = _config("""\
  a:
    url: "http://{A}"
    routes:
      - {path: "/x/*", host: "a.example", methods: ["GET"]}
      - {path: "/x/*", methods: ["GET"]}
      - {path: "/m", methods: ["GET"]}
      - {path: "/p/{id}", methods: ["GET"]}
  b:
    url: "http://{B}"
    routes:
      - {path: "/x/*", host: "b.example", methods: ["GET"]}
      - {path: "/m", methods: ["POST"], host: "b.example"}
""")

CONDITIONS = _config("""\
  a:
    url: "http://{A}"
    routes:
      - {path: "/h", methods: ["GET"]}
      - {path: "/lit", methods: ["GET"]}
  b:
    url: "http://{B}"
    routes:
      - {path: "/h", methods: ["GET"], match: {headers: {X-V: "1"}}}
""")


@pytest.fixture(scope="module")
def ups():
    with EchoUpstream("a") as a, EchoUpstream("b") as b:
        yield a, b


def _gw(text, ups):
    a, b = ups
    return Gateway(text.replace("{A}", a.addr).replace("{B}", b.addr))


@pytest.fixture(scope="module")
def gw(ups):
    with _gw(CONFIG, ups) as g:
        yield g


def _run(gw, reqs: list[tuple[str, str, str]], extra: str = "") -> list[tuple[int, dict | None]]:
    """Send (method, target, host) requests pipelined on one connection; return (status,
    echo or None) per request, in order."""
    raw = b"".join(f"{m} {t} HTTP/1.1\r\nHost: {h}\r\n{extra}Content-Length: 0\r\n\r\n".encode()
                   for m, t, h in reqs) + b"GET /x/end HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    data, _ = exchange(gw.port, raw)
    out = []
    heads = [m == "HEAD" for m, _t, _h in reqs] + [False]
    for (status, headers, body), (m, _t, _h) in zip(parse_responses(data, head_only_methods=heads)[:-1], reqs):
        echo = json.loads(body) if status == 200 and m != "HEAD" else None
        out.append((status, echo))
    assert len(out) == len(reqs), data[-500:]
    return out


def test_host_is_part_of_the_key(gw):
    got = _run(gw, [("GET", "/x/1", "a.example"), ("GET", "/x/1", "b.example"), ("GET", "/x/1", "a.example"),
                    ("GET", "/x/1", "other.example"), ("GET", "/x/1", "B.EXAMPLE"), ("GET", "/x/1", "b.example:80")])
    assert [e["service"] for _s, e in got] == ["a", "b", "a", "a", "b", "b"]
    assert all(e["path"] == "/x/1" for _s, e in got)


def test_method_is_part_of_the_key(gw):
    got = _run(gw, [("GET", "/m", "gw"), ("POST", "/m", "gw"), ("GET", "/m", "gw"), ("POST", "/m", "b.example"),
                    ("GET", "/m", "b.example"), ("HEAD", "/m", "gw")])
    # (b.example's /m takes POST only, so its GET falls to the host-less GET route: rule 3;
    # HEAD is allowed where GET is)
    assert [s for s, _e in got] == [200, 405, 200, 200, 200, 200]
    assert [got[i][1]["service"] for i in (0, 2, 3, 4)] == ["a", "a", "b", "a"]


def test_query_and_params_follow_each_target(gw):
    got = _run(gw, [("GET", "/x/q?a=1", "gw"), ("GET", "/x/q?a=2", "gw"), ("GET", "/x/q?a=1", "gw"),
                    ("GET", "/p/7", "gw"), ("GET", "/p/8", "gw"), ("GET", "/p/7", "gw")])
    assert [e["query"] for _s, e in got[:3]] == ["a=1", "a=2", "a=1"]
    assert [e["path"] for _s, e in got[3:]] == ["/p/7", "/p/8", "/p/7"]


def test_every_spelling_is_normalised_every_time(gw):
    spellings = ["/x/a", "/x/%61", "/x//a", "/x/b/../a", "/x/./a"]
    got = _run(gw, [("GET", t, "gw") for t in spellings * 2])
    assert [e["path"] for _s, e in got] == ["/x/a"] * 10


def test_health_path_and_errors_are_answered_every_time(gw):
    got = _run(gw, [("GET", "/healthz", "gw"), ("GET", "/healthz", "gw"), ("GET", "/nothing", "gw"),
                    ("GET", "/nothing", "gw"), ("GET", "/x/h", "gw"), ("GET", "/healthz", "gw")])
    assert [s for s, _e in got] == [200, 200, 404, 404, 200, 200]
    for i in (0, 1, 5):  # the gateway's own answer, never the upstream's echo
        assert got[i][1] == {"status": "ready"}
    for _ in range(2):  # (a bad path closes the connection: one each)
        data, closed = exchange(gw.port, b"GET /x/a%2Fb HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 400 ") and closed


def test_routes_with_conditions_are_matched_per_request_under_the_cache(ups):
    with _gw(CONDITIONS, ups) as gw:
        plain = _run(gw, [("GET", "/h", "gw")] * 2)
        marked = _run(gw, [("GET", "/h", "gw")] * 2, extra="X-V: 1\r\n")
        again = _run(gw, [("GET", "/h", "gw")] * 2)
        lit = _run(gw, [("GET", "/lit", "gw")] * 2, extra="X-V: 1\r\n")
    assert [e["service"] for _s, e in plain + marked + again + lit] == ["a", "a", "b", "b", "a", "a", "a", "a"]


def test_cache_entry_keeps_unconditional_answers_and_marks_conditional_ones():
    cfg, _ = load_config_text(CONDITIONS.replace("{A}", "127.0.0.1:9").replace("{B}", "127.0.0.1:9"))
    r = Router([(rc, rc.name) for svc in cfg.services.values() for rc in svc.routes])
    assert r.cacheable
    target, params = r.match("gw", "GET", "/lit", {}.get, b"")
    assert r.cache_entry(b"", "/lit", target, params, False) == (b"", "/lit", "a-1", None)
    target, params = r.match("gw", "GET", "/h", {}.get, b"")  # /h has a conditional candidate
    assert target == "a-0" and r.cache_entry(b"", "/h", target, params, True) == (b"", "/h", None, True)


def test_cache_stays_bounded():
    from bench.micro.inproc import CFG, REQ, RESP, Transport, gateway
    from fastgw.http.protocol import DownstreamProtocol
    from fastgw.pipeline import engine as engine_mod

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app, engine, info, up, _ut = gateway(CFG, loop)
        down = DownstreamProtocol(engine, info, loop)
        down.connection_made(Transport())
        n = engine_mod.MATCH_CACHE_SIZE + 50
        for i in range(n):
            down.data_received(REQ.replace(b"GET /x ", b"GET /x/%d " % i))
            up.data_received(RESP)
            assert len(app.match_cache) <= engine_mod.MATCH_CACHE_SIZE
        assert 0 < len(app.match_cache) < engine_mod.MATCH_CACHE_SIZE
        long_target = b"/x/" + b"y" * engine_mod.MATCH_CACHE_TARGET
        before = len(app.match_cache)
        down.data_received(REQ.replace(b"GET /x ", b"GET " + long_target + b" "))
        up.data_received(RESP)
        assert len(app.match_cache) == before  # long targets are not kept
    finally:
        asyncio.set_event_loop(None)
        loop.close()
