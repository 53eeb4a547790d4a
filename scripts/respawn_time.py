#!/usr/bin/env python3
"""Kill-to-first-served: how long a slot serves nothing after its worker is killed with -9.

Method: one worker (so every connection lands on its slot's socket), an echo upstream,
the gateway warmed with a few requests.  Then, ``--rounds`` times: SIGKILL the worker;
at once open a connection and send ``GET /``; the connection waits in the slot's accept
queue (the supervisor keeps the socket) until the replacement accepts it.  The figure is
the time from the kill to the first byte of the 200 answer: fork, the worker's set-up,
accept and one proxied request.  Prints each round and min / median / max in ms.

Run: ``.venv/bin/python scripts/respawn_time.py [--rounds 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness import EchoUpstream, Gateway  # noqa: E402

CONFIG = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: []}
services:
  echo:
    url: "http://{UP}"
    routes: [{path: "/*", methods: ["GET"]}]
monitoring:
  metrics_port: 0
  logging: {level: warning, access_log: {enabled: false}}
"""


def worker_pid(gw: Gateway) -> int:
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.wait_admin(), timeout=5)
    c.request("GET", "/admin/workers")
    doc = json.loads(c.getresponse().read())
    c.close()
    ws = [w for w in doc["workers"] if w["state"] == "ready"]
    return ws[0]["pid"] if ws else 0


def one_round(gw: Gateway, pid: int) -> float:
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"GET /respawn HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    first = s.recv(64)
    dt = time.monotonic() - t0
    s.close()
    if not first.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer after the kill: {first!r}")
    return dt


def measure(rounds: int) -> list[float]:
    out = []
    with EchoUpstream() as up, Gateway(CONFIG, workers=1, upstream=up) as gw:
        for _ in range(rounds):
            deadline = time.monotonic() + 10
            pid = 0
            while not pid and time.monotonic() < deadline:
                pid = worker_pid(gw)
                time.sleep(0.05)
            for _ in range(5):
                gw.request("GET", "/warm")
            time.sleep(0.3)          # past the respawn backoff's "young" accounting being hot
            out.append(one_round(gw, pid))
            time.sleep(YOUNG_WAIT)
    return out


# A worker that dies younger than the supervisor's YOUNG (5 s) counts toward backoff;
# the first young death respawns at once, further ones wait 0.25 s, 0.5 s, ...  Each
# round waits past it so every kill measures the at-once respawn.
YOUNG_WAIT = 5.2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    times = measure(a.rounds)
    for i, t in enumerate(times):
        print(f"round {i + 1}: {t * 1000:.0f} ms")
    print(f"kill-to-first-served: min {min(times) * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms over {len(times)} kills")


if __name__ == "__main__":
    main()
