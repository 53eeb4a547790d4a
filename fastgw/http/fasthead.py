"""The usual request head read without the parser's callbacks (L3 helper of ``http.protocol``).

Most requests arrive in one read that holds exactly one head and nothing else: a
bodiless request (GET, HEAD, ...) with a few ordinary header lines.  For those the
client protocol skips ``httptools``: the head is recognised here and its ``Request`` is
made in one step (``on_url``, one ``on_header`` per line, ``on_headers_complete``,
``on_message_complete`` and llhttp's pass over the bytes less per request).  Everything
else, and any doubt, goes to the parser, which has seen none of those bytes.

Rules:
1. What this accepts, llhttp in strict mode (the protocol's parser, no leniency flag)
   accepts with the same meaning, and the protocol's parser path would dispatch it
   without an error; it accepts less.  A head that would get an error answer is
   declined, so every error still comes from the parser path, with its status.
2. The read is one whole head: its first empty line ends it (no body, no pipelined
   request), and all of it matches ``_REQUEST_LINE`` and ``_LINES``.  The request line is
   ``METHOD SP target SP HTTP/1.1 CRLF`` with a method of ``reqhead.METHODS`` (no
   CONNECT), an origin-form target of RFC 3986 path and query characters (no ``#``, no
   space, no control, no obs-text); header lines are ``token ":" OWS value CRLF`` with a
   value of printable ASCII, SP and HTAB only (no obs-text, no folding, no whitespace
   before the colon, no bare CR or LF).  The value is what llhttp reports: leading OWS
   dropped, trailing OWS kept.
3. Framing: no Content-Length and no Transfer-Encoding (so the request has no body,
   whatever its method), no Upgrade, Expect or hop-by-hop line (``Keep-Alive``, ``TE``,
   ``Proxy-Connection``, ...), at most one Connection line whose value is ``close`` or
   ``keep-alive`` (any case, nothing around it): keep-alive is then what llhttp says for
   HTTP/1.1.  Exactly one Host, valid (``reqhead.valid_host``).
4. The limits (``ConnInfo``: request line, one header line, all lines, the number of
   forwarded lines) are checked as the parser's callbacks check them; a head over one
   is declined (the parser answers it).
5. Fields are what the parser path sets (``http.protocol.on_header`` and
   ``on_headers_complete``): the same classification (``reqhead.special_kind``),
   forwarded lines, captured values, dropped underscore names and X-Forwarded lines.
6. A verdict is a pure function of the head's bytes and the listener's settings (the
   limits, TLS), so it is remembered per ``ConnInfo`` (``heads``: bounded, cleared when
   full): a client sends the same head again and again.  It is made on a head's second
   read (the first is only noted): a head that never comes again costs a dict insert
   more than the parser, not a verdict.  The verdict on an accepted head is the template of
   its ``Request`` (immutable values; the header list is copied per request, the
   header map is shared).

The protocol tries this only when its parser is at a message boundary with no byte of
a new message seen (``DownstreamProtocol.fresh``) and after keep-alive requests only:
llhttp keeps no other state across messages.  After a request this made that does not
keep alive (``Connection: close``), the protocol's parser becomes ``CLOSED``: what llhttp
is after such a message, which it has not seen.
"""

from __future__ import annotations

import re

from httptools import HttpParserError

from fastgw.http.reqhead import (H_AUTHZ, H_CONN, H_HOST, H_ORIGIN, H_RID, H_TRACE, H_UA, H_XFF, H_XFH, H_XFP,
                                 H_XFWD, METHODS, REPEATED, special_kind, valid_host)
from fastgw.http.request import Request

# rule 2: the request line (matched at the start of the read), then the header lines,
# each from the LF before it to its CR (followed by LF): over the bytes from the request
# line's LF to the head's last LF, a head is well-formed when every LF but the last one
# starts a line that matches (``_template``), so nothing between them goes unchecked.
# The greedy OWS leaves the value as llhttp reports it (leading OWS dropped).
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*) "
                           rb"HTTP/1\.1\r\n").match
_LINES = re.compile(rb"\n(" + _TCHAR + rb"+):[\t ]*([\t\x20-\x7e]*)\r(?=\n)").findall
_CONN_VALUES = (b"close", b"keep-alive")

MAX_HEAD = 4096
HEADS_SIZE = 256
NO = False   # the verdict on a head the parser must read
# valid Host values and their str form (a gateway sees few): what a new head's verdict
# would otherwise check with a regex
_HOSTS: dict[bytes, str] = {}

_new = object.__new__


def verdict(data: bytes, info):
    """The template of the Request ``data`` (one whole head) is, or ``NO`` (the parser
    reads it); remembered in ``info.heads`` (rule 6).  A read seen for the first time is
    only noted (``None``), and read by the parser: a verdict costs about what the
    parser's callbacks cost, so it is worth making for a head that comes again, not for
    every new one (a new query string, a new token)."""
    if len(data) > MAX_HEAD:
        return NO
    heads = info.heads
    if data not in heads:
        if len(heads) >= HEADS_SIZE:
            heads.clear()
        heads[data] = None
        return NO
    if data.find(b"\r\n\r\n") != len(data) - 4:
        v = NO   # not one whole head (a body, a pipelined request)
    else:
        v = _template(data, info)
    heads[data] = v
    return v


def _template(data: bytes, info):
    m = _REQUEST_LINE(data)
    if m is None:
        return NO
    method_b, target = m.groups()
    if len(target) > info.max_request_line:
        return NO
    block = data[m.end() - 1:-2]   # (data ends with CRLF CRLF: verdict)
    lines = _LINES(block)
    if len(lines) != block.count(b"\n") - 1:
        return NO
    max_line = info.max_header_size
    size = 0
    fwd = []
    host = conn = xff = xfp = xfh = authz = origin = ua = rid = None
    hosts = 0
    trace = False
    for name, value in lines:
        n = len(name) + len(value)
        if n > max_line:
            return NO
        size += n
        kind = special_kind(name.lower())
        if kind is None:
            if 95 not in name:   # "_": dropped, as on the parser's path (http.protocol.on_header)
                fwd.append((name, value))
        elif kind >= H_RID:
            fwd.append((name, value))
            if kind == H_UA:
                ua = value
            elif kind == H_AUTHZ:
                authz = value if authz is None else REPEATED
            elif kind == H_ORIGIN:
                origin = value
            elif kind == H_TRACE:
                trace = True
            else:
                rid = value
        elif kind == H_HOST:
            hosts += 1
            host = value
        elif kind == H_CONN:
            if conn is not None or value.lower() not in _CONN_VALUES:
                return NO
            conn = value
        elif kind == H_XFF:
            xff = value if xff is None else xff + b", " + value
        elif kind == H_XFP:
            xfp = value
        elif kind == H_XFH:
            xfh = value
        elif kind != H_XFWD:   # Content-Length, Transfer-Encoding, Upgrade, Expect, hop-by-hop
            return NO
    if size > info.max_headers_size or len(fwd) > info.max_headers or hosts != 1:
        return NO
    host_str = _HOSTS.get(host)
    if host_str is None:
        if not valid_host(host):
            return NO
        if len(_HOSTS) >= HEADS_SIZE:
            _HOSTS.clear()
        host_str = _HOSTS[host] = host.decode("latin-1").lower()
    keep = conn is None or conn.lower() != b"close"
    # the order of new_request's unpacking; the header map (``Request.header``) built
    # here once, for every request of this head (no one writes to it)
    return (METHODS[method_b], method_b, target, "1.1", "/", b"", host_str, host,
            tuple(fwd), keep, conn, None, None, xff, xfp, xfh, authz, origin, ua, rid, trace,
            {n.lower(): v for n, v in fwd}, None, False, 0, None, True, None, info.tls)


def new_request(v, proto) -> Request:
    """The Request of template ``v`` on connection ``proto``: every field the parser's path
    sets (``request.start_request`` and ``protocol.on_headers_complete``), in one unpacking."""
    req = _new(Request)
    (req.method, req.method_b, req.raw_target, req.version, req.path, req.query, req.host, req.raw_host,
     fwd, req.keep_alive, req.conn_hdr, req.expect, req.upgrade, req.xff, req.xfp, req.xfh,
     req.authorization, req.origin, req.user_agent, req.x_request_id, req.trace_hdrs,
     req.hmap, req.content_length, req.chunked, req.bytes_received, req.qbody, req.qcomplete, req.exchange,
     req.tls) = v
    req.headers = [*fwd]
    req.peer_ip = proto.peer_ip
    return req


class Closed:
    """llhttp after a message that does not keep the connection alive: CR and LF are
    skipped, any other byte is an error (strict mode)."""

    __slots__ = ()

    def feed_data(self, data) -> None:
        if data.strip(b"\r\n"):
            raise HttpParserError("Data after `Connection: close`")


CLOSED = Closed()
