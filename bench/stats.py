"""Medians, min..max, and per-round ratios of the run records.

Rules:
  1. Per scenario and configuration, each metric is summarised over its rounds as
     median, min and max.  Only valid runs are summarised; the count of invalid runs
     and their reasons are kept beside, and a cell with any invalid run is invalid.
  2. Ratios (and the p99 difference) are computed per round, pairing the runs of the
     same round -- which ran back to back -- and then summarised as median, min, max.
     That is what makes them hold while the machine's speed drifts.
  3. Worst-case figures (errors, unexpected statuses, upstream connections opened,
     memory growth) also keep their maximum over all runs, valid or not.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

# (key in the summary, function of a run record) for the figures summarised per cell
METRICS = {
    "rps": lambda r: r["rps"],
    "p50_ms": lambda r: r["latency_ms"]["p50"],
    "p90_ms": lambda r: r["latency_ms"]["p90"],
    "p99_ms": lambda r: r["latency_ms"]["p99"],
    "cpu_us_per_req": lambda r: r.get("cpu_us_per_req"),
    "upstream_cpu_us_per_req": lambda r: r.get("upstream_cpu_us_per_req"),
    "mem_growth_uss_mib": lambda r: r.get("mem_growth_uss_mib"),
    "mem_growth_pss_mib": lambda r: r.get("mem_growth_pss_mib"),
    "mem_growth_per_worker_mib": lambda r: r.get("mem_growth_per_worker_mib"),
    "upstream_conns_opened": lambda r: r.get("upstream_conns_opened"),
    "errors": lambda r: r.get("errors"),
    "non2xx": lambda r: r.get("non2xx"),
    "foreign_cpu_share": lambda r: r.get("foreign_cpu_share"),
}
WORST = ("errors", "non2xx", "upstream_conns_opened", "mem_growth_per_worker_mib", "mem_growth_uss_mib")
# ratio name -> (metric, reference config, "ratio" or "diff")
RATIOS = {
    "rps_x_nginx": ("rps", "nginx", "ratio"),
    "rps_x_direct": ("rps", "direct", "ratio"),
    "rps_x_pyfloor": ("rps", "pyfloor", "ratio"),
    "cpu_x_nginx": ("cpu_us_per_req", "nginx", "ratio"),
    "p99_minus_nginx_ms": ("p99_ms", "nginx", "diff"),
}


def summary(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def value(rec: dict, metric: str):
    try:
        return METRICS[metric](rec)
    except (KeyError, TypeError):
        return None


def aggregate(records: list[dict]) -> dict:
    """{scenario: {config: cell}} where a cell holds metric summaries and ratios."""
    by_cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for rec in records:
        by_cell[(rec["scenario"], rec["config"])].append(rec)
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (scenario, config), recs in by_cell.items():
        valid = [r for r in recs if r["valid"]]
        cell = {
            "runs": len(recs),
            "invalid_runs": len(recs) - len(valid),
            "valid": len(valid) == len(recs) and bool(recs),
            "problems": sorted({p for r in recs for p in r["problems"]}),
            "workers": recs[0].get("workers"),
            "metrics": {m: summary([value(r, m) for r in valid]) for m in METRICS},
            "worst": {m: max((v for r in recs if (v := value(r, m)) is not None), default=None) for m in WORST},
            "requests": sum(r.get("requests", 0) for r in recs),
        }
        out[scenario][config] = cell
    for scenario, cells in out.items():
        for config, cell in cells.items():
            cell["ratios"] = {
                name: summary(paired(records, scenario, config, ref, metric, kind))
                for name, (metric, ref, kind) in RATIOS.items()
                if config != ref
            }
    return dict(out)


def paired(records: list[dict], scenario: str, config: str, ref: str, metric: str, kind: str,
           ref_scenario: str | None = None) -> list[float]:
    """Per-round ratio (kind 'ratio') or difference ('diff') of config against ref (rule 2);
    with ``ref_scenario``, ref's run of that scenario in the same round is the reference."""
    rounds: dict[int, dict[str, dict]] = defaultdict(dict)
    refs: dict[int, dict] = {}
    for rec in records:
        if rec["valid"]:
            if rec["scenario"] == scenario:
                rounds[rec["round"]][rec["config"]] = rec
            if ref_scenario is not None and rec["scenario"] == ref_scenario and rec["config"] == ref:
                refs[rec["round"]] = rec
    values = []
    for rnd, runs in rounds.items():
        a, b = runs.get(config), (runs.get(ref) if ref_scenario is None else refs.get(rnd))
        va, vb = (value(a, metric) if a else None), (value(b, metric) if b else None)
        if va is None or vb is None:
            continue
        if kind == "diff":
            values.append(va - vb)
        elif vb:
            values.append(va / vb)
    return values
