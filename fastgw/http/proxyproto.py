"""PROXY protocol v1 and v2 on the data listener (L2): the parser and the connection gate.

A TCP load balancer that terminates nothing (AWS NLB, HAProxy in ``mode tcp``) hides the
client's address; with PROXY protocol it writes the address in a header before the
client's first byte.  This module owns reading that header:

- ``parse(buf)`` is a pure, hand-written parser for both versions.  It returns ``None``
  while the header is incomplete, ``(header, consumed)`` when it is complete, and raises
  ``ProxyProtocolError`` as soon as the bytes cannot be the start of a valid header.  It
  never reads past the header: ``buf[consumed:]`` is the client's own data, forwarded
  intact.  It is fuzzed with hypothesis (tests/http/test_proxyproto.py).
- ``ProxyProtocolGate`` is an ``asyncio.Protocol`` put in front of the HTTP protocol on
  the listener.  It reads the header, then hands the transport to the real protocol
  (``transport.set_protocol``), replays the bytes that followed the header, and sets the
  address the engine uses for the client (``proto.peer_ip``/``peer_port``).  With
  listener TLS the TLS session starts *after* the header (the header is cleartext), so
  the gate starts it itself with the stdlib's ``asyncio.sslproto.SSLProtocol``.

Rules this file keeps:

1. A header is read only from a trusted source (``gateway.proxy_protocol.trusted_cidrs``,
   default ``gateway.trusted_proxies``).  From a trusted source it is required: no valid
   header within ``timeout`` (or garbage) closes the connection, nothing is answered.
   From any other source nothing is parsed: the connection is plain HTTP and its socket
   address is the client address (a header sent anyway is a malformed request, 400), so
   nobody outside the trusted networks can choose the address the gateway believes.
2. v1: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or ``PROXY UNKNOWN...\\r\\n``,
   at most 107 bytes, single spaces, addresses of the stated family, ports 0-65535
   without leading zeros.  v2: the 12-byte signature, version 2, command LOCAL or PROXY,
   family UNSPEC/INET/INET6/UNIX over STREAM or UNSPEC; TLVs are walked for framing and
   kept raw, unknown types ignored.
3. LOCAL (v2), UNKNOWN (v1), UNSPEC and UNIX addresses carry no client address: the
   socket's address is kept (a load balancer's own health check uses LOCAL).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

V1_PREFIX = b"PROXY "
V1_MAX = 107                     # the spec's longest v1 line, CRLF included
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16                   # signature + ver/cmd + fam/proto + length
V2_MAX = V2_HEADER + 0xFFFF

_V2_ADDR_LEN = {0x1: 12, 0x2: 36, 0x3: 216}   # INET, INET6, UNIX
_PORT_DIGITS = frozenset(b"0123456789")


class ProxyProtocolError(ValueError):
    """The bytes are not (the start of) a valid PROXY protocol header."""


class ProxyHeader(NamedTuple):
    version: int                          # 1 or 2
    command: str                          # "proxy" or "local"
    family: str                           # "tcp4", "tcp6", "unix", "unknown"
    src: tuple[str, int] | None           # the client, when the header carries one
    dst: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def client(self) -> tuple[str, int] | None:
        """The address to use for the client, or None to keep the socket's."""
        return self.src if self.command == "proxy" and self.family in ("tcp4", "tcp6") else None


def parse(buf) -> tuple[ProxyHeader, int] | None:
    """The header at the start of ``buf``: ``(header, bytes consumed)``, or ``None`` if more
    bytes are needed.  Raises ``ProxyProtocolError`` when ``buf`` cannot start a header."""
    data = bytes(buf[:V2_MAX]) if not isinstance(buf, bytes) else buf
    n = len(data)
    if n == 0:
        return None
    if data[0] == 0x50:                                       # "P": v1
        if n < len(V1_PREFIX):
            if V1_PREFIX.startswith(data):
                return None
            raise ProxyProtocolError("not a PROXY protocol header")
        if not data.startswith(V1_PREFIX):
            raise ProxyProtocolError("not a PROXY protocol header")
        return _parse_v1(data)
    if data[0] == 0x0D:                                       # "\r": v2
        if n < len(V2_SIG):
            if V2_SIG.startswith(data):
                return None
            raise ProxyProtocolError("not a PROXY protocol header")
        if not data.startswith(V2_SIG):
            raise ProxyProtocolError("not a PROXY protocol header")
        return _parse_v2(data)
    raise ProxyProtocolError("not a PROXY protocol header")


# ---------------------------------------------------------------------- v1
def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("PROXY v1 header with a bare CR or LF")
        return None
    line = data[:end]
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1 header with a bare CR or LF")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    parts = text.split(" ")
    proto = parts[1] if len(parts) > 1 else ""
    if proto == "UNKNOWN":
        # the rest of the line is ignored (the spec lets a sender put anything there)
        return ProxyHeader(1, "proxy", "unknown", None, None), end + 2
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1 header with an unknown protocol {proto[:16]!r}")
    if len(parts) != 6:
        raise ProxyProtocolError("PROXY v1 header must have 6 fields separated by single spaces")
    _, _, src, dst, sport, dport = parts
    want = ipaddress.IPv4Address if proto == "TCP4" else ipaddress.IPv6Address
    src_ip, dst_ip = _v1_addr(src, want), _v1_addr(dst, want)
    family = "tcp4" if proto == "TCP4" else "tcp6"
    return ProxyHeader(1, "proxy", family, (src_ip, _v1_port(sport)), (dst_ip, _v1_port(dport))), end + 2


def _v1_addr(s: str, want) -> str:
    try:
        return str(want(s))
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 header with an invalid address {s[:48]!r}") from None


def _v1_port(s: str) -> int:
    b = s.encode()
    if not b or len(b) > 5 or not set(b) <= _PORT_DIGITS or (len(b) > 1 and b[0] == 0x30):
        raise ProxyProtocolError(f"PROXY v1 header with an invalid port {s[:8]!r}")
    port = int(s)
    if port > 65535:
        raise ProxyProtocolError(f"PROXY v1 header with an invalid port {s!r}")
    return port


# ---------------------------------------------------------------------- v2
def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < V2_HEADER:
        return None
    ver_cmd, fam_proto, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {ver_cmd >> 4}")
    cmd = ver_cmd & 0xF
    if cmd not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header with an unknown command {cmd}")
    family, transport = fam_proto >> 4, fam_proto & 0xF
    if family > 3 or transport > 2:
        raise ProxyProtocolError(f"PROXY v2 header with an unknown address family/protocol 0x{fam_proto:02x}")
    total = V2_HEADER + length
    if len(data) < total:
        return None
    body = data[V2_HEADER:total]
    if cmd == 0:                              # LOCAL: the sender's own connection; ignore the block
        return ProxyHeader(2, "local", "unknown", None, None), total
    if transport == 2:
        raise ProxyProtocolError("PROXY v2 header for a datagram connection on a stream listener")
    alen = _V2_ADDR_LEN.get(family, 0) if transport == 1 else 0
    if len(body) < alen:
        raise ProxyProtocolError(f"PROXY v2 address block too short ({len(body)} < {alen} bytes)")
    src = dst = None
    fam_name = "unknown"
    if alen == 12:
        src = (str(ipaddress.IPv4Address(body[0:4])), struct.unpack_from("!H", body, 8)[0])
        dst = (str(ipaddress.IPv4Address(body[4:8])), struct.unpack_from("!H", body, 10)[0])
        fam_name = "tcp4"
    elif alen == 36:
        src = (str(ipaddress.IPv6Address(body[0:16])), struct.unpack_from("!H", body, 32)[0])
        dst = (str(ipaddress.IPv6Address(body[16:32])), struct.unpack_from("!H", body, 34)[0])
        fam_name = "tcp6"
    elif alen == 216:
        fam_name = "unix"
    tlvs = _tlvs(body[alen:]) if family and transport else ()
    return ProxyHeader(2, "proxy", fam_name, src, dst, tlvs), total


def _tlvs(b: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    i, n = 0, len(b)
    while i < n:
        if n - i < 3:
            raise ProxyProtocolError("PROXY v2 TLV truncated")
        t, ln = b[i], struct.unpack_from("!H", b, i + 1)[0]
        if i + 3 + ln > n:
            raise ProxyProtocolError("PROXY v2 TLV longer than the header")
        out.append((t, b[i + 3:i + 3 + ln]))
        i += 3 + ln
    return tuple(out)


# ---------------------------------------------------------------------- building (tests, tools)
def build_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """A v1 header; ``src=None`` gives ``PROXY UNKNOWN``."""
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def build_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None, *, local: bool = False,
             tlvs=()) -> bytes:
    """A v2 header (PROXY over STREAM, or LOCAL when ``local`` or no address)."""
    tlv = b"".join(bytes([t]) + struct.pack("!H", len(v)) + v for t, v in tlvs)
    if local or src is None or dst is None:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", len(tlv)) + tlv
    if ":" in src[0]:
        fam, a = 0x21, (ipaddress.IPv6Address(src[0]).packed + ipaddress.IPv6Address(dst[0]).packed)
    else:
        fam, a = 0x11, (ipaddress.IPv4Address(src[0]).packed + ipaddress.IPv4Address(dst[0]).packed)
    body = a + struct.pack("!HH", src[1], dst[1]) + tlv
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


# ---------------------------------------------------------------------- the connection gate
class ProxyProtocolGate:
    """The first protocol of a connection on a PROXY-protocol listener (see rule 1).

    ``make_inner()`` builds the HTTP protocol (``DownstreamProtocol``); ``is_trusted(ip)``
    says whether a header is read from ``ip``; ``ssl_ctx`` starts TLS after the header;
    ``on_reject(reason)`` is told about every connection closed for a bad header.
    """

    __slots__ = ("make_inner", "is_trusted", "loop", "timeout", "ssl_ctx", "on_reject",
                 "transport", "buf", "timer", "done")

    def __init__(self, make_inner, is_trusted, loop, *, timeout: float = 10.0, ssl_ctx=None,
                 on_reject=None) -> None:
        self.make_inner = make_inner
        self.is_trusted = is_trusted
        self.loop = loop
        self.timeout = timeout
        self.ssl_ctx = ssl_ctx
        self.on_reject = on_reject
        self.transport = None
        self.buf = b""
        self.timer = None
        self.done = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        if not self.is_trusted(ip):
            self._hand_off(None, b"")
            return
        self.timer = self.loop.call_later(self.timeout, self._on_timeout)

    def data_received(self, data: bytes) -> None:
        if self.done:                      # only if the transport still calls us after hand-off
            return
        self.buf += data
        try:
            got = parse(self.buf)
        except ProxyProtocolError as e:
            self._reject(str(e))
            return
        if got is None:
            return
        header, used = got
        rest, self.buf = self.buf[used:], b""
        self._hand_off(header.client, rest)

    def eof_received(self):
        self._reject("connection closed before a complete PROXY header")
        return False

    def connection_lost(self, exc) -> None:
        self._cancel_timer()
        self.transport = None

    def pause_writing(self) -> None:       # nothing is written before the hand-off
        pass

    def resume_writing(self) -> None:
        pass

    def _on_timeout(self) -> None:
        self.timer = None
        if not self.done:
            self._reject(f"no PROXY header within {self.timeout:g}s")

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _reject(self, reason: str) -> None:
        self._cancel_timer()
        if self.done:
            return
        self.done = True
        if self.on_reject is not None:
            self.on_reject(reason)
        t = self.transport
        if t is not None:
            t.abort()

    def _hand_off(self, client, rest: bytes) -> None:
        self._cancel_timer()
        self.done = True
        t = self.transport
        inner = self.make_inner()
        if self.ssl_ctx is None:
            t.set_protocol(inner)
            inner.connection_made(t)
            _set_peer(inner, client)
            if rest and not getattr(inner, "closed", False):
                inner.data_received(rest)
            return
        from asyncio import sslproto

        shim = _AfterHandshake(inner, client)
        ssl_proto = sslproto.SSLProtocol(self.loop, shim, self.ssl_ctx, None, server_side=True,
                                         ssl_handshake_timeout=self.timeout)
        t.set_protocol(ssl_proto)
        ssl_proto.connection_made(t)
        mv = memoryview(rest)
        while mv:
            buf = ssl_proto.get_buffer(len(mv))
            k = min(len(buf), len(mv))
            buf[:k] = mv[:k]
            ssl_proto.buffer_updated(k)
            mv = mv[k:]


def _set_peer(inner, client) -> None:
    if client is not None:
        inner.peer_ip, inner.peer_port = client


class _AfterHandshake:
    """Stands in for the HTTP protocol until the TLS handshake is done, then steps aside:
    it sets the client address and makes the HTTP protocol the TLS transport's protocol."""

    __slots__ = ("inner", "client")

    def __init__(self, inner, client) -> None:
        self.inner = inner
        self.client = client

    def connection_made(self, transport) -> None:
        inner = self.inner
        transport.set_protocol(inner)
        inner.connection_made(transport)
        _set_peer(inner, self.client)

    def connection_lost(self, exc) -> None:   # the handshake failed: the HTTP protocol never started
        pass

    def data_received(self, data) -> None:    # not reached: set_protocol happens first
        self.inner.data_received(data)

    def eof_received(self):
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass
