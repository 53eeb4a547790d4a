"""Starting, waiting for and stopping the processes of a bench run.

Rules:
  1. Every server is started in its own session (process group) with stdout and stderr
     going to files in the run's work directory, never to pipes that nobody drains.
  2. Stopping sends SIGTERM (or the server's fast-stop signal) to that process group,
     waits, then SIGKILL: only the processes this harness started are ever signalled.
  3. Readiness is observed, never slept for: a TCP connect that succeeds, or a line
     matching a pattern in the process's output file.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class StartError(RuntimeError):
    """A server did not come up; the message says why, with the tail of its output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Proc:
    """A started server: its Popen, and the files its output goes to."""

    popen: subprocess.Popen
    out: Path
    err: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return f"--- stdout ---\n{tail(self.out)}\n--- stderr ---\n{tail(self.err)}"

    def stop(self, timeout: float = 5.0, first: signal.Signals = signal.SIGTERM) -> None:
        """``first`` (SIGTERM) to the process group, then SIGKILL (rule 2)."""
        if self.popen.poll() is not None:
            return
        for sig, wait in ((first, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start(argv: list[str], workdir: Path, name: str, env: dict | None = None) -> Proc:
    """Start a server in its own process group with output in workdir/name.{out,err}."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fo,
            stderr=fe,
            start_new_session=True,
            env=env,
            cwd=workdir,
        )
    return Proc(popen, out, err, argv)


def wait_port(proc: Proc, port: int, timeout: float = 10.0) -> None:
    """Wait until 127.0.0.1:port accepts a connection (rule 3)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.argv[0]} exited with {proc.popen.returncode}\n{proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise StartError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s\n{proc.output()}")


def wait_line(proc: Proc, pattern: str, timeout: float = 15.0) -> re.Match:
    """Wait for a line matching ``pattern`` in the process's stdout file (rule 3)."""
    rx = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            m = rx.search(proc.out.read_text(errors="replace"))
        except OSError:
            m = None
        if m:
            return m
        if not proc.alive():
            raise StartError(f"exited with {proc.popen.returncode} before printing /{pattern}/\n{proc.output()}")
        time.sleep(0.02)
    raise StartError(f"no line matching /{pattern}/ after {timeout:.0f} s\n{proc.output()}")
