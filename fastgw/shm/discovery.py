"""Discovered instances: per service, the address set DNS discovery found (L2).

The control process resolves (``fastgw.resilience.discovery``) and publishes each
service's set here; every worker compares the row's generation on its tick (one load per
discovered service per second) and rebuilds that service's instances when it moved
(``fastgw.runtime.discovered``).  No reload, no message per change.

Layout: ``ROWS`` rows of one service each (``config.discovery.MAX_SERVICES``), a row being
``key, seq, count`` then ``ENTRIES`` entries of four cells: the address as 128 bits (IPv4
as ``::ffff:a.b.c.d``) in two cells, ``port << 32 | weight``, and the instance's health
table slot.  A row is found by its key (a hash of the service name) with linear probing
from ``key % ROWS``.

Who writes what: only the control process writes (rows are claimed by it, entries
published by it); workers and the admin API read.  ``seq`` is a sequence lock: the writer
makes it odd, writes the entries and the count, then makes it even; a reader that sees an
odd ``seq``, or a ``seq`` that moved while it read, keeps what it had and tries again on
its next tick.  ``seq`` 0 = never published (the service's first lookup has not
answered: its requests get 503), so ``seq // 2`` is the row's generation.
"""

from __future__ import annotations

import hashlib
import ipaddress

from fastgw.config.discovery import MAX_ENTRIES, MAX_SERVICES
from fastgw.shm.layout import align

ROWS = MAX_SERVICES
ENTRIES = MAX_ENTRIES
_HEAD = 3                       # key, seq, count
_E = 4                          # addr hi, addr lo, port<<32|weight, slot
_ROW = _HEAD + _E * ENTRIES     # cells per row
_V4 = 0xFFFF << 32


def size() -> int:
    return align(8 * _ROW * ROWS)


def service_key(service: str) -> int:
    """The nonzero 63-bit key of a service's row."""
    h = hashlib.blake2b(b"discovery\0" + service.encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 1) or 1


def _pack(addr: str) -> int:
    ip = ipaddress.ip_address(addr)
    return int(ip) | _V4 if ip.version == 4 else int(ip)


def _unpack(n: int) -> str:
    if n >> 32 == 0xFFFF:
        return str(ipaddress.IPv4Address(n & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(n))


class DiscoveryTable:
    __slots__ = ("_q", "_base")

    def __init__(self, q: memoryview, offset: int) -> None:
        self._q = q
        self._base = offset // 8

    def _row(self, r: int) -> int:
        return self._base + r * _ROW

    def find(self, service: str) -> int:
        """The row of ``service``, or -1 (never published)."""
        key, q = service_key(service), self._q
        for n in range(ROWS):
            r = (key + n) % ROWS
            v = q[self._row(r)]
            if v == key:
                return r
            if v == 0:
                return -1
        return -1

    # ------------------------------------------------------------------ control process
    def claim(self, service: str, live: set[str]) -> int:
        """Control process: the row of ``service``, claimed when new; when every row is
        taken, one of a service not in ``live`` is reused (cleared).  -1: none free."""
        r = self.find(service)
        if r >= 0:
            return r
        key, q = service_key(service), self._q
        for n in range(ROWS):
            r = (key + n) % ROWS
            if q[self._row(r)] == 0:
                q[self._row(r)] = key
                return r
        keep = {service_key(s) for s in live}
        for r in range(ROWS):
            b = self._row(r)
            if q[b] not in keep:   # reused, never emptied: linear probing keeps working
                q[b + 1] += 1
                q[b + 2] = 0
                q[b] = key
                q[b + 1] += 1
                return r
        return -1

    def publish(self, r: int, entries) -> int:
        """Control process: row ``r`` now holds ``entries`` ((address, port, weight,
        slot), at most ``ENTRIES``); returns the new generation."""
        q, b = self._q, self._row(r)
        entries = list(entries)[:ENTRIES]
        q[b + 1] += 1                       # odd: readers keep what they have
        for k, (addr, port, weight, slot) in enumerate(entries):
            e = b + _HEAD + k * _E
            n = _pack(addr)
            q[e] = n >> 64
            q[e + 1] = n & 0xFFFFFFFFFFFFFFFF
            q[e + 2] = port << 32 | weight
            q[e + 3] = slot
        q[b + 2] = len(entries)
        q[b + 1] += 1                       # even again: a new generation
        return q[b + 1] // 2

    # ------------------------------------------------------------------ readers
    def seq(self, r: int) -> int:
        """The row's sequence word (the workers' tick compares it)."""
        return self._q[self._row(r) + 1]

    def read(self, r: int):
        """(seq, [(address, port, weight, slot)]) of row ``r``, or None while it is being
        written (or was written while read: try later)."""
        q, b = self._q, self._row(r)
        s = q[b + 1]
        if s & 1:
            return None
        n = min(q[b + 2], ENTRIES)
        raw = [tuple(q[b + _HEAD + k * _E:b + _HEAD + (k + 1) * _E]) for k in range(n)]
        if q[b + 1] != s:
            return None
        return s, [(_unpack(hi << 64 | lo), pw >> 32, pw & 0xFFFFFFFF, slot) for hi, lo, pw, slot in raw]

    def slots(self) -> set[int]:
        """Every health-table slot a published row names (the supervisor keeps them
        when it assigns the slots of a reloaded config)."""
        out = set()
        for r in range(ROWS):
            if self._q[self._row(r)]:
                got = self.read(r)
                if got is not None:
                    out.update(e[3] for e in got[1])
        return out
