"""HTTP/1.1 for the control process's two listeners (probe/metrics and admin API) (L6).

``HttpServerProtocol`` parses with httptools and hands each complete request to
``app.handle(AdminRequest)``, which returns ``(status, headers, body)`` or an awaitable of
it; requests on one connection are answered in order (reading pauses while an answer is
awaited).  Limits: heads up to ``MAX_HEAD`` (431), bodies up to
``app.max_body`` (413, then the connection closes), idle keep-alive ``IDLE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging

import httptools

from fastgw.admin.router import AdminRequest, problem_reply
from fastgw.http.wire import reply_bytes

log = logging.getLogger("fastgw")

MAX_HEAD = 8 * 1024
IDLE_TIMEOUT = 30.0


class HttpServerProtocol(asyncio.Protocol):
    """One connection to a control-process listener."""

    # per-connection: app, loop, transport, parser, timer, closed, peer
    # per-request: url, headers, body, body_size, head_size, too_big
    __slots__ = ("app", "loop", "transport", "parser", "timer", "closed", "peer",
                 "url", "headers", "body", "body_size", "head_size", "too_big")

    def __init__(self, app, loop) -> None:
        self.app = app
        self.loop = loop
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.timer = None
        self.closed = False
        self.peer = ""
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0
        self.too_big = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self._arm()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(IDLE_TIMEOUT, self._close)

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    # ------------------------------------------------------------------ parser callbacks
    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(*problem_reply(400, "malformed HTTP request", ""), False, False)

    def on_message_begin(self) -> None:
        self._reset()
        self._arm()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value))
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def _grow(self, n: int) -> None:
        self.head_size += n
        if self.head_size > MAX_HEAD and not self.closed:
            self._write(*problem_reply(431, f"request head over {MAX_HEAD} bytes", ""), False, False)

    def on_body(self, body: bytes) -> None:
        if self.too_big:
            return
        self.body.append(body)
        self.body_size += len(body)
        if self.body_size > self.app.max_body:
            self.too_big = True
            self.body = []

    def on_message_complete(self) -> None:
        if self.closed:
            return
        p = self.parser
        method = p.get_method().decode("ascii", "replace")
        keep = p.should_keep_alive() and not self.too_big
        path, _, query = self.url.decode("latin-1").partition("?")
        req = AdminRequest(method, path, query, self.headers, b"".join(self.body), self.peer)
        if self.too_big:
            self._answer(req, self.app.too_large(req), keep)
            return
        try:
            res = self.app.handle(req)
        except Exception as e:                     # the app's own errors are already answers
            log.exception("admin %s %s failed: %s", method, path, e)
            res = problem_reply(500, "internal error (see the gateway's log)", req.request_id)
        if isinstance(res, tuple):
            self._answer(req, res, keep)
        else:
            self.transport.pause_reading()         # answers stay in order
            self.loop.create_task(self._await(req, res, keep))

    async def _await(self, req, aw, keep) -> None:
        try:
            res = await aw
        except Exception as e:
            log.exception("admin %s %s failed: %s", req.method, req.path, e)
            res = problem_reply(500, "internal error (see the gateway's log)", req.request_id)
        self._answer(req, res, keep)
        if not self.closed:
            self.transport.resume_reading()

    def _answer(self, req, res, keep) -> None:
        status, headers, body = res
        self._write(status, headers, body, keep, req.method == "HEAD")

    def _write(self, status, headers, body, keep, head_only) -> None:
        if self.closed:
            return
        self.transport.write(reply_bytes(status, headers, body, keep_alive=keep, head_only=head_only))
        if not keep:
            self._close()
        else:
            self._arm()
