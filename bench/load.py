"""The load generators behind one interface: wrk (closed loop) and openloop (fixed rate).

Rules:
  1. Both run pinned to the load CPUs and return the same ``Load`` record: completed
     requests, measured duration, socket errors, unexpected statuses, latency in ms.
  2. wrk uses one thread per load CPU (one on a 2-core machine); more threads than CPUs
     only add context switches to the core the upstream shares.
  3. ``Load.problems()`` lists what makes a run invalid: errors, unexpected statuses,
     no requests at all, or (open loop) a generator that could not keep its schedule.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import wrk
from bench.pinning import Layout
from bench.scenarios import Scenario

BEHIND_LIMIT_S = 0.050  # an open-loop tick later than this means the generator saturated


@dataclass
class Load:
    requests: int
    duration_s: float
    errors: int
    non2xx: int
    latency_ms: dict[str, float]
    detail: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def problems(self) -> list[str]:
        out = []
        if self.requests <= 0:
            out.append("no request completed")
        if self.errors:
            out.append(f"{self.errors} errors ({self.detail.get('error_kinds', 'socket')})")
        if self.detail.get("unanswered"):
            out.append(
                f"{self.detail['unanswered']} requests unanswered 5 s after the schedule ended"
                " (the server fell behind the offered rate)"
            )
        if self.non2xx:
            out.append(f"{self.non2xx} non-2xx answers")
        behind = self.detail.get("behind_s", 0.0)
        if behind > BEHIND_LIMIT_S:
            out.append(f"open-loop generator fell {behind * 1e3:.0f} ms behind its schedule (rate too high for it)")
        return out


def run_wrk(
    scenario: Scenario, port: int, duration: float, headers: dict[str, str], layout: Layout, log: Path
) -> Load:
    script = log.with_suffix(".lua")
    script.write_text(wrk.lua_script(scenario, headers))
    threads = max(1, min(len(layout.load), scenario.connections))
    url = f"http://127.0.0.1:{port}{scenario.path}"
    cmd = wrk.command(layout.prefix("load"), url, scenario.connections, threads, duration, script)
    r = wrk.run(cmd, log, timeout=duration + 60)
    kinds = ", ".join(f"{k} {v}" for k, v in r.errors.items() if v)
    return Load(
        requests=r.requests,
        duration_s=r.duration_s,
        errors=r.socket_errors,
        non2xx=r.status_errors,
        latency_ms=r.latency_ms,
        detail={"bytes": r.bytes, "error_kinds": kinds or "none"},
    )


def run_openloop(
    scenario: Scenario, port: int, duration: float, headers: dict[str, str], layout: Layout, log: Path,
    rate: float, env: dict,
) -> Load:
    cmd = [
        *layout.prefix("load"), sys.executable, "-m", "bench.openloop", "--port", str(port),
        "--path", scenario.path, "--rate", f"{rate:.0f}", "--duration", str(duration),
        "--connections", str(scenario.connections),
    ]
    for name, value in headers.items():
        cmd += ["--header", f"{name}: {value}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, env=env)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"openloop exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    d = json.loads(line[len("BENCH_JSON ") :])
    return Load(
        requests=d["requests"],
        duration_s=d["duration_s"],
        errors=d["errors"],
        non2xx=d["non2xx"],
        latency_ms=d["latency_ms"],
        detail={
            "offered_rate": d["offered_rate"],
            "achieved_rate": d["achieved_rate"],
            "behind_s": d["behind_s"],
            "client_connections_opened": d["connections_opened"],
            "unanswered": d.get("unanswered", 0),
            "error_kinds": "connect failed, connection lost mid-request, or unparsable response",
        },
    )
