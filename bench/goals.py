"""bench/targets.yaml: loading the targets and checking them against a session.

Rules (the file's header says the same for its readers):
  1. ``bound: "R x CONFIG"`` is a ratio to CONFIG in the same session, checked on the
     median of the per-round ratios; ``"CONFIG + D"`` is an offset, checked on the median
     of the per-round differences; a plain number is absolute, checked on the worst run.
  2. Every verdict is one of: met, missed, skipped (fastgw lacks the feature), not run
     (the scenario was not selected).  Only ``missed`` fails the bench.
  3. A scenario with any invalid run, in any configuration, cannot meet a target: an
     invalid run is never reported as fast.
  4. A ratio or offset target is judged on at least ``MIN_ROUNDS`` paired rounds (fewer:
     "too few rounds"), and only when the rounds agree: per-round ratios that spread
     more than ``NOISE_SPREAD`` of their median ((max - min) / median) make the verdict
     "noisy", whatever the median says.  Neither is ever "met"; both fail an enforced
     bench, like "missed" (issue 23: a noisy run once reported the policy target met).
  5. ``ref_scenario``: the reference figure comes from another scenario (same round
     number), e.g. the policy route's CPU per request against the bare route's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import stats

TARGETS_FILE = Path(__file__).with_name("targets.yaml")
_RATIO = re.compile(r"^\s*([0-9.]+)\s*x\s*([\w-]+)\s*$")
_OFFSET = re.compile(r"^\s*([\w-]+)\s*\+\s*([0-9.]+)\s*$")
MIN_ROUNDS = 5        # paired rounds a ratio or offset target needs (rule 4)
NOISE_SPREAD = 0.15   # (max - min) / median of the per-round ratios above this: noisy
FAILING = ("missed", "noisy", "too few rounds")  # verdicts that fail an enforced bench


@dataclass(frozen=True)
class Target:
    name: str
    scenario: str
    metric: str
    op: str
    bound: str | float
    config: str = "fastgw"
    ref_scenario: str | None = None  # the reference's scenario (default: the same)


def load(path: Path = TARGETS_FILE) -> list[Target]:
    data = yaml.safe_load(path.read_text()) or {}
    targets = []
    for i, t in enumerate(data.get("targets") or []):
        try:
            target = Target(**t)
        except TypeError as e:
            raise ValueError(f"{path}: targets[{i}]: {e}") from None
        if target.op not in (">=", "<="):
            raise ValueError(f"{path}: targets[{i}] ({target.name}): op must be '>=' or '<=', got {target.op!r}")
        if target.metric not in stats.METRICS:
            raise ValueError(f"{path}: targets[{i}] ({target.name}): unknown metric {target.metric!r}")
        numeric = isinstance(target.bound, (int, float))
        if not numeric and not (_RATIO.match(target.bound) or _OFFSET.match(target.bound)):
            raise ValueError(
                f"{path}: targets[{i}] ({target.name}): bound must be 'R x CONFIG', 'CONFIG + D' or a number"
            )
        targets.append(target)
    return targets


def _ok(value: float, op: str, limit: float) -> bool:
    return value >= limit if op == ">=" else value <= limit


def check(target: Target, records: list[dict], agg: dict, skipped: list[dict], ran: set[str],
          min_rounds: int = MIN_ROUNDS) -> dict:
    """The verdict on one target (rules 1-5)."""
    verdict = {"name": target.name, "scenario": target.scenario, "metric": target.metric,
               "op": target.op, "bound": target.bound, "value": None}

    def done(status: str, detail: str) -> dict:
        return {**verdict, "status": status, "detail": detail}

    if target.scenario not in ran or (target.ref_scenario is not None and target.ref_scenario not in ran):
        return done("not run", "scenario not selected")
    skip = next((s for s in skipped if s["scenario"] == target.scenario and s["config"] == target.config), None)
    if skip:
        return done("skipped", skip["reason"])
    cells = agg.get(target.scenario, {})
    if target.config not in cells:
        return done("missed", f"no {target.config} figures in {target.scenario}")
    if target.ref_scenario is not None:
        cells = {**{f"{target.ref_scenario}/{c}": cell for c, cell in agg.get(target.ref_scenario, {}).items()},
                 **cells}
    bad = [f"{c}: {'; '.join(cell['problems'])}" for c, cell in cells.items() if not cell["valid"]]
    if bad:
        return done("missed", f"invalid run(s) in {target.scenario}: " + " | ".join(bad))

    bound = target.bound
    if isinstance(bound, (int, float)):
        runs = [r for r in records if r["scenario"] == target.scenario and r["config"] == target.config]
        values = [v for r in runs if (v := stats.value(r, target.metric)) is not None]
        if not values:
            return done("missed", f"no {target.metric} figure")
        worst = max(values) if target.op == "<=" else min(values)
        verdict["value"] = worst
        text = f"worst of {len(values)} runs: {worst:g} (target {target.op} {bound:g})"
        return done("met" if _ok(worst, target.op, float(bound)) else "missed", text)

    m = _RATIO.match(bound)
    if m:
        limit, ref, kind = float(m.group(1)), m.group(2), "ratio"
    else:
        m = _OFFSET.match(bound)
        ref, limit, kind = m.group(1), float(m.group(2)), "diff"
    values = stats.paired(records, target.scenario, target.config, ref, target.metric, kind,
                          ref_scenario=target.ref_scenario)
    if target.ref_scenario is not None:
        ref = f"{target.ref_scenario}/{ref}"
    if not values:
        return done("missed", f"no paired {target.config}/{ref} rounds for {target.metric}")
    s = stats.summary(values)
    verdict["value"] = s["median"]
    if kind == "ratio":
        text = f"{s['median']:.2f} x {ref} (rounds {s['min']:.2f}..{s['max']:.2f}; target {target.op} {bound})"
    else:
        text = f"{ref} {s['median']:+.2f} (rounds {s['min']:+.2f}..{s['max']:+.2f}; target {target.op} {bound})"
    if s["n"] < min_rounds:
        return done("too few rounds", f"{text}: {s['n']} paired round(s), the verdict needs {min_rounds}")
    if kind == "ratio":
        spread = (s["max"] - s["min"]) / s["median"] if s["median"] else float("inf")
        verdict["spread"] = spread
        if spread > NOISE_SPREAD:
            return done("noisy", f"{text}: rounds spread {spread:.0%} of the median, over {NOISE_SPREAD:.0%}")
        text += f", spread {spread:.0%}"
    return done("met" if _ok(s["median"], target.op, limit) else "missed", text)


def check_all(
    records: list[dict], agg: dict, skipped: list[dict], ran: set[str], path: Path = TARGETS_FILE,
    min_rounds: int = MIN_ROUNDS,
) -> list[dict]:
    return [check(t, records, agg, skipped, ran, min_rounds) for t in load(path)]
