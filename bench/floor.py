"""The Python floor: a feature-less uvloop + httptools reverse proxy (the bench's `pyfloor`).

What it is for: issue 23 judges fastgw against nginx, but part of the distance is the
language, not fastgw.  This proxy does only what no Python proxy can skip (parse both
directions with httptools, one upstream keep-alive connection per client connection,
bytes passed through untouched, one write per message), so its figures in the same run
are the ceiling a Python proxy reaches on that machine, and fastgw's distance to it is
what fastgw's own code costs.  No routing, no request id, no log, no metrics, no header
handling; requests with a body are not supported (the bench's small scenarios send
none).  Not a product: never run it anywhere but the bench.

    python -m bench.floor --port 0 --upstream-port U    # prints "pyfloor: listening on 127.0.0.1:P"
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import httptools
import uvloop


class _Upstream(asyncio.Protocol):
    """The upstream half: one keep-alive connection owned by one client connection."""

    def __init__(self, client: "_Client") -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport = None
        self.buf: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        # one write per response, whatever the number of reads it took
        buf = self.buf
        self.client.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))
        self.buf = []

    def connection_lost(self, exc) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, loop, upstream: tuple[str, int]) -> None:
        self.loop = loop
        self.upstream_addr = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.up: _Upstream | None = None
        self.pending: list[bytes] = []
        self.buf: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, up = await self.loop.create_connection(lambda: _Upstream(self), *self.upstream_addr)
        except OSError:
            self.transport.close()
            return
        self.up = up
        for msg in self.pending:
            up.transport.write(msg)
        self.pending = []

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        buf = self.buf
        msg = buf[0] if len(buf) == 1 else b"".join(buf)
        self.buf = []
        if self.up is None:
            self.pending.append(msg)
        else:
            self.up.transport.write(msg)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream-port", type=int, required=True)
    a = ap.parse_args(argv)
    uvloop.install()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(
        lambda: _Client(loop, ("127.0.0.1", a.upstream_port)), "127.0.0.1", a.port, backlog=1024, reuse_address=True))
    port = server.sockets[0].getsockname()[1]
    print(f"pyfloor: listening on 127.0.0.1:{port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
