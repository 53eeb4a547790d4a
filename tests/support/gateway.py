"""Real processes for integration tests: the gateway as a subprocess, echo upstreams in threads.

    with EchoUpstream() as up, Gateway(CONFIG.replace("{UP}", up.addr)) as gw:
        status, headers, body = gw.request("GET", "/api/x", headers={...})
        assert up.requests[-1]["path"] == "/api/x"

Everything listens on 127.0.0.1 with ports chosen by the kernel; every process started
is stopped on exit (TERM, then KILL after a bound).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from tests.support import ROOT
from tests.support.config import ECHO_HEAD
from tests.support.upstream import FakeUpstream
from tests.support.waiting import wait_for

_LISTEN = re.compile(r"fastgw: listening on (\S+):(\d+)")
_ADMIN = re.compile(r"fastgw: admin listening on (\S+):(\d+)")          # probe/metrics listener
_ADMIN_API = re.compile(r"fastgw: admin API listening on (\S+):(\d+)")  # monitoring.admin


MINIMAL = ECHO_HEAD + """      - path: "/*"
        methods: ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
monitoring:
  metrics_port: 0
  logging:
    level: warning
"""


class Gateway:
    """``python -m fastgw`` on a config text, bound to 127.0.0.1:0."""

    def __init__(self, config_text: str, *, workers: int = 1, extra_args=(), env=None,
                 upstream: FakeUpstream | None = None, start_timeout: float = 15.0) -> None:
        if upstream is not None:
            config_text = config_text.replace("{UP}", upstream.addr)
        self.tmp = tempfile.TemporaryDirectory(prefix="fastgw-test-")
        self.config_path = os.path.join(self.tmp.name, "gateway.yaml")
        self.access_log = os.path.join(self.tmp.name, "access.log")
        config_text = config_text.replace("{ACCESS_LOG}", self.access_log).replace("{TMP}", self.tmp.name)
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.workers = workers
        self.extra_args = list(extra_args)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.env["PYTHONPATH"] = ROOT + os.pathsep + self.env.get("PYTHONPATH", "")
        self.start_timeout = start_timeout
        self.proc = None
        self.host = "127.0.0.1"
        self.port = 0
        self.admin_port = 0
        self.api_port = 0
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._ready = threading.Event()
        self._admin_ready = threading.Event()
        self._api_ready = threading.Event()

    # ------------------------------------------------------------------ process
    def start(self) -> "Gateway":
        cmd = [sys.executable, "-m", "fastgw", "-c", self.config_path, "--bind", "127.0.0.1:0",
               "--workers", str(self.workers), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                                     cwd=ROOT, text=True, bufsize=1)
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines, False), daemon=True).start()
        if not self._ready.wait(self.start_timeout):
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.stderr_lines[-40:]))
        return self

    def _pump(self, stream, lines, is_stdout) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            m = _LISTEN.search(line)
            if m and not self._ready.is_set():
                self.host, self.port = m.group(1), int(m.group(2))
                self._ready.set()
            m = _ADMIN.search(line)
            if m:
                self.admin_port = int(m.group(2))
                self._admin_ready.set()
            m = _ADMIN_API.search(line)
            if m:
                self.api_port = int(m.group(2))
                self._api_ready.set()
        if not self._ready.is_set():
            self._ready.set()

    def wait_admin(self, timeout: float = 10.0) -> int:
        """The probe/metrics listener's port (/livez, /readyz, /metrics)."""
        self._admin_ready.wait(timeout)
        return self.admin_port

    def wait_api(self, timeout: float = 10.0) -> int:
        """The admin API's port (monitoring.admin; /admin/*)."""
        self._api_ready.wait(timeout)
        return self.api_port

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            # fast stop in tests: INT, then KILL
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            self.tmp.cleanup()

    # ------------------------------------------------------------------ clients
    def conn(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
                timeout: float = 10.0):
        """One request on a new connection: (status, headers lower-case dict, body)."""
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def raw(self, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
        """Send raw bytes on a new connection; return everything read until close/timeout."""
        return raw_exchange(self.host, self.port, data, timeout=timeout, read_until_close=read_until_close)

    def access_lines(self) -> list[dict]:
        import json
        try:
            with open(self.access_log) as f:
                return [json.loads(x) for x in f if x.strip()]
        except FileNotFoundError:
            return []


def raw_exchange(host: str, port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(data)
        out = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return bytes(out)
    finally:
        s.close()


def flushed_access_lines(gw: Gateway, pred, timeout: float = 3.0) -> list[dict]:
    """Access log lines, waiting (the log is flushed on the worker's 1 s tick) until ``pred(lines)``."""
    lines: list[dict] = []

    def ok():
        nonlocal lines
        lines = gw.access_lines()
        return pred(lines)

    wait_for(ok, timeout, 0.05)
    return lines
