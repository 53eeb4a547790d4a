"""bench/goals.py rules 4 and 5 (issue 23): a target is judged on at least five paired
rounds, a run whose rounds disagree is "noisy" (never "met", and it fails an enforced
bench), and a reference may come from another scenario (the policy chain's extra CPU
against the bare route's).  Pure functions over hand-made run records: no processes."""

from __future__ import annotations

from pathlib import Path

from bench import goals, stats


def _rec(scenario: str, config: str, rnd: int, rps: float, cpu: float = 10.0) -> dict:
    return {"scenario": scenario, "config": config, "round": rnd, "rps": rps, "valid": True, "problems": [],
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0}, "errors": 0, "non2xx": 0,
            "cpu_us_per_req": cpu}


def _verdicts(records: list[dict], text: str, tmp_path: Path) -> dict:
    f = tmp_path / "targets.yaml"
    f.write_text("targets:\n" + text)
    ran = {r["scenario"] for r in records}
    return {v["name"]: v for v in goals.check_all(records, stats.aggregate(records), [], ran, f)}


TPUT = "  - {name: tput, scenario: small-50, metric: rps, op: '>=', bound: '0.55 x nginx'}\n"


def test_steady_rounds_meet_and_the_spread_is_reported(tmp_path: Path) -> None:
    recs = [r for i, f in enumerate((0.60, 0.62, 0.58, 0.61, 0.60), 1)
            for r in (_rec("small-50", "nginx", i, 100.0), _rec("small-50", "fastgw", i, 100.0 * f))]
    v = _verdicts(recs, TPUT, tmp_path)["tput"]
    assert v["status"] == "met" and abs(v["value"] - 0.60) < 1e-9, v
    assert abs(v["spread"] - 0.04 / 0.60) < 1e-9 and "spread 7%" in v["detail"]


def test_rounds_that_disagree_are_noisy_even_when_the_median_passes(tmp_path: Path) -> None:
    # median 0.60 >= 0.55, but one round at 0.36 and one at 0.70: (0.70 - 0.36) / 0.60 = 57 %
    recs = [r for i, f in enumerate((0.60, 0.36, 0.70, 0.61, 0.58), 1)
            for r in (_rec("small-50", "nginx", i, 100.0), _rec("small-50", "fastgw", i, 100.0 * f))]
    v = _verdicts(recs, TPUT, tmp_path)["tput"]
    assert v["status"] == "noisy" and "spread 57%" in v["detail"], v
    assert v["status"] in goals.FAILING and v["status"] != "met"


def test_fewer_than_five_rounds_are_not_judged(tmp_path: Path) -> None:
    recs = [r for i in (1, 2, 3) for r in (_rec("small-50", "nginx", i, 100.0), _rec("small-50", "fastgw", i, 90.0))]
    v = _verdicts(recs, TPUT, tmp_path)["tput"]
    assert v["status"] == "too few rounds" and "3 paired round(s)" in v["detail"], v
    assert v["status"] in goals.FAILING


def test_policy_extra_cpu_is_judged_against_the_bare_scenario(tmp_path: Path) -> None:
    extra = ("  - {name: extra, scenario: policy, metric: cpu_us_per_req, op: '<=', bound: '1.30 x fastgw',"
             " ref_scenario: small-50}\n")
    bare = [_rec("small-50", "fastgw", i, 100.0, cpu=20.0) for i in range(1, 6)]
    cheap = [_rec("policy", "fastgw", i, 80.0, cpu=25.0) for i in range(1, 6)]    # +25 %
    dear = [_rec("policy", "fastgw", i, 60.0, cpu=30.0) for i in range(1, 6)]     # +50 %
    ok = _verdicts(bare + cheap, extra, tmp_path)["extra"]
    assert ok["status"] == "met" and ok["value"] == 1.25 and "small-50/fastgw" in ok["detail"], ok
    bad = _verdicts(bare + dear, extra, tmp_path)["extra"]
    assert bad["status"] == "missed" and bad["value"] == 1.5, bad
    # the reference scenario not run: not judged
    assert _verdicts(cheap, extra, tmp_path)["extra"]["status"] == "not run"


def test_shipped_targets_are_the_raised_ones() -> None:
    t = {x.name: x for x in goals.load()}
    assert t["bare route throughput"].bound == "0.55 x nginx"
    assert t["bare route CPU per request"].bound == "1.9 x nginx"
    assert t["policy chain throughput"].bound == "0.40 x nginx"
    extra = t["policy chain's extra CPU per request"]
    assert (extra.bound, extra.ref_scenario, extra.metric) == ("1.30 x fastgw", "small-50", "cpu_us_per_req")
