"""Response compression: gzip, br and zstd, negotiated and streamed (L6).

What it owns: choosing, per response, whether and how to compress the upstream's body,
and compressing it as it streams, with memory bounded by the codec's window (never the
body's size).

Two hooks:

1. ``response_filter(ctx, head)`` decides, from the response head and the request's
   Accept-Encoding (``fastgw.compress.negotiate``).  Skipped, in this order, with the
   reason counted in ``fastgw_compression_skipped_total``: HEAD requests (``head``),
   1xx/204/304 (``status``), 206 (``partial``: a range of the identity body), an existing
   Content-Encoding (``encoded``), ``Cache-Control: no-transform`` (``no_transform``), a
   media type outside ``types``, never-compressed types, ``text/event-stream`` without
   ``event_stream: true``, or no Content-Type (``type``), a Content-Length below
   ``min_size`` while the client accepts identity (``too_small``), a client that accepts
   none of ``algorithms`` (``not_accepted``).  A response that is compressed loses its
   Content-Length (``ResponseHead.drop_length``: the engine sends it chunked), gets
   ``Content-Encoding``, ``Vary: Accept-Encoding`` merged into an existing Vary, a weak
   ETag instead of a strong one (the bytes differ from the identity representation's)
   and no Accept-Ranges (ranges of the encoded body are not served).  A ``not_accepted``
   response gets the Vary too: its form depended on Accept-Encoding.
2. ``response_body_filter(ctx, chunk, end)`` compresses.  A body that arrives whole in
   one piece (its Content-Length's worth) is compressed in one call; otherwise a stream
   encoder is made on the first piece, fed every piece, and finished at the end.  An
   event stream is flushed after every piece the upstream sends, so each event reaches
   the client when it is produced.

Local replies (401/429/problem bodies, preflights) are not compressed: they are small
and made by the gateway.  The encoding chosen is left in ``ctx.notes["content_encoding"]``
for the access log.

Engine contract relied on (today's names; the renovation renames them):
``Middleware.response_filter(ctx, head)`` with a ``ResponseHead`` (``headers`` list,
``status``, ``drop_length()``; a ``Reply`` for local answers), and
``Middleware.response_body_filter(ctx, chunk, end)`` called for every body piece of
every response on the route and once with ``(b"", True)`` at the end; a ``b""`` return
sends nothing.  Per-request state lives in ``ctx.notes``.
"""

from __future__ import annotations

from fastgw.compress.codecs import encoder, one_shot
from fastgw.compress.negotiate import Negotiator
from fastgw.config.compression import effective_compression, incompressible
from fastgw.http.messages import ResponseHead
from fastgw.pipeline.middleware import Middleware

NOTE = "compression"
ENC_NOTE = "content_encoding"  # read by the access log
_SKIP_STATUS = frozenset({204, 304})
_EVENT_STREAM = "text/event-stream"
_WATCH = frozenset({b"content-type", b"content-encoding", b"cache-control", b"content-length"})
_M_RESP = "fastgw_compression_responses_total"
_M_IN = "fastgw_compression_input_bytes_total"
_M_OUT = "fastgw_compression_output_bytes_total"
_M_SKIP = "fastgw_compression_skipped_total"


class _Stream:
    """One response being compressed."""

    __slots__ = ("coding", "level", "enc", "whole", "flush", "n_in", "n_out", "done")

    def __init__(self, coding: str, level: int, whole: int | None, flush: bool) -> None:
        self.coding = coding
        self.level = level
        self.enc = None
        self.whole = whole  # the Content-Length, if the upstream sent one
        self.flush = flush
        self.n_in = 0
        self.n_out = 0
        self.done = False


class Compression(Middleware):
    name = "compression"

    def __init__(self, cfg, deps=None) -> None:
        super().__init__(cfg, deps)
        self.neg = Negotiator(cfg.algorithms)
        self.levels = {a: getattr(cfg.levels, a) for a in cfg.algorithms}
        self.codings = {a: a.encode("ascii") for a in cfg.algorithms}
        self.min_size = int(cfg.min_size)
        types = [t.lower() for t in cfg.types]
        self.exact = frozenset(t for t in types if not t.endswith("/*"))
        self.prefixes = tuple(t[:-1] for t in types if t.endswith("/*"))
        self.event_stream = cfg.event_stream
        self._type_cache: dict[bytes, bool] = {}
        m = getattr(deps, "metrics", None)
        self._inc = m.inc if m is not None else None

    def leaves_log_notes(self) -> bool:
        return True   # ``content_encoding`` (ENC_NOTE)

    # -- decision --------------------------------------------------------------------

    def response_filter(self, ctx, head) -> None:
        if head.__class__ is not ResponseHead:
            return  # a local reply
        reason = self._decide(ctx, head)
        if reason is not None and self._inc is not None:
            self._inc(_M_SKIP, (("reason", reason),))

    def _decide(self, ctx, head) -> str | None:
        """Set the response up for compression, or return why not."""
        if ctx.request.method == "HEAD":
            return "head"
        status = head.status
        if status < 200 or status in _SKIP_STATUS:
            return "status"
        if status == 206:
            return "partial"
        found = {}
        for n, v in head.headers:
            ln = n.lower()
            if ln in _WATCH:
                if ln == b"content-encoding":
                    if v.strip().lower() not in (b"", b"identity"):
                        return "encoded"
                elif ln == b"cache-control":
                    if b"no-transform" in v.lower():
                        return "no_transform"
                else:
                    found[ln] = v
        ct = found.get(b"content-type")
        if ct is None or not self._type_ok(ct):
            return "type"
        coding, refused = self.neg.choose(ctx.header(b"accept-encoding"))
        cl = found.get(b"content-length")
        length = None
        if cl is not None:
            try:
                length = int(cl)
            except ValueError:
                length = None
            if length is not None and length < self.min_size and not (refused and coding):
                return "too_small"
        _vary(head)
        if coding is None:
            return "not_accepted"
        head.drop_length()
        head.set(b"Content-Encoding", self.codings[coding])
        head.remove(b"accept-ranges")
        _weaken_etag(head)
        is_sse = ct.partition(b";")[0].strip().lower() == b"text/event-stream"
        ctx.notes[NOTE] = _Stream(coding, self.levels[coding], length, is_sse)
        ctx.notes[ENC_NOTE] = coding
        return None

    def _type_ok(self, ct: bytes) -> bool:
        r = self._type_cache.get(ct)
        if r is None:
            if len(self._type_cache) >= 256:
                self._type_cache.clear()
            essence = ct.partition(b";")[0].strip().lower().decode("latin-1")
            if essence == _EVENT_STREAM:
                r = self.event_stream
            else:
                r = not incompressible(essence) and (
                    essence in self.exact or any(essence.startswith(p) for p in self.prefixes))
            self._type_cache[ct] = r
        return r

    # -- body ------------------------------------------------------------------------

    def response_body_filter(self, ctx, chunk: bytes, end: bool) -> bytes:
        notes = ctx.notes
        if not notes:
            return chunk
        st = notes.get(NOTE)
        if st is None:
            return chunk
        if st.done:
            return b""
        if end:
            # the end call may carry the last bytes: a body filter before this one
            # (transform) hands over the whole edited body only when it has it all
            st.done = True
            st.n_in += len(chunk)
            enc = st.enc
            if enc is None:
                out = one_shot(st.coding, st.level, chunk)
            else:
                out = (enc.compress(chunk) if chunk else b"") + enc.finish()
            st.n_out += len(out)
            self._count(st)
            return out
        st.n_in += len(chunk)
        enc = st.enc
        if enc is None:
            if st.whole == len(chunk):
                # the whole body in one piece (the usual small JSON answer): one call
                st.done = True
                out = one_shot(st.coding, st.level, chunk)
                st.n_out += len(out)
                self._count(st)
                return out
            enc = st.enc = encoder(st.coding, st.level)
        out = enc.compress(chunk)
        if st.flush:
            out += enc.flush()
        st.n_out += len(out)
        return out

    def _count(self, st: _Stream) -> None:
        inc = self._inc
        if inc is not None:
            labels = (("algorithm", st.coding),)
            inc(_M_RESP, labels)
            inc(_M_IN, labels, st.n_in)
            inc(_M_OUT, labels, st.n_out)


def _vary(head) -> None:
    """Add Accept-Encoding to Vary, merged into the existing field (one line)."""
    values = [v for n, v in head.headers if n.lower() == b"vary"]
    if not values:
        head.add(b"Vary", b"Accept-Encoding")
        return
    tokens = [t.strip().lower() for v in values for t in v.split(b",")]
    if b"*" in tokens or b"accept-encoding" in tokens:
        return
    joined = b", ".join(v.strip() for v in values if v.strip())
    head.set(b"Vary", joined + b", Accept-Encoding" if joined else b"Accept-Encoding")


def _weaken_etag(head) -> None:
    """A strong ETag becomes weak: the encoded bytes are not the identity representation's."""
    etag = head.get(b"etag")
    if etag is not None and etag.lstrip().startswith(b'"'):
        head.set(b"ETag", b"W/" + etag.strip())


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's compression middleware, or None when compression is off for it."""
    if route_cfg is None:
        return None  # the global chain: the gateway's own replies
    cfg = effective_compression(root_cfg.compression,
                                service_cfg.compression if service_cfg is not None else None,
                                route_cfg.compression if route_cfg is not None else None)
    if cfg is None:
        return None
    return Compression(cfg, deps)
