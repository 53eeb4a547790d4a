"""The in-process gateway the micro-benchmarks and the instruction counter drive: the
real config loader, App, Engine and protocols over fake transports (no sockets), with
one warm pooled upstream connection, and metrics in a shared-memory area as a worker's
(a store cell written on the request path costs what it costs in production: a
memoryview item, not a list item)."""

from __future__ import annotations

import logging

from fastgw.config import load_config_text
from fastgw.http.protocol import ConnInfo
from fastgw.obs.logbuf import LogBuffer
from fastgw.obs.metrics import Metrics
from fastgw.pipeline.deps import Deps
from fastgw.pipeline.engine import Engine
from fastgw.runtime.app import App
from fastgw.shm import Region
from fastgw.supervisor.metrics_store import ShmStore
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


class Transport:
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


_REGIONS: list = []


def gateway(cfg_text: str, loop):
    """An in-process gateway on ``cfg_text`` with one warm pooled upstream connection:
    (app, engine, conn info, upstream protocol, its transport)."""
    cfg, _ = load_config_text(cfg_text)
    region = Region.create(1, metrics_series=4096, table_slots=64, health_slots=1, name="bench-metrics")
    _REGIONS.append(region)             # kept for the life of the process
    metrics = Metrics(ShmStore(region.metrics.writer(0)))
    log = logging.getLogger("bench")
    deps = Deps(cfg, loop=loop, metrics=metrics, log=log)
    if cfg.monitoring.logging.access_log.enabled:  # as the worker does
        deps.state["access_log_buffer"] = LogBuffer("/dev/null")
    app = App(cfg, deps, loop=loop, metrics=metrics, log=log)
    engine = Engine(app)
    pool = app.routes[0].instances[0].pool
    up = UpstreamProtocol(pool, loop)
    ut = Transport()
    up.connection_made(ut)
    pool.open.add(up)
    pool.idle.append(up)
    return app, engine, ConnInfo(cfg.gateway.limits, cfg.gateway.timeouts), up, ut
