#!/usr/bin/env python3
"""Memory per idle client connection of a worker, as PSS.

Method (docs/bench.md, "Memory per idle connection"): one worker in front of a fast
upstream; after a warm-up of 50 requests, read the worker's PSS
(``/proc/PID/smaps_rollup``: its own pages plus its share of pages shared with the
supervisor and other workers); open N keep-alive connections, send one request on each and
read the answer, so each is a used connection gone idle (parser, buffers and timers as
after a real request); wait 1.5 s (a tick: lazily freed objects go), read PSS again.
Repeat up to 2N connections.  Reported: (PSS(N) - PSS(0)) / N, and the slope
(PSS(2N) - PSS(N)) / N, which leaves out one-off growth.  Kernel socket buffers are not
in PSS (they are kernel memory); nginx's figure (~5.2 KiB RSS) is counted the same way.

Run: ``.venv/bin/python scripts/conn_memory.py [--connections 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness import Gateway  # noqa: E402
from tests.storm_helpers import FastUpstream, pss_kib, raise_own_nofile  # noqa: E402

CONFIG = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: [], max_connections: 10000}
services:
  fast:
    url: "http://{UP}"
    routes: [{path: "/*", methods: ["GET"]}]
monitoring:
  metrics_port: 0
  logging: {level: warning, access_log: {enabled: false}}
"""


def worker_pid(gw) -> int:
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.wait_admin(), timeout=5)
    c.request("GET", "/admin/workers")
    doc = json.loads(c.getresponse().read())
    c.close()
    return doc["workers"][0]["pid"]


async def open_idle(port: int, n: int, keep: list) -> None:
    async def one(i):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /idle HTTP/1.1\r\nHost: m\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        await r.readexactly(2)
        keep.append(w)
    for k in range(0, n, 500):
        await asyncio.gather(*(one(i) for i in range(k, min(n, k + 500))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=2000)
    a = ap.parse_args()
    n = a.connections
    raise_own_nofile(2 * n)
    with FastUpstream() as up, Gateway(CONFIG.replace("{UP}", up.addr), workers=1) as gw:
        for _ in range(50):
            gw.request("GET", "/warm")
        pid = worker_pid(gw)
        time.sleep(1.5)
        p0 = pss_kib(pid)
        keep: list = []

        async def run():
            await open_idle(gw.port, n, keep)
            await asyncio.sleep(1.5)
            p1 = pss_kib(pid)
            await open_idle(gw.port, n, keep)
            await asyncio.sleep(1.5)
            p2 = pss_kib(pid)
            for w in keep:
                w.close()
            return p1, p2

        p1, p2 = asyncio.run(run())
    print(f"worker PSS: {p0} KiB idle, {p1} KiB with {n} idle connections, {p2} KiB with {2 * n}")
    print(f"per idle connection: {(p1 - p0) / n:.2f} KiB (from 0 to {n}), {(p2 - p1) / n:.2f} KiB "
          f"(slope from {n} to {2 * n})")


if __name__ == "__main__":
    main()
