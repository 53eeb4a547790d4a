"""One measured run: start a configuration, check it, warm it up, measure, stop it.

Rules:
  1. Every run starts the system fresh, so memory growth is measured from that start's
     idle state and no run inherits another's pools or heap.
  2. Before any load, one request of the scenario (method, headers, body) must get a 200
     with the expected body size (decoded, and with the expected Content-Encoding, when
     the scenario compresses) (the preflight); otherwise the run is invalid and no
     load is sent.  This catches 3xx and truncated bodies that wrk does not count.  On
     the policy scenario fastgw must also answer 401 to the same request without its
     token, so a chain that is configured but not enforced never passes for a fast one.
  3. A warm-up at the scenario's concurrency precedes the measured window; CPU time and
     the noisy-neighbour figure are deltas over the measured window; upstream
     connections opened are counted in steady state, inside that window
     (``SteadyAccepts``).
  4. Memory (USS/PSS of the whole tree) is sampled at idle, then every 0.5 s during the
     measured window and once at its end; growth = peak - idle.
  5. A run is valid only with zero errors, zero unexpected statuses, and at least one
     request; the reasons are kept in ``problems``.
"""

from __future__ import annotations

import gzip
import http.client
import shutil
import threading
import time
import zlib
from pathlib import Path

from bench import load, nginx, pinning, procstats
from bench.pinning import Layout
from bench.scenarios import Scenario

MIB = 1024 * 1024


def preflight(port: int, scenario: Scenario, headers: dict[str, str]) -> str | None:
    """Rule 2: None when one request gets 200 and the expected body size."""
    body = b"b" * scenario.body_size if scenario.body_size else None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(scenario.method, scenario.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as e:
        return f"preflight {scenario.method} {scenario.path} failed: {e!r}"
    if scenario.expect_encoding:
        got = resp.getheader("content-encoding")
        if got != scenario.expect_encoding:
            return f"preflight {scenario.method} {scenario.path}: Content-Encoding {got!r}, expected {scenario.expect_encoding!r}"
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            return f"preflight {scenario.method} {scenario.path}: body does not decode: {e}"
    if resp.status != 200 or len(data) != scenario.expect_bytes:
        return (
            f"preflight {scenario.method} {scenario.path} got {resp.status} with {len(data)} body bytes,"
            f" expected 200 with {scenario.expect_bytes}: {data[:200]!r}"
        )
    return None


def preflight_denied(port: int, scenario: Scenario, headers: dict[str, str]) -> str | None:
    """The policy chain is really on: the same request without its token gets 401."""
    anonymous = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(scenario.method, scenario.path, headers=anonymous)
        status = conn.getresponse().status
        conn.close()
    except (OSError, http.client.HTTPException) as e:
        return f"preflight without a token failed: {e!r}"
    if status != 401:
        return f"the policy chain is not enforced: a request without a token got {status}, expected 401"
    return None


class SteadyAccepts(threading.Thread):
    """Upstream connections opened in steady state (rule 3).

    The upstream's accepted-connections counter is read every 0.25 s during the window,
    up to 10 % before its end (at most 0.5 s: the generator's abort of in-flight requests
    when it stops is left out).  Steady state starts at the first quarter-second in
    which no connection was opened: before it, the proxy is still ramping up (opening
    connections for its clients, or reopening those whose requests the warm-up
    aborted).  A proxy that churns connections all the time never has such a quiet
    interval, and then every connection opened in the window counts.
    """

    PERIOD = 0.25

    def __init__(self, status_port: int, duration: float) -> None:
        super().__init__(daemon=True)
        self.status_port = status_port
        self.until = duration - min(0.5, duration * 0.1)
        self.reads: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while True:
            self.reads.append(nginx.accepts(self.status_port))
            left = self.until - (time.monotonic() - t0)
            if left <= 0 or self.stop_event.wait(min(self.PERIOD, left)):
                return

    def finish(self) -> int | None:
        self.stop_event.set()
        self.join()
        r = self.reads
        if len(r) < 2:
            return None
        # between two reads, others opened r[i+1] - r[i] - 1 (the later read is one)
        quiet = next((i for i in range(len(r) - 1) if r[i + 1] - r[i] - 1 == 0), 0)
        return r[-1] - r[quiet] - (len(r) - 1 - quiet)


class MemSampler(threading.Thread):
    """Rule 4: peak USS/PSS of a tree while the load runs."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak = procstats.Mem(0, 0)
        self.stop_event = threading.Event()

    def sample(self) -> None:
        m = procstats.mem(procstats.tree(self.root))
        self.peak = procstats.Mem(max(self.peak.uss, m.uss), max(self.peak.pss, m.pss))

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            self.sample()

    def finish(self) -> procstats.Mem:
        self.stop_event.set()
        self.join()
        self.sample()
        return self.peak


def run_once(
    system, scenario: Scenario, *, workers: int, layout: Layout, workdir: Path, upstream,
    duration: float, warmup: float, headers: dict[str, str], rate: float | None, env: dict,
    raw_dir: Path, tag: str, keep: bool = False,
) -> dict:
    """One run of one configuration; returns its record (see report.py for the fields)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rec: dict = {"config": system.name, "workers": workers, "problems": []}
    running = None
    try:
        running = system.start(workdir, scenario, workers, layout, upstream.port)
        rec.update(_measure(
            system.name, running, scenario, layout, upstream, duration, warmup, headers, rate, env, raw_dir, tag
        ))
    except Exception as e:  # a run that cannot start or measure is invalid, never fatal
        rec["problems"].append(f"{type(e).__name__}: {e}")
    finally:
        if running is not None:
            running.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if "mem_growth_uss_mib" in rec:
        rec["mem_growth_per_worker_mib"] = rec["mem_growth_uss_mib"] / workers
    rec["valid"] = not rec["problems"]
    return rec


def _generate(scenario, port, seconds, headers, layout, log, rate, env) -> load.Load:
    if scenario.generator == "openloop":
        return load.run_openloop(scenario, port, seconds, headers, layout, log, rate or 1000.0, env)
    return load.run_wrk(scenario, port, seconds, headers, layout, log)


def _measure(
    system_name, running, scenario, layout, upstream, duration, warmup, headers, rate, env, raw_dir, tag
) -> dict:
    rec: dict = {"problems": []}
    root = running.root_pid
    problem = preflight(running.port, scenario, headers)
    if problem is None and system_name == "fastgw" and scenario.fastgw_config == "policy":
        problem = preflight_denied(running.port, scenario, headers)
    if problem:
        rec["problems"].append(problem)
        return rec
    if root is not None:
        rec["pinning_problems"] = pinning.verify(procstats.tree(root), layout.proxy) if layout.enabled else []
        time.sleep(0.3)  # let start-up settle: idle is after one request, before any load
        idle = procstats.mem(procstats.tree(root))
    if warmup > 0:
        _generate(scenario, running.port, warmup, headers, layout, raw_dir / f"{tag}-warmup.txt", rate, env)
    up_pids = procstats.tree(upstream.pid)
    accepts0 = nginx.accepts(upstream.status_port)
    up_cpu0 = procstats.cpu(up_pids)
    busy0 = procstats.cpu_busy(layout.proxy)
    sampler = None
    if root is not None:
        pids = procstats.tree(root)
        cpu0 = procstats.cpu(pids)
        sampler = MemSampler(root)
        sampler.start()
    steady = SteadyAccepts(upstream.status_port, duration)
    steady.start()
    t0 = time.monotonic()
    result = _generate(scenario, running.port, duration, headers, layout, raw_dir / f"{tag}.txt", rate, env)
    wall = time.monotonic() - t0
    busy = procstats.cpu_busy(layout.proxy) - busy0
    up_cpu = procstats.cpu(up_pids) - up_cpu0
    steady_opened = steady.finish()
    accepts1 = nginx.accepts(upstream.status_port)
    n = max(1, result.requests)
    rec.update(
        requests=result.requests,
        duration_s=result.duration_s,
        rps=result.rps,
        latency_ms=result.latency_ms,
        errors=result.errors,
        non2xx=result.non2xx,
        load=result.detail,
        upstream_conns_opened=steady_opened,
        upstream_conns_window=accepts1 - accepts0 - 1 - len(steady.reads),
        upstream_cpu_us_per_req=up_cpu.total / n * 1e6,
    )
    rec["problems"].extend(result.problems())
    proxy_cpu = 0.0
    if root is not None:
        cpu = procstats.cpu(procstats.tree(root)) - cpu0
        proxy_cpu = cpu.total
        peak = sampler.finish()
        growth = peak - idle
        rec.update(
            cpu_us_per_req=cpu.total / n * 1e6,
            cpu_user_s=cpu.user,
            cpu_sys_s=cpu.system,
            proxy_cpu_util=cpu.total / wall if wall else 0.0,
            mem_idle_uss_mib=idle.uss / MIB,
            mem_idle_pss_mib=idle.pss / MIB,
            mem_growth_uss_mib=growth.uss / MIB,
            mem_growth_pss_mib=growth.pss / MIB,
        )
    if root is not None and layout.enabled and not layout.shared:
        # other processes and interrupts on the proxy's CPUs during the window
        rec["foreign_cpu_share"] = max(0.0, busy - proxy_cpu) / wall / len(layout.proxy) if wall else 0.0
    return rec
