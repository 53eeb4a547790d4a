"""Schema of a rate-limit rule (L1): per service, per route, and (numbers only) per tier.

A rule is GCRA (a token bucket): ``burst`` requests at once, refilled at
``requests_per_second``.  ``key`` says whose budget a request spends:

- ``total`` (default): one budget for every client (protects the service);
- ``ip``: the client address (after PROXY protocol / trusted X-Forwarded-For);
- ``user``: the ``sub`` of the verified token;
- ``header:NAME``: the value of request header NAME (case-insensitive);
- a list of the above: one budget per combination (``[ip, "header:X-Tenant"]``).

A request with no value for a part (no verified user, header absent) is keyed by its
client address for that part, so it is never unlimited by accident.  ``backend`` is
``memory`` (the shared-memory table, per host) or ``redis`` (shared by every gateway host;
needs ``rate_limit.redis.url``).  See docs/ratelimit.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check

KEY_WORDS = ("total", "ip", "user")
HEADER_PREFIX = "header:"


def key_part(p: str) -> str:
    """One part of a rule's key: ``total``, ``ip``, ``user`` or ``header:NAME`` (the
    header name lower-cased)."""
    if not isinstance(p, str):
        raise ValueError(f"expected 'total', 'ip', 'user' or 'header:NAME', got {p!r}")
    low = p.strip().lower()
    if low in KEY_WORDS:
        return low
    if low.startswith(HEADER_PREFIX):
        name = p.strip()[len(HEADER_PREFIX):].strip()
        if not name:
            raise ValueError("'header:' needs a header name, e.g. 'header:X-API-Key'")
        try:
            v.header_name(name)
        except ValueError as e:
            raise ValueError(f"{p!r}: {e}") from None
        return HEADER_PREFIX + name.lower()
    raise ValueError(f"expected 'total', 'ip', 'user' or 'header:NAME', got {p!r}")


def rule_key(k: str | list[str]) -> str | list[str]:
    """A rule's ``key``, normalised: one part as a string, several as a list of distinct
    parts; ``total`` cannot be combined (one budget for everyone has no parts)."""
    if isinstance(k, str):
        return key_part(k)
    if not k:
        raise ValueError("must not be empty (use 'total' for one budget for everyone)")
    parts = [key_part(p) for p in k]
    if len(parts) == 1:
        return parts[0]
    if "total" in parts:
        raise ValueError("'total' cannot be combined with other key parts")
    dup = sorted({p for p in parts if parts.count(p) > 1})
    if dup:
        raise ValueError(f"duplicate key part {dup[0]!r}")
    return parts


def key_parts(k: str | list[str]) -> tuple[str, ...]:
    """The parts of a normalised key; () for ``total``."""
    parts = (k,) if isinstance(k, str) else tuple(k)
    return () if parts == ("total",) else parts


class RateLimitRule(Base):
    requests_per_second: Annotated[float, msgspec.Meta(gt=0)]
    burst: Annotated[int, msgspec.Meta(ge=1)]
    key: Annotated[str | list[str], Check(rule_key)] = "total"
    backend: Literal["memory", "redis"] = "memory"
