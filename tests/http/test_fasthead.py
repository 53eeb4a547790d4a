"""The request head read without the parser (``fastgw.http.fasthead``), against llhttp.

Rule 1 of that module: what it accepts, the parser's path (llhttp in strict mode and the
protocol's callbacks) dispatches with the same fields; everything else is declined and
parsed as before.  Each row is fed both ways to a real ``DownstreamProtocol`` (fake
transport, recording handler): once with the fast path forced off (every verdict says
"parse it") and once as shipped, on a listener that has read those heads once before
(a verdict is made on a head's second read).  The outcomes must be identical: every field of every
dispatched ``Request``, the protocol's deadline and counters at dispatch, the error
reported (kind and detail), the bytes written and whether the connection closed.  Then
a follow-up on the same connection (a body the parser must frame, and a head split
over reads) shows the parser is in the same state after a request it never saw.  A
grammar-driven fuzz (hypothesis) adds heads with mutations under the same assertion.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.http import fasthead
from fastgw.http.conninfo import ConnInfo
from fastgw.http.protocol import DownstreamProtocol
from fastgw.http.request import Request
# (LIMITS: request line 1024, one line 512, all lines 2048, 20 forwarded lines)
from tests.http.test_protocol_unit import LIMITS, TIMEOUTS, FakeHandler, FakeLoop, FakeTransport

H = b"Host: gw.test\r\n"
_UNSET = "<unset>"
_SLOTS = [s for s in Request.__slots__ if s != "exchange"]


def verdict(raw: bytes, info=None):
    """The verdict on ``raw`` read a second time (the first read only notes it)."""
    info = info or ConnInfo(LIMITS, TIMEOUTS)
    assert fasthead.verdict(raw, info) is fasthead.NO
    return fasthead.verdict(raw, info)


def _seen(*heads):
    """A listener's settings on which ``heads`` were read once already."""
    info = ConnInfo(LIMITS, TIMEOUTS)
    for raw in heads:
        fasthead.verdict(raw, info)
    return info


def get(lines: bytes = H, target: bytes = b"/api/x", method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    return method + b" " + target + b" " + version + b"\r\n" + lines + b"\r\n"


class _Off(dict):
    """``ConnInfo.heads`` that declines every head: the parser reads everything."""

    def get(self, key, default=None):
        return fasthead.NO


class _Proto(DownstreamProtocol):
    """The protocol, remembering the requests its parser made."""

    __slots__ = ("parsed",)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.parsed.append(self.p_req)


class _Recorder(FakeHandler):
    def __init__(self) -> None:
        super().__init__()
        self.fast: list[bool] = []   # per dispatched request: the fast path made it

    def dispatch(self, proto, ctx, body) -> None:
        super().dispatch(proto, ctx, body)
        fields = {s: getattr(ctx, s, _UNSET) for s in _SLOTS}
        # the header map: prebuilt by the fast path, built on first use by the parser's
        fields["hmap"] = ctx.header_map()
        # a request the parser made is its p_req; the fast path leaves p_req alone
        self.calls.append(("fields", fields, proto.cur_complete, proto.dl.kind, proto.n_requests,
                           body is None))
        self.fast.append(not any(r is ctx for r in proto.parsed))


def _connect(info):
    h, t = _Recorder(), FakeTransport()
    p = _Proto(h, info, FakeLoop())
    p.parsed = []
    p.connection_made(t)
    return p, h, t


def _run(reads, fast: bool, answer: bool = True, tls: bool = False, warm: bool = True):
    """Feed ``reads`` to a new connection; answer each dispatched request (keep-alive)."""
    info = ConnInfo(LIMITS, TIMEOUTS, tls=tls)
    if not fast:
        info.heads = _Off()
    elif warm:
        for data in reads:   # seen before (a verdict is made on a head's second read)
            fasthead.verdict(data, info)
    p, h, t = _connect(info)
    for data in reads:
        if p.closed:
            break   # (a transport delivers nothing after close())
        p.data_received(data)
        while answer and p.cur is not None and p.cur_complete and not p.closed:
            ctx = p.cur
            p.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            p.request_done(ctx, True)
    outcome = ([c for c in h.calls if c[0] != "dispatch"], h.errors, bytes(t.written), t.closed, p.n_requests)
    return outcome, h.fast


def _same(reads, answer: bool = True, tls: bool = False):
    """Both ways give the same outcome; returns which dispatched requests the fast path made."""
    off, off_fast = _run(reads, False, answer, tls)
    on, on_fast = _run(reads, True, answer, tls)
    assert not any(off_fast), "the fast path ran while forced off"
    assert on == off
    return on_fast


# ---------------------------------------------------------------------- the table
ACCEPTED = [
    ("wrk", b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"),
    ("bare", get(H + b"User-Agent: wrk\r\nAccept: */*\r\n")),
    ("policy", get(H + b"User-Agent: wrk\r\nAuthorization: Bearer a.b.c\r\nOrigin: https://app.example.com\r\n")),
    ("connection-close", get(H + b"Connection: close\r\n")),
    ("connection-close-any-case", get(H + b"CONNECTION: Close\r\n")),
    ("connection-keep-alive", get(H + b"connection:Keep-Alive\r\n")),
    ("head", get(method=b"HEAD")),
    ("delete", get(method=b"DELETE")),
    ("options", get(method=b"OPTIONS")),
    ("post-without-body", get(method=b"POST")),
    ("name-case", get(b"hOsT: gw.test\r\nuser-AGENT: x\r\nauthorization: t\r\nORIGIN: o\r\nx-request-id: r\r\n")),
    ("ows-none", get(b"Host:gw.test\r\nX-A:1\r\n")),
    ("ows-tabs", get(b"Host:\tgw.test\r\nX-A: \t 1\r\n")),
    ("trailing-ows-kept", get(H + b"X-A: 1 \t \r\nUser-Agent: ua  \r\n")),
    ("inner-spaces", get(H + b"X-A: a  b\tc\r\n")),
    ("empty-value", get(H + b"X-E:\r\nX-F: \r\nX-G:\t \r\n")),
    ("token-chars", get(H + b"X-!#$%&'*+-.^`|~09az: v\r\n")),
    ("repeated-authorization", get(H + b"Authorization: a\r\nAuthorization: b\r\n")),
    ("repeated-origin", get(H + b"Origin: https://a\r\nOrigin: https://b\r\n")),
    ("repeated-xff", get(H + b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n")),
    ("forwarding-lines", get(H + b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: f.test\r\n"
                             b"X-Forwarded-Port: 443\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\n")),
    ("trace-headers", get(H + b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
                          b"tracestate: a=b\r\n")),
    ("underscore-dropped", get(H + b"X_User_Id: admin\r\nX-User-Id: u\r\n")),
    ("host-port", get(b"Host: Example.COM:8080\r\n")),
    ("host-ipv6", get(b"Host: [::1]:8080\r\n")),
    ("host-empty", get(b"Host:\r\n")),
    ("host-last", get(b"X-A: 1\r\nHost: gw.test\r\n")),
    ("target-chars", get(target=b"/a-b._~!$&'()*+,;=:@/c?d=e&f=%20/?g")),
    ("target-root", get(target=b"/")),
    ("target-dotdot", get(target=b"/a/../../x")),
    ("target-bad-escape", get(target=b"/a%zz")),
    ("long-value", get(H + b"X-Long: " + b"v" * 400 + b"\r\n")),
    ("line-at-limit", get(H + b"X-L: " + b"v" * (512 - 3) + b"\r\n")),
    ("url-at-limit", get(target=b"/" + b"a" * 1023)),
    ("underscore-lines-not-counted", get(H + b"".join(b"X_%02d: v\r\n" % i for i in range(30)) + b"X-A: 1\r\n")),
    ("many-headers-at-limit", get(H + b"".join(b"X-%02d: v\r\n" % i for i in range(20)))),
]

DECLINED = [
    # framing and hop-by-hop: the parser reads them (some are errors there)
    ("content-length", get(H + b"Content-Length: 0\r\n", method=b"POST")),
    ("transfer-encoding", get(H + b"Transfer-Encoding: chunked\r\n", method=b"POST") + b"0\r\n\r\n"),
    ("upgrade", get(H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n")),
    ("upgrade-alone", get(H + b"Upgrade: h2c\r\n")),
    ("expect", get(H + b"Expect: 100-continue\r\n", method=b"PUT")),
    ("keep-alive-header", get(H + b"Keep-Alive: 5\r\n")),
    ("te", get(H + b"TE: trailers\r\n")),
    ("proxy-connection", get(H + b"Proxy-Connection: close\r\n")),
    ("connection-list", get(H + b"Connection: keep-alive, x-a\r\nX-A: 1\r\n")),
    ("connection-trailing-ows", get(H + b"Connection: close \r\n")),
    ("connection-twice", get(H + b"Connection: keep-alive\r\nConnection: close\r\n")),
    # the request line
    ("http10", get(version=b"HTTP/1.0")),
    ("http10-no-host", b"GET / HTTP/1.0\r\n\r\n"),
    ("http2", get(version=b"HTTP/2.0")),
    ("http09", b"GET /\r\n\r\n"),
    ("version-lowercase", get(version=b"http/1.1")),
    ("absolute-form", get(target=b"http://gw.test/api/x")),
    ("asterisk-form", get(target=b"*", method=b"OPTIONS")),
    ("connect", get(b"Host: gw.test:443\r\n", target=b"gw.test:443", method=b"CONNECT")),
    ("trace-method", get(method=b"TRACE")),
    ("method-lowercase", get(method=b"get")),
    ("double-space", b"GET  /api/x HTTP/1.1\r\n" + H + b"\r\n"),
    ("target-fragment", get(target=b"/a#b")),
    ("target-space", get(target=b"/a b")),
    ("target-pipe-brace", get(target=b"/a|{}")),
    ("target-backslash", get(target=b"/a\\b")),
    ("target-nul", get(target=b"/a\x00b")),
    ("target-del", get(target=b"/a\x7fb")),
    ("target-obs-text", get(target=b"/caf\xc3\xa9")),
    ("url-too-long", get(target=b"/" + b"a" * 1024)),
    # line ends and header syntax
    ("lone-lf-everywhere", b"GET /api/x HTTP/1.1\nHost: gw.test\n\n"),
    ("lone-lf-in-line", get(H + b"X-A: 1\nX-B: 2\r\n")),
    ("bare-cr", get(H + b"X-A: 1\rX-B: 2\r\n")),
    ("bare-cr-line-end", b"GET /api/x HTTP/1.1\rHost: gw.test\r\n\r\n"),
    ("nul-in-value", get(H + b"X-A: b\x00c\r\n")),
    ("ctl-in-value", get(H + b"X-A: b\x01c\r\n")),
    ("del-in-value", get(H + b"X-A: b\x7fc\r\n")),
    ("obs-text-in-value", get(H + b"X-A: caf\xc3\xa9\r\n")),
    ("header-without-colon", get(H + b"X-A b\r\n")),
    ("space-before-colon", get(H + b"X-A : b\r\n")),
    ("host-space-before-colon", get(b"Host : gw.test\r\n")),
    ("tab-before-colon", get(H + b"X-A\t: b\r\n")),
    ("obs-fold", get(H + b"X-A: b\r\n c\r\n")),
    ("obs-fold-tab", get(H + b"X-A: b\r\n\tc\r\n")),
    ("name-at", get(H + b"X@A: b\r\n")),
    ("name-paren", get(H + b"(X): b\r\n")),
    ("name-empty", get(H + b": b\r\n")),
    ("name-ctl", get(H + b"X\x01A: b\r\n")),
    ("name-obs-text", get(H + b"X-\xff: b\r\n")),
    # Host
    ("no-host", get(b"X-A: b\r\n")),
    ("host-twice", get(H + H)),
    ("host-twice-different", get(H + b"Host: other.test\r\n")),
    ("host-invalid-space", get(b"Host: gw test\r\n")),
    ("host-trailing-space", get(b"Host: gw.test \r\n")),
    ("host-userinfo", get(b"Host: user@gw.test\r\n")),
    ("host-slash", get(b"Host: gw.test/evil\r\n")),
    # limits (the parser answers 414/431)
    ("line-over-limit", get(H + b"X-L: " + b"v" * (512 - 2) + b"\r\n")),
    ("head-over-limit", get(H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 400) for i in range(6)))),
    ("count-over-limit", get(H + b"".join(b"X-%02d: v\r\n" % i for i in range(21)))),
    # not one whole head
    ("leading-crlf", b"\r\n" + get()),
    ("pipelined", get() + get(target=b"/api/y")),
    ("body", get(H + b"Content-Length: 3\r\n", method=b"POST") + b"ab\n"),
    ("head-without-end", get()[:-2]),
]


@pytest.mark.parametrize("name,raw", ACCEPTED, ids=[r[0] for r in ACCEPTED])
def test_accepted_heads_read_as_the_parser_reads_them(name, raw):
    assert verdict(raw), "declined"
    assert _same([raw]) == [True], "the fast path did not make this request"
    assert _same([raw], tls=True) == [True]   # (a TLS listener's verdicts are its own)


# a body the parser must frame (the fast path declines it), then a head split over reads,
# then a head the fast path takes again
FOLLOW = [b"POST /f HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n\r\nab\r\n", b"GE",
          b"T /g HTTP/1.1\r\nHost: gw.test\r\n\r\n", get(target=b"/h")]


@pytest.mark.parametrize("name,raw", ACCEPTED, ids=[r[0] for r in ACCEPTED])
def test_the_parser_after_an_accepted_head_is_where_it_would_be(name, raw):
    fast = _same([raw] + FOLLOW)
    if name.startswith("connection-close"):
        assert fast == [True]   # (the connection closes after it)
    else:
        assert fast == [True, False, False, True]


@pytest.mark.parametrize("name,raw", DECLINED, ids=[r[0] for r in DECLINED])
def test_odd_heads_go_to_the_parser(name, raw):
    assert not verdict(raw)
    assert not any(_same([raw]))
    assert not any(_same([raw] + FOLLOW)[:1])


def test_table_size():
    assert len(ACCEPTED) + len(DECLINED) >= 40


# ---------------------------------------------------------------------- state across reads
@pytest.mark.parametrize("reads,fast", [
    # a method's first byte held by the parser: the next whole head must not skip it
    ([b"P", get()], []),
    ([b"GE", b"T /api/x HTTP/1.1\r\n" + H + b"\r\n"], [False]),
    # CR and LF between messages are skipped by llhttp: the head after them means the same
    ([b"\r\n", get()], [True]),
    ([b"\r", get()], [False]),
    # a partial head ending in LF (p_req is set): the rest goes to the parser
    ([b"GET /api/x HTTP/1.1\r\n", H + b"\r\n"], [False]),
    # after a body that ended its read with another byte than LF, the parser reads the
    # next head (it may hold a method's first bytes); the one after is read fast again
    ([b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok", get(), get()], [False, False, True]),
    ([get(H + b"Content-Length: 2\r\n", method=b"POST"), b"o", b"k", get(), get()], [False, False, True]),
    ([get(H + b"Content-Length: 2\r\n", method=b"POST"), b"\r\n", get()], [False, True]),
    # a pipelined request behind a whole one: the rest is the parser's
    ([get() + b"GE", b"T /z HTTP/1.1\r\n" + H + b"\r\n"], [False, False]),
    # after HTTP/1.0 (no keep-alive) and after Connection: close, nothing more is read
    ([get(version=b"HTTP/1.0"), get()], [False]),
    ([get(H + b"Connection: close\r\n"), get()], [True]),
])
def test_reads_around_a_message_boundary(reads, fast):
    assert _same(reads) == fast


def test_held_head_is_read_after_the_response():
    """A head that arrives while a request is in flight is held raw, then read (by the
    fast path: the parser has seen none of it) once the response is done."""
    assert _same([get(target=b"/1"), get(target=b"/2")], answer=False) == [True]
    p, h, t = _connect(_seen(get(target=b"/1"), get(target=b"/2")))
    p.data_received(get(target=b"/1"))
    p.data_received(get(target=b"/2"))
    assert [c.raw_target for c in h.dispatched] == [b"/1"]
    p.request_done(p.cur, True)
    assert [c.raw_target for c in h.dispatched] == [b"/1", b"/2"] and h.fast == [True, True]


def test_after_a_fast_request_that_closes_the_parser_is_as_llhttp_after_it():
    """The connection closes after such a request; should anything still be fed, the
    protocol's parser (``CLOSED``) does what llhttp does after having read that request."""
    import httptools

    close = get(H + b"Connection: close\r\n")
    p, h, t = _connect(_seen(close))
    p.data_received(close)
    assert h.fast == [True] and p.parser is fasthead.CLOSED and p.p_req is p.cur
    for reads in ([b"\r\n"], [b"\r\n\r\n", b"\n"], [b"G"], [b"\r\nGET / HTTP/1.1\r\n"], [b"\r", get()]):
        ref = httptools.HttpRequestParser(_Recorder())
        ref.feed_data(close)
        for data in reads:
            try:
                ref.feed_data(data)
                want = None
            except httptools.HttpParserError as e:
                want = str(e)
            try:
                fasthead.CLOSED.feed_data(data)
                got = None
            except httptools.HttpParserError as e:
                got = str(e)
            assert got == want, (reads, data)
            if want:
                break


# ---------------------------------------------------------------------- the verdicts
def test_verdicts_are_remembered_per_limits_and_bounded():
    info = ConnInfo(LIMITS, TIMEOUTS)
    raw = get(H + b"X-A: " + b"v" * 300 + b"\r\n")
    # the first read is only noted (the parser reads it), the second gets its verdict
    assert fasthead.verdict(raw, info) is fasthead.NO and raw in info.heads and info.heads[raw] is None
    v = fasthead.verdict(raw, info)
    assert v and info.heads[raw] is v
    odd = get(H + b"X-A: caf\xc3\xa9\r\n")
    assert verdict(odd, info) is fasthead.NO and info.heads[odd] is fasthead.NO
    # not one whole head
    body = get(H + b"Content-Length: 3\r\n", method=b"POST") + b"ab\n"
    assert verdict(body, info) is fasthead.NO and info.heads[body] is fasthead.NO
    # the same head under smaller limits is declined (the parser answers 431 there)
    small = ConnInfo(type(LIMITS)(max_request_line=1024, max_header_size=100, max_headers_size=2048,
                                  max_headers=20), TIMEOUTS)
    assert verdict(raw, small) is fasthead.NO
    for i in range(fasthead.HEADS_SIZE + 5):
        fasthead.verdict(get(target=b"/%d" % i), info)
    assert len(info.heads) <= fasthead.HEADS_SIZE


def test_a_head_is_read_fast_from_its_second_read_on():
    """Both ways alike: the first read of a head goes to the parser, later ones are made
    from its verdict; a stream of heads that never repeat is all parsed."""
    reads = [get(target=b"/a"), get(target=b"/a"), get(target=b"/b"), get(target=b"/a")]
    off, _ = _run(reads, False)
    on, fast = _run(reads, True, warm=False)
    assert on == off and fast == [False, True, False, True]
    new = [get(target=b"/new/%d" % i) for i in range(20)]
    off, _ = _run(new, False)
    on, fast = _run(new, True, warm=False)
    assert on == off and fast == [False] * 20


def test_requests_of_one_template_do_not_share_their_header_list():
    p, h, t = _connect(_seen(get(H + b"X-A: 1\r\n")))
    raw = get(H + b"X-A: 1\r\n")
    for _ in range(2):
        p.data_received(raw)
        p.request_done(p.cur, True)
    a, b = h.dispatched
    assert a.headers == b.headers == [(b"X-A", b"1")] and a.headers is not b.headers
    a.headers.append((b"X-B", b"2"))
    assert b.headers == [(b"X-A", b"1")] and h.fast == [True, True]


# ---------------------------------------------------------------------- fuzz
# A grammar of well-formed heads (varied names, values, OWS, targets), then at most one
# odd piece in one place (a method, a separator, a line end, a value character, a Host,
# ...) or one byte deleted, inserted or replaced anywhere: about half the heads are read
# fast, the others must be declined, and both kinds must read the same both ways.
_ORDINARY = [b"Accept", b"X-A", b"x-b", b"Cookie", b"User-Agent", b"user-agent", b"Authorization", b"Origin",
             b"X-Request-ID", b"traceparent", b"tracestate", b"X-Forwarded-For", b"X-Forwarded-Proto",
             b"X-Forwarded-Host", b"Forwarded", b"X-Real-IP", b"X_A", b"x-!#$%&'*+.^`|~"]
_TOKEN = b"aZ09-!#$%&'*+.^_`|~"
_VALUES = [b"", b" ", b"\t", b"Bearer a.b.c", b"https://a.test", b"*/*", b"a b", b"1.2.3.4, 5.6.7.8", b"x "]
_PRINTABLE = bytes(range(0x21, 0x7f)) + b" \t"
_PATH = b"abcXYZ019-._~!$&'()*+,;=:@/?%"

_good = {
    "method": st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]),
    "sp": st.just(b" "),
    "target": st.lists(st.sampled_from(list(_PATH)), max_size=16).map(lambda b: b"/" + bytes(b)),
    "version": st.just(b"HTTP/1.1"),
    "eol": st.just(b"\r\n"),
    "host": st.sampled_from([H, b"host:gw.test:8080\r\n", b"HOST: [::1]:80\r\n", b"Host:\t127.0.0.1\r\n", b"Host:\r\n"]),
    "name": st.one_of(st.sampled_from(_ORDINARY), st.lists(st.sampled_from(list(_TOKEN)), min_size=1, max_size=8)
                      .map(bytes)),
    "sep": st.sampled_from([b":", b": ", b":\t", b": \t ", b":   "]),
    "value": st.one_of(st.sampled_from(_VALUES), st.lists(st.sampled_from(list(_PRINTABLE)), max_size=24).map(bytes)),
    "conn": st.sampled_from([b"", b"Connection: keep-alive\r\n", b"connection:CLOSE\r\n"]),
}
_odd = {
    "method": st.sampled_from([b"CONNECT", b"get", b"TRACE", b"PRI", b"G T", b"", b"GET\t"]),
    "sp": st.sampled_from([b"  ", b"\t", b"", b" \r\n"]),
    "target": st.one_of(st.sampled_from([b"*", b"http://gw.test/x", b"gw.test:443", b"", b"/" + b"a" * 1024]),
                        st.tuples(st.sampled_from(list(b"#| \\^`{}\"<>\x00\x7f\xff\r\n")), st.sampled_from([b"/", b"/a?b"]))
                        .map(lambda t: t[1] + bytes([t[0]]))),
    "version": st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.10", b"HTTP/11"]),
    "eol": st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\r\n ", b"\r\n\t"]),
    "host": st.sampled_from([b"", H + H, b"Host: a b\r\n", b"Host: gw.test \r\n", b"Host : gw.test\r\n",
                             b"Host: u@gw.test\r\n", b"Host: gw.test/x\r\n"]),
    "name": st.one_of(st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Keep-Alive", b"TE", b"Upgrade",
                                       b"Proxy-Connection", b"Expect", b"Trailer", b"Host", b"Connection"]),
                      st.tuples(st.sampled_from(list(b"@( \t\x01\xff,;/")), st.sampled_from([b"", b"X"]))
                      .map(lambda t: t[1] + bytes([t[0]]))),
    "sep": st.sampled_from([b" :", b"\t:", b"", b" : "]),
    "value": st.tuples(st.sampled_from(list(b"\x00\x01\x0b\x7f\x80\xc3\xff\r\n")), st.sampled_from([b"", b"a"]))
                      .map(lambda t: t[1] + bytes([t[0]]) + t[1]),
    "conn": st.sampled_from([b"Connection: close \r\n", b"Connection: keep-alive, x\r\n", b"Connection: upgrade\r\n",
                             b"Connection: close\r\nConnection: close\r\n"]),
}
_PLACES = ["none"] * 6 + list(_good) + ["mutate"] * 3


@st.composite
def _mutated(draw):
    place = draw(st.sampled_from(_PLACES))
    n = draw(st.integers(0, 5))
    at = draw(st.integers(0, n))   # the line an odd line piece goes to (n: none of the lines)

    def piece(name, line=-1):
        odd = place == name and (line < 0 or line == at)
        return draw((_odd if odd else _good)[name])

    lines = [piece("name", i) + piece("sep", i) + piece("value", i) + piece("eol", i) for i in range(n)]
    raw = (piece("method") + piece("sp") + piece("target") + b" " + piece("version") + piece("eol")
           + piece("host") + b"".join(lines) + piece("conn") + b"\r\n")
    if place == "mutate":
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        c = bytes([draw(st.sampled_from(list(b" \t\r\n:\x00\x7f\x80aZ/")))])
        raw = raw[:i] + (b"" if op == "delete" else c) + raw[i + (op != "insert"):]
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzzed_heads_read_the_same_both_ways(raw):
    _same([raw] + FOLLOW[:1])
