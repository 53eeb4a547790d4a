"""The bench keeps working: ``python -m bench --quick`` end to end, as CI runs it.

Starts the real upstream nginx, the nginx reverse proxy, the Python floor (bench/floor.py)
and fastgw, loads each with wrk for a second, and checks the JSON: the four configurations
are there, valid, with requests, and fastgw's ratio to the floor is reported.  No timing is asserted.  Skips (saying what to install) when nginx, its echo
module or wrk is missing; fails when fastgw accepts its bare-route config but then does
not serve the load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT  # noqa: E402

REPO = Path(ROOT)
if str(REPO) not in sys.path:  # the bench package is not installed, it runs from the checkout
    sys.path.insert(0, str(REPO))


def _missing_tools() -> list[str]:
    missing = []
    if not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)):
        missing.append("nginx")
    if not os.path.exists("/usr/lib/nginx/modules/ngx_http_echo_module.so"):
        missing.append("libnginx-mod-http-echo")
    if not shutil.which("wrk"):
        missing.append("wrk")
    return missing


@pytest.mark.timeout(120)
def test_bench_quick(tmp_path: Path) -> None:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"bench tools missing: {', '.join(missing)} (scripts/install-bench-deps)")
    out = tmp_path / "bench"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-enforce", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )
    log = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, log
    doc = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("# fastgw bench"), log

    cells = doc["summary"]["small-50"]
    assert set(cells) == {"direct", "nginx", "pyfloor", "fastgw"}, (sorted(cells), doc["skipped"], log)
    assert cells["fastgw"]["ratios"]["rps_x_pyfloor"]["median"] > 0, log
    assert "- small-50: fastgw " in (out / "results.md").read_text(), log
    for config, cell in cells.items():
        assert cell["valid"], (config, cell["problems"], log)
        assert cell["requests"] > 0, (config, log)
    for rec in doc["runs"]:
        assert rec["requests"] > 0 and rec["errors"] == 0 and rec["non2xx"] == 0, rec
    proxied = [r for r in doc["runs"] if r["config"] != "direct"]
    assert all(r["cpu_us_per_req"] > 0 for r in proxied), proxied
    assert {t["status"] for t in doc["targets"]} <= {"met", "missed", "noisy", "too few rounds", "skipped", "not run"}


# -- the pure parts: how targets are read and judged (no processes) ---------------------

def _rec(scenario: str, config: str, rnd: int, rps: float, **kw) -> dict:
    rec = {"scenario": scenario, "config": config, "round": rnd, "rps": rps, "valid": True, "problems": [],
           "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": kw.pop("p99", 3.0)}, "errors": 0, "non2xx": 0}
    rec.update(kw)
    return rec


def test_targets_are_judged_on_per_round_ratios_and_worst_runs(tmp_path: Path) -> None:
    from bench import goals, stats

    # nginx drifts from 100 to 50 between rounds; fastgw stays at 0.6 x in each round
    # (five rounds: the fewest a ratio target is judged on)
    records = [
        _rec("small-50", "nginx", 1, 100.0), _rec("small-50", "fastgw", 1, 60.0),
        _rec("small-50", "nginx", 2, 50.0), _rec("small-50", "fastgw", 2, 30.0),
        *(_rec("small-50", c, r, 80.0 * (0.6 if c == "fastgw" else 1.0)) for r in (3, 4, 5) for c in ("nginx", "fastgw")),
        *(_rec("fixed-rate", c, r, 10.0, p99=2.0 if c == "nginx" else 3.5) for r in range(1, 6) for c in ("nginx", "fastgw")),
        _rec("slow-1000", "fastgw", 1, 10.0, upstream_conns_opened=0),
        _rec("slow-1000", "fastgw", 2, 10.0, upstream_conns_opened=3),
    ]
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n"
        "  - {name: tput, scenario: small-50, metric: rps, op: '>=', bound: '0.55 x nginx'}\n"
        "  - {name: p99, scenario: fixed-rate, metric: p99_ms, op: '<=', bound: 'nginx + 1.0'}\n"
        "  - {name: conns, scenario: slow-1000, metric: upstream_conns_opened, op: '<=', bound: 0}\n"
        "  - {name: policy, scenario: policy, metric: rps, op: '>=', bound: '0.35 x nginx'}\n"
    )
    agg = stats.aggregate(records)
    assert agg["small-50"]["fastgw"]["ratios"]["rps_x_nginx"]["median"] == 0.6
    ran = {"small-50", "fixed-rate", "slow-1000"}
    verdicts = {v["name"]: v for v in goals.check_all(records, agg, [], ran, targets)}
    assert verdicts["tput"]["status"] == "met", verdicts["tput"]
    assert verdicts["p99"]["status"] == "missed" and verdicts["p99"]["value"] == 1.5
    assert verdicts["conns"]["status"] == "missed" and verdicts["conns"]["value"] == 3  # worst run
    assert verdicts["policy"]["status"] == "not run"

    # an invalid run anywhere in the scenario can never meet a target
    records[0].update(valid=False, problems=["3 errors"])
    agg = stats.aggregate(records)
    verdict = goals.check_all(records, agg, [], ran, targets)[0]
    assert verdict["status"] == "missed" and "invalid" in verdict["detail"]
    # a feature fastgw lacks is a skip, not a miss
    skipped = [{"scenario": "small-50", "config": "fastgw", "reason": "not built"}]
    assert goals.check_all(records, agg, skipped, ran, targets)[0]["status"] == "skipped"


def test_shipped_targets_file_loads_and_pinning_renders() -> None:
    from bench import goals, pinning

    assert {t.scenario for t in goals.load()} >= {"small-50", "policy", "fixed-rate", "slow-1000", "newconn"}
    assert pinning.cpu_list((0, 1, 2, 5)) == "0-2,5"
    two = pinning.layout(1, cpus=(0, 1))
    if two.enabled:
        assert (two.load, two.proxy, two.shared) == ((0,), (1,), False)
        assert pinning.layout(2, cpus=(0, 1)).shared
        assert pinning.layout(2, cpus=(0, 1, 2)).proxy == (1, 2)
