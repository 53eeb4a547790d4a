"""Respawn after kill -9 (issue #17 item 4), with real processes: the supervisor preloads
the workers' modules, so a replacement serves within a fork and its own set-up.  The
figure (kill to first byte served) is measured by scripts/respawn_time.py; this test
asserts only a generous bound, the machine being shared."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.support.gateway import Gateway
from tests.support.procs import config, ready_workers
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timing, pytest.mark.timeout(60)]


def test_a_killed_worker_is_replaced_and_serving_quickly():
    with EchoUpstream() as up, Gateway(config(up), workers=1) as gw:
        pid = wait_for(lambda: ready_workers(gw).get(0))
        assert pid
        # the supervisor runs no thread of its own (preloading imports, it starts nothing)
        assert os.listdir(f"/proc/{gw.proc.pid}/task") == [str(gw.proc.pid)]
        assert gw.request("GET", "/warm")[0] == 200
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # queued on the slot's socket (kept by the supervisor) until the replacement accepts
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(b"GET /after-kill HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            first = s.recv(64)
        dt = time.monotonic() - t0
        assert first.startswith(b"HTTP/1.1 200"), first
        assert dt < 1.5, f"kill-to-first-served took {dt * 1000:.0f} ms"
        new = wait_for(lambda: ready_workers(gw).get(0))
        assert new and new != pid
        assert not [line for line in gw.stderr_lines if "preload:" in line]
