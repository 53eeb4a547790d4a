"""Metric store in one process: directory and snapshot, histograms, full areas, and
fold_dead keeping every counter monotonic across respawns."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.shm import Region
from fastgw.shm.metrics import DROPPED_KEY, MAX_HISTOGRAM_BUCKETS, OVERFLOW_KEY, HistogramValue

REQ = 'fastgw_http_requests_total{route="a",service="b",method="GET",code="200"}'


@pytest.fixture
def region():
    r = Region.create(3, metrics_series=64, table_slots=8, health_slots=1)
    yield r
    r.close()


def test_directory_and_snapshot_sum_the_writers(region):
    m = region.metrics
    w0, w1 = m.writer(0), m.writer(1)
    c0, c1 = w0.counter(REQ), w1.counter(REQ)
    w0.q[c0] += 3
    w1.inc(c1, 4)
    assert w0.counter(REQ) == c0                    # idempotent
    g = w1.gauge("fastgw_http_requests_in_flight")
    w1.add(g, -2)                                   # a gauge may go below zero per process
    h = w0.histogram('fastgw_http_request_duration_seconds{route="a"}', 4)
    w0.observe(h, 0, 0.001)
    w0.observe(h, 3, 12.5)
    snap = m.snapshot()
    assert snap[REQ] == 7
    assert snap["fastgw_http_requests_in_flight"] == -2
    assert snap['fastgw_http_request_duration_seconds{route="a"}'] == HistogramValue(12.501, (1, 0, 0, 1))
    assert snap[OVERFLOW_KEY] == 0 and snap[DROPPED_KEY] == 0
    # a handle re-created in the same process finds the same cells
    assert m.writer(0).counter(REQ) == c0
    with pytest.raises(ValueError):
        w0.gauge(REQ)
    with pytest.raises(ValueError):
        w0.histogram("h", MAX_HISTOGRAM_BUCKETS + 1)
    # the control process and the supervisor have their own areas
    assert (m.control_slot, m.supervisor_slot) == (3, 4)
    m.writer(m.supervisor_slot).inc(m.writer(m.supervisor_slot).counter("fastgw_worker_restarts_total"))
    wc = m.writer(m.control_slot)
    wc.inc(wc.counter("fastgw_config_reloads_total"), 2)
    region.fold_dead(m.control_slot)                # the control process died
    snap = m.snapshot()
    assert snap["fastgw_worker_restarts_total"] == 1 and snap["fastgw_config_reloads_total"] == 2
    assert region.workers.retired_workers == 0


def test_a_full_area_counts_into_the_overflow_series():
    with Region.create(1, metrics_series=4, table_slots=8, health_slots=1) as r:
        w = r.metrics.writer(0)
        cells = [w.counter(f"c{i}_total") for i in range(6)]        # 4 fit, 2 overflow
        h = w.histogram("late_seconds", 3)                          # no room: scratch
        g = w.gauge("late_gauge")
        for c in cells:
            w.q[c] += 10
        w.observe(h, 1, 0.5)
        w.add(g, 1)
        snap = r.metrics.snapshot()
        assert [snap.get(f"c{i}_total") for i in range(6)] == [10, 10, 10, 10, None, None]
        assert snap[OVERFLOW_KEY] == 20                             # the increments survive
        assert snap[DROPPED_KEY] == 4                               # 2 counters, h, g
        assert "late_seconds" not in snap and "late_gauge" not in snap
        assert w.counter("c5_total") == cells[5]                    # refused once, counted once
        assert r.metrics.snapshot()[DROPPED_KEY] == 4
        # a key too long for the directory is refused the same way
        assert w.counter("x" * 2000) == cells[5]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("inc"), st.integers(0, 2), st.integers(0, 8), st.integers(1, 1000)),
    st.tuples(st.just("fold"), st.integers(0, 2)),
), max_size=40))
def test_fold_dead_keeps_totals_monotonic(ops):
    """Any interleaving of increments and worker deaths: every scrape equals the model and
    never goes down, with the retired area filling up (its overflow keeps the sum)."""
    with Region.create(3, metrics_series=3, table_slots=8, health_slots=1) as r:
        m, model = r.metrics, {}
        writers = [m.writer(i) for i in range(3)]
        prev: dict = {}
        for op in ops:
            if op[0] == "inc":
                _, slot, k, n = op
                w = writers[slot]
                w.q[w.counter(f"k{k}_total")] += n
                model[k] = model.get(k, 0) + n
            else:
                m.fold_dead(op[1])
                writers[op[1]] = m.writer(op[1])    # the replacement worker
            snap = m.snapshot()
            shown = {k: v for k, v in snap.items() if k != DROPPED_KEY}
            assert sum(shown.values()) == sum(model.values())
            # a series can only lose what a fold moved into the overflow series (the
            # retired area is full): per key monotonic otherwise, the sum always
            moved = shown.get(OVERFLOW_KEY, 0) - prev.get(OVERFLOW_KEY, 0)
            assert moved >= 0
            lost = 0
            for key, v in shown.items():
                if key != OVERFLOW_KEY:
                    assert v <= model[int(key[1:-6])]
                    lost += max(0, prev.get(key, 0) - v)
            for key, v in prev.items():
                if key not in shown and key != OVERFLOW_KEY:
                    lost += v
            assert lost <= moved, (lost, moved)
            prev = shown


@pytest.mark.timing
def test_snapshot_does_not_hang_on_a_fold_that_never_finished(region):
    w = region.metrics.writer(0)
    w.inc(w.counter(REQ), 5)
    region._q[region.header.offsets["metrics"] // 8] += 1      # a supervisor died mid-fold
    t0 = time.monotonic()
    assert region.metrics.snapshot()[REQ] == 5
    assert time.monotonic() - t0 < 1.0


def test_a_directory_entry_not_yet_visible_is_skipped(region):
    m = region.metrics
    w = m.writer(0)
    w.inc(w.counter(REQ), 1)
    area = m._areas[0]
    area.q[area.h] += 1                             # count published before its entry
    assert m.snapshot()[REQ] == 1
