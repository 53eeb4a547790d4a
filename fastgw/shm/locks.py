"""Stripe locks of the rate-limit table: robust process-shared mutexes in the region (L2).

What it owns: ``n`` locks of ``SIZE`` bytes each at an offset of the shared region, their
initialisation (once, by the process that creates the region, before fork) and the
recovery of a lock whose holder died.  The rate-limit table (``fastgw.shm.ratelimit``)
is the only user; its header says why this mechanism and what the others cost.

Mechanism (``RobustMutexes``, the default on Linux): each lock is a glibc/musl
``pthread_mutex_t`` initialised ``PTHREAD_PROCESS_SHARED``, ``PTHREAD_MUTEX_ROBUST`` and
``PTHREAD_MUTEX_ERRORCHECK``, called through ``ctypes`` (``PyDLL``: the GIL stays held, so
a call is a plain C call; the lock's argument is its address, an int converted by
``argtypes``, which is cheaper than a ``c_void_p`` object).  ``lock`` is
``pthread_mutex_trylock``: uncontended, taking and releasing are one atomic instruction
each in user space, no syscall.  A busy lock goes to ``repair``, which waits for it in
``pthread_mutex_clocklock`` (a ``futex(2)`` sleep on ``CLOCK_MONOTONIC``, woken by the
unlocker) for at most ``WAIT`` seconds.

Rules it keeps:

1. A holder that dies (``kill -9``, a crash, an exit inside the critical section) never
   blocks the others: the kernel walks the dead thread's robust list, marks the lock
   owner-died and wakes a waiter, whose ``lock`` returns ``EOWNERDEAD``; ``lock`` then
   marks the lock consistent and the caller proceeds as its owner (``recovered`` counts
   it).  What the dead holder half-wrote stays (see the table's header: every write
   there is a whole 8-byte cell or 16-byte tag, each harmless alone).
2. Error-checking: relocking a lock this thread holds raises (``EDEADLK``) instead of
   hanging, and unlocking a lock it does not hold is a no-op (``EPERM``, ignored), so an
   ``unlock`` in a ``finally`` can never release somebody else's lock.
3. Waiting is bounded: a lock still held after ``WAIT`` seconds (its holder stopped with
   SIGSTOP, starved of CPU, or any failure of the robust-futex hand-over that nothing
   here can see) raises ``Busy``; the table then decides that request without the lock
   and without charging it (``fastgw.shm.ratelimit``), and ``timeouts`` counts it.  A
   decision without a charge is the price of never hanging a worker's event loop on a
   lock; the metric and a warning make it visible.
4. Locks belong to a thread: use them from the one thread that checks limits (the
   worker's event loop).
5. Layout: ``SIZE`` (64) bytes per lock, one cache line; a ``pthread_mutex_t`` is 24 to
   48 bytes on the Linux ABIs (40 on x86-64), so 64 holds it everywhere.  Nothing else in
   the region is at these bytes.

Elsewhere (no robust mutexes in the C library, or not Linux) ``RangeLocks`` keeps the
same interface with ``fcntl`` byte-range locks on the region's file, one byte per lock:
the kernel drops them when the holder dies; two syscalls per lock/unlock pair.
``FASTGW_SHM_LOCKS=fcntl`` forces it (benchmarks compare the two with it).  The kind is
chosen once, by the process that creates the region, and recorded in its header
(``table_locks``): every process that maps the region uses that kind, whatever its own
environment says.

Interface (the table's hot path uses it unwrapped): ``handles[i]`` is lock ``i``'s
argument, ``lock(h)`` returns 0 (or None) when taken, else an errno for ``repair(h, rc)``,
which returns once the lock is held or raises (``Busy`` after ``WAIT``), ``unlock(h)``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from fcntl import LOCK_EX, LOCK_UN, lockf
from functools import partial

SIZE = 64                           # bytes per lock in the region
_ERRORCHECK, _PSHARED, _ROBUST = 2, 1, 1    # PTHREAD_MUTEX_ERRORCHECK, _PROCESS_SHARED, _ROBUST (Linux)
# The longest wait for a busy stripe.  A critical section is a few microseconds; a holder
# preempted inside it is back within a scheduler slice or a few, so a wait this long means
# the holder is stopped or gone without the kernel's hand-over.
WAIT = 0.2


class Busy(OSError):
    """A stripe lock still held by somebody else after ``WAIT`` seconds."""


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
    except (OSError, AttributeError):
        return None
    return lib


def _address(mm) -> int:
    """The address of the mapping's first byte (no buffer export is kept, so the mapping
    can still be closed)."""
    c = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(c)
    finally:
        del c


class RobustMutexes:
    """``n`` robust process-shared mutexes at ``offset`` in the mapping ``mm``."""

    kind = "robust-mutex"
    __slots__ = ("handles", "lock", "unlock", "recovered", "waited", "timeouts", "_lib")

    def __init__(self, lib, mm, offset: int, n: int) -> None:
        base = _address(mm) + offset
        self.handles = [base + i * SIZE for i in range(n)]      # addresses
        self._lib = lib
        self.lock = lib.pthread_mutex_trylock       # never sleeps: a busy lock goes to repair()
        self.unlock = lib.pthread_mutex_unlock
        self.recovered = 0                  # locks this process took over from a dead holder
        self.waited = 0                     # locks found busy and waited for
        self.timeouts = 0                   # waits given up after WAIT (Busy raised)

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
    __slots__ = ("handles", "lock", "unlock", "recovered", "waited", "timeouts")

    def __init__(self, fd: int, offset: int, n: int) -> None:
        self.handles = list(range(offset, offset + n * SIZE, SIZE))
        self.lock = partial(lockf, fd, LOCK_EX, 1)      # returns None; raises on error
        self.unlock = partial(lockf, fd, LOCK_UN, 1)    # unlocking a byte not held: no-op
        self.recovered = 0                  # the kernel releases a dead holder's locks itself
        self.waited = self.timeouts = 0     # lockf waits in the kernel, unbounded and uncounted

    def init(self) -> None:
        return None

    def repair(self, h, rc: int) -> None:   # never called: lock() returns None or raises
        raise OSError(rc, "rate-limit stripe lock")


KINDS = (RobustMutexes.kind, RangeLocks.kind)     # by their code in the region's header


def default_kind() -> int:
    """The code of the locks a new region gets here: robust mutexes where the C library has
    them, unless ``FASTGW_SHM_LOCKS=fcntl``."""
    return 1 if os.environ.get("FASTGW_SHM_LOCKS") == "fcntl" or _libc() is None else 0


def stripe_locks(kind: int, mm, fd: int, offset: int, n: int) -> RobustMutexes | RangeLocks:
    """The locks of kind ``kind`` (the region's, recorded by its creator so that every
    process that maps it uses the same) over the region's bytes ``offset .. offset + n*SIZE``."""
    if kind == 1:
        return RangeLocks(fd, offset, n)
    lib = _libc() if kind == 0 else None
    if lib is None:
        raise OSError(f"this region's rate-limit locks are {KINDS[kind] if kind < len(KINDS) else kind!r}, "
                      "which this process cannot use")
    return RobustMutexes(lib, mm, offset, n)
