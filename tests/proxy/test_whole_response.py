"""The upstream response read without the parser (``fastgw.upstream.whole``), against llhttp.

Rule 1 of that module: what it accepts, llhttp in strict mode accepts with the same
meaning.  Each accepted row is also parsed by ``httptools.HttpResponseParser`` (the
client protocol's parser) and both must agree on the status, the header lines, the
keep-alive decision, the body and the end of the message.  Each declined row must fall
to the parser (a verdict of -1, or no verdict), whatever llhttp makes of it.  Then the
client protocol itself, in process with a fake transport: the same response relayed by
both paths gives the client the same bytes.
"""

from __future__ import annotations

import httptools
import pytest

from fastgw.upstream import whole
from fastgw.upstream.whole import read_head

BODY = b"x" * 100
NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 14:26:03 GMT\r\n"
         b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n")


def resp(lines: bytes = b"Content-Length: 100\r\n", status: bytes = b"200 OK", body: bytes = BODY,
         version: bytes = b"HTTP/1.1") -> bytes:
    return version + b" " + status + b"\r\n" + lines + b"\r\n" + body


ACCEPTED = [
    ("nginx", NGINX + BODY),
    ("no-connection", resp()),
    ("close", resp(b"Content-Length: 100\r\nConnection: close\r\n")),
    ("close-any-case", resp(b"content-length: 100\r\nCONNECTION:Close\r\n")),
    ("keep-alive-any-case", resp(b"Connection:   Keep-Alive  \r\nContent-Length: 100\r\n")),
    ("cl-spaces", resp(b"Content-Length:    100   \r\n")),
    ("cl-tab", resp(b"Content-Length:\t100\r\n")),
    ("cl-leading-zeros", resp(b"Content-Length: 0100\r\n")),
    ("cl-zero", resp(b"Content-Length: 0\r\n", body=b"")),
    ("empty-value", resp(b"X-Empty:\r\nContent-Length: 100\r\n")),
    ("tab-in-value", resp(b"X-T: a\tb\r\nContent-Length: 100\r\n")),
    ("token-chars", resp(b"X-!#$%&'*+-.^_`|~09az: v\r\nContent-Length: 100\r\n")),
    ("404-with-reason", resp(status=b"404 Not Found")),
    ("unknown-status", resp(status=b"299 Custom Reason Here")),
    ("empty-reason", resp(status=b"200 ")),
    ("503", resp(status=b"503 Service Unavailable")),
    ("upgrade-without-connection-upgrade", resp(b"Upgrade: h2c\r\nContent-Length: 100\r\n")),
    ("keep-alive-header", resp(b"Keep-Alive: timeout=5\r\nContent-Length: 100\r\n")),
]

DECLINED = [
    ("http10", resp(version=b"HTTP/1.0")),
    ("http10-keep-alive", resp(b"Content-Length: 100\r\nConnection: keep-alive\r\n", version=b"HTTP/1.0")),
    ("no-length", resp(b"", body=b"")),
    ("chunked", resp(b"Transfer-Encoding: chunked\r\n", body=b"64\r\n" + BODY + b"\r\n0\r\n\r\n")),
    ("cl-and-te", resp(b"Content-Length: 100\r\nTransfer-Encoding: chunked\r\n")),
    ("cl-twice-same", resp(b"Content-Length: 100\r\nContent-Length: 100\r\n")),
    ("cl-twice-diff", resp(b"Content-Length: 100\r\nContent-Length: 5\r\n")),
    ("cl-list", resp(b"Content-Length: 100, 100\r\n")),
    ("cl-plus", resp(b"Content-Length: +100\r\n")),
    ("cl-hex", resp(b"Content-Length: 0x64\r\n")),
    ("cl-empty", resp(b"Content-Length: \r\n", body=b"")),
    ("cl-huge", resp(b"Content-Length: 99999999999999999999\r\n")),
    ("space-before-colon", resp(b"Content-Length : 100\r\n")),
    ("obs-fold", resp(b"X-A: 1\r\n folded\r\nContent-Length: 100\r\n")),
    ("bare-lf-line", b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 100\r\n\r\n" + BODY),
    ("bare-lf-status", b"HTTP/1.1 200 OK\nContent-Length: 100\r\n\r\n" + BODY),
    ("ctl-in-value", resp(b"X-A: a\x01b\r\nContent-Length: 100\r\n")),
    ("del-in-value", resp(b"X-A: a\x7fb\r\nContent-Length: 100\r\n")),
    ("obs-text-in-value", resp(b"X-A: caf\xc3\xa9\r\nContent-Length: 100\r\n")),
    ("tab-in-reason", resp(status=b"200 O\tK")),
    ("no-reason-no-space", resp(status=b"200")),
    ("1xx", resp(status=b"100 Continue")),
    ("101", resp(b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 100\r\n",
                 status=b"101 Switching Protocols")),
    ("204", resp(b"Content-Length: 100\r\n", status=b"204 No Content", body=b"")),
    ("304", resp(b"Content-Length: 100\r\n", status=b"304 Not Modified", body=b"")),
    ("600", resp(status=b"600 Odd")),
    ("two-digit-status", resp(status=b"20 OK")),
    ("connection-upgrade", resp(b"Connection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 100\r\n")),
    ("connection-lists-header", resp(b"Connection: x-a\r\nX-A: 1\r\nContent-Length: 100\r\n")),
    ("connection-twice", resp(b"Connection: keep-alive\r\nConnection: close\r\nContent-Length: 100\r\n")),
    ("proxy-connection", resp(b"Proxy-Connection: close\r\nContent-Length: 100\r\n")),
    ("leading-crlf", b"\r\n" + resp()),
    ("lowercase-version", resp(version=b"http/1.1")),
]


class _Parsed:
    def __init__(self) -> None:
        self.headers: list = []
        self.body = b""
        self.complete = 0
        self.parser = None
        self.status = self.keep = None

    def on_headers_complete(self) -> None:
        # (read here, as the client protocol does: after the message llhttp has moved on)
        self.status = self.parser.get_status_code()
        self.keep = self.parser.should_keep_alive()

    def on_header(self, name, value) -> None:
        self.headers.append((name, value))

    def on_body(self, body) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def _llhttp(data: bytes):
    p = _Parsed()
    parser = p.parser = httptools.HttpResponseParser(p)
    parser.feed_data(data)
    return p


@pytest.mark.parametrize("name,data", ACCEPTED, ids=[r[0] for r in ACCEPTED])
def test_accepted_responses_mean_what_llhttp_reads(name, data):
    w = read_head(data)
    assert w is not None
    head, total, hlen, status, reason, block, keep = w
    assert total == len(data) and hlen == len(head) and data.startswith(head)
    p = _llhttp(data)
    assert p.complete == 1
    assert (status, keep) == (p.status, p.keep)
    assert data[hlen:] == p.body
    # the block is the header lines as received: llhttp's fields, in order
    lines = [ln for ln in block.split(b"\r\n") if ln]
    assert [(n, v.lstrip(b" \t")) for n, _, v in (ln.partition(b":") for ln in lines)] == p.headers
    # the status line's reason only for a status the gateway has no line of its own for
    assert reason == (b"Custom Reason Here" if status == 299 else b"")


@pytest.mark.parametrize("name,data", DECLINED, ids=[r[0] for r in DECLINED])
def test_odd_responses_go_to_the_parser(name, data):
    w = read_head(data)
    assert w is None or w[1] == -1


def test_a_split_or_longer_read_goes_to_the_parser():
    w = read_head(NGINX + BODY[:50])
    assert w is not None and w[1] == len(NGINX) + 100 != len(NGINX) + 50
    w = read_head(NGINX + BODY + b"HTTP/1.1 200 OK\r\n")
    assert w[1] != len(NGINX + BODY + b"HTTP/1.1 200 OK\r\n")
    assert read_head(NGINX[:-2]) is None   # no whole head yet


def test_verdicts_are_remembered_and_bounded():
    whole._HEADS.clear()
    a = read_head(NGINX + BODY)
    assert read_head(NGINX + BODY) is a
    for i in range(whole.HEADS_SIZE + 5):
        read_head(resp(b"X-N: %d\r\nContent-Length: 100\r\n" % i))
    assert len(whole._HEADS) <= whole.HEADS_SIZE
    big = resp(b"X-Big: " + b"a" * whole.MAX_HEAD + b"\r\nContent-Length: 100\r\n")
    assert read_head(big) is None


# ---------------------------------------------------------------------------- in process
class _Counting:
    """The upstream connection's parser, counting the bytes it is fed."""

    def __init__(self, parser) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name):
        return getattr(self.parser, name)


def _client_bytes(monkeypatch, data: bytes, *, fast: bool, method: str = "GET", pieces: int = 1) -> bytes:
    """What the client receives when the upstream sends ``data`` (in ``pieces`` reads),
    through the in-process gateway of bench.micro (real engine, protocols and config);
    ``fast``: whether the parser may be skipped (and then must be, for one read)."""
    import asyncio

    import uvloop

    from bench.micro.inproc import CFG, Transport, gateway
    from fastgw.http.protocol import DownstreamProtocol
    from fastgw.upstream import client

    if not fast:
        monkeypatch.setattr(client, "read_head", lambda data: None)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _app, engine, info, up, _ut = gateway(CFG, loop)
        parser = up.parser = _Counting(httptools.HttpResponseParser(up))
        sent: list[bytes] = []
        t = Transport()
        t.write = sent.append
        down = DownstreamProtocol(engine, info, loop)
        down.connection_made(t)
        down.data_received(method.encode() + b" /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            up.data_received(data[i:i + step])
        assert down.cur is None   # the exchange ended
        assert parser.fed == (0 if fast and pieces == 1 else len(data))
        out = b"".join(sent)
        # the request id differs per gateway: compare without it
        return b"\r\n".join(ln for ln in out.split(b"\r\n") if not ln.startswith(b"x-request-id:"))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.parametrize("data", [NGINX + BODY, resp(b"Content-Length: 100\r\nConnection: close\r\n"),
                                  resp(status=b"299 Custom Reason Here"), resp(status=b"502 Bad Gateway")],
                         ids=["nginx", "close", "custom-reason", "502"])
def test_both_paths_give_the_client_the_same_bytes(monkeypatch, data):
    fast = _client_bytes(monkeypatch, data, fast=True)
    assert fast.endswith(BODY) and b"content-length: 100\r\n" in fast.lower()
    assert fast == _client_bytes(monkeypatch, data, fast=False)
    assert fast == _client_bytes(monkeypatch, data, fast=True, pieces=2)   # split: the parser's way


def test_the_connection_stays_usable_after_either_path(monkeypatch):
    """A response read without the parser leaves the connection (and its parser) ready for
    the next one, whichever way that one is read."""
    import asyncio

    import uvloop

    from bench.micro.inproc import CFG, Transport, gateway
    from fastgw.http.protocol import DownstreamProtocol

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _app, engine, info, up, _ut = gateway(CFG, loop)
        sent: list[bytes] = []
        t = Transport()
        t.write = sent.append
        down = DownstreamProtocol(engine, info, loop)
        down.connection_made(t)
        chunked = resp(b"Transfer-Encoding: chunked\r\n", body=b"64\r\n" + BODY + b"\r\n0\r\n\r\n")
        for data, pieces in ((NGINX + BODY, 1), (chunked, 1), (NGINX + BODY, 1), (NGINX + BODY, 3),
                             (NGINX + BODY, 1)):
            del sent[:]
            down.data_received(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            step = -(-len(data) // pieces)
            for i in range(0, len(data), step):
                up.data_received(data[i:i + step])
            out = b"".join(sent)
            assert out.startswith(b"HTTP/1.1 200 OK\r\n") and BODY in out, out
            assert up.state == 0 and up.pool.idle == [up]   # parked again
        assert down.cur is None and not down.closed
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.parametrize("fast", [True, False], ids=["whole", "parser"])
def test_a_failing_head_hook_is_a_502_either_way(monkeypatch, fast):
    """An exception while the response head is made (a response filter's bug) is reported
    the same way on both paths: a 502 ``upstream_bad_response``, the connection closed."""
    import asyncio

    import uvloop

    from bench.micro.inproc import CFG, Transport, gateway
    from fastgw.http.protocol import DownstreamProtocol
    from fastgw.pipeline.proxy import Proxy
    from fastgw.upstream import client

    def boom(self, up, status, reason, block, keep):
        raise ValueError("boom")

    monkeypatch.setattr(Proxy, "upstream_head", boom)
    if not fast:
        monkeypatch.setattr(client, "read_head", lambda data: None)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _app, engine, info, up, _ut = gateway(CFG, loop)
        sent: list[bytes] = []
        t = Transport()
        t.write = sent.append
        down = DownstreamProtocol(engine, info, loop)
        down.connection_made(t)
        down.data_received(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        up.data_received(NGINX + BODY)
        out = b"".join(sent)
        assert out.startswith(b"HTTP/1.1 502 ") and b"invalid response from upstream: User callback error" in out, out
        assert up.state == client.CLOSED and up.pool.idle == []
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_a_head_that_reframes_the_body_is_honoured_on_the_whole_path(monkeypatch):
    """If the head made for the client frames the body anew (RECHUNK: a response filter
    dropped the length), the response read without the parser goes out re-chunked, as the
    parser path would send it, and the connection is parked again."""
    import asyncio

    import uvloop

    from bench.micro.inproc import CFG, Transport, gateway
    from fastgw.http.protocol import DownstreamProtocol
    from fastgw.http.wire import RECHUNK
    from fastgw.pipeline.proxy import Proxy

    real = Proxy.upstream_head

    def rechunked(self, up, status, reason, block, keep):
        head, _framing = real(self, up, status, reason, block, keep)
        head = head.replace(b"Content-Length: 100\r\n", b"")
        head = head.replace(b"\r\n\r\n", b"\r\ntransfer-encoding: chunked\r\n\r\n")
        return head, RECHUNK

    monkeypatch.setattr(Proxy, "upstream_head", rechunked)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        _app, engine, info, up, _ut = gateway(CFG, loop)
        parser = up.parser = _Counting(httptools.HttpResponseParser(up))
        sent: list[bytes] = []
        t = Transport()
        t.write = sent.append
        down = DownstreamProtocol(engine, info, loop)
        down.connection_made(t)
        down.data_received(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        up.data_received(NGINX + BODY)
        out = b"".join(sent)
        assert parser.fed == 0
        assert out.endswith(b"\r\n\r\n64\r\n" + BODY + b"\r\n0\r\n\r\n"), out
        assert b"content-length" not in out.lower()
        assert down.cur is None and up.state == 0 and up.pool.idle == [up]
        assert (up.rechunk, up.head_sent, up.out) == (False, False, None)   # start values again
    finally:
        asyncio.set_event_loop(None)
        loop.close()
