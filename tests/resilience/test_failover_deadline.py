"""The rest of failover (issue #19): the service's ``timeout`` bounds the wait for the
response head across all attempts, the retry budget counts retries in flight against the
live count of active requests, the access log shows every attempt, a split side skips
down instances (and a retry stays on its side), per-instance request counts, and the
warning of a gateway running without its control process.

Units first (no process), then real processes: a gateway over real upstream sockets.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from fastgw.config import load_config_data, load_config_text
from fastgw.pipeline.deps import Deps
from fastgw.resilience.identity import assign_slots
from fastgw.resilience.retry import Budget
from fastgw.runtime.app import App
from fastgw.runtime.worker import without_control
from fastgw.shm import Region
from tests.support.config import BASE, edit
from tests.support.wire import closed_port
from tests.support.gateway import Gateway, flushed_access_lines
from tests.support.hanging import HangingUpstream
from tests.support.procs import metrics_text, promtool_check, series


# ---------------------------------------------------------------------- budget (units)
class _X:
    """An exchange as the budget sees it."""

    def __init__(self) -> None:
        self.retrying = False


def test_budget_is_a_share_of_the_requests_in_flight():
    b = Budget(20.0, 0)
    xs = [_X() for _ in range(10)]
    b.active = 10                                    # ten requests of the service in flight
    granted = [b.allow(x, 5.0) for x in xs]
    assert granted == [True, True] + [False] * 8     # 20 % of 10 in flight at once
    assert b.retrying == 2
    assert b.allow(xs[0], 5.0)                       # its second retry replaces its first
    assert b.retrying == 2
    for x in xs[:5]:                                 # five end, two of them were retrying
        b.done(x)
    assert (b.active, b.retrying) == (5, 0)
    assert b.allow(xs[5], 5.0) and not b.allow(xs[6], 5.0)   # 20 % of 5: one


def test_budget_floor_is_per_second_and_a_lone_request_may_retry():
    b = Budget(20.0, 3)
    b.active = 100
    b.retrying = 50                                  # far past 20 %: only the floor lets through
    assert sum(b.allow(_X(), 7.2) for _ in range(10)) == 3
    assert b.allow(_X(), 8.0)                        # a new second
    quiet = Budget(20.0, 0)
    quiet.active = 1
    assert quiet.allow(_X(), 1.0)                    # no other retry in flight: 0 < 20 % of 1


# ---------------------------------------------------------------------- split sides (units)
SPLIT = {"services": {
    "main": {"instances": [{"url": f"http://127.0.0.1:{9100 + i}"} for i in range(3)],
             "retries": 2, "panic_threshold": "50%",
             "routes": [{"path": "/s", "split": {"to": [{"service": "main", "weight": 1},
                                                        {"service": "canary", "weight": 0}],
                                                 "override": {"header": "X-Canary"}}}]},
    "canary": {"instances": [{"url": f"http://127.0.0.1:{9200 + i}"} for i in range(2)]},
}}


@pytest.fixture
def region():
    r = Region.create(2, metrics_series=64, table_slots=8, health_slots=16)
    yield r
    r.close()


class _Ctx:
    attempt = None
    user = None
    client_ip = "10.0.0.1"

    def __init__(self, canary: bool) -> None:
        self.h = {b"x-canary": b"1"} if canary else {}

    def header(self, name):
        return self.h.get(name)


def _split_route(region):
    cfg, _ = load_config_data(edit(BASE, "services", SPLIT["services"]))
    assign_slots(region.health, cfg)
    app = App(cfg, Deps(cfg, shm=region, worker_id=0), loop=None, metrics=None, log=logging.getLogger("t"))
    return next(r for r in app.routes if r.name and r.cfg.split is not None)


def test_split_side_skips_down_instances_and_keeps_retries_on_its_side(region):
    route = _split_route(region)
    main = route.side_lbs[0].distinct
    canary = route.side_lbs[1].distinct
    region.health.set_down(main[1].slot, True)
    picks = [route.pick(_Ctx(False)) for _ in range(30)]
    assert set(picks) == {main[0], main[2]}          # the down one skipped, the side kept
    assert {route.pick(_Ctx(True)) for _ in range(10)} == set(canary)
    # a retry goes to another instance of the first attempt's side, a usable one first
    assert route.pick_other((main[0],)) is main[2]
    assert route.pick_other((canary[0],)) is canary[1]
    # panic per side: 1 of 3 up is below 50 %: down ones are used again, a drained one never
    panics = []
    route.on_panic = panics.append
    region.health.set_down(main[2].slot, True)
    assert set(route.pick(_Ctx(False)) for _ in range(30)) == set(main)
    assert panics and panics[0].service == "main"
    region.health.down[main[1].slot] = 2             # drained by an operator
    assert main[1] not in {route.pick(_Ctx(False)) for _ in range(30)}
    assert route.pick_other((main[0], main[2])) in (main[0], main[2])   # never the drained one
    assert route.pick(_Ctx(True)) in canary          # the other side does not care


def test_split_side_picks_with_its_services_own_balancer(region):
    """A side is balanced as its service's own routes are: here the canary's ring_hash on
    a header keeps one key on one instance, and a retry still stays on that side."""
    services = {**SPLIT["services"], "canary": {**SPLIT["services"]["canary"], "load_balancing": "ring_hash",
                                               "hash_key": "header:X-Key"}}
    cfg, _ = load_config_data(edit(BASE, "services", services))
    assign_slots(region.health, cfg)
    app = App(cfg, Deps(cfg, shm=region, worker_id=0), loop=None, metrics=None, log=logging.getLogger("t"))
    route = next(r for r in app.routes if r.name and r.cfg.split is not None)
    assert [lb.kind for lb in route.side_lbs] == ["round_robin", "ring_hash"]
    canary = route.side_lbs[1].distinct

    def ctx(key):
        c = _Ctx(True)
        c.h[b"x-key"] = key
        return c
    by_key = {k: {route.pick(ctx(k)) for _ in range(5)} for k in (b"a", b"b", b"c", b"d", b"e", b"f")}
    assert all(len(v) == 1 for v in by_key.values())               # one key, one instance
    assert set().union(*by_key.values()) == set(canary)            # the keys spread over both
    first = by_key[b"a"].pop()
    assert route.pick_other((first,)) in canary and route.pick_other((first,)) is not first


def test_retry_on_is_read_as_a_key_from_yaml():
    # YAML 1.1 reads a plain `on` as true; the config loader gives keys back as words
    cfg, _ = load_config_text("services:\n  a:\n    url: http://127.0.0.1:9\n    retries: 1\n"
                              "    retry: {on: [timeout, 503]}\n    routes: [{path: /a}]\n")
    assert cfg.services["a"].retry.on == ["timeout", "503"]


def test_without_control_names_what_is_off():
    cfg, _ = load_config_data(edit(BASE, "services", SPLIT["services"]))
    w = without_control(cfg)
    assert "outlier ejection (services main, canary) is off" in w and "health checks" not in w
    checked, _ = load_config_data(edit(edit(BASE, "services", SPLIT["services"]), "services.main.health", "/health"))
    assert "active health checks (services main) and outlier ejection" in without_control(checked)
    one, _ = load_config_text("services:\n  a:\n    url: http://127.0.0.1:9\n    routes: [{path: /a}]\n")
    assert without_control(one) is None


# ---------------------------------------------------------------------- real processes
def _gw(services: str) -> str:
    return f"""
gateway: {{host: 127.0.0.1, port: 0}}
services:
{services}
monitoring:
  metrics_port: 0
  admin: {{port: 0}}
  logging:
    level: warning
    access_log: {{enabled: true, output: "{{ACCESS_LOG}}"}}
"""


@pytest.mark.timing
def test_the_service_timeout_bounds_all_attempts_together():
    """Three instances that never answer: the client gets its 504 after about the
    service's timeout, not once per attempt."""
    with HangingUpstream("a") as a, HangingUpstream("b") as b, HangingUpstream("c") as c:
        insts = ", ".join(f'{{url: "{u.url}"}}' for u in (a, b, c))
        svc = """
  {name}:
    instances: [{insts}]
    timeout: {timeout}
    outlier_detection: {{enabled: false}}
    retries: 2
    retry: {{on: [timeout, connect-failure], {per_try}backoff: {{base: 1ms, max: 1ms}}}}
    routes:
      - {{path: "/{name}/*", name: {name}}}
"""
        cfg = _gw(svc.format(name="pertry", insts=insts, timeout="500ms", per_try="per_try_timeout: 300ms, ")
                  + svc.format(name="whole", insts=insts, timeout="400ms", per_try=""))
        with Gateway(cfg, workers=2) as gw:
            t0 = time.monotonic()
            st, _, _ = gw.request("GET", "/pertry/hang")
            took = time.monotonic() - t0
            # 300 ms, then the 200 ms left: two attempts, the third not started (three
            # attempts and 900 ms when each attempt had min(timeout, per_try) of its own)
            assert st == 504 and 0.45 <= took < 0.85, took
            assert sorted((a.requests, b.requests, c.requests)) == [0, 1, 1]
            t0 = time.monotonic()
            st, _, _ = gw.request("GET", "/whole/hang")
            took = time.monotonic() - t0
            # the first attempt used the whole 400 ms: no retry may start (3 x 400 ms before)
            assert st == 504 and 0.35 <= took < 1.0, took
            assert a.requests + b.requests + c.requests == 3
            lines = flushed_access_lines(gw, lambda ls: len(ls) >= 2)
            whole = next(x for x in lines if x["route"] == "whole")
            assert "retry_deadline" in whole["response_flags"] and whole["attempts"] == 1, whole
            assert whole["tries"][0].endswith(" timeout")
            pertry = next(x for x in lines if x["route"] == "pertry")
            assert pertry["attempts"] == 2 and all(t.endswith(" timeout") for t in pertry["tries"]), pertry
            assert "retry_deadline" in pertry["response_flags"]


def test_access_log_shows_every_attempt_and_metrics_count_requests_per_instance():
    dead = closed_port()   # nothing listens there: refused
    with HangingUpstream("busy", "503") as busy, HangingUpstream("ok") as ok:
        insts = f'{{url: "http://127.0.0.1:{dead}"}}, {{url: "{busy.url}"}}, {{url: "{ok.url}"}}'
        cfg = _gw(f"""
  app:
    instances: [{insts}]
    outlier_detection: {{enabled: false}}
    retries: 2
    retry: {{backoff: {{base: 1ms, max: 1ms}}}}
    routes:
      - {{path: "/*", name: main}}
""")
        outcome = {f"127.0.0.1:{dead}": "refused", f"127.0.0.1:{busy.port}": "503", f"127.0.0.1:{ok.port}": "200"}
        with Gateway(cfg, workers=2) as gw:
            for _ in range(6):
                st, _, body = gw.request("GET", "/x")
                assert st == 200 and body == b"ok"
            lines = flushed_access_lines(gw, lambda ls: len(ls) >= 6)
            retried = [x for x in lines if x.get("attempts")]
            assert retried, lines
            for x in retried:
                tries = [t.rsplit(" ", 1) for t in x["tries"]]
                assert x["attempts"] == len(tries) >= 2
                assert all(outcome[inst] == what for inst, what in tries), x["tries"]
                assert tries[-1][1] == "200"
                assert x["upstream"] == ", ".join(inst for inst, _ in tries)
            plain = [x for x in lines if not x.get("attempts")]
            assert all("tries" not in x for x in plain)   # one good attempt: no extra keys

            def counted():
                got = series(metrics_text(gw), "fastgw_upstream_instance_requests_total")
                return got if sum(got.values()) == sum(len(x.get("tries", [1])) for x in lines) else None
            deadline = time.monotonic() + 4
            got = counted()
            while got is None and time.monotonic() < deadline:   # added on each worker's 1 s tick
                time.sleep(0.1)
                got = counted()
            assert got is not None, series(metrics_text(gw), "fastgw_upstream_instance_requests_total")
            assert got[f'{{service="app",instance="127.0.0.1:{ok.port}"}}'] == 6
            promtool_check(metrics_text(gw))


@pytest.mark.timing
def test_budget_counts_retries_in_flight_against_active_requests():
    """One worker, ``budget_percent: 50`` and no floor: a failing request alone is always
    retried (no other retry in flight); four failing at once get two retries."""
    with HangingUpstream("a") as a, HangingUpstream("b") as b:
        cfg = _gw(f"""
  app:
    instances: [{{url: "{a.url}"}}, {{url: "{b.url}"}}]
    outlier_detection: {{enabled: false}}
    retries: 1
    retry: {{budget_percent: 50, min_retries_per_second: 0, backoff: {{base: 1ms, max: 1ms}}}}
    routes:
      - {{path: "/*", name: main}}
""")
        with Gateway(cfg, workers=1) as gw:
            for _ in range(4):                       # one at a time: each one retried
                assert gw.request("GET", "/503")[0] == 503
            assert a.requests + b.requests == 8
            out = []

            def one():
                out.append(gw.request("GET", "/slow503/400")[0])
            ts = [threading.Thread(target=one) for _ in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
            assert out == [503] * 4
            # 4 in flight when their 503s came: 2 retries (50 %), 2 answered as they were
            assert a.requests + b.requests == 8 + 4 + 2
            text = metrics_text(gw)
            assert sum(series(text, "fastgw_upstream_retry_budget_exhausted_total").values()) == 2
            assert sum(series(text, "fastgw_upstream_retries_total").values()) == 4 + 2
