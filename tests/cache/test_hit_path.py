"""The cache's request hook in the real engine, in process (fake transports, no sockets):
a miss that joins a coalesced fetch is the one case where the synchronous hook returns
a coroutine, which the engine drives like an async hook (``Engine._drive``); and a
plain hit answers from the hit path with the head a full lookup would give."""

from __future__ import annotations

import asyncio
from email.utils import formatdate

import uvloop

from bench.micro.inproc import CFG, REQ, RESP, Transport, gateway
from fastgw.http.protocol import DownstreamProtocol

CACHED = CFG.replace('        methods: ["GET", "HEAD", "POST"]\n',
                     '        methods: ["GET", "HEAD", "POST"]\n        cache: true\n')


def _storable() -> bytes:
    """The bench's upstream answer, made storable for 300 s and dated now (its own Date
    is in the past, so it would arrive stale)."""
    resp = RESP.replace(b"Connection: keep-alive\r\n", b"Cache-Control: max-age=300\r\nConnection: keep-alive\r\n")
    return resp.replace(b"Thu, 26 Nov 2026 14:26:03 GMT", formatdate(usegmt=True).encode())


class Recorder(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = b""

    def write(self, data) -> None:
        super().write(data)
        self.data += data


def _client(engine, info, loop):
    t = Recorder()
    p = DownstreamProtocol(engine, info, loop)
    p.connection_made(t)
    return p, t


def _head(data: bytes) -> dict:
    lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {n.lower(): v.strip() for n, _, v in (ln.partition(b":") for ln in lines)}


def test_coalesced_waiter_is_driven_by_the_engine_then_answered_from_the_entry():
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _app, engine, info, up, ut = gateway(CACHED, loop)

        async def run():  # (bytes arrive in loop callbacks, as from a socket)
            first, t1 = _client(engine, info, loop)
            second, t2 = _client(engine, info, loop)
            first.data_received(REQ)     # the miss: goes upstream (the one pooled connection)
            assert ut.n == 1
            second.data_received(REQ)    # the same key: waits for the first's response
            await asyncio.sleep(0)
            assert t2.data == b"" and ut.n == 1
            up.data_received(_storable())   # the first's answer, stored; the waiter wakes up
            await asyncio.sleep(0.01)
            h1, h2 = _head(t1.data), _head(t2.data)
            assert t1.data.startswith(b"HTTP/1.1 200") and b"stored" in h1[b"cache-status"]
            assert t2.data.startswith(b"HTTP/1.1 200") and t2.data.endswith(b"x" * 76)
            cs = h2[b"cache-status"]
            assert cs.startswith(b"fastgw; hit; ttl=") and cs.endswith(b"detail=coalesced")
            assert ut.n == 1             # one upstream request for both
            # the next one is a plain hit: the stored head, Age and Cache-Status (no detail)
            third, t3 = _client(engine, info, loop)
            third.data_received(REQ)
            h3 = _head(t3.data)
            assert h3[b"cache-control"] == b"max-age=300" and h3[b"age"] == b"0"
            assert h3[b"cache-status"] in (b"fastgw; hit; ttl=300", b"fastgw; hit; ttl=299")
            assert h3[b"x-request-id"] != h2[b"x-request-id"] and t3.data.endswith(b"x" * 76)
            assert ut.n == 1
        loop.run_until_complete(run())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
