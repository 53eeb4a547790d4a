"""Schema of a route's traffic mirror: ``services.<name>.routes[i].mirror`` (L1).

    mirror: {service: items-shadow, percent: 10, methods: [GET, HEAD]}

A copy of ``percent`` % of the route's requests whose method is in ``methods`` goes to
the ``service`` (its URL or first instance), fire-and-forget: the client's response is
never changed or delayed, and the shadow's answer only feeds a metric.  Middleware:
``fastgw.middleware.mirror``.

Rules: the service exists (``semantics``) and is not the route's own; ``methods``
default to the idempotent GET and HEAD (a POST copy would repeat a side effect on the
shadow: list it explicitly to mirror it); ``Authorization`` and ``Cookie`` are removed
from the copy unless ``keep_credentials``; a body is copied only when the whole body
arrived with the head and is at most ``max_body_size`` (else the copy is skipped);
``max_in_flight`` copies at most are under way per worker (more are dropped and counted).
"""

from __future__ import annotations

from typing import Annotated, Iterator

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration, Size

Method = Annotated[str, Check(v.http_method)]


def _get_head() -> list[str]:
    return ["GET", "HEAD"]


class MirrorConfig(Base):
    service: Annotated[str, Check(v.non_empty)]
    percent: Annotated[float, msgspec.Meta(gt=0, le=100)] = 100.0
    methods: list[Method] = msgspec.field(default_factory=_get_head)
    keep_credentials: bool = False
    max_body_size: Size = Size(64 * 1024)
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    timeout: PositiveDuration = Duration(5)

    def _check(self) -> Iterator[tuple[str, str]]:
        if not self.methods:
            yield "methods", "must list at least one method"
