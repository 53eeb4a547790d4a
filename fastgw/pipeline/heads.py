"""Head builders (L4): the request head sent upstream, the response head sent to the client.

Both produce one ``bytes`` object, so each message leaves in one write.  The response
side forwards the upstream's raw header block: only hop-by-hop and framing lines are cut
(found with one regex over a lower-cased copy), and a ``ResponseHead`` that parses the
block is made only when the route has response filters or the upstream's Connection
header names other headers.
"""

from __future__ import annotations

import re

from fastgw.http.messages import RequestHead, ResponseHead
from fastgw.http.wire import CRLF, connection_tokens, serialize_headers, status_line

_H_CL = b"content-length"
_H_TE = b"transfer-encoding"
# Hop-by-hop and framing lines of a lower-cased, llhttp-validated response header block
# with a "\n" prepended (llhttp refuses whitespace before a colon, so "\nname:" is exact).
# Anchoring on "\n" instead of ^ with re.M halves the regex's cost (callgrind).
_FRAMING = re.compile(
    rb"\n(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade|"
    rb"proxy-authenticate|proxy-authorization|content-length):").finditer


def request_head(ctx, route, peer) -> bytes:
    """The request head for the upstream, as one bytes object."""
    target = peer.base_path + ctx.path.encode("latin-1")
    if ctx.query:
        target += b"?" + ctx.query
    headers = ctx.headers
    conn_hdr = ctx.conn_hdr
    if conn_hdr is not None:
        listed = connection_tokens(conn_hdr) - {b"close", b"keep-alive", b"upgrade"}
        if listed:
            headers = [h for h in headers if h[0].lower() not in listed]
    if route.chain.upstream_request:
        head = RequestHead(ctx.method_b, target, list(headers))
        for fn in route.chain.upstream_request:
            fn(ctx, head)
        target, headers = head.target, head.headers
    raw_host = ctx.raw_host or b""
    out = [ctx.method_b, b" ", target, b" HTTP/1.1\r\nhost: ",
           raw_host if route.preserve_host and raw_host else peer.host_header, CRLF]
    if headers:
        out.append(b"".join([b"%s: %s\r\n" % h for h in headers]))
    if ctx.upstream_headers:
        out.append(b"".join([b"%s: %s\r\n" % h for h in ctx.upstream_headers]))
    peer_ip = ctx.peer_ip.encode("latin-1")
    xff = ctx.xff
    out.append(b"x-forwarded-for: ")
    out.append(xff + b", " + peer_ip if (xff is not None and ctx.trusted_peer) else peer_ip)
    out.append(b"\r\nx-forwarded-proto: ")
    out.append(ctx.scheme.encode("ascii"))
    if raw_host:
        out.append(b"\r\nx-forwarded-host: ")
        out.append(raw_host)
    out.append(CRLF)
    if ctx.upgrade is not None:
        out.append(b"connection: upgrade\r\nupgrade: ")
        out.append(ctx.upgrade)
        out.append(CRLF)
    if ctx.content_length is not None:
        out.append(b"content-length: %d\r\n" % ctx.content_length)
    elif ctx.chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    out.append(CRLF)
    return b"".join(out)


def response_head(ctx, up, status: int, reason: bytes, block: bytes, draining: bool, server_header) -> bytes:
    """The response head for the client, from the upstream's raw header block.

    The block is forwarded as bytes; only hop-by-hop and framing lines are cut (found
    with one regex over its lower-cased copy).  Response filters get a ResponseHead
    that parses the block only if a filter looks at the headers.
    """
    route = ctx.route
    chunked = False
    has_cl = False
    cuts = None
    listed = None
    low = b"\n" + block.lower()
    cl_span = None
    for m in _FRAMING(low):
        name = m.group(1)
        a = m.start()                      # the line starts at block[a] (low is shifted by 1)
        b = low.find(b"\n", m.end())       # its "\n" is at block[b - 1]: the line is block[a:b]
        if name == _H_CL:
            has_cl = True
            cl_span = (a, b)
            continue
        if name == _H_TE:
            chunked = True
        elif name == b"connection":
            v = low[m.end():b - 1].strip(b" \t")
            if v != b"keep-alive" and v != b"close":
                listed = connection_tokens(v) - {b"close", b"keep-alive"}
        if cuts is None:
            cuts = []
        cuts.append((a, b))
    if chunked and has_cl:
        # Transfer-Encoding wins (RFC 9112 6.3): the body arrives de-chunked, so the
        # upstream's Content-Length must not reach the client.
        has_cl = False
        cuts.append(cl_span)
        cuts.sort()
    if cuts is not None:
        parts = []
        pos = 0
        for a, b in cuts:
            parts.append(block[pos:a])
            pos = b
        parts.append(block[pos:])
        block = b"".join(parts)
    if route.chain.response or listed:
        head = ResponseHead(status, reason, raw=block)
        if listed:
            head.headers = [h for h in head.headers if h[0].lower() not in listed]
        for _i, fn in route.chain.response:
            fn(ctx, head)
        status = head.status
        block = head.block()
    bodyless = ctx.method == "HEAD" or status in (204, 304) or status < 200
    down = up.down
    # (an answer before the request body was read: the connection ends with it)
    keep_client = ctx.keep_alive and not draining and down is not None and \
        not down.draining and down.cur_complete
    extra = b""
    if status == 101:
        keep_client = True
        extra = b"connection: upgrade\r\nupgrade: " + (ctx.upgrade or b"websocket") + CRLF
    elif not bodyless and not has_cl:
        # No Content-Length: a chunked or read-until-close upstream body.  HTTP/1.1
        # clients get it chunked; HTTP/1.0 clients get it close-delimited.
        if ctx.version == "1.1":
            up.rechunk = True
            extra = b"transfer-encoding: chunked\r\n"
        else:
            keep_client = False
        if not chunked:
            up.close_delimited = True
    ctx.keep_alive = keep_client
    ctx.status = status
    out = [status_line(status, reason), ]
    if server_header:
        out.append(server_header)
    out.append(block)
    if ctx.resp_headers:
        serialize_headers(out, ctx.resp_headers)
    if extra:
        out.append(extra)
    if status != 101:
        if not keep_client:
            out.append(b"connection: close\r\n")
        elif ctx.version == "1.0":
            out.append(b"connection: keep-alive\r\n")
    out.append(CRLF)
    return b"".join(out)
