"""Rate-limit table: GCRA state for any number of keys in fixed shared memory (L2).

Who writes what: the workers, any slot, only under the lock of the slot's stripe.

Algorithm.  GCRA, i.e. a token bucket of ``burst`` tokens refilled at ``rate`` per second,
kept as one number per key: the theoretical arrival time (TAT, int ns on the caller's
clock, ``time.monotonic_ns()`` in every process).  With ``T = 1e9 / rate`` (rounded to the
ns) and ``tau = burst * T``, a request of ``cost`` is allowed iff
``max(TAT, now) + cost*T - now <= tau``, and then TAT becomes that value.  A key whose TAT
is in the past has a full bucket: the same state as a key never seen.  That test is
written once, in ``admit`` (inlined in ``take_pair``, every limited request's path, in
the form ``tat - now <= tau - T`` for cost 1; a test holds the two to the same answers); ``decide`` derives a reply's numbers from it.
The Redis backend runs the same test in Lua (``fastgw.ratelimit.redis_backend``).

API.  A limit is a ``Spec`` (``spec(rate, burst)``, computed once per config); a key is
bytes.  ``take_all(keys, specs, now)`` (or ``take_slots`` with the keys' ``Slot``s, or
``take_pair`` with the ``pair()`` record of two slots and their ``pair_gate``, the usual
request's path: None when allowed) decides one request against several limits, all or
nothing: ``(allowed, tats)``; ``peek(key)`` reads a TAT lock-free;
``take_marked(slot, spec, now)`` charges one marked key (see Layout);
``decide(tat, T, tau, now)`` turns a TAT into ``(allowed, remaining, reset_after,
retry_after)``.  ``check``/``check_all`` are conveniences over those for cold paths and
tests.  Where a key lives is a ``Slot`` (named fields), memoised per process.

Layout.  ``table_slots`` slots in buckets of 8 (``BUCKET``); a bucket is 8 tags of 16 bytes
then 8 TATs of 8 bytes (192 bytes, 3 cache lines).  After the buckets come the stripe
locks (``fastgw.shm.locks``, 64 bytes each, the last 8 its owner cell):
``min(buckets, STRIPES)`` of them, bucket ``b`` under lock ``b % stripes``; then one
8-byte mark per stripe (``take_marked``, ``mark_cell``): the latest TAT a *marked* key of
the stripe was given, written under its lock, so a peek of a rarely present kind of key
(the failed-authentication budgets) reads one cell while none of them can be refilling.
A key's tag is a keyed BLAKE2b-128 of the key bytes (the 16-byte secret is drawn when the
region is created, so clients cannot aim keys at one bucket): the first 64 bits are the
hash that picks the bucket, the last 64 the fingerprint; a slot matches only if all 128
bits match, so two keys that share a hash are still told apart.  The probe window is the
key's bucket (open addressing that never leaves the bucket, so one lock covers every slot
a check may touch); the lookup is one ``mmap.find`` over the bucket's 128 tag bytes.  The
digest costs about 0.5 us, so each process keeps a bounded memo from key bytes to
``Slot`` (cleared when it fills).

Replacement.  A new key takes the slot of its bucket with the smallest TAT: an empty one
(TAT 0), else a stale one (TAT in the past: reclaiming it loses nothing), else the oldest
live one, which is evicted (the key closest to a full bucket; it restarts with a full
bucket, so at most ``burst`` extra requests for that key).  Memory is fixed whatever the
number of keys; docs/ratelimit.md gives the measured eviction rates (size ``table_slots``
at 2-4x the keys refilling at once).  ``inserted``, ``reclaimed`` and ``evicted`` count
per process; the worker publishes them through its metric slot.

Concurrency: one process-shared lock per stripe (``fastgw.shm.locks``), no syscall when
uncontended.  Candidates, measured on the project's shared 2-vCPU box (min of
bench/micro/test_micro_shm.py; figures in docs/ratelimit.md):

- A POSIX semaphore per stripe in the region, taken and given through the standard
  library's C wrapper (chosen, with glibc): a pair costs about 0.2 us from Python, a
  tenth of a ctypes call's overhead, no syscall.  A semaphore has no owner, so the
  holder names itself in the lock's owner cell and a waiter takes over from a holder
  that is gone (``fastgw.shm.locks``, rule 1; tested with ``kill -9`` inside the
  critical section, named and not yet named).
- A robust pthread mutex through ctypes (the fallback elsewhere on Linux, and what
  ``FASTGW_SHM_LOCKS=mutex`` selects): about 0.55 us a pair; the kernel hands a dead
  holder's mutex to the next locker (``EOWNERDEAD``).  ``fcntl`` byte-range locks (not
  Linux, ``FASTGW_SHM_LOCKS=fcntl``): two syscalls per check.
- Lock-free compare-and-swap through an atomics package (1-13 us per CAS, and no CAS
  covers a 16-byte tag with its TAT), ``posix_ipc`` semaphores (nobody to take over
  from a dead holder), per-worker shards (inexact by up to ``(N-1)/N * burst``).

Whatever the lock, the table stays consistent when a holder dies: every write under the
lock is one aligned 8-byte TAT or one 16-byte tag, each harmless alone (a kill between
the TAT and the tag of an insert leaves the slot's old key with the new key's TAT, never
more budget than the eviction would have given it; a TAT of a multi-limit request
written before a refusal could undo it is a charge a little early; a torn tag matches
nothing and is reclaimed as stale).  Multi-limit requests lock their stripes in
ascending order, so they stay exactly all or nothing.

Exactness.  Every update of a key is serialized by its stripe lock, so the table runs
GCRA exactly over the requests in lock order.  In one process that is exact to the
request.  Across N workers, with E the time between the first and the last request:

    burst + rate*E - (1 + rate*d)  <=  allowed  <=  burst + rate*E

The upper side is exact whatever the interleaving (a request whose ``now_ns`` is older
than the last one applied only sees a stricter test).  On the lower side, ``d`` is the
delay between reading the clock and taking the lock: a few microseconds, up to a
scheduler slice when a worker is preempted right there; the capacity lost is what became
available during that delay at the end of the window.  tests/ratelimit/test_shm_procs.py measures
it with 4 processes on 2 cores, including a kill -9 mid-run: within 0-3 requests of
``burst + rate*E``.  ``T`` is rounded to the ns, so the effective rate is off by at most
0.5 ns / T relative (5e-7 at 1000/s).

Rules and failure modes:

- Use the table from one thread per process (the worker's event loop): the stripe locks
  belong to the thread that took them.
- A stopped holder costs each check on its stripe ``locks.WAIT``, then an uncharged decision.
- With the fcntl fallback, never close another fd of the region in a process that
  checks: closing any fd of a file drops every POSIX lock the process holds on it.
- Never use the table after ``Region.close``: the locks are used by address.
- ``now_ns`` must be positive (0 marks an empty slot) and from the same clock in every
  process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import NamedTuple

from fastgw.shm import locks as _locks

BUCKET = 8
_TAGS = 16 * BUCKET                 # tag bytes per bucket
STRIDE = _TAGS + 8 * BUCKET         # bytes per bucket
STRIPES = 1024                      # stripe locks at most (fewer if there are fewer buckets)
MEMO_MAX = 8192                     # per-process memo of key -> Slot

Decision = tuple[bool, int, float, float]   # allowed, remaining, reset_after_s, retry_after_s


class Spec(NamedTuple):
    """One limit as the table sees it (``spec()``)."""

    T: int          # emission interval, ns (at least 1)
    tau: int        # burst * T


class Slot(NamedTuple):
    """Where a key lives in the table (``RateTable.slot``), memoised per process.  A tag
    found at byte ``pos`` of the mapping (a multiple of 16) has its TAT in cell
    ``cells + pos // 16``."""

    bucket: int     # byte offset of the key's bucket
    tags_end: int   # byte offset just past its 8 tags
    cells: int      # TAT cell index base (see above)
    stripe: int     # index of the bucket's stripe lock
    tag: bytes      # the key's 16-byte tag


def size(slots: int) -> int:
    """Bytes of the table's part of the region: the buckets, the stripe locks, then one
    8-byte mark per stripe."""
    if slots < BUCKET or slots % BUCKET:
        raise ValueError(f"table_slots must be a positive multiple of {BUCKET}, got {slots}")
    nb = slots // BUCKET
    return nb * STRIDE + min(nb, STRIPES) * (_locks.SIZE + 8)


def spec(rate: float, burst: int) -> Spec:
    """``(T, tau)`` of a limit: the emission interval in ns (at least 1) and ``burst * T``."""
    T = int(1e9 / rate + 0.5) or 1
    return Spec(T, burst * T)


def admit(tat: int, T: int, tau: int, now_ns: int, cost: int = 1) -> int:
    """The GCRA test, the only copy: the key's new TAT if a request of ``cost`` on a key
    whose TAT is ``tat`` (0: absent) passes, else 0."""
    new = (tat if tat > now_ns else now_ns) + cost * T
    return new if new - now_ns <= tau else 0


def decide(tat: int, T: int, tau: int, now_ns: int, cost: int = 1) -> Decision:
    """The decision for a request of ``cost`` on a key whose TAT is ``tat`` (0: absent):
    ``(allowed, remaining, reset_after_s, retry_after_s)``.

    ``remaining``: requests of cost 1 still allowed right now (after this one, if it was
    allowed); ``reset_after_s``: seconds until the bucket is full again;
    ``retry_after_s``: 0.0 if allowed, else seconds until this request would pass."""
    new = admit(tat, T, tau, now_ns, cost)
    if new:
        return True, (now_ns + tau - new) // T, (new - now_ns) / 1e9, 0.0
    start = tat if tat > now_ns else now_ns
    left = (now_ns + tau - start) // T
    return False, left if left > 0 else 0, (start - now_ns) / 1e9, (start + cost * T - tau - now_ns) / 1e9


def decisions(tats: Sequence[int], specs: Sequence[Spec], now_ns: int, cost: int = 1) -> list[Decision]:
    """The decisions of ``RateTable.take_all``'s answer (same order as its limits)."""
    return [decide(tat, T, tau, now_ns, cost) for tat, (T, tau) in zip(tats, specs)]


def pair_gate(specs: Sequence[Spec]) -> tuple | None:
    """What ``take_pair`` decides two limits on: ``(T0, L0, T1, L1, specs)`` with
    ``L = tau - T`` (the GCRA test of a request of cost 1, ``admit``, is ``tat - now <=
    L``), for a set of exactly two limits; else None."""
    if len(specs) != 2:
        return None
    (T0, tau0), (T1, tau1) = specs
    if tau0 < T0 or tau1 < T1:      # (burst >= 1 in any config: never)
        return None
    return T0, tau0 - T0, T1, tau1 - T1, tuple(specs)


def _refused(r: tuple[bool, list[int]]) -> list[int] | None:
    """``take_pair``'s answer for an ``(allowed, tats)`` one."""
    return None if r[0] else r[1]


def _hint(s: Slot) -> tuple[int, int, int]:
    """A first guess of where ``s``'s key is: the first slot of its bucket, as (byte
    offset of its tag, the tag's end, cell of the TAT).  Only ever used after the tag is
    compared (a 16-byte slice compared costs less than two 8-byte cells read)."""
    return s[0], s[0] + 16, s[2] + (s[0] >> 4)


class _Slots(dict):
    """key bytes -> Slot, computed on a miss (``__missing__``) and bounded (cleared when it
    fills).  A dict subclass so that a hit is one C-level lookup, even through ``map``."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[bytes], Slot]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, key: bytes) -> Slot:
        slot = self.compute(key)
        if len(self) >= MEMO_MAX:
            self.clear()
        self[key] = slot
        return slot


class RateTable:
    __slots__ = ("_mm", "_q", "_locks", "_mutex", "_grab", "_give", "_owner0", "_off", "_nbuckets", "_nstripes",
                 "_hasher", "_digest", "_slots", "_marks", "slots", "buckets", "inserted", "reclaimed", "evicted")

    def __init__(self, mm, q: memoryview, fd: int, offset: int, slots: int, secret: bytes,
                 digest: Callable[[bytes], bytes] | None = None, locks: int = 0) -> None:
        self._mm = mm
        self._q = q
        self._off = offset
        self._nbuckets = nb = slots // BUCKET
        self._nstripes = ns = min(nb, STRIPES)
        self._locks = lk = _locks.stripe_locks(locks, mm, fd, offset + nb * STRIDE, ns, q)
        self._mutex = lk.handles
        self._marks = (offset + nb * STRIDE + ns * _locks.SIZE) >> 3   # cell of stripe 0's mark
        self._grab = lk.take                # (the locks' interface: fastgw.shm.locks's header)
        self._give = lk.give
        self._owner0 = lk.cell(0)           # stripe i's owner cell: _owner0 + 8 * i
        self._hasher = blake2b(digest_size=16, key=secret)
        self._digest = digest           # tests inject a weak digest to force collisions
        self._slots = _Slots(self._compute_slot)
        self.slots = slots
        self.buckets = nb
        self.inserted = 0               # new keys placed in an empty slot
        self.reclaimed = 0              # new keys placed in a stale slot
        self.evicted = 0                # new keys that pushed out a live one

    def init_locks(self) -> None:
        """The creator of the region, before fork: initialise the stripe locks."""
        self._locks.init()

    @property
    def lock_kind(self) -> str:
        """``semaphore``, ``robust-mutex`` or ``fcntl`` (``fastgw.shm.locks``)."""
        return self._locks.kind

    @property
    def recovered(self) -> int:
        """Stripe locks this process took over from a holder that died."""
        return self._locks.recovered

    @property
    def lock_timeouts(self) -> int:
        """Checks this process decided without charging because a stripe lock stayed busy
        past ``fastgw.shm.locks.WAIT``."""
        return self._locks.timeouts

    def slot(self, key: bytes) -> Slot:
        """Where ``key`` lives (memoised per process)."""
        return self._slots[key]

    def _compute_slot(self, key: bytes) -> Slot:
        if self._digest is None:
            h = self._hasher.copy()
            h.update(key)
            tag = h.digest()
        else:
            tag = self._digest(key)
        b = int.from_bytes(tag[:8], "little") % self._nbuckets
        boff = self._off + b * STRIDE
        return Slot(boff, boff + _TAGS, ((boff + _TAGS) >> 3) - (boff >> 4), b % self._nstripes, tag)

    def _find(self, boff: int, end: int, base: int, tag: bytes) -> int:
        """Cell index of ``tag``'s TAT in its bucket, or -1."""
        pos = self._mm.find(tag, boff, end)
        while pos >= 0 and pos & 15:        # a match straddling two tags: keep looking
            pos = self._mm.find(tag, pos + 1, end)
        return -1 if pos < 0 else base + (pos >> 4)

    def _insert(self, boff: int, tag: bytes, now: int, tat: int, keep: Sequence[int] = ()) -> int:
        """Place ``tag`` in its bucket with ``tat``, in the slot with the smallest TAT:
        an empty one (0), else a stale one (in the past), else the oldest live one, which
        is evicted.  Never a cell in ``keep``.  Caller holds the stripe lock."""
        q = self._q
        t0 = (boff + _TAGS) >> 3
        tats = q[t0:t0 + BUCKET].tolist()
        for ti in keep:
            if t0 <= ti < t0 + BUCKET:
                tats[ti - t0] = 1 << 64
        low = min(tats)
        j = tats.index(low)
        if low > now:
            self.evicted += 1
        elif low:
            self.reclaimed += 1
        else:
            self.inserted += 1
        q[t0 + j] = tat
        self._mm[boff + 16 * j:boff + 16 * j + 16] = tag
        return t0 + j

    def peek(self, key: bytes) -> int:
        """``key``'s TAT (0 if absent), without the lock: a read writes nothing, an
        aligned 8-byte TAT read is atomic on x86-64, and a read racing an insert can only
        see the key as absent (a full budget).
        ``decide(peek(key), *spec(rate, burst), now_ns)`` is ``check(..., dry=True)``."""
        return self.peek_slot(self._slots[key])

    def peek_slot(self, slot: Slot) -> int:
        """``peek`` for a key already turned into its ``Slot`` (see ``take_slots``)."""
        boff, end, base, _, tag = slot
        pos = self._mm.find(tag, boff, end)
        if pos < 0:
            return 0
        ti = base + (pos >> 4) if not pos & 15 else self._find(boff, end, base, tag)
        return self._q[ti] if ti >= 0 else 0

    # -- marked keys: a lock-free "nothing here" for a kind of key that is rarely present --
    @property
    def cells(self) -> memoryview:
        """The region's 8-byte cells (a native ``Q`` view): ``cells[mark_cell(s)]`` is a
        lock-free read of a stripe's mark."""
        return self._q

    def mark_cell(self, slot: Slot) -> int:
        """Index in ``cells`` of the mark of ``slot``'s stripe: the largest TAT that
        ``take_marked`` ever gave a key of that stripe (0: none).  While it is 0, or not
        after ``now``, every marked key of the stripe has a full bucket, so a peek of one
        would answer "passes": a reader needs neither the lookup nor the clock."""
        return self._marks + slot[3]

    def take_marked(self, slot: Slot, spec: Spec, now_ns: int, cost: int = 1) -> tuple[bool, int]:
        """``take_slots`` for one key that is marked (``mark_cell``): ``(allowed, tat)``,
        the key's TAT before this request.  Under the stripe lock the mark is raised to
        the key's new TAT before that TAT is written, so a lock-free reader that sees
        the TAT sees a mark at least as late (a kill in between leaves the mark ahead:
        a reader only peeks once more)."""
        h = self._mutex[slot[3]]
        q = self._q
        own = self._owner0 + 8 * slot[3]
        try:
            if not self._grab(h, False):
                self._locks.wait(h, own)
        except _locks.Busy:                 # never hang the loop: decide, charge nothing
            tat = self.peek_slot(slot)
            return bool(admit(tat, spec[0], spec[1], now_ns, cost)), tat
        q[own] = _locks.ME
        try:
            boff, end, base, _, tag = slot
            ti = self._find(boff, end, base, tag)
            tat = q[ti] if ti >= 0 else 0
            new = admit(tat, spec[0], spec[1], now_ns, cost)
            if new:
                m = self._marks + slot[3]
                if q[m] < new:
                    q[m] = new
                if ti >= 0:
                    q[ti] = new
                else:
                    self._insert(boff, tag, now_ns, new)
            return bool(new), tat
        finally:
            q[own] = 0
            self._give(h)

    def take_all(self, keys: Sequence[bytes], specs: Sequence[Spec], now_ns: int, cost: int = 1,
                 dry: bool = False) -> tuple[bool, list[int]]:
        """One request against several limits (``keys[i]`` under ``specs[i]``), all or
        nothing: ``(allowed, tats)``, ``tats[i]`` the TAT limit ``i`` was decided on, so
        ``decisions(tats, specs, now_ns, cost)`` are the decisions to report.

        Allowed only if every limit allows it; then each consumes ``cost``, else none
        does.  ``dry=True`` answers the same without consuming and without locks.  Locks:
        the keys' stripes in ascending order (no deadlock); under them one pass writes
        each passing key's new TAT and a refusal puts the old ones back."""
        # map over C callables: no Python frame per key on the usual memo hits
        return self.take_slots(list(map(self._slots.__getitem__, keys)), specs, now_ns, cost, dry)

    def take_slots(self, slots: Sequence[Slot], specs: Sequence[Spec], now_ns: int, cost: int = 1,
                   dry: bool = False) -> tuple[bool, list[int]]:
        """``take_all`` for keys already turned into ``Slot``s (``slot(key)``): a caller that
        memoises a request's slots (the rate-limit enforcer, per client or user) skips the
        key bytes altogether.  A Slot is a pure function of its key and the table's secret,
        so a memoised one never goes stale."""
        if dry:
            return self._staged(slots, specs, now_ns, cost, True)
        return self._take(slots, specs, now_ns, cost)

    def pair(self, s0: Slot, s1: Slot) -> tuple | None:
        """What ``take_pair`` decides a two-limit request on, for the slots of two
        different keys (None for one key twice): their stripe locks in ascending order,
        each with its owner cell (the second lock None when both share one), the two
        tags, a mutable hint (where each tag was last found), then the slots' fields
        flat, and the slots.  A caller memoises it with the slots."""
        if s0[4] == s1[4]:
            return None
        mutex, own = self._mutex, self._owner0
        a, b = s0[3], s1[3]
        a, b = (a, None) if a == b else (a, b) if a < b else (b, a)
        return (mutex[a], own + 8 * a, None if b is None else mutex[b], 0 if b is None else own + 8 * b,
                s0[4], s1[4], [*_hint(s0), *_hint(s1)],
                (s0[0], s0[1], s0[2], s0[4], s1[0], s1[1], s1[2], s1[4], (s0, s1)))

    def take_pair(self, pair: tuple, gate: tuple, now_ns: int) -> list[int] | None:
        """The usual limited request, two limits on two different keys, from their
        ``pair()`` record and the set's ``pair_gate``: None when both allow a request of
        cost 1 (both consumed), else the two TATs it was refused on (nothing consumed).
        Under the locks each tag is looked for where it was last found (one 16-byte slice
        compared: a key moves only when evicted), else in its bucket (``mmap.find``);
        both keys found: decided straight, else the locks are let go and the general pass
        decides."""
        ha, oa, hb, ob, t0, t1, hint, far = pair
        grab = self._grab
        try:
            if not grab(ha, False):
                self._locks.wait(ha, oa)
        except _locks.Busy:                 # never hang the loop: decide, charge nothing
            return _refused(self._staged(far[8], gate[4], now_ns, 1, True))
        q = self._q
        me = _locks.ME
        q[oa] = me                          # (the owner cells: fastgw.shm.locks, rule 1)
        both = False
        try:                                # release exactly what was taken
            if hb is not None:
                if not grab(hb, False):
                    self._locks.wait(hb, ob)
                q[ob] = me
                both = True
            p0, e0, i0, p1, e1, i1 = hint
            mm = self._mm
            if mm[p0:e0] != t0 or mm[p1:e1] != t1:
                b0, x0, c0, _, b1, x1, c1, _, _ = far
                p0 = mm.find(t0, b0, x0)
                p1 = mm.find(t1, b1, x1)
                if p0 < 0 or p1 < 0 or (p0 | p1) & 15:
                    p0 = -1                 # a new key (or a straddling match): below
                else:
                    i0, i1 = c0 + (p0 >> 4), c1 + (p1 >> 4)
                    hint[:] = (p0, p0 + 16, i0, p1, p1 + 16, i1)
            if p0 >= 0:
                tat0 = q[i0]
                tat1 = q[i1]
                T0, L0, T1, L1, _ = gate
                # ``admit`` twice, inlined for cost 1: ``max(tat, now) + T - now <= tau``
                # is ``tat - now <= tau - T`` (``pair_gate``'s L, >= 0 as burst >= 1),
                # whichever of tat and now is larger (test_shm_ratelimit pins the two
                # forms to the same answers)
                if tat0 - now_ns <= L0 and tat1 - now_ns <= L1:
                    q[i0] = (tat0 if tat0 > now_ns else now_ns) + T0
                    q[i1] = (tat1 if tat1 > now_ns else now_ns) + T1
                    return None
                return [tat0, tat1]
        except _locks.Busy:
            return _refused(self._staged(far[8], gate[4], now_ns, 1, True))
        finally:
            if both:
                q[ob] = 0
                self._give(hb)
            q[oa] = 0
            self._give(ha)
        return _refused(self._take(far[8], gate[4], now_ns, 1))

    def _take(self, slots: Sequence[Slot], specs: Sequence[Spec], now_ns: int, cost: int) -> tuple[bool, list[int]]:
        """``take_slots``' general pass: any number of limits, new keys, a key twice."""
        mutex, own0, grab = self._mutex, self._owner0, self._grab
        n = len(slots)
        if n == 1:
            stripes = (slots[0][3],)            # [3]: Slot.stripe (a tuple index is cheapest)
        elif n == 2:
            a, b = slots[0][3], slots[1][3]
            stripes = (a,) if a == b else (a, b) if a < b else (b, a)
        else:
            stripes = sorted({s[3] for s in slots})
        q = self._q
        held: list[int] = []                # the stripes taken, to release exactly those
        try:
            for i in stripes:
                h, own = mutex[i], own0 + 8 * i
                if not grab(h, False):
                    try:
                        self._locks.wait(h, own)
                    except _locks.Busy:     # never hang the loop: decide, charge nothing
                        return self._staged(slots, specs, now_ns, cost, True)
                q[own] = _locks.ME
                held.append(i)
            find = self._mm.find
            # One pass: each write is seen by a later limit on the same key; a refusal
            # puts back what was written; a key that is new and appears twice goes to
            # _staged.
            tats: list[int] = []
            wrote: list[tuple[int, int]] = []           # (cell, old TAT), to undo a refusal
            fresh: list[tuple[int, bytes, int]] = []    # (bucket, tag, new TAT) of new keys
            ok = True
            for (boff, end, base, _, tag), (T, tau) in zip(slots, specs):
                pos = find(tag, boff, end)
                if pos >= 0 and not pos & 15:
                    ti = base + (pos >> 4)
                    tat = q[ti]
                else:                       # absent, or a match straddling two tags
                    ti = self._find(boff, end, base, tag) if pos >= 0 else -1
                    tat = q[ti] if ti >= 0 else 0
                tats.append(tat)
                new = admit(tat, T, tau, now_ns, cost)
                if not new:
                    ok = False
                elif ti >= 0:
                    q[ti] = new
                    if n > 1:
                        wrote.append((ti, tat))
                else:
                    fresh.append((boff, tag, new))
            if not ok:
                for ti, tat in reversed(wrote):
                    q[ti] = tat
            elif fresh:
                if len(fresh) > 1 and len({t for _, t, _ in fresh}) < len(fresh):
                    # a new key twice: undo, then decide it in order (each sees the previous)
                    for ti, tat in reversed(wrote):
                        q[ti] = tat
                    return self._staged(slots, specs, now_ns, cost, False)
                written = [ti for ti, _ in wrote]
                for boff, tag, new in fresh:
                    written.append(self._insert(boff, tag, now_ns, new, written))
            return ok, tats
        finally:
            give = self._give
            for i in reversed(held):
                q[own0 + 8 * i] = 0
                give(mutex[i])

    def _staged(self, slots: list[Slot], specs: Sequence[Spec], now_ns: int, cost: int,
                dry: bool) -> tuple[bool, list[int]]:
        """``take_all`` when a key appears more than once (caller holds the locks), and
        for ``dry`` (no locks): each limit sees the TAT the previous ones on its key would
        leave."""
        q = self._q
        staged: dict[bytes, list[int]] = {}     # tag -> [new TAT, cell or -1, bucket offset]
        tats: list[int] = []
        ok = True
        for (boff, end, base, _, tag), (T, tau) in zip(slots, specs):
            st = staged.get(tag)
            if st is None:
                ti = self._find(boff, end, base, tag)
                st = staged[tag] = [q[ti] if ti >= 0 else 0, ti, boff]
            tat = st[0]
            tats.append(tat)
            new = admit(tat, T, tau, now_ns, cost)
            if new:
                st[0] = new
            else:
                ok = False
        if ok and not dry:
            for new, ti, _ in staged.values():
                if ti >= 0:
                    q[ti] = new
            written = [ti for _, ti, _ in staged.values() if ti >= 0]
            for tag, (new, ti, boff) in staged.items():
                if ti < 0:
                    written.append(self._insert(boff, tag, now_ns, new, written))
        return ok, tats

    # -- conveniences over take_all (cold paths, tests) ------------------------------------
    def check(self, key: bytes, rate: float, burst: int, now_ns: int, cost: int = 1,
              dry: bool = False) -> Decision:
        """One limit for one request: ``decide``'s answer after ``take_all``.  A denied
        request consumes nothing; ``cost > burst`` is never allowed."""
        s = spec(rate, burst)
        _, tats = self.take_all((key,), (s,), now_ns, cost, dry)
        return decide(tats[0], s.T, s.tau, now_ns, cost)

    def check_all(self, limits: Sequence[tuple[bytes, float, int]], now_ns: int, cost: int = 1,
                  dry: bool = False) -> tuple[bool, list[Decision]]:
        """``take_all`` for ``(key, rate, burst)`` limits: ``(allowed, decisions)``."""
        if not limits:
            return True, []
        specs = [spec(rate, burst) for _, rate, burst in limits]
        ok, tats = self.take_all([k for k, _, _ in limits], specs, now_ns, cost, dry)
        return ok, decisions(tats, specs, now_ns, cost)

    # -- occupancy -----------------------------------------------------------------------
    def live(self, now_ns: int, start: int = 0, step: int = 1, count: int | None = None) -> int:
        """Slots holding a key that is still refilling (TAT in the future), among the
        buckets ``start, start + step, ...`` (``count`` of them; default: to the end)."""
        stride = STRIDE >> 3                # cells per bucket
        if count is None:
            count = (self._nbuckets - start + step - 1) // step
        first = ((self._off + _TAGS) >> 3) + stride * start     # a bucket's TATs follow its tags
        end = first + stride * step * count
        q, cstep = self._q, stride * step
        return sum(t > now_ns for j in range(BUCKET) for t in q[first + j:end:cstep].tolist())

    def occupancy(self, now_ns: int) -> int:
        """Slots holding a key that is still refilling (every bucket)."""
        return self.live(now_ns)
