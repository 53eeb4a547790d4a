"""The per-request model (issue 14): Request / Exchange / Attempt, the Ctx header
operations, the middleware capabilities, the error table's columns.

The attempt test runs a real gateway against two instances; the rest are unit tests of
pure parts (no sockets).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fastgw.errors import KINDS, GatewayError
from fastgw.http.messages import Reply, ResponseHead, parse_block
from fastgw.http.request import Request
from fastgw.pipeline.chain import Chain
from fastgw.pipeline.ctx import Ctx
from fastgw.pipeline.exchange import Exchange, new_attempt
from fastgw.pipeline.heads import request_head, response_head
from fastgw.pipeline.middleware import Middleware

from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream
from tests.support.wire import closed_port


# ---------------------------------------------------------------------- attempts
def test_retry_attempt_builds_its_own_head_for_its_instance():
    """Two instances with different base paths, the first refusing connections: the
    retried request reaches the second with that instance's Host and base path (the head
    is built per attempt, not once per request)."""
    dead = closed_port()
    with EchoUpstream("good") as good:
        cfg = f"""
gateway: {{host: 127.0.0.1, port: 0}}
services:
  two:
    preserve_host: false
    instances:
      - {{url: "http://127.0.0.1:{dead}/dead-base"}}
      - {{url: "http://{good.addr}/good-base"}}
    routes:
      - path: "/*"
monitoring: {{metrics_port: 0, logging: {{level: warning}}}}
"""
        with Gateway(cfg) as gw:
            # round-robin: of two requests, one tries the refusing instance first
            for i in range(2):
                assert gw.request("GET", f"/r/{i}?q=1")[0] == 200
        assert [r["target"] for r in good.requests] == ["/good-base/r/0?q=1", "/good-base/r/1?q=1"]
        assert {r["headers"]["host"] for r in good.requests} == {good.addr}


def test_attempts_are_linked_oldest_first():
    x = Exchange(Request.build("GET", b"/"), None)
    assert x.attempts() == []
    ia, ib = SimpleNamespace(pool="pool-a"), SimpleNamespace(pool="pool-b")
    a1 = x.attempt = new_attempt(ia, b"head-a", 1.0, None)
    a2 = x.attempt = new_attempt(ib, b"head-b", 2.0, a1)
    assert x.attempts() == [a1, a2] and a2.conn is None and a2.error is None
    assert (a1.instance, a1.pool, a2.instance, a2.pool) == (ia, "pool-a", ib, "pool-b")


def test_request_head_per_instance_and_filters_per_attempt():
    """request_head reads the instance's Host and base path; upstream_request_filter runs
    for each attempt with that attempt's head."""
    seen = []

    class Tag(Middleware):
        name = "tag"

        def upstream_request_filter(self, ctx, head):
            seen.append(head.target)
            head.set(b"X-Attempt", b"%d" % len(seen))

    x = Exchange(Request.build("GET", b"/p?a=1", [(b"Host", b"gw")]), None)
    route = SimpleNamespace(chain=Chain([Tag(None, None)]), preserve_host=False)
    one = request_head(x, route, SimpleNamespace(host_header=b"a:1", base_path=b"/a"))
    two = request_head(x, route, SimpleNamespace(host_header=b"b:2", base_path=b""))
    assert one.startswith(b"GET /a/p?a=1 HTTP/1.1\r\nhost: a:1\r\n") and b"X-Attempt: 1\r\n" in one
    assert two.startswith(b"GET /p?a=1 HTTP/1.1\r\nhost: b:2\r\n") and b"X-Attempt: 2\r\n" in two
    assert seen == [b"/a/p?a=1", b"/p?a=1"]


# ---------------------------------------------------------------------- Request
def test_request_build_classifies_like_the_protocol():
    r = Request.build("POST", b"/x?y=2", [
        (b"Host", b"Gw.Example"), (b"Authorization", b"Bearer a"), (b"authorization", b"Bearer b"),
        (b"Origin", b"https://o"), (b"User-Agent", b"ua"), (b"X-Request-ID", b"r1"),
        (b"Content-Length", b"3"), (b"X-Forwarded-For", b"1.1.1.1"), (b"Keep-Alive", b"5"), (b"X-A", b"1")])
    from fastgw.http.reqhead import REPEATED
    assert r.method == "POST" and r.path == "/x" and r.query == b"y=2" and r.host == "gw.example"
    assert r.authorization is REPEATED and r.origin == b"https://o" and r.user_agent == b"ua"
    assert r.x_request_id == b"r1" and r.content_length == 3 and r.xff == b"1.1.1.1"
    # captured values stay forwarded; Host, framing, hop-by-hop and X-Forwarded-* do not
    assert [n for n, _ in r.headers] == [b"Authorization", b"authorization", b"Origin", b"User-Agent",
                                         b"X-Request-ID", b"X-A"]
    assert r.header(b"x-a") == b"1" and r.header(b"host") is None


# ---------------------------------------------------------------------- Ctx header operations
def test_request_header_operations_reach_every_attempt_head():
    x = Exchange(Request.build("GET", b"/", [(b"Host", b"gw"), (b"X-Drop", b"1"), (b"X-Keep", b"2")]), None)
    x.add_request_header(b"X-Added", b"a")
    x.set_request_header(b"X-Keep", b"3")
    x.remove_request_headers(frozenset({b"x-drop"}))
    assert x.header(b"x-drop") == b"1"  # what the client sent is unchanged
    route = SimpleNamespace(chain=Chain([]), preserve_host=False)
    head = request_head(x, route, SimpleNamespace(host_header=b"u", base_path=b""))
    hs = parse_block(head.split(b"\r\n", 1)[1])
    assert (b"X-Added", b"a") in hs and (b"X-Keep", b"3") in hs
    assert all(n.lower() != b"x-drop" for n, _ in hs) and [n for n, _ in hs].count(b"X-Keep") == 1


def test_response_header_operations_apply_to_upstream_and_local_answers():
    x = Exchange(Request.build("GET", b"/", [(b"Host", b"gw")]), None)
    x.route = SimpleNamespace(chain=Chain([]))
    x.add_response_header(b"X-One", b"1")
    x.set_response_header(b"Server-Timing", b"gw;dur=1")
    x.remove_response_headers(frozenset({b"x-powered-by"}))
    down = SimpleNamespace(draining=False, cur_complete=True)
    head, _framing = response_head(x, down, 200, b"OK",
                                   b"X-Powered-By: php\r\nServer-Timing: up\r\nContent-Length: 0\r\n", True, None)
    hs = parse_block(head.split(b"\r\n", 1)[1])
    assert (b"X-One", b"1") in hs and (b"Server-Timing", b"gw;dur=1") in hs
    assert all(n.lower() not in (b"x-powered-by",) for n, _ in hs)
    assert [n.lower() for n, _ in hs].count(b"server-timing") == 1


def test_local_reply_gets_response_header_operations():
    from fastgw.pipeline.engine import Engine

    written = []
    x = Exchange(Request.build("GET", b"/", [(b"Host", b"gw")]), None)
    x.add_response_header(b"X-Rid", b"r")
    x.remove_response_headers(frozenset({b"x-secret"}))
    eng = Engine(SimpleNamespace(server_header=None))
    proto = SimpleNamespace(draining=False, cur_complete=True, write=written.append,
                            request_done=lambda req, keep: written.append(keep))
    eng._write_reply(proto, x, Reply(200, [(b"X-Secret", b"s"), (b"X-Ok", b"1")], b"hi"), False)
    data = written[0]
    assert b"X-Rid: r\r\n" in data and b"X-Ok: 1\r\n" in data and b"X-Secret" not in data
    assert written[1] is True


# ---------------------------------------------------------------------- middleware capabilities
class _Plain(Middleware):
    name = "plain"


class _Body(Middleware):
    name = "body"

    def __init__(self, need: bool) -> None:
        super().__init__(None, None)
        self.need = need

    def needs_body(self) -> bool:
        return self.need

    def request_body_filter(self, ctx, body):
        return None

    def error_filter(self, ctx) -> None:
        ctx.request_id = "from-error-filter"


def test_chain_compiles_only_overridden_hooks_and_capabilities():
    plain = _Plain(None, None)
    assert not plain.needs_body() and not plain.answers_preflight() and plain.ready()
    ch = Chain([plain, _Body(True), _Body(False)])
    assert ch.request == () and ch.response == () and ch.logging == () and ch.response_body == ()
    assert [i for i, _f in ch.request_body] == [1] and not ch.direct
    assert len(ch.error) == 2 and ch.response_body_filter() is None
    assert Chain([plain]).direct


def test_chain_says_whether_a_middleware_leaves_notes_for_the_access_log():
    """The access log reads its notes (trace, content_encoding, cache_result) only on a
    route with a middleware that leaves them (``Middleware.leaves_log_notes``)."""
    from fastgw.middleware.compression import Compression

    class _Notes(Middleware):
        name = "notes"

        def leaves_log_notes(self):
            return True

    assert not Chain([_Plain(None, None)]).log_notes and Chain([_Plain(None, None), _Notes(None, None)]).log_notes
    assert Compression.leaves_log_notes is not Middleware.leaves_log_notes


def test_error_filter_runs_for_a_reply_before_any_request_filter():
    """The engine names no middleware: a reply made before the request filters ran (no
    route) gets what the global chain's error filters set (the request id)."""
    from fastgw.pipeline.engine import Engine

    chain = Chain([_Body(False)])
    app = SimpleNamespace(global_chain=chain, server_header=None)
    eng = Engine(app)
    x = Exchange(Request.build("GET", b"/"), app)
    out = []
    proto = SimpleNamespace(draining=False, cur_complete=True, write=out.append,
                            request_done=lambda req, keep: out.append(keep))
    eng.reply_error(proto, x, GatewayError("no_route"), chain)
    assert x.request_id == "from-error-filter" and b'"request_id":"from-error-filter"' in out[0]
    assert out[1] is True  # a 404 keeps the connection (closes_connection False)


# ---------------------------------------------------------------------- the error table
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_error_table_columns(kind):
    status, title, source, closes, retryable = KINDS[kind]
    e = GatewayError(kind)
    assert (e.status, e.title, e.source, e.closes_connection, e.retryable) == (status, title, source, closes,
                                                                               retryable)
    assert source in ("downstream", "upstream", "internal")
    # a retry elsewhere is only ever safe for an upstream failure; an upstream failure
    # never ends the client connection
    assert not retryable or source == "upstream"
    assert not (source == "upstream" and closes)


def test_error_retryable_override_for_a_reused_connection():
    assert GatewayError("upstream_reset").retryable is False
    assert GatewayError("upstream_reset", retryable=True).retryable is True
    assert GatewayError("upstream_refused").retryable is True


def test_response_head_returns_the_framing():
    from fastgw.http.wire import CLOSE_DELIMITED, RECHUNK

    x = Exchange(Request.build("GET", b"/", [(b"Host", b"gw")]), None)
    x.route = SimpleNamespace(chain=Chain([]))
    down = SimpleNamespace(draining=False, cur_complete=True)
    _h, framing = response_head(x, down, 200, b"OK", b"Transfer-Encoding: chunked\r\n", True, None)
    assert framing == RECHUNK
    _h, framing = response_head(x, down, 200, b"OK", b"X-A: 1\r\n", True, None)
    assert framing == RECHUNK | CLOSE_DELIMITED
    _h, framing = response_head(x, down, 200, b"OK", b"Content-Length: 1\r\n", True, None)
    assert framing == 0


def test_ctx_surface_is_small():
    """Ctx is the middleware's surface; the engine's state lives on Exchange only."""
    engine_only = {"pending", "buffer", "attempt", "cancel", "resend", "retried", "nolog", "body_done", "app"}
    assert not engine_only & set(Ctx.__slots__)
    assert engine_only <= set(Exchange.__slots__)
    assert isinstance(Exchange(Request(), None), Ctx) and ResponseHead  # (imported for the surface)


def test_in_flight_count_is_the_connections_with_a_request():
    """Engine.inflight (the worker tick's gauge) counts the client connections with a
    request in flight, whatever ended the others (a response, a parse error, a close)."""
    import asyncio

    import uvloop

    from bench.micro.inproc import CFG, REQ, RESP, Transport, gateway
    from fastgw.http.protocol import DownstreamProtocol

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _app, engine, info, up, _ut = gateway(CFG, loop)
        a, b, c = (DownstreamProtocol(engine, info, loop) for _ in range(3))
        for p in (a, b, c):
            t = Transport()
            t.can_write_eof = lambda: False   # (c's answer ends with a lingering close)
            p.connection_made(t)
        assert engine.inflight == 0
        a.data_received(REQ)                      # waits for the upstream
        b.data_received(b"GET / HTTP/1.1\r\n")    # a head in progress is not a request yet
        assert engine.inflight == 1
        c.data_received(b"BAD\r\n\r\n")           # a parse error is answered at once
        assert engine.inflight == 1
        up.data_received(RESP)
        assert engine.inflight == 0 and a.cur is None
        b.data_received(b"Host: gw\r\n\r\n")     # no idle upstream connection left: it waits
        assert engine.inflight == 1
        b.connection_lost(None)
        assert engine.inflight == 0
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class _Refusals(Middleware):
    """A raw-block response filter limited to some statuses (as the failed-auth guard's):
    it marks the head and records that it acted."""

    name = "refusals"

    def __init__(self) -> None:
        super().__init__(None, None)
        self.acted: list = []

    def response_block_statuses(self):
        return frozenset({401})

    def response_filter(self, ctx, head) -> None:
        head.raw = self.response_block_filter(ctx, head.status, head.raw)

    def response_block_filter(self, ctx, status, block):
        if status != 401:
            return block
        self.acted.append(status)
        return block + b"x-refused: 1\r\n"


def _no_filter():
    return [], None


def _security_cors(origin):
    """The policy route's response side: security headers applying CORS's lines (the
    combined mode), CORS's request filter run first for ``origin``; and a filter limited
    to 401 (it is never on the usual path of another status)."""
    def chain():
        from fastgw.config.security import CorsConfig, SecurityHeadersConfig
        from fastgw.middleware.cors import CorsRequest
        from fastgw.middleware.security_headers import SecurityHeaders

        cors = CorsConfig(allow_origins=["https://a.example"])
        return [SecurityHeaders(SecurityHeadersConfig(), None, cors), CorsRequest(cors, None), _Refusals()], origin
    return chain


@pytest.mark.parametrize("block", [
    b"Server: nginx\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n",
    b"Content-Length: 0\r\n",
    b"Date: x\r\nconnection:  Keep-Alive \r\nContent-Length: 12\r\n",
    b"Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n",       # not usual: response_head
    b"Content-Length: 3\r\nConnection: x-secret\r\nX-Secret: 1\r\n",  # a Connection list
    b"Content-Length: 3\r\nAccess-Control-Allow-Origin: *\r\nX-Powered-By: php\r\n",
])
@pytest.mark.parametrize("status", [200, 404, 299, 101, 401])
@pytest.mark.parametrize("server", [None, b"server: fastgw\r\n"])
@pytest.mark.parametrize("keep,version,lines", [(True, "1.1", b"x-request-id: r-1\r\n"), (True, "1.1", b""),
                                                (False, "1.1", b""), (True, "1.0", b"a: 1\r\n")])
@pytest.mark.parametrize("mws", [_no_filter, _security_cors(None), _security_cors(b"https://a.example"),
                                 _security_cors(b"https://other.example")],
                         ids=["no-filter", "sec-cors-no-origin", "sec-cors-allowed", "sec-cors-denied"])
def test_upstream_head_usual_path_is_response_head(block, status, server, keep, version, lines, mws):
    """``Proxy.upstream_head`` writes out ``response_head``'s usual case (a block seen
    before, Content-Length, no filter but raw-block ones, kept alive): the same bytes,
    framing and exchange fields as the general builder, for usual and unusual heads
    alike, on a route without response filters and on one with security headers and
    CORS (and a filter limited to some statuses: it acts on the same responses)."""
    from fastgw.pipeline import heads
    from fastgw.pipeline.exchange import Attempt
    from fastgw.pipeline.proxy import Proxy

    def exchange(mw, origin, chain):
        hs = [(b"Host", b"gw")] + ([(b"Origin", origin)] if origin is not None else [])
        x = Exchange(Request.build("GET", b"/", hs, version=version), SimpleNamespace(server_header=server))
        x.keep_alive = keep
        x.route = SimpleNamespace(chain=chain, retry=None)
        for _i, fn in chain.request_sync:
            assert fn(x) is None
        x.resp_lines = lines
        inst = SimpleNamespace(fails=0, row=None)
        x.attempt = Attempt(inst, None, b"", None, 0.0, 0.0, None, None, 0)
        return x

    def acted(mw):
        return [m.acted for m in mw if isinstance(m, _Refusals)]

    down = SimpleNamespace(draining=False, cur_complete=True)
    proxy = Proxy(SimpleNamespace(draining=False))
    ref_mw, origin = mws()
    ref = exchange(ref_mw, origin, Chain(ref_mw))
    want = response_head(ref, down, status, b"Reason", block, keep, server)
    heads._CUTS.pop(block, None)
    mw, origin = mws()
    chain = Chain(mw)
    # the first sight of a block (no cut yet), then the remembered cut (a miss of the
    # request state's edit memo, when the route has one), then a hit
    for _ in range(3):
        x = exchange(mw, origin, chain)
        got = proxy.upstream_head(SimpleNamespace(ctx=x, down=down), status, b"Reason", block, keep)
        assert got == want
        assert (x.status, x.keep_alive, x.upstream_status) == (ref.status, ref.keep_alive, status)
    assert acted(mw) == [a * 3 for a in acted(ref_mw)]


def test_usual_response_of_a_route_with_raw_block_filters():
    """The chain's usual response: raw-block filters run on it, a filter limited to some
    statuses is left out (and those statuses are not usual), a filter that needs a
    ResponseHead leaves no usual response."""
    class _Head(Middleware):
        name = "head"

        def response_filter(self, ctx, head):
            return None

    mws, _o = _security_cors(None)()
    ch = Chain(mws)
    assert ch.usual_block == (mws[0].response_block_filter,)
    assert 200 in ch.usual_lines and 401 not in ch.usual_lines and 101 not in ch.usual_lines
    assert Chain([]).usual_block == () and 401 in Chain([]).usual_lines
    assert Chain([mws[0], _Head(None, None)]).usual_lines == {}
    # the security headers' edit is remembered per request state that CORS chooses: only
    # when CORS's request filter is in the chain
    assert ch.usual_memo and not Chain([mws[0], mws[2]]).usual_memo and not Chain([]).usual_memo


def test_usual_response_edit_is_remembered_per_request_state():
    """On a route with security headers and CORS, the usual upstream response calls the
    edit once per (block, CORS decision, HSTS): later responses take it from the memo CORS
    chose, and each state gets its own headers (the same as ``response_head``'s)."""
    from fastgw.pipeline import heads
    from fastgw.pipeline.exchange import Attempt
    from fastgw.pipeline.proxy import Proxy

    mws, _o = _security_cors(None)()
    chain = Chain(mws)
    calls = []

    def counting(fn):
        def run(ctx, status, block):
            calls.append(status)
            return fn(ctx, status, block)
        return run

    chain.usual_block = tuple(counting(f) for f in chain.usual_block)
    block = b"Server: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    heads._CUTS.pop(block, None)
    down = SimpleNamespace(draining=False, cur_complete=True)
    proxy = Proxy(SimpleNamespace(draining=False))

    def respond(origin, tls):
        hs = [(b"Host", b"gw")] + ([(b"Origin", origin)] if origin is not None else [])
        x = Exchange(Request.build("GET", b"/", hs, tls=tls), SimpleNamespace(server_header=None))
        x.route = SimpleNamespace(chain=chain, retry=None)
        for _i, fn in chain.request_sync:
            assert fn(x) is None
        x.attempt = Attempt(SimpleNamespace(fails=0, row=None), None, b"", None, 0.0, 0.0, None, None, 0)
        got = proxy.upstream_head(SimpleNamespace(ctx=x, down=down), 200, b"OK", block, True)
        assert got == response_head(x, down, 200, b"OK", block, True, None)
        return got[0].lower()

    respond(None, False)     # a block not seen before: response_head
    assert calls == []
    states = [(b"https://a.example", False), (b"https://a.example", True), (None, False), (None, True),
              (b"https://other.example", False)]
    for n, (origin, tls) in enumerate(states * 3):
        head = respond(origin, tls)
        assert len(calls) == min(n + 1, len(states))    # one miss per state, then its memo
        assert b"server: nginx" not in head and b"vary: origin\r\n" in head
        assert (b"strict-transport-security" in head) is tls
        assert (b"access-control-allow-origin: https://a.example" in head) is (origin == b"https://a.example")
