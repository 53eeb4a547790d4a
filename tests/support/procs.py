"""Helpers for the multi-process tests (supervisor, reload, drain, metrics, admin).

Built on ``tests.support.gateway`` (``Gateway``) and ``tests.support.upstream`` (``EchoUpstream``); everything is bounded: every
socket has a timeout, every wait has a deadline, load generators stop on their own.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import re
import signal
import socket
import threading
import time

import pytest

from tests.support.wire import read_to_close
from tests.support.gateway import Gateway

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: []
  drain: {delay: {DELAY}, timeout: {TIMEOUT}}
services:
  echo:
    url: "http://{UP}"
    routes:
      - path: "/*"
        name: main
        methods: ["GET", "HEAD", "POST"]
{EXTRA_SERVICES}
monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging:
    level: info
    access_log:
      enabled: false
"""


def config(up, *, delay: str = "1s", timeout: str = "5s", extra_services: str = "") -> str:
    return (CONFIG.replace("{UP}", up.addr).replace("{DELAY}", delay).replace("{TIMEOUT}", timeout)
            .replace("{EXTRA_SERVICES}", extra_services))


# ---------------------------------------------------------------------- admin API
def admin(gw: Gateway, path: str, *, method: str = "GET", timeout: float = 5.0, headers=None, body=None):
    """(status, headers, body) from the admin API (``/admin*``) or the probe/metrics listener."""
    port = gw.wait_admin(10.0)
    assert port, "no admin port announced:\n" + "\n".join(gw.stderr_lines[-30:])
    if path.startswith("/admin"):      # announced right after the probe listener, when configured
        port = gw.wait_api(1.0)
        assert port, "this gateway has no admin API: add `admin: {port: 0}` under `monitoring:` in its config"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def workers(gw: Gateway) -> dict:
    st, _, body = admin(gw, "/admin/workers")
    assert st == 200
    return json.loads(body)


def ready_workers(gw: Gateway) -> dict[int, int]:
    """slot -> pid of the workers in state ready."""
    return {w["slot"]: w["pid"] for w in workers(gw)["workers"] if w["state"] == "ready"}


def metrics_text(gw: Gateway) -> str:
    st, hd, body = admin(gw, "/metrics")
    assert st == 200, body
    assert hd["content-type"].startswith("text/plain; version=0.0.4")
    return body.decode()


_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def series(text: str, name: str) -> dict[str, float]:
    """{labels string: value} of every sample of ``name`` in an exposition text."""
    out = {}
    for line in text.splitlines():
        m = _SERIES.match(line)
        if m and m.group(1) == name:
            out[m.group(2) or ""] = float(m.group(3))
    return out


def requests_total(text: str, *, exclude_unrouted: bool = True) -> int:
    """Sum of fastgw_http_requests_total (without route "-", the health path and 404s)."""
    return int(sum(v for k, v in series(text, "fastgw_http_requests_total").items()
                   if not (exclude_unrouted and 'route="-"' in k)))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def rewrite(gw: Gateway, text: str) -> None:
    """Replace the gateway's config file atomically (rename), as a deploy tool would."""
    tmp = gw.config_path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, gw.config_path)


def hup(gw: Gateway) -> None:
    gw.signal(signal.SIGHUP)


def generation_everywhere(gw: Gateway, gen: int, n: int) -> bool:
    doc = workers(gw)
    ws = [w for w in doc["workers"] if w["state"] == "ready"]
    return doc["generation"] == gen and len(ws) >= n and all(w["generation"] == gen for w in ws)


def get(port: int, path: str, *, timeout: float = 5.0, headers: dict | None = None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


# ---------------------------------------------------------------------- load
class KeepAliveLoad:
    """``conns`` keep-alive connections sending ``GET path`` back to back from one asyncio
    loop in a thread, counting every request's outcome.

    ``ok``: 2xx answers; ``failed``: requests with no answer or a non-2xx one;
    ``closed``: connections the gateway closed (EOF, reset, or ``Connection: close``);
    with ``reconnect`` a failed connection is reopened, else it stops.
    """

    def __init__(self, host: str, port: int, *, conns: int = 50, path: str = "/load", reconnect: bool = False,
                 request_timeout: float = 5.0, max_seconds: float = 60.0) -> None:
        self.host, self.port, self.conns, self.path = host, port, conns, path
        self.reconnect = reconnect
        self.request_timeout = request_timeout
        self.max_seconds = max_seconds
        self.ok = 0
        self.failed = 0
        self.closed = 0
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.fail_times: list[float] = []
        self.ok_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._connected = threading.Event()
        self._n_connected = 0

    def __enter__(self) -> "KeepAliveLoad":
        self._thread.start()
        self._connected.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.request_timeout + 5)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        await asyncio.gather(*(self._conn(i, deadline) for i in range(self.conns)))

    async def _open(self):
        return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.request_timeout)

    async def _conn(self, i: int, deadline: float) -> None:
        req = (f"GET {self.path}?c={i} HTTP/1.1\r\nHost: t\r\n\r\n").encode()
        try:
            r, w = await self._open()
        except (OSError, asyncio.TimeoutError) as e:
            self.errors.append(f"connect: {e!r}")
            self.failed += 1
            self._count_connected()
            return
        self._count_connected()
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                w.write(req)
                status, close = await asyncio.wait_for(self._read_response(r), self.request_timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                self.failed += 1
                self.closed += 1
                self.fail_times.append(time.monotonic())
                self.errors.append(f"conn {i}: {e!r}")
                w.close()
                if not self.reconnect:
                    return
                try:
                    r, w = await self._open()
                except (OSError, asyncio.TimeoutError) as e2:
                    self.errors.append(f"reconnect: {e2!r}")
                    await asyncio.sleep(0.05)
                    try:
                        r, w = await self._open()
                    except (OSError, asyncio.TimeoutError):
                        return
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                self.ok += 1
                self.ok_times.append(time.monotonic())
            else:
                self.failed += 1
                self.fail_times.append(time.monotonic())
            if close:
                self.closed += 1
                w.close()
                if not self.reconnect:
                    return
                r, w = await self._open()
        w.close()

    def _count_connected(self) -> None:
        self._n_connected += 1
        if self._n_connected >= self.conns:
            self._connected.set()

    @staticmethod
    async def _read_response(r) -> tuple[int, bool]:
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v.strip())
            elif k == "connection" and "close" in v.lower():
                close = True
        if length:
            await r.readexactly(length)
        return status, close

    def snapshot(self) -> tuple[int, int]:
        return self.ok, self.failed


class NewConnLoad:
    """Threads sending one request per new connection (``Connection: close``), counting
    outcomes: what a load balancer without keep-alive does."""

    def __init__(self, host: str, port: int, *, threads: int = 4, path: str = "/new", timeout: float = 3.0) -> None:
        self.host, self.port, self.path, self.timeout = host, port, path, timeout
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "NewConnLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _run(self) -> None:
        req = f"GET {self.path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        while not self._stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                    s.sendall(req)
                    data = read_to_close(s)
                good = data.startswith(b"HTTP/1.1 200")
            except OSError as e:
                good = False
                with self._lock:
                    self.errors.append(repr(e))
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1


def supervisor_maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


PROMTOOL = shutil.which("promtool")


def promtool_check(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode() + "\n" + text[:3000]
