"""Connection storms and open-file limits (issue #17 item 3), with real processes.

A storm of new connections, each sending one request, must all get 200: the supervisor
raises its open-file limit to fit ``gateway.max_connections`` plus the upstream pools,
and requests beyond the pool's connections wait in a queue sized from
``gateway.max_connections``.  The full-scale storm (5,000 connections, 2 workers) is
``scripts/storm.py``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.storm import FastUpstream, storm
from tests.support.gateway import Gateway
from tests.support.procs import metrics_text, ready_workers, series
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timing, pytest.mark.timeout(90)]

STORM = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: [], max_connections: 2000}
services:
  slow:
    url: "http://{UP}"
    pool: {max_connections: 32}
    routes: [{path: "/*", methods: ["GET"]}]
monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging: {level: info, access_log: {enabled: false}}
"""


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files line")


def test_storm_of_1500_new_connections_all_served():
    """1,500 connections at once on one worker started with a soft limit of 1024 open
    files, 32 upstream connections to a 20 ms service: every request waits its turn
    (more than the old fixed 1,024 waiters) and gets 200."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.fail(f"the hard open-files limit ({hard}) is below what this test needs (2200)")
    with FastUpstream(delay_ms=20) as up:
        gw = Gateway(STORM.replace("{UP}", up.addr), workers=1)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))   # inherited by the gateway
        try:
            gw.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:  # (not ``with gw``: its __enter__ would start a second gateway, leaking this one)
            assert wait_for(lambda: len(ready_workers(gw)) == 1)
            worker = list(ready_workers(gw).values()) + [gw.proc.pid]
            assert worker and all(_soft_nofile(p) >= 2000 + 32 + 64 for p in worker)
            out, details, secs = storm("127.0.0.1", gw.port, 1500)
            assert out == {200: 1500}, (dict(out), details)
            text = metrics_text(gw)
            assert not series(text, "fastgw_upstream_pool_exhausted_total")
        finally:
            gw.__exit__(None, None, None)


FULL = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: []}
services:
  tiny:
    url: "http://{UP}"
    pool: {max_connections: 1, max_waiters: 0}
    routes: [{path: "/*", methods: ["GET"]}]
monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging: {level: info, access_log: {enabled: false}}
"""


def test_a_full_pool_answers_503_naming_the_limit_and_counts_it():
    with FastUpstream(delay_ms=300) as up, Gateway(FULL.replace("{UP}", up.addr), workers=1) as gw:
        out, details, _ = storm("127.0.0.1", gw.port, 6)
        assert out[200] >= 1 and out[503] >= 1, dict(out)
        doc = json.loads(next(d for d in details if d.startswith("{")))
        assert doc["status"] == 503 and "pool.max_waiters (0)" in doc["detail"] \
            and "pool.max_connections (1)" in doc["detail"], doc
        got = series(metrics_text(gw), "fastgw_upstream_pool_exhausted_total")
        assert got == {f'{{upstream="{up.addr}",reason="queue_full"}}': out[503]}, got


def test_check_warns_when_the_open_file_limit_cannot_fit(tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("gateway: {max_connections: 50000}\n"
                   "services:\n  a: {url: 'http://127.0.0.1:1', routes: [{path: '/*'}]}\n")
    code = ("import resource, sys; from fastgw.cli import main; "
            "h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, min(h, 4096) if h > 0 else 4096)); "
            f"sys.exit(main(['-c', {str(cfg)!r}, '--check', '-w', '2']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "gateway.max_connections (50000) + upstream pools (1024) + 64 reserved = 51088 open files per worker" \
        in p.stderr and "the hard limit is 4096" in p.stderr, p.stderr
