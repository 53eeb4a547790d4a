"""``python -m bench``: flags, the top-level flow, and the exit code.

Exit codes: 0 all good (or nothing enforced); 1 a target missed or a run invalid while
targets are enforced; 2 the bench could not run (a tool missing, a bad flag or file).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from bench import chart, goals, interp, nginx, pinning, report, scenarios, stats, wrk
from bench.session import Session

DEFAULT_OUT = Path(__file__).parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    names = ", ".join(s.name for s in scenarios.SCENARIOS)
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="fastgw side by side with nginx and the direct path; see docs/bench.md.",
        epilog=f"scenarios: {names}",
    )
    ap.add_argument("--quick", action="store_true",
                    help="short smoke run (small-50 only unless --scenarios, 1 round of 1 s); enforces nothing")
    ap.add_argument("--scenarios", help="comma-separated scenario names (default: all; --quick: small-50)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per scenario (default 5, the fewest a target is judged on; --quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per measured run (default 5; --quick 1)")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up before each run (default 1; --quick 0)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                    help="N of the N-worker scenario small-50-nw (default: the CPU count)")
    ap.add_argument("--out", type=Path, help="output directory (default bench/results/<timestamp>/)")
    ap.add_argument("--no-enforce", action="store_true", help="report targets but always exit 0 for them")
    ap.add_argument("--fixed-rate", type=float,
                    help="offered rate of the fixed-rate scenario (default: half of nginx's)")
    ap.add_argument("--max-fixed-rate", type=float, default=20000.0,
                    help="cap on the automatic fixed rate; the Python open-loop generator shares the load CPU")
    ap.add_argument("--keep", action="store_true",
                    help="keep each run's work directory (configs, server output, logs) in OUT/work")
    ap.add_argument("--docs", action="store_true",
                    help="record this run in docs/bench.md (Last full run), the one record of figures")
    ap.add_argument("--targets", type=Path, default=goals.TARGETS_FILE,
                    help="targets file (default bench/targets.yaml)")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else goals.MIN_ROUNDS)
    args.duration = args.duration or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if args.quick else 1.0)
    if args.rounds < 1 or args.duration < 1 or args.workers < 1:
        ap.error("--rounds, --duration and --workers must be at least 1")
    args.out = args.out or DEFAULT_OUT / time.strftime("%Y%m%d-%H%M%S")
    return args


def preflight_tools() -> list[str]:
    missing = []
    if not nginx.binary():
        missing.append("nginx")
    if not wrk.binary():
        missing.append("wrk")
    if not nginx.echo_module():
        missing.append("libnginx-mod-http-echo")
    return missing


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    selected = scenarios.select(args.scenarios, args.quick)
    try:
        goals.load(args.targets)
    except (OSError, ValueError) as e:
        print(f"bench: bad targets file: {e}", file=sys.stderr)
        return 2
    missing = preflight_tools()
    if missing:
        print(f"bench: missing {', '.join(missing)}: run scripts/install-bench-deps", file=sys.stderr)
        return 2
    raise_fd_limit()
    base = pinning.layout(1)
    if base.enabled:
        os.sched_setaffinity(0, base.load)  # the harness itself stays on the load side
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"bench: {len(selected)} scenario(s), {args.rounds} round(s) of {args.duration} s; output in {args.out}")
    python = interp.describe()
    print(f"bench: fastgw runs under {python['summary']}")
    if interp.unoptimized(python):
        print(f"bench: warning: {interp.UNOPTIMIZED_WARNING}", file=sys.stderr)
    session = Session(args, args.out)
    session.run(selected)

    agg = stats.aggregate(session.records)
    enforced = not (args.quick or args.no_enforce)
    verdicts = goals.check_all(session.records, agg, session.skipped, {s.name for s in selected}, args.targets)
    doc = {
        "machine": report.machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pinning": [layout.describe(w) for w, layout in sorted(session.layouts.items())],
        "fixed_rate": session.fixed_rate,
        "scenarios": {s.name: s.summary for s in selected},
        "summary": agg,
        "skipped": session.skipped,
        "targets": verdicts,
        "enforced": enforced,
        "runs": session.records,
    }
    report.write_json(args.out / "results.json", doc)
    md = report.markdown(doc)
    (args.out / "results.md").write_text(md)
    if args.docs:
        report.record(md)
    why_not = chart.write(args.out / "results.png", agg)
    print()
    print(md)
    print(f"bench: wrote {args.out / 'results.md'}, results.json" + (f"; {why_not}" if why_not else ", results.png"))

    failures = [f"target {t['status']}: {t['name']}: {t['detail']}" for t in verdicts if t["status"] in goals.FAILING]
    failures += [
        f"invalid: {scenario}/{config}: {'; '.join(cell['problems'])}"
        for scenario, cells in agg.items() for config, cell in cells.items() if not cell["valid"]
    ]
    note = "" if enforced else " (not enforced)"
    for f in failures:
        print(f"bench: {f}{note}", file=sys.stderr)
    if failures and enforced:
        return 1
    return 0
