"""IP allow/deny lists on the resolved client address (L6).

What it owns: one decision per request, on ``ctx.client_ip`` (the address after PROXY
protocol and trusted ``X-Forwarded-For`` resolution, done by the core; an address
written by an untrusted client is never seen here).

Rules:

1. A ``deny`` match is refused (deny wins, so a hole can be cut in an allowed range).
2. A non-empty ``allow`` refuses every address outside it; an empty one allows the rest.
3. IPv4-mapped IPv6 addresses (``::ffff:10.1.2.3``) are the IPv4 address; a zone id
   (``fe80::1%eth0``) is ignored.  An address that does not parse is refused, even with
   only a deny list: a filter fails closed.
4. Refused: 403 problem+json, response flag ``ip_denied``; nothing reaches the upstream.

Lookups: the CIDRs are compiled at config time into, per address family, one frozenset of
network integers per distinct prefix length, so a check costs one shift and one set lookup
per prefix length in use, whatever the number of entries.  Decisions are memoised per
address string in a bounded dict (cleared when full), so a repeat client costs one dict
lookup.
"""

from __future__ import annotations

import socket

from fastgw.config.security import IpFilterConfig, effective, parse_network
from fastgw.pipeline.middleware import Middleware

_CACHE_MAX = 8192
_V4_MAPPED = 0xFFFF


def _table(nets, version: int) -> tuple[tuple[int, frozenset[int]], ...]:
    """((shift, {network >> shift}), ...) for the networks of one family, longest prefix first."""
    bits = 32 if version == 4 else 128
    by_len: dict[int, set[int]] = {}
    for n in nets:
        if n.version == version:
            by_len.setdefault(n.prefixlen, set()).add(int(n.network_address) >> (bits - n.prefixlen))
    return tuple((bits - plen, frozenset(s)) for plen, s in sorted(by_len.items(), reverse=True))


def _in(table, value: int) -> bool:
    for shift, nets in table:
        if value >> shift in nets:
            return True
    return False


def parse_ip(ip: str) -> tuple[int, int] | None:
    """(version, integer) of a textual address, IPv4-mapped IPv6 folded to IPv4; None if invalid."""
    if "%" in ip:
        ip = ip.partition("%")[0]
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError):
        pass
    try:
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    except (OSError, ValueError):
        return None
    if n >> 32 == _V4_MAPPED:
        return 4, n & 0xFFFFFFFF
    return 6, n


class IpFilter(Middleware):
    name = "ip_filter"

    def __init__(self, cfg: IpFilterConfig, deps=None) -> None:
        super().__init__(cfg, deps)
        allow = [parse_network(c) for c in cfg.allow]
        deny = [parse_network(c) for c in cfg.deny]
        self._allow = {4: _table(allow, 4), 6: _table(allow, 6)}
        self._deny = {4: _table(deny, 4), 6: _table(deny, 6)}
        self._allow_all = not allow
        self._cache: dict[str, bool] = {}

    def allowed(self, ip: str) -> bool:
        """The decision for one address (uncached)."""
        parsed = parse_ip(ip)
        if parsed is None:
            return False  # fail closed: an address we cannot read is never let through a filter
        version, n = parsed
        if _in(self._deny[version], n):
            return False
        return self._allow_all or _in(self._allow[version], n)

    def request_filter(self, ctx):
        """None when the client address may pass; a 403 reply otherwise."""
        ip = ctx.client_ip
        cache = self._cache
        ok = cache.get(ip)
        if ok is None:
            ok = self.allowed(ip)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[ip] = ok
        if ok:
            return None
        ctx.flags.append("ip_denied")
        return ctx.problem(403, "requests from this client address are not allowed", kind="forbidden")


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's IP filter, or None when it is off (or has no rule) for it."""
    cfg = effective(root_cfg.ip_filter, route_cfg.ip_filter if route_cfg is not None else None)
    if cfg is None or not (cfg.allow or cfg.deny):
        return None
    return IpFilter(cfg, deps)
