#!/usr/bin/env python3
"""A connection storm at full scale: 5,000 connections opened at once against
2 workers with ``gateway.max_connections: 4000``, each sending one request to a healthy
upstream; prints the outcomes (the goal: 5,000 x 200, 0 x 503) and the time it took.

Run: ``.venv/bin/python scripts/storm.py [--connections 5000] [--workers 2] [--max-connections 4000]``.
The suite runs the same storm at 1,500 connections (tests/runtime/test_storm.py).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness import Gateway  # noqa: E402
from tests.storm_helpers import FastUpstream, storm  # noqa: E402

CONFIG = """
gateway: {host: 127.0.0.1, port: 0, trusted_proxies: [], max_connections: MAXC}
services:
  fast:
    url: "http://{UP}"
    routes: [{path: "/*", methods: ["GET"]}]
monitoring:
  metrics_port: 0
  logging: {level: warning, access_log: {enabled: false}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-connections", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    with FastUpstream() as up:
        cfg = CONFIG.replace("MAXC", str(a.max_connections)).replace("{UP}", up.addr)
        with Gateway(cfg, workers=a.workers) as gw:
            bad = 0
            for i in range(a.rounds):
                out, details, secs = storm("127.0.0.1", gw.port, a.connections)
                print(f"round {i + 1}: {a.connections} connections in {secs:.2f}s: {dict(out)}")
                for d in details:
                    print(f"  {d[:300]}")
                bad += a.connections - out.get(200, 0)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
