"""Schema of ``services.<name>.discovery``: instances found in DNS (L1).

``{type: dns, name: "host:port"}`` makes each A/AAAA address of ``host`` an instance on
``port``; ``{type: dns_srv, name: "_http._tcp.svc.internal"}`` makes each SRV target of
the lowest priority an instance on its port, with the SRV weight.  The resolution runs in
the control process (``fastgw.resilience.discovery``); docs/resilience.md "Discovery".

Rules kept here:
- ``dns`` names a host and a port; ``dns_srv`` a name without a port;
- ``min_ttl <= max_ttl``; ``resolvers`` are IP addresses with an optional ``:port``
  (``[v6]:port`` for IPv6), none = the system's (``/etc/resolv.conf``);
- at most ``MAX_ENTRIES`` instances per service are used (the shared-memory table's row).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Iterator, Literal

from fastgw.config.base import Base, Check, Duration, PositiveDuration

MAX_SERVICES = 32   # services with discovery per gateway (rows of shm.discovery)
MAX_ENTRIES = 64    # instances per discovered service (entries of a row)

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def dns_name(v: str) -> str:
    """A DNS name (underscore labels allowed, for SRV), optionally ending in a dot."""
    n = v[:-1] if v.endswith(".") else v
    if not n or len(n) > 253 or not all(_LABEL.fullmatch(lb) for lb in n.split(".")):
        raise ValueError(f"invalid DNS name {v!r}")
    return v


def resolver_addr(v: str) -> str:
    """``127.0.0.1``, ``127.0.0.1:5353``, ``::1`` or ``[::1]:5353``."""
    parse_resolver(v)
    return v


def parse_resolver(v: str) -> tuple[str, int]:
    host, port = v, 53
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"invalid resolver {v!r}: expected [IPv6]:port")
            port = int(rest[1:])
    elif v.count(":") == 1:
        host, _, p = v.partition(":")
        if not p.isdigit():
            raise ValueError(f"invalid resolver {v!r}: the port must be a number")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid resolver {v!r}: expected an IP address (host:port), not a name") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid resolver {v!r}: port out of range")
    return host, port


class DiscoveryConfig(Base):
    """Where a service's instances come from when they are not in the file."""

    type: Literal["dns", "dns_srv"]
    name: str  # dns: "host:port"; dns_srv: the SRV name
    refresh: PositiveDuration = Duration(30)   # the longest wait between two lookups
    min_ttl: PositiveDuration = Duration(1)    # a shorter TTL counts as this
    max_ttl: PositiveDuration = Duration(300)  # a longer TTL counts as this
    timeout: PositiveDuration = Duration(2)    # one lookup, retries on other resolvers included
    scheme: Literal["http", "https"] = "http"
    resolvers: list[Annotated[str, Check(resolver_addr)]] = []

    def host_port(self) -> tuple[str, int | None]:
        """(name to look up, port): the port is None for ``dns_srv`` (from the records)."""
        if self.type == "dns_srv":
            return self.name, None
        host, _, port = self.name.rpartition(":")
        return host, int(port)

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.type == "dns":
            host, sep, port = self.name.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                yield "name", f"type dns needs host:port (e.g. 'svc.internal:8080'), got {self.name!r}"
                return
            name = host
        else:
            if ":" in self.name:
                yield "name", f"type dns_srv takes a name without a port (the records carry it), got {self.name!r}"
                return
            name = self.name
        try:
            dns_name(name)
        except ValueError as e:
            yield "name", str(e)
        if self.min_ttl > self.max_ttl:
            yield "min_ttl", f"is above max_ttl ({self.min_ttl:g}s > {self.max_ttl:g}s)"
