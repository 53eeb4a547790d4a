"""Failover with real processes (issue #19): 3 upstream instances (each its own process,
killed with SIGKILL), 2 gateway workers, keep-alive GET load from several connections.

- ``retries: 2``: an instance killed under load costs the clients nothing;
- ``retries: 0``: errors only until the active check (or ejection) removes it, then none;
  restarted, it gets traffic again after ``healthy_threshold`` checks;
- one probe per interval per instance, whatever the worker count;
- a POST on a ``retry_non_idempotent`` route is not retried once its bytes reached an
  upstream that then failed.

Timers are short (probes every 200 ms); every process started here is stopped here.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.failover import Upstream, gw_config
from tests.support.procs import promtool_check
from tests.support.gateway import Gateway
from tests.support.procs import KeepAliveLoad, admin, metrics_text, series
from tests.support.waiting import wait_for

# kill/restart under load, probe counts per interval: a busy sibling worker would skew them
pytestmark = pytest.mark.timing


def upstreams_doc(gw) -> dict:
    st, _, body = admin(gw, "/admin/upstreams")
    assert st == 200, body
    return json.loads(body)


def run_kill(retries: int):
    ups = [Upstream(f"u{i}").start() for i in range(3)]
    try:
        with Gateway(gw_config(ups, retries=retries), workers=2) as gw:
            # every instance probed healthy before the load starts
            assert wait_for(lambda: all(i["health"] == "healthy"
                                        for i in upstreams_doc(gw)["services"]["app"]["instances"]), 10)
            with KeepAliveLoad(gw.host, gw.port, conns=6, path="/x", reconnect=True, max_seconds=20) as load:
                time.sleep(0.5)
                before = load.ok
                ups[1].kill()
                killed_at = time.monotonic()
                time.sleep(2.0)
                load.stop()
            doc = upstreams_doc(gw)
            return ups, metrics_text(gw), load, before, killed_at, doc
    finally:
        for u in ups:
            u.kill()


def test_kill_an_instance_under_load_with_retries_costs_no_client_error():
    ups, text, load, before, _t, doc = run_kill(retries=2)
    assert before > 20 and load.ok > before + 50, (before, load.ok)
    assert load.failed == 0, (load.statuses, load.errors[:5])
    # the policy retried (connect failures at least: the reused-connection retry alone
    # does not cover a refused connect to a new instance)
    retried = series(text, "fastgw_upstream_retries_total")
    assert sum(retried.values()) > 0, retried
    fails = series(text, "fastgw_upstream_instance_failures_total")
    assert sum(v for k, v in fails.items() if str(ups[1].port) in k) > 0, fails
    assert series(text, "fastgw_upstream_instance_healthy")[
        f'{{service="app",instance="127.0.0.1:{ups[1].port}"}}'] == 0
    promtool_check(text)
    row = doc["services"]["app"]["instances"][1]
    assert row["health"] == "unhealthy" and not row["usable"], row


def test_kill_without_retries_errors_stop_once_the_instance_is_removed_and_it_comes_back():
    ups = [Upstream(f"u{i}").start() for i in range(3)]
    try:
        with Gateway(gw_config(ups, retries=0), workers=2) as gw:
            assert wait_for(lambda: all(i["health"] == "healthy"
                                        for i in upstreams_doc(gw)["services"]["app"]["instances"]), 10)
            # one probe per interval per instance, whatever the worker count
            p0, t0 = ups[0].stats()["probes"], time.monotonic()
            with KeepAliveLoad(gw.host, gw.port, conns=6, path="/x", reconnect=True, max_seconds=20) as load:
                time.sleep(0.5)
                ups[1].kill()
                killed_at = time.monotonic()
                time.sleep(2.0)
                probes = (ups[0].stats()["probes"] - p0) / (time.monotonic() - t0)
                late = [t for t in load.fail_times if t > killed_at + 1.2]
                assert late == [], (len(load.fail_times), load.errors[:5])
                row = upstreams_doc(gw)["services"]["app"]["instances"][1]
                assert row["health"] == "unhealthy" and not row["usable"]
                # restarted on the same port: back after healthy_threshold (2) checks
                ups[1].start()
                back = wait_for(lambda: upstreams_doc(gw)["services"]["app"]["instances"][1]["usable"], 5)
                assert back
                n0 = ups[1].stats()["requests"]
                assert wait_for(lambda: ups[1].stats()["requests"] > n0 + 10, 5)
                load.stop()
            assert 3.0 <= probes <= 6.5, probes   # 5 per second at 200 ms
            assert load.ok > 100
    finally:
        for u in ups:
            u.kill()


def test_opted_in_post_is_not_retried_after_it_reached_an_upstream():
    ups = [Upstream("dies", "die-on-post").start(), Upstream("ok").start()]
    try:
        with Gateway(gw_config(ups, retries=2).replace('        methods: ["GET", "POST"]',
                                                       '        methods: ["GET", "POST"]\n'
                                                       '        retry_non_idempotent: true'), workers=2) as gw:
            codes = []
            for i in range(8):
                st, _, _ = gw.request("POST", "/p", body=f"id{i}".encode(),
                                      headers={"Content-Type": "text/plain"})
                codes.append(st)
            dead, ok = ups[0].stats()["posts"], ups[1].stats()["posts"]
            assert dead and ok, (dead, ok, codes)
            assert not set(dead) & set(ok), (dead, ok)           # never sent twice
            assert codes.count(502) == len(dead) and codes.count(200) == len(ok), codes
    finally:
        for u in ups:
            u.kill()
