"""A chunked request that arrives whole ends exactly once upstream (regression).

The core once sent the last chunk (``0\\r\\n\\r\\n``) twice when the whole chunked request
was in one read: once with the head and body, and again when the body's end was
reported.  The stray bytes are a second message on a keep-alive upstream connection: the
upstream either closes it (a wasted connection) or, worse, answers them, and that answer
would be handed to the next request on the connection (response desync).
"""

from __future__ import annotations

import socket
import time

from tests.support.config import core_config
from tests.support.upstream import RawUpstream
from tests.support.wire import parse_responses
from tests.support.gateway import Gateway

H = b"Host: gw.test\r\n"


def _read_responses(s: socket.socket, n: int, timeout: float = 5.0) -> list:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = parse_responses(data)
        if len(got) >= n:
            return got
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return parse_responses(data)


def test_whole_chunked_request_is_terminated_once():
    with RawUpstream() as up, Gateway(core_config(up)) as gw:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        try:
            s.sendall(b"GET /api/warm HTTP/1.1\r\n" + H + b"\r\n")
            assert _read_responses(s, 1)[0][0] == 200
            snap = up.snapshot()
            for i in range(3):
                s.sendall(b"POST /api/echo%d HTTP/1.1\r\n" % i + H +
                          b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                (status, _h, _b), = _read_responses(s, 1)
                assert status == 200
                time.sleep(0.2)  # room for the upstream to see (and refuse) stray bytes
            s.sendall(b"GET /api/after HTTP/1.1\r\n" + H + b"\r\n")
            assert _read_responses(s, 1)[0][0] == 200
        finally:
            s.close()
        reqs = up.since(snap)
        assert [r.path for r in reqs] == ["/api/echo0", "/api/echo1", "/api/echo2", "/api/after"]
        # one keep-alive upstream connection served all of them: nothing stray made the
        # upstream drop it
        assert up.snapshot()[0] == snap[0], "the upstream connection was dropped after a chunked request"
        assert len({r.conn_id for r in reqs}) == 1
