"""Several limits per request across real forked processes (``RateTable.take_all``): one
lock call for the span of the request's buckets, the per-bucket fallback when another
process holds a bucket inside that span, and all-or-nothing exactness under contention."""

from __future__ import annotations

import fcntl
import os
import select
import time

import pytest

from fastgw.shm import Region
from fastgw.shm.ratelimit import decisions, spec

from .test_shm_procs import children, region  # noqa: F401  (the fixtures, shared)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

S = 1_000_000_000




def _keys_around(t, gap: int = 4) -> tuple[bytes, bytes, int]:
    """Two keys whose buckets are at least ``gap`` apart, and a lock byte between them."""
    a = b"k:a"
    la = t._ident(a)[3]
    for i in range(10_000):
        b = b"k:%d" % i
        lb = t._ident(b)[3]
        if lb - la > gap:
            return a, b, (la + lb) // 2
    raise AssertionError("no key far enough")


def _hold(region: Region, byte: int, w: int, seconds: float) -> None:
    fcntl.lockf(region.fd, fcntl.LOCK_EX, 1, byte)
    os.write(w, b"L")
    time.sleep(seconds)


def test_a_bucket_held_inside_the_span_does_not_block_the_others(region, children):
    t = region.ratelimit
    a, b, mid = _keys_around(t)
    r, w = os.pipe()
    pid = children.fork(_hold, region, mid, w, 30.0)
    os.close(w)
    assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"L"
    os.close(r)
    t0 = time.monotonic()
    now = time.monotonic_ns()
    assert t.check_all([(a, 1, 2), (b, 1, 2)], now)[0]      # falls back to its own two buckets
    assert time.monotonic() - t0 < 1.0
    assert t.check(a, 1, 2, now, dry=True)[1] == 0 and t.check(b, 1, 2, now, dry=True)[1] == 0
    children.kill(pid)


def test_a_bucket_of_the_request_held_elsewhere_is_waited_for(region, children):
    t = region.ratelimit
    a, b, _ = _keys_around(t)
    r, w = os.pipe()
    pid = children.fork(_hold, region, t._ident(b)[3], w, 0.3)
    os.close(w)
    assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"L"
    os.close(r)
    t0 = time.monotonic()
    assert t.check_all([(a, 1, 2), (b, 1, 2)], time.monotonic_ns())[0]
    assert time.monotonic() - t0 > 0.1
    children.result(pid)
    # and the span path releases everything: another process takes both buckets at once
    assert fcntl.lockf(region.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, t._ident(a)[3]) is None


def _hammer_pair(region: Region, keys: list[bytes], start_ns: int, end_ns: int) -> dict:
    t, clock = region.ratelimit, time.monotonic_ns
    specs = [spec(2000.0, 100), spec(1.0, 10**6)]        # the first binds, the second counts
    while clock() < start_ns:
        time.sleep(0.0005)
    allowed = checks = 0
    first = last = 0
    while (now := clock()) < end_ns:
        first = first or now
        ok, tats = t.take_all(keys, specs, now)
        if ok:
            allowed += 1
            assert all(d[0] for d in decisions(tats, specs, now))
        checks += 1
        last = now
    return {"allowed": allowed, "checks": checks, "first": first, "last": last}


def test_four_processes_two_limits_all_or_nothing_within_the_bound(region, children):
    t = region.ratelimit
    a, b, _ = _keys_around(t)
    start = time.monotonic_ns() + 200_000_000
    end = start + S
    pids = [children.fork(_hammer_pair, region, [a, b], start, end) for _ in range(4)]
    res = [children.result(p) for p in pids]
    allowed = sum(x["allowed"] for x in res)
    assert all(x["checks"] > x["allowed"] for x in res)
    elapsed = max(x["last"] for x in res) - min(x["first"] for x in res)
    want = 100 + 2000.0 * elapsed / 1e9
    assert want - 1 - 2000.0 * 0.010 <= allowed <= want + 1
    # all or nothing: the generous limit was charged exactly once per allowed request
    now = time.monotonic_ns()
    assert 10**6 - allowed <= t.check(b, 1.0, 10**6, now, dry=True)[1] <= 10**6 - allowed + 2
