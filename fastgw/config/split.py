"""Schema of a route's traffic split: ``services.<name>.routes[i].split`` (L1).

    split:
      to: [{service: items, weight: 95}, {service: items-canary, weight: 5}]
      hash_key: user                       # optional: ip | user | header:NAME | cookie:NAME
      override: {header: X-Canary, cookie: canary}   # optional: forces the canary

The route's own settings (auth, limits, timeout, middlewares) apply whichever side is
chosen; each side uses its service's instances and pools.  Without ``hash_key`` each
request picks a side at random by weight; with it, one client always lands on the same
side (a stable hash of the key, the same in every worker and after a restart; a request
without the key is hashed by its client address).  ``override``: a request whose header
is set (not empty, ``0``, ``false`` or ``no``) or whose cookie has such a value goes to
the canary, the side named by ``override.to`` (default: the side with the smallest
weight, the last one on a tie).

Rules: at least two sides, distinct services, weights >= 0 and not all 0; the services
exist (``semantics``); ``override`` sets a header or a cookie; ``override.to`` is one of
the sides.
"""

from __future__ import annotations

from typing import Annotated, Iterator

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check

KEY_WORDS = ("ip", "user")
PREFIXES = ("header:", "cookie:")


def hash_key(k: str) -> str:
    """``ip``, ``user``, ``header:NAME`` (name lower-cased) or ``cookie:NAME``."""
    low = k.strip().lower()
    if low in KEY_WORDS:
        return low
    for p in PREFIXES:
        if low.startswith(p):
            name = k.strip()[len(p):].strip()
            if not name:
                raise ValueError(f"'{p}' needs a name, e.g. '{p}X-User'")
            v.header_name(name)  # (a cookie name is a token too)
            return p + (name.lower() if p == "header:" else name)
    raise ValueError(f"expected 'ip', 'user', 'header:NAME' or 'cookie:NAME', got {k!r}")


class SplitSide(Base):
    service: Annotated[str, Check(v.non_empty)]
    weight: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]


class SplitOverride(Base):
    header: Annotated[str, Check(v.header_name)] | None = None
    cookie: Annotated[str, Check(v.header_name)] | None = None
    to: str | None = None  # the forced side's service; default: the smallest weight

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.header is None and self.cookie is None:
            yield "", "give a 'header' or a 'cookie' (or both) that forces the canary"


class SplitConfig(Base):
    to: Annotated[list[SplitSide], msgspec.Meta(min_length=2)]
    hash_key: Annotated[str, Check(hash_key)] | None = None
    override: SplitOverride | None = None

    def _check(self) -> Iterator[tuple[str, str]]:
        seen: set[str] = set()
        for i, side in enumerate(self.to):
            if side.service in seen:
                yield f"to[{i}].service", f"{side.service!r} is already a side of this split"
            seen.add(side.service)
        if self.to and not any(s.weight > 0 for s in self.to):
            yield "to", "every weight is 0: no side could get a request"
        o = self.override
        if o is not None and o.to is not None and o.to not in seen:
            yield "override.to", f"{o.to!r} is not one of the split's services ({', '.join(sorted(seen))})"

    def canary(self) -> str:
        """The service an override forces."""
        if self.override is not None and self.override.to is not None:
            return self.override.to
        low = min(s.weight for s in self.to)
        return [s.service for s in self.to if s.weight == low][-1]
