"""Schema of a service's load-balancing settings (L1): ``load_balancing``, ``hash_key``,
``sticky`` and ``slow_start`` (the fields sit on ``ServiceConfig``; the algorithms are in
``fastgw.upstream.balance``, docs/resilience.md "Load balancing" says when to use which).

Rules kept here (``ServiceConfig._check`` yields them with the service's path):
- ``hash_key`` is required by ``ring_hash`` and ``maglev`` and refused by the others;
  it is ``ip``, ``user``, ``path``, ``header:NAME`` or ``cookie:NAME`` (NAME a token);
- ``sticky.secret`` is set and not empty; ``same_site`` is ``Strict``, ``Lax`` or
  ``None``, and ``None`` needs ``secure: true`` (browsers drop such cookies otherwise);
- ``slow_start`` applies to the weighted algorithms (round_robin, least_request,
  random): a consistent hash has no share to ramp (it would move keys instead).
"""

from __future__ import annotations

from typing import Annotated, Iterator, Literal

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration, Secret

ALGORITHMS = ("round_robin", "least_request", "random", "ring_hash", "maglev")
LoadBalancing = Literal["round_robin", "least_request", "random", "ring_hash", "maglev"]
HASHED = ("ring_hash", "maglev")
KEY_WORDS = ("ip", "user", "path")
PREFIXES = ("header:", "cookie:")


def parse_hash_key(k: str) -> tuple[str, str | None]:
    """``"header:X-User"`` -> ("header", "x-user"); ``"ip"`` -> ("ip", None)."""
    s = k.strip()
    low = s.lower()
    if low in KEY_WORDS:
        return low, None
    for p in PREFIXES:
        if low.startswith(p):
            name = s[len(p):].strip()
            if not name:
                raise ValueError(f"'{p}' needs a name, e.g. '{p}X-User-ID'")
            v.header_name(name)  # (a cookie name is a token too)
            return p[:-1], (name.lower() if p == "header:" else name)
    raise ValueError(f"expected 'ip', 'user', 'path', 'header:NAME' or 'cookie:NAME', got {k!r}")


def hash_key(k: str) -> str:
    parse_hash_key(k)
    return k


def _cookie_name(n: str) -> str:
    v.header_name(n)   # RFC 6265 cookie-name is an RFC 7230 token
    return n


def _secret(s: str) -> str:
    if not str(s).strip():
        raise ValueError("must not be empty: the cookie's HMAC key (e.g. \"${STICKY_SECRET}\")")
    return s


class StickyConfig(Base):
    """``sticky``: a cookie naming the instance that served the client."""

    secret: Annotated[Secret, Check(_secret)]      # HMAC key of the cookie value
    cookie: Annotated[str, Check(_cookie_name)] = "fgw_affinity"
    ttl: PositiveDuration | None = Duration(3600)   # Max-Age; None = a session cookie
    secure: bool = False
    same_site: Literal["Strict", "Lax", "None"] = "Lax"
    path: Annotated[str, Check(v.simple_path)] = "/"

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.same_site == "None" and not self.secure:
            yield "same_site", "None requires secure: true (browsers refuse SameSite=None without Secure)"


HashKey = Annotated[str, Check(hash_key)]


def check_service(svc) -> Iterator[tuple[str, str]]:
    """The cross-field rules of a service's balancing settings (field, message)."""
    lb = svc.load_balancing
    if lb in HASHED and svc.hash_key is None:
        yield "hash_key", f"required by load_balancing: {lb} (ip, user, path, header:NAME or cookie:NAME)"
    elif lb not in HASHED and svc.hash_key is not None:
        yield "hash_key", f"only used by ring_hash and maglev, not by load_balancing: {lb}"
    if svc.slow_start is not None and lb in HASHED:
        yield "slow_start", f"applies to round_robin, least_request and random, not to {lb} (it would move keys)"
