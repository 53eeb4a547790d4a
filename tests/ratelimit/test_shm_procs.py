"""The region across real forked processes: the shared rate limit stays within its
documented bound from both sides, survives kill -9 (inside the critical section too, with
either kind of stripe lock), and every other part is visible across fork.  Every child is
bounded and reaped."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fastgw.shm import Region, locks
from fastgw.shm.health import HEALTHY, UNHEALTHY
from fastgw.shm.workers import READY

from tests.support.shm import (  # noqa: F401  (fixtures and helpers)
    BEAT_BIT, BURST, RATE, STALL_BIT, any_lock_region, bound, bounded_lock_region, children, hammer, held_elsewhere,
    overflow_while_all_stalled, region)

pytestmark = [pytest.mark.timing, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")]


def test_four_processes_share_one_limit_within_the_bound(region, children):
    start = time.monotonic_ns() + 200_000_000
    end = start + 1_500_000_000
    pids = [children.fork(hammer, region, b"route:hot", start, end) for _ in range(4)]
    res = [children.result(p) for p in pids]
    stamps = sorted(s for r in res for s in r["stamps"])
    assert all(r["checks"] > len(r["stamps"]) for r in res)     # every process was denied too
    # upper side, exact: from the first to the last allowed request
    assert len(stamps) <= BURST + RATE * (stamps[-1] - stamps[0]) / 1e9 + 1
    # both sides over the whole hammering window
    elapsed = max(r["last"] for r in res) - min(r["first"] for r in res)
    low, want, high = bound(elapsed)
    lost = overflow_while_all_stalled([r["stalls"] for r in res], max(r["last"] for r in res))
    print(f"\n4 procs: allowed {len(stamps)}, expected {want:.1f} (bound {low:.1f}..{high:.1f}),"
          f" checks {sum(r['checks'] for r in res)}, overflowed while all were off CPU {lost:.1f}")
    assert low - lost <= len(stamps) <= high


def _holder(children, region: Region, key: bytes, name: bool = True) -> int:
    """A child inside ``key``'s critical section (``_hold_stripe_forever``), once it is
    there: its pid."""
    return children.fork_until(_hold_stripe_forever, region, key, name)


def _hold_stripe_forever(region: Region, key: bytes, name: bool, w: int) -> None:
    """Enter check() and stop inside its critical section, right after taking the lock
    and naming itself in its owner cell as the table does (the test hook: the table's
    take function, wrapped in this child only); ``name=False`` stops before naming."""
    t = region.ratelimit
    real = t._grab

    def grab(h, block):
        got = real(h, block)
        if name:
            t.cells[t._owner0 + 8 * t._mutex.index(h)] = locks.ME
        os.write(w, b"L")
        time.sleep(60)
        return got

    t._grab = grab
    t.check(key, RATE, BURST, time.monotonic_ns())


def test_kill_9_inside_the_critical_section_releases_the_stripe(any_lock_region, children):
    region = any_lock_region
    t = region.ratelimit
    key = b"ip:10.0.0.1"
    stripe = t.slot(key).stripe
    assert t.check(key, RATE, BURST, time.monotonic_ns())[:2] == (True, BURST - 1)
    pid = _holder(children, region, key)
    assert held_elsewhere(t, stripe)              # the child holds it
    status = children.kill(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    t0 = time.monotonic()
    ok, remaining, _, _ = t.check(key, RATE, BURST, time.monotonic_ns())
    assert time.monotonic() - t0 < locks.WAIT / 2      # at once: not after the bounded wait
    # the table is intact: the key kept its state (one request before, this one now;
    # the killed child had written nothing), and the lock works for everyone again
    assert ok and BURST - 2 <= remaining <= BURST - 1
    assert t.recovered == (0 if t.lock_kind == "fcntl" else 1)
    assert t.lock_timeouts == 0
    assert not held_elsewhere(t, stripe)
    pid = children.fork(lambda: t.check(key, RATE, BURST, time.monotonic_ns())[0])
    assert children.result(pid) is True


def test_a_semaphore_taken_by_a_holder_killed_before_naming_itself_is_taken_over_after_the_wait(region, children):
    """The one moment a semaphore's holder is unknown (between taking it and writing its
    pid, a few bytecodes): a kill -9 there costs the next locker the bounded wait, then
    the lock is taken over, charged as usual, and works for everyone again."""
    t = region.ratelimit
    if t.lock_kind != "semaphore":
        pytest.skip("semaphores need glibc")
    key = b"ip:10.0.0.2"
    stripe = t.slot(key).stripe
    assert t.check(key, RATE, BURST, time.monotonic_ns())[:2] == (True, BURST - 1)
    children.kill(_holder(children, region, key, name=False))
    assert held_elsewhere(t, stripe)              # taken, and nobody named in it
    t0 = time.monotonic()
    ok, remaining, _, _ = t.check(key, RATE, BURST, time.monotonic_ns())
    assert locks.WAIT * 0.9 <= time.monotonic() - t0 < locks.WAIT + 1.0
    assert ok and BURST - 2 <= remaining <= BURST - 1
    assert t.recovered == 1 and t.lock_timeouts == 0
    assert not held_elsewhere(t, stripe)
    pid = children.fork(lambda: t.check(key, RATE, BURST, time.monotonic_ns())[0])
    assert children.result(pid) is True


def test_a_stripe_held_by_a_stopped_holder_bounds_the_wait_and_charges_nothing(bounded_lock_region, children):
    """The safety net (``fastgw.shm.locks.WAIT``): a holder that neither releases nor
    dies (stopped inside the critical section) delays a check by the bounded wait, never
    hangs it; that check is decided on the current state without charging it, and
    counted.  Once the holder is gone the stripe works again."""
    t = bounded_lock_region.ratelimit
    key = b"user:stuck"
    assert t.check(key, RATE, BURST, time.monotonic_ns())[:2] == (True, BURST - 1)
    pid = _holder(children, bounded_lock_region, key)
    os.kill(pid, signal.SIGSTOP)
    before, tat = t._locks.timeouts, t.peek(key)
    t0 = time.monotonic()
    ok = t.check(key, RATE, BURST, time.monotonic_ns())[0]
    waited = time.monotonic() - t0
    assert locks.WAIT * 0.9 <= waited < locks.WAIT + 1.0
    assert ok                                       # decided on the state (the bucket refilled)
    assert t.peek(key) == tat and t.lock_timeouts == before + 1     # charged nothing, counted
    assert t.recovered == 0                         # a stopped holder still runs: not taken over
    children.kill(pid)                              # SIGKILL ends a stopped process too
    assert t.check(key, RATE, BURST, time.monotonic_ns())[0]
    assert t.peek(key) > tat and t.recovered == 1   # charged again, the stripe taken over


def test_kill_9_mid_run_the_others_carry_on_within_the_bound(region, children):
    start = time.monotonic_ns() + 200_000_000
    end = start + 1_600_000_000
    r, w = os.pipe()                                # the doomed child's live report
    doomed = children.fork(hammer, region, b"route:hot", start, end, w)
    os.close(w)
    pids = [children.fork(hammer, region, b"route:hot", start, end) for _ in range(3)]
    time.sleep((start - time.monotonic_ns()) / 1e9 + 0.6)
    children.kill(doomed)
    # (read after kill() returned, the child reaped: a clock read just before os.kill
    # raced the child, which could still stamp a request in the microseconds between)
    killed_at = time.monotonic_ns()
    res = [children.result(p) for p in pids]
    raw = b""
    while chunk := os.read(r, 1 << 16):
        raw += chunk
    os.close(r)
    records = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    doomed_first, *doomed_stamps = [v for v in records if not v & (STALL_BIT | BEAT_BIT)]
    marked = [v ^ STALL_BIT for v in records if v & STALL_BIT]
    # the killed one stalls from its last sign of life on (at most 256 checks before it
    # was killed: its last beat, stall or allowed request)
    last_seen = max(v & ~(STALL_BIT | BEAT_BIT) for v in records)
    doomed_stalls = list(zip(marked[::2], marked[1::2])) + [(last_seen, end)]
    assert doomed_stamps and doomed_stamps[-1] < killed_at
    # the survivors carried on to the end, and were still allowed after the kill
    assert all(r["last"] >= end - 300_000_000 for r in res)
    assert all(any(s > killed_at + 100_000_000 for s in r["stamps"]) for r in res)
    # the whole run, kill included, within the bound from both sides (the doomed child
    # may have been allowed one request that it had no time to report)
    stamps = sorted(doomed_stamps + [s for r in res for s in r["stamps"]])
    assert len(stamps) <= BURST + RATE * (stamps[-1] - stamps[0]) / 1e9 + 1
    elapsed = max(r["last"] for r in res) - min([doomed_first] + [r["first"] for r in res])
    low, want, high = bound(elapsed)
    lost = overflow_while_all_stalled([doomed_stalls] + [r["stalls"] for r in res], max(r["last"] for r in res))
    print(f"\nkill -9 mid-run: allowed {len(stamps)} ({len(doomed_stamps)} by the killed one),"
          f" expected {want:.1f} (bound {low:.1f}..{high:.1f}), overflowed while all were off CPU {lost:.1f}")
    assert low - 1 - lost <= len(stamps) <= high


def _worker_life(region: Region, slot: int, n: int) -> dict:
    ws = region.workers.slot(slot)
    ws.boot(generation=region.broadcast.config_generation)
    ws.set_state(READY)
    m = region.metrics.writer(slot)
    req = m.counter('fastgw_http_requests_total{route="a",code="200"}')
    lat = m.histogram('fastgw_http_request_duration_seconds{route="a"}', 3)
    mine = m.counter(f'fastgw_worker_only_total{{slot="{slot}"}}')
    inflight = m.gauge("fastgw_http_requests_in_flight")
    for i in range(n):
        ws.served()
        m.q[req] += 1
        m.f[lat] += 0.25
        m.q[lat + 1 + i % 3] += 1
    m.q[mine] += 7
    m.i[inflight] += 2                              # still "in flight" when it dies
    ws.heartbeat()
    return {"pid": os.getpid(), "health": region.health.state(3),
            "purge": region.broadcast.bump_purge_generation() if slot == 0 else None}


def test_parts_are_shared_across_fork_and_fold_keeps_totals_monotonic(region, children):
    region.broadcast.set_config_generation(5)
    region.health.set(3, UNHEALTHY)
    pids = [children.fork(_worker_life, region, slot, 100 * (slot + 1)) for slot in range(2)]
    res = [children.result(p) for p in pids]
    assert [r["health"] for r in res] == [UNHEALTHY, UNHEALTHY]
    assert region.broadcast.purge_generation == 1
    info = [region.workers.read(i) for i in range(2)]
    assert [(w.pid, w.generation, w.state, w.requests) for w in info] == [
        (res[0]["pid"], 5, READY, 100), (res[1]["pid"], 5, READY, 200)]
    before = region.metrics.snapshot()
    assert before['fastgw_http_requests_total{route="a",code="200"}'] == 300
    assert before["fastgw_http_requests_in_flight"] == 4
    hist = before['fastgw_http_request_duration_seconds{route="a"}']
    assert hist.count == 300 and hist.sum == pytest.approx(75.0)
    # both workers are reaped: fold them, start a replacement in slot 0
    region.fold_dead(0)
    region.fold_dead(1)
    after = region.metrics.snapshot()
    assert region.workers.total_requests() == 300 and region.workers.retired_workers == 2
    assert "fastgw_http_requests_in_flight" not in after       # gauges are not folded
    for key, v in before.items():
        if key != "fastgw_http_requests_in_flight":
            assert after[key] == v, key
    pid = children.fork(_worker_life, region, 0, 10)
    children.result(pid)
    final = region.metrics.snapshot()
    assert final['fastgw_http_requests_total{route="a",code="200"}'] == 310
    assert final['fastgw_worker_only_total{slot="0"}'] == 14
    assert region.workers.total_requests() == 310
    region.health.set(3, HEALTHY)
    assert region.health.generation == 2
