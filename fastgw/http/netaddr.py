"""Address sets for trust decisions (L2): trusted proxies, PROXY-protocol sources.

``TrustedNets`` answers "is this peer address in these CIDRs" with a bounded cache (a
worker sees the same few load-balancer addresses over and over).  IPv4-mapped IPv6
addresses (``::ffff:10.0.0.5``, what a dual-stack ``::`` listener reports for IPv4
peers) are folded to IPv4 first, so ``10.0.0.0/8`` matches them.
"""

from __future__ import annotations

import ipaddress


def parse_ip(ip: str):
    """An ip_address, IPv4-mapped IPv6 folded to IPv4; raises ValueError."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


class TrustedNets:
    __slots__ = ("nets", "_cache")

    def __init__(self, cidrs) -> None:
        self.nets = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.nets)

    def __contains__(self, ip: str) -> bool:
        c = self._cache
        r = c.get(ip)
        if r is None:
            try:
                addr = parse_ip(ip)
                r = any(addr in n for n in self.nets)
            except ValueError:
                r = False
            if len(c) > 4096:
                c.clear()
            c[ip] = r
        return r


def client_from_xff(xff: bytes, peer: str, is_trusted) -> str:
    """The client address of a request from trusted proxy ``peer``: X-Forwarded-For read
    right to left past trusted proxies (``is_trusted(ip)``).

    The first address that is not a trusted proxy is the client.  An entry that is not
    an IP address ends the walk at the last trusted hop (garbage is not a client).
    """
    last = peer
    for raw in reversed(xff.split(b",")):
        ip = raw.strip().decode("latin-1")
        if ip.startswith("[") and "]" in ip:
            ip = ip[1:ip.index("]")]
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return last
        if not is_trusted(ip):
            return ip
        last = ip
    return last
