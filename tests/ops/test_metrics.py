"""Metrics: the store adapter over shared memory, the Prometheus renderer (checked by
promtool), and /metrics of a live gateway whose request counter must equal what was
sent, across a kill -9 and a HUP."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from types import SimpleNamespace

import pytest

import fastgw.obs.metrics as metrics_mod
from fastgw.obs.metrics import DURATION_BUCKETS, METRICS, LocalStore, Metrics
from fastgw.obs.prom import families, reference_markdown, render
from fastgw.shm import Region
from fastgw.supervisor.metrics_store import ShmStore
from tests.support import ROOT
from tests.support.gateway import Gateway
from tests.support.procs import (config, generation_everywhere, get, hup, metrics_text, promtool_check,
                                 ready_workers, requests_total, rewrite, series, workers)
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for



class _Route:
    def __init__(self, name, service):
        self.name, self.service = name, service


class _Ctx:
    def __init__(self, route, method="GET", status=200, start=None, up=0.002):
        self.route, self.status = route, status
        self.request = SimpleNamespace(method=method)
        self.start = time.monotonic() - 0.003 if start is None else start
        self.upstream_duration = up


def _traffic(m: Metrics, n: int = 5) -> None:
    r = _Route("api", "main")
    for i in range(n):
        m.request_done(_Ctx(r, status=200 if i % 2 else 404))
    m.publish()  # (the worker tick)
    m.conn_open(3)
    m.conn_open(-1)
    m.pool_event("created")
    m.upstream_error(r, "connect")
    m.set("fastgw_build_info", (("version", "t"), ("python", "3")), 1)


# ---------------------------------------------------------------------- renderer
def test_render_local_store_cumulates_buckets_and_passes_promtool():
    m = Metrics(LocalStore())
    _traffic(m)
    text = render(m.store.snapshot())
    promtool_check(text)
    assert "# TYPE fastgw_http_request_duration_seconds histogram" in text
    assert "# HELP fastgw_http_requests_total Requests answered" in text
    assert series(text, "fastgw_http_requests_total") == {
        '{route="api",service="main",method="GET",code="200"}': 2,
        '{route="api",service="main",method="GET",code="404"}': 3}
    buckets = series(text, "fastgw_http_request_duration_seconds_bucket")
    vals = [buckets['{route="api",le="%r"}' % b] for b in DURATION_BUCKETS] + [buckets['{route="api",le="+Inf"}']]
    assert vals == sorted(vals) and vals[-1] == 5                    # cumulative, +Inf = count
    assert series(text, "fastgw_http_request_duration_seconds_count") == {'{route="api"}': 5}
    assert series(text, "fastgw_downstream_connections_open") == {"": 2}
    assert text == render(m.store.snapshot())                        # stable order


def test_every_documented_family_renders_valid_exposition():
    snap = {}
    for name, (kind, _h, labels) in families().items():
        lab = ",".join(f'{k}="x"' for k in labels)
        key = name + ("{" + lab + "}" if lab else "")
        if kind == "histogram":
            from fastgw.shm.metrics import HistogramValue
            snap[key] = HistogramValue(1.5, tuple([1] * (len(DURATION_BUCKETS) + 1)))
        else:
            snap[key] = 1
    text = render(snap)
    promtool_check(text)
    assert text.count("# TYPE") == len(families())


def test_unknown_family_and_mismatched_histogram_still_valid():
    from fastgw.shm.metrics import HistogramValue
    text = render({"fastgw_custom_total": 3,
                   'fastgw_http_request_duration_seconds{route="a"}': HistogramValue(0.5, (1, 2))})
    promtool_check(text)
    assert 'fastgw_http_request_duration_seconds_bucket{route="a",le="+Inf"} 3' in text


# ---------------------------------------------------------------------- the shm store adapter
def test_shm_store_sums_workers_and_stays_monotonic_across_fold():
    with Region.create(4, metrics_series=512, table_slots=64, health_slots=8) as region:
        m0 = Metrics(ShmStore(region.metrics.writer(0)))
        m1 = Metrics(ShmStore(region.metrics.writer(1)))
        _traffic(m0, 5)
        _traffic(m1, 3)
        m1.set_inflight(1)                                           # one in flight in worker 1 (tick)
        text = render(region.metrics.snapshot())
        promtool_check(text)
        assert sum(series(text, "fastgw_http_requests_total").values()) == 8
        assert series(text, "fastgw_http_requests_in_flight") == {"": 1}
        assert series(text, "fastgw_http_request_duration_seconds_count") == {'{route="api"}': 8}
        before = series(text, "fastgw_http_request_duration_seconds_bucket")
        # worker 1 is killed: its counts move to the retired area, its gauges vanish
        region.fold_dead(1)
        text2 = render(region.metrics.snapshot())
        assert sum(series(text2, "fastgw_http_requests_total").values()) == 8
        assert series(text2, "fastgw_http_request_duration_seconds_bucket") == before
        assert series(text2, "fastgw_http_requests_in_flight") == {"": 0}
        # its replacement counts on top
        m1b = Metrics(ShmStore(region.metrics.writer(1)))
        _traffic(m1b, 2)
        text3 = render(region.metrics.snapshot())
        assert sum(series(text3, "fastgw_http_requests_total").values()) == 10
        # the slot's request counter for /admin/workers, published on the tick
        store = m1b.store
        store.publish(region.workers.slot(1))
        assert region.workers.read(1).requests == 2
        assert store.snapshot()['fastgw_http_requests_total{route="api",service="main",method="GET",code="200"}'] == 1


def test_shm_store_float_and_unknown_series():
    with Region.create(2, metrics_series=128, table_slots=64, health_slots=8) as region:
        m = Metrics(ShmStore(region.metrics.writer(0)))
        m.inc("fastgw_bytes_total", value=2.0)                       # a float on a counter cell
        m.set("fastgw_something_ratio", value=3)                    # unknown, not _total: a gauge
        snap = region.metrics.snapshot()
        assert snap["fastgw_bytes_total"] == 2 and snap["fastgw_something_ratio"] == 3


# ---------------------------------------------------------------------- the request hot path
@pytest.mark.parametrize("shm", [False, True])
def test_request_done_series_exact_values(shm, monkeypatch):
    """Every series request_done writes, with exact values, for both stores: buckets by
    le, sums, the rendered _count (derived from the buckets, not stored), the global
    chain (no route: no upstream histogram), odd methods, the in-flight gauge."""
    region = Region.create(2, metrics_series=512, table_slots=64, health_slots=8) if shm else None
    try:
        m = Metrics(ShmStore(region.metrics.writer(0)) if shm else LocalStore())
        r, now = _Route("api", "main"), 1000.0
        monkeypatch.setattr(metrics_mod, "monotonic", lambda: now)  # exact durations
        reqs = [(r, "GET", 200, 0.0007, 0.0004), (r, "GET", 200, 0.3, 0.25), (r, "BREW", 418, 0.0008, None),
                (None, "GET", 404, 0.00001, None), (r, "POST", 502, 40.0, 0.0025)]
        m.set_inflight(3)
        m.set_inflight(0)  # (the worker tick publishes the engine's count)
        for route, method, status, d, up in reqs:
            m.request_done(_Ctx(route, method, status, start=now - d, up=up))
        m.publish()
        snap = region.metrics.snapshot() if shm else m.store.snapshot()
        assert not any(k.endswith("_count") or "_count{" in k for k in snap if not hasattr(snap[k], "buckets"))
        text = render(snap)
        assert series(text, "fastgw_http_requests_total") == {
            '{route="api",service="main",method="GET",code="200"}': 2,
            '{route="api",service="main",method="OTHER",code="418"}': 1,
            '{route="-",service="-",method="GET",code="404"}': 1,
            '{route="api",service="main",method="POST",code="502"}': 1}
        assert series(text, "fastgw_http_requests_in_flight") == {"": 0}
        b = series(text, "fastgw_http_request_duration_seconds_bucket")
        assert [b['{route="api",le="%r"}' % x] for x in (0.0005, 0.001, 0.25, 0.5, 30.0)] == [0, 2, 2, 3, 3]
        assert b['{route="api",le="+Inf"}'] == 4 and b['{route="-",le="0.0005"}'] == 1
        assert series(text, "fastgw_http_request_duration_seconds_count") == {'{route="api"}': 4, '{route="-"}': 1}
        s = series(text, "fastgw_http_request_duration_seconds_sum")
        assert abs(s['{route="api"}'] - 40.3015) < 1e-9 and s['{route="-"}'] == pytest.approx(0.00001)
        u = series(text, "fastgw_upstream_request_duration_seconds_bucket")
        assert [u['{service="main",le="%r"}' % x] for x in (0.0005, 0.0025, 0.1, 0.25)] == [1, 2, 2, 3]
        assert series(text, "fastgw_upstream_request_duration_seconds_count") == {'{service="main"}': 3}
        assert abs(series(text, "fastgw_upstream_request_duration_seconds_sum")['{service="main"}'] - 0.2529) < 1e-9
    finally:
        if region is not None:
            region.close()


def test_request_done_cache_stays_bounded_and_counts_stay_exact():
    m = Metrics(LocalStore())
    r = _Route("api", "main")
    for i in range(5000):
        m.request_done(_Ctx(r, status=1000 + i % 4500))
    assert m._nreq <= 4097
    m.publish()
    snap = m.store.snapshot()
    total = sum(v for k, v in snap.items() if k.startswith("fastgw_http_requests_total"))
    assert total == 5000 and snap['fastgw_http_requests_total{route="api",service="main",method="GET",code="1000"}'] == 2


# ---------------------------------------------------------------------- docs
def test_docs_metrics_reference_is_generated_from_metrics_table():
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        doc = f.read()
    assert reference_markdown() in doc, "regenerate with: python -m fastgw.obs.prom"
    for name in METRICS:
        assert f"`{name}`" in doc


# ---------------------------------------------------------------------- live
@pytest.fixture(scope="module")
def up():
    with EchoUpstream() as u:
        yield u


@pytest.mark.timeout(60)
def test_live_metrics_count_every_request_across_kill9_and_hup(up):
    text_cfg = config(up)
    with Gateway(text_cfg, workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        sent = 0
        for i in range(40):                      # new connections: spread over both workers
            assert get(gw.port, f"/a/{i}")[0] == 200
            sent += 1
        time.sleep(1.2)                          # both workers have served (requests published on the tick)
        served = {w["slot"]: w["requests"] for w in workers(gw)["workers"]}
        assert sum(served.values()) == sent
        victim_slot = max(served, key=served.get)
        victim = ready_workers(gw)[victim_slot]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: ready_workers(gw).get(victim_slot) not in (None, victim), timeout=5)
        for i in range(30):
            assert get(gw.port, f"/b/{i}")[0] == 200
            sent += 1
        rewrite(gw, text_cfg.replace('name: main', 'name: main2'))
        hup(gw)
        assert wait_for(lambda: generation_everywhere(gw, 1, 2), timeout=5)
        for i in range(30):
            assert get(gw.port, f"/c/{i}")[0] == 200
            sent += 1
        # (each worker adds its requests to shared memory on its 1 s tick)
        assert wait_for(lambda: requests_total(metrics_text(gw)) == sent, timeout=3, interval=0.1)
        text = metrics_text(gw)
        promtool_check(text)
        assert requests_total(text) == sent, series(text, "fastgw_http_requests_total")
        by_route = series(text, "fastgw_http_requests_total")
        assert by_route['{route="main2",service="echo",method="GET",code="200"}'] == 30
        assert series(text, "fastgw_worker_restarts_total") == {"": 1}
        assert series(text, "fastgw_config_reloads_total")['{result="ok"}'] == 1
        assert series(text, "fastgw_workers") == {'{state="booting"}': 0, '{state="draining"}': 0,
                                                  '{state="ready"}': 2}
        assert re.search(r'^fastgw_build_info\{version="[^"]+",python="[^"]+"\} 1$', text, re.M)
        count = series(text, "fastgw_http_request_duration_seconds_count")
        assert count['{route="main"}'] + count['{route="main2"}'] == sent
        # counters never go backwards between scrapes
        again = metrics_text(gw)
        assert requests_total(again) == sent


def test_live_in_flight_gauge_is_published_on_the_tick(up):
    """The in-flight gauge is the engines' own count, published by each worker's tick:
    slow requests in flight show up within a tick, and the gauge settles to 0 after."""
    with Gateway(config(up), workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        results = []
        threads = [threading.Thread(target=lambda: results.append(get(gw.port, "/delay/3000", timeout=10)[0]))
                   for _ in range(3)]
        for t in threads:
            t.start()
        try:
            assert wait_for(lambda: series(metrics_text(gw), "fastgw_http_requests_in_flight") == {"": 3},
                         timeout=2.8, interval=0.1)
        finally:
            for t in threads:
                t.join(10)
        assert results == [200, 200, 200]
        assert wait_for(lambda: series(metrics_text(gw), "fastgw_http_requests_in_flight") == {"": 0},
                     timeout=3, interval=0.1)


@pytest.mark.parametrize("shm", [False, True])
def test_request_counts_reach_the_store_on_publish_only_once(shm):
    """request_done accumulates in the worker; ``publish`` (the tick) adds to the store
    exactly what accumulated since the last publish, then nothing more."""
    region = Region.create(2, metrics_series=512, table_slots=64, health_slots=8) if shm else None
    try:
        m = Metrics(ShmStore(region.metrics.writer(0)) if shm else LocalStore())
        r = _Route("api", "main")
        key = 'fastgw_http_requests_total{route="api",service="main",method="GET",code="200"}'
        snap = (lambda: region.metrics.snapshot()) if shm else m.store.snapshot
        for _ in range(3):
            m.request_done(_Ctx(r, status=200, up=0.001))
        assert snap().get(key, 0) == 0
        m.publish()
        assert snap()[key] == 3
        m.publish()
        assert snap()[key] == 3
        m.request_done(_Ctx(r, status=200, up=0.001))
        m.publish()
        after = snap()
        assert after[key] == 4
        text = render(after)
        assert series(text, "fastgw_upstream_request_duration_seconds_count") == {'{service="main"}': 4}
        assert abs(series(text, "fastgw_upstream_request_duration_seconds_sum")['{service="main"}'] - 0.004) < 1e-9
    finally:
        if region is not None:
            region.close()
