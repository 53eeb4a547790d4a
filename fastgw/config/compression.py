"""Schema of ``compression``: response compression, gateway-wide, per service
and per route (L1).

The top-level section is the gateway default; ``services.<name>.compression`` and a
route's ``compression`` override it, most specific first.  At each level the value is
omitted (inherit), ``false`` (off there), ``true`` (on, with the default settings) or an
object that replaces the inherited one whole (no key-by-key merge, as for ``cors``):
``effective_compression`` is that rule in one place.

Rules kept here, so that a bad value is a load error naming its path:
1. ``algorithms`` is a non-empty list of ``zstd``, ``br``, ``gzip`` without repeats; its
   order is the server's preference among codings the client accepts equally.
2. ``types`` entries are ``type/subtype`` or ``type/*``; images (except SVG), audio,
   video, fonts and archive formats are refused: they are compressed already and
   re-compressing them costs CPU for nothing (the middleware never compresses them
   either, whatever the list says).
3. ``levels`` are within each library's range: gzip 1-9, br 0-11, zstd 1-19.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Iterator, Literal

import msgspec

from fastgw.config.base import Base, Check, Size

Algorithm = Literal["zstd", "br", "gzip"]
_MEDIA = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/(?:\*|[a-z0-9][a-z0-9!#$&^_.+-]*)\Z")
# never compressed (already compressed formats); image/svg+xml is text
INCOMPRESSIBLE_PREFIXES = ("image/", "audio/", "video/", "font/")
INCOMPRESSIBLE = frozenset({
    "application/zip", "application/gzip", "application/x-gzip", "application/zstd", "application/x-bzip2",
    "application/x-xz", "application/x-7z-compressed", "application/x-rar-compressed", "application/pdf",
    "application/vnd.rar", "application/font-woff", "application/wasm",
})
COMPRESSIBLE_EXCEPTIONS = frozenset({"image/svg+xml", "image/x-icon", "image/bmp"})


def incompressible(essence: str) -> bool:
    """True for a media type that is never compressed (see rule 2)."""
    if essence in COMPRESSIBLE_EXCEPTIONS:
        return False
    return essence in INCOMPRESSIBLE or essence.startswith(INCOMPRESSIBLE_PREFIXES)


def _media_range(x: str) -> str:
    m = x.strip().lower()
    if not _MEDIA.match(m):
        raise ValueError(f"expected a media type like 'application/json' or 'text/*', got {x!r}")
    if m.endswith("/*") and m[:-1] in INCOMPRESSIBLE_PREFIXES or incompressible(m):
        raise ValueError(f"{x!r} is already compressed (images except SVG, audio, video, fonts and "
                         f"archives are never compressed)")
    return m


def _default_algorithms() -> list[str]:
    return ["zstd", "br", "gzip"]


def _default_types() -> list[str]:
    return ["application/json", "text/*", "application/javascript", "image/svg+xml", "application/xml"]


class LevelsConfig(Base):
    """Compression level per algorithm (higher: smaller, slower)."""

    gzip: Annotated[int, msgspec.Meta(ge=1, le=9)] = 5
    br: Annotated[int, msgspec.Meta(ge=0, le=11)] = 4
    zstd: Annotated[int, msgspec.Meta(ge=1, le=19)] = 3


class CompressionConfig(Base):
    algorithms: list[Algorithm] = msgspec.field(default_factory=_default_algorithms)
    min_size: Size = Size(1024)  # a response with a smaller Content-Length goes out as is
    types: list[Annotated[str, Check(_media_range)]] = msgspec.field(default_factory=_default_types)
    levels: LevelsConfig = msgspec.field(default_factory=LevelsConfig)
    event_stream: bool = False  # compress text/event-stream too, flushing after every piece

    def _check(self) -> Iterator[tuple[str, str]]:
        if not self.algorithms:
            yield "algorithms", "must list at least one of zstd, br, gzip (or set compression: false)"
        seen: set[str] = set()
        for i, a in enumerate(self.algorithms):
            if a in seen:
                yield f"algorithms[{i}]", f"duplicate algorithm {a!r}"
            seen.add(a)


def effective_compression(*levels: Any) -> CompressionConfig | None:
    """The setting that applies, from the most general level (gateway) to the most
    specific (route): the last one that is not None wins; False = off, True = defaults."""
    val = None
    for v in levels:
        if v is not None:
            val = v
    if val is None or val is False:
        return None
    if val is True:
        return CompressionConfig()
    return val
