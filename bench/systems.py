"""The configurations under test: direct (the ceiling), nginx (the reference), pyfloor
(a feature-less Python proxy: what any Python proxy costs here, ``bench.floor``), fastgw.

Rules:
  1. A system is pluggable: ``check()`` says whether it can serve a scenario at all (None,
     or the reason it is skipped), ``start()`` returns a ``Running`` with the port to load
     and the root pid of the process tree whose CPU and memory are measured.
  2. Every start is fresh (one per run), pinned to the proxy CPUs of the layout, in a
     private work directory; ``Running.stop()`` stops exactly what was started.
  3. fastgw is started as its CLI contract says: ``python -m fastgw -c FILE --bind
     127.0.0.1:0 [--workers N]``, ready when it prints ``fastgw: listening on
     127.0.0.1:PORT``.  ``--workers`` is passed only when the CLI offers it, or when N > 1
     (a fastgw without it cannot run the N-worker scenario, which then skips).
  4. Whether fastgw supports a scenario's config is asked of fastgw itself
     (``--check -c FILE``), once per config kind, so the bench never has to know which
     features have landed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import fastgw_config, nginx, procs
from bench.pinning import Layout
from bench.scenarios import Scenario

REPO = Path(__file__).resolve().parent.parent


def python_env() -> dict[str, str]:
    """The environment for Python children: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Running:
    port: int
    root_pid: int | None  # None: nothing between the load and the upstream
    proc: procs.Proc | None = None
    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(first=self.stop_signal)


class Direct:
    name = "direct"

    def check(self, scenario: Scenario, workers: int = 1) -> str | None:
        return None

    def start(self, workdir: Path, scenario: Scenario, workers: int, layout: Layout, upstream_port: int) -> Running:
        return Running(upstream_port, None)


class Nginx:
    name = "nginx"

    def check(self, scenario: Scenario, workers: int = 1) -> str | None:
        return None if nginx.binary() else "nginx is not installed (scripts/install-bench-deps)"

    def start(self, workdir: Path, scenario: Scenario, workers: int, layout: Layout, upstream_port: int) -> Running:
        port = procs.free_port()
        conf = workdir / "nginx-proxy.conf"
        conf.write_text(nginx.proxy_conf(workdir, port, upstream_port, workers, scenario.connections,
                                         gzip_level=scenario.gzip_level, cache=scenario.fastgw_config == "cache"))
        proc = procs.start(layout.prefix("proxy") + nginx.command(workdir, conf), workdir, "nginx-proxy")
        try:
            procs.wait_port(proc, port)
        except procs.StartError:
            proc.stop()
            raise
        return Running(port, proc.pid, proc)


class Floor:
    """``bench.floor`` under this interpreter, one process (the scenarios that list it run
    one worker)."""

    name = "pyfloor"

    def check(self, scenario: Scenario, workers: int = 1) -> str | None:
        if workers != 1 or scenario.method != "GET" or scenario.fastgw_config != "bare":
            return "the Python floor is one process proxying bare GETs"
        return None

    def start(self, workdir: Path, scenario: Scenario, workers: int, layout: Layout, upstream_port: int) -> Running:
        argv = [sys.executable, "-m", "bench.floor", "--port", "0", "--upstream-port", str(upstream_port)]
        proc = procs.start(layout.prefix("proxy") + argv, workdir, "pyfloor", env=python_env())
        try:
            port = int(procs.wait_line(proc, r"pyfloor: listening on 127\.0\.0\.1:(\d+)").group(1))
            procs.wait_port(proc, port)
        except procs.StartError:
            proc.stop()
            raise
        return Running(port, proc.pid, proc, stop_signal=signal.SIGINT)


class Fastgw:
    name = "fastgw"

    def __init__(self) -> None:
        self._checked: dict[str, str | None] = {}
        self._has_workers_flag: bool | None = None

    def _cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fastgw", *args],
            capture_output=True, text=True, timeout=timeout, env=python_env(), cwd=REPO,
        )

    def has_workers_flag(self) -> bool:
        if self._has_workers_flag is None:
            try:
                self._has_workers_flag = "--workers" in self._cli("--help").stdout
            except (OSError, subprocess.TimeoutExpired):
                self._has_workers_flag = False
        return self._has_workers_flag

    def check(self, scenario: Scenario, workers: int = 1) -> str | None:
        """Rule 4: None when fastgw accepts the scenario's config, else the reason."""
        if workers > 1 and not self.has_workers_flag():
            return "fastgw has no --workers flag yet (the multi-process runtime)"
        kind = scenario.fastgw_config
        if kind not in self._checked:
            self._checked[kind] = self._check_kind(kind)
        return self._checked[kind]

    def _check_kind(self, kind: str) -> str | None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="fastgw-bench-check-") as tmp:
            cfg = fastgw_config.write(kind, Path(tmp) / "check.yaml", 1, Path(tmp) / "access.log", 50)
            try:
                proc = self._cli("--check", "-c", str(cfg))
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"fastgw --check did not run: {e}"
        if proc.returncode == 0:
            return None
        text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        detail = " | ".join(text[-4:]) if text else f"exit code {proc.returncode}"
        what = "the bare route"
        if kind == "policy":
            what = "the policy chain (JWT, RBAC, rate limit, CORS, security headers)"
        return f"fastgw refuses the {kind} config, so {what} is not built yet: {detail}"

    def start(self, workdir: Path, scenario: Scenario, workers: int, layout: Layout, upstream_port: int) -> Running:
        cfg = fastgw_config.write(
            scenario.fastgw_config, workdir / "fastgw.yaml", upstream_port, workdir / "access.log", scenario.connections
        )
        argv = [sys.executable, "-m", "fastgw", "-c", str(cfg), "--bind", "127.0.0.1:0"]
        if workers > 1 or self.has_workers_flag():
            argv += ["--workers", str(workers)]
        proc = procs.start(layout.prefix("proxy") + argv, workdir, "fastgw", env=python_env())
        try:
            m = procs.wait_line(proc, r"fastgw: listening on 127\.0\.0\.1:(\d+)")
            port = int(m.group(1))
            procs.wait_port(proc, port)
        except procs.StartError:
            proc.stop()
            raise
        return Running(port, proc.pid, proc, stop_signal=signal.SIGINT)  # INT: fast stop, TERM would drain


def all_systems() -> dict[str, object]:
    return {"direct": Direct(), "nginx": Nginx(), "pyfloor": Floor(), "fastgw": Fastgw()}
