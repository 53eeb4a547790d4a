"""DownstreamProtocol fed with bytes: fake transport, fake handler, hand-advanced clock.

No sockets and no sleeps (STYLE.md item 13).  The handler records every call the
protocol makes; the loop only offers ``time()`` and ``call_at()`` and fires timers when
the test advances the clock.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fastgw.config.gateway import TimeoutsConfig
from fastgw.http.protocol import (MAX_BACKLOG, PAUSE_BACKLOG, PAUSE_UPSTREAM, ConnInfo,
                                  DownstreamProtocol)



class FakeTimer:
    def __init__(self, loop, at, cb) -> None:
        self.loop, self.at, self.cb, self.cancelled = loop, at, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, at, cb, *args):
        t = FakeTimer(self, at, lambda: cb(*args))
        self.timers.append(t)
        return t

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.at <= end), key=lambda t: t.at)
            if not due:
                break
            t = due[0]
            self.timers.remove(t)
            self.now = max(self.now, t.at)
            t.cb()
        self.now = end


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof = False

    def get_extra_info(self, name, default=None):
        return ("10.1.2.3", 5555) if name == "peername" else default

    def write(self, data) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True


class FakeHandler:
    """Records the protocol's calls; answers nothing unless the test does."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.dispatched: list = []
        self.bodies: dict[int, bytearray] = {}
        self.ended: list = []
        self.errors: list[tuple[str, str]] = []
        self.lost = []

    def connection_made(self, proto) -> None:
        self.calls.append(("made",))

    def dispatch(self, proto, ctx, body) -> None:
        self.dispatched.append(ctx)
        self.bodies[id(ctx)] = bytearray(b"".join(body) if body else b"")
        self.calls.append(("dispatch", ctx.method, ctx.raw_target))
        if proto.cur_complete:
            # the protocol's contract: a request that was whole before it started gets
            # no on_body_end; the handler sees cur_complete (as the engine does)
            self.ended.append(ctx)

    def on_body(self, proto, ctx, data) -> None:
        self.bodies[id(ctx)] += data

    def on_body_end(self, proto, ctx) -> None:
        self.ended.append(ctx)

    def parse_error(self, proto, kind, detail) -> None:
        self.errors.append((kind, detail))
        proto.close()

    def abort_current(self, proto, kind) -> None:
        self.calls.append(("abort_current", kind))

    def body_timeout(self, proto, ctx) -> None:
        self.calls.append(("body_timeout",))

    def connection_lost(self, proto, cur) -> None:
        self.lost.append(cur)

    def finish(self, proto, ctx) -> None:
        self.calls.append(("finish", ctx.raw_target))

    def downstream_paused(self, proto, paused) -> None:
        self.calls.append(("paused", paused))

    def linger_start(self, proto) -> None:
        self.calls.append(("linger",))

    def linger_done(self, proto, end) -> None:
        self.calls.append(("linger_done", end))


LIMITS = SimpleNamespace(max_request_line=1024, max_header_size=512, max_headers_size=2048, max_headers=20)
# the body deadlines off: these tests drive the head/body/idle timers alone
TIMEOUTS = TimeoutsConfig(request_header=10.0, request_body=20.0, keepalive=75.0, send=60.0,
                          request_body_total=None, request_body_min_rate=None)


def make():
    loop = FakeLoop()
    h = FakeHandler()
    p = DownstreamProtocol(h, ConnInfo(LIMITS, TIMEOUTS), loop)
    t = FakeTransport()
    p.connection_made(t)
    return p, h, t, loop


def respond(p, h, keep_alive=True) -> None:
    """The handler's side of finishing the request in flight."""
    ctx = p.cur
    p.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    p.request_done(ctx, keep_alive)


def _field(ctx, name):
    """A parsed value the protocol hands over (a Request slot)."""
    return getattr(ctx, name)


GET = b"GET /a?x=1 HTTP/1.1\r\nHost: Example.COM\r\nX-A: 1\r\nConnection: keep-alive\r\n\r\n"


# ---------------------------------------------------------------------- parsing
def test_simple_get_dispatched_once_with_fields():
    p, h, t, _ = make()
    p.data_received(GET)
    (ctx,) = h.dispatched
    assert ctx.method == "GET" and ctx.raw_target == b"/a?x=1" and ctx.version == "1.1"
    assert ctx.host == "example.com" and ctx.keep_alive and ctx.peer_ip == "10.1.2.3"
    assert ctx.content_length is None and not ctx.chunked
    # Host and Connection are interpreted, not forwarded as ordinary headers
    assert ctx.headers == [(b"X-A", b"1")]
    assert h.ended == [ctx] and h.errors == []


@pytest.mark.parametrize("step", [1, 2, 7])
def test_fragmented_input_same_result(step):
    p, h, _, _ = make()
    for i in range(0, len(GET), step):
        p.data_received(GET[i:i + step])
    (ctx,) = h.dispatched
    assert ctx.raw_target == b"/a?x=1" and ctx.headers == [(b"X-A", b"1")]


def test_content_length_body_across_reads():
    p, h, _, _ = make()
    p.data_received(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123")
    (ctx,) = h.dispatched
    assert ctx.content_length == 10 and h.ended == []
    p.data_received(b"456789")
    assert bytes(h.bodies[id(ctx)]) == b"0123456789" and h.ended == [ctx]
    assert ctx.bytes_received == 10


def test_chunked_body_decoded():
    p, h, _, _ = make()
    p.data_received(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    (ctx,) = h.dispatched
    assert ctx.chunked and ctx.content_length is None
    p.data_received(b"1;ext=x\r\n!\r\n0\r\n\r\n")
    assert bytes(h.bodies[id(ctx)]) == b"hello!" and h.ended == [ctx]


def test_http10_defaults_to_close_and_needs_no_host():
    p, h, _, _ = make()
    p.data_received(b"GET / HTTP/1.0\r\n\r\n")
    (ctx,) = h.dispatched
    assert ctx.version == "1.0" and not ctx.keep_alive and h.errors == []


def test_connection_close_request():
    p, h, t, _ = make()
    p.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not h.dispatched[0].keep_alive
    respond(p, h)
    assert t.closed


def test_hop_by_hop_and_forwarding_headers_not_in_forward_list():
    p, h, _, _ = make()
    p.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\n"
                    b"X-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 2.2.2.2\r\nForwarded: for=3.3.3.3\r\n"
                    b"X-Forwarded-Proto: https\r\nX-Keep: 1\r\n\r\n")
    (ctx,) = h.dispatched
    assert ctx.headers == [(b"X-Keep", b"1")]
    # the incoming X-Forwarded-For is kept aside for the trusted-proxy walk, not forwarded
    assert _field(ctx, "xff") == b"1.1.1.1"


# ---------------------------------------------------------------------- rejections
MALFORMED = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "bad_framing"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "bad_framing"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", "bad_framing"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", "bad_framing"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", "bad_framing"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00\r\n\r\n", "bad_framing"),
    (b"GET / HTTP/1.1\rHost: a\r\n\r\n", "bad_framing"),
    (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", "missing_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "missing_host"),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "missing_host"),
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 600 + b"\r\n\r\n", "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(25)) + b"\r\n",
     "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 400) for i in range(6)) + b"\r\n",
     "headers_too_large"),
]


@pytest.mark.parametrize("raw,kind", MALFORMED, ids=[k + "-%d" % i for i, (_, k) in enumerate(MALFORMED)])
def test_malformed_head_reported_never_dispatched(raw, kind):
    p, h, t, _ = make()
    p.data_received(raw)
    assert h.dispatched == [], "a malformed request was dispatched"
    assert [k for k, _ in h.errors] == [kind]


@pytest.mark.parametrize("te", [
    b"gzip",
    b"identity",
    b"xchunked",
    b"chunked, gzip",
])
def test_transfer_encoding_not_ending_in_chunked_never_dispatched(te):
    p, h, _, _ = make()
    p.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n")
    assert h.dispatched == [], "dispatched before the Transfer-Encoding was validated"
    assert [k for k, _ in h.errors] == ["bad_framing"]


def test_bad_chunk_size_in_first_read_never_dispatched():
    p, h, _, _ = make()
    p.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert h.dispatched == [], "dispatched a request whose body framing is already known to be bad"
    assert [k for k, _ in h.errors] == ["bad_framing"]


def test_bad_chunk_after_dispatch_aborts():
    p, h, t, _ = make()
    p.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert len(h.dispatched) == 1
    p.data_received(b"zz\r\n")
    assert ("abort_current", "bad_framing") in h.calls and t.aborted


# ---------------------------------------------------------------------- pipelining
def test_pipelined_requests_dispatched_one_at_a_time_in_order():
    p, h, t, _ = make()
    p.data_received(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3)))
    assert [c.raw_target for c in h.dispatched] == [b"/0"]
    respond(p, h)
    assert [c.raw_target for c in h.dispatched] == [b"/0", b"/1"]
    respond(p, h)
    respond(p, h)
    assert [c.raw_target for c in h.dispatched] == [b"/0", b"/1", b"/2"]
    assert [c for c in h.calls if c[0] == "finish"] == [("finish", b"/0"), ("finish", b"/1"), ("finish", b"/2")]
    assert not t.closed


def test_pipelined_bodies_kept_with_their_request():
    p, h, _, _ = make()
    p.data_received(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nAAA"
                    b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nBBBB")
    respond(p, h)
    a, b = h.dispatched
    assert bytes(h.bodies[id(a)]) == b"AAA" and bytes(h.bodies[id(b)]) == b"BBBB"
    assert h.ended == [a, b]


def test_pipelined_error_waits_for_earlier_response():
    """A malformed request behind a valid one: the valid one's response comes first."""
    p, h, t, _ = make()
    p.data_received(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert [c.raw_target for c in h.dispatched] == [b"/ok"]
    assert h.errors == [], "the error was answered while an earlier request was still in flight"
    respond(p, h)
    assert [k for k, _ in h.errors] == ["missing_host"]


def test_pipelining_is_bounded():
    """One read holding 5,000 requests must not become 5,000 queued contexts: the queue
    stays within a small constant (MAX_QUEUED plus at most one parse slice), the rest is
    held as raw bytes and reading pauses."""
    p, h, t, _ = make()
    one = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    p.data_received(one * 5000)
    assert len(h.dispatched) == 1
    assert len(p.queue) <= 200, f"{len(p.queue)} contexts queued for one read"
    assert not t.reading
    for _ in range(3):  # a client that keeps sending while nothing is answered
        p.data_received(one * 1000)
    assert len(p.queue) <= 200
    n = 0
    while p.cur is not None and n < 20_000:
        respond(p, h)
        n += 1
    assert n == 8000 and len(h.dispatched) == 8000
    assert [c.raw_target for c in h.dispatched[-2:]] == [b"/x", b"/x"]
    assert t.reading


def test_backlog_pauses_reading_after_limit():
    p, h, t, _ = make()
    p.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert t.reading
    p.data_received(b"G" * (MAX_BACKLOG + 1))
    assert not t.reading


# ---------------------------------------------------------------------- flow control
def test_pause_reasons_are_a_mask():
    p, h, t, _ = make()
    p.pause_for(PAUSE_UPSTREAM)
    p.pause_for(PAUSE_BACKLOG)
    assert not t.reading
    p.resume_for(PAUSE_UPSTREAM)
    assert not t.reading, "resumed while another reason still wants reading paused"
    p.resume_for(PAUSE_BACKLOG)
    assert t.reading
    p.resume_for(PAUSE_BACKLOG)  # idempotent
    assert t.reading


def test_write_pause_reported_to_handler():
    p, h, _, _ = make()
    p.pause_writing()
    p.resume_writing()
    assert ("paused", True) in h.calls and ("paused", False) in h.calls


# ---------------------------------------------------------------------- lifecycle
def test_answered_before_body_read_closes():
    p, h, t, _ = make()
    p.data_received(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123")
    respond(p, h, keep_alive=True)
    # a lingering close: write side shut, the rest of the body read and discarded
    assert t.eof and not t.closed
    n = len(h.bodies[id(h.dispatched[0])])
    p.data_received(b"x" * 96)
    assert len(h.bodies[id(h.dispatched[0])]) == n, "a discarded body reached the handler"
    p.eof_received()
    assert t.closed and not t.aborted
    assert ("linger_done", "client") in h.calls


def test_local_reply_during_dispatch_keeps_connection():
    """A handler that answers synchronously inside dispatch (404, 405, 401...) for a
    bodyless request must not make the protocol close a keep-alive connection."""
    p, h, t, _ = make()

    def dispatch(proto, ctx, body):
        h.dispatched.append(ctx)
        proto.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        proto.request_done(ctx, True)

    h.dispatch = dispatch
    p.data_received(GET)
    assert not t.closed, "connection closed after a keep-alive local reply"
    p.data_received(GET)
    assert len(h.dispatched) == 2


def test_connection_lost_reports_request_in_flight():
    p, h, t, _ = make()
    p.data_received(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
    ctx = p.cur
    p.connection_lost(None)
    assert h.lost == [ctx]


def test_eof_while_idle_closes_and_while_busy_waits():
    p, h, t, _ = make()
    p.data_received(GET)
    assert p.eof_received() is True and not t.closed
    respond(p, h)
    p2, h2, t2, _ = make()
    p2.eof_received()
    assert t2.closed


def test_upgrade_request_completes_head():
    p, h, _, _ = make()
    p.data_received(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    (ctx,) = h.dispatched
    assert _field(ctx, "upgrade") == b"websocket" and h.ended == [ctx]


def test_upgrade_request_early_bytes_kept_for_tunnel():
    p, h, _, _ = make()
    p.data_received(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nFRAME1")
    up = FakeTransport()
    p.start_tunnel(up)
    assert bytes(up.written) == b"FRAME1", "bytes behind the upgrade head were lost"
    p.data_received(b"FRAME2")
    assert bytes(up.written) == b"FRAME1FRAME2"


# ---------------------------------------------------------------------- timers
def test_head_timeout_408():
    p, h, t, loop = make()
    p.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n")
    loop.advance(9.9)
    assert h.errors == []
    loop.advance(0.2)
    assert [k for k, _ in h.errors] == ["request_timeout"]


def test_slowloris_trickle_does_not_extend_head_deadline():
    p, h, t, loop = make()
    p.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for i in range(12):
        loop.advance(1.0)
        if h.errors:
            break
        p.data_received(b"X-%d: v\r\n" % i)
    assert [k for k, _ in h.errors] == ["request_timeout"]
    assert loop.now - 1000.0 <= 10.5


def test_keepalive_idle_close_and_timer_rearmed_by_deadline():
    p, h, t, loop = make()
    p.data_received(GET)
    respond(p, h)
    loop.advance(74)
    assert not t.closed
    loop.advance(2)
    assert t.closed and h.errors == []


def test_idle_before_first_request_closes_silently():
    p, h, t, loop = make()
    loop.advance(TIMEOUTS.request_header + 0.1)
    assert t.closed and t.written == b""


def test_body_timeout():
    p, h, t, loop = make()
    p.data_received(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01")
    loop.advance(15)
    p.data_received(b"23")  # activity pushes the idle-gap deadline
    loop.advance(15)
    assert ("body_timeout",) not in h.calls
    loop.advance(6)
    assert ("body_timeout",) in h.calls


def test_one_live_timer_per_connection():
    p, h, t, loop = make()
    for _ in range(50):
        p.data_received(GET)
        respond(p, h)
    live = [x for x in loop.timers if not x.cancelled]
    assert len(live) <= 2, f"{len(live)} live timers for one connection"


@pytest.mark.parametrize("version", [b"1.0", b"1.1", b"2.0"])
@pytest.mark.parametrize("conn", [None, b"close", b"keep-alive", b"Keep-Alive, x-a", b"upgrade"])
def test_version_and_keep_alive_as_llhttp_reports_them(version, conn):
    """ctx.version skips llhttp's get_http_version() when no Connection header is sent and
    the request keeps alive (only HTTP/1.1 does); every combination gives the version and
    keep-alive that llhttp itself reports."""
    import httptools

    head = b"GET /v HTTP/" + version + b"\r\nHost: h\r\n" + (b"Connection: " + conn + b"\r\n" if conn else b"") + b"\r\n"

    seen = []

    class Ref:  # (read inside the callback: llhttp resets its flags once the message ends)
        def on_headers_complete(self):
            seen.append((ref.get_http_version(), ref.should_keep_alive()))

    ref = httptools.HttpRequestParser(Ref())
    try:
        ref.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    p, h, t, _ = make()
    p.data_received(head)
    if version == b"2.0":
        assert not h.dispatched and h.errors and h.errors[0][0] == "bad_request"
        return
    (ctx,) = h.dispatched
    assert (ctx.version, ctx.keep_alive) == seen[0]


def test_http09_request_line_is_refused():
    p, h, t, _ = make()
    p.data_received(b"GET /\r\n\r\n")
    assert not h.dispatched and h.errors
