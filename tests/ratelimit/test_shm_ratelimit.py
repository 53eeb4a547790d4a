"""Rate-limit table, one process, hand-advanced clock: GCRA exactness, all-or-nothing,
fingerprints, reclaim and eviction, a million keys in fixed memory."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.shm import Region
from fastgw.shm.ratelimit import BUCKET, admit, pair_gate, spec

S = 1_000_000_000          # ns per second
T0 = 1_000 * S             # a clock far from 0 (0 marks an empty slot)


@pytest.fixture
def region():
    r = Region.create(2, metrics_series=64, table_slots=1024, health_slots=8)
    yield r
    r.close()


def drain(table, key, rate, burst, now):
    n = 0
    while table.check(key, rate, burst, now)[0]:
        n += 1
    return n


def test_burst_then_refill_exact(region):
    t = region.ratelimit
    # 10/s, burst 5: five at once, the sixth waits 100 ms
    got = [t.check(b"k", 10, 5, T0) for _ in range(6)]
    assert [g[0] for g in got] == [True] * 5 + [False]
    assert [g[1] for g in got] == [4, 3, 2, 1, 0, 0]
    assert got[0][2] == pytest.approx(0.1) and got[4][2] == pytest.approx(0.5)
    assert got[5][3] == pytest.approx(0.1)
    # 99.999999 ms later: still nothing; at 100 ms: exactly one
    assert not t.check(b"k", 10, 5, T0 + S // 10 - 1)[0]
    assert drain(t, b"k", 10, 5, T0 + S // 10) == 1
    # 1 s later: exactly rate * 1 s = 10 more... capped at the burst of 5
    assert drain(t, b"k", 10, 5, T0 + S // 10 + S) == 5
    # steady: one per 100 ms for 3 s
    now, allowed = T0 + S // 10 + S, 0
    for _ in range(30):
        now += S // 10
        allowed += drain(t, b"k", 10, 5, now)
    assert allowed == 30


def test_denied_consumes_nothing_and_dry_is_a_peek(region):
    t = region.ratelimit
    assert t.check(b"k", 1, 3, T0, cost=2)[:2] == (True, 1)
    assert t.check(b"k", 1, 3, T0, cost=2)[:2] == (False, 1)      # needs 2, has 1
    assert t.check(b"k", 1, 3, T0, dry=True)[:2] == (True, 0)     # peek: would pass
    assert t.check(b"k", 1, 3, T0)[:2] == (True, 0)               # still there
    assert t.check(b"new", 1, 3, T0, dry=True)[:2] == (True, 2)
    assert t.occupancy(T0) == 1                                    # dry did not insert
    assert t.check(b"big", 100, 3, T0, cost=4)[0] is False         # cost > burst: never


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([1, 2, 4, 5, 10, 20, 50, 100, 1000]),     # 1e9 / rate is exact
    burst=st.integers(1, 20),
    ops=st.lists(st.tuples(st.integers(0, 1500), st.integers(1, 3)), min_size=1, max_size=60),
)
def test_gcra_equals_token_bucket(rate, burst, ops):
    """Exact to the request: the table agrees with a token bucket in exact arithmetic."""
    with Region.create(1, metrics_series=8, table_slots=8, health_slots=1) as r:
        t, now = r.ratelimit, T0
        tokens, last = Fraction(burst), now
        for dt_ms, cost in ops:
            now += dt_ms * 1_000_000
            tokens = min(Fraction(burst), tokens + Fraction(now - last, S) * rate)
            last = now
            ok, remaining, reset_after, retry_after = t.check(b"k", rate, burst, now, cost)
            assert ok == (tokens >= cost)
            if ok:
                tokens -= cost
                assert retry_after == 0.0
            else:
                assert retry_after == pytest.approx(float((cost - tokens) / rate))
            assert remaining == int(tokens)
            assert reset_after == pytest.approx(float((burst - tokens) / rate))


def test_check_all_is_all_or_nothing(region):
    t = region.ratelimit
    limits = [(b"ip:1", 10, 10), (b"user:1", 10, 2), (b"route:a", 10, 10)]
    assert t.check_all(limits, T0)[0] and t.check_all(limits, T0)[0]
    ok, ds = t.check_all(limits, T0)
    assert not ok and [d[0] for d in ds] == [True, False, True]
    assert ds[1][3] == pytest.approx(0.1)
    # the denied set consumed nothing from the limits that would have passed
    assert t.check(b"ip:1", 10, 10, T0, dry=True)[1] == 7
    assert t.check(b"route:a", 10, 10, T0, dry=True)[1] == 7
    # 100 ms later user:1 has one token again: the set passes once
    assert t.check_all(limits, T0 + S // 10)[0]
    assert not t.check_all(limits, T0 + S // 10)[0]
    assert t.check(b"ip:1", 10, 10, T0 + S // 10, dry=True)[1] == 7  # 8 - 1 (refilled one)
    # the same key twice in one set sees its own first consumption
    ok, ds = t.check_all([(b"dup", 1, 1), (b"dup", 1, 1)], T0)
    assert not ok and t.check(b"dup", 1, 1, T0, dry=True)[0]
    assert t.check_all([(b"dup2", 1, 2), (b"dup2", 1, 2)], T0)[0]
    assert not t.check(b"dup2", 1, 2, T0)[0]
    assert t.check_all([], T0) == (True, [])


@settings(max_examples=150, deadline=None)
@given(
    rates=st.tuples(st.sampled_from([1, 3, 10, 1000]), st.sampled_from([1, 7, 10, 1000])),
    bursts=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    ops=st.lists(st.integers(0, 1200), min_size=1, max_size=40),
)
def test_two_limit_path_agrees_with_admit(rates, bursts, ops):
    """``take_pair``'s straight path (both keys present: the GCRA test inlined as ``tat -
    now <= tau - T``) answers and writes what the general pass does with ``admit``."""
    specs = tuple(spec(r, b) for r, b in zip(rates, bursts))
    gate = pair_gate(specs)
    with Region.create(1, metrics_series=8, table_slots=64, health_slots=1) as r1, \
            Region.create(1, metrics_series=8, table_slots=64, health_slots=1) as r2:
        fast, slow = r1.ratelimit, r2.ratelimit
        now = T0
        for k in (b"a", b"b"):                      # both keys present: the fast path's case
            fast.take_all((k,), specs[:1], now)
            slow.take_all((k,), specs[:1], now)
        pair = fast.pair(fast.slot(b"a"), fast.slot(b"b"))
        for dt_ms in ops:
            now += dt_ms * 1_000_000
            got = fast.take_pair(pair, gate, now)
            want = slow.take_all((b"a", b"b"), specs, now)
            assert (got is None) == want[0] and (got is None or got == want[1])
            assert want[0] == all(admit(tat, T, tau, now) for tat, (T, tau) in zip(want[1], specs))
            assert [fast.peek(k) for k in (b"a", b"b")] == [slow.peek(k) for k in (b"a", b"b")]


@pytest.mark.parametrize("slots", [8, 64, 1 << 14], ids=["one-stripe", "few", "many"])
def test_take_pair_agrees_with_general_pass(slots):
    """``take_pair`` (a memoised ``pair()`` record: new keys go to the general pass, then
    the straight path) answers and writes what ``take_all`` does with specs as a list
    (the general pass), whether the two keys share a stripe lock or not."""
    specs = (spec(10, 3), spec(1, 2))
    with Region.create(1, metrics_series=8, table_slots=slots, health_slots=1) as r1, \
            Region.create(1, metrics_series=8, table_slots=slots, health_slots=1) as r2:
        fast, slow = r1.ratelimit, r2.ratelimit
        s0, s1 = fast.slot(b"user:a"), fast.slot(b"route:x")
        pair = fast.pair(s0, s1)
        assert (pair[2] is None) == (s0.stripe == s1.stripe)
        assert fast.pair(s0, s0) is None                    # one key twice: the general pass
        gate = pair_gate(specs)
        now = T0
        for step in range(12):
            now += (S // 20) * (step % 3)
            got = fast.take_pair(pair, gate, now)
            ok, tats = slow.take_all((b"user:a", b"route:x"), list(specs), now)
            assert got == (None if ok else tats)
            assert [fast.peek(k) for k in (b"user:a", b"route:x")] == [slow.peek(k) for k in (b"user:a", b"route:x")]
        assert fast.take_pair(pair, gate, now) is not None      # both drained by now
        assert fast.take_slots([s0], specs[:1], now + 10 * S)[0]     # (every lock was let go)


def _same_hash(key: bytes) -> bytes:
    """Every key has the same 64-bit hash; only the fingerprint differs."""
    return b"\x07" * 8 + key.rjust(8, b"#")[-8:]


def test_fingerprint_tells_colliding_keys_apart():
    with Region.create(1, metrics_series=8, table_slots=64, health_slots=1, digest=_same_hash) as r:
        t = r.ratelimit
        assert drain(t, b"alice", 1, 3, T0) == 3
        assert drain(t, b"bob", 1, 3, T0) == 3           # same hash, own state
        assert drain(t, b"alice", 1, 3, T0) == 0
        # fill the bucket with live keys: k0 has the oldest TAT of the eight
        for i in range(BUCKET - 2):
            assert t.check(b"k%d" % i, 1, 3, T0 + 1 + i)[1] == 2
        assert t.evicted == 0
        assert t.check(b"mallory", 1, 3, T0 + 100)[0]        # the ninth: evicts k0, counted
        assert t.evicted == 1
        assert t.check(b"k0", 1, 3, T0 + 100, dry=True)[1] == 2      # restarted full
        assert t.check(b"k1", 1, 3, T0 + 100, dry=True)[1] == 1      # kept its state
        assert drain(t, b"alice", 1, 3, T0 + 100) == 0
        assert drain(t, b"bob", 1, 3, T0 + 100) == 0


def test_a_new_key_never_takes_the_cell_of_a_key_of_its_own_request():
    with Region.create(1, metrics_series=8, table_slots=BUCKET, health_slots=1) as r:
        t = r.ratelimit                                 # one bucket, full of live keys
        for i in range(BUCKET):
            assert t.check(b"k%d" % i, 1, 3, T0 + i)[1] == 2
        # k0 is the oldest, but this request charges it: the new key evicts k1 instead
        ok, ds = t.check_all([(b"new", 1, 3), (b"k0", 1, 3)], T0 + 100)
        assert ok and [d[1] for d in ds] == [2, 1] and t.evicted == 1
        assert t.check(b"k0", 1, 3, T0 + 100, dry=True)[:2] == (True, 0)   # a peek: after one more
        assert t.check(b"new", 1, 3, T0 + 100, dry=True)[:2] == (True, 1)
        assert t.check(b"k1", 1, 3, T0 + 100, dry=True)[:2] == (True, 2)   # restarted full
        # refused by its second limit: the first one's new TAT is put back
        assert t.check_all([(b"k0", 1, 3)], T0 + 100)[0]                    # k0 now empty
        ok, ds = t.check_all([(b"k3", 1, 3), (b"k0", 1, 3)], T0 + 100)
        assert not ok and [d[0] for d in ds] == [True, False]
        assert t.check(b"k3", 1, 3, T0 + 100, dry=True)[:2] == (True, 1)
        assert t.check(b"k0", 1, 3, T0 + 100, dry=True)[0] is False


def test_stale_entries_are_reclaimed_not_evicted():
    with Region.create(1, metrics_series=8, table_slots=BUCKET, health_slots=1) as r:
        t = r.ratelimit                                 # one bucket
        for i in range(BUCKET):
            assert t.check(b"k%d" % i, 10, 1, T0)[0]
        assert t.inserted == BUCKET and t.occupancy(T0) == BUCKET
        later = T0 + S // 10                            # every bucket full again
        assert t.occupancy(later) == 0
        assert t.check(b"new", 10, 1, later)[0]
        assert (t.reclaimed, t.evicted) == (1, 0)


def test_a_match_across_two_tags_is_not_a_match():
    tags = {b"a": b"h" * 8 + b"ABCDEFGH", b"b": b"IJKLMNOP" + b"q" * 8, b"x": b"ABCDEFGH" + b"IJKLMNOP"}
    with Region.create(1, metrics_series=8, table_slots=BUCKET, health_slots=1, digest=tags.__getitem__) as r:
        t = r.ratelimit
        assert drain(t, b"a", 1, 2, T0) == 2
        assert drain(t, b"b", 1, 2, T0) == 2                 # b lands right after a
        assert drain(t, b"x", 1, 2, T0) == 2                 # x straddles a|b but is new


# CPU-bound on a simulated clock, nothing timed: it runs beside other tests (a timing
# mark would idle the other worker for its whole run).  The timeout is a hang guard:
# ~30 s on a quiet 2-core box, up to ~4 min seen on a heavily shared one
@pytest.mark.timeout(600)
def test_a_million_keys_fixed_memory_active_keys_exact():
    """Flood 1,000,000 distinct keys through a 65,536-slot table while four real users
    stay limited: the table never grows, old keys are evicted, the users stay exact."""

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    with Region.create(1, metrics_series=8, table_slots=65536, health_slots=1) as r:
        t, size = r.ratelimit, r.size
        victims = [b"user:%d" % i for i in range(4)]
        v_rate, v_burst = 10, 20                        # drained: TAT ~ now + 2 s
        f_rate, f_burst = 10, 5                         # one hit: TAT = now + 100 ms
        got = dict.fromkeys(victims, 0)
        now, check = T0, t.check
        rss0 = rss()
        for i in range(1_000_000):
            now += 1_000                                # 1 us per new key: 100k refilling
            check(b"ip:%d" % i, f_rate, f_burst, now)
            if i % 1000 == 999:                         # every simulated ms
                for v in victims:
                    got[v] += drain(t, v, v_rate, v_burst, now)
        elapsed = (now - T0 - 999_000) / S              # first to last victim check
        assert r.size == size
        assert rss() - rss0 < 32 << 20
        assert t.evicted > 100_000 and t.occupancy(now) <= 65536
        # exact: the burst plus one token per 100 ms, for each of the four users
        want = v_burst + int(elapsed * v_rate)
        assert list(got.values()) == [want] * 4, (got, want, elapsed)


def test_take_pair_follows_a_key_that_moves():
    """``take_pair`` looks first where each key was last found: a key evicted and placed
    again elsewhere in its bucket is still found (its hint updated), and the answers are
    ``peek``'s."""
    with Region.create(1, metrics_series=8, table_slots=8, health_slots=1, digest=_same_hash) as r:
        t = r.ratelimit
        pair = t.pair(t.slot(b"alice"), t.slot(b"bob"))
        gate = pair_gate((spec(1, 3), spec(1, 3)))
        assert t.take_pair(pair, gate, T0) is None          # both new: the general pass
        assert t.take_pair(pair, gate, T0) is None          # both found: the hints set
        assert t.check(b"bob", 1, 3, T0)[0]
        assert t.peek(b"alice") == T0 + 2 * S
        hint = list(pair[6])
        # six live keys fill the bucket, then a ninth evicts the oldest: alice
        for i in range(BUCKET - 2):
            assert t.check(b"k%d" % i, 1, 3, T0 + S + 1 + i)[0]
        assert t.check(b"zed", 1, 3, T0 + S + 10)[0] and t.evicted == 1
        assert t.peek(b"alice") == 0
        assert t.check(b"alice", 1, 3, T0 + 10 * S)[0]      # back, in the stalest slot (k0's)
        assert t.peek(b"alice") == T0 + 11 * S and t.peek(b"bob") == T0 + 3 * S
        assert t.take_pair(pair, gate, T0 + 10 * S) is None
        assert t.peek(b"alice") == T0 + 12 * S and t.peek(b"bob") == T0 + 11 * S
        assert pair[6] != hint and pair[6][3:] == hint[3:]   # alice's hint moved, bob's did not


def test_take_marked_charges_like_check_and_raises_its_stripe_mark(region):
    """A marked key is decided as ``check`` decides it; its stripe's mark is the largest TAT
    it was given (a refusal leaves it), other stripes' marks stay 0; a peek of a key whose
    stripe mark is not after now would say "passes" (the guard's shortcut)."""
    t = region.ratelimit
    s = t.slot(b"af\0i=192.0.2.1")
    sp = spec(2, 3)                                 # 2/s, burst 3
    cell = t.mark_cell(s)
    assert t.cells[cell] == 0
    got = [t.take_marked(s, sp, T0) for _ in range(4)]
    assert [ok for ok, _ in got] == [True, True, True, False]
    assert [tat for _, tat in got] == [0, T0 + S // 2, T0 + S, T0 + 3 * S // 2]
    assert t.cells[cell] == t.peek_slot(s) == T0 + 3 * S // 2     # the last TAT given
    assert t.take_marked(s, sp, T0 + S // 2)[0]                   # refilled one
    assert t.cells[cell] == T0 + 2 * S
    # the same decisions as the general pass on a twin key
    for now in (T0, T0, T0, T0, T0 + S // 2):
        t.check(b"twin", 2, 3, now)
    assert t.peek(b"twin") == t.peek_slot(s)
    # no other stripe is marked
    marks = [t.cells[t.mark_cell(s._replace(stripe=i))] for i in range(min(t.buckets, 1024))]
    assert sum(1 for m in marks if m) == 1
    # once the mark is in the past, every marked key of the stripe has a full bucket
    later = t.cells[cell] + 1
    assert admit(t.peek_slot(s), sp.T, sp.tau, later)
