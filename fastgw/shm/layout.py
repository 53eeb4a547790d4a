"""The region's header: magic, layout version, sizes and where each part starts (L2).

Written once by the supervisor in ``Region.create`` before any fork, read by every
process that maps the region (``Region.attach`` checks it).  Nobody writes it afterwards.

Layout (little-endian)::

    0    8s   magic  b"FASTGWSH"
    8    Q    layout version (VERSION); bump it whenever any part's layout changes
    16   Q    header size in bytes
    24   Q    total size of the region in bytes
    32   Q    creator pid
    40   Q    creation time, wall-clock ns
    48   Q... the sizes the parts were built with (PARAMS), then the offset of each part
              (PARTS), then the 16-byte secret of the rate-limit table's keyed hash

Every part starts on a 64-byte boundary (one cache line), so cells written by different
processes never share a line across part boundaries.
"""

from __future__ import annotations

import struct

MAGIC = b"FASTGWSH"
VERSION = 10                # 10: the stripe locks' owner cells and semaphores; 9: the rate-limit table's stripe marks; 8: the breaker slots' failure-ratio window; 7: discovery, the health rows' in-flight and weight cells; 6: circuit breakers; 5: revocation; 4: the health part's ejection and per-worker failure rows; 3: the cache purge log; 2: the rate-limit stripe locks
ALIGN = 64

PARAMS = (
    "max_workers",      # worker slots
    "metric_slots",     # metric areas: workers, then the control process, then the supervisor
    "metrics_series",   # 64-bit cells (and directory entries) per metric area
    "table_slots",      # rate-limit table slots
    "health_slots",     # upstream instances in the health table
    "table_locks",      # the rate-limit table's stripe locks: 0 robust mutexes, 1 fcntl, 2 semaphores (shm/locks.py)
    "revocation_slots", # revocation table slots (auth.revocation.max_entries)
)
PARTS = ("workers", "metrics", "ratelimit", "health", "broadcast", "purge", "revocation", "breaker", "discovery")

_FMT = struct.Struct("<8s" + "Q" * (5 + len(PARAMS) + len(PARTS)) + "16s")
HEADER_SIZE = (_FMT.size + ALIGN - 1) // ALIGN * ALIGN


class LayoutError(ValueError):
    """The mapping is not a fastgw region of this layout version, or is damaged."""


def align(n: int) -> int:
    """``n`` rounded up to the next cache line."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Header:
    """The decoded header: ``params`` and ``offsets`` by name, plus identity fields."""

    __slots__ = ("version", "total_size", "pid", "created_ns", "params", "offsets", "secret")

    def __init__(self, total_size: int, pid: int, created_ns: int, params: dict[str, int],
                 offsets: dict[str, int], secret: bytes, version: int = VERSION) -> None:
        self.version = version
        self.total_size = total_size
        self.pid = pid
        self.created_ns = created_ns
        self.params = params
        self.offsets = offsets
        self.secret = secret

    def write(self, buf) -> None:
        _FMT.pack_into(
            buf, 0, MAGIC, self.version, HEADER_SIZE, self.total_size, self.pid, self.created_ns,
            *(self.params[p] for p in PARAMS), *(self.offsets[p] for p in PARTS), self.secret,
        )

    @classmethod
    def read(cls, buf, size: int) -> Header:
        if size < HEADER_SIZE:
            raise LayoutError(f"shared memory region too small for a header ({size} bytes)")
        fields = _FMT.unpack_from(buf, 0)
        magic, version, hsize, total, pid, created = fields[:6]
        if magic != MAGIC:
            raise LayoutError(f"not a fastgw shared memory region (magic {magic!r})")
        if version != VERSION:
            raise LayoutError(f"shared memory layout version {version}, this build reads {VERSION}")
        if hsize != HEADER_SIZE or total != size:
            raise LayoutError(f"shared memory header says {hsize}/{total} bytes, mapping has {HEADER_SIZE}/{size}")
        n = len(PARAMS)
        params = dict(zip(PARAMS, fields[6:6 + n]))
        offsets = dict(zip(PARTS, fields[6 + n:6 + n + len(PARTS)]))
        for name, off in offsets.items():
            if off % ALIGN or not HEADER_SIZE <= off < total:
                raise LayoutError(f"shared memory part {name!r} at a bad offset {off}")
        return cls(total, pid, created, params, offsets, fields[-1], version)
