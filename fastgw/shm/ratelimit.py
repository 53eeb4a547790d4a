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
  bench/micro/test_micro_shm.py on a shared 2-vCPU box).
- Robust process-shared pthread mutex through ctypes: no syscall when uncontended (a
  lock/unlock pair from Python costs 0.5-0.55 us, same bench), the kernel hands
  EOWNERDEAD to the next locker.  Not taken: an FFI dependency on the libc struct layout
  per architecture, and a recovery path (``pthread_mutex_consistent``) that is one more
  thing to get wrong, to save about 0.45 us per check.
- Lock-free: CPython has no compare-and-swap on shared memory.  Racy read-modify-write
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
from fcntl import LOCK_EX, LOCK_UN, lockf
from hashlib import blake2b

BUCKET = 8
_TAGS = 16 * BUCKET                 # tag bytes per bucket
STRIDE = _TAGS + 8 * BUCKET         # bytes per bucket
MEMO_MAX = 8192                     # per-process memo of key -> _ident()

Decision = tuple[bool, int, float, float]   # allowed, remaining, reset_after_s, retry_after_s


def size(slots: int) -> int:
    if slots < BUCKET or slots % BUCKET:
        raise ValueError(f"table_slots must be a positive multiple of {BUCKET}, got {slots}")
    return slots // BUCKET * STRIDE


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
        self._memo: dict[bytes, tuple[int, int, int, int, bytes]] = {}
        self.slots = slots
        self.inserted = 0               # new keys placed in an empty slot
        self.reclaimed = 0              # new keys placed in a stale slot
        self.evicted = 0                # new keys that pushed out a live one

    def _ident(self, key: bytes) -> tuple[int, int, int, int, bytes]:
        """(bucket offset, end of its tags, TAT cell base, lock byte, 16-byte tag) of
        ``key``, memoized per process.  A tag found at byte ``pos`` (a multiple of 16)
        has its TAT in cell ``base + pos // 16``."""
        if self._digest is None:
            h = self._hasher.copy()
            h.update(key)
            tag = h.digest()
        else:
            tag = self._digest(key)
        b = int.from_bytes(tag[:8], "little") % self._nbuckets
        boff = self._off + b * STRIDE
        ident = (boff, boff + _TAGS, ((boff + _TAGS) >> 3) - (boff >> 4), self._off + b, tag)
        memo = self._memo
        if len(memo) >= MEMO_MAX:
            memo.clear()
        memo[key] = ident
        return ident

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

    def check(self, key: bytes, rate: float, burst: int, now_ns: int, cost: int = 1,
              dry: bool = False) -> Decision:
        """One limit for one request: ``(allowed, remaining, reset_after_s, retry_after_s)``.

        ``remaining``: requests of cost 1 still allowed right now (after this one, if it was
        allowed); ``reset_after_s``: seconds until the bucket is full again;
        ``retry_after_s``: 0.0 if allowed, else seconds until this request would pass.
        ``dry=True`` answers the same without consuming (a peek), and without the bucket
        lock: it writes nothing, an aligned 8-byte TAT read is atomic on x86-64, and a peek
        racing an insert can only see the key as absent (a full budget), so it costs no
        syscall.  A denied request consumes nothing.  ``cost > burst`` is never allowed.
        """
        # Hot path, straight down: identify, lock the bucket, find the tag, read TAT,
        # decide, write, unlock.  _find is inlined for the common case.
        boff, end, base, lk, tag = self._memo.get(key) or self._ident(key)
        T = int(1e9 / rate + 0.5) or 1
        tau = burst * T
        fd = self._fd
        locked = not dry
        try:                                # unlocking a byte not held is a no-op, so an
            if locked:                      # exception anywhere after here cannot leak it
                lockf(fd, LOCK_EX, 1, lk)
            pos = self._mm.find(tag, boff, end)
            if pos < 0:
                ti, tat = -1, 0
            elif pos & 15:
                ti = self._find(boff, end, base, tag)
                tat = self._q[ti] if ti >= 0 else 0
            else:
                ti = base + (pos >> 4)
                tat = self._q[ti]
            start = tat if tat > now_ns else now_ns
            new = start + cost * T
            if new - now_ns <= tau:
                if not dry:
                    if ti >= 0:
                        self._q[ti] = new
                    else:
                        self._insert(boff, tag, now_ns, new)
                return True, (now_ns + tau - new) // T, (new - now_ns) / 1e9, 0.0
            left = (now_ns + tau - start) // T
            return False, left if left > 0 else 0, (start - now_ns) / 1e9, (new - tau - now_ns) / 1e9
        finally:
            if locked:
                lockf(fd, LOCK_UN, 1, lk)

    def check_all(self, limits: Sequence[tuple[bytes, float, int]], now_ns: int, cost: int = 1,
                  dry: bool = False) -> tuple[bool, list[Decision]]:
        """Several limits for one request, all or nothing: ``(allowed, decisions)``.

        The request is allowed only if every limit allows it; then each limit consumes
        ``cost``.  If any limit denies, nothing is consumed anywhere, and the decisions of
        the limits that would have passed read as their ``dry`` answer.  The buckets are
        locked in ascending order (no deadlock between workers) and released by one call.
        """
        if not limits:
            return True, []
        memo, ident = self._memo, self._ident
        ids = [memo.get(k) or ident(k) for k, _, _ in limits]
        locks = sorted({i[3] for i in ids})
        fd = self._fd
        try:
            for lk in locks:
                lockf(fd, LOCK_EX, 1, lk)
            q = self._q
            staged: dict[bytes, list[int]] = {}     # tag -> [new TAT, cell or -1, bucket offset]
            out: list[Decision] = []
            ok = True
            for (_, rate, burst), (boff, end, base, _, tag) in zip(limits, ids):
                T = int(1e9 / rate + 0.5) or 1
                tau = burst * T
                st = staged.get(tag)
                if st is None:
                    ti = self._find(boff, end, base, tag)
                    st = staged[tag] = [q[ti] if ti >= 0 else 0, ti, boff]
                tat = st[0]
                start = tat if tat > now_ns else now_ns
                new = start + cost * T
                if new - now_ns <= tau:
                    st[0] = new
                    out.append((True, (now_ns + tau - new) // T, (new - now_ns) / 1e9, 0.0))
                else:
                    ok = False
                    left = (now_ns + tau - start) // T
                    out.append((False, left if left > 0 else 0, (start - now_ns) / 1e9,
                                (new - tau - now_ns) / 1e9))
            if ok and not dry:
                written: list[int] = []
                for tag, (new, ti, boff) in staged.items():
                    if ti >= 0:
                        q[ti] = new
                    else:
                        ti = self._insert(boff, tag, now_ns, new, written)
                    written.append(ti)
            return ok, out
        finally:
            lockf(fd, LOCK_UN, locks[-1] - locks[0] + 1, locks[0])

    def occupancy(self, now_ns: int) -> int:
        """Slots holding a key that is still refilling (TAT in the future)."""
        q, t0, stride = self._q, (self._off + _TAGS) >> 3, STRIDE >> 3
        end = (self._off + self._nbuckets * STRIDE) >> 3
        return sum(t > now_ns for j in range(BUCKET) for t in q[t0 + j:end:stride].tolist())
