"""gzip, br and zstd codecs (L2): streaming encoders and bounded decoders.

Encoders (responses).  ``encoder(coding, level)`` returns a fresh stream object with
three methods, each returning the bytes ready to send (possibly ``b""``):

    compress(data)   feed body bytes; the codec keeps what it cannot emit yet
    flush()          emit everything fed so far (a sync flush: the client can decode it
                     now; used after every piece of an event stream)
    finish()         end the stream (trailer, checksum)

Memory per stream is bounded by the codec's window and tables, whatever the body's
size: brotli gets a 512 KiB window (``BR_LGWIN``, as ngx_brotli's default, instead of
the library's 4 MiB) and zstd's window is capped at 512 KiB (``ZSTD_WINDOW_LOG``)
whatever the level.  Measured (RSS over 100 live streams at the default levels): gzip
~350 KiB, br ~1.6 MiB, zstd ~1.8 MiB per stream.  ``one_shot(coding, level, body)``
compresses a whole body at hand in one call (a response that arrives in one read).

Why zlib-ng for gzip encoding, not the stdlib's zlib: deflate is most of a gzipped
response's cost, and zlib-ng, a zlib-compatible rewrite with the same levels, does it in
about half the time (16 KiB of JSON at level 5: ~280 us against ~520 us, 5 % larger
output; timeit on the shared dev machine).  In the gzip-json bench that took fastgw
from 0.61 x to 0.88 x nginx's requests/s (docs/bench.md).  python-isal is faster still
but has only levels 0-3, which cannot match ``gzip_comp_level``.  Request bodies are
decoded with the stdlib's zlib: decoding is cheap and rare next to encoding.

Decoders (request bodies).  ``decode(coding, data, limit)`` returns the decoded bytes or
raises ``TooLarge`` as soon as the output would pass ``limit`` (a decompression bomb
costs at most ``limit`` bytes of output and the time to produce them, never more), or
``BadEncoding`` for a corrupt, truncated or trailing-garbage stream.  The zstd decoder
refuses frames that ask for a window above ``ZSTD_MAX_WINDOW`` (8 MiB, RFC 8878's
recommended decoder limit), so a crafted header cannot make it allocate 128 MiB.
"""

from __future__ import annotations

import io
import zlib

import brotli
import zstandard
from zlib_ng import zlib_ng

CODINGS = ("zstd", "br", "gzip")
LEVELS = {"gzip": (1, 9), "br": (0, 11), "zstd": (1, 19)}
BR_LGWIN = 19
ZSTD_WINDOW_LOG = 19
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
_STEP = 64 * 1024  # decoded bytes produced per decoder call


class TooLarge(Exception):
    """The decoded body would exceed the limit."""


class BadEncoding(Exception):
    """The body is not a valid stream of its coding."""


# ----------------------------------------------------------------------------- encoders

class _Gzip:
    __slots__ = ("compress", "_flush")

    def __init__(self, level: int) -> None:
        c = zlib_ng.compressobj(level, zlib_ng.DEFLATED, 31)
        self.compress = c.compress
        self._flush = c.flush

    def flush(self) -> bytes:
        return self._flush(zlib_ng.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._flush(zlib_ng.Z_FINISH)


class _Brotli:
    __slots__ = ("compress", "flush", "finish")

    def __init__(self, level: int) -> None:
        c = brotli.Compressor(quality=level, lgwin=BR_LGWIN)
        self.compress = c.process
        self.flush = c.flush
        self.finish = c.finish


_ZSTD_PARAMS: dict[int, zstandard.ZstdCompressionParameters] = {}
# one compressor per level for one-shot bodies: a one-shot ``compress`` finishes before
# anything else runs on the worker's thread, so the context (and its ~1.8 MiB of tables,
# which cost more to set up than 16 KiB take to compress) is reused; a stream needs its own
_ZSTD_ONE: dict[int, zstandard.ZstdCompressor] = {}


def _zstd_params(level: int) -> zstandard.ZstdCompressionParameters:
    p = _ZSTD_PARAMS.get(level)
    if p is None:
        p = _ZSTD_PARAMS[level] = zstandard.ZstdCompressionParameters.from_level(level, window_log=ZSTD_WINDOW_LOG)
    return p


class _Zstd:
    __slots__ = ("compress", "_flush")

    def __init__(self, level: int) -> None:
        c = zstandard.ZstdCompressor(compression_params=_zstd_params(level)).compressobj()
        self.compress = c.compress
        self._flush = c.flush

    def flush(self) -> bytes:
        return self._flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


ENCODERS = {"gzip": _Gzip, "br": _Brotli, "zstd": _Zstd}


def encoder(coding: str, level: int):
    """A fresh streaming encoder for ``coding`` at ``level`` (see the module doc)."""
    return ENCODERS[coding](level)


def one_shot(coding: str, level: int, body: bytes) -> bytes:
    """The whole of ``body`` compressed in one call (same output format as a stream)."""
    if coding == "gzip":
        return zlib_ng.compress(body, level, 31)
    if coding == "zstd":
        z = _ZSTD_ONE.get(level)
        if z is None:
            z = _ZSTD_ONE[level] = zstandard.ZstdCompressor(compression_params=_zstd_params(level))
        return z.compress(body)
    e = ENCODERS[coding](level)
    return e.compress(body) + e.finish()


# ----------------------------------------------------------------------------- decoders

def decode(coding: str, data: bytes, limit: int) -> bytes:
    """``data`` decoded; ``TooLarge`` past ``limit`` output bytes, ``BadEncoding`` if invalid."""
    try:
        if coding == "gzip":
            return _gunzip(data, limit)
        if coding == "br":
            return _unbrotli(data, limit)
        if coding == "zstd":
            return _unzstd(data, limit)
    except (zlib.error, brotli.error, zstandard.ZstdError) as e:
        raise BadEncoding(f"invalid {coding} data: {e}") from None
    raise BadEncoding(f"unknown coding {coding!r}")


def _gunzip(data: bytes, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    while True:  # one pass per gzip member (RFC 1952 allows several)
        d = zlib.decompressobj(31)
        while True:
            chunk = d.decompress(data, min(_STEP, limit + 1 - size))
            size += len(chunk)
            if size > limit:
                raise TooLarge
            out.append(chunk)
            data = d.unconsumed_tail
            if d.eof or (not data and not chunk):
                break
        if not d.eof:
            raise BadEncoding("invalid gzip data: truncated stream")
        data = d.unused_data
        if not data:
            return b"".join(out)


def _unbrotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out: list[bytes] = []
    size = 0
    chunk = d.process(data, output_buffer_limit=_STEP)
    while True:
        size += len(chunk)
        if size > limit:
            raise TooLarge
        out.append(chunk)
        if d.is_finished() or d.can_accept_more_data():
            break
        chunk = d.process(b"", output_buffer_limit=_STEP)
    if not d.is_finished():
        raise BadEncoding("invalid br data: truncated stream")
    return b"".join(out)


_ZD = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)


def _unzstd(data: bytes, limit: int) -> bytes:
    # Two passes: a stream_reader counts the output in bounded steps (refusing a bomb
    # after ``limit`` bytes), then, the size being known to fit, a decompressobj per
    # frame makes it and says whether each frame is complete (the reader does not).
    size = 0
    with _ZD.stream_reader(io.BytesIO(data), read_across_frames=True, read_size=_STEP) as r:
        while True:
            n = len(r.read(min(_STEP, limit + 1 - size)))
            if not n:
                break
            size += n
            if size > limit:
                raise TooLarge
    out: list[bytes] = []
    while data:
        d = _ZD.decompressobj()
        out.append(d.decompress(data))
        if not d.eof:
            raise BadEncoding("invalid zstd data: truncated stream")
        data = d.unused_data
    return b"".join(out)
