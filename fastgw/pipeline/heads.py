"""Head builders (L4): the request head sent upstream, the response head sent to the client.

Both produce one ``bytes`` object, so each message leaves in one write.  The response
side forwards the upstream's raw header block: only hop-by-hop and framing lines are cut
(found with one regex call over a lower-cased copy, remembered per block), and a
``ResponseHead`` that parses the block is made only when the route has response filters
or the upstream's Connection header names other headers; not even then when every
response filter of the route has a raw-block form (``Chain.response_block``: they edit
the block itself).
"""

from __future__ import annotations

import re

from fastgw.http.messages import RequestHead, ResponseHead
from fastgw.http.wire import CLOSE_DELIMITED, CRLF, RECHUNK, STATUS_LINES, WHOLE, connection_tokens, cut_spans, \
    status_line

# Hop-by-hop and framing lines of a lower-cased, llhttp-validated response header block
# with a "\n" prepended (llhttp refuses whitespace before a colon, so "\nname:" is exact).
# Each match spans one whole line without its final "\n"; because of the prepended
# "\n", a match at [a, e) of the lower-cased copy is the line at [a, e) of the block,
# "\r\n" included.  The group that matched says which kind of line it is
# (``m.lastindex``): 1 Content-Length, 2 Transfer-Encoding, 4 Connection (3 is its name,
# 4 its value), None for the other hop-by-hop names.  Anchoring on "\n" instead of ^
# with re.M halves the regex's cost; one regex beats one ``find`` per name 2.5x
# (callgrind).
_FRAMING = re.compile(
    rb"\n(?:(content-length):|(transfer-encoding):|(connection):([^\r\n]*)|"
    rb"(?:keep-alive|proxy-connection|te|trailer|upgrade|proxy-authenticate|proxy-authorization):)"
    rb"[^\n]*").finditer
_CL, _TE, _CONN = 1, 2, 4
# The usual block first: one ``findall`` lists the hop-by-hop and framing names present
# (the same lower-cased copy, no match objects), and a block whose list is one of these
# (Content-Length and/or a Connection line, as nginx, uvicorn and most servers send) is
# cut by slicing; any other list goes to the general regex above.  Value: (has
# Content-Length, has a Connection line).  callgrind, an nginx-style block: 16.6k -> ~9k
# instructions (a ``finditer`` costs a regex state and a match object per line found).
_NAMES = re.compile(
    rb"\n(content-length|connection|transfer-encoding|keep-alive|proxy-connection|te|trailer|upgrade|"
    rb"proxy-authenticate|proxy-authorization):").findall
_USUAL = {(): (False, False), (b"content-length",): (True, False), (b"connection",): (False, True),
          (b"content-length", b"connection"): (True, True), (b"connection", b"content-length"): (True, True)}
# A lower-cased Connection value of the response that lists no header (with or without
# the space after the colon): both paths of response_head use it
_PLAIN_VALUE = frozenset({b" keep-alive", b" close", b"keep-alive", b"close"})
# Connection values that list no header to drop, in their usual spellings: a set lookup
# instead of tokenising the value (every "Connection: close" request; callgrind)
_PLAIN_CONN = frozenset({b"close", b"Close", b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade"})
_NO_BODY = frozenset({204, 304})
# The cut of recent header blocks (``_cut``: block -> (cut block, has Content-Length,
# chunked, listed)), so an upstream that sends the same head again (the same endpoint
# within the same second of its Date) costs one dict lookup instead of the lower-case
# copy, the regex and the slicing.  Cleared when full (a workload of ever-new blocks
# pays one failed lookup and one insert per response); blocks longer than
# CUT_CACHE_BLOCK are not kept (memory).  The values are never changed by the reader
# (``listed`` is only read or unioned into a new set).
_CUTS: dict[bytes, tuple] = {}
CUT_CACHE_SIZE = 256
CUT_CACHE_BLOCK = 1024
# ``ctx.notes`` key a response filter sets (with ``drop_length``) when its body filter will
# return the whole body at its end (the transform's JSON edits): the head then waits for
# the body and carries its Content-Length (``WHOLE``) instead of chunked framing
WHOLE_BODY_NOTE = "whole_body"


def request_head(x, route, peer) -> bytes:
    """The request head of one attempt, for the instance ``peer`` (an
    ``upstream.peer.Instance``: its ``host_header`` and ``base_path``), as one bytes object
    (one ``%`` format: the pieces are joined in C, and header lists are serialised with
    ``map`` over a C join, no Python call per header).  Every attempt calls it, so a
    retry on another instance carries that instance's Host and base path; the
    ``upstream_request_filter`` hooks run per attempt too."""
    # the instance's address: the one place this module reads it
    host_header, base_path = peer.host_header, peer.base_path
    req = x.request
    # the path step: the transform middleware's rewrite (``x.up_target``, path?query) or
    # the client's path and query, after the instance's base path (inline: no call)
    up = x.up_target
    if up is None:
        target = base_path + req.path.encode("latin-1")
        if req.query:
            target += b"?" + req.query
    else:
        target = base_path + up
    headers = x.fwd
    conn_hdr = req.conn_hdr
    if conn_hdr is not None and conn_hdr not in _PLAIN_CONN:
        listed = connection_tokens(conn_hdr) - {b"close", b"keep-alive", b"upgrade"}
        if listed:
            headers = [h for h in headers if h[0].lower() not in listed]
    if route.chain.upstream_request:
        head = RequestHead(req.method_b, target, list(headers))
        for fn in route.chain.upstream_request:
            fn(x, head)
        target, headers = head.target, head.headers
    # (``http.wire.header_lines`` inline: its C joins without a Python call per request)
    fwd = _join_lines(map(_colon_join, headers)) + CRLF if headers else b""
    peer_ip = _IP_BYTES.get(req.peer_ip) or _ip_bytes(req.peer_ip)
    xff = req.xff
    if xff is not None and x.trusted_peer:
        peer_ip = xff + b", " + peer_ip
    tail = b""
    if x.upgrade is not None:
        tail = b"connection: upgrade\r\nupgrade: " + x.upgrade + CRLF
    if x.content_length is not None:
        tail += b"content-length: %d\r\n" % x.content_length
    elif x.chunked:
        tail += b"transfer-encoding: chunked\r\n"
    raw_host = req.raw_host
    if raw_host:
        xfh = req.xfh
        if xfh is None or not x.trusted_peer or not x.app.trust_forwarded_host:
            xfh = raw_host  # the Host fastgw received (an incoming value is dropped)
        return _HEAD_XFH % (req.method_b, target, raw_host if route.preserve_host else host_header, fwd,
                            x.up_lines, peer_ip, b"https" if x.scheme == "https" else b"http", xfh, tail)
    if route.preserve_host:
        # HTTP/1.0 without Host: gateway.default_host, else the local address the client
        # connected to; never the upstream's address
        host_header = x.app.default_host or getattr(req, "local_host", None) or b"localhost"
    return _HEAD % (req.method_b, target, host_header, fwd, x.up_lines, peer_ip,
                    b"https" if x.scheme == "https" else b"http", tail)


_HEAD = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%sx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n%s\r\n"
_HEAD_XFH = (b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%sx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n"
             b"x-forwarded-host: %s\r\n%s\r\n")
_IP_BYTES: dict[str, bytes] = {}
_colon_join = b": ".join   # (name, value) -> b"name: value", in C (as http.wire's)
_join_lines = b"\r\n".join


def _ip_bytes(ip: str) -> bytes:
    """The client address as bytes, remembered in ``_IP_BYTES`` (request_head looks it
    up there first: a dict lookup costs less than an encode)."""
    if len(_IP_BYTES) >= 4096:
        _IP_BYTES.clear()
    b = _IP_BYTES[ip] = ip.encode("latin-1")
    return b


def keep_client(ctx, down, draining: bool) -> bool:
    """The one keep-alive decision for the client connection after this response: the
    client asked for it, the gateway and this connection are not draining, and the
    request was read to its end (an answer sent before the request body was read, e.g. a
    401 on an upload, ends the connection: the rest of the body cannot be told from the
    next request).  ``response_head`` then applies what the framing forces (an HTTP/1.0
    client of a body without length: close; a 101: the tunnel).  ``Proxy.upstream_head``
    makes the same test inline (every proxied response): keep the two in step."""
    return ctx.keep_alive and not draining and down is not None and not down.draining and down.cur_complete


def response_head(ctx, down, status: int, reason: bytes, block: bytes, keep: bool, server_header):
    """The response head for the client, from the upstream's raw header block, and the
    framing of the body that follows: ``(head bytes, RECHUNK | CLOSE_DELIMITED bits)``.
    ``keep`` is ``keep_client``'s decision; the final one is left in ``ctx.keep_alive``.

    The block is forwarded as bytes; only hop-by-hop and framing lines are cut.  The
    usual block (Content-Length and/or one plain Connection line) is recognised by the
    list of such names in it (one ``findall``) and cut by slicing; any other goes
    through ``_framing`` (``_cut``; its result is kept per block in ``_CUTS``, since an
    upstream sends the same head again and again).  Response filters get a ResponseHead that parses the block
    only if a filter looks at the headers.  Written for speed (one call per response,
    measured with callgrind): the usual response has one cut (``Connection:
    keep-alive``) and no filter.
    """
    cut = _CUTS.get(block)
    if cut is None:
        cut = _cut(block)
        if len(block) <= CUT_CACHE_BLOCK:
            if len(_CUTS) >= CUT_CACHE_SIZE:
                _CUTS.clear()
            _CUTS[block] = cut
    block, has_cl, chunked, listed = cut
    up_len = False  # the upstream body has a Content-Length that the client will not see
    route = ctx.route
    drop = ctx.resp_drop
    if route.chain.response or listed or drop:
        edits = route.chain.response_block
        if edits is not None and not listed and not drop:
            # every response filter edits the raw block alone (security headers, CORS):
            # no ResponseHead (``Middleware.response_block_filter``)
            for fn in edits:
                block = fn(ctx, status, block)
        else:
            head = ResponseHead(status, reason, raw=block)
            if listed or drop:
                if drop:
                    listed = drop if not listed else listed | drop
                head.headers = [h for h in head.headers if h[0].lower() not in listed]
            for _i, fn in route.chain.response:
                fn(ctx, head)
            status = head.status
            block = head.block()
            if head.length_dropped and has_cl:
                # a body filter re-encodes a Content-Length body: the client gets it framed
                # anew below, while the upstream side still reads it by its length
                has_cl = False
                up_len = True
    keep_client = keep
    framing = 0
    # the usual statuses' prebuilt lines straight from the table: the call only for another
    line = STATUS_LINES.get(status) or status_line(status, reason)
    if server_header:
        line += server_header
    extra = ctx.resp_lines
    if status == 101:
        keep_client = True
        extra += b"connection: upgrade\r\nupgrade: " + (ctx.upgrade or b"websocket") + CRLF
    else:
        req = ctx.request
        if not has_cl and status >= 200 and status not in _NO_BODY and req.method != "HEAD":
            # No Content-Length: a chunked or read-until-close upstream body.  HTTP/1.1
            # clients get it chunked; HTTP/1.0 clients get it close-delimited.
            if req.version == "1.1":
                # (the note comes with drop_length: only routes with response filters)
                framing = RECHUNK | WHOLE if route.chain.response and WHOLE_BODY_NOTE in ctx.notes else RECHUNK
                extra += b"transfer-encoding: chunked\r\n"
            else:
                keep_client = False
            if not chunked and not up_len:
                framing |= CLOSE_DELIMITED
        if not keep_client:
            extra += b"connection: close\r\n"
        elif req.version == "1.0":
            extra += b"connection: keep-alive\r\n"
    ctx.keep_alive = keep_client
    ctx.status = status
    return b"%s%s%s\r\n" % (line, block, extra), framing


def _cut(block: bytes) -> tuple:
    """(the block without hop-by-hop and framing lines, Content-Length present, chunked,
    the headers Connection lists): a function of the block alone (``_CUTS`` keeps it)."""
    low = b"\n" + block.lower()
    usual = _USUAL.get(tuple(_NAMES(low)))
    if usual is not None:
        has_cl, conn = usual
        if conn:
            # "\nconnection:" at s of ``low`` is the line at s of the block (``low`` has
            # one byte in front); its CR is at f of ``low``, its LF at f of the block
            s = low.find(b"\nconnection:")
            f = low.find(13, s)
            v = low[s + 12:f]
            if v in _PLAIN_VALUE or v.strip(b" \t") in _PLAIN_VALUE:
                return block[:s] + block[f + 1:], has_cl, False, None
        else:
            return block, has_cl, False, None
    return _framing(low, block)


def _framing(low: bytes, block: bytes):
    """The general cut, by one regex over ``low`` ("\\n" + the lower-cased block): (the
    block without hop-by-hop and framing lines, Content-Length present (its span, or
    False), chunked, the headers Connection lists).  For blocks with Transfer-Encoding,
    another hop-by-hop name, several Connection lines or one that lists headers."""
    chunked = False
    has_cl = False
    cuts = None
    listed = None
    for m in _FRAMING(low):
        k = m.lastindex
        if k == _CL:
            has_cl = m.span()
            continue
        if k == _TE:
            chunked = True
        elif k == _CONN:
            v = m.group(4)
            if v not in _PLAIN_VALUE:  # (the usual spellings: no strip call)
                v = v.strip(b" \t")
                if v not in _PLAIN_VALUE:
                    listed = connection_tokens(v) - {b"close", b"keep-alive"}
        if cuts is None:
            cuts = [m.span()]
        else:
            cuts.append(m.span())
    if chunked and has_cl:
        # Transfer-Encoding wins (RFC 9112 6.3): the body arrives de-chunked, so the
        # upstream's Content-Length must not reach the client.
        cuts.append(has_cl)
        cuts.sort()
        has_cl = False
    if cuts is not None:
        block = cut_spans(block, cuts)
    return block, has_cl, chunked, listed
