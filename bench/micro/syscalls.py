"""Syscalls per request of a live fastgw worker, counted by ``strace -c`` under a bounded load.

Starts a raw keep-alive upstream (100 B answers, in this process), fastgw with one worker
on the bench's ``bare`` or ``policy`` config, then attaches ``strace -c -f`` to the worker
while wrk sends ``-c`` connections for ``-d`` seconds (the policy route with the bench's
token and Origin), and prints the worker's syscalls per request, by name.  The figures
(before/after of a change to the hot path) go in the docs that explain the change; an
instruction count (``python -m bench.micro.instructions``) does not see the kernel.

    python -m bench.micro.syscalls --route policy -d 3 -c 10

Needs strace and wrk (scripts/install-deps).  strace slows the worker a lot; the count
per request is what it is for, not the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import fastgw_config, procs

RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n" + b"x" * 100


class _Upstream(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(RESP * data.count(b"\r\n\r\n"))


def upstream() -> int:
    """A keep-alive upstream on a free port, in a daemon thread; its port."""
    port = procs.free_port()
    ready = threading.Event()

    def serve() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(loop.create_server(_Upstream, "127.0.0.1", port, backlog=1024))
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(5)
    return port


def busiest_child(supervisor: int) -> int:
    """The child that used the most CPU (after a warm-up load: the worker, not the
    control process)."""
    def cpu(pid: str) -> int:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])          # utime + stime
    kids = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return int(max(kids, key=cpu))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.micro.syscalls", description=__doc__.split("\n\n")[0])
    ap.add_argument("--route", choices=("bare", "policy"), default="policy")
    ap.add_argument("-d", type=int, default=3, help="seconds of load (default 3)")
    ap.add_argument("-c", type=int, default=10, help="connections (default 10)")
    args = ap.parse_args()
    for tool in ("strace", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (scripts/install-deps)")
    up = upstream()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = fastgw_config.write(args.route, work / "fastgw.yaml", up, work / "access.log", args.c)
        gw = procs.start([sys.executable, "-m", "fastgw", "-c", str(cfg), "--bind", "127.0.0.1:0", "--workers", "1"],
                         work, "fastgw")
        try:
            port = int(procs.wait_line(gw, r"fastgw: listening on 127\.0\.0\.1:(\d+)").group(1))
            procs.wait_port(gw, port)
            lua = work / "req.lua"
            hs = {}
            if args.route == "policy":
                hs = {"Authorization": "Bearer " + fastgw_config.token(), "Origin": fastgw_config.ORIGIN}
            lua.write_text("".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in hs.items()))
            wrk = ["wrk", "-t1", f"-c{args.c}", "-s", str(lua), f"http://127.0.0.1:{port}/small"]
            subprocess.run(wrk[:1] + ["-d1s"] + wrk[1:], capture_output=True, timeout=30)     # warm-up
            wpid = busiest_child(gw.pid)
            out = work / "strace.txt"
            st = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(wpid)],
                                  stderr=subprocess.DEVNULL)
            time.sleep(1.0)                 # attached
            w = subprocess.run(wrk[:1] + [f"-d{args.d}s"] + wrk[1:], capture_output=True, text=True,
                               timeout=args.d + 30)
            time.sleep(0.5)
            st.send_signal(signal.SIGINT)
            st.wait(10)
        finally:
            gw.stop(first=signal.SIGINT)
        m = re.search(r"(\d+) requests in", w.stdout)
        if m is None:
            raise SystemExit(f"wrk failed:\n{w.stdout}\n{w.stderr}")
        n = int(m.group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", w.stdout)
        rows = []
        for line in out.read_text().splitlines():
            f = line.split()
            if len(f) >= 5 and f[3].isdigit() and f[-1] not in ("total", "syscall"):
                rows.append((f[-1], int(f[3])))
        total = sum(c for _, c in rows)
        print(f"route {args.route}: {n} requests{' (' + non2xx.group(1) + ' not 2xx)' if non2xx else ''}, "
              f"{total} worker syscalls, {total / n:.2f} per request")
        for name, c in sorted(rows, key=lambda r: -r[1])[:12]:
            print(f"  {name:<20} {c / n:6.3f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
