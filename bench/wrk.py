"""wrk: the command line, the per-run Lua script, and its JSON summary.

Rules:
  1. The workload (method, headers, body, Connection: close) is set in a Lua script
     generated per scenario from static fields only -- no ``request()`` or
     ``response()`` callbacks, which would put Lua on every request and slow wrk down.
  2. The script's ``done()`` prints one JSON line (marked ``BENCH_JSON``) with the
     request count, duration, bytes, wrk's error counters and latency percentiles; the
     text output of ``--latency`` is kept in the run's work directory for reading.
  3. wrk counts a response with status >= 400 as an error (``status``); 3xx answers are
     caught by the preflight check (session.py), which requires a 200 with the expected
     body size from every configuration before any measured run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.scenarios import Scenario

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"status_errors":%d,' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def binary() -> str | None:
    return shutil.which("wrk")


def lua_script(scenario: Scenario, headers: dict[str, str]) -> str:
    """The per-scenario script (rule 1)."""
    lines = [f'wrk.method = "{scenario.method}"']
    for name, value in headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    if scenario.close:
        lines.append('wrk.headers["Connection"] = "close"')
    if scenario.body_size:
        lines.append(f'wrk.body = string.rep("b", {scenario.body_size})')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    return "\n".join(lines) + "\n" + _DONE


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int]
    status_errors: int  # responses with status >= 400
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(self.errors.values())


def parse(stdout: str) -> WrkResult:
    """The BENCH_JSON line printed by the script's done() (rule 2)."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON ") :])
            return WrkResult(
                requests=d["requests"],
                duration_s=d["duration_us"] / 1e6,
                bytes=d["bytes"],
                errors=d["errors"],
                status_errors=d["status_errors"],
                latency_ms={k: v / 1000.0 for k, v in d["latency_us"].items()},
            )
    raise ValueError(f"wrk printed no BENCH_JSON line:\n{stdout[-2000:]}")


def command(
    prefix: list[str], url: str, connections: int, threads: int, duration: float, script: Path
) -> list[str]:
    return [
        *prefix, binary() or "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", "5s", "--latency", "-s", str(script), url,
    ]


def run(cmd: list[str], log: Path, timeout: float) -> WrkResult:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return parse(proc.stdout)
