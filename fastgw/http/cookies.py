"""The value of one cookie in a ``Cookie`` request header (L2).

One parser for the places that read a single named cookie from the raw header value:
hash keys and sticky affinity (``upstream.balance``, ``middleware.sticky``) and a split's
pinning/override cookie (``routing.split``).  Pairs are ``;``-separated ``name=value``
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
