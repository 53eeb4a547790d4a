"""Metric store: counters, gauges and histograms as plain cells in shared memory (L2).

Who writes what:

- Metric area ``i`` (a worker slot; the region adds one area for the control process and
  one for the supervisor, ``control_slot`` and ``supervisor_slot``) is written by the
  process that owns the slot, through its ``MetricsWriter``: it registers series at run
  time and increments their cells.  One writer per cell, so an increment is one memory
  write (``writer.q[cell] += 1``): no lock, no syscall.
- The retired area, and every area between its owner's reap and the next fork, belong
  to the supervisor: ``fold_dead(slot)`` adds a dead process's counters and histograms to
  the retired area and clears the slot for the replacement.
- Readers (the control process at scrape time): ``snapshot()`` sums every area plus the
  retired one, so totals stay monotonic across respawns.

Layout of one area::

    header line   count (published entries), heap bytes used, cells used, incarnation
    directory     ``series`` entries of 16 bytes: key offset, first cell, key length,
                  kind, number of cells (append-only)
    key heap      the keys' UTF-8 bytes, e.g. ``fastgw_http_requests_total{route="a",...}``
    cells         64-bit cells, seen through three views of the same memory:
                  ``q`` (unsigned, counters and histogram buckets), ``i`` (signed,
                  gauges), ``f`` (float64, histogram sums)

A series is published by writing its key bytes and its directory entry, and then the
entry count (last): a reader that sees the count sees the entry (stores stay in program
order on x86-64; a reader also skips an entry that does not look written yet, and reads
it at the next scrape).  A histogram with B buckets (the last one is +Inf; bounds are
the obs layer's, by metric name) takes 1 + B consecutive cells: the sum, then one
non-cumulative count per bucket; its count is the sum of its buckets, so a scrape never
sees ``_count`` disagree with the ``+Inf`` bucket.

When an area is full (cells, directory entries or key bytes), registration still returns
a cell, so the hot path never checks: a counter gets the area's overflow cell, reported
as ``fastgw_metrics_overflow_total`` (its increments stay in the totals), a gauge or a
histogram gets a scratch block that is never reported; every refused series is counted in
``fastgw_metrics_dropped_series_total``.

A fold and a scrape are ordered by a sequence number with one writer (the supervisor):
odd while a fold runs, so a snapshot taken across a fold is retried instead of counting a
dead worker twice or not at all.
"""

from __future__ import annotations

import struct
import time
from typing import NamedTuple

from fastgw.shm.layout import ALIGN, align

COUNTER, GAUGE, HISTOGRAM = 1, 2, 3
KIND_NAMES = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}
MAX_HISTOGRAM_BUCKETS = 60          # including +Inf
KEY_MAX = 1024                      # bytes; a longer key is refused like a full area
KEY_BYTES_PER_SERIES = 96           # key heap sized for this average key length
RETIRED_SCALE = 2                   # the retired area holds the union of every worker's keys

OVERFLOW_KEY = "fastgw_metrics_overflow_total"
DROPPED_KEY = "fastgw_metrics_dropped_series_total"

# reserved cells at the start of every area
OVERFLOW_CELL, DROPPED_CELL, GAUGE_SCRATCH, HIST_SCRATCH = 0, 1, 2, 3
RESERVED_CELLS = HIST_SCRATCH + 1 + MAX_HISTOGRAM_BUCKETS

_ENTRY = struct.Struct("<IIHBxI")   # key offset, first cell, key length, kind, cells
_COUNT, _HEAP, _USED, _INCARNATION = range(4)


class HistogramValue(NamedTuple):
    sum: float
    buckets: tuple[int, ...]        # non-cumulative, the last one is +Inf

    @property
    def count(self) -> int:
        return sum(self.buckets)


def _area_size(series: int) -> int:
    """Header line, directory, key heap, cells."""
    return (ALIGN + align(_ENTRY.size * series) + align(KEY_BYTES_PER_SERIES * series)
            + align(8 * (series + RESERVED_CELLS)))


def size(slots: int, series: int) -> int:
    """A header line, ``slots`` areas and the retired area."""
    return ALIGN + slots * _area_size(series) + _area_size(RETIRED_SCALE * series)


class _Area:
    """One area's geometry, its writer-side append and its reader-side directory cache."""

    __slots__ = ("mm", "q", "h", "dir_off", "heap_off", "dir_cap", "heap_cap", "ncells",
                 "cq", "ci", "cf", "_seen_incarnation", "_seen")

    def __init__(self, mm, q: memoryview, offset: int, series: int) -> None:
        self.mm = mm
        self.q = q
        self.h = offset // 8
        self.dir_cap = series
        self.heap_cap = KEY_BYTES_PER_SERIES * series
        self.ncells = series + RESERVED_CELLS
        self.dir_off = offset + ALIGN
        self.heap_off = self.dir_off + align(_ENTRY.size * series)
        cells = self.heap_off + align(self.heap_cap)
        raw = memoryview(mm)[cells:cells + 8 * self.ncells]
        self.cq, self.ci, self.cf = raw.cast("Q"), raw.cast("q"), raw.cast("d")
        raw.release()
        self._seen_incarnation = -1
        self._seen: list[tuple[str, int, int, int]] = []

    def register(self, key: bytes, kind: int, n: int) -> int:
        """Owner only: append a series; its first cell, or -1 when the area is full."""
        q, h = self.q, self.h
        count, heap, used = q[h + _COUNT], q[h + _HEAP], q[h + _USED]
        if (count >= self.dir_cap or heap + len(key) > self.heap_cap
                or RESERVED_CELLS + used + n > self.ncells or not 0 < len(key) <= KEY_MAX):
            return -1
        cell = RESERVED_CELLS + used
        self.mm[self.heap_off + heap:self.heap_off + heap + len(key)] = key
        _ENTRY.pack_into(self.mm, self.dir_off + _ENTRY.size * count, heap, cell, len(key), kind, n)
        q[h + _HEAP] = heap + len(key)
        q[h + _USED] = used + n
        q[h + _COUNT] = count + 1       # publish last
        return cell

    def entries(self) -> list[tuple[str, int, int, int]]:
        """(key, kind, first cell, cells) of every published series; decoded once per
        incarnation of the area, then only the new entries."""
        q, h = self.q, self.h
        inc = q[h + _INCARNATION]
        if inc != self._seen_incarnation:
            self._seen_incarnation, self._seen = inc, []
        seen = self._seen
        count = min(q[h + _COUNT], self.dir_cap)
        for e in range(len(seen), count):
            koff, cell, klen, kind, n = _ENTRY.unpack_from(self.mm, self.dir_off + _ENTRY.size * e)
            if not klen or koff + klen > self.heap_cap or kind not in KIND_NAMES or cell + n > self.ncells:
                break                   # not visible yet: read it at the next scrape
            key = self.mm[self.heap_off + koff:self.heap_off + koff + klen].decode("utf-8", "replace")
            seen.append((key, kind, cell, n))
        return seen

    def clear(self) -> None:
        """Supervisor only, after the owner is reaped: empty the area for the next owner."""
        q, h, mm = self.q, self.h, self.mm
        count, heap, used = min(q[h + _COUNT], self.dir_cap), q[h + _HEAP], q[h + _USED]
        q[h + _COUNT] = 0
        mm[self.dir_off:self.dir_off + _ENTRY.size * count] = bytes(_ENTRY.size * count)
        mm[self.heap_off:self.heap_off + heap] = bytes(heap)
        cq = self.cq
        for c in range(min(RESERVED_CELLS + used, self.ncells)):
            cq[c] = 0
        q[h + _HEAP] = 0
        q[h + _USED] = 0
        q[h + _INCARNATION] += 1

    def release(self) -> None:
        for v in (self.cq, self.ci, self.cf):
            v.release()


class MetricsWriter:
    """The writer handle of one area; only the process owning the slot may use it.

    Hot path: keep the cell numbers from registration and write the views directly::

        c = w.counter('fastgw_http_requests_total{route="a",service="b",method="GET",code="200"}')
        w.q[c] += 1                         # counter
        w.i[g] += 1; w.i[g] -= 1            # gauge
        w.f[h] += seconds; w.q[h + 1 + bucket] += 1     # histogram observation
    """

    __slots__ = ("q", "i", "f", "slot", "_area", "_index")

    def __init__(self, area: _Area, slot: int) -> None:
        self.q, self.i, self.f = area.cq, area.ci, area.cf
        self.slot = slot
        self._area = area
        self._index = {key: (kind, cell, n) for key, kind, cell, n in area.entries()}

    def counter(self, key: str) -> int:
        """The cell of counter ``key`` (registered on first use; idempotent)."""
        return self._register(key, COUNTER, 1)

    def gauge(self, key: str) -> int:
        """The cell of gauge ``key``; write it through the signed view ``i``."""
        return self._register(key, GAUGE, 1)

    def histogram(self, key: str, buckets: int) -> int:
        """The first cell of histogram ``key`` with ``buckets`` buckets (the last is
        +Inf): cell = sum (view ``f``), cell + 1 + b = count of bucket b."""
        if not 1 <= buckets <= MAX_HISTOGRAM_BUCKETS:
            raise ValueError(f"histogram {key!r}: {buckets} buckets, allowed 1..{MAX_HISTOGRAM_BUCKETS}")
        return self._register(key, HISTOGRAM, 1 + buckets)

    def _register(self, key: str, kind: int, n: int) -> int:
        got = self._index.get(key)
        if got is not None:
            if got[0] != kind or got[2] != n:
                raise ValueError(f"metric {key!r} already registered as a {KIND_NAMES[got[0]]} of {got[2]} cells")
            return got[1]
        cell = self._area.register(key.encode(), kind, n)
        if cell < 0:
            self.q[DROPPED_CELL] += 1
            cell = OVERFLOW_CELL if kind == COUNTER else GAUGE_SCRATCH if kind == GAUGE else HIST_SCRATCH
        self._index[key] = (kind, cell, n)
        return cell

    def inc(self, cell: int, n: int = 1) -> None:
        self.q[cell] += n

    def add(self, cell: int, n: int) -> None:
        """Add ``n`` (may be negative) to a gauge."""
        self.i[cell] += n

    def observe(self, cell: int, bucket: int, value: float) -> None:
        self.f[cell] += value
        self.q[cell + 1 + bucket] += 1


class MetricsStore:
    __slots__ = ("_q", "_h", "_areas", "_retired", "_retired_index", "slots", "series",
                 "control_slot", "supervisor_slot")

    def __init__(self, mm, q: memoryview, offset: int, slots: int, series: int) -> None:
        self._q = q
        self._h = offset // 8                       # fold sequence number
        step = _area_size(series)
        base = offset + ALIGN
        self._areas = [_Area(mm, q, base + i * step, series) for i in range(slots)]
        self._retired = _Area(mm, q, base + slots * step, RETIRED_SCALE * series)
        self._retired_index: dict[str, tuple[int, int, int]] | None = None
        self.slots = slots
        self.series = series
        self.control_slot = slots - 2
        self.supervisor_slot = slots - 1

    def writer(self, slot: int) -> MetricsWriter:
        """The writer handle for ``slot``; call it in the process that owns the slot."""
        return MetricsWriter(self._areas[slot], slot)

    def fold_dead(self, slot: int) -> None:
        """Supervisor only, after reaping the slot's process and before forking its
        replacement: add its counters and histograms (not its gauges: a dead process has
        nothing in flight) into the retired area, then clear the slot."""
        area, r = self._areas[slot], self._retired
        if self._retired_index is None:
            self._retired_index = {key: (kind, cell, n) for key, kind, cell, n in r.entries()}
        index, q, h = self._retired_index, self._q, self._h
        rq, rf = r.cq, r.cf
        q[h] += 1                                   # odd: fold in progress
        try:
            vals = area.cq.tolist()
            for key, kind, cell, n in area.entries():
                if kind == GAUGE:
                    continue
                got = index.get(key)
                if got is None:
                    rc = r.register(key.encode(), kind, n)
                    if rc < 0:                      # retired area full
                        rq[DROPPED_CELL] += 1
                        if kind == COUNTER:
                            rq[OVERFLOW_CELL] += vals[cell]
                        continue
                    got = index[key] = (kind, rc, n)
                if got[0] != kind or got[2] != n:
                    rq[DROPPED_CELL] += 1
                    continue
                rc = got[1]
                if kind == COUNTER:
                    rq[rc] += vals[cell]
                else:
                    rf[rc] += area.cf[cell]
                    for j in range(1, n):
                        rq[rc + j] += vals[cell + j]
            rq[OVERFLOW_CELL] += vals[OVERFLOW_CELL]
            rq[DROPPED_CELL] += vals[DROPPED_CELL]
            area.clear()
        finally:
            q[h] += 1                               # even: done

    def snapshot(self) -> dict[str, int | HistogramValue]:
        """Every series summed over all areas and the retired one: counters and gauges as
        int, histograms as ``HistogramValue``.  Retries while a fold runs (up to ~0.1 s,
        then answers best effort, e.g. if the supervisor died inside a fold)."""
        q, h = self._q, self._h
        for _ in range(200):
            seq = q[h]
            if not seq & 1:
                out = self._collect()
                if q[h] == seq:
                    return out
            time.sleep(0.0005)
        return self._collect()

    def _collect(self) -> dict[str, int | HistogramValue]:
        totals: dict[str, int] = {OVERFLOW_KEY: 0, DROPPED_KEY: 0}
        hists: dict[str, tuple[list[float], list[int]]] = {}
        kinds: dict[str, tuple[int, int]] = {}
        for area in (*self._areas, self._retired):
            entries = area.entries()
            vals = area.cq.tolist()
            totals[OVERFLOW_KEY] += vals[OVERFLOW_CELL]
            totals[DROPPED_KEY] += vals[DROPPED_CELL]
            for key, kind, cell, n in entries:
                if kinds.setdefault(key, (kind, n)) != (kind, n):
                    continue                        # the same key as two kinds: a bug upstream
                if kind == COUNTER:
                    totals[key] = totals.get(key, 0) + vals[cell]
                elif kind == GAUGE:
                    v = vals[cell]
                    totals[key] = totals.get(key, 0) + (v - (1 << 64) if v >> 63 else v)
                else:
                    acc = hists.get(key)
                    if acc is None:
                        hists[key] = ([area.cf[cell]], vals[cell + 1:cell + n])
                    else:
                        acc[0][0] += area.cf[cell]
                        b = acc[1]
                        for j in range(n - 1):
                            b[j] += vals[cell + 1 + j]
        out: dict[str, int | HistogramValue] = dict(totals)
        for key, (s, b) in hists.items():
            out[key] = HistogramValue(s[0], tuple(b))
        return out

    def release(self) -> None:
        for a in (*self._areas, self._retired):
            a.release()
