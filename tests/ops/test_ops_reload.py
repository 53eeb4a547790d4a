"""Operator experience over real processes: the operational log as JSON in a file (USR1
reopens it in every process), the reload change summary, the identical-file no-op, warnings
not repeated, "reload refused (1 error)", the audit records of signals and reloads, and
``fastgw replay`` on the access log the same gateway recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.support.gateway import Gateway
from tests.support.procs import get, metrics_text, rewrite, series
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

CONFIG = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: []}
services:
  echo:
    url: "http://{UP}"
    retries: 2
    routes:
      - path: "/*"
        name: main
        methods: ["GET"]
{EXTRA}
monitoring:
  metrics_port: 0
  logging:
    level: info
    format: json
    output: "{TMP}/fastgw.log"
    access_log: {output: "{TMP}/access.log"}
    audit: {output: "{TMP}/audit.log"}
"""

EXTRA_ROUTE = """      - path: "/api/*"
        name: api
        methods: ["GET", "POST"]
        match: {headers: {x-tenant: "*"}}"""


def _lines(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip()]
    except FileNotFoundError:
        return []


def _has(path: str, text: str) -> list[dict]:
    return [r for r in _lines(path) if text in r.get("msg", "")]


def test_json_log_reload_summary_noop_refused_audit_and_replay(tmp_path):
    with EchoUpstream() as up:
        gw = Gateway(CONFIG.replace("{EXTRA}", ""), workers=1, upstream=up)
        log, audit, access = (os.path.join(gw.tmp.name, n) for n in ("fastgw.log", "audit.log", "access.log"))
        with gw:
            port = gw.wait_admin()
            assert wait_for(lambda: _has(log, "worker 0 ready"))
            recs = _lines(log)      # every line is one JSON object with ts, level, pid, msg
            assert recs and all(set(r) >= {"ts", "level", "pid", "msg"} for r in recs)
            sup = gw.proc.pid
            assert {r["pid"] for r in recs} >= {sup}
            assert not any("fastgw[" in x for x in gw.stderr_lines)      # nothing went to stderr
            for p in ("/a", "/api/x", "/b?q=1"):
                assert get(gw.port, p)[0] == 200

            # identical file: a no-op, the generation stays, the warning is not repeated
            gw.signal(signal.SIGHUP)
            assert wait_for(lambda: _has(log, "reload: no changes (config generation 0)"))
            assert series(metrics_text(gw), "fastgw_config_generation")[""] == 0
            assert not _has(log, "reload: services.echo.retries")

            # logrotate: move the file, USR1; then a real change: every process writes to the new file
            os.rename(log, log + ".1")
            gw.signal(signal.SIGUSR1)
            assert wait_for(lambda: any(r.get("event") == "signal" and r["signal"] == "USR1" for r in _lines(audit)))
            rewrite(gw, CONFIG.replace("{UP}", up.addr).replace("{TMP}", gw.tmp.name)
                    .replace("{EXTRA}", EXTRA_ROUTE).replace("retries: 2", "retries: 2\n    timeout: 7s")
                    .replace('access.log"}', 'access.log", headers: [x-tenant], query: true}'))
            gw.signal(signal.SIGHUP)
            assert wait_for(lambda: _has(log, "config reloaded: generation 1"))
            assert _has(log, "reload: routes: +echo/api") and _has(log, "reload: services: ~echo(timeout)")
            assert wait_for(lambda: [r for r in _has(log, "config reloaded (generation 1)") if r["pid"] != sup])
            assert not _has(log + ".1", "generation 1")
            # the access log now carries the replay fields
            assert get(gw.port, "/api/y", headers={"X-Tenant": "t1"})[0] == 200
            assert get(gw.port, "/api/z")[0] == 200

            # one bad field: refused, "1 error", with its path; the old config keeps running
            rewrite(gw, CONFIG.replace("{UP}", up.addr).replace("{TMP}", gw.tmp.name).replace("{EXTRA}", "")
                    .replace('methods: ["GET"]', 'methods: ["FETCH"]'))
            gw.signal(signal.SIGHUP)
            assert wait_for(lambda: _has(log, "reload refused (1 error): still running config generation 1"))
            assert _has(log, "reload refused: services.echo.routes[0].methods[0]: unknown method 'FETCH'")
            assert series(metrics_text(gw), "fastgw_config_generation")[""] == 1
            assert get(port, "/livez")[0] == 200
            # the audit log: signals and reloads, with their source and summary
            recs = _lines(audit)
            assert [r["signal"] for r in recs if r["event"] == "signal"] == ["HUP", "USR1", "HUP", "HUP"]
            reloads = [r for r in recs if r["event"] == "reload"]
            assert [(r["source"], r["result"], r["generation"]) for r in reloads] == [
                ("signal", "unchanged", 0), ("signal", "reloaded", 1), ("signal", "refused", 1)]
            assert "routes: +echo/api" in reloads[1]["changes"]
            assert reloads[2]["errors"] == ["services.echo.routes[0].methods[0]: unknown method 'FETCH'"]

            # replay the recorded access log against a config with the header-matched route:
            # /api/x (logged without the replay fields) could go to 'api' or stay on 'main2':
            # undecidable; /api/y and /api/z carry x-tenant (present / absent): decided
            assert wait_for(lambda: len(_lines(access)) == 5)
            assert _lines(access)[3]["headers"] == {"x-tenant": "t1"} and _lines(access)[4]["query"] == ""
            new = tmp_path / "new.yaml"
            new.write_text(CONFIG.replace("{UP}", up.addr).replace("{TMP}", str(tmp_path)).replace("{EXTRA}", EXTRA_ROUTE)
                           .replace('name: main', 'name: main2'))
            p = subprocess.run([sys.executable, "-m", "fastgw", "replay", "--config", str(new), access],
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 1, p.stderr
            first = p.stdout.splitlines()[0]
            assert first.startswith("replay: 5 requests, 3 decisions would change, 1 undecidable"), p.stdout
            assert "  GET /a: route main -> main2 (1 request)" in p.stdout
            assert "  GET /api/z: route main -> main2 (1 request)" in p.stdout and "/api/y" not in p.stdout
