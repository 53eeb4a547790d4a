"""Failover pieces (issue #19) without a gateway process: config errors, the health
table's slots, Route.pick over the shared ``down`` bytes (panic included), the h11 probe against a real socket, and the monitor's thresholds and ejections.
Plus one real-process check: a 503 head is retried elsewhere (not forwarded) with
``retries``, and forwarded as it is without."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fastgw.config import ConfigError, load_config_data
from fastgw.pipeline.deps import Deps
from fastgw.resilience.checker import Monitor, Target, probe
from fastgw.resilience.identity import assign_slots, instance_key
from fastgw.runtime.app import App
from fastgw.shm import Region
from fastgw.shm.health import HEALTHY, UNHEALTHY
from tests.support.config import BASE, edit
from tests.support.failover import Upstream
from tests.support.gateway import Gateway
from tests.support.upstream import FakeUpstream

SVC = "services.svg-parser"


@pytest.mark.parametrize("path,value,error", [
    (f"{SVC}.health_check", {"expected_status": "200-700"},
     "services.svg-parser.health_check.expected_status: status range '200-700' must lie within 100-599, low to high"),
    (f"{SVC}.retry", {"on": ["reset", "418"]},
     "services.svg-parser.retry.on[1]: unknown retry condition '418': use connect-failure, reset, timeout, 502, 503, 504"),
    (f"{SVC}.panic_threshold", "150%", "services.svg-parser.panic_threshold: a percentage must be within 0-100, got 150"),
    (f"{SVC}.retry", {"backoff": {"base": "1s", "max": "10ms"}},
     "services.svg-parser.retry.backoff.max: is below backoff.base (0.01s < 1s)"),
    (f"{SVC}.outlier_detection", {"consecutive_failures": 0},
     "services.svg-parser.outlier_detection.consecutive_failures: must be between 1 and 10000, got 0"),
])
def test_bad_failover_settings_name_their_path(path, value, error):
    with pytest.raises(ConfigError) as e:
        load_config_data(edit(BASE, path, value))
    assert error in e.value.errors


def three_instances(**svc):
    doc = edit(BASE, SVC, {"instances": [{"url": f"http://127.0.0.1:{9000 + i}"} for i in range(3)],
                           "routes": [{"path": "/a"}], **svc})
    cfg, _ = load_config_data(doc)
    return cfg


@pytest.fixture
def region():
    r = Region.create(2, metrics_series=64, table_slots=8, health_slots=16)
    yield r
    r.close()


def build(cfg, region):
    assign_slots(region.health, cfg)
    return App(cfg, Deps(cfg, shm=region, worker_id=0), loop=None, metrics=None, log=logging.getLogger("t"))


def route_of(app):
    return next(r for r in app.routes if r.service == "svg-parser")


def test_slots_follow_identity_across_builds(region):
    cfg = three_instances()
    a1, a2 = route_of(build(cfg, region)), route_of(build(cfg, region))
    assert [i.slot for i in a1.distinct] == [i.slot for i in a2.distinct]
    assert len({i.slot for i in a1.distinct}) == 3
    assert region.health.find(instance_key("svg-parser", "http://127.0.0.1:9001")) == a1.distinct[1].slot


def test_pick_skips_down_instances_and_panics_below_the_threshold(region):
    route = route_of(build(three_instances(panic_threshold="50%"), region))
    a, b, c = route.distinct
    region.health.set_down(b.slot, True)
    picks = [route.pick(None) for _ in range(30)]
    assert b not in picks and {a, c} <= set(picks)
    panics = []
    route.on_panic = panics.append
    region.health.set_down(a.slot, True)          # 1 of 3 usable: below 50 %: all of them
    picks = [route.pick(None) for _ in range(30)]
    assert {a, b, c} == set(picks) and panics
    assert route.pick_other((a, c)) is b          # a retry prefers an instance not tried


def test_pick_without_panic_keeps_to_the_usable_one(region):
    route = route_of(build(three_instances(panic_threshold=0), region))
    a, b, c = route.distinct
    region.health.set_down(a.slot, True)
    region.health.set_down(b.slot, True)
    assert {route.pick(None) for _ in range(10)} == {c}


class _Health(FakeUpstream):
    """The shared fake upstream answering probes with ``status``, recording them in ``seen``."""

    def __init__(self) -> None:
        super().__init__(handler=self._probe)
        self.status = 200
        self.seen: list[tuple] = []

    def _probe(self, req, conn) -> bool:
        self.seen.append((req.target, req.header("x-probe"), req.header("host")))
        conn.respond(self.status)
        return True


@pytest.fixture
def health_server():
    with _Health() as srv:
        yield srv


def test_probe_speaks_http11_with_headers(health_server):
    port = health_server.port
    st = asyncio.run(probe("127.0.0.1", port, None, "/base/health", f"127.0.0.1:{port}", {"X-Probe": "1"}, 1.0))
    assert st == 200 and health_server.seen == [("/base/health", "1", f"127.0.0.1:{port}")]


def test_probe_connect_failure_raises():
    port = Upstream("x").port  # a free port nobody listens on
    with pytest.raises(OSError):
        asyncio.run(probe("127.0.0.1", port, None, "/", "h", {}, 0.5))


def test_monitor_thresholds_and_ejection(region, health_server):
    port = health_server.port
    doc = edit(BASE, SVC, {"instances": [{"url": f"http://127.0.0.1:{port}/base"}, {"url": "http://127.0.0.1:9"}],
                           "health": "/health", "routes": [{"path": "/a"}],
                           "health_check": {"interval": "50ms", "timeout": "200ms", "healthy_threshold": 2,
                                            "unhealthy_threshold": 2, "expected_status": "200-299"},
                           "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "10s",
                                                 "max_ejection_percent": 50}})
    cfg, _ = load_config_data(doc)
    route = route_of(build(cfg, region))
    good, dead = route.distinct
    t = region.health

    async def run():
        m = Monitor(t, asyncio.get_running_loop())
        m.apply(cfg)
        for _ in range(60):
            await asyncio.sleep(0.05)
            if t.state(good.slot) == HEALTHY and t.state(dead.slot) == UNHEALTHY:
                break
        states = (t.state(good.slot), t.state(dead.slot), t.down[good.slot], t.down[dead.slot])
        health_server.status = 503                               # outside expected_status
        for _ in range(60):
            await asyncio.sleep(0.05)
            if t.state(good.slot) == UNHEALTHY:
                break
        failed_state = t.state(good.slot)
        health_server.status = 200
        m.stop()
        return states, failed_state

    states, failed_state = asyncio.run(run())
    assert states == (HEALTHY, UNHEALTHY, 0, 1)
    assert failed_state == UNHEALTHY
    assert all(p[0] == "/base/health" for p in health_server.seen)


def test_outlier_ejection_counts_worker_rows_and_respects_max_percent(region):
    cfg = three_instances(outlier_detection={"consecutive_failures": 3, "base_ejection_time": "1s",
                                             "max_ejection_percent": 34})
    route = route_of(build(cfg, region))
    a, b, c = route.distinct
    t = region.health
    m = Monitor(t, loop=None)   # (no probes: the service has no ``health``; targets by hand)
    for i in (a, b, c):
        m.targets[i.slot] = Target("svg-parser", i.url, i.slot, cfg.services["svg-parser"])
    m.by_service = {"svg-parser": list(m.targets.values())}
    m.outliers(1_000)                                       # first look: baseline
    w0, w1 = t.row(0), t.row(1)
    w0.failed(a.slot, 1, 2, 0)                              # 2 + 1 across two workers
    w1.failed(a.slot, 0, 1, 0)
    w0.failed(b.slot, 1, 3, 0)
    m.outliers(2_000)
    assert t.ejections(a.slot) + t.ejections(b.slot) == 1   # 34 % of 3: one at a time
    assert sum(t.down[i.slot] for i in (a, b, c)) == 1
    m.outliers(2_000 + 2 * 10**9)                           # the ejection ran out
    assert not any(t.down[i.slot] for i in (a, b, c))


def test_a_503_head_is_retried_elsewhere_with_retries_and_forwarded_without():
    ups = [Upstream("busy", "503").start(), Upstream("ok").start()]
    insts = ", ".join(f'{{url: "{u.url}"}}' for u in ups)
    svc = """
  {name}:
    instances: [{insts}]
    outlier_detection: {{enabled: false}}
    retries: {retries}
    routes:
      - {{path: "/{name}/*", name: {name}}}
"""
    cfg = ("gateway: {host: 127.0.0.1, port: 0}\nservices:"
           + svc.format(name="r", insts=insts, retries=1) + svc.format(name="n", insts=insts, retries=0)
           + "monitoring: {metrics_port: 0, logging: {access_log: {enabled: false}}}\n")
    try:
        with Gateway(cfg, workers=1) as gw:
            for prefix, expect in (("/r", {200}), ("/n", {200, 503})):
                got, bodies = set(), set()
                for _ in range(6):
                    st, _, body = gw.request("GET", prefix + "/x")
                    got.add(st)
                    bodies.add(body)
                assert got == expect, (prefix, got)
                if prefix == "/n":
                    assert b"busy busy" in bodies        # the upstream's own 503, not a gateway one
    finally:
        for u in ups:
            u.kill()
