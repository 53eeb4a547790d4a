"""Micro-benchmarks of the shared-memory region (pytest-benchmark).

Run: ``python -m pytest bench/micro/test_micro_shm.py --benchmark-only``
(``--benchmark-columns=min,median,mean,ops`` for a short table).  On a shared box the
*min* column is the honest number.

What is measured and why:

- ``check`` on the paths a request takes: a hot key (memo hit), a fresh bytes object per
  call (what the limiter middleware builds), a denied request, a new key (digest + slot
  placement, evicting), three limits at once, and a hot key that three other processes
  hammer at the same time (contended bucket lock).
- The choice of lock (fastgw/shm/ratelimit.py header): the same check with the lock
  replaced by a no-op, with the robust mutexes (``FASTGW_SHM_LOCKS=mutex``) and with the
  fcntl fallback (``FASTGW_SHM_LOCKS=fcntl``); a bare pair of the default semaphore (as
  the table makes it), of the robust mutex (GIL held, as ctypes calls it; and released,
  for comparison) and of fcntl.
- The key digest (keyed BLAKE2b) against the per-process memo hit.
- Metrics: a counter increment, a histogram observation, a scrape of 4 workers x 1000
  series, a fold of a dead worker.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import time

import pytest

from fastgw.shm import Region

T0 = 10**12


@pytest.fixture(scope="module")
def region():
    r = Region.create(4, metrics_series=4096, table_slots=65536, health_slots=64)
    yield r
    r.close()


@pytest.fixture
def clock():
    """A clock that moves 1 us per call, so a 1e6/s limit keeps allowing."""
    return itertools.count(T0, 1000).__next__


def test_check_hot_key(benchmark, region, clock):
    check = region.ratelimit.check
    benchmark(lambda: check(b"ip:203.0.113.7", 1e6, 1000, clock()))


def test_check_hot_key_fresh_bytes(benchmark, region, clock):
    check, ip = region.ratelimit.check, b"203.0.113.8"
    benchmark(lambda: check(b"ip:" + ip, 1e6, 1000, clock()))


def test_check_denied(benchmark, region):
    check = region.ratelimit.check
    check(b"ip:203.0.113.9", 1.0, 1, T0)
    benchmark(lambda: check(b"ip:203.0.113.9", 1.0, 1, T0))


def test_check_new_key_evicting(benchmark, region):
    """Every call a never-seen key: digest, memo insert, slot placement (the table is
    kept full of live keys, so most placements evict)."""
    check = region.ratelimit.check
    keys = (b"ip:%d" % i for i in itertools.count())
    now = itertools.count(T0, 1).__next__           # keys stay live for 1 s: the table fills
    benchmark(lambda: check(next(keys), 1.0, 5, now()))


def test_check_all_three_limits(benchmark, region, clock):
    check_all = region.ratelimit.check_all
    limits = [(b"ip:203.0.113.10", 1e6, 1000), (b"user:alice", 1e6, 1000), (b"route:orders", 1e6, 1000)]
    benchmark(lambda: check_all(limits, clock()))


def test_check_without_lock(benchmark, region, clock, monkeypatch):
    """Not a real mode: the lock's share of a check is the difference with test_check_hot_key."""
    monkeypatch.setattr(region.ratelimit, "_grab", lambda h, block: True)
    monkeypatch.setattr(region.ratelimit, "_give", lambda h: None)
    check = region.ratelimit.check
    benchmark(lambda: check(b"ip:203.0.113.11", 1e6, 1000, clock()))


def test_check_contended_by_three_processes(benchmark, region, clock):
    """The same hot key while three forked processes hammer it from the other CPUs
    (conftest pins this process to one CPU; the hammers leave it, so they contend for
    the bucket lock, not for this CPU)."""
    check, pids = region.ratelimit.check, []
    stop = time.monotonic() + 60
    others = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                if others:
                    try:
                        os.sched_setaffinity(0, others)
                    except OSError:
                        pass
                while time.monotonic() < stop:
                    check(b"route:shared", 1e6, 1000, time.monotonic_ns())
            finally:
                os._exit(0)
        pids.append(pid)
    try:
        benchmark(lambda: check(b"route:shared", 1e6, 1000, time.monotonic_ns()))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_lock_pair_fcntl(benchmark, region):
    from fcntl import LOCK_EX, LOCK_UN, lockf

    fd = region.fd

    def pair():
        lockf(fd, LOCK_EX, 1, 12345)
        lockf(fd, LOCK_UN, 1, 12345)

    benchmark(pair)


@pytest.mark.parametrize("gil", ["held", "released"])
def test_lock_pair_robust_mutex_ctypes(benchmark, gil, monkeypatch):
    monkeypatch.setenv("FASTGW_SHM_LOCKS", "mutex")
    with Region.create(1, metrics_series=64, table_slots=1024, health_slots=8) as r:
        if r.ratelimit.lock_kind != "robust-mutex":
            pytest.skip("no robust mutexes here")
        lib = ctypes.PyDLL(None) if gil == "held" else ctypes.CDLL(None)
        lock, unlock = lib.pthread_mutex_lock, lib.pthread_mutex_unlock
        lock.argtypes = unlock.argtypes = (ctypes.c_void_p,)     # as fastgw.shm.locks calls them
        h = r.ratelimit._mutex[0]

        def pair():
            lock(h)
            unlock(h)

        benchmark(pair)


def test_lock_pair_semaphore(benchmark, region):
    """The default kind's pair as the table makes it: take, name, clear, give."""
    t = region.ratelimit
    if t.lock_kind != "semaphore":
        pytest.skip("no semaphores in the region here")
    grab, give, h, q, cell = t._grab, t._give, t._mutex[0], t.cells, t._owner0

    def pair():
        grab(h, False)
        q[cell] = 1
        q[cell] = 0
        give(h)

    benchmark(pair)


def test_check_hot_key_robust_mutex(benchmark, clock, monkeypatch):
    """The same check as test_check_hot_key with the robust mutexes (ctypes calls)."""
    monkeypatch.setenv("FASTGW_SHM_LOCKS", "mutex")
    with Region.create(1, metrics_series=64, table_slots=65536, health_slots=8) as r:
        check = r.ratelimit.check
        benchmark(lambda: check(b"ip:203.0.113.7", 1e6, 1000, clock()))


def test_check_hot_key_fcntl_fallback(benchmark, clock, monkeypatch):
    """The same check as test_check_hot_key with the previous lock (two syscalls)."""
    monkeypatch.setenv("FASTGW_SHM_LOCKS", "fcntl")
    with Region.create(1, metrics_series=64, table_slots=65536, health_slots=8) as r:
        check = r.ratelimit.check
        benchmark(lambda: check(b"ip:203.0.113.7", 1e6, 1000, clock()))


def test_digest_keyed_blake2b(benchmark, region):
    ident, keys = region.ratelimit._compute_slot, itertools.cycle([b"ip:%d" % i for i in range(100_000)])
    benchmark(lambda: ident(next(keys)))


def test_digest_memo_hit(benchmark, region):
    memo = region.ratelimit._slots
    region.ratelimit.slot(b"ip:memo")
    benchmark(lambda: memo.get(b"ip:" + b"memo"))


def test_metric_counter_increment(benchmark, region):
    w = region.metrics.writer(0)
    c = w.counter('fastgw_http_requests_total{route="a",service="b",method="GET",code="200"}')
    q = w.q

    def inc():
        q[c] += 1

    benchmark(inc)


def test_histogram_observe(benchmark, region):
    w = region.metrics.writer(0)
    h = w.histogram('fastgw_http_request_duration_seconds{route="a"}', 12)
    q, f = w.q, w.f

    def observe():
        f[h] += 0.0042
        q[h + 1 + 3] += 1

    benchmark(observe)


def _fill(region, slot, n):
    w = region.metrics.writer(slot)
    for i in range(n):
        key = f'fastgw_http_requests_total{{route="r{i % 100}",service="s",method="GET",code="{200 + i // 100}"}}'
        w.q[w.counter(key)] += i


def test_snapshot_4_workers_1000_series(benchmark, region):
    for slot in range(4):
        _fill(region, slot, 1000)
    snap = benchmark(region.metrics.snapshot)
    assert len(snap) >= 1000


def test_fold_dead_1000_series(benchmark, region):
    benchmark.pedantic(region.metrics.fold_dead, args=(3,), setup=lambda: _fill(region, 3, 1000), rounds=20)
