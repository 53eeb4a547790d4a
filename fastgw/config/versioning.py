"""Schema of API versions: ``gateway.versioning`` and a route's ``deprecation`` (L1).

``gateway.versioning`` says how a request names the API version it wants, for routes
with ``match: {version: "2"}``: the ``header`` (``API-Version: 2``) first, then, with
``media_type``, the ``Accept`` header (``application/vnd.arx.v2+json`` or a
``;version=2`` parameter), else ``default`` (a request that names no version and has no
default matches no version condition).  A version in the path needs nothing here: it is
an ordinary path route, which declares its ``version:`` for headers, metrics and
``fastgw routes``.

``deprecation`` (middleware ``fastgw.middleware.deprecation``): from ``deprecated`` on,
responses carry ``Deprecation: @<unix seconds>`` (RFC 9745) and ``Link: <link>;
rel="deprecation"``; ``Sunset: <HTTP-date>`` (RFC 8594) and ``Link: <successor>;
rel="successor-version"`` are always sent when set (announcing them early is their
point).  Past ``sunset`` with ``gone_after_sunset``, requests get 410 Gone without
reaching the upstream.

Rules: ``sunset`` is after ``deprecated``; ``gone_after_sunset`` needs a ``sunset``;
``link``/``successor`` are URI references without spaces, quotes or angle brackets
(they go inside ``<...>`` in a Link header).
"""

from __future__ import annotations

from typing import Annotated, Iterator

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Instant
from fastgw.config.match import VersionLabel


def _uri_ref(s: str) -> str:
    if not s or any(c in s for c in ' <>"\\') or any(ord(c) < 0x21 or ord(c) > 0x7E for c in s):
        raise ValueError(f"expected a URL or path without spaces, quotes or '<>' (it goes into a Link header), got {s!r}")
    return s


UriRef = Annotated[str, Check(_uri_ref)]


class VersioningConfig(Base):
    header: Annotated[str, Check(v.header_name)] | None = "API-Version"  # null: no header
    media_type: bool = True
    default: VersionLabel | None = None


class DeprecationConfig(Base):
    deprecated: Instant
    sunset: Instant | None = None
    link: UriRef | None = None
    successor: UriRef | None = None
    gone_after_sunset: bool = False

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.sunset is not None and self.sunset < self.deprecated:
            yield "sunset", "must not be before 'deprecated' (a version is deprecated first, then removed)"
        if self.gone_after_sunset and self.sunset is None:
            yield "gone_after_sunset", "needs a 'sunset' date"
