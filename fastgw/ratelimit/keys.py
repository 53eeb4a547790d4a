"""Limit keys: the bytes that name one budget (L4 helper of the rate-limit middlewares).

A key is ``<limit prefix><part>\\0<part>...``: the prefix names the limit (``t:default\\0``
for a tier, ``s:<service>\\0``, ``r:<route>\\0``, ``af\\0`` for failed authentications), so
two limits never share a budget; each part is tagged with its kind, so values of
different kinds never collide:

- ``i=<address>``  the client address (``ctx.client_ip``, already resolved through PROXY
  protocol and trusted ``X-Forwarded-For``; never a header of an untrusted peer).  IPv4
  as written (IPv4-mapped IPv6 folded to IPv4); IPv6 grouped by its ``ipv6_prefix``
  network (``2001:db8:1:2::/64``): one host owns a whole /64, so a per-address key would
  let it pick a fresh address per request.
- ``u=<sub>``      the verified token's subject.
- ``h=<value>``    a request header's value (the last one if repeated).

Rule: a part with no value (no verified user, header absent or empty) is keyed by the
client address instead (``i=``), so a request is never unlimited by accident; the ``i=``
tag keeps that fallback budget apart from a header whose value happens to be an address.

A part longer than ``MAX_PART`` bytes is replaced by ``#`` + its 16-byte BLAKE2b digest,
so a client cannot make the per-process key memos (here and in the table) hold large
values.  Address parts, and whole keys of the usual one-part ``ip`` and ``user`` limits,
are memoised in bounded dicts (cleared when full), so a repeat client costs one lookup.
Those key functions say what their key depends on (``fn.by``: ``""`` nothing, ``"ip"``
the client address, ``"user"`` the verified subject when there is one, else the
address), so a set of such limits can memoise its whole request (``LimitSet.memo_by``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from hashlib import blake2b

from fastgw.config.ratelimit import HEADER_PREFIX

MAX_PART = 64
MEMO_MAX = 8192

KeyFn = Callable[[object], bytes]


def _short(v: bytes) -> bytes:
    return v if len(v) <= MAX_PART else b"#" + blake2b(v, digest_size=16).digest()


def ip_text(ip: str, v6_prefix: int = 64) -> bytes:
    """The address part of a key for textual address ``ip`` (uncached)."""
    try:
        a = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return _short(ip.encode("utf-8", "surrogateescape"))    # not an address: as is
    if a.version == 6:
        if a.ipv4_mapped is not None:
            return str(a.ipv4_mapped).encode()
        if v6_prefix < 128:
            return str(ipaddress.ip_network(f"{a}/{v6_prefix}", strict=False)).encode()
    return str(a).encode()


class IpParts:
    """``client_ip`` -> ``i=<address>`` part, memoised (one per config, shared by its keys)."""

    __slots__ = ("v6_prefix", "memo")

    def __init__(self, v6_prefix: int = 64) -> None:
        self.v6_prefix = v6_prefix
        self.memo: dict[str, bytes] = {}

    def __call__(self, ip: str) -> bytes:
        p = self.memo.get(ip)
        if p is None:
            p = b"i=" + ip_text(ip, self.v6_prefix)
            if len(self.memo) >= MEMO_MAX:
                self.memo.clear()
            self.memo[ip] = p
        return p


def key_fn(prefix: bytes, parts: tuple[str, ...], ips: IpParts) -> KeyFn:
    """``fn(ctx) -> key bytes`` for a limit with this prefix and these normalised key parts
    (``()`` for one budget for everyone).  The usual shapes get a specialised function."""
    if not parts:
        def const(ctx) -> bytes:
            return prefix
        const.by = ""
        return const
    if parts == ("ip",):
        memo: dict[str, bytes] = {}

        def by_ip(ctx) -> bytes:
            ip = ctx.client_ip
            k = memo.get(ip)
            if k is None:
                if len(memo) >= MEMO_MAX:
                    memo.clear()
                k = memo[ip] = prefix + ips(ip)
            return k
        by_ip.by = "ip"
        return by_ip
    if parts == ("user",):
        umemo: dict[str, bytes] = {}

        def by_user(ctx) -> bytes:
            u = ctx.user
            if u:
                k = umemo.get(u)
                if k is None:
                    if len(umemo) >= MEMO_MAX:
                        umemo.clear()
                    k = umemo[u] = prefix + b"u=" + _short(u.encode("utf-8", "surrogateescape"))
                return k
            return prefix + ips(ctx.client_ip)
        by_user.by = "user"
        return by_user
    getters = tuple(_part(p, ips) for p in parts)
    if len(getters) == 1:
        g = getters[0]
        return lambda ctx: prefix + g(ctx)

    def combined(ctx) -> bytes:
        return prefix + b"\0".join([g(ctx) for g in getters])
    return combined


def _part(part: str, ips: IpParts) -> KeyFn:
    if part == "ip":
        return lambda ctx: ips(ctx.client_ip)
    if part == "user":
        def user(ctx) -> bytes:
            u = ctx.user
            return b"u=" + _short(u.encode("utf-8", "surrogateescape")) if u else ips(ctx.client_ip)
        return user
    if part.startswith(HEADER_PREFIX):
        lname = part[len(HEADER_PREFIX):].encode("latin-1")

        def header(ctx) -> bytes:
            v = ctx.header(lname)
            if v:
                v = v.strip()
            return b"h=" + _short(v) if v else ips(ctx.client_ip)
        return header
    raise ValueError(f"unknown key part {part!r}")
