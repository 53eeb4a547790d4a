"""The usual upstream response read without the parser's callbacks (L3).

Most upstream responses arrive in one read: an HTTP/1.1 head with a Content-Length and
exactly that many body bytes (nginx, uvicorn, most servers, for small bodies).  For
those the client protocol (``upstream.client``) skips ``httptools``: the head is
recognised here, and the response goes out in one step (three parser callbacks, and
llhttp's pass over the bytes, less per response).  Everything else, and any doubt, goes
to the parser as before.

Rules:
1. What this accepts, llhttp in strict mode (the client's parser, no leniency flag)
   accepts with the same meaning; it accepts less.  The head must fully match one
   regex: the status line ``HTTP/1.1 SP 3DIGIT SP reason CRLF`` with a status 200-599
   other than 204 and 304 (no interim, no 101, no status without a body), header lines
   ``token ":" value CRLF`` (no whitespace before the colon, no folding, no control
   character but HTAB in a value, printable ASCII only), then the empty line.
2. Framing: exactly one Content-Length, a clean integer (digits, optional whitespace
   around them); no Transfer-Encoding; at most one Connection line, whose value is
   ``keep-alive`` or ``close`` (any case); no Proxy-Connection (llhttp reads it as
   Connection).  Keep-alive is then what llhttp's ``should_keep_alive`` says for
   HTTP/1.1: not ``close``.
3. The read must hold the head and exactly Content-Length body bytes; a response split
   over reads, or followed by more bytes, goes to the parser (it never saw this one).
4. A head is a pure function of its bytes, so the verdict is remembered: per connection
   the last head (one slice compare), per worker a bounded dict (``_HEADS``, cleared when
   full; heads longer than ``MAX_HEAD`` are not read here at all).  An upstream sends the
   same head again and again (it changes with its Date, once a second).
"""

from __future__ import annotations

import re

from fastgw.http.wire import STATUS_LINES

# rule 1 (the reason phrase without HTAB: printable ASCII and space only)
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_STRICT = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) ([\x20-\x7e]*)\r\n((?:" + _TCHAR +
                     rb"+:[\t\x20-\x7e]*\r\n)*)\r\n").fullmatch
# rule 2: the framing lines of the lower-cased block with "\n" in front ("\nname:" is
# exact: no whitespace before a colon), with their values
_FRAMING = re.compile(rb"\n(content-length|transfer-encoding|connection|proxy-connection):([^\r]*)").findall
_DIGITS = re.compile(rb"[ \t]*([0-9]{1,15})[ \t]*").fullmatch
_NO_BODY = (204, 304)

MAX_HEAD = 4096
HEADS_SIZE = 256
_HEADS: dict[bytes, tuple] = {}


def read_head(data: bytes) -> tuple | None:
    """The verdict on the head ``data`` starts with: ``(head, total, hlen, status, reason,
    block, keep)``; ``head`` is the head's bytes with its empty line (``hlen`` long),
    ``total`` the length of a whole response with it (head + Content-Length), or -1 when
    this head is not one for the fast way (rules 1-2); ``reason`` and ``block`` (the
    header lines, each with its CRLF) are what the parser's path hands on (no reason
    for a status the gateway has its own line for).  None when ``data`` holds no whole
    head of at most ``MAX_HEAD`` bytes (nothing is remembered then)."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None
    head = data[:end + 4]
    v = _HEADS.get(head)
    if v is None:
        if len(_HEADS) >= HEADS_SIZE:
            _HEADS.clear()
        v = _HEADS[head] = _verdict(head)
    return v


def _verdict(head: bytes) -> tuple:
    no = (head, -1, len(head), 0, b"", b"", False)
    m = _STRICT(head)
    if m is None:
        return no
    status = int(m[1])
    if status in _NO_BODY:
        return no
    block = m[3]
    length = None
    keep = True
    conn = 0
    for name, value in _FRAMING(b"\n" + block.lower()):
        if name == b"content-length":
            d = _DIGITS(value)
            if length is not None or d is None:
                return no
            length = int(d[1])
        elif name == b"connection":
            conn += 1
            v = value.strip(b" \t")
            if conn > 1 or v not in (b"keep-alive", b"close"):
                return no
            keep = v == b"keep-alive"
        else:   # transfer-encoding, proxy-connection
            return no
    if length is None:
        return no
    reason = b"" if status in STATUS_LINES else m[2]
    return head, len(head) + length, len(head), status, reason, block, keep
