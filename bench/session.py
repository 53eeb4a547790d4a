"""A bench session: the upstream, then interleaved rounds over scenarios and configurations.

Rules:
  1. One upstream nginx (one worker, pinned with the load) serves the whole session.
  2. Rounds are interleaved over configurations and scenarios: round r runs every
     configuration of every scenario (A B C of small-50, then A B C of policy, ...)
     before round r+1 starts, so a drift in the machine's speed hits every
     configuration alike and per-round ratios hold, including a ratio between two
     scenarios (a target's ``ref_scenario``): its pair of runs is a minute apart, not
     a whole scenario's rounds.
  3. A configuration that cannot serve a scenario (``check()``) is skipped with its
     reason; a scenario whose fastgw config is not the bare route is skipped whole when
     fastgw refuses it (its nginx and direct figures alone would compare nothing).
  4. The fixed-rate scenario offers half of nginx's saturation rate, taken from this
     session's ``small-50`` runs before its first round when there are any (with
     rule 2, small-50's first round when it is listed first), else from a short nginx calibration
     run, and capped at ``--max-fixed-rate`` (the open-loop generator is Python and
     shares the load CPU); ``--fixed-rate`` sets it outright.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import fastgw_config, nginx, pinning, procs, runner
from bench.scenarios import BY_NAME, Scenario
from bench.systems import all_systems, python_env


@dataclass
class Upstream:
    proc: procs.Proc
    port: int
    status_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_upstream(workdir: Path, layout: pinning.Layout) -> Upstream:
    """Rule 1."""
    prefix = workdir / "upstream"
    prefix.mkdir(parents=True, exist_ok=True)
    nginx.write_static_files(prefix / "static")
    port, status_port = procs.free_port(), procs.free_port()
    conf = prefix / "upstream.conf"
    conf.write_text(nginx.upstream_conf(prefix, port, status_port, nginx.echo_module()))
    proc = procs.start(layout.prefix("load") + nginx.command(prefix, conf), prefix, "upstream")
    procs.wait_port(proc, port)
    procs.wait_port(proc, status_port)
    return Upstream(proc, port, status_port)


def scenario_headers(scenario: Scenario) -> dict[str, str]:
    if not scenario.headers:
        return {}
    token = fastgw_config.token() if any("{token}" in v for _, v in scenario.headers) else ""
    return {k: v.replace("{token}", token) for k, v in scenario.headers}


class Session:
    def __init__(self, opts, out: Path, log=print) -> None:
        self.opts = opts
        self.out = out
        self.log = log
        self.systems = all_systems()
        self.records: list[dict] = []
        self.skipped: list[dict] = []
        self.fixed_rate: float | None = None
        self.layouts: dict[int, pinning.Layout] = {}

    def layout(self, workers: int) -> pinning.Layout:
        if workers not in self.layouts:
            self.layouts[workers] = pinning.layout(workers)
            plural = "s" if workers > 1 else ""
            self.log(f"pinning ({workers} worker{plural}): {self.layouts[workers].describe(workers)}")
        return self.layouts[workers]

    def run(self, scenarios: list[Scenario]) -> None:
        base = self.layout(1)
        raw = self.out / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fastgw-bench-") as tmp:
            work = Path(tmp)
            upstream = start_upstream(work, base)
            if not nginx.echo_module():
                self.log("warning: the nginx echo module is missing, slow-1000 will fail (scripts/install-bench-deps)")
            try:
                plans = [p for p in (self.plan(s) for s in scenarios) if p is not None]
                for rnd in range(1, self.opts.rounds + 1):
                    for plan in plans:
                        self.run_round(plan, rnd, upstream, work, raw)
            finally:
                upstream.proc.stop()

    def plan(self, scenario: Scenario) -> dict | None:
        """What a scenario's rounds run (rule 3), or None when it is skipped whole."""
        workers = scenario.workers or self.opts.workers
        configs = []
        for name in scenario.configs:
            reason = self.systems[name].check(scenario, workers)
            if reason is None:
                configs.append(name)
                continue
            self.skip(scenario, name, reason)
            if name == "fastgw" and scenario.fastgw_config != "bare":
                for other in configs:
                    self.skip(scenario, other, "skipped with fastgw: the scenario measures a fastgw feature")
                return None
        return {"scenario": scenario, "workers": workers, "layout": self.layout(workers), "configs": configs,
                "headers": scenario_headers(scenario)}

    def run_round(self, plan: dict, rnd: int, upstream: Upstream, work: Path, raw: Path) -> None:
        """Round ``rnd`` of one scenario: each of its configurations once (rule 2)."""
        scenario, workers = plan["scenario"], plan["workers"]
        if "rate" not in plan:                      # its first round: rule 4 once
            plan["rate"] = rate = self.rate_for(scenario, upstream, work, raw)
            self.log(f"== {scenario.name}: {scenario.summary}" + (f" at {rate:,.0f} req/s offered" if rate else ""))
        rate = plan["rate"]
        for name in plan["configs"]:
            tag = f"{scenario.name}-r{rnd}-{name}"
            rec = runner.run_once(
                self.systems[name], scenario, workers=workers if name != "direct" else 0,
                layout=plan["layout"], workdir=(self.out / "work" if self.opts.keep else work) / tag,
                upstream=upstream, duration=self.opts.duration, warmup=self.opts.warmup, headers=plan["headers"],
                rate=rate, env=python_env(), raw_dir=raw, tag=tag, keep=self.opts.keep,
            )
            rec.update(scenario=scenario.name, round=rnd, offered_rate=rate)
            self.records.append(rec)
            self.log(f"  [{scenario.name} r{rnd}/{self.opts.rounds}] {line(rec)}")

    def skip(self, scenario: Scenario, config: str, reason: str) -> None:
        self.skipped.append({"scenario": scenario.name, "config": config, "reason": reason})
        self.log(f"  skip {scenario.name}/{config}: {reason}")

    def rate_for(self, scenario: Scenario, upstream: Upstream, work: Path, raw: Path) -> float | None:
        """Rule 4."""
        if scenario.generator != "openloop":
            return None
        if self.opts.fixed_rate:
            return float(self.opts.fixed_rate)
        if self.fixed_rate is None:
            rates = [
                r["rps"] for r in self.records
                if r["scenario"] == "small-50" and r["config"] == "nginx" and r["valid"]
            ]
            if not rates:
                rates = [self.calibrate(upstream, work, raw)]
            saturation = statistics.median(rates)
            self.fixed_rate = max(100.0, min(saturation / 2, self.opts.max_fixed_rate))
            self.log(
                f"fixed offered rate: {self.fixed_rate:,.0f} req/s (half of nginx's {saturation:,.0f} req/s"
                f" saturation, capped at {self.opts.max_fixed_rate:,.0f})"
            )
        return self.fixed_rate

    def calibrate(self, upstream: Upstream, work: Path, raw: Path) -> float:
        """nginx's saturation rate on small-50, for the fixed-rate scenario alone."""
        small = BY_NAME["small-50"]
        rec = runner.run_once(
            self.systems["nginx"], small, workers=1, layout=self.layout(1), workdir=work / "calibrate",
            upstream=upstream, duration=2.0, warmup=0.5, headers={}, rate=None, env=python_env(),
            raw_dir=raw, tag="calibrate-nginx",
        )
        if not rec["valid"]:
            raise RuntimeError(f"nginx calibration run failed: {'; '.join(rec['problems'])}")
        return rec["rps"]


def line(rec: dict) -> str:
    """One progress line for a run record."""
    if "rps" not in rec:
        return f"{rec['config']:<7} INVALID: {'; '.join(rec['problems'])}"
    parts = [
        f"{rec['config']:<7} {rec['rps']:>10,.0f} req/s",
        f"p99 {rec['latency_ms']['p99']:7.2f} ms",
    ]
    if "cpu_us_per_req" in rec:
        parts.append(f"cpu {rec['cpu_us_per_req']:6.1f} us/req")
        parts.append(f"mem {rec['mem_growth_uss_mib']:+.1f} MiB")
    parts.append(f"upstream conns {rec['upstream_conns_opened']}")
    if rec.get("pinning_problems"):
        parts.append("pinning not held: " + "; ".join(rec["pinning_problems"]))
    if rec.get("foreign_cpu_share", 0) > 0.05:
        parts.append(f"noisy: {rec['foreign_cpu_share']:.0%} of the proxy CPU taken by others")
    if not rec["valid"]:
        parts.append("INVALID: " + "; ".join(rec["problems"]))
    return "  ".join(parts)

