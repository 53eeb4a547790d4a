"""How a body edited by transform is framed for the client: the head waits for the edited
body and carries its Content-Length (``http.wire.WHOLE``), whether the upstream's body
comes in the head's read or later, chunked or with a length; a body that outgrows
``max_size`` without a length streams, chunked, with the head as built.  Bytes fed into
the in-process gateway (real engine, protocols and middlewares; fake transports)."""

from __future__ import annotations

import asyncio
import json

import uvloop

from bench.micro.inproc import CFG, gateway
from fastgw.http.protocol import DownstreamProtocol

ROUTE = """      - path: "/t/*"
        transform: {response: {body: {unwrap: "/data", max_size: 200}}}
"""
REQ = b"GET /t/x HTTP/1.1\r\nHost: gw\r\n\r\n"
DOC = json.dumps({"data": {"id": 7}, "pad": "p" * 50}).encode()


class Rec:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, key, default=None):
        return ("127.0.0.1", 5555) if key == "peername" else default

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading
    close = abort = pause_reading


def exchange(pieces):
    """The client's bytes after the upstream's response arrives in ``pieces`` (reads)."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        text = CFG.replace("    routes:\n", "    routes:\n" + ROUTE)
        _app, engine, info, up, _ut = gateway(text, loop)
        down = DownstreamProtocol(engine, info, loop)
        rec = Rec()
        down.connection_made(rec)
        down.data_received(REQ)
        for p in pieces:
            up.data_received(p)
        return rec.data
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def split(resp: bytes):
    head, _, body = resp.partition(b"\r\n\r\n")
    return head.lower().split(b"\r\n"), body


def head_of(body: bytes, framing: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framing + b"\r\n"


def test_whole_edited_body_has_its_length():
    cl = head_of(DOC, b"Content-Length: %d\r\n" % len(DOC))
    chunked = head_of(DOC, b"Transfer-Encoding: chunked\r\n")
    for pieces in ([cl + DOC],                                  # head and body in one read
                   [cl, DOC[:10], DOC[10:]],                    # the body in later reads
                   [chunked, b"%x\r\n%s\r\n" % (len(DOC), DOC), b"0\r\n\r\n"]):
        lines, body = split(exchange(pieces))
        assert json.loads(body) == {"id": 7}, pieces
        assert b"content-length: %d" % len(body) in lines and not any(b"transfer-encoding" in ln for ln in lines)


def test_body_past_max_size_without_length_streams_chunked():
    big = json.dumps({"data": {"id": 7}, "pad": "p" * 400}).encode()
    chunked = head_of(big, b"Transfer-Encoding: chunked\r\n")
    out = exchange([chunked, b"%x\r\n%s\r\n" % (150, big[:150]), b"%x\r\n%s\r\n0\r\n\r\n" % (len(big) - 150, big[150:])])
    lines, body = split(out)
    assert b"transfer-encoding: chunked" in lines and not any(b"content-length" in ln for ln in lines)
    got, rest = b"", body
    while True:  # de-chunk
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        got, rest = got + rest[:n], rest[n + 2:]
    assert got == big  # untouched
