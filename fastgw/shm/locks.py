"""Stripe locks of the rate-limit table: process-shared locks in the region (L2).

What it owns: ``n`` locks of ``SIZE`` bytes each at an offset of the shared region, their
initialisation (once, by the process that creates the region, before fork) and the
recovery of a lock whose holder died.  The rate-limit table (``fastgw.shm.ratelimit``)
is the hot user; the breaker and revocation tables take their one lock on cold paths.
The table's header says why this mechanism and what the others cost.

Three kinds, chosen once by the process that creates the region and recorded in its
header (``table_locks``), so every process that maps it uses the creator's kind:

``Semaphores`` (the default with glibc): each lock is a POSIX semaphore of value 0/1
(``sem_init``, process-shared) in the region, used through the standard library's own
C wrapper (``_multiprocessing.SemLock``, built over the region's address with
``SemLock._rebuild``, the call ``multiprocessing`` itself makes when it passes a lock to
a child), so taking and releasing are plain C method calls: uncontended, one atomic
instruction each in user space, no syscall, and a tenth of a ``ctypes`` call's cost.  A
semaphore has no owner, so the lock's holder names itself (its pid, in the lock's
``owner`` cell, written right after taking it and cleared right before releasing it),
and a waiter takes over a lock whose named holder is gone (rule 1).
``RobustMutexes`` (where semaphores cannot be used this way, and for the breaker and
revocation tables' single locks): glibc/musl ``pthread_mutex_t`` initialised
``PTHREAD_PROCESS_SHARED``, ``PTHREAD_MUTEX_ROBUST`` and ``PTHREAD_MUTEX_ERRORCHECK``
through ``ctypes`` (``PyDLL``: the GIL stays held); the kernel hands a dead holder's
mutex to the next locker (``EOWNERDEAD``).
``RangeLocks`` (not Linux, or ``FASTGW_SHM_LOCKS=fcntl``): one-byte ``fcntl`` locks on
the region's file, two syscalls per lock/unlock pair; the kernel drops a dead process's
locks.  ``FASTGW_SHM_LOCKS=mutex`` selects the robust mutexes (tests run every kind).

Rules it keeps:

1. A holder that dies (``kill -9``, a crash) never blocks the others for long.  Robust
   mutexes: the kernel marks the lock owner-died and the next locker takes it over at
   once.  Semaphores: a locker that finds the lock taken looks at its ``owner`` cell
   every ``_SLICE`` while it waits; a holder that no longer runs (no such process, or a
   zombie) is taken over at once; a lock taken for all of ``WAIT`` with no holder named
   at any look (a holder killed between taking the lock and naming itself, a few
   bytecodes) is taken over then.  A take-over is
   exclusive: it happens under an ``fcntl`` lock on the lock's byte of the region's file
   (the kernel drops it if the taker dies), after checking again that the lock is still
   taken and still names the same holder.  ``recovered`` counts take-overs.  What the
   dead holder half-wrote stays (see the table's header: every write there is a whole
   8-byte cell or 16-byte tag, each harmless alone).
2. Waiting is bounded: a lock still held after ``WAIT`` seconds by a holder that still
   runs (stopped with SIGSTOP, starved of CPU) raises ``Busy``; the table then decides
   that request without the lock and without charging it, and ``timeouts`` counts it.
   A decision without a charge is the price of never hanging a worker's event loop on a
   lock; the metric and a warning make it visible.  (The one inexact case: a holder
   stopped for ``WAIT`` right between taking a semaphore and naming itself is taken over
   while it still runs; when it resumes, the two critical sections overlap once, which
   can lose one charge, never corrupt a cell.)
3. Release only what you hold: the table's hot path releases exactly the locks it took
   (a semaphore released by a non-holder would let two holders in).  The cold users
   (``lock``/``unlock``, robust mutexes) may unlock a lock not held: a no-op (``EPERM``).
4. Locks belong to a thread: use them from the one thread that checks limits (the
   worker's event loop).
5. Layout: ``SIZE`` (64) bytes per lock, one cache line: the semaphore (32 bytes on
   Linux) or mutex (24 to 48 bytes on the Linux ABIs) at its start, the ``owner`` cell in
   its last 8 bytes (``OWNER``).  Nothing else in the region is at these bytes.

The table's interface (its hot path uses it unwrapped): ``handles[i]`` is lock ``i``,
``take(h, False)`` is true when it took the lock without waiting, else ``wait(h, cell)``
returns once it holds it (waited for, or taken over) or raises ``Busy``; ``give(h)``
releases it; ``cell(i)`` is lock ``i``'s ``owner`` cell in the region's 8-byte cells,
where the caller writes ``ME`` after taking and 0 before giving.  The cold users'
interface (robust mutexes and fcntl locks only): ``lock(h)`` returns 0 (or None) when
taken, else an errno for ``repair(h, rc)``; ``unlock(h)``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import time
from fcntl import LOCK_EX, LOCK_NB, LOCK_UN, lockf
from functools import partial

SIZE = 64                           # bytes per lock in the region
OWNER = SIZE - 8                    # byte offset of a lock's owner cell in its SIZE bytes
_ERRORCHECK, _PSHARED, _ROBUST = 2, 1, 1    # PTHREAD_MUTEX_ERRORCHECK, _PROCESS_SHARED, _ROBUST (Linux)
_SEMAPHORE = 1                      # _multiprocessing's kind code of a plain (non-recursive) semaphore
# The longest wait for a busy lock.  A critical section is a few microseconds; a holder
# preempted inside it is back within a scheduler slice or a few, so a wait this long means
# the holder is stopped or gone without a hand-over.
WAIT = 0.2
_SLICE = 0.01                       # a semaphore waiter looks at the lock's owner this often

ME = os.getpid()                    # what a holder writes in a lock's owner cell


def _forked() -> None:
    global ME
    ME = os.getpid()


os.register_at_fork(after_in_child=_forked)


class Busy(OSError):
    """A lock still held by somebody else after ``WAIT`` seconds."""


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _libc():
    """The C library with robust mutexes, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.PyDLL(None)        # this handle's own function objects: argtypes set here only
        for name in ("pthread_mutex_trylock", "pthread_mutex_unlock", "pthread_mutex_consistent", "pthread_mutex_init"):
            getattr(lib, name).argtypes = (ctypes.c_void_p,) * (2 if name == "pthread_mutex_init" else 1)
        # glibc >= 2.30: a deadline on CLOCK_MONOTONIC, which a wall-clock step cannot stretch
        lib.pthread_mutex_clocklock.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Timespec))
        for name in ("pthread_mutexattr_setrobust", "pthread_mutexattr_setpshared", "pthread_mutexattr_settype"):
            getattr(lib, name)
        lib.sem_init.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint)
    except (OSError, AttributeError):
        return None
    return lib


def _semlock():
    """``_multiprocessing.SemLock`` where a semaphore in the region can be wrapped by it:
    glibc (whose ``sem_close``, which the wrapper calls when it is freed, leaves a
    semaphore it did not open alone; musl's would unmap it), else None."""
    if platform.libc_ver()[0] != "glibc" or _libc() is None:
        return None
    try:
        from _multiprocessing import SemLock
    except ImportError:
        return None
    return SemLock if callable(getattr(SemLock, "_rebuild", None)) else None


def _address(mm) -> int:
    """The address of the mapping's first byte (no buffer export is kept, so the mapping
    can still be closed)."""
    c = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(c)
    finally:
        del c


def gone(pid: int) -> bool:
    """Whether process ``pid`` no longer runs: no such process, or a zombie not reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return not os.path.isdir("/proc/self")     # no procfs: trust kill()
    return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] in (b"Z", b"X")


class Semaphores:
    """``n`` process-shared semaphores at ``offset`` in the mapping ``mm`` (rule 1 for
    the owner cells, read and written through ``q``, the region's 8-byte cells)."""

    kind = "semaphore"
    __slots__ = ("handles", "take", "give", "recovered", "waited", "timeouts", "_lib", "_addrs", "_q",
                 "_owner0", "_fd", "_off")

    def __init__(self, semlock, lib, mm, q, fd: int, offset: int, n: int) -> None:
        base = _address(mm) + offset
        self._addrs = [base + i * SIZE for i in range(n)]
        # wrappers over the region's bytes; kept for the life of the process
        self.handles = [semlock._rebuild(a, _SEMAPHORE, 1, None) for a in self._addrs]
        self.take = semlock.acquire         # take(h, False): never sleeps
        self.give = semlock.release
        self._lib = lib
        self._q = q
        self._owner0 = (offset + OWNER) >> 3
        self._fd = fd
        self._off = offset
        self.recovered = 0                  # locks this process took over from a holder that is gone
        self.waited = 0                     # locks found busy and waited for
        self.timeouts = 0                   # waits given up after WAIT (Busy raised)

    def cell(self, i: int) -> int:
        return self._owner0 + i * (SIZE >> 3)

    def init(self) -> None:
        """Initialise every lock (the creator of the region, before anyone uses them)."""
        for a in self._addrs:           # (owner cells: the new region's zeros, nobody named)
            if self._lib.sem_init(a, 1, 1):
                raise OSError("sem_init failed for a rate-limit stripe lock")

    def wait(self, h, cell: int) -> None:
        """``take(h, False)`` failed: wait for the lock (at most ``WAIT``), or take it
        over from a holder that is gone; return holding it, else raise ``Busy``."""
        self.waited += 1
        q = self._q
        deadline = time.monotonic() + WAIT
        named = 0                           # any holder named while this waits
        while True:
            holder = q[cell]
            if holder and gone(holder) and self._take_over(h, cell, holder):
                return
            named |= holder
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.take(h, True, min(left, _SLICE)):
                return
        # Taken all along and nobody ever named (a live holder is named for all of its
        # critical section but a few bytecodes): its holder died before naming itself.
        if not named and not q[cell] and self._take_over(h, cell, 0):
            return
        self.timeouts += 1
        raise Busy(errno.ETIMEDOUT, f"rate-limit stripe lock still held after {WAIT} s")

    def _take_over(self, h, cell: int, holder: int) -> bool:
        """Become the holder of ``h`` in place of ``holder`` (0: unnamed), if nobody else
        did first: under an fcntl lock on the lock's first byte, the lock must still be
        taken and still name ``holder``."""
        start = self._off + (cell - self._owner0) * 8
        try:
            lockf(self._fd, LOCK_EX | LOCK_NB, 1, start)
        except OSError:
            return False                    # another waiter is taking it over
        try:
            if h._get_value() or self._q[cell] != holder:
                return False
            self._q[cell] = ME
            self.recovered += 1
            return True
        finally:
            lockf(self._fd, LOCK_UN, 1, start)


class RobustMutexes:
    """``n`` robust process-shared mutexes at ``offset`` in the mapping ``mm``."""

    kind = "robust-mutex"
    __slots__ = ("handles", "lock", "unlock", "give", "recovered", "waited", "timeouts", "_lib", "_owner0")

    def __init__(self, lib, mm, offset: int, n: int) -> None:
        base = _address(mm) + offset
        self.handles = [base + i * SIZE for i in range(n)]      # addresses
        self._lib = lib
        self._owner0 = (offset + OWNER) >> 3
        self.lock = lib.pthread_mutex_trylock       # never sleeps: a busy lock goes to repair()
        self.unlock = self.give = lib.pthread_mutex_unlock
        self.recovered = 0                  # locks this process took over from a dead holder
        self.waited = 0                     # locks found busy and waited for
        self.timeouts = 0                   # waits given up after WAIT (Busy raised)

    def cell(self, i: int) -> int:
        return self._owner0 + i * (SIZE >> 3)

    def take(self, h, _block: bool) -> bool:
        """The table's interface: ``lock`` without waiting, true when held."""
        rc = self.lock(h)
        if rc == errno.EOWNERDEAD:
            self.repair(h, rc)
            return True
        return not rc

    def wait(self, h, _cell: int) -> None:
        self.repair(h, errno.EBUSY)

    def init(self) -> None:
        """Initialise every lock (the creator of the region, before anyone uses them)."""
        lib = self._lib
        attr = ctypes.create_string_buffer(64)      # pthread_mutexattr_t is 4 bytes on Linux
        rc = (lib.pthread_mutexattr_init(attr) or lib.pthread_mutexattr_settype(attr, _ERRORCHECK)
              or lib.pthread_mutexattr_setpshared(attr, _PSHARED) or lib.pthread_mutexattr_setrobust(attr, _ROBUST))
        if rc:
            raise OSError(rc, f"pthread_mutexattr: {os.strerror(rc)}")
        try:
            for h in self.handles:
                rc = lib.pthread_mutex_init(h, attr)
                if rc:
                    raise OSError(rc, f"pthread_mutex_init: {os.strerror(rc)}")
        finally:
            lib.pthread_mutexattr_destroy(attr)

    def repair(self, h, rc: int) -> None:
        """``lock(h)`` returned ``rc``: wait for a busy lock (at most ``WAIT``), take over a
        lock whose holder died; return holding it, else raise (``Busy`` after the wait)."""
        if rc == errno.EBUSY:
            self.waited += 1
            deadline = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int(WAIT * 1e9)
            ts = _Timespec(deadline // 1_000_000_000, deadline % 1_000_000_000)
            rc = self._lib.pthread_mutex_clocklock(h, time.CLOCK_MONOTONIC, ctypes.byref(ts))
            if not rc:
                return
            if rc == errno.ETIMEDOUT:
                self.timeouts += 1
                raise Busy(rc, f"rate-limit stripe lock still held after {WAIT} s")
        if rc == errno.EOWNERDEAD:
            self._lib.pthread_mutex_consistent(h)
            self.recovered += 1
            return
        raise OSError(rc, f"rate-limit stripe lock: {os.strerror(rc)}")


class RangeLocks:
    """The fallback: ``n`` one-byte ``fcntl`` locks at ``offset`` of the region's file."""

    kind = "fcntl"
    __slots__ = ("handles", "lock", "unlock", "give", "recovered", "waited", "timeouts", "_owner0")

    def __init__(self, fd: int, offset: int, n: int) -> None:
        self.handles = list(range(offset, offset + n * SIZE, SIZE))
        self.lock = partial(lockf, fd, LOCK_EX, 1)      # returns None; raises on error
        self.unlock = self.give = partial(lockf, fd, LOCK_UN, 1)    # unlocking a byte not held: no-op
        self._owner0 = (offset + OWNER) >> 3
        self.recovered = 0                  # the kernel releases a dead holder's locks itself
        self.waited = self.timeouts = 0     # lockf waits in the kernel, unbounded and uncounted

    def cell(self, i: int) -> int:
        return self._owner0 + i * (SIZE >> 3)

    def take(self, h, _block: bool) -> bool:
        self.lock(h)                        # waits in the kernel
        return True

    def init(self) -> None:
        return None

    def repair(self, h, rc: int) -> None:   # never called: lock() returns None or raises
        raise OSError(rc, "rate-limit stripe lock")

    wait = repair


KINDS = (RobustMutexes.kind, RangeLocks.kind, Semaphores.kind)     # by their code in the region's header


def default_kind() -> int:
    """The code of the locks a new region gets here: semaphores where the C library is
    glibc, else robust mutexes where it has them, else fcntl locks;
    ``FASTGW_SHM_LOCKS=fcntl`` or ``mutex`` chooses."""
    want = os.environ.get("FASTGW_SHM_LOCKS")
    if want == "fcntl" or _libc() is None:
        return 1
    return 0 if want == "mutex" or _semlock() is None else 2


def stripe_locks(kind: int, mm, fd: int, offset: int, n: int, q=None) -> Semaphores | RobustMutexes | RangeLocks:
    """The locks of kind ``kind`` (the region's, recorded by its creator so that every
    process that maps it uses the same) over the region's bytes ``offset .. offset + n*SIZE``.
    Semaphores need the region's 8-byte cells ``q`` (their owner cells); a caller without
    them (the breaker and revocation tables' single, cold locks) gets robust mutexes in a
    semaphore region: every process makes the same choice, so they still exclude."""
    if kind == 1:
        return RangeLocks(fd, offset, n)
    lib = _libc() if kind in (0, 2) else None
    semlock = _semlock() if kind == 2 and q is not None else None
    if lib is None or (kind == 2 and q is not None and semlock is None):
        raise OSError(f"this region's rate-limit locks are {KINDS[kind] if kind < len(KINDS) else kind!r}, "
                      "which this process cannot use")
    if semlock is not None:
        return Semaphores(semlock, lib, mm, q, fd, offset, n)
    return RobustMutexes(lib, mm, offset, n)
