"""The proxy core's per-request work, in process (fake transports, no sockets):

- one whole keep-alive exchange: request bytes in -> upstream head out -> response bytes
  in -> client bytes out, with request id, access log and metrics on (the bare route);
- the upstream request head and the client response head builders alone;
- an error answer (problem+json) built and serialised.

Run: ``python -m pytest bench/micro/test_micro_proxy.py -p no:xdist``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import uvloop

from fastgw.config import load_config_text
from fastgw.errors import GatewayError
from fastgw.http.messages import error_reply
from fastgw.http.protocol import ConnInfo, DownstreamProtocol
from fastgw.http.wire import reply_bytes
from fastgw.obs.logbuf import LogBuffer
from fastgw.obs.metrics import Metrics
from fastgw.http.request import Request
from fastgw.pipeline.exchange import Exchange
from fastgw.pipeline.deps import Deps
from fastgw.pipeline.engine import Engine
from fastgw.pipeline.heads import request_head, response_head
from fastgw.runtime.app import App
from fastgw.upstream.client import UpstreamProtocol

CFG = """
gateway: {host: 127.0.0.1, port: 0}
services:
  bench:
    url: "http://127.0.0.1:9"
    routes:
      - path: "/*"
        methods: ["GET", "HEAD", "POST"]
monitoring:
  metrics_port: 0
  logging: {level: warning, access_log: {enabled: "${FASTGW_MICRO_ACCESS_LOG:-true}", output: /dev/null}}
"""
REQ = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:18090\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESP = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 14:26:03 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 76\r\nConnection: keep-alive\r\n\r\n" + b"x" * 76)
BLOCK = RESP[RESP.index(b"\r\n") + 2:RESP.index(b"\r\n\r\n") + 2]


class _Transport:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data) -> None:
        self.n += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, key, default=None):
        return ("127.0.0.1", 5555) if key == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    abort = close


def gateway(cfg_text: str, loop):
    """An in-process gateway on ``cfg_text`` with one warm pooled upstream connection:
    (app, engine, conn info, upstream protocol, its transport).  Shared with
    bench.micro.instructions."""
    cfg, _ = load_config_text(cfg_text)
    metrics = Metrics()
    log = logging.getLogger("bench")
    deps = Deps(cfg, loop=loop, metrics=metrics, log=log)
    if cfg.monitoring.logging.access_log.enabled:  # as the worker does
        deps.state["access_log_buffer"] = LogBuffer("/dev/null")
    app = App(cfg, deps, loop=loop, metrics=metrics, log=log)
    engine = Engine(app)
    pool = app.routes[0].instances[0].pool
    up = UpstreamProtocol(pool, loop)
    ut = _Transport()
    up.connection_made(ut)
    pool.open.add(up)
    pool.idle.append(up)
    return app, engine, ConnInfo(cfg.gateway.limits, cfg.gateway.timeouts), up, ut


@pytest.fixture(scope="module")
def world():
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    app, engine, info, up, ut = gateway(CFG, loop)
    down = DownstreamProtocol(engine, info, loop)
    dt = _Transport()
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
