"""The value of one cookie in a ``Cookie`` request header (L2).

One parser for the places that read a single named cookie from the raw header value:
hash keys and sticky affinity (``upstream.balance``, ``middleware.sticky``), a split's
pinning/override cookie (``routing.split``) and a token carried in a cookie
(``middleware.auth``, which needs every copy to agree: ``cookie_agreed``).  Pairs are ``;``-separated ``name=value``
(RFC 6265 section 4.2.1), names compared after trimming spaces; the first match wins.
"""

from __future__ import annotations


def cookie_value(raw: bytes | None, name: bytes, unquote: bool = True) -> bytes | None:
    """The value of cookie ``name`` in the Cookie header value ``raw`` (None if absent);
    ``unquote``: without the DQUOTEs RFC 6265 allows around a value."""
    if not raw:
        return None
    for pair in raw.split(b";"):
        k, eq, val = pair.partition(b"=")
        if eq and k.strip() == name:
            val = val.strip()
            return val.strip(b'"') if unquote else val
    return None


def cookie_agreed(values, name: bytes, dup):
    """The value of cookie ``name`` (unquoted) across several Cookie header values: None
    if absent, ``dup`` when two copies differ (a credential given twice must not be
    chosen from)."""
    found = None
    for raw in values:
        for pair in raw.split(b";"):
            k, eq, val = pair.strip().partition(b"=")
            if eq and k == name:
                val = val.strip().strip(b'"')
                if found is not None and val != found:
                    return dup
                found = val
    return found
