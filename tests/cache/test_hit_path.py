"""The cache's request hook in the real engine, in process (fake transports, no sockets):
a miss that joins a coalesced fetch is the one case where the synchronous hook returns
a coroutine, which the engine drives like an async hook (``Engine._drive``); and a
plain hit answers from the hit path with the head a full lookup would give."""

from __future__ import annotations

import asyncio
from email.utils import formatdate

import pytest
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
            # (the upstream's Date has whole seconds: up to a second of apparent age at
            # the store, so a loaded machine can see Age 1 with ttl 299)
            assert h3[b"cache-control"] == b"max-age=300" and h3[b"age"] in (b"0", b"1")
            assert h3[b"cache-status"].startswith(b"fastgw; hit; ttl=")
            age, ttl = int(h3[b"age"]), int(h3[b"cache-status"].rsplit(b"=", 1)[1])
            assert 299 <= age + ttl <= 300 and ttl in (299, 300)
            assert h3[b"x-request-id"] != h2[b"x-request-id"] and t3.data.endswith(b"x" * 76)
            assert ut.n == 1
        loop.run_until_complete(run())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


@pytest.mark.parametrize("case", ["stale-at-birth", "min-fresh"])
def test_coalesced_waiter_gets_the_entry_only_if_fresh_enough_for_it(case):
    """A waiter is answered from the joined fetch's entry with the lookup's freshness
    test: an entry stored already stale (the upstream's Date is days old) or one that
    does not meet the waiter's own ``min-fresh`` sends the waiter upstream, never a hit
    with a negative ttl."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _app, engine, info, up, ut = gateway(CACHED, loop)
        if case == "stale-at-birth":   # (RESP's own Date is in the past)
            answer = RESP.replace(b"Connection: keep-alive\r\n", b"Cache-Control: max-age=300\r\nConnection: keep-alive\r\n")
            waiter_req = REQ
        else:
            answer = _storable()
            waiter_req = REQ.replace(b"Accept: */*\r\n", b"Accept: */*\r\nCache-Control: min-fresh=600\r\n")

        async def run():
            first, t1 = _client(engine, info, loop)
            second, t2 = _client(engine, info, loop)
            first.data_received(REQ)
            second.data_received(waiter_req)    # joins the first's fetch
            await asyncio.sleep(0)
            assert t2.data == b"" and ut.n == 1
            up.data_received(answer)            # the first's answer wakes the waiter
            await asyncio.sleep(0.01)
            assert t1.data.startswith(b"HTTP/1.1 200")
            assert ut.n == 2 and t2.data == b""  # the waiter went upstream itself
            up.data_received(answer)
            await asyncio.sleep(0.01)
            h2 = _head(t2.data)
            assert t2.data.startswith(b"HTTP/1.1 200") and t2.data.endswith(b"x" * 76)
            assert b"hit" not in h2[b"cache-status"] and b"fwd=miss" in h2[b"cache-status"]
        loop.run_until_complete(run())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def _stored_world(cfg: str = CACHED):
    """A gateway on ``cfg`` whose cache holds the bench's answer for ``REQ``: (engine,
    conn info, upstream transport, loop)."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    _app, engine, info, up, ut = gateway(cfg, loop)
    p, t = _client(engine, info, loop)
    p.data_received(REQ)
    up.data_received(_storable())
    assert b"stored" in _head(t.data)[b"cache-status"] and ut.n == 1
    return engine, info, ut, loop


def _cache_mw(engine):
    (mw,) = [m for m in engine.app.routes[0].chain.mws if m.name == "cache"]
    return mw


def _close(loop) -> None:
    loop.close()
    asyncio.set_event_loop(None)


def _hit(engine, info, loop, raw: bytes) -> tuple:
    """``raw`` sent on a new connection: (bytes written, the connection closed)."""
    p, t = _client(engine, info, loop)
    p.data_received(raw)
    return t.data, p.closed


def test_hit_as_prebuilt_bytes_for_each_connection_fate():
    engine, info, ut, loop = _stored_world()
    try:
        get, closed = _hit(engine, info, loop, REQ)
        h = _head(get)
        assert get.startswith(b"HTTP/1.1 200 OK\r\n") and get.endswith(b"\r\n\r\n" + b"x" * 76) and not closed
        assert h[b"content-length"] == b"76" and b"connection" not in h and h[b"date"].endswith(b"GMT")
        assert h[b"cache-status"].startswith(b"fastgw; hit; ttl=") and h[b"age"] == b"0"
        assert h[b"cache-control"] == b"max-age=300" and h[b"x-request-id"]
        # HEAD: the GET's length, no body
        head, closed = _hit(engine, info, loop, REQ.replace(b"GET ", b"HEAD ", 1))
        assert head.endswith(b"\r\n\r\n") and _head(head)[b"content-length"] == b"76" and not closed
        # the client asks to close: said so, and closed after the answer
        bye, closed = _hit(engine, info, loop, REQ.replace(b"Accept:", b"Connection: close\r\nAccept:"))
        assert _head(bye)[b"connection"] == b"close" and bye.endswith(b"x" * 76) and closed
        # HTTP/1.0: kept alive only when asked, and then said so
        req10 = REQ.replace(b"HTTP/1.1", b"HTTP/1.0")
        ka, closed = _hit(engine, info, loop, req10.replace(b"Accept:", b"Connection: keep-alive\r\nAccept:"))
        assert _head(ka)[b"connection"] == b"keep-alive" and not closed
        one, closed = _hit(engine, info, loop, req10)
        assert _head(one)[b"connection"] == b"close" and closed
        # two pipelined hits in one read: two whole answers, in order, ids distinct
        two, closed = _hit(engine, info, loop, REQ + REQ.replace(b"GET ", b"HEAD ", 1))
        first, rest = two.split(b"x" * 76, 1)
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\n") and not closed
        assert _head(first)[b"x-request-id"] != _head(rest)[b"x-request-id"]
        assert ut.n == 1   # none of them went upstream
        assert _cache_mw(engine).direct is True   # (the prebuilt way, not a Reply)
    finally:
        _close(loop)


def test_hit_on_a_route_with_response_filters_gets_their_headers():
    # security headers: a response filter before the cache's, so the hit is a Reply that
    # passes through it (the prebuilt bytes are for routes where no filter applies)
    engine, info, ut, loop = _stored_world(CACHED + "security_headers: {enabled: true}\n")
    try:
        for _ in range(2):   # the first hit finds out the route's way, the second takes it
            data, _closed = _hit(engine, info, loop, REQ)
            h = _head(data)
            assert h[b"x-content-type-options"] == b"nosniff" and h[b"cache-status"].startswith(b"fastgw; hit;")
            assert h[b"content-length"] == b"76" and data.endswith(b"x" * 76)
        assert ut.n == 1 and _cache_mw(engine).direct is False
    finally:
        _close(loop)
