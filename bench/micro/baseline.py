"""The committed baseline of instructions per exchange, keyed by interpreter build.

``python -m bench.micro.instructions`` compares what it counts with
``bench/micro/instructions-baseline.json``: one set of counts per interpreter build
(implementation, version, PGO, LTO, as ``bench.interp`` reports them), because the same
code costs a different number of instructions under a PGO/LTO build.  A count above its
baseline by more than the file's ``tolerance`` (a fraction) is a missed target; a count
below it is an improvement to record with ``--update-baseline``.  A build with no
baseline is reported, not failed.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import interp

FILE = Path(__file__).with_name("instructions-baseline.json")
DEFAULT_TOLERANCE = 0.02   # callgrind counts are deterministic; 2 % covers hash seeds and library builds


def build_key(info: dict | None = None) -> str:
    info = info or interp.describe()
    return f"{info['implementation']} {info['version']}, PGO {info['pgo']}, LTO {info['lto']}"


def load(path: Path = FILE) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"tolerance": DEFAULT_TOLERANCE, "builds": {}}


def verdict(route: str, count: float, doc: dict, key: str) -> tuple[str, bool]:
    """(the line to print after the count, whether the target is missed)."""
    base = doc.get("builds", {}).get(key, {}).get(route)
    if base is None:
        return "no baseline for this build", False
    tol = float(doc.get("tolerance", DEFAULT_TOLERANCE))
    change = count / base - 1
    missed = change > tol
    state = "MISSED" if missed else "met"
    return f"baseline {base:,.0f} ({change:+.1%}; target at most {tol:+.0%}): {state}", missed


def update(counts: dict[str, float], key: str, path: Path = FILE) -> None:
    doc = load(path)
    doc.setdefault("tolerance", DEFAULT_TOLERANCE)
    doc.setdefault("builds", {}).setdefault(key, {}).update({r: round(c) for r, c in counts.items()})
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
