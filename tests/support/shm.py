"""Shared by the multi-process rate-limit tests (test_shm_procs, test_shm_ratelimit_stripes):
forked children with bounded lives, a region per test, the hammering loop and the bound it
must stay within, and a probe of who holds a stripe lock."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import time
import traceback

import pytest

from fastgw.shm import Region, locks

RATE, BURST = 2000.0, 100      # hammered from 4 processes, far above the rate
STALL_NS = 1_000_000            # a gap this long between two checks of one process: it was off CPU
STALL_BIT = 1 << 63             # marks a stall's two clocks in a live report (clocks are below it)
BEAT_BIT = 1 << 62              # marks a "still checking" clock in a live report, every 256 checks


class Children:
    """Forked children that report one JSON value through a pipe; all reaped at the end."""

    def __init__(self) -> None:
        self.procs: dict[int, int] = {}            # pid -> read end of its pipe

    def fork(self, fn, *args) -> int:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                # child: never returns into pytest
            code = 70
            try:
                os.close(r)
                data = json.dumps(fn(*args)).encode()
                os.write(w, data)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(w)
        self.procs[pid] = r
        return pid

    def fork_until(self, fn, *args) -> int:
        """Fork ``fn(*args, w)``, which writes ``b"L"`` to the fd ``w`` once it is where the
        test wants it (inside a critical section): its pid, after that byte came."""
        r, w = os.pipe()
        pid = self.fork(fn, *args, w)
        os.close(w)
        try:
            assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"L"
        finally:
            os.close(r)
        return pid

    def result(self, pid: int, timeout: float = 15.0):
        r = self.procs[pid]
        deadline, chunks = time.monotonic() + timeout, []
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise AssertionError(f"child {pid} gave no result in {timeout}s")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        assert os.waitpid(pid, 0)[1] == 0, f"child {pid} failed"
        os.close(self.procs.pop(pid))
        return json.loads(b"".join(chunks))

    def kill(self, pid: int) -> int:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(self.procs.pop(pid))
        return status

    def reap_all(self) -> None:
        for pid, r in list(self.procs.items()):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            os.close(r)
        self.procs.clear()


@pytest.fixture
def children():
    c = Children()
    yield c
    c.reap_all()


@pytest.fixture
def region():
    r = Region.create(4, metrics_series=256, table_slots=4096, health_slots=16)
    yield r
    r.close()


def hammer(region: Region, key: bytes, start_ns: int, end_ns: int, stream: int = -1) -> dict:
    """Check ``key`` as fast as possible between start and end; report what was allowed,
    and the stalls (gaps of ``STALL_NS`` or more between two checks: off CPU, or waiting).
    With ``stream``, also write each allowed request's clock (8 bytes) to that fd as it
    happens, the first check's clock first, each stall as its two clocks with
    ``STALL_BIT`` set (one write), and every 256 checks the clock with ``BEAT_BIT`` set,
    so a child killed mid-run still reports, and when it last ran."""
    check, clock = region.ratelimit.check, time.monotonic_ns
    while clock() < start_ns:
        time.sleep(0.0005)
    stamps, stalls, checks, first, last = [], [], 0, 0, 0
    while True:
        now = clock()
        if now - last >= STALL_NS and last:     # (a stall at the end counts too)
            stalls.append((last, now))
            if stream >= 0:
                os.write(stream, (STALL_BIT | last).to_bytes(8, "little") + (STALL_BIT | now).to_bytes(8, "little"))
        if now >= end_ns:
            break
        if not first:
            first = now
            if stream >= 0:
                os.write(stream, now.to_bytes(8, "little"))
        if check(key, RATE, BURST, now)[0]:
            stamps.append(now)
            if stream >= 0:
                os.write(stream, now.to_bytes(8, "little"))
        elif stream >= 0 and not checks & 255:
            os.write(stream, (BEAT_BIT | now).to_bytes(8, "little"))
        checks += 1
        last = now
    return {"stamps": stamps, "stalls": stalls, "checks": checks, "first": first, "last": last}


def bound(elapsed_ns: int, delay_s: float = 0.010) -> tuple[float, float, float]:
    """(low, expected, high) allowed over ``elapsed_ns``, from the module header's bound:
    upper exact, lower ``1 + rate*d`` (d generous for a shared 2-core CI box)."""
    want = BURST + RATE * elapsed_ns / 1e9
    return want - 1 - RATE * delay_s, want, want + 1


def overflow_while_all_stalled(stalls: list[list], until: int) -> float:
    """Requests that became available while every process was stalled at once, beyond
    what the (empty: every process was being refused) bucket can hold: nobody could take
    them, whatever the lock.  On a box busy with other work the hammering processes can
    all be off CPU for longer than the bucket's depth (``BURST / RATE`` = 50 ms).  Only
    up to ``until``, the end of the window the expected count covers."""
    cur = [tuple(g) for g in stalls[0]]
    for other in stalls[1:]:
        cur = [(max(a0, b0), min(a1, b1)) for a0, a1 in cur for b0, b1 in other if max(a0, b0) < min(a1, b1)]
    merged: list[list[int]] = []
    for lo, hi in sorted((lo, min(hi, until)) for lo, hi in cur if lo < until):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return sum(max(0.0, RATE * (hi - lo) / 1e9 - BURST) for lo, hi in merged)


def held_elsewhere(table, stripe: int) -> bool:
    """Whether another process holds the table's stripe lock ``stripe`` (a non-waiting try
    from this process, released at once; a semaphore's value read)."""
    h = table._mutex[stripe]
    if table.lock_kind == "semaphore":
        return h._get_value() == 0
    if table.lock_kind == "fcntl":
        try:
            fcntl.lockf(h_fd(table), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, h)
        except OSError:
            return True
        fcntl.lockf(h_fd(table), fcntl.LOCK_UN, 1, h)
        return False
    trylock = ctypes.PyDLL(None).pthread_mutex_trylock
    trylock.argtypes = (ctypes.c_void_p,)             # h is the mutex's address
    rc = trylock(h)
    if rc == 0:
        table._give(h)
    return rc == errno.EBUSY


def take_stripe(table, stripe: int, name: bool = True) -> None:
    """Take a stripe lock as the table does: taken (waited for if busy), then named in its
    owner cell (``fastgw.shm.locks``, rule 1); ``name=False`` stops before naming."""
    h, cell = table._mutex[stripe], table._owner0 + 8 * stripe
    if not table._grab(h, False):
        table._locks.wait(h, cell)
    if name:
        table.cells[cell] = locks.ME


def give_stripe(table, stripe: int) -> None:
    """Release a stripe lock taken with ``take_stripe``."""
    table.cells[table._owner0 + 8 * stripe] = 0
    table._give(table._mutex[stripe])


def h_fd(table) -> int:
    return table._locks.lock.args[0]    # the fallback's partial(lockf, fd, ...)


ENV = {"semaphore": "semaphore", "robust-mutex": "mutex", "fcntl": "fcntl"}     # FASTGW_SHM_LOCKS


def _kind_region(kind: str, monkeypatch):
    monkeypatch.setenv("FASTGW_SHM_LOCKS", ENV[kind])
    r = Region.create(4, metrics_series=256, table_slots=4096, health_slots=16)
    assert r.ratelimit.lock_kind == kind
    return r


@pytest.fixture(params=list(ENV))
def any_lock_region(request, monkeypatch):
    """A region with each kind of stripe lock (``fastgw.shm.locks``)."""
    r = _kind_region(request.param, monkeypatch)
    yield r
    r.close()


@pytest.fixture(params=["semaphore", "robust-mutex"])
def bounded_lock_region(request, monkeypatch):
    """A region with each kind of stripe lock whose wait is bounded (not fcntl's)."""
    r = _kind_region(request.param, monkeypatch)
    yield r
    r.close()
