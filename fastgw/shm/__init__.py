"""Shared memory (L2): the one region the supervisor creates before fork.

Workers share nothing on the hot path but this region.  Every cell has one writer, or
is changed under a per-bucket ``fcntl`` lock that the kernel releases when its holder
dies; no lock a killed process can leave held.  See ``region`` for the map of parts and
writers, and each part's module header for its rules: ``workers``, ``metrics``,
``ratelimit``, ``health``, ``broadcast``, ``breaker``; ``layout`` has the versioned header.
"""

from fastgw.shm.layout import LayoutError
from fastgw.shm.region import Region

__all__ = ["LayoutError", "Region"]
