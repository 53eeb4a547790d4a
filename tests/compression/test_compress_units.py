"""The pure parts of compression (issue 22): negotiation, codecs, config, the middleware's
decisions on hand-made heads.  The wire behaviour is in test_compression.py."""

from __future__ import annotations

import gzip
import os
import time
import zlib

import brotli
import pytest
import zstandard

from fastgw.compress import codecs
from fastgw.compress.negotiate import Negotiator, parse
from fastgw.config import load_config_data
from fastgw.config.compression import CompressionConfig, effective_compression
from fastgw.http.messages import Reply, ResponseHead
from fastgw.middleware.compression import Compression
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from tests.support.config import BASE, P0, R0, SVC, edit, errors_of

from tests.support import DATA  # noqa: E402
TEXT = b'{"k": "value", "n": [1, 2, 3]}\n' * 2000


# ----------------------------------------------------------------------------- negotiation
def test_parse_keeps_lowest_q_of_a_repeated_coding_and_ignores_empty_elements():
    assert parse(b"gzip;q=0.9, , GZIP;q=0.2,br") == {"gzip": 0.2, "br": 1.0}
    assert parse(b"gzip; q=0.5 ; foo=bar") == {"gzip": 0.5}
    assert parse(b"gzip;q=1.5, br;q=0.1234, zstd;q=1.000") == {"gzip": 0.0, "br": 0.0, "zstd": 1.0}


def test_server_order_decides_ties_and_cache_is_bounded():
    n = Negotiator(["gzip", "br"])
    assert n.choose(b"br, gzip") == ("gzip", False)
    assert Negotiator(["br", "gzip"]).choose(b"br, gzip") == ("br", False)
    for i in range(2000):
        n.choose(b"gzip;q=0.%d" % (i % 1000))
    assert len(n._cache) <= 512


@pytest.mark.parametrize("value,refused", [
    (b"identity;q=0", True), (b"*;q=0", True), (b"*;q=0, identity;q=0.1", False), (b"gzip", False),
])
def test_identity_refusal(value, refused):
    assert Negotiator(["gzip"]).choose(value)[1] is refused


# ----------------------------------------------------------------------------- codecs
REFERENCE = {"gzip": gzip.decompress, "br": brotli.decompress,
             "zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d)}


@pytest.mark.parametrize("coding", codecs.CODINGS)
def test_stream_encoders_decode_with_reference_libraries(coding):
    e = codecs.encoder(coding, 3)
    out = e.compress(TEXT[:1000]) + e.flush()
    # a sync flush makes everything fed so far decodable now (event streams)
    assert _prefix_decodes(coding, out) == TEXT[:1000]
    out += e.compress(TEXT[1000:]) + e.finish()
    assert REFERENCE[coding](out) == TEXT
    assert REFERENCE[coding](codecs.one_shot(coding, 3, TEXT)) == TEXT
    assert codecs.decode(coding, out, len(TEXT)) == TEXT


def _prefix_decodes(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return zlib.decompressobj(31).decompress(data)
    if coding == "br":
        return brotli.Decompressor().process(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.mark.parametrize("coding", codecs.CODINGS)
def test_decode_refuses_output_past_the_limit(coding):
    enc = codecs.one_shot(coding, 3, TEXT)
    assert codecs.decode(coding, enc, len(TEXT)) == TEXT
    with pytest.raises(codecs.TooLarge):
        codecs.decode(coding, enc, len(TEXT) - 1)


@pytest.mark.parametrize("coding", codecs.CODINGS)
def test_decode_refuses_corrupt_truncated_and_trailing_garbage(coding):
    enc = codecs.one_shot(coding, 3, os.urandom(5000).hex().encode())
    for bad in (enc[:-3], enc[: len(enc) // 2], enc + b"junk", b"\x00not a stream at all"):
        with pytest.raises(codecs.BadEncoding):
            codecs.decode(coding, bad, 10**7)


def test_gzip_members_concatenated_decode_as_one_body():
    assert codecs.decode("gzip", gzip.compress(b"ab") + gzip.compress(b"cd"), 10) == b"abcd"


def test_one_gib_bomb_stops_at_the_limit_fast():
    with open(os.path.join(DATA, "bomb-1g.br"), "rb") as f:
        bomb = f.read()
    t = time.process_time()  # CPU time: the machine may be shared, the work is bounded
    with pytest.raises(codecs.TooLarge):
        codecs.decode("br", bomb, 1 << 20)
    assert time.process_time() - t < 0.2


def test_zstd_window_larger_than_8_mib_refused():
    p = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    big = zstandard.ZstdCompressor(compression_params=p).compress(os.urandom(1 << 10) * 20000)
    with pytest.raises(codecs.BadEncoding):
        codecs.decode("zstd", big, 1 << 30)


# ----------------------------------------------------------------------------- config
def test_config_defaults_and_levels_of_overrides():
    cfg, _warnings = load_config_data(edit(edit(edit(BASE, "compression", True), f"{R0}.compression", False),
                                          "services.cmms-service.compression", {"algorithms": ["gzip"]}))
    assert cfg.compression is True
    eff = effective_compression(cfg.compression, None, None)
    assert eff.algorithms == ["zstd", "br", "gzip"] and eff.min_size == 1024 and not eff.event_stream
    assert (eff.levels.gzip, eff.levels.br, eff.levels.zstd) == (5, 4, 3)
    assert "application/json" in eff.types and "text/*" in eff.types
    svg = cfg.services["svg-parser"]
    assert effective_compression(cfg.compression, svg.compression, svg.routes[0].compression) is None
    cm = cfg.services["cmms-service"]
    assert effective_compression(cfg.compression, cm.compression, cm.routes[0].compression).algorithms == ["gzip"]
    assert effective_compression(None, None, None) is None


@pytest.mark.parametrize("path,value,expected", [
    ("compression.algorithms", ["gzip", "lz4"], "compression.algorithms[1]: expected one of 'br', 'gzip', 'zstd', got 'lz4'"),
    ("compression.algorithms", ["gzip", "gzip"], "compression.algorithms[1]: duplicate algorithm 'gzip'"),
    ("compression.algorithms", [], "compression.algorithms: must list at least one of zstd, br, gzip (or set compression: false)"),
    ("compression.levels", {"gzip": 0}, "compression.levels.gzip: must be between 1 and 9, got 0"),
    ("compression.levels", {"br": 12}, "compression.levels.br: must be between 0 and 11, got 12"),
    ("compression.levels", {"lzma": 1}, "compression.levels.lzma: unknown field"),
    ("compression.min_size", "big", "compression.min_size: expected a size like '1m', got 'big'"),
    ("compression.types", ["image/*"], "compression.types[0]: 'image/*' is already compressed"),
    ("compression.types", ["text"], "compression.types[0]: expected a media type like 'application/json' or 'text/*', got 'text'"),
    (f"{R0}.compression", {"types": ["video/mp4"]}, f"{P0}.compression.types[0]: 'video/mp4' is already compressed"),
    (f"{SVC}.compression", "yes", f"{SVC}.compression: expected"),
])
def test_config_errors_name_the_field(path, value, expected):
    errs = errors_of(edit(BASE, path, value))
    assert any(e.startswith(expected) for e in errs), errs


# ----------------------------------------------------------------------------- decisions
class _Metrics:
    def __init__(self) -> None:
        self.counts: dict = {}

    def inc(self, name, labels=(), value=1):
        k = (name, labels)
        self.counts[k] = self.counts.get(k, 0) + value


class _Deps:
    def __init__(self) -> None:
        self.metrics = _Metrics()


def _run(headers, *, status=200, ae=b"gzip", method="GET", cfg=None, chunks=(TEXT,)):
    deps = _Deps()
    mw = Compression(cfg or CompressionConfig(), deps)
    ctx = Ctx(Request.build(method, b"/", [(b"accept-encoding", ae)] if ae is not None else []))
    head = ResponseHead(status, b"OK", headers=[(n, v) for n, v in headers])
    mw.response_filter(ctx, head)
    out = b"".join(mw.response_body_filter(ctx, c, False) for c in chunks) + mw.response_body_filter(ctx, b"", True)
    return head, out, deps.metrics.counts


def test_decision_compresses_and_rewrites_the_head():
    head, out, counts = _run([(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(TEXT)),
                              (b"ETag", b'"x"'), (b"Vary", b"Origin"), (b"Accept-Ranges", b"bytes")])
    assert head.length_dropped and head.get(b"content-length") is None
    assert head.get(b"content-encoding") == b"gzip" and head.get(b"etag") == b'W/"x"'
    assert head.get(b"vary") == b"Origin, Accept-Encoding" and head.get(b"accept-ranges") is None
    assert gzip.decompress(out) == TEXT
    assert counts[("fastgw_compression_responses_total", (("algorithm", "gzip"),))] == 1
    assert counts[("fastgw_compression_input_bytes_total", (("algorithm", "gzip"),))] == len(TEXT)
    assert counts[("fastgw_compression_output_bytes_total", (("algorithm", "gzip"),))] == len(out)


def test_streamed_pieces_and_one_shot_give_the_same_body():
    pieces = [TEXT[i:i + 7000] for i in range(0, len(TEXT), 7000)]
    _h, streamed, _c = _run([(b"content-type", b"text/plain")], ae=b"br", chunks=pieces)
    assert brotli.decompress(streamed) == TEXT


@pytest.mark.parametrize("headers,kw,reason", [
    ([(b"content-type", b"application/json")], {"method": "HEAD"}, "head"),
    ([(b"content-type", b"application/json")], {"status": 304}, "status"),
    ([(b"content-type", b"application/json")], {"status": 206}, "partial"),
    ([(b"content-type", b"application/json"), (b"content-encoding", b"gzip")], {}, "encoded"),
    ([(b"content-type", b"application/json"), (b"cache-control", b"No-Transform")], {}, "no_transform"),
    ([(b"content-type", b"application/json"), (b"cache-control", b"public"), (b"cache-control", b"no-transform")],
     {}, "no_transform"),
    ([(b"content-type", b"application/json"), (b"content-encoding", b"br"), (b"content-encoding", b"identity")],
     {}, "encoded"),
    ([(b"content-type", b"image/jpeg")], {}, "type"),
    ([(b"content-type", b"text/event-stream")], {}, "type"),
    ([], {}, "type"),
    ([(b"content-type", b"application/json"), (b"content-length", b"10")], {}, "too_small"),
    ([(b"content-type", b"application/json")], {"ae": b"deflate"}, "not_accepted"),
    ([(b"content-type", b"application/json")], {"ae": None}, "not_accepted"),
])
def test_skip_reasons(headers, kw, reason):
    head, out, counts = _run(headers, **kw)
    assert out == TEXT
    assert head.get(b"content-encoding") == next((v for n, v in headers if n == b"content-encoding"), None)
    assert counts == {("fastgw_compression_skipped_total", (("reason", reason),)): 1}
    assert not head.length_dropped


def test_event_stream_flushes_each_piece_when_enabled():
    deps = _Deps()
    mw = Compression(CompressionConfig(event_stream=True), deps)
    ctx = Ctx(Request.build("GET", b"/", [(b"accept-encoding", b"gzip")]))
    head = ResponseHead(200, b"OK", headers=[(b"content-type", b"text/event-stream")])
    mw.response_filter(ctx, head)
    d = zlib.decompressobj(31)
    for i in range(3):
        ev = b"data: %d\n\n" % i
        assert d.decompress(mw.response_body_filter(ctx, ev, False)) == ev  # decodable at once


def test_local_replies_are_left_alone():
    mw = Compression(CompressionConfig(), _Deps())
    ctx = Ctx(Request.build("GET", b"/", [(b"accept-encoding", b"gzip")]))
    reply = Reply(401, [(b"content-type", b"application/json")], b"x" * 5000)
    mw.response_filter(ctx, reply)
    assert reply.get(b"content-encoding") is None and reply.body == b"x" * 5000
