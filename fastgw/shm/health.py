"""Health table: per upstream instance, its health, its ejection and its failure counts (L2).

One slot per upstream instance, assigned by the instance's *identity* (a 64-bit hash of
service name and instance URL, ``fastgw.resilience.identity``), so that every process
finds the same slot without talking to the others, a reload keeps an instance's state,
and a later discovery source can add instances without a reload.  ``slots`` is
``gateway.max_upstream_instances`` (restart-only: the region is sized at start).

Who writes what (each cell has one writer):

================  ===========================================  ==========================
cells             writer                                       readers
================  ===========================================  ==========================
``keys``          the supervisor (``assign``, before fork and  everyone (``find``)
                  before a reload's config reaches workers);
                  the control process (``assign``, the
                  instances DNS discovery finds, at any time);
                  a process without supervisor assigns its own
``states``        control process: active health checks        control, admin API
``down``          control process: 1 = unhealthy or ejected,   workers, in ``Route.pick``
                  2 = drained (admin API; never picked)
``ejected_until`` control process (monotonic ns), ejections    control, admin API
``last_check``    control process (wall ns of the last probe)  admin API
worker cells      worker w: its row (requests, consecutive     control (sums the rows)
                  failures, failures by kind; attempts in
                  flight and effective weight x 1000,
                  written on the worker tick)
================  ===========================================  ==========================

Claims at run time: the supervisor (a reload) and the control process (discovery) may
claim slots at the same moment, so ``assign`` claims under an exclusive ``fcntl`` lock on
one byte of the region's file at this part's offset (``lock``, set by the region; the
kernel drops it if its holder dies) and finds again under it; ``find`` needs no lock
(a key cell is written once, whole, before anyone is told its slot).  When the table is
full, a claim may reuse a slot whose key is neither being assigned nor ``pinned`` (the
slots the discovery table publishes), so a reload never takes a discovered instance's
slot and discovery never takes a configured one's.  Workers only ``find`` the slots of
discovered instances (the discovery table names them).

Hot path: a worker reads ``down[i]`` (one byte load from a memoryview) when a route has
more than one instance; nothing else.  A worker writes its row only when something
failed, or on the first success after a failure (the worker keeps its own count on the
``Instance`` to know).

Write order in ``set``: the timestamp, then the state byte, then the generation, so a
reader that sees a new generation also sees the states it announces (x86-64 keeps stores
in program order; each cell is written with one aligned store).
"""

from __future__ import annotations

import os
import time
from fcntl import LOCK_EX, LOCK_UN, lockf

from fastgw.shm.layout import ALIGN, align

UNKNOWN, HEALTHY, UNHEALTHY = 0, 1, 2
DRAINED = 2  # a ``down`` byte: drained by an operator (1 is unhealthy or ejected)
STATE_NAMES = ("unknown", "healthy", "unhealthy")

# failure kinds counted per instance (index into a worker row's kind cells)
FAIL_KINDS = ("connect", "reset", "timeout", "status_5xx")
KIND_OF = {
    "upstream_refused": 0, "upstream_unreachable": 0, "upstream_tls": 0, "upstream_connect_timeout": 0,
    "upstream_reset": 1, "upstream_bad_response": 1,
    "upstream_timeout": 2,
}
# a worker row, per slot: requests, consecutive failures, one cell per failure kind, then
# the attempts in flight and the effective weight (x 1000; 0 = not published)
IN_FLIGHT = 2 + len(FAIL_KINDS)
EFF_WEIGHT = IN_FLIGHT + 1
ROW = EFF_WEIGHT + 1
_SLOT_Q = 5  # keys, changed_at, last_check, ejected_until, ejections


def size(slots: int, workers: int = 1) -> int:
    """A header line (generation), the control process's cells, the two byte arrays,
    then one row per worker."""
    return ALIGN + align(8 * _SLOT_Q * slots) + 2 * align(slots) + workers * align(8 * ROW * slots)


class HealthTable:
    __slots__ = ("_q", "_gen", "_keys", "_ts", "_chk", "_until", "_nej", "_rows", "states", "down",
                 "slots", "workers", "lock", "pinned")

    def __init__(self, mm, q: memoryview, offset: int, slots: int, workers: int = 1) -> None:
        self._q = q
        self._gen = offset // 8
        base = (offset + ALIGN) // 8
        self._keys = base
        self._ts = base + slots
        self._chk = base + 2 * slots
        self._until = base + 3 * slots
        self._nej = base + 4 * slots
        sb = offset + ALIGN + align(8 * _SLOT_Q * slots)
        self.states = memoryview(mm)[sb:sb + slots]
        db = sb + align(slots)
        # the hot-path read: ``table.down[i]`` is one byte load
        self.down = memoryview(mm)[db:db + slots]
        rb = db + align(slots)
        self._rows = [(rb + w * align(8 * ROW * slots)) // 8 for w in range(workers)]
        self.slots = slots
        self.workers = workers
        self.lock = None     # (fd, byte offset) of the claim lock (set by the region)
        self.pinned = None   # () -> keys a claim must not take over (set by the region)

    # ------------------------------------------------------------------ slots
    def find(self, key: int) -> int:
        """The slot of identity ``key`` (a nonzero 63-bit int), or -1."""
        q, k = self._q, self._keys
        start = key % self.slots
        for n in range(self.slots):
            i = (start + n) % self.slots
            v = q[k + i]
            if v == key:
                return i
            if v == 0:
                return -1
        return -1

    def assign(self, keys, keep=None) -> dict[int, int]:
        """The assigner (supervisor): a slot for each of ``keys`` (existing ones kept);
        when the table is full, slots whose key is not in ``keep`` (default: ``keys``)
        are reused, their cells reset.  Returns {key: slot}; a key that found no slot
        is left out (the instance is then always usable, never checked)."""
        out = {}
        missing = []
        for key in keys:
            i = self.find(key)
            if i >= 0:
                out[key] = i
            else:
                missing.append(key)
        if not missing:
            return out
        live = set(keep if keep is not None else keys)
        lock = self.lock
        if lock is not None:
            lockf(lock[0], LOCK_EX, 1, lock[1], os.SEEK_SET)
        try:
            if self.pinned is not None:
                live |= self.pinned()
            for key in missing:
                i = self.find(key)   # another process may have claimed it meanwhile
                if i < 0:
                    i = self._claim(key, live)
                if i >= 0:
                    out[key] = i
        finally:
            if lock is not None:
                lockf(lock[0], LOCK_UN, 1, lock[1], os.SEEK_SET)
        return out

    def _claim(self, key: int, live: set) -> int:
        q, k = self._q, self._keys
        start = key % self.slots
        for n in range(self.slots):
            i = (start + n) % self.slots
            if q[k + i] == 0:
                self._reset(i)
                q[k + i] = key
                return i
        # full: take a slot of an instance no longer configured (linear probing keeps
        # working because a reused slot is never emptied)
        for i in range(self.slots):
            if q[k + i] not in live:
                self._reset(i)
                q[k + i] = key
                return i
        return -1

    def _reset(self, i: int) -> None:
        q = self._q
        q[self._ts + i] = q[self._chk + i] = q[self._until + i] = q[self._nej + i] = 0
        self.states[i] = UNKNOWN
        self.down[i] = 0
        for r in self._rows:
            for c in range(ROW):
                q[r + i * ROW + c] = 0

    def key(self, i: int) -> int:
        return self._q[self._keys + i]

    # ------------------------------------------------------------------ control process
    def set(self, i: int, state: int, now_ns: int | None = None) -> bool:
        """Control process: record instance ``i``'s health state; returns True if it changed."""
        if self.states[i] == state:
            return False
        self._q[self._ts + i] = time.time_ns() if now_ns is None else now_ns
        self.states[i] = state
        self._q[self._gen] += 1
        return True

    def checked(self, i: int, wall_ns: int) -> None:
        self._q[self._chk + i] = wall_ns

    def eject(self, i: int, until_mono_ns: int) -> None:
        q = self._q
        q[self._until + i] = until_mono_ns
        q[self._nej + i] += 1

    def uneject(self, i: int) -> None:
        self._q[self._until + i] = 0

    def set_down(self, i: int, down: int) -> None:
        """``down[i]``: 0 usable, 1 unhealthy or ejected (panic mode may still use it),
        ``DRAINED`` (2: never picked, by an operator's drain)."""
        v = int(down)
        if self.down[i] != v:
            self.down[i] = v
            self._q[self._gen] += 1

    # ------------------------------------------------------------------ readers
    def state(self, i: int) -> int:
        return self.states[i]

    def changed_at(self, i: int) -> int:
        """Wall-clock ns of instance ``i``'s last state change (0: never)."""
        return self._q[self._ts + i]

    def last_check(self, i: int) -> int:
        return self._q[self._chk + i]

    def ejected_until(self, i: int) -> int:
        """Monotonic ns the ejection of ``i`` ends (0: never ejected or un-ejected)."""
        return self._q[self._until + i]

    def ejections(self, i: int) -> int:
        return self._q[self._nej + i]

    def sums(self, i: int) -> tuple[int, int, list[int]]:
        """(requests, consecutive failures, failures by kind) of ``i``, over every worker."""
        q = self._q
        req = con = 0
        kinds = [0] * len(FAIL_KINDS)
        for r in self._rows:
            b = r + i * ROW
            req += q[b]
            con += q[b + 1]
            for c in range(len(FAIL_KINDS)):
                kinds[c] += q[b + 2 + c]
        return req, con, kinds

    def balance(self, i: int) -> tuple[int, float | None]:
        """(attempts in flight over every worker, effective weight: the lowest a worker
        published, None if none did) of ``i``."""
        q = self._q
        fl, eff = 0, None
        for r in self._rows:
            b = r + i * ROW
            fl += q[b + IN_FLIGHT]
            e = q[b + EFF_WEIGHT]
            if e and (eff is None or e < eff):
                eff = e
        return fl, (None if eff is None else eff / 1000)

    @property
    def generation(self) -> int:
        """Bumped on every change; workers compare it on their tick."""
        return self._q[self._gen]

    # ------------------------------------------------------------------ workers
    def row(self, w: int) -> "WorkerRow":
        return WorkerRow(self._q, self._rows[w] if 0 <= w < len(self._rows) else None)

    def release(self) -> None:
        self.states.release()
        self.down.release()


class WorkerRow:
    """One worker's cells (only that worker writes them)."""

    __slots__ = ("_q", "_b")

    def __init__(self, q, base) -> None:
        self._q = q
        self._b = base

    def failed(self, i: int, kind: int, consecutive: int, requests: int) -> None:
        b = self._b
        if b is None or i < 0:
            return
        q = self._q
        b += i * ROW
        q[b] = requests
        q[b + 1] = consecutive
        q[b + 2 + kind] += 1

    def publish(self, i: int, requests: int, in_flight: int, eff: float) -> None:
        """The worker tick: this worker's requests, attempts in flight and effective
        weight of instance ``i`` (three stores; nothing per request)."""
        b = self._b
        if b is None or i < 0:
            return
        q = self._q
        b += i * ROW
        q[b] = requests
        q[b + IN_FLIGHT] = in_flight if in_flight > 0 else 0
        q[b + EFF_WEIGHT] = max(1, round(eff * 1000))

    def consecutive(self, i: int) -> int:
        b = self._b
        return 0 if b is None or i < 0 else self._q[b + i * ROW + 1]

    def succeeded(self, i: int, requests: int) -> None:
        b = self._b
        if b is None or i < 0:
            return
        b += i * ROW
        self._q[b] = requests
        self._q[b + 1] = 0
