"""Schema of the global ``rate_limit`` section (L1).

The seed writes tiers as keys next to the options::

    rate_limit:
      default:       {requests_per_second: 100, burst: 200}   # anonymous, keyed by client IP
      authenticated: {requests_per_second: 50,  burst: 100}   # any valid token, keyed by sub
      admin:         {requests_per_second: 200, burst: 400}   # tokens with role 'admin'
      exempt_roles: [admin]

Every key that is not an option below is a tier; the ``tiers`` field is *inline* (the
loader collects the remaining keys into it, and their paths stay ``rate_limit.<tier>``).
A tier sets only ``requests_per_second`` and ``burst``: its key is given by the tier itself
(``default``: client IP; the others: the token's ``sub``) and its backend by the section's
``backend`` option.  Tier names other than ``default``/``authenticated`` must be roles of
``auth.roles`` (checked in ``crosscheck``).  How the limits combine: docs/ratelimit.md.
"""

from __future__ import annotations

from typing import Annotated, Iterator, Literal

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration, Secret
from fastgw.config.ratelimit import RateLimitRule

BUILTIN_TIERS = ("default", "authenticated")
TABLE_SLOTS = 65536         # rate_limit.table_slots by default (also without a rate_limit section)
TIER_FIELDS = ("requests_per_second", "burst")


class RateLimitHeadersConfig(Base):
    ietf: bool = True  # RateLimit-Policy and RateLimit fields
    legacy: bool = False  # X-RateLimit-Limit/Remaining/Reset
    on_allowed: bool = False  # also on allowed responses, not only on 429


class RedisConfig(Base):
    url: Secret | None = None  # may carry a password: redacted
    timeout: PositiveDuration = Duration(0.05)
    on_error: Literal["open", "closed"] = "open"


class RateLimitSection(Base):
    tiers: Annotated[dict[Annotated[str, Check(v.name)], RateLimitRule], msgspec.Meta(extra={"inline": True})] = {}
    exempt_roles: list[str] = []
    dry_run: bool = False
    headers: RateLimitHeadersConfig = msgspec.field(default_factory=RateLimitHeadersConfig)
    redis: RedisConfig | None = None
    table_slots: Annotated[int, Check(v.power_of_two, le=1 << 24)] = TABLE_SLOTS
    backend: Literal["memory", "redis"] = "memory"  # where the tiers' state lives
    ipv6_prefix: Annotated[int, msgspec.Meta(ge=32, le=128)] = 64  # an 'ip' key groups IPv6 clients by this prefix

    def _check(self) -> Iterator[tuple[str, str]]:
        for tier, rule in self.tiers.items():
            for f in msgspec.structs.fields(rule):
                if f.name in TIER_FIELDS or f.required:
                    continue
                default = f.default if f.default_factory is msgspec.NODEFAULT else f.default_factory()
                if getattr(rule, f.name) != default:
                    yield f"{tier}.{f.encode_name}", (
                        "not allowed in a tier: a tier sets only requests_per_second and burst"
                    )


def table_slots(section: RateLimitSection | None) -> int:
    """The shared rate-limit table's size: ``rate_limit.table_slots``, or its default
    when there is no ``rate_limit`` section."""
    return section.table_slots if section is not None else TABLE_SLOTS
