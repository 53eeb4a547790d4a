"""Rate-limit table: GCRA state for any number of keys in fixed shared memory (L2).

Who writes what: every process that limits (the workers) reads and writes any slot, but
only while it holds the lock of the slot's bucket; nobody else writes the table.

Algorithm.  GCRA, i.e. a token bucket of ``burst`` tokens refilled at ``rate`` per second,
kept as one number per key: the theoretical arrival time (TAT, int ns on the caller's
clock, ``time.monotonic_ns()`` in every process).  With ``T = 1e9 / rate`` (rounded to the
ns) and ``tau = burst * T``, a request of ``cost`` is allowed iff
``max(TAT, now) + cost*T - now <= tau``, and then TAT becomes that value.  A key whose TAT
is in the past has a full bucket: the same state as a key never seen.

Layout.  ``table_slots`` slots in buckets of 8 (``BUCKET``); a bucket is 8 tags of 16 bytes
then 8 TATs of 8 bytes (192 bytes, 3 cache lines).  A key's tag is a keyed BLAKE2b-128 of
the key bytes (the 16-byte secret is drawn when the region is created, so clients cannot
aim keys at one bucket): the first 64 bits are the hash that picks the bucket, the last 64
the fingerprint; a slot matches only if all 128 bits match, so two keys that share a hash
are still told apart.  The probe window is the key's bucket (open addressing that never
leaves the bucket, so one lock covers every slot a check may touch); the lookup is one
``mmap.find`` over the bucket's 128 tag bytes.  The digest costs about 0.5 us, so each
process keeps a bounded memo from key bytes to (bucket, tag) (cleared when it fills).

Replacement.  A new key takes the slot of its bucket with the smallest TAT: an empty one
(TAT 0), else a stale one (TAT in the past: reclaiming it loses nothing), else the oldest
live one, which is evicted (the key closest to a full bucket; it restarts with a full
bucket, so at most ``burst`` extra requests for that key).  Memory is fixed whatever the
number of keys.  Evictions start when a bucket holds 8 keys that are all still
refilling; measured with random keys: none up to a quarter of the slots live, 0.1% of
insertions at 38%, 0.8% at 50%, 5% at 75%.  So size ``table_slots`` at 2-4x the number of
keys expected to be refilling at once.  ``inserted``, ``reclaimed`` and ``evicted`` count
per process; the worker publishes them through its metric slot.

Concurrency: per-bucket ``fcntl`` byte-range locks on the region's memfd.  Evaluated:

- POSIX byte-range lock per bucket (chosen).  The kernel drops a process's locks when it
  dies, so a ``kill -9`` inside the critical section cannot leave a bucket held; a waiter
  sleeps in the kernel and wakes when the holder unlocks, which is what we want on a
  busy 2-core box where the holder may be preempted.  Cost: two syscalls per check,
  0.8-1.0 us; a whole check is about 2.0 us, 1.2 us of it Python (min of
  bench/micro/test_micro_shm.py on a shared 2-vCPU box).  A request with several limits
  (``take_all``) also costs two: one non-waiting lock of the byte range spanning all its
  buckets, one unlock; only when a bucket of that span is held does it fall back to its
  own buckets one by one (in ascending order, waiting).  Held for a few microseconds, a
  span can make a check of an unrelated key in between wait that long; the syscall it
  saves (one per extra limit, 1-2 us each) is worth more.
- Robust process-shared pthread mutex through ctypes: no syscall when uncontended (a
  lock/unlock pair from Python costs 0.5-0.55 us, same bench), the kernel hands
  EOWNERDEAD to the next locker.  Not taken: an FFI dependency on the libc struct layout
  per architecture, and a recovery path (``pthread_mutex_consistent``) that is one more
  thing to get wrong, to save about 0.45 us per check.
- Lock-free: CPython has no compare-and-swap on shared memory (libatomic's
  ``__atomic_compare_exchange_8`` through ctypes costs about 2 us a call, as much as a
  syscall, and an eviction racing a CAS would need a generation to stay exact).  Racy read-modify-write
  loses updates without bound (a preempted writer stores a stale TAT); per-worker
  single-writer columns summed at check time would be bounded (N - 1 requests) but cost
  N reads per check and N times the memory, and slot allocation would still need a lock.

Exactness.  Every update of a key is serialized by its bucket lock, so the table runs
GCRA exactly over the requests in lock order.  In one process that is exact to the
request.  Across N workers, with E the time between the first and the last request:

    burst + rate*E - (1 + rate*d)  <=  allowed  <=  burst + rate*E

The upper side is exact whatever the interleaving (a request whose ``now_ns`` is older
than the last one applied only sees a stricter test).  On the lower side, ``d`` is the
delay between reading the clock and taking the lock: a few microseconds, up to a
scheduler slice when a worker is preempted right there; the capacity lost is what became
available during that delay at the end of the window.  tests/test_shm_procs.py measures
it with 4 processes on 2 cores, including a kill -9 mid-run: within 0-3 requests of
``burst + rate*E``.  ``T`` is rounded to the ns, so the effective rate is off by at most
0.5 ns / T relative (5e-7 at 1000/s).

Rules and failure modes:

- Use the table from one thread per process (the worker's event loop): POSIX locks belong
  to the process, so two threads of one process would not exclude each other.
- Never close another fd of the region in a process that checks: closing any fd of a file
  drops every POSIX lock the process holds on it (the mmap keeps its own dup, which is
  closed only by ``Region.close``).
- A holder stopped with SIGSTOP blocks the waiters of that one bucket until it is
  continued or killed; a supervisor that kills hung workers should kill the longest-silent
  one first and look again, since the others may only be waiting for it.
- ``now_ns`` must be positive (0 marks an empty slot) and from the same clock in every
  process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fcntl import LOCK_EX, LOCK_NB, LOCK_UN, lockf
from hashlib import blake2b

BUCKET = 8
_TAGS = 16 * BUCKET                 # tag bytes per bucket
STRIDE = _TAGS + 8 * BUCKET         # bytes per bucket
MEMO_MAX = 8192                     # per-process memo of key -> _ident()

Decision = tuple[bool, int, float, float]   # allowed, remaining, reset_after_s, retry_after_s
Spec = tuple[int, int]                      # (T, tau) of a limit: see spec()



def size(slots: int) -> int:
    if slots < BUCKET or slots % BUCKET:
        raise ValueError(f"table_slots must be a positive multiple of {BUCKET}, got {slots}")
    return slots // BUCKET * STRIDE


def spec(rate: float, burst: int) -> Spec:
    """``(T, tau)`` of a limit: the emission interval in ns (at least 1) and ``burst * T``."""
    T = int(1e9 / rate + 0.5) or 1
    return T, burst * T


def decide(tat: int, T: int, tau: int, now_ns: int, cost: int = 1) -> Decision:
    """The decision for a request of ``cost`` on a key whose TAT is ``tat`` (0: absent), as
    ``RateTable.check`` answers it (the GCRA test; see the module header)."""
    start = tat if tat > now_ns else now_ns
    new = start + cost * T
    if new - now_ns <= tau:
        return True, (now_ns + tau - new) // T, (new - now_ns) / 1e9, 0.0
    left = (now_ns + tau - start) // T
    return False, left if left > 0 else 0, (start - now_ns) / 1e9, (new - tau - now_ns) / 1e9


def decisions(tats: Sequence[int], specs: Sequence[Spec], now_ns: int, cost: int = 1) -> list[Decision]:
    """The decisions of ``RateTable.take_all``'s answer (same order as its limits)."""
    return [decide(tat, T, tau, now_ns, cost) for tat, (T, tau) in zip(tats, specs)]


class _Idents(dict):
    """key bytes -> ident, computed on a miss (``__missing__``) and bounded (cleared when it
    fills).  A dict subclass so that a hit is one C-level lookup, even through ``map``."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[bytes], tuple]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, key: bytes) -> tuple:
        ident = self.compute(key)
        if len(self) >= MEMO_MAX:
            self.clear()
        self[key] = ident
        return ident


class RateTable:
    __slots__ = ("_mm", "_q", "_fd", "_off", "_nbuckets", "_hasher", "_digest", "_memo",
                 "slots", "inserted", "reclaimed", "evicted")

    def __init__(self, mm, q: memoryview, fd: int, offset: int, slots: int, secret: bytes,
                 digest: Callable[[bytes], bytes] | None = None) -> None:
        self._mm = mm
        self._q = q
        self._fd = fd
        self._off = offset
        self._nbuckets = slots // BUCKET
        self._hasher = blake2b(digest_size=16, key=secret)
        self._digest = digest           # tests inject a weak digest to force collisions
        self._memo = _Idents(self._compute_ident)
        self.slots = slots
        self.inserted = 0               # new keys placed in an empty slot
        self.reclaimed = 0              # new keys placed in a stale slot
        self.evicted = 0                # new keys that pushed out a live one

    def _ident(self, key: bytes) -> tuple[int, int, int, int, bytes]:
        """(bucket offset, end of its tags, TAT cell base, lock byte, 16-byte tag) of
        ``key``, memoized per process.  A tag found at byte ``pos`` (a multiple of 16)
        has its TAT in cell ``base + pos // 16``."""
        return self._memo[key]

    def _compute_ident(self, key: bytes) -> tuple[int, int, int, int, bytes]:
        if self._digest is None:
            h = self._hasher.copy()
            h.update(key)
            tag = h.digest()
        else:
            tag = self._digest(key)
        b = int.from_bytes(tag[:8], "little") % self._nbuckets
        boff = self._off + b * STRIDE
        return boff, boff + _TAGS, ((boff + _TAGS) >> 3) - (boff >> 4), self._off + b, tag

    def _find(self, boff: int, end: int, base: int, tag: bytes) -> int:
        """Cell index of ``tag``'s TAT in its bucket, or -1."""
        pos = self._mm.find(tag, boff, end)
        while pos >= 0 and pos & 15:        # a match straddling two tags: keep looking
            pos = self._mm.find(tag, pos + 1, end)
        return -1 if pos < 0 else base + (pos >> 4)

    def _insert(self, boff: int, tag: bytes, now: int, tat: int, keep: Sequence[int] = ()) -> int:
        """Place ``tag`` in its bucket with ``tat``, in the slot with the smallest TAT:
        an empty one (0), else a stale one (in the past), else the oldest live one, which
        is evicted.  Never a cell in ``keep``.  Caller holds the bucket lock."""
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
        """``key``'s TAT (0 if absent), without the bucket lock: a read writes nothing, an
        aligned 8-byte TAT read is atomic on x86-64, and a read racing an insert can only
        see the key as absent (a full budget), so it costs no syscall.
        ``decide(peek(key), *spec(rate, burst), now_ns)`` is ``check(..., dry=True)``."""
        boff, end, base, _, tag = self._memo[key]
        pos = self._mm.find(tag, boff, end)
        if pos < 0:
            return 0
        ti = base + (pos >> 4) if not pos & 15 else self._find(boff, end, base, tag)
        return self._q[ti] if ti >= 0 else 0

    def check(self, key: bytes, rate: float, burst: int, now_ns: int, cost: int = 1,
              dry: bool = False) -> Decision:
        """One limit for one request: ``(allowed, remaining, reset_after_s, retry_after_s)``.

        ``remaining``: requests of cost 1 still allowed right now (after this one, if it was
        allowed); ``reset_after_s``: seconds until the bucket is full again;
        ``retry_after_s``: 0.0 if allowed, else seconds until this request would pass.
        ``dry=True`` answers the same without consuming (a peek), and without the bucket
        lock (``peek``).  A denied request consumes nothing.  ``cost > burst`` is never
        allowed.
        """
        T, tau = spec(rate, burst)
        if dry:
            return decide(self.peek(key), T, tau, now_ns, cost)
        # Straight down: identify, lock the bucket, find the tag, read TAT, decide, write,
        # unlock.  _find is inlined for the common case.
        boff, end, base, lk, tag = self._memo[key]
        fd = self._fd
        try:                                # unlocking a byte not held is a no-op, so an
            lockf(fd, LOCK_EX, 1, lk)       # exception anywhere after here cannot leak it
            pos = self._mm.find(tag, boff, end)
            if pos < 0:
                ti, tat = -1, 0
            elif pos & 15:
                ti = self._find(boff, end, base, tag)
                tat = self._q[ti] if ti >= 0 else 0
            else:
                ti = base + (pos >> 4)
                tat = self._q[ti]
            d = decide(tat, T, tau, now_ns, cost)
            if d[0]:
                new = (tat if tat > now_ns else now_ns) + cost * T
                if ti >= 0:
                    self._q[ti] = new
                else:
                    self._insert(boff, tag, now_ns, new)
            return d
        finally:
            lockf(fd, LOCK_UN, 1, lk)

    def check_all(self, limits: Sequence[tuple[bytes, float, int]], now_ns: int, cost: int = 1,
                  dry: bool = False) -> tuple[bool, list[Decision]]:
        """Several limits for one request, all or nothing: ``(allowed, decisions)``.

        The request is allowed only if every limit allows it; then each limit consumes
        ``cost``.  If any limit denies, nothing is consumed anywhere, and the decisions of
        the limits that would have passed read as their ``dry`` answer.  Locking:
        ``take_all``.
        """
        if not limits:
            return True, []
        specs = [spec(rate, burst) for _, rate, burst in limits]
        ok, tats = self.take_all([k for k, _, _ in limits], specs, now_ns, cost, dry)
        return ok, decisions(tats, specs, now_ns, cost)

    def take_all(self, keys: Sequence[bytes], specs: Sequence[Spec], now_ns: int, cost: int = 1,
                 dry: bool = False) -> tuple[bool, list[int]]:
        """``check_all`` for callers with precomputed ``spec()``s that mostly need only the
        verdict: ``(allowed, tats)``, ``tats[i]`` the TAT limit ``i`` was decided on, so
        ``decisions(tats, specs, now_ns, cost)`` are ``check_all``'s decisions.

        One lock for the request: a single ``fcntl`` call tries (without waiting) the byte
        range spanning every bucket the keys fall in, and one call releases it, so a check
        costs two syscalls whatever the number of keys.  If a bucket of the span is held,
        the buckets are taken one by one in ascending order, waiting (no deadlock: a
        process waits only while holding lower buckets than the one it waits for, and a
        span is only ever taken without waiting).

        Under the locks nobody else sees the table, so the hot loop writes each passing
        key's new TAT at once and a refusal puts the old ones back (``_undo``): one pass,
        no staging.  Keys not in the table yet are inserted after the pass, once all passed.
        """
        # map over C callables: no Python frame per key on the usual memo hits
        ids = list(map(self._memo.__getitem__, keys))
        lo = min(ids)[3]                    # idents sort by bucket, so by lock byte
        span = max(ids)[3] - lo + 1
        fd = self._fd
        try:                                # unlocking bytes not held is a no-op
            if span == 1:
                lockf(fd, LOCK_EX, 1, lo)
            else:
                try:
                    lockf(fd, LOCK_EX | LOCK_NB, span, lo)
                except (BlockingIOError, PermissionError):   # EAGAIN / EACCES: held
                    for lk in sorted({i[3] for i in ids}):
                        lockf(fd, LOCK_EX, 1, lk)
            if dry:
                return self._take_staged(ids, specs, now_ns, cost, True)
            q = self._q
            find = self._mm.find
            tats: list[int] = []
            fresh: list[tuple[int, bytes, int]] = []    # (bucket, tag, new TAT) of new keys
            ok = True
            for (boff, end, base, _, tag), (T, tau) in zip(ids, specs):
                pos = find(tag, boff, end)
                if pos >= 0 and not pos & 15:
                    ti = base + (pos >> 4)
                    tat = q[ti]
                else:                       # absent, or a match straddling two tags
                    ti = self._find(boff, end, base, tag) if pos >= 0 else -1
                    tat = q[ti] if ti >= 0 else 0
                tats.append(tat)
                new = (tat if tat > now_ns else now_ns) + cost * T
                if new - now_ns > tau:
                    ok = False
                elif ti >= 0:
                    q[ti] = new
                else:
                    fresh.append((boff, tag, new))
            if not ok:
                self._undo(ids, specs, tats, now_ns, cost)
            elif fresh:
                if len(set(keys)) < len(keys):      # a new key twice: decide it in order
                    self._undo(ids, specs, tats, now_ns, cost)
                    return self._take_staged(ids, specs, now_ns, cost, False)
                self._insert_fresh(ids, fresh, now_ns)
            return ok, tats
        finally:
            lockf(fd, LOCK_UN, span, lo)

    def _undo(self, ids, specs, tats: list[int], now_ns: int, cost: int) -> None:
        """Put back the TATs ``take_all``'s pass wrote (caller holds the locks): each key
        that was found and passed gets the TAT it was decided on, last first."""
        q = self._q
        for (boff, end, base, _, tag), (T, tau), tat in reversed(list(zip(ids, specs, tats))):
            ti = self._find(boff, end, base, tag)
            if ti >= 0 and (tat if tat > now_ns else now_ns) + cost * T - now_ns <= tau:
                q[ti] = tat

    def _insert_fresh(self, ids, fresh: list[tuple[int, bytes, int]], now_ns: int) -> None:
        """Insert the new keys of an allowed request (caller holds the locks), never in a
        cell written for this request."""
        written = [ti for ti in (self._find(boff, end, base, tag) for boff, end, base, _, tag in ids) if ti >= 0]
        for boff, tag, new in fresh:
            written.append(self._insert(boff, tag, now_ns, new, written))

    def _take_staged(self, ids, specs, now_ns: int, cost: int, dry: bool) -> tuple[bool, list[int]]:
        """``take_all`` when a new key appears more than once, and for ``dry``: each limit
        sees the TAT the previous ones on its key would leave (caller holds the locks)."""
        q = self._q
        staged: dict[bytes, list[int]] = {}     # tag -> [new TAT, cell or -1, bucket offset]
        tats: list[int] = []
        ok = True
        for (boff, end, base, _, tag), (T, tau) in zip(ids, specs):
            st = staged.get(tag)
            if st is None:
                ti = self._find(boff, end, base, tag)
                st = staged[tag] = [q[ti] if ti >= 0 else 0, ti, boff]
            tat = st[0]
            tats.append(tat)
            new = (tat if tat > now_ns else now_ns) + cost * T
            if new - now_ns <= tau:
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

    def occupancy(self, now_ns: int) -> int:
        """Slots holding a key that is still refilling (TAT in the future)."""
        q, t0, stride = self._q, (self._off + _TAGS) >> 3, STRIDE >> 3
        end = (self._off + self._nbuckets * STRIDE) >> 3
        return sum(t > now_ns for j in range(BUCKET) for t in q[t0 + j:end:stride].tolist())
