"""PROXY protocol v1/v2: the parser (tables and hypothesis), the connection gate (fed bytes
through a fake transport, no sockets), and the listener end to end (plain and TLS)."""

from __future__ import annotations

import socket
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.http.proxyproto import V2_SIG, ProxyHeader, ProxyProtocolError, ProxyProtocolGate, build_v1, build_v2, parse
from tests.support.config import ECHO_GET_ALL
from tests.support.certs import self_signed

# ---------------------------------------------------------------------- tables
V1_OK = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", ("tcp4", ("192.0.2.1", 56324), ("198.51.100.2", 443))),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", ("tcp6", ("2001:db8::1", 1), ("2001:db8::2", 65535))),
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::1 0 80\r\n", ("tcp6", ("::ffff:c000:201", 0), ("::1", 80))),
    (b"PROXY UNKNOWN\r\n", ("unknown", None, None)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ("unknown", None, None)),
]

V1_BAD = [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",            # missing a field
    b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",             # double space
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",            # family mismatch
    b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",          # port range
    b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",             # leading zero
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.001 198.51.100.2 1 2\r\n",            # octet with leading zeros
    b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",                # bare LF
    b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 2\r\n",             # bare CR
    b"PROXY TCP4 " + b"1" * 100 + b"\r\n",                     # longer than 107
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",             # trailing space
    b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                      # plain HTTP
    b"PROXX",
    b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + bytes(12),
]


def _v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIG + bytes([ver_cmd, fam]) + struct.pack("!H", len(body)) + body


V2_OK = [
    (build_v2(("10.1.2.3", 4000), ("10.0.0.1", 80)), ("proxy", "tcp4", ("10.1.2.3", 4000))),
    (build_v2(("2001:db8::7", 1), ("2001:db8::8", 2)), ("proxy", "tcp6", ("2001:db8::7", 1))),
    (build_v2(None, None, local=True), ("local", "unknown", None)),
    (_v2(0x20, 0x11, bytes(12)), ("local", "unknown", None)),                       # LOCAL ignores the block
    (_v2(0x21, 0x00, b""), ("proxy", "unknown", None)),                             # UNSPEC
    (_v2(0x21, 0x31, bytes(216)), ("proxy", "unix", None)),
    (build_v2(("10.1.2.3", 4000), ("10.0.0.1", 80), tlvs=[(0x01, b"h2"), (0xEE, b"")]),
     ("proxy", "tcp4", ("10.1.2.3", 4000))),
]

V2_BAD = [
    _v2(0x11, 0x11, bytes(12)),                 # version 1 in a v2 header
    _v2(0x22, 0x11, bytes(12)),                 # unknown command
    _v2(0x21, 0x41, bytes(12)),                 # unknown family
    _v2(0x21, 0x12, bytes(12)),                 # DGRAM on a stream listener
    _v2(0x21, 0x11, bytes(11)),                 # address block too short
    _v2(0x21, 0x21, bytes(20)),
    _v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05ab"),   # TLV longer than the header
    _v2(0x21, 0x11, bytes(12) + b"\x01\x00"),         # truncated TLV
]


@pytest.mark.parametrize("raw,want", V1_OK)
def test_v1_valid(raw, want):
    hdr, n = parse(raw + b"GET / HTTP/1.1\r\n")
    assert n == len(raw)
    assert (hdr.version, hdr.command) == (1, "proxy")
    assert (hdr.family, hdr.src, hdr.dst) == want


@pytest.mark.parametrize("raw", V1_BAD + V2_BAD)
def test_invalid_headers_raise(raw):
    with pytest.raises(ProxyProtocolError):
        parse(raw + b"rest")


@pytest.mark.parametrize("raw,want", V2_OK)
def test_v2_valid(raw, want):
    hdr, n = parse(raw + b"\x16\x03\x01")
    assert n == len(raw)
    assert (hdr.command, hdr.family, hdr.src) == want
    assert hdr.client == (want[2] if want[0] == "proxy" else None)


def test_v2_tlvs_are_kept_raw():
    hdr, _ = parse(build_v2(("10.1.2.3", 4000), ("10.0.0.1", 80), tlvs=[(0x01, b"h2"), (0xEE, b"xyz")]))
    assert hdr.tlvs == ((0x01, b"h2"), (0xEE, b"xyz"))


@pytest.mark.parametrize("raw", [r for r, _ in V1_OK + V2_OK])
def test_every_prefix_of_a_valid_header_asks_for_more(raw):
    for i in range(len(raw)):
        assert parse(raw[:i]) is None, raw[:i]


def test_unknown_line_means_the_socket_address():
    hdr, _ = parse(b"PROXY UNKNOWN\r\n")
    assert hdr.client is None


# ---------------------------------------------------------------------- hypothesis
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_crash(data):
    try:
        got = parse(data)
    except ProxyProtocolError:
        return
    if got is not None:
        hdr, n = got
        assert isinstance(hdr, ProxyHeader) and 0 < n <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["v1", "v2"]), st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports,
       st.binary(max_size=200), st.integers(1, 40))
def test_fuzz_roundtrip_and_bytes_after_the_header_are_intact(ver, addrs, sport, dport, rest, cut):
    src, dst = (addrs[0], sport), (addrs[1], dport)
    raw = build_v1(src, dst) if ver == "v1" else build_v2(src, dst)
    hdr, n = parse(raw + rest)
    assert n == len(raw) and (raw + rest)[n:] == rest
    import ipaddress
    assert ipaddress.ip_address(hdr.client[0]) == ipaddress.ip_address(src[0]) and hdr.client[1] == sport
    # fed in two pieces: None until complete, then the same answer
    cut = min(cut, len(raw) - 1)
    assert parse(raw[:cut]) is None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([r for r, _ in V1_OK + V2_OK]), st.integers(0, 300), st.integers(0, 255))
def test_fuzz_mutated_headers_fail_cleanly(raw, pos, byte):
    data = bytearray(raw + b"tail")
    data[pos % len(data)] = byte
    try:
        got = parse(bytes(data))
    except ProxyProtocolError:
        return
    if got is not None:
        assert got[1] <= len(data)


# ---------------------------------------------------------------------- the gate, with a fake transport
class FakeTransport:
    def __init__(self, peer=("127.0.0.1", 5555)):
        self.peer = peer
        self.protocol = None
        self.aborted = False

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def set_protocol(self, p):
        self.protocol = p

    def abort(self):
        self.aborted = True


class FakeInner:
    def __init__(self):
        self.events = []
        self.peer_ip, self.peer_port = "", 0
        self.closed = False

    def connection_made(self, t):
        peer = t.get_extra_info("peername")
        self.peer_ip, self.peer_port = peer
        self.events.append(("made", t))

    def data_received(self, d):
        self.events.append(("data", d))


class FakeLoop:
    def __init__(self):
        self.timers = []

    def call_later(self, delay, fn):
        h = _Handle(delay, fn)
        self.timers.append(h)
        return h


class _Handle:
    def __init__(self, delay, fn):
        self.delay, self.fn, self.cancelled = delay, fn, False

    def cancel(self):
        self.cancelled = True


def _gate(trusted=True, peer=("127.0.0.1", 5555)):
    inners, rejects = [], []

    def make():
        inners.append(FakeInner())
        return inners[-1]

    loop = FakeLoop()
    g = ProxyProtocolGate(make, lambda ip: trusted, loop, timeout=2.0, on_reject=rejects.append)
    t = FakeTransport(peer)
    g.connection_made(t)
    return g, t, loop, inners, rejects


def test_gate_hands_off_with_the_header_address_and_the_rest_intact():
    g, t, loop, inners, rejects = _gate()
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = build_v1(("203.0.113.9", 40000), ("10.0.0.1", 80))
    g.data_received(raw[:10])
    assert not inners
    g.data_received(raw[10:] + req)
    (inner,) = inners
    assert t.protocol is inner
    assert inner.events == [("made", t), ("data", req)]
    assert (inner.peer_ip, inner.peer_port) == ("203.0.113.9", 40000)
    assert loop.timers[0].cancelled and not rejects and not t.aborted


def test_gate_local_keeps_the_socket_address():
    g, t, loop, inners, rejects = _gate()
    g.data_received(build_v2(None, None, local=True))
    (inner,) = inners
    assert inner.peer_ip == "127.0.0.1" and inner.events == [("made", t)]


def test_gate_untrusted_source_is_plain_http():
    g, t, loop, inners, rejects = _gate(trusted=False, peer=("198.51.100.7", 1234))
    (inner,) = inners                      # handed off at connection_made, nothing parsed
    assert t.protocol is inner and inner.peer_ip == "198.51.100.7" and not loop.timers


def test_gate_rejects_a_missing_header():
    g, t, loop, inners, rejects = _gate()
    g.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert t.aborted and not inners and rejects == ["not a PROXY protocol header"]


def test_gate_times_out_without_a_header():
    g, t, loop, inners, rejects = _gate()
    g.data_received(b"PROXY TCP4 1.2.3.4")
    loop.timers[0].fn()
    assert t.aborted and not inners and "within 2s" in rejects[0]


def test_gate_eof_before_the_header():
    g, t, loop, inners, rejects = _gate()
    assert g.eof_received() is False
    assert t.aborted and rejects


# ---------------------------------------------------------------------- end to end
PP_CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: []
  proxy_protocol:
    enabled: true
    trusted_cidrs: ["127.0.0.1/32"]
{TLS}
""" + ECHO_GET_ALL + """monitoring:
  metrics_port: 0
  logging:
    level: warning
    access_log: {enabled: false}
"""


def _exchange(port, data: bytes, *, tls=False, header=b"", timeout=5.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(header)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


REQ = b"GET /pp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def up():
    from tests.support.upstream import EchoUpstream
    with EchoUpstream() as u:
        yield u


@pytest.mark.timeout(60)
def test_listener_with_proxy_protocol(up):
    from tests.support.gateway import Gateway
    with Gateway(PP_CONFIG.replace("{TLS}", ""), workers=1, upstream=up) as gw:
        out = _exchange(gw.port, REQ, header=build_v1(("203.0.113.5", 41000), ("127.0.0.1", gw.port)))
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        assert up.requests[-1]["headers"]["x-forwarded-for"] == "203.0.113.5"
        out = _exchange(gw.port, REQ, header=build_v2(("2001:db8::5", 41000), ("2001:db8::1", 80)))
        assert out.startswith(b"HTTP/1.1 200")
        assert up.requests[-1]["headers"]["x-forwarded-for"] == "2001:db8::5"
        out = _exchange(gw.port, REQ, header=build_v2(None, None, local=True))
        assert out.startswith(b"HTTP/1.1 200")
        assert up.requests[-1]["headers"]["x-forwarded-for"] == "127.0.0.1"
        n = len(up.requests)
        assert _exchange(gw.port, REQ) == b""                    # required from a trusted source: closed
        assert _exchange(gw.port, REQ, header=b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n") == b""
        assert len(up.requests) == n
        from tests.support.procs import metrics_text, series
        from tests.support.waiting import wait_for
        assert wait_for(lambda: series(metrics_text(gw), "fastgw_proxy_protocol_rejected_total") == {"": 2})


@pytest.mark.timeout(60)
def test_listener_untrusted_source_is_plain_http(up):
    from tests.support.gateway import Gateway
    text = PP_CONFIG.replace("{TLS}", "").replace('["127.0.0.1/32"]', '["10.0.0.0/8"]')
    with Gateway(text, workers=1, upstream=up) as gw:
        out = _exchange(gw.port, REQ)
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        assert up.requests[-1]["headers"]["x-forwarded-for"] == "127.0.0.1"
        # a header from an untrusted source is not believed: it is a malformed request
        out = _exchange(gw.port, REQ, header=build_v1(("203.0.113.5", 1), ("127.0.0.1", 2)))
        assert out.startswith(b"HTTP/1.1 400"), out[:200]


@pytest.mark.timeout(60)
def test_listener_with_proxy_protocol_and_tls(up, tmp_path):
    from tests.support.gateway import Gateway
    cp, kp, _ = self_signed(tmp_path)
    tls = f"  tls: {{cert_file: {cp}, key_file: {kp}}}"
    with Gateway(PP_CONFIG.replace("{TLS}", tls), workers=1, upstream=up) as gw:
        # the header is cleartext, then TLS
        out = _exchange(gw.port, REQ, tls=True, header=build_v2(("198.51.100.20", 5000), ("127.0.0.1", 443)))
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        rec = up.requests[-1]
        assert rec["headers"]["x-forwarded-for"] == "198.51.100.20"
        assert rec["headers"].get("x-forwarded-proto") == "https"
        # header and ClientHello in one segment
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, outb, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(build_v1(("192.0.2.44", 1), ("127.0.0.1", 2)) + outb.read())
        while True:
            data = s.recv(65536)
            assert data, "closed during the handshake"
            inc.write(data)
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outb.pending:
                    s.sendall(outb.read())
        if outb.pending:
            s.sendall(outb.read())
        obj.write(REQ)
        s.sendall(outb.read())
        resp = b""
        while b"\r\n\r\n" not in resp:
            data = s.recv(65536)
            if not data:
                break
            inc.write(data)
            try:
                resp += obj.read(65536)
            except ssl.SSLWantReadError:
                pass
        s.close()
        assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
        assert up.requests[-1]["headers"]["x-forwarded-for"] == "192.0.2.44"
