"""Cache keys that cannot be poisoned (L2).

A key is ``(primary, secondary)``:

- ``primary``: the route (two routes on one path, told apart by ``match`` conditions or
  methods, never share entries), method class (GET and HEAD share entries: a HEAD is
  answered from a GET's entry), scheme, host, the router's normalised path, the
  configured query part
  (``all``: every parameter, sorted; ``none``; or the listed names, sorted) and the
  configured request headers.
- ``secondary``: ``()`` or ``(vary names, their values)``, read from the request *as it
  is sent upstream*: the headers the gateway adds or replaces (identity headers such as
  ``X-User-Id``, a transform's headers: ``ctx.up_lines``) win over the client's own
  (``ctx.fwd``), so a ``Vary`` on a header the gateway sets separates users instead of
  matching the client's copy.

``Accept-Encoding`` is special when the gateway compresses the route: the stored variant
is the one the compression middleware produced for the coding it negotiated, so the
secondary key holds that coding (``br``, ``gzip``, ``zstd`` or ``identity``), not the
raw header: every client negotiating the same coding shares one entry.  When the
upstream encoded the body itself (the gateway's compression passed it through), its
choice may differ from the gateway's negotiation, so the entry keys the raw header
(``AE_RAW`` in its names).

Headers known to override what an upstream thinks the request is (``X-Forwarded-Host``,
``X-Original-URL``, ...) are removed from requests on a caching route unless the route
keys on them (``UNKEYED_OVERRIDES``): an input outside the key must not shape what is
stored.
"""

from __future__ import annotations

METHOD_CLASS = {"GET": "G", "HEAD": "G"}

UNKEYED_OVERRIDES = frozenset({
    b"x-forwarded-host", b"x-forwarded-server", b"x-forwarded-scheme", b"x-forwarded-port",
    b"x-forwarded-prefix", b"x-original-url", b"x-rewrite-url", b"x-original-host",
    b"x-http-method-override", b"x-http-method", b"x-method-override", b"x-host", b"forwarded",
})


AE_RAW = b"accept-encoding;raw"  # an entry whose coding the upstream chose


def query_part(query: bytes, mode) -> bytes:
    """The query as keyed: ``all`` (parameters sorted), ``none``, or a tuple of names."""
    if not query or mode == "none":
        return b""
    params = [p for p in query.split(b"&") if p]
    if mode != "all":
        names = mode
        params = [p for p in params if p.partition(b"=")[0].decode("latin-1") in names]
    params.sort()
    return b"&".join(params)


def sent_value(ctx, lname: bytes) -> bytes | None:
    """The value of request header ``lname`` as it goes upstream: the gateway's own lines
    (``up_lines``, last one wins) over the forwarded client headers (``fwd``); values of
    a repeated field are joined with ", "."""
    up = ctx.up_lines
    if up:
        found = None
        for line in up.split(b"\r\n"):
            n, _, v = line.partition(b":")
            if n.lower() == lname:
                found = v.strip()
        if found is not None:
            return found
    vals = [v for n, v in ctx.fwd if n.lower() == lname]
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else b", ".join(vals)


def primary(ctx, route: str, query_mode, headers: tuple) -> tuple:
    req = ctx.request
    hv = tuple(sent_value(ctx, h) for h in headers) if headers else ()
    return (route, METHOD_CLASS.get(req.method, req.method), ctx.scheme, req.host, req.path,
            query_part(req.query or b"", query_mode), hv)


def secondary(ctx, names: tuple, negotiate) -> tuple:
    """``()`` or ``(names, values)`` for the ``Vary`` names of an entry."""
    if not names:
        return ()
    vals = []
    for n in names:
        if n == b"accept-encoding" and negotiate is not None:
            coding, _refused = negotiate(ctx.header(b"accept-encoding"))
            vals.append(coding or "identity")
        elif n == AE_RAW:
            v = ctx.header(b"accept-encoding")
            vals.append(b"".join(v.split()).lower() if v is not None else None)
        else:
            v = sent_value(ctx, n)
            vals.append(b" ".join(v.split()).lower() if v is not None else None)
    return (names, tuple(vals))
