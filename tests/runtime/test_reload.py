"""HUP with real processes: in-place reload under load, invalid configs, restart-only keys."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.gateway import Gateway
from tests.support.procs import (KeepAliveLoad, admin, config, generation_everywhere, get, hup, metrics_text,
                                 ready_workers, rewrite, series, workers)
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def up():
    with EchoUpstream() as u:
        yield u


def _probe(gen: int) -> str:
    return f"""
  probe:
    url: "http://{{UP}}"
    routes:
      - path: "/gen{gen}/*"
        name: gen-route
        methods: ["GET"]
"""


def _cfg(up, gen: int) -> str:
    # the main route serves only /load, so /genN is answered by the probe route or 404
    return config(up, extra_services=_probe(gen).replace("{UP}", up.addr)).replace('path: "/*"', 'path: "/load"')


def test_ten_reloads_under_keepalive_load_lose_nothing(up):
    with Gateway(_cfg(up, 0), workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        assert get(gw.port, "/gen0/x")[0] == 200
        with KeepAliveLoad(gw.host, gw.port, conns=50, reconnect=False) as load:
            time.sleep(0.5)
            for gen in range(1, 11):
                rewrite(gw, _cfg(up, gen))
                hup(gw)
                assert wait_for(lambda g=gen: generation_everywhere(gw, g, 2), timeout=5, interval=0.02), workers(gw)
                # the changed route is live on every worker (new connections spread over both)
                for _ in range(4):
                    assert get(gw.port, f"/gen{gen}/x")[0] == 200
                    assert get(gw.port, f"/gen{gen - 1}/x")[0] == 404
                time.sleep(0.1)
            time.sleep(0.3)
            load.stop()
        assert load.ok > 500, (load.ok, load.statuses)
        assert load.failed == 0, (load.failed, load.statuses, load.errors[:5])
        assert load.closed == 0, (load.closed, load.errors[:5])
        m = metrics_text(gw)
        assert series(m, "fastgw_config_reloads_total") == {'{result="failed"}': 0, '{result="ok"}': 10}
        assert series(m, "fastgw_worker_restarts_total") == {"": 0}


def test_invalid_config_on_hup_keeps_the_old_one(up):
    with Gateway(_cfg(up, 0), workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        bad = _cfg(up, 1).replace("path: \"/gen1/*\"", "path: \"/gen1/*\"\n        timeout: 30 seconds")
        rewrite(gw, bad)
        hup(gw)
        assert wait_for(lambda: series(metrics_text(gw), "fastgw_config_reloads_total").get('{result="failed"}') == 1)
        assert get(gw.port, "/gen0/x")[0] == 200            # old config still served
        assert get(gw.port, "/gen1/x")[0] == 404
        assert wait_for(lambda: any("reload refused: services.probe.routes[0].timeout" in x for x in gw.stderr_lines),
                        timeout=2), gw.stderr_lines[-20:]
        assert workers(gw)["generation"] == 0
        # a later valid reload still works
        rewrite(gw, _cfg(up, 2))
        hup(gw)
        assert wait_for(lambda: generation_everywhere(gw, 1, 2))
        assert get(gw.port, "/gen2/x")[0] == 200
        m = metrics_text(gw)
        assert series(m, "fastgw_config_reloads_total") == {'{result="failed"}': 1, '{result="ok"}': 1}


def test_restart_only_changes_are_refused(up):
    with Gateway(_cfg(up, 0), workers=1) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 1)
        changed = _cfg(up, 1).replace("metrics_port: 0", "metrics_port: 0\n  metrics_host: 127.0.0.2") \
                             .replace("  trusted_proxies: []", "  trusted_proxies: []\n  workers: 3")
        rewrite(gw, changed)
        hup(gw)
        assert wait_for(lambda: series(metrics_text(gw), "fastgw_config_reloads_total").get('{result="failed"}') == 1)
        assert wait_for(lambda: any("reload refused (" in x for x in gw.stderr_lines), timeout=2)
        err = "\n".join(gw.stderr_lines)
        assert "reload refused: monitoring.metrics_host: cannot change on reload" in err, err[-2000:]
        assert "reload refused: gateway.workers: cannot change on reload" in err
        assert get(gw.port, "/gen1/x")[0] == 404 and get(gw.port, "/gen0/x")[0] == 200


def test_hup_sent_to_a_worker_is_ignored(up):
    with Gateway(_cfg(up, 0), workers=1) as gw:
        (pid,) = wait_for(lambda: (r := ready_workers(gw)) and list(r.values()))
        rewrite(gw, _cfg(up, 1))
        import os
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: any("HUP sent to a worker is ignored" in x for x in gw.stderr_lines), timeout=3)
        assert get(gw.port, "/gen0/x")[0] == 200
        assert admin(gw, "/readyz")[0] == 200
