"""Circuit breaker, pure parts (issue #20 item 2): the state machine of ``shm.breaker`` on a
hand-advanced clock, its slots, its lock across forked processes, and the middleware's
reading of an exchange's final outcome and its 503 (``middleware.breaker``)."""

from __future__ import annotations

import json
import os
import time

import orjson
import pytest

from fastgw.config import ConfigError, load_config_data
from fastgw.config.monitoring import circuit_breaker_of
from fastgw.errors import GatewayError
from fastgw.http.request import Request
from fastgw.middleware import breaker as mw
from fastgw.pipeline.deps import Deps
from fastgw.pipeline.exchange import Exchange
from fastgw.shm import Region
from fastgw.shm.breaker import (ADMIT, BUCKETS, CLOSED, HALF_OPEN, LINE, OPEN, REJECT, TRIAL, TRANSITIONS,
                                BreakerStateError,
                                BreakerTable, Policy, key_for, next_state, view)

MS = 1_000_000
T = 300 * MS        # the breaker's timeout in these tests


@pytest.fixture
def table():
    return BreakerTable.local(8)


def slot(table, name="app"):
    return table.slot(key_for(name))


# ---------------------------------------------------------------------- the table of transitions
def test_transitions_are_a_table_and_a_missing_row_raises_naming_state_and_event():
    assert TRANSITIONS == {(CLOSED, "threshold_reached"): OPEN, (CLOSED, "ratio_reached"): OPEN,
                           (OPEN, "timeout_elapsed"): HALF_OPEN,
                           (HALF_OPEN, "trial_succeeded"): CLOSED, (HALF_OPEN, "trial_failed"): OPEN}
    assert next_state(OPEN, "timeout_elapsed") == HALF_OPEN
    with pytest.raises(BreakerStateError, match="from closed on 'trial_succeeded'"):
        next_state(CLOSED, "trial_succeeded")
    with pytest.raises(BreakerStateError, match="from open on 'threshold_reached'"):
        next_state(OPEN, "threshold_reached")


# ---------------------------------------------------------------------- closed
def test_consecutive_failures_open_it_and_a_success_starts_the_count_again(table):
    i, pol = slot(table), Policy(3, 0.3)
    assert table.failed(i, pol, 1) is None and table.failed(i, pol, 2) is None
    assert table.failures(i) == 2
    assert table.succeeded(i) is None and table.failures(i) == 0 and table.q[table.word_index(i)] == 0
    assert table.failed(i, pol, 3) is None and table.failed(i, pol, 4) is None
    assert table.admit(i, pol, 5) == (ADMIT, None, None)      # closed with failures: admitted
    assert table.failed(i, pol, 10) == (CLOSED, OPEN)
    assert table.state(i) == OPEN and table.failures(i) == 0 and table.opened(i) == 1


def test_a_clean_closed_breaker_is_one_zero_word(table):
    i = slot(table)
    assert table.q[table.word_index(i)] == 0 and table.state(i) == CLOSED


# ---------------------------------------------------------------------- open, half-open
def opened(table, pol, now=0):
    i = slot(table)
    for k in range(pol.threshold):
        table.failed(i, pol, now)
    assert table.state(i) == OPEN
    return i


def test_open_refuses_with_the_time_left_then_one_trial_per_window(table):
    pol = Policy(1, 0.3, 1)
    i = opened(table, pol, now=1000)
    assert table.admit(i, pol, 1000 + 100 * MS) == (REJECT, 200 * MS, None)
    verdict, token, trans = table.admit(i, pol, 1000 + T)
    assert verdict == TRIAL and trans == (OPEN, HALF_OPEN) and table.state(i) == HALF_OPEN
    # every other request of this window is refused, until the window's end
    for dt in (0, 1, T - 1):
        v, left, tr = table.admit(i, pol, 1000 + T + dt)
        assert v == REJECT and left == T - dt and tr is None
    assert table.claimed(i) == 1


def test_a_lost_permit_is_replaced_when_its_window_ends(table):
    pol = Policy(1, 0.3, 1)
    i = opened(table, pol)
    v, first, _ = table.admit(i, pol, T)
    assert v == TRIAL                       # its outcome never comes (worker died, client left)
    v, second, tr = table.admit(i, pol, 2 * T)
    assert v == TRIAL and tr is None and second[0] == first[0] and second[1] == 3 * T
    assert table.admit(i, pol, 2 * T + 1)[0] == REJECT


def test_exactly_half_open_requests_trials_per_window(table):
    pol = Policy(1, 0.3, 3)
    i = opened(table, pol)
    verdicts = [table.admit(i, pol, T + k)[0] for k in range(10)]
    assert verdicts == [TRIAL] * 3 + [REJECT] * 7


def test_a_trial_success_closes_and_a_trial_failure_reopens_for_a_new_timeout(table):
    pol = Policy(2, 0.3, 2)
    i = opened(table, pol)
    _, tok, _ = table.admit(i, pol, T)
    assert table.failed(i, pol, T + 5, tok) == (HALF_OPEN, OPEN)
    assert table.until(i) == 2 * T + 5 and table.opened(i) == 2
    assert table.admit(i, pol, 2 * T)[0] == REJECT
    _, tok2, tr = table.admit(i, pol, 2 * T + 5)
    assert tr == (OPEN, HALF_OPEN)
    assert table.failed(i, pol, 2 * T + 6, tok) is None      # a permit of an earlier period moves nothing
    assert table.succeeded(i, tok2) == (HALF_OPEN, CLOSED)
    assert table.state(i) == CLOSED and table.q[table.word_index(i)] == 0
    assert table.admit(i, pol, 2 * T + 7) == (ADMIT, None, None)


def test_late_outcomes_of_requests_admitted_while_closed_move_nothing(table):
    pol = Policy(1, 0.3, 1)
    i = opened(table, pol)
    assert table.failed(i, pol, 10) is None and table.succeeded(i) is None      # open
    table.admit(i, pol, T)                                                       # half-open
    assert table.failed(i, pol, T + 1) is None and table.succeeded(i) is None
    assert table.state(i) == HALF_OPEN


def test_a_permit_given_back_frees_a_trial_only_in_its_window(table):
    pol = Policy(1, 0.3, 1)
    i = opened(table, pol)
    _, tok, _ = table.admit(i, pol, T)
    table.give_back(i, tok)
    _, tok2, _ = table.admit(i, pol, T + 1)
    assert tok2 == tok and table.claimed(i) == 1
    table.admit(i, pol, 3 * T)              # a new window: its permit is taken
    table.give_back(i, tok2)                # a permit of the old window: nothing freed
    assert table.claimed(i) == 1 and table.admit(i, pol, 3 * T + 1)[0] == REJECT


def test_view_for_the_admin_api(table):
    pol = Policy(1, 0.3, 1)
    cfg = load_config_data({"services": {"a": {"url": "http://127.0.0.1:1", "routes": [{"path": "/"}]}},
                            "monitoring": {"circuit_breaker": {"failure_threshold": 1, "timeout": "300ms"}}}
                           )[0].monitoring.circuit_breaker
    assert view(table, -1, cfg, 0)["state"] == "closed"
    i = opened(table, pol, now=0)
    doc = view(table, i, cfg, 100 * MS)
    assert (doc["state"], doc["state_code"], doc["retry_in_s"], doc["times_opened"]) == ("open", 1, 0.2, 1)
    assert (doc["failure_threshold"], doc["timeout_s"], doc["half_open_requests"]) == (1, 0.3, 1)


# ---------------------------------------------------------------------- slots
def test_slots_by_service_identity_survive_and_a_full_table_reuses_a_removed_service():
    t = BreakerTable.local(2)
    a, b = t.slot(key_for("a")), t.slot(key_for("b"))
    assert {a, b} == {0, 1} and t.slot(key_for("a")) == a and t.find(key_for("b")) == b
    t.failed(a, Policy(5, 1), 0)
    assert t.slot(key_for("c"), live=[key_for("a"), key_for("b")]) == -1
    c = t.slot(key_for("c"), live=[key_for("a"), key_for("c")])   # b is gone from the config
    assert c == b and t.failures(c) == 0 and t.failures(a) == 1


def test_the_region_holds_the_table_and_a_second_mapping_sees_the_same_breaker():
    with Region.create(2, metrics_series=8, table_slots=8, health_slots=4) as r:
        other = Region.attach(os.dup(r.fd))
        try:
            pol = Policy(2, 0.3)
            i = r.breaker.slot(key_for("app"))
            assert other.breaker.find(key_for("app")) == i
            r.breaker.failed(i, pol, 1)
            assert other.breaker.failed(i, pol, 2) == (CLOSED, OPEN)   # summed over both
            assert r.breaker.state(i) == OPEN
        finally:
            other.close()


def test_permits_are_claimed_atomically_across_forked_processes():
    """4 processes race for the permits of one half-open window: exactly 3 are granted."""
    with Region.create(4, metrics_series=8, table_slots=8, health_slots=4) as r:
        t, pol = r.breaker, Policy(1, 60.0, 3)
        i = t.slot(key_for("app"))
        t.failed(i, pol, 1)
        due = t.until(i) + 1
        rd, wr = os.pipe()
        pids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:    # child: 300 tries, report how many trials it got
                try:
                    n = sum(1 for _ in range(300) if t.admit(i, pol, due)[0] == TRIAL)
                    os.write(wr, b"%d\n" % n)
                finally:
                    os._exit(0)
            pids.append(pid)
        os.close(wr)
        for pid in pids:
            os.waitpid(pid, 0)
        with os.fdopen(rd) as f:
            got = [int(x) for x in f.read().split()]
        assert len(got) == 4 and sum(got) == 3 and t.claimed(i) == 3


# ---------------------------------------------------------------------- the middleware
CFG = {
    "services": {
        "app": {"url": "http://127.0.0.1:1", "routes": [{"path": "/a/*"}]},
        "own": {"url": "http://127.0.0.1:2", "routes": [{"path": "/o/*"}],
                "circuit_breaker": {"failure_threshold": 7, "timeout": "2s", "half_open_requests": 2}},
        "off": {"url": "http://127.0.0.1:3", "routes": [{"path": "/f/*"}], "circuit_breaker": False},
    },
    "monitoring": {"circuit_breaker": {"failure_threshold": 2, "timeout": "1500ms"}},
}


def built(doc=CFG, service="app"):
    cfg = load_config_data(doc)[0]
    deps = Deps(cfg)
    svc = cfg.services[service]
    return mw.build(cfg, svc, svc.routes[0], deps), deps


def exchange(status=0, error=None, upstream="127.0.0.1:1"):
    x = Exchange(Request.build("GET", b"/a/x"), None)
    x.request_id = "rid-1"
    x.upstream_status = status
    x.error = error
    x.upstream = upstream
    return x


def test_the_default_applies_a_service_may_override_it_or_turn_it_off():
    cfg = load_config_data(CFG)[0]
    mon = cfg.monitoring
    assert circuit_breaker_of(mon, cfg.services["app"]) is mon.circuit_breaker
    assert circuit_breaker_of(mon, cfg.services["own"]).failure_threshold == 7
    assert circuit_breaker_of(mon, cfg.services["off"]) is None
    m, _ = built(service="own")
    assert (m.pol.threshold, m.pol.timeout_ns, m.pol.half_open) == (7, 2_000_000_000, 2)
    assert built(service="off")[0] is None
    assert built({"services": CFG["services"]})[0] is None          # no default, no own: none
    a, deps = built()
    assert a.service == "app" and a.table is deps.state[mw._LOCAL_KEY]


@pytest.mark.parametrize("status, error, counts", [
    (503, None, "failure"),                         # the upstream's own 5xx
    (500, None, "failure"),
    (0, GatewayError("upstream_refused"), "failure"),
    (0, GatewayError("upstream_reset"), "failure"),
    (0, GatewayError("upstream_timeout"), "failure"),
    (0, GatewayError("upstream_connect_timeout"), "failure"),
    (0, GatewayError("upstream_bad_response"), "failure"),
    (200, None, "success"),
    (404, None, "success"),                         # the upstream answered: a client error is not its failure
    (0, None, "nothing"),                           # a local reply (401, 429, cache hit) or a client gone
    (0, GatewayError("no_upstream"), "nothing"),
    (0, GatewayError("pool_exhausted"), "nothing"),
    (0, GatewayError("circuit_open"), "nothing"),
    (0, GatewayError("request_timeout"), "nothing"),
    (0, GatewayError("internal"), "nothing"),
])
def test_what_counts(status, error, counts):
    m, _ = built()
    t, i = m.table, m.slot
    m.logging(exchange(), GatewayError("upstream_refused"))         # one failure already counted
    assert t.failures(i) == 1
    x = exchange(status, error)
    m.logging(x, x.error)
    assert {"failure": (OPEN, 0), "success": (CLOSED, 0), "nothing": (CLOSED, 1)}[counts] == \
        (t.state(i), t.failures(i))


def test_the_open_circuit_answers_503_problem_json_with_retry_after_rounded_up():
    m, _ = built()
    for _ in range(2):
        x = exchange(503)
        m.logging(x, None)
    x = exchange()
    reply = m.request_filter(x)
    assert reply.status == 503 and reply.kind == "circuit_open"
    hs = dict(reply.headers)
    assert hs[b"content-type"] == b"application/problem+json" and hs[b"retry-after"] == b"2"   # 1.5 s left
    doc = orjson.loads(reply.body)
    assert doc["status"] == 503 and doc["request_id"] == "rid-1" and "service app is open" in doc["detail"]
    assert x.error.kind == "circuit_open" and x.error.source == "upstream"
    m.logging(x, x.error)                       # its own 503 counts for nothing
    assert m.table.opened(m.slot) == 1


def test_a_trial_holds_a_permit_in_notes_and_gives_it_back_when_it_reached_no_instance():
    m, _ = built()
    t, i = m.table, m.slot
    t.failed(i, m.pol, 0)
    t.failed(i, m.pol, 0)
    t.q[t.base + i * LINE + 2] = 1              # the open period ended long ago
    x = exchange(upstream="")
    assert m.request_filter(x) is None and mw.NOTE in x.notes and t.state(i) == HALF_OPEN
    assert m.request_filter(exchange()).status == 503      # the one permit is taken
    m.logging(x, None)                          # answered locally after the breaker: permit back
    y = exchange()
    assert m.request_filter(y) is None and mw.NOTE in y.notes
    y.upstream_status = 200
    m.logging(y, None)
    assert t.state(i) == CLOSED


def test_transitions_are_logged_audited_and_counted_by_the_worker_that_made_them():
    from fastgw.obs.metrics import Metrics

    audit, logged = [], []

    class Log:
        def warning(self, *a):
            logged.append(a[0] % a[1:])
        info = warning

    m, deps = built()
    m.metrics, m.audit, m.log = Metrics(), audit.append, Log()
    for _ in range(2):
        m.logging(exchange(502), None)
    assert logged == ["circuit breaker of service app: closed -> open (2 consecutive failures; open for 1.5s)"]
    assert [(r["event"], r["service"], r["from"], r["to"], r["open_for_s"]) for r in audit] == \
        [("circuit_breaker", "app", "closed", "open", 1.5)]
    json.dumps(audit)
    snap = m.metrics.store.snapshot()
    assert snap['fastgw_circuit_breaker_transitions_total{service="app",to="open"}'] == 1


# ---------------------------------------------------------------------- failure ratio (rule 5)
B = 1_000_000_000     # a bucket of 1 s in these tests (window 10 s)


def test_the_ratio_window_sums_every_workers_row_since_the_last_transition():
    region = Region.create(3, metrics_series=8, table_slots=8, health_slots=8)
    try:
        t = region.breaker
        i = slot(t)
        w0, w2 = t.window_row(i, 0), t.window_row(i, 2)
        t.count(w0, 5, 3, 1)
        t.count(w2, 5, 2, 0)                        # another worker, same bucket
        t.count(w0, 7, 1, 2)
        assert t.window(i, 7, B) == (6, 3)
        assert t.window(i, 5 + BUCKETS, B) == (1, 2)    # bucket 5 slid out of the window
        t.count(w0, 5 + BUCKETS, 1, 0)             # reuses bucket 5's cells: counts start at 0
        assert t.window(i, 5 + BUCKETS, B) == (2, 2)    # (worker 2's bucket 5 is too old)
        assert t.failed(i, Policy(100, 1.0), 0, ratio=True) == (CLOSED, OPEN)
        # buckets that began before the transition do not count any more
        assert t.window(i, 5 + BUCKETS, B) == (0, 0)
        # a slot taken over by another service starts with empty rows
        j = t._claim(i, key_for("other"))
        assert t.window(j, 7, 1) == (0, 0) and t.q[w2] == 0
    finally:
        region.close()


RATIO = {**CFG, "monitoring": {"circuit_breaker": {"failure_threshold": 100, "timeout": "1s",
                                                   "failure_ratio": "50%", "min_requests": 4, "window": "10s"}}}


def test_a_failure_ratio_opens_the_breaker_once_enough_outcomes_are_counted():
    m, deps = built(RATIO)
    assert type(m) is mw.RatioBreaker
    audit = []
    m.audit = audit.append
    t, i = m.table, m.slot
    m.logging(exchange(503), None)                  # 1 of 1 failed, but under min_requests
    m.logging(exchange(200), None)
    m.logging(exchange(200), None)
    assert t.state(i) == CLOSED
    m.logging(exchange(0, GatewayError("upstream_reset")), GatewayError("upstream_reset"))   # 2 of 4
    assert t.state(i) == OPEN and t.opened(i) == 1
    assert audit[-1]["reason"] == "failure_ratio"
    # what the gateway made itself counts for nothing, as for the consecutive count
    m2, _ = built(RATIO, service="own")
    assert type(m2) is mw.CircuitBreaker           # its own breaker has no ratio


def test_under_the_ratio_it_stays_closed_and_routes_share_the_window():
    doc = {**RATIO, "services": {**CFG["services"], "app": {"url": "http://127.0.0.1:1",
                                                             "routes": [{"path": "/a/*"}, {"path": "/b/*"}]}}}
    cfg = load_config_data(doc)[0]
    deps = Deps(cfg)
    svc = cfg.services["app"]
    a, b = (mw.build(cfg, svc, r, deps) for r in svc.routes)
    assert a.row == b.row
    for k in range(12):                             # 1 in 3 fails: 33 % < 50 %
        (a if k % 2 else b).logging(exchange(503 if k % 3 == 2 else 200), None)
    assert a.table.state(a.slot) == CLOSED
    now = time.monotonic_ns()
    assert a.table.window(a.slot, now // a.bucket_ns + 1, a.bucket_ns) == (8, 4)
    doc = view(a.table, a.slot, cfg.monitoring.circuit_breaker, now)
    assert doc["failure_ratio"] == 50.0 and doc["window_failures"] == 4 and doc["window_requests"] == 12
    assert doc["window_s"] == 10.0


@pytest.mark.parametrize("extra, path, message", [
    ({"failure_ratio": 0}, "monitoring.circuit_breaker.failure_ratio", "must be above 0%"),
    ({"failure_ratio": "150%"}, "monitoring.circuit_breaker.failure_ratio", "within 0-100"),
    ({"failure_ratio": "half"}, "monitoring.circuit_breaker.failure_ratio", "expected a percentage"),
    ({"min_requests": 0}, "monitoring.circuit_breaker.min_requests", "between 1 and 1000000"),
    ({"window": "500ms"}, "monitoring.circuit_breaker.window", "within 1s-10m"),
    ({"window": "1h"}, "monitoring.circuit_breaker.window", "within 1s-10m"),
])
def test_invalid_ratio_settings_are_refused_with_their_path(extra, path, message):
    doc = {**CFG, "monitoring": {"circuit_breaker": {"failure_threshold": 5, "timeout": "1s", **extra}}}
    with pytest.raises(ConfigError) as e:
        load_config_data(doc)
    assert f"{path}: " in str(e.value) and message in str(e.value), str(e.value)
