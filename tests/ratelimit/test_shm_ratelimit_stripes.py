"""Several limits per request across real forked processes (``RateTable.take_all``): the
stripe locks of a request are taken in order, a stripe held by another process is waited
for and a stripe nobody of the request needs does not block it, a process killed half-way
through a multi-limit update leaves a usable table, and all-or-nothing stays exact under
contention."""

from __future__ import annotations

import os
import time

import pytest

from fastgw.shm import Region
from fastgw.shm.ratelimit import decisions, spec

from tests.support.shm import (  # noqa: F401  (fixtures and helpers)
    BURST, ENV, RATE, STALL_NS, any_lock_region, children, give_stripe, held_elsewhere, overflow_while_all_stalled,
    region, take_stripe)

pytestmark = [pytest.mark.timing, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")]

S = 1_000_000_000


def _keys(t, n: int = 3) -> list[bytes]:
    """``n`` keys in ``n`` different stripes."""
    out, seen = [], set()
    for i in range(10_000):
        k = b"k:%d" % i
        s = t.slot(k).stripe
        if s not in seen:
            seen.add(s)
            out.append(k)
            if len(out) == n:
                return out
    raise AssertionError("not enough stripes")


def _hold(region: Region, key: bytes, seconds: float, w: int) -> None:
    """Hold ``key``'s stripe lock for ``seconds``, then release it."""
    t = region.ratelimit
    take_stripe(t, t.slot(key).stripe)
    os.write(w, b"L")
    time.sleep(seconds)
    give_stripe(t, t.slot(key).stripe)


def _held(children, region, key: bytes, seconds: float) -> int:
    return children.fork_until(_hold, region, key, seconds)


def test_a_stripe_the_request_does_not_need_does_not_block_it(region, children):
    t = region.ratelimit
    a, b, c = _keys(t)
    pid = _held(children, region, c, 30.0)
    t0 = time.monotonic()
    now = time.monotonic_ns()
    assert t.check_all([(a, 1, 2), (b, 1, 2)], now)[0]
    assert time.monotonic() - t0 < 1.0
    assert t.check(a, 1, 2, now, dry=True)[1] == 0 and t.check(b, 1, 2, now, dry=True)[1] == 0
    children.kill(pid)


def test_a_stripe_of_the_request_held_elsewhere_is_waited_for(any_lock_region, children):
    region = any_lock_region
    t = region.ratelimit
    a, b, _ = _keys(t)
    pid = _held(children, region, b, 0.3)
    t0 = time.monotonic()
    assert t.check_all([(a, 1, 2), (b, 1, 2)], time.monotonic_ns())[0]
    assert time.monotonic() - t0 > 0.1
    children.result(pid)
    # and everything was released: no stripe of the request is held any more
    assert not held_elsewhere(t, t.slot(a).stripe) and not held_elsewhere(t, t.slot(b).stripe)


def _pause_after_first(region: Region, keys: list[bytes], w: int) -> None:
    """``take_all`` over ``keys`` that stops inside the critical section after the first
    limit's new TAT is written (the test hook: the specs, iterated under the locks)."""
    def specs():
        yield spec(1.0, 10)
        os.write(w, b"L")
        time.sleep(60)
        yield spec(1.0, 10)

    region.ratelimit.take_all(keys, specs(), time.monotonic_ns())


def test_kill_9_half_way_through_a_multi_limit_update(any_lock_region, children):
    """The worst moment: one limit of a request charged, the other not yet, locks held."""
    region = any_lock_region
    t = region.ratelimit
    a, b, c = _keys(t)
    now = time.monotonic_ns()
    assert t.check_all([(a, 1.0, 10), (b, 1.0, 10), (c, 1.0, 10)], now)[0]     # one request each
    pid = children.fork_until(_pause_after_first, region, [a, b])
    assert held_elsewhere(t, t.slot(a).stripe) and held_elsewhere(t, t.slot(b).stripe)
    children.kill(pid)
    # the others proceed at once, on both stripes
    t0 = time.monotonic()
    ok, ds = t.check_all([(a, 1.0, 10), (b, 1.0, 10)], now)
    assert ok and time.monotonic() - t0 < 0.5
    # the table is intact: the killed request's first charge stayed (a charge made a
    # little early, never a lost or foreign state), the second was never made, the
    # untouched key is as it was, and new keys still go in
    assert [d[1] for d in ds] == [7, 8]
    assert t.check(c, 1.0, 10, now, dry=True)[1] == 8       # 9 left: 8 after a request
    assert t.check(b"k:new", 1.0, 10, now)[:2] == (True, 9)
    if t.lock_kind != "fcntl":                      # (the kernel drops fcntl locks itself)
        assert t.recovered == 2                     # both stripes taken over
    assert not held_elsewhere(t, t.slot(a).stripe) and not held_elsewhere(t, t.slot(b).stripe)


def _hammer_pair(region: Region, keys: list[bytes], start_ns: int, end_ns: int) -> dict:
    t, clock = region.ratelimit, time.monotonic_ns
    specs = [spec(RATE, BURST), spec(1.0, 10**6)]        # the first binds, the second counts
    while clock() < start_ns:
        time.sleep(0.0005)
    allowed = checks = 0
    first = last = 0
    stalls = []
    while True:
        now = clock()
        if last and now - last >= STALL_NS:         # (a stall at the end counts too)
            stalls.append((last, now))
        if now >= end_ns:
            break
        first = first or now
        ok, tats = t.take_all(keys, specs, now)
        if ok:
            allowed += 1
            assert all(d[0] for d in decisions(tats, specs, now))
        checks += 1
        last = now
    return {"allowed": allowed, "checks": checks, "first": first, "last": last, "stalls": stalls}


def test_four_processes_two_limits_all_or_nothing_within_the_bound(region, children):
    t = region.ratelimit
    a, b, _ = _keys(t)
    start = time.monotonic_ns() + 200_000_000
    end = start + S
    pids = [children.fork(_hammer_pair, region, [a, b], start, end) for _ in range(4)]
    res = [children.result(p) for p in pids]
    allowed = sum(x["allowed"] for x in res)
    assert all(x["checks"] > x["allowed"] for x in res)
    elapsed = max(x["last"] for x in res) - min(x["first"] for x in res)
    want = BURST + RATE * elapsed / 1e9
    lost = overflow_while_all_stalled([x["stalls"] for x in res], max(x["last"] for x in res))
    assert want - 1 - RATE * 0.010 - lost <= allowed <= want + 1
    # all or nothing: the generous limit was charged exactly once per allowed request
    now = time.monotonic_ns()
    assert 10**6 - allowed <= t.check(b, 1.0, 10**6, now, dry=True)[1] <= 10**6 - allowed + 2


@pytest.mark.parametrize("creator", list(ENV))
def test_every_process_uses_the_creators_kind_of_lock(creator, monkeypatch):
    """The kind is recorded in the region's header: a process that maps it with another
    environment still excludes the creator's processes (same lock, same bytes)."""
    monkeypatch.setenv("FASTGW_SHM_LOCKS", ENV[creator])
    with Region.create(2, metrics_series=64, table_slots=1024, health_slots=8) as r:
        assert r.ratelimit.lock_kind == creator
        monkeypatch.setenv("FASTGW_SHM_LOCKS", "mutex" if creator == "fcntl" else "fcntl")
        with Region.attach(os.dup(r.fd)) as other:
            assert other.ratelimit.lock_kind == creator
            now = time.monotonic_ns()
            assert other.ratelimit.check(b"k", 1.0, 2, now)[:2] == (True, 1)
            assert r.ratelimit.check(b"k", 1.0, 2, now)[:2] == (True, 0)
