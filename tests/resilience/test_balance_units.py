"""Load balancing without a gateway process (issue #20 item 1): each algorithm of
``fastgw.upstream.balance`` over plain instance objects and a ``down`` byte array as the
health table has it, plus the config errors of the new settings."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from fastgw.config import ConfigError, load_config_data
from fastgw.upstream import balance
from fastgw.upstream.balance import DRAINED, RAMP_FLOOR, Sticky, affinity_token, smooth_sequence
from tests.support.config import BASE, edit

SVC = "services.svg-parser"


class Inst:
    """What a balancer reads of an ``upstream.peer.Instance``."""

    __slots__ = ("service", "url", "weight", "slot", "eff", "requests", "done", "affinity", "name")

    def __init__(self, name: str, weight: int = 1, slot: int = 0) -> None:
        self.name = name
        self.service = "svc"
        self.url = f"http://{name}.internal:8080"
        self.weight = weight
        self.slot = slot
        self.eff = float(weight)
        self.requests = self.done = 0    # in flight: requests - done
        self.affinity = b""

    def __repr__(self) -> str:
        return self.name


def _up(cls):
    """``cls`` with a health table where every slot reads usable unless a test passes one."""
    def make(service, items, **kw):
        kw.setdefault("down", bytes(16))
        return cls(service, items, **kw)
    make.__name__ = cls.__name__
    return make


RoundRobin, Random, LeastRequest, RingHash, Maglev = map(_up, (
    balance.RoundRobin, balance.Random, balance.LeastRequest, balance.RingHash, balance.Maglev))


def insts(*weights):
    return [Inst("abcdefghijklmnop"[k], w, k) for k, w in enumerate(weights)]


class X:
    """The part of a request context the hashing balancers and Sticky read."""

    def __init__(self, headers=None, ip="10.0.0.1", user=None, path="/") -> None:
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.client_ip = ip
        self.user = user
        self.request = type("R", (), {"path": path})()

    def header(self, lname: bytes, default=None):
        return self.headers.get(lname, default)


def names(seq):
    return "".join(i.name for i in seq)


def runs(seq) -> int:
    best = cur = 1
    for a, b in zip(seq, seq[1:]):
        cur = cur + 1 if a is b else 1
        best = max(best, cur)
    return best


def test_identity_is_the_health_tables():
    from fastgw.resilience.identity import instance_key
    for svc, url in (("svc", "http://a:1"), ("svg-parser", "https://10.0.0.5:8443/base")):
        assert balance.instance_key(svc, url) == instance_key(svc, url)


# ---------------------------------------------------------------------- round robin
def test_smooth_round_robin_is_nginx_sequence():
    assert "".join("abc"[i] for i in smooth_sequence([5, 1, 1])) == "aabacaa"
    lb = RoundRobin("svc", insts(5, 1, 1))
    assert names(lb.pick(None) for _ in range(14)) == "aabacaa" * 2


@pytest.mark.parametrize("weights", [(5, 1, 1), (10, 3, 1), (7, 2), (3, 3, 3, 1), (100, 1, 1), (2, 9, 4, 4)])
def test_round_robin_runs_and_shares(weights):
    lb = RoundRobin("svc", insts(*weights))
    picks = [lb.pick(None) for _ in range(2000)]
    assert runs(picks) <= math.ceil(max(weights) / min(weights))
    counts = Counter(picks)
    for inst in lb.distinct:
        assert abs(counts[inst] / 2000 - inst.weight / sum(weights)) <= 0.02


def test_round_robin_weights_up_to_10000_are_kept():
    lb = RoundRobin("svc", insts(10_000, 1))
    assert lb.n == 10_001       # the whole period, not a cap at 100
    picks = Counter(lb.pick(None).name for _ in range(10_001))
    assert picks == {"a": 10_000, "b": 1}


def test_down_instance_skipped_drained_never_used_even_in_panic():
    a, b, c = insts(1, 1, 1)
    down = bytearray(3)
    lb = RoundRobin("svc", [a, b, c], down=down, panic=50.0)
    down[b.slot] = 1
    assert b not in {lb.pick(None) for _ in range(30)}
    down[a.slot] = 1                              # 1 of 3 usable: panic, all of them
    assert {lb.pick(None) for _ in range(30)} == {a, b, c}
    down[c.slot] = DRAINED                        # drained: not even in panic
    assert c not in {lb.pick(None) for _ in range(30)}
    down[a.slot] = down[b.slot] = DRAINED
    assert lb.pick(None) is None and lb.pick_other(()) is None


def test_spread_keeps_weights_among_the_usable():
    a, b, c = insts(3, 1, 5)
    down = bytearray(3)
    lb = RoundRobin("svc", [a, b, c], down=down, panic=0)
    down[c.slot] = 1
    counts = Counter(lb.pick(None) for _ in range(400))
    assert counts == {a: 300, b: 100}


def test_solo_is_the_single_instance_unless_drained():
    (a,) = insts(1)
    down = bytearray(1)
    lb = RoundRobin("svc", [a], down=down)
    assert lb.solo is a
    down[0] = 1                                   # unhealthy: still the one (panic)
    lb.tick()
    assert lb.solo is a and lb.pick(None) is a
    down[0] = DRAINED                             # drained: noticed on the tick, then none
    assert lb.pick(None) is None
    lb.tick()
    assert lb.solo is None
    down[0] = 0
    lb.tick()
    assert lb.solo is a
    lb.update(insts(1, 1))
    assert lb.solo is None


def test_pick_other_prefers_untried():
    a, b, c = insts(1, 1, 1)
    lb = RoundRobin("svc", [a, b, c])
    assert lb.pick_other((a, c)) is b
    assert lb.pick_other((a, b, c)) in (a, b, c)   # every one tried: still an answer


# ---------------------------------------------------------------------- random / least request
def test_random_shares():
    lb = Random("svc", insts(6, 3, 1))
    counts = Counter(lb.pick(None).name for _ in range(20_000))
    for name, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(counts[name] / 20_000 - share) <= 0.02


def test_least_request_prefers_the_less_loaded():
    a, b = insts(1, 1)
    lb = LeastRequest("svc", [a, b])
    a.requests, a.done = 15, 5                     # 10 in flight
    counts = Counter(lb.pick(None) for _ in range(2000))
    assert counts[b] > 0.7 * 2000
    a.requests = b.requests = a.done = b.done = 0  # idle: a weighted draw, even split
    counts = Counter(lb.pick(None) for _ in range(2000))
    assert abs(counts[a] / 2000 - 0.5) < 0.05


def test_least_request_weighs_active_by_weight():
    a, b = insts(4, 1)
    lb = LeastRequest("svc", [a, b])
    a.requests, b.requests = 4, 2                  # 4/4 < 2/1: the heavy one still wins
    pairs = [lb.pick(None) for _ in range(500)]
    assert Counter(pairs)[a] > Counter(pairs)[b]
    counts = Counter(LeastRequest("svc", insts(3, 1)).pick(None).name for _ in range(4000))
    assert abs(counts["a"] / 4000 - 0.75) <= 0.03  # idle: shares by weight


# ---------------------------------------------------------------------- consistent hashing
KEYS = [f"user-{k}".encode() for k in range(10_000)]
REQS = [X({b"x-user-id": k}) for k in KEYS]


def mapping(lb):
    pick = lb.pick
    return [pick(x).name for x in REQS]


@pytest.mark.parametrize("cls", [RingHash, Maglev])
def test_hash_same_key_same_instance_and_identical_across_builds(cls):
    key = ("header", "x-user-id")
    one = cls("svc", insts(1, 1, 1, 1, 1), key=key)
    two = cls("svc", list(reversed(insts(1, 1, 1, 1, 1))), key=key)   # another worker, other order
    m1, m2 = mapping(one), mapping(two)
    assert m1 == m2 == mapping(one)
    shares = Counter(m1)
    assert len(shares) == 5 and min(shares.values()) > 10_000 / 5 * 0.6


@pytest.mark.parametrize("cls", [RingHash, Maglev])
@pytest.mark.parametrize("n", [3, 8])
def test_hash_removing_one_of_n_moves_about_one_nth(cls, n):
    key = ("header", "x-user-id")
    full = insts(*([1] * n))
    before = mapping(cls("svc", full, key=key))
    after = mapping(cls("svc", full[:-1], key=key))
    moved = sum(1 for x, y in zip(before, after) if x != y) / len(KEYS)
    gone = before.count(full[-1].name) / len(KEYS)
    assert moved < 1.5 / n
    assert moved >= gone                           # (at least the removed one's keys)
    # the same with update() on a live balancer (discovery)
    lb = cls("svc", full, key=key)
    lb.update(full[:-1])
    assert mapping(lb) == after


@pytest.mark.parametrize("cls", [RingHash, Maglev])
def test_hash_unusable_instance_passes_its_keys_on(cls):
    group = insts(1, 1, 1, 1)
    down = bytearray(4)
    lb = cls("svc", group, key=("header", "x-user-id"), down=down, panic=0)
    before = mapping(lb)
    down[1] = 1
    after = mapping(lb)
    assert "b" not in after
    assert all(x == y for x, y in zip(before, after) if x != "b")   # only b's keys move
    assert len({y for x, y in zip(before, after) if x == "b"}) > 1  # spread over the others


@pytest.mark.parametrize("cls", [RingHash, Maglev])
def test_hash_retry_walks_on_from_the_keys_point(cls):
    """A retry of a key goes to the same next instance in every worker (not round-robin):
    the first usable owner after the key's point that was not tried; a down one is passed
    over; no key: any untried one."""
    key = ("header", "x-user-id")
    group = insts(1, 1, 1, 1)
    down = bytearray(4)
    one = cls("svc", group, key=key, down=down, panic=0)
    two = cls("svc", list(reversed(group)), key=key, down=down, panic=0)   # another worker
    nexts = set()
    for x in REQS[:200]:
        first = one.pick(x)
        retry = one.pick_other((first,), x)
        assert retry is not first
        assert {one.pick_other((first,), x) for _ in range(4)} == {retry}    # not a rotation
        assert two.pick_other((first,), x) is retry
        third = one.pick_other((retry, first), x)
        assert third not in (first, retry)
        nexts.add((first.name, retry.name))
        if x is REQS[0]:
            down[retry.slot] = 1
            assert one.pick_other((first,), x) not in (first, retry)
            down[retry.slot] = 0
    assert len({r for _, r in nexts}) == 4                     # retries spread over all
    assert {one.pick_other((group[0],)) for _ in range(8)} == set(group[1:])   # no request: spread


def test_hash_keys_and_fallback():
    lb = RingHash("svc", insts(1, 1, 1), key=("cookie", "sid"))
    x = X({b"cookie": b"a=1; sid=abc; z=2"})
    assert lb.pick(x) is lb.pick(X({b"cookie": b"sid=abc"}))
    seen = {lb.pick(X()) for _ in range(6)}        # no cookie: round-robin
    assert len(seen) == 3
    for kind, xs in (("ip", [X(ip="10.1.1.1"), X(ip="10.1.1.1", path="/other")]),
                     ("path", [X(path="/p/1", ip="1.1.1.1"), X(path="/p/1", ip="2.2.2.2")]),
                     ("user", [X(user="alice", ip="1.1.1.1"), X(user="alice", ip="3.3.3.3")])):
        m = Maglev("svc", insts(1, 1, 1, 1), key=(kind, None))
        assert len({m.pick(x) for x in xs * 3}) == 1, kind


def test_ring_hash_follows_weights():
    lb = RingHash("svc", insts(3, 1), key=("header", "x-user-id"))
    share = Counter(mapping(lb))["a"] / len(KEYS)
    assert 0.65 < share < 0.85


# ---------------------------------------------------------------------- slow start
class Cfg:
    load_balancing = "round_robin"
    panic_threshold = 50
    hash_key = None
    sticky = None

    def __init__(self, **kw) -> None:
        self.slow_start = None
        self.__dict__.update(kw)


def test_slow_start_ramps_a_new_instance_linearly():
    a, b = insts(1, 1)
    old = balance.build("svc", Cfg(slow_start=10.0), [a], down=bytes(2))                 # the process's first set
    assert not old.ramp and a.eff == 1.0
    lb = balance.build("svc", Cfg(slow_start=10.0), [a, b], down=bytes(2), old=old, first=False)   # a reload adds b
    t0 = lb.ramp[lb.ids[1]]
    lb.tick(t0)
    assert b.eff == pytest.approx(RAMP_FLOOR) and a.eff == 1.0
    share0 = Counter(lb.pick(None) for _ in range(lb.n))[b] / lb.n
    lb.tick(t0 + 5.0)
    assert b.eff == pytest.approx(RAMP_FLOOR + (1 - RAMP_FLOOR) * 0.5)
    share5 = Counter(lb.pick(None) for _ in range(lb.n))[b] / lb.n
    lb.tick(t0 + 10.0)
    assert b.eff == 1.0 and not lb.ramp
    share10 = Counter(lb.pick(None) for _ in range(lb.n))[b] / lb.n
    assert share0 < 0.1 < share5 < share10 == 0.5


def test_slow_start_after_recovery_and_not_at_process_start():
    a, b = insts(1, 1)
    down = bytearray(2)
    lb = balance.build("svc", Cfg(slow_start=4.0), [a, b], down=down)
    assert not lb.ramp
    down[b.slot] = 1
    lb.tick(100.0)
    down[b.slot] = 0                    # back: ramps from the floor
    lb.tick(101.0)
    assert b.eff == pytest.approx(RAMP_FLOOR)
    lb.tick(103.0)
    assert b.eff == pytest.approx(RAMP_FLOOR + (1 - RAMP_FLOOR) * 0.5)
    lb.tick(105.0)
    assert b.eff == 1.0


def test_least_request_uses_the_ramped_weight():
    a, b = insts(1, 1)
    lb = LeastRequest("svc", [a, b])
    b.eff = 0.1
    a.requests, b.requests = 2, 1       # 1/0.1 > 2/1: a wins despite more in flight
    assert Counter(lb.pick(None) for _ in range(200))[a] > 150


# ---------------------------------------------------------------------- sticky
class StickyCfg:
    cookie = "fgw_affinity"
    secret = "s3cret"


def test_sticky_cookie_holds_forged_falls_back_unusable_falls_back():
    a, b, c = insts(1, 1, 1)
    down = bytearray(3)
    lb = Sticky(RoundRobin("svc", [a, b, c], down=down), StickyCfg())
    assert a.affinity == affinity_token("s3cret", "svc", a.url) != b.affinity
    x = X({b"cookie": b"other=1; fgw_affinity=" + b.affinity})
    assert {lb.pick(x) for _ in range(10)} == {b}
    forged = X({b"cookie": b"fgw_affinity=" + b.affinity[:-2] + b"AA"})
    assert len({lb.pick(forged) for _ in range(6)}) == 3
    down[b.slot] = 1
    assert b not in {lb.pick(x) for _ in range(10)}
    assert lb.distinct == (a, b, c)       # the inner balancer's view
    lb.on_panic = print
    assert lb.inner.on_panic is print
    other = Sticky(RoundRobin("svc", [Inst("a"), Inst("b", slot=1)]), StickyCfg())
    assert other.inner.distinct[1].affinity == b.affinity   # any worker, any host: same token


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("path,value,error", [
    (f"{SVC}.load_balancing", "fastest",
     "services.svg-parser.load_balancing: expected one of 'least_request', 'maglev', 'random', 'ring_hash', "
     "'round_robin', got 'fastest'"),
    (f"{SVC}.load_balancing", "ring_hash",
     "services.svg-parser.hash_key: required by load_balancing: ring_hash (ip, user, path, header:NAME or cookie:NAME)"),
    (f"{SVC}.hash_key", "ip",
     "services.svg-parser.hash_key: only used by ring_hash and maglev, not by load_balancing: round_robin"),
    (f"{SVC}.hash_key", "header:", "services.svg-parser.hash_key: 'header:' needs a name, e.g. 'header:X-User-ID'"),
    (f"{SVC}.hash_key", "cookie:a b", "services.svg-parser.hash_key: invalid header name 'a b'"),
    (f"{SVC}.hash_key", "body",
     "services.svg-parser.hash_key: expected 'ip', 'user', 'path', 'header:NAME' or 'cookie:NAME', got 'body'"),
    (f"{SVC}.sticky", {"cookie": "aff"}, "services.svg-parser.sticky.secret: missing required field"),
    (f"{SVC}.sticky", {"secret": " "},
     "services.svg-parser.sticky.secret: must not be empty: the cookie's HMAC key (e.g. \"${STICKY_SECRET}\")"),
    (f"{SVC}.sticky", {"secret": "x", "same_site": "None"},
     "services.svg-parser.sticky.same_site: None requires secure: true (browsers refuse SameSite=None without Secure)"),
    (f"{SVC}.sticky", {"secret": "x", "same_site": "lax"},
     "services.svg-parser.sticky.same_site: expected one of 'Lax', 'None', 'Strict', got 'lax'"),
    (f"{SVC}.sticky", {"secret": "x", "cookie": "a;b"}, "services.svg-parser.sticky.cookie: invalid header name 'a;b'"),
    (f"{SVC}.slow_start", "0s", "services.svg-parser.slow_start: must be greater than 0, got 0s"),
])
def test_bad_balancing_settings_name_their_path(path, value, error):
    with pytest.raises(ConfigError) as e:
        load_config_data(edit(BASE, path, value))
    assert error in e.value.errors


def test_slow_start_refused_with_consistent_hashing():
    doc = edit(edit(BASE, f"{SVC}.load_balancing", "maglev"), f"{SVC}.hash_key", "header:X-User-ID")
    load_config_data(doc)
    with pytest.raises(ConfigError) as e:
        load_config_data(edit(doc, f"{SVC}.slow_start", "30s"))
    assert e.value.errors == ["services.svg-parser.slow_start: applies to round_robin, least_request and random, "
                              "not to maglev (it would move keys)"]


def test_issue_config_shape_loads_without_warning():
    doc = edit(BASE, SVC, {**BASE["services"]["svg-parser"],
                           "load_balancing": "least_request",
                           "sticky": {"cookie": "fgw_affinity", "ttl": "1h", "secret": "k", "secure": True,
                                      "same_site": "Lax"},
                           "slow_start": "30s"})
    cfg, warnings = load_config_data(doc)
    svc = cfg.services["svg-parser"]
    assert (svc.load_balancing, svc.sticky.ttl, svc.slow_start) == ("least_request", 3600, 30)
    assert not [w for w in warnings if "instances" in w]
