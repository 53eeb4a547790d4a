"""The proxy core's per-request work, in process (fake transports, no sockets):

- one whole keep-alive exchange: request bytes in -> upstream head out -> response bytes
  in -> client bytes out, with request id, access log and metrics on (the bare route);
- the upstream request head and the client response head builders alone;
- an error answer (problem+json) built and serialised.

Run: ``python -m pytest bench/micro/test_micro_proxy.py -p no:xdist``.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from fastgw.errors import GatewayError
from fastgw.http.messages import error_reply
from fastgw.http.protocol import DownstreamProtocol
from fastgw.http.wire import reply_bytes
from fastgw.http.request import Request
from fastgw.pipeline.exchange import Exchange
from fastgw.pipeline.heads import request_head, response_head
from bench.micro.inproc import BLOCK, CFG, REQ, RESP, Transport, gateway  # noqa: F401

@pytest.fixture(scope="module")
def world():
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    app, engine, info, up, ut = gateway(CFG, loop)
    down = DownstreamProtocol(engine, info, loop)
    dt = Transport()
    down.connection_made(dt)
    yield app, down, up, dt, ut
    loop.close()


def test_exchange_bare_route(benchmark, world):
    app, down, up, dt, ut = world

    def one():
        down.data_received(REQ)
        up.data_received(RESP)

    before = (dt.n, ut.n)
    benchmark(one)
    # every exchange wrote exactly one message each way
    assert dt.n - before[0] == ut.n - before[1] > 0


def test_request_head(benchmark, world):
    app = world[0]
    route = app.routes[0]
    ctx = Exchange(Request.build("GET", b"/x", [(b"Host", b"127.0.0.1:18090"), (b"User-Agent", b"wrk"),
                                                (b"Accept", b"*/*")]), app)
    out = benchmark(request_head, ctx, route, route.instances[0])
    assert out.startswith(b"GET /x HTTP/1.1\r\n")


def test_response_head(benchmark, world):
    app, _down, up, _dt, _ut = world
    ctx = Exchange(Request(), app)
    ctx.route = app.routes[0]
    out = benchmark(response_head, ctx, None, 200, b"OK", BLOCK, False, None)[0]
    assert b"connection: keep-alive" not in out.lower() and b"Content-Length: 76" in out


def test_error_reply(benchmark):
    err = GatewayError("no_route", "no route for this path")

    def one():
        r = error_reply(err, "abc-1")
        return reply_bytes(r.status, r.headers, r.body, keep_alive=True)

    out = benchmark(one)
    assert out.startswith(b"HTTP/1.1 404")
