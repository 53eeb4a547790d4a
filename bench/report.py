"""The Markdown and JSON writers, and the machine description they both carry.

Rules:
  1. The JSON file holds everything: the machine, the options, the pinning, every run
     record, the per-cell summaries, the skips and the target verdicts.  The Markdown
     table is a view of it for people; nothing is in the table that is not in the JSON.
  2. Cells show the median with min..max over the rounds; a cell with an invalid run
     says INVALID with the reason instead of a throughput, so it can never read as fast.
  3. The header says what ran where: CPU model, cores, kernel, versions, the pinning, and
     the interpreter fastgw ran under with its build (PGO, LTO, libpython linkage; see
     bench/interp.py), with a warning when that build is known to be unoptimized.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from bench import interp, nginx, wrk

CONFIG_ORDER = ("direct", "nginx", "pyfloor", "fastgw")


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    here = Path(__file__).parent
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=here).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "../fastgw"], capture_output=True, text=True,
                           cwd=here).stdout.strip()
    if rev and dirty:
        rev += " + uncommitted changes in fastgw/"
    wrk_version = ""
    if wrk.binary():
        out = subprocess.run([wrk.binary(), "-v"], capture_output=True, text=True)
        wrk_version = (out.stdout + out.stderr).split("\n")[0].strip()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "interpreter": interp.describe(),
        "nginx": nginx.version(),
        "wrk": wrk_version,
        "fastgw_commit": rev or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")


def _range(s: dict | None, fmt: str, scale: float = 1.0) -> str:
    if not s:
        return "-"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s["n"] == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(lo, fmt)}..{format(hi, fmt)})"


def _ratio(s: dict | None, diff: bool = False) -> str:
    if not s:
        return "-"
    fmt = "+.2f" if diff else ".2f"
    suffix = "" if diff else " x"
    if s["n"] == 1:
        return f"{format(s['median'], fmt)}{suffix}"
    return f"{format(s['median'], fmt)}{suffix} ({format(s['min'], fmt)}..{format(s['max'], fmt)})"


def _row(scenario: str, config: str, cell: dict) -> str:
    m, r = cell["metrics"], cell["ratios"]
    workers = f" ({cell['workers']}w)" if cell.get("workers", 0) > 1 else ""
    name = f"{config}{workers}"
    if not cell["valid"]:
        reason = "; ".join(cell["problems"])[:300].replace("|", "/")
        return f"| {scenario} | {name} | INVALID ({cell['invalid_runs']}/{cell['runs']} runs): {reason} |" + " |" * 8
    worst = cell["worst"]
    mem = "-"
    if m.get("mem_growth_uss_mib"):
        mem = f"{m['mem_growth_uss_mib']['median']:.1f} / {m['mem_growth_pss_mib']['median']:.1f}"
    return "| " + " | ".join([
        scenario, name,
        _range(m["rps"], ",.0f"),
        _ratio(r.get("rps_x_nginx")), _ratio(r.get("rps_x_direct")),
        f"{m['p50_ms']['median']:.2f} / {m['p90_ms']['median']:.2f} / {m['p99_ms']['median']:.2f}",
        _range(m["cpu_us_per_req"], ".1f"), _ratio(r.get("cpu_x_nginx")),
        mem,
        str(worst["upstream_conns_opened"]) if worst["upstream_conns_opened"] is not None else "-",
        f"{worst['errors'] or 0} / {worst['non2xx'] or 0}",
    ]) + " |"


def markdown(doc: dict) -> str:
    mach, opts = doc["machine"], doc["options"]
    lines = [
        f"# fastgw bench, {mach['date']}",
        "",
        f"- Machine: {mach['cpu_model']}, {mach['cpus']} CPUs, {mach['memory_gib']} GiB, Linux {mach['kernel']};"
        f" Python {mach['python']}, nginx {mach['nginx']}, {mach['wrk']}; fastgw at {mach['fastgw_commit']}",
    ]
    if mach.get("interpreter"):
        lines.append(f"- Interpreter of fastgw (and of the open-loop generator): {mach['interpreter']['summary']}")
        if interp.unoptimized(mach["interpreter"]):
            lines.append(f"- **Warning**: {interp.UNOPTIMIZED_WARNING}")
    lines += [
        f"- Runs: {opts['rounds']} interleaved round(s) of {opts['duration']} s after a {opts['warmup']} s warm-up,"
        " each configuration started fresh per run",
    ]
    lines += [f"- Pinning: {p}" for p in doc["pinning"]]
    if doc.get("fixed_rate"):
        lines.append(f"- Fixed offered rate: {doc['fixed_rate']:,.0f} req/s (open-loop generator, bench/openloop.py)")
    lines += [
        "",
        "Medians over rounds, (min..max) when more than one round. Ratios are per-round ratios. CPU is the proxy's"
        " CPU time per request over all its processes; memory is growth over idle (USS / PSS, MiB, whole proxy);"
        " upstream conns = connections the upstream accepted in steady state (worst run; for direct, the"
        " client's own). fixed-rate: req/s is what was answered of the offered rate.",
        "",
        "| scenario | config | req/s | x nginx | x direct | p50 / p90 / p99 ms | CPU us/req | CPU x nginx"
        " | mem growth MiB | upstream conns | errors / non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, cells in doc["summary"].items():
        for config in sorted(cells, key=lambda c: CONFIG_ORDER.index(c) if c in CONFIG_ORDER else 99):
            lines.append(_row(scenario, config, cells[config]))
    floor = [(sc, cells["fastgw"]["ratios"]["rps_x_pyfloor"], cells["pyfloor"]["ratios"].get("rps_x_nginx"))
             for sc, cells in doc["summary"].items()
             if "pyfloor" in cells and cells.get("fastgw", {}).get("ratios", {}).get("rps_x_pyfloor")]
    if floor:
        lines += ["", "pyfloor is a feature-less uvloop + httptools proxy (bench/floor.py): what any Python proxy"
                  " reaches on this machine and interpreter. fastgw against it, in the same rounds:"]
        lines += [f"- {sc}: fastgw {_ratio(f)} pyfloor's req/s (pyfloor itself {_ratio(n)} nginx)" for sc, f, n in floor]
    if doc["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s['scenario']} / {s['config']}: {s['reason']}" for s in doc["skipped"]]
    if doc.get("targets"):
        lines += ["", "## Targets (bench/targets.yaml)", ""]
        if not doc["enforced"]:
            lines.append("Not enforced in this run (--quick or --no-enforce).")
            lines.append("")
        for t in doc["targets"]:
            lines.append(f"- **{t['status']}** {t['name']} ({t['scenario']}, {t['metric']}): {t['detail']}")
    noisy = [r for r in doc["runs"] if (r.get("foreign_cpu_share") or 0) > 0.05]
    if noisy:
        lines += ["", f"Noisy neighbours: in {len(noisy)} run(s) other processes took more than 5 % of the proxy's"
                  " CPU; trust CPU per request over requests/s there."]
    return "\n".join(lines) + "\n"


DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench.md"
DOCS_START = "<!-- bench:last-run:start (written by python -m bench --docs) -->"
DOCS_END = "<!-- bench:last-run:end -->"


def record(md: str, path: Path = DOCS) -> None:
    """Put a run's report (without its title) between the markers of docs/bench.md's
    "Last full run": the one record of the figures."""
    text = path.read_text()
    a, b = text.index(DOCS_START) + len(DOCS_START), text.index(DOCS_END)
    body = md.split("\n", 1)[1] if md.startswith("# ") else md
    path.write_text(text[:a] + "\n" + body.strip() + "\n" + text[b:])
