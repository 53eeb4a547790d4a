"""The shared-memory region: one mapping, created before fork, holding every shared part (L2).

The supervisor calls ``Region.create`` before it forks anything; children inherit the
mapping (MAP_SHARED) and the fd, so every process sees the same bytes and nothing is
reopened after fork.  A single process (tests, ``fastgw`` without a supervisor) uses the
same object.  ``Region.attach(fd)`` maps an existing region from its fd (e.g. one passed
to an exec'd helper) and refuses a different layout version.

The backing file is a memfd (Linux; an unlinked temporary file elsewhere, where the
rate-limit table falls back to ``fcntl`` byte-range locks on it); its size is sealed, so no
process can shrink it under the others' feet.  Nothing in the region is ever resized:
memory is fixed at creation.

Parts and their writers (each module's header has the details):

=============  ====================================  ===========================================
part           written by                            read by
=============  ====================================  ===========================================
header         supervisor, once, before fork         everyone (``attach``)
workers        worker i: slot i; supervisor: retire  supervisor, control
metrics        area i: its owner; supervisor: fold   control (``snapshot`` at scrape time)
ratelimit      any worker, under the stripe's lock   workers
health         control process                       workers
broadcast      supervisor (config), control (purge)  workers, on their tick
purge          control (admin cache purges)          workers, on every cache lookup
revocation     anyone, under the table's lock        workers (their mirror), control (admin)
breaker        workers, under the table's lock       workers (one load per request), control
discovery      control (DNS discovery)               workers, on their tick; supervisor (reload)
=============  ====================================  ===========================================

Ownership of a worker's slot passes to the supervisor when it reaps the worker:
``fold_dead(i)`` then retires the worker slot and folds its metrics, before the
replacement is forked.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from collections.abc import Callable

from fastgw.config.ratelimit_section import TABLE_SLOTS
from fastgw.shm import breaker, broadcast, discovery, health, locks, metrics, purge, ratelimit, revocation, workers
from fastgw.shm.layout import HEADER_SIZE, PARTS, Header, align

EXTRA_METRIC_SLOTS = 2      # metric areas for the control process and the supervisor


def _backing_file(name: str, size: int) -> int:
    """An fd of ``size`` zero bytes that survives fork and is closed on exec."""
    if hasattr(os, "memfd_create"):
        import fcntl

        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        return fd
    f = tempfile.TemporaryFile(prefix=name)     # unlinked; fd survives fork
    fd = os.dup(f.fileno())
    f.close()
    os.set_inheritable(fd, False)
    os.ftruncate(fd, size)
    return fd


class Region:
    """The mapped region and its parts: ``workers``, ``metrics``, ``ratelimit``,
    ``health``, ``broadcast``, ``purge``, ``revocation``, ``breaker``, ``discovery``."""

    __slots__ = ("fd", "size", "header", "_mm", "_q", "workers", "metrics", "ratelimit",
                 "health", "broadcast", "purge", "revocation", "breaker", "discovery")

    def __init__(self, fd: int, mm: mmap.mmap, header: Header,
                 digest: Callable[[bytes], bytes] | None = None) -> None:
        self.fd = fd
        self.size = header.total_size
        self.header = header
        self._mm = mm
        self._q = q = memoryview(mm).cast("Q")
        p, o = header.params, header.offsets
        self.workers = workers.WorkerTable(q, o["workers"], p["max_workers"])
        self.metrics = metrics.MetricsStore(mm, q, o["metrics"], p["metric_slots"], p["metrics_series"])
        self.ratelimit = ratelimit.RateTable(mm, q, fd, o["ratelimit"], p["table_slots"], header.secret, digest,
                                             p["table_locks"])
        self.health = health.HealthTable(mm, q, o["health"], p["health_slots"], p["max_workers"])
        self.broadcast = broadcast.Broadcast(q, o["broadcast"])
        self.purge = purge.PurgeLog(mm, q, o["purge"])
        self.revocation = revocation.RevocationTable(mm, q, o["revocation"], p.get("revocation_slots", 0),
                                                     p["table_locks"], fd)
        # one circuit breaker per service: as many slots as instance slots
        self.breaker = breaker.BreakerTable(q, o["breaker"], p["health_slots"], p["table_locks"], mm, fd,
                                            workers=p["max_workers"])
        self.discovery = discovery.DiscoveryTable(q, o["discovery"])
        # slot claims by the supervisor and the control process exclude each other (shm.health)
        self.health.lock = (fd, o["health"])
        self.health.pinned = self._discovered_keys

    def _discovered_keys(self) -> set[int]:
        return {self.health.key(i) for i in self.discovery.slots() if 0 <= i < self.health.slots}

    @classmethod
    def create(cls, max_workers: int, metrics_series: int = 4096, table_slots: int = TABLE_SLOTS,
               health_slots: int = 1024, revocation_slots: int = 1024, *, name: str = "fastgw",
               digest: Callable[[bytes], bytes] | None = None) -> Region:
        """Supervisor, before fork: build a zeroed region.

        ``max_workers``: worker slots (the most workers TTIN may ever reach);
        ``metrics_series``: 64-bit cells (and series) per process, a counter or gauge
        takes one, a histogram of B buckets 1 + B; ``table_slots``: rate-limit slots, a
        multiple of 8; ``health_slots``: upstream instances.  ``digest`` replaces the
        rate-limit key hash (tests only).
        """
        for what, v in (("max_workers", max_workers), ("metrics_series", metrics_series),
                        ("health_slots", health_slots)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be a positive integer, got {v!r}")
        params = {
            "max_workers": max_workers,
            "metric_slots": max_workers + EXTRA_METRIC_SLOTS,
            "metrics_series": metrics_series,
            "table_slots": table_slots,
            "health_slots": health_slots,
            "table_locks": locks.default_kind(),
            "revocation_slots": revocation_slots,
        }
        sizes = {
            "workers": workers.size(max_workers),
            "metrics": metrics.size(params["metric_slots"], metrics_series),
            "ratelimit": ratelimit.size(table_slots),
            "health": health.size(health_slots, max_workers),
            "broadcast": broadcast.size(),
            "purge": purge.size(),
            "revocation": revocation.size(revocation_slots),
            "breaker": breaker.size(health_slots, max_workers),
            "discovery": discovery.size(),
        }
        offsets, off = {}, HEADER_SIZE
        for part in PARTS:
            offsets[part] = off
            off = align(off + sizes[part])
        total = (off + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        fd = _backing_file(name, total)
        try:
            mm = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        header = Header(total, os.getpid(), time.time_ns(), params, offsets, os.urandom(16))
        header.write(mm)
        region = cls(fd, mm, header, digest)
        region.ratelimit.init_locks()
        region.revocation.init_locks()
        region.breaker.init_locks()
        return region

    @classmethod
    def attach(cls, fd: int) -> Region:
        """Map the region behind ``fd`` (which the Region then owns); raises
        ``LayoutError`` if it is not a region of this layout version."""
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            header = Header.read(mm, size)
        except BaseException:
            mm.close()
            raise
        return cls(fd, mm, header)

    def fold_dead(self, slot: int) -> None:
        """Supervisor, after reaping the process of ``slot`` and before forking its
        replacement: retire the worker slot (workers only) and fold its metrics into the
        retired totals.  ``slot`` may also be ``metrics.control_slot``."""
        if slot < self.workers.max_workers:
            self.workers.retire(slot)
        self.metrics.fold_dead(slot)

    def close(self) -> None:
        """Unmap and close the fd.  Only when no check can run in this process any more:
        closing drops this process's rate-limit locks."""
        if self._mm.closed:
            return
        self.metrics.release()
        self.health.release()
        self._q.release()
        self._mm.close()
        os.close(self.fd)

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
