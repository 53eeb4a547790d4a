"""Circuit-breaker table: one breaker per upstream service, shared by every worker (L2).

What it owns: the breakers' cells in the shared region, the state machine that moves
them, and the one lock that serialises every change.  The middleware
(``fastgw.middleware.breaker``) decides what an exchange's outcome is; this module only
hears "admit?", "failed", "succeeded" and "gave the permit back".

The rules (docs/resilience.md, "Circuit breaker"):

1. *closed*: requests pass.  ``failure_threshold`` failed exchanges in a row, counted
   over all workers together, open it; a success starts the count again.
2. *open*: every request is refused at once until ``timeout`` has passed since it
   opened; the refusal says how long is left (``Retry-After``).
3. *half-open*: the first request after that turns it half-open.  Exactly
   ``half_open_requests`` trial requests are admitted per window of ``timeout``, over
   all workers together (the claim is one locked increment); the others are refused.
   A trial that succeeds closes it; one that fails opens it again for a new
   ``timeout``.  A trial whose request never reached an instance gives its permit
   back; a trial whose outcome never comes (its worker died, its client left) is
   replaced when the window ends, so a lost permit cannot wedge the breaker.
4. Only the outcomes of the current half-open period's trials move a half-open breaker;
   the outcomes of requests admitted while it was closed and finishing late move nothing
   once it is open or half-open.
5. With ``failure_ratio``, a closed breaker also opens on a failure that brings the
   share of failures over the last ``window`` (all workers together, at least
   ``min_requests`` outcomes) to the ratio.  The window is ``BUCKETS`` buckets of
   ``window / BUCKETS``, each stamped with its number (``monotonic // bucket + 1``).
   Each worker counts into its own row of buckets (``window_row``), one writer per
   cell, no lock; a judgement sums every worker's row as it is at that moment.  Buckets
   that began before the last transition do not count: a breaker that closes starts an
   empty window.

The transitions are the table ``TRANSITIONS``; an event with no row raises
``BreakerStateError`` naming state and event.

Slots.  A service's slot is found by its identity (``key_for(service)``: a 63-bit hash
of the service name), by linear probing from ``key % slots``; the first process that
needs a service's breaker claims the slot under the lock, so every process finds the
same one and a reload keeps the state.  When every slot is taken, a slot whose key is
not among the live services of the claimer's config is reused (its cells reset).
``slots`` is the health table's (``gateway.max_upstream_instances``: a service has at
least one instance).

Layout at ``offset``: one cache line of header (unused), the lock (``locks.SIZE``),
``slots`` blocks of ``LINE`` cells (8 bytes each), then the ratio windows: per slot, per
worker slot, ``BUCKETS`` x (stamp, successes, failures):

=====  ==========  ================================================================
cell   name        meaning
=====  ==========  ================================================================
0      key         the service's identity (0: free)
1      word        ``failures << 2 | state``: 0 = closed with no failure.  The hot
                   path reads only this cell: a closed, clean breaker costs one
                   memory load per check and no lock.
2      until       monotonic ns: open: when the trial period starts; half-open: the
                   end of the current trial window
3      claimed     trial permits claimed in the current window
4      epoch       bumped on every transition: a trial's permit is of one epoch
5      changed     wall-clock ns of the last transition
6      opened      times the breaker opened (from closed or half-open)
7      since       monotonic ns of the last transition (the ratio window starts there)
=====  ==========  ================================================================

Every write happens under the lock (so ``word`` changes are never lost); reads without
the lock see whole 8-byte cells (aligned stores).  ``now`` is ``time.monotonic_ns()``
(the same clock in every process); the functions take it as an argument, so the unit
tests drive the clock by hand.
"""

from __future__ import annotations

import hashlib
import time

from fastgw.shm import locks as _locks
from fastgw.shm.layout import ALIGN

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = ("closed", "open", "half_open")
LINE = 8                    # cells per slot (one cache line)
_KEY, _WORD, _UNTIL, _CLAIMED, _EPOCH, _CHANGED, _OPENED, _SINCE = range(8)
BUCKETS = 10                # the failure-ratio window's buckets
ROW = 3 * BUCKETS           # cells of one worker's window row
ADMIT, TRIAL, REJECT = 0, 1, 2

# (state, event) -> the state it leads to
TRANSITIONS: dict[tuple[int, str], int] = {
    (CLOSED, "threshold_reached"): OPEN,
    (CLOSED, "ratio_reached"): OPEN,
    (OPEN, "timeout_elapsed"): HALF_OPEN,
    (HALF_OPEN, "trial_succeeded"): CLOSED,
    (HALF_OPEN, "trial_failed"): OPEN,
}


class BreakerStateError(RuntimeError):
    """An event that has no transition from the breaker's state."""


def next_state(state: int, event: str) -> int:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        name = STATE_NAMES[state] if 0 <= state < len(STATE_NAMES) else repr(state)
        raise BreakerStateError(f"circuit breaker: no transition from {name} on {event!r}") from None


def key_for(service: str) -> int:
    """A service's identity in the table: nonzero, 63 bits, the same in every process."""
    h = hashlib.blake2b(b"breaker\0" + service.encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 1) or 1


def size(slots: int, workers: int = 1) -> int:
    return ALIGN + _locks.SIZE + slots * (LINE + workers * ROW) * 8


class _NoLock:
    """The lock of a table in one process's own memory (no other process to exclude)."""

    handles = (0,)

    @staticmethod
    def lock(h):
        return None

    @staticmethod
    def unlock(h):
        return None

    def init(self) -> None:
        return None


class Policy:
    """One breaker's settings, in the units the table uses."""

    __slots__ = ("threshold", "timeout_ns", "half_open")

    def __init__(self, threshold: int, timeout_s: float, half_open: int = 1) -> None:
        self.threshold = threshold
        self.timeout_ns = max(1, int(timeout_s * 1e9))
        self.half_open = half_open


class BreakerTable:
    """The shared table (see the module doc); ``local(slots)`` makes one in private
    memory for a process without a region."""

    __slots__ = ("q", "base", "slots", "workers", "wbase", "locks", "h")

    def __init__(self, q: memoryview, offset: int, slots: int, lock_kind: int = 1, mm=None, fd: int = -1,
                 lock=None, workers: int = 1) -> None:
        self.q = q
        self.base = (offset + ALIGN + _locks.SIZE) // 8
        self.slots = slots
        self.workers = workers
        self.wbase = self.base + slots * LINE
        if lock is None:
            lock = _locks.stripe_locks(lock_kind, mm, fd, offset + ALIGN, 1)
        self.locks = lock
        self.h = lock.handles[0]

    @classmethod
    def local(cls, slots: int = 64) -> "BreakerTable":
        buf = bytearray(size(slots))
        return cls(memoryview(buf).cast("Q"), 0, slots, lock=_NoLock())

    def init_locks(self) -> None:
        self.locks.init()

    def _lock(self) -> None:
        rc = self.locks.lock(self.h)
        if rc:
            self.locks.repair(self.h, rc)

    def _unlock(self) -> None:
        self.locks.unlock(self.h)

    # ------------------------------------------------------------------ slots
    def find(self, key: int) -> int:
        """The slot of ``key``, or -1 (no lock: keys are written once per claim)."""
        q, b, n = self.q, self.base, self.slots
        start = key % n
        for k in range(n):
            i = (start + k) % n
            v = q[b + i * LINE]
            if v == key:
                return i
            if v == 0:
                return -1
        return -1

    def slot(self, key: int, live=()) -> int:
        """The slot of ``key``, claimed (under the lock) when it has none; -1 when the
        table is full of keys that are all in ``live``."""
        i = self.find(key)
        if i >= 0:
            return i
        self._lock()
        try:
            i = self.find(key)
            if i >= 0:
                return i
            q, b, n = self.q, self.base, self.slots
            start = key % n
            for k in range(n):
                j = (start + k) % n
                if q[b + j * LINE] == 0:
                    return self._claim(j, key)
            live = set(live)
            live.add(key)
            for j in range(n):   # full: a slot of a service no longer configured
                if q[b + j * LINE] not in live:
                    return self._claim(j, key)
            return -1
        finally:
            self._unlock()

    def _claim(self, i: int, key: int) -> int:
        q, c = self.q, self.base + i * LINE
        for k in range(1, LINE):
            q[c + k] = 0
        w = self.window_row(i, 0)
        for k in range(w, w + self.workers * ROW):
            q[k] = 0
        q[c + _KEY] = key
        return i

    def word_index(self, i: int) -> int:
        """The index in ``q`` of slot ``i``'s word: ``q[word_index(i)]`` is the hot read."""
        return self.base + i * LINE + _WORD

    # ------------------------------------------------------------------ readers (no lock)
    def state(self, i: int) -> int:
        return self.q[self.base + i * LINE + _WORD] & 3

    def failures(self, i: int) -> int:
        """Consecutive failures counted while closed."""
        return self.q[self.base + i * LINE + _WORD] >> 2

    def until(self, i: int) -> int:
        return self.q[self.base + i * LINE + _UNTIL]

    def claimed(self, i: int) -> int:
        return self.q[self.base + i * LINE + _CLAIMED]

    def opened(self, i: int) -> int:
        return self.q[self.base + i * LINE + _OPENED]

    def changed_at(self, i: int) -> int:
        return self.q[self.base + i * LINE + _CHANGED]

    # ------------------------------------------------------------------ events
    def admit(self, i: int, pol: Policy, now: int):
        """A request, when the word is not 0: ``(ADMIT, None, None)``, ``(TRIAL, token,
        transition)`` (a half-open permit; ``token`` goes back with the outcome) or
        ``(REJECT, ns_left, None)``.  A transition is ``(from, to)`` or None."""
        q, c = self.q, self.base + i * LINE
        st = q[c + _WORD] & 3
        if st == CLOSED:
            return ADMIT, None, None
        until = q[c + _UNTIL]
        # refusals decided without the lock: open and not yet due, or every permit of
        # the current window taken
        if now < until and (st == OPEN or q[c + _CLAIMED] >= pol.half_open):
            return REJECT, until - now, None
        self._lock()
        try:
            st = q[c + _WORD] & 3
            until = q[c + _UNTIL]
            trans = None
            if st == CLOSED:
                return ADMIT, None, None
            if st == OPEN:
                if now < until:
                    return REJECT, until - now, None
                new = next_state(st, "timeout_elapsed")
                self._move(c, new)
                q[c + _UNTIL] = until = now + pol.timeout_ns
                q[c + _CLAIMED] = 0
                trans = (st, new)
            elif now >= until:      # half-open, the window ended: a new set of permits
                q[c + _UNTIL] = until = now + pol.timeout_ns
                q[c + _CLAIMED] = 0
            n = q[c + _CLAIMED]
            if n >= pol.half_open:
                return REJECT, until - now, None
            q[c + _CLAIMED] = n + 1
            return TRIAL, (q[c + _EPOCH], until), trans
        finally:
            self._unlock()

    def failed(self, i: int, pol: Policy, now: int, token=None, ratio: bool = False):
        """An exchange failed (``ratio``: and the failure ratio is reached, rule 5); the
        transition it caused, or None."""
        q, c = self.q, self.base + i * LINE
        self._lock()
        try:
            w = q[c + _WORD]
            st = w & 3
            if st == CLOSED:
                n = (w >> 2) + 1
                if n < pol.threshold and not ratio:
                    q[c + _WORD] = n << 2
                    return None
                new = next_state(st, "threshold_reached" if n >= pol.threshold else "ratio_reached")
            elif st == HALF_OPEN and token is not None and token[0] == q[c + _EPOCH]:
                new = next_state(st, "trial_failed")
            else:
                return None     # open, or a request admitted before the breaker opened
            self._move(c, new)
            q[c + _UNTIL] = now + pol.timeout_ns
            q[c + _CLAIMED] = 0
            q[c + _OPENED] += 1
            return st, new
        finally:
            self._unlock()

    def succeeded(self, i: int, token=None):
        """An exchange succeeded (called only when the word is not 0); the transition it
        caused, or None."""
        q, c = self.q, self.base + i * LINE
        w = q[c + _WORD]
        if w & 3 == HALF_OPEN and (token is None or token[0] != q[c + _EPOCH]):
            return None     # not a trial of this half-open period
        if w & 3 == OPEN:
            return None
        self._lock()
        try:
            w = q[c + _WORD]
            st = w & 3
            if st == CLOSED:
                if w:
                    q[c + _WORD] = 0    # the count of consecutive failures starts again
                return None
            if st == HALF_OPEN and token is not None and token[0] == q[c + _EPOCH]:
                new = next_state(st, "trial_succeeded")
                self._move(c, new)
                q[c + _UNTIL] = 0
                q[c + _CLAIMED] = 0
                return st, new
            return None
        finally:
            self._unlock()

    def give_back(self, i: int, token) -> None:
        """A trial whose request never reached an instance: its permit is free again
        (only within the window it was taken in)."""
        q, c = self.q, self.base + i * LINE
        self._lock()
        try:
            if (q[c + _WORD] & 3 == HALF_OPEN and token[0] == q[c + _EPOCH] and token[1] == q[c + _UNTIL]
                    and q[c + _CLAIMED] > 0):
                q[c + _CLAIMED] -= 1
        finally:
            self._unlock()

    # ------------------------------------------------------------------ ratio window (rule 5)
    def window_row(self, i: int, worker: int) -> int:
        """The index in ``q`` of worker ``worker``'s bucket row of slot ``i`` (only that
        worker writes it: ``count``)."""
        return self.wbase + (i * self.workers + worker % self.workers) * ROW

    def count(self, row: int, stamp: int, ok: int, failed: int) -> None:
        """Add outcomes to bucket ``stamp`` of a worker's row (its own: no lock; the
        counts are zeroed before the stamp moves, so a reader never adds a reused
        bucket's old counts to the new stamp)."""
        q = self.q
        b = row + (stamp % BUCKETS) * 3
        if q[b] != stamp:
            q[b + 1] = q[b + 2] = 0
            q[b] = stamp
        q[b + 1] += ok
        q[b + 2] += failed

    def window(self, i: int, stamp: int, bucket_ns: int) -> tuple[int, int]:
        """(successes, failures) over every worker's buckets ``stamp - BUCKETS + 1 ..
        stamp`` that began after the last transition (no lock: whole cells)."""
        q = self.q
        since = q[self.base + i * LINE + _SINCE]
        ok = failed = 0
        lo = stamp - BUCKETS
        first = self.window_row(i, 0)
        for b in range(first, first + self.workers * ROW, 3):
            s = q[b]
            if lo < s <= stamp and (s - 1) * bucket_ns >= since:
                ok += q[b + 1]
                failed += q[b + 2]
        return ok, failed

    def _move(self, c: int, new: int) -> None:
        """Enter state ``new`` (caller holds the lock): the count starts again."""
        q = self.q
        q[c + _WORD] = new
        q[c + _EPOCH] += 1
        q[c + _CHANGED] = time.time_ns()
        q[c + _SINCE] = time.monotonic_ns()


def view(table: BreakerTable, i: int, cfg, now: int) -> dict:
    """Slot ``i``'s breaker as the admin API shows it (``cfg``: its settings, with
    ``failure_threshold``, ``timeout``, ``half_open_requests`` and, with a failure ratio,
    the window's settings and counts as the workers have added them); ``i`` -1 (no
    request has reached the service yet) reads as closed."""
    doc = {"state": "closed", "state_code": CLOSED, "consecutive_failures": 0, "retry_in_s": 0.0,
           "trial_permits_taken": 0, "times_opened": 0, "changed_s_ago": None,
           "failure_threshold": cfg.failure_threshold, "timeout_s": float(cfg.timeout),
           "half_open_requests": cfg.half_open_requests}
    ratio = getattr(cfg, "failure_ratio", None)
    if ratio is not None:
        doc.update({"failure_ratio": float(ratio), "min_requests": cfg.min_requests,
                    "window_s": float(cfg.window), "window_requests": 0, "window_failures": 0})
        if i >= 0:
            bucket_ns = int(float(cfg.window) / BUCKETS * 1e9)
            ok, failed = table.window(i, now // bucket_ns + 1, bucket_ns)
            doc.update(window_requests=ok + failed, window_failures=failed)
    if i < 0:
        return doc
    st = table.state(i)
    until = table.until(i)
    changed = table.changed_at(i)
    doc.update({
        "state": STATE_NAMES[st], "state_code": st, "consecutive_failures": table.failures(i),
        "retry_in_s": round(max(0, until - now) / 1e9, 3) if st == OPEN else 0.0,
        "trial_permits_taken": table.claimed(i) if st == HALF_OPEN else 0,
        "times_opened": table.opened(i),
        "changed_s_ago": round(max(0, time.time_ns() - changed) / 1e9, 3) if changed else None,
    })
    return doc
