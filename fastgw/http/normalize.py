"""Request-target splitting and path normalisation (L2).

Owns the one canonical form of a request path.  Routing matches on it and the upstream
receives exactly it, so a route rule cannot be bypassed by spelling the same resource
another way (``//``, ``/./``, ``/x/../``, ``%61``, ``;param``): there is no second
interpretation for the gateway and the upstream to disagree about.

``split_target(target) -> (path, query, authority)``
    Origin-form (``/p?q``) and absolute-form (``http://host/p?q``, RFC 9112 3.2.2: the
    caller must then use ``authority`` instead of the Host header).  Userinfo
    (``user@host``), asterisk-form (``OPTIONS *``) and authority-form (``CONNECT h:443``)
    are ``bad_path`` (400): the gateway routes resources, it answers no server-wide
    OPTIONS and tunnels no CONNECT, as nginx does.  A ``#`` in the query is
    ``bad_path`` too (RFC 9112's request-target has no fragment; the path's ``#`` is
    rule 2), so ``/a?x=1#frag`` is never forwarded.

``normalize_path(raw) -> (path, has_encoded_slash)``  (raw: the path, no query)
    Rule 1: it starts with ``/``.
    Rule 2: raw bytes <= 0x20, 0x7f, >= 0x80, ``\\``, ``;`` (path parameters) and ``#``
            are refused.  Other printable ASCII (``"<>^`{|}`` included) passes as sent.
    Rule 3: ``%XX`` must be valid hex.  Escapes of unreserved characters
            (``A-Z a-z 0-9 - . _ ~``) are decoded; every other escape stays encoded with
            upper-case hex.  ``%2F`` stays ``%2F``; ``has_encoded_slash`` says the result
            holds one (the router refuses it unless the matched route sets
            ``allow_encoded_slash``).
            ``%5C`` (backslash), ``%3B`` (``;``), ``%00``-``%1F`` and ``%7F`` (NUL and the
            other controls) are refused.  Decoding happens once: ``%252e`` stays.
    Rule 4: duplicate slashes are merged, then dot segments are removed (RFC 3986
            5.2.4, including dots revealed by decoding ``%2e``).  A ``..`` that would
            climb above the root is refused (nginx answers 400 too; clamping would hide
            probing).  A trailing slash is kept, and ``/a/.`` and ``/a/b/..`` give ``/a/``.
    Every refusal raises ``GatewayError("bad_path")`` (400).  The result is ASCII and
    ``normalize_path`` is idempotent on it.  Paths are case-sensitive (``/Admin`` is not
    ``/admin``); an upstream that folds case must not rely on the gateway for that.

Hot path (STYLE.md item 9): the overwhelmingly common clean path (only ``[A-Za-z0-9_~./-]``,
no empty segment, no segment starting with a dot) is recognised by one
``bytes.translate`` and two substring tests and returned as ``raw.decode("ascii")``
untouched; everything else takes the general path.  (Not a precompiled regex
``fullmatch``: the regex engine pays per character.)
"""

from __future__ import annotations

import re

from fastgw.errors import GatewayError

__all__ = ["normalize_path", "split_target"]

# The fast path's table: every byte of a clean path maps to itself, any other byte to 0.
_CLEAN_TABLE = bytes(
    b if b in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-~/." else 0
    for b in range(256)
)

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Decoded values that are refused even when encoded: controls, DEL, backslash, ';'.
_BAD_DECODED = frozenset(range(0x20)) | {0x7F, 0x5C, 0x3B}
# Raw bytes allowed in the general path: printable ASCII except space, '\\', ';', '#'.
# ('?' never reaches here: the caller split the query off at the first '?'.)
_RAW_OK = bytes(b for b in range(0x21, 0x7F) if b not in b"\\;#")

# Every two-byte hex pair (any case) -> its value.  One dict lookup per escape.
_HEX: dict[bytes, int] = {}
for _hi in b"0123456789abcdefABCDEF":
    for _lo in b"0123456789abcdefABCDEF":
        _HEX[bytes((_hi, _lo))] = int(bytes((_hi, _lo)), 16)
del _hi, _lo

_AUTHORITY = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~\-!$&'()*+,=%]+)(?::[0-9]*)?").fullmatch


def _bad(detail: str) -> GatewayError:
    # The detail never echoes the client's bytes (no reflected content in 400 bodies).
    return GatewayError("bad_path", detail)


def split_target(target: bytes) -> tuple[bytes, bytes, bytes | None]:
    """Split a request-target into ``(path, query, authority)``.

    ``query`` has no ``?`` (``b""`` when absent).  ``authority`` is ``None`` for
    origin-form and the ``host[:port]`` bytes as sent for absolute-form, where the path
    defaults to ``b"/"``.  Raises ``GatewayError("bad_path")`` for asterisk-form,
    authority-form, userinfo or another scheme than http/https.
    """
    # (int arguments: a bytes argument costs a buffer-protocol round trip, ~1k
    # instructions, in every bytes method; an int is a plain memchr)
    if target and target[0] == 47:  # "/"
        i = target.find(63)  # "?"
        if i < 0:
            return target, b"", None
        if target.find(35, i) >= 0:  # "#" in the query: origin-form has no fragment (RFC 9112 3.2.1)
            raise _bad("fragment ('#') in the request-target")
        return target[:i], target[i + 1 :], None
    return _split_absolute(target)


def _split_absolute(target: bytes) -> tuple[bytes, bytes, bytes | None]:
    if target == b"*":
        raise _bad("asterisk-form request-target is not supported")
    low = target[:8].lower()
    if low.startswith(b"http://"):
        rest = target[7:]
    elif low == b"https://":
        rest = target[8:]
    else:
        raise _bad("request-target must be origin-form or an absolute http(s) URI")
    end = len(rest)
    for sep in (b"/", b"?", b"#"):
        j = rest.find(sep)
        if 0 <= j < end:
            end = j
    authority = rest[:end]
    if not authority:
        raise _bad("absolute-form request-target without a host")
    if b"@" in authority:
        raise _bad("userinfo is not allowed in the request-target")
    if _AUTHORITY(authority) is None:
        raise _bad("invalid authority in the request-target")
    pathq = rest[end:]
    if pathq[:1] == b"#":
        raise _bad("fragment in the request-target")
    if pathq[:1] != b"/":
        pathq = b"/" + pathq  # "http://h" or "http://h?q"
    i = pathq.find(b"?")
    if i < 0:
        return pathq, b"", authority
    if pathq.find(35, i) >= 0:
        raise _bad("fragment ('#') in the request-target")
    return pathq[:i], pathq[i + 1 :], authority


def normalize_path(raw: bytes) -> tuple[str, bool]:
    """Return ``(normalised path, has_encoded_slash)`` or raise ``bad_path`` (module rules)."""
    # Fast path, written for speed (measured in bench/micro): bytes.translate is one C
    # loop, and ``in`` on str is much cheaper than on bytes (no buffer protocol), so the
    # slash checks run on the decoded str.  No empty segment ("//") and no segment that
    # starts with a dot ("/.") means no dot segment and nothing to merge.
    if 0 not in raw.translate(_CLEAN_TABLE):
        s = raw.decode("ascii")
        if s[:1] == "/" and "//" not in s and "/." not in s:
            return s, False
    return _normalize_slow(raw)


def _normalize_slow(raw: bytes) -> tuple[str, bool]:
    if raw[:1] != b"/":
        raise _bad("path must start with '/'")
    stray = raw.translate(None, _RAW_OK)
    if stray:
        c = stray[0]
        if c == 0x5C:
            raise _bad("backslash in path")
        if c == 0x3B:
            raise _bad("path parameters (';') are not allowed")
        if c == 0x23:
            raise _bad("fragment ('#') in path")
        raise _bad("control, space or non-ASCII byte in path")

    # Rule 3: decode unreserved escapes once, keep the others upper-cased.
    encoded_slash = False
    if b"%" in raw:
        parts = raw.split(b"%")
        out = [parts[0]]
        for p in parts[1:]:
            hx = p[:2]
            v = _HEX.get(hx)
            if v is None:
                raise _bad("invalid percent-escape in path")
            if v in _UNRESERVED:
                out.append(bytes((v,)))
            elif v == 0x2F:
                encoded_slash = True
                out.append(b"%2F")
            elif v in _BAD_DECODED:
                raise _bad("encoded control character, backslash or ';' in path")
            else:
                out.append(b"%" + hx.upper())
            out.append(p[2:])
        raw = b"".join(out)

    # Rule 4: merge slashes, remove dot segments, refuse climbing above the root.
    segs = raw.split(b"/")
    last = len(segs) - 1
    stack: list[bytes] = []
    trailing = False
    for i in range(1, last + 1):
        s = segs[i]
        if s == b"" or s == b".":
            trailing = i == last
        elif s == b"..":
            if not stack:
                raise _bad("'..' above the root")
            stack.pop()
            trailing = i == last
        else:
            stack.append(s)
            trailing = False
    if not stack:
        return "/", False
    path = b"/" + b"/".join(stack)
    if trailing:
        path += b"/"
    if encoded_slash:  # it may sit in a segment that ".." removed
        encoded_slash = b"%2F" in path
    return path.decode("ascii"), encoded_slash
