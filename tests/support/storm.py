"""Connection storms (issue #17 item 3): a fast upstream process and a storm client.

``FastUpstream`` is a uvloop server in its own process answering every request with a
small 200 (after ``delay_ms``, to play a slower service) on keep-alive connections (the threaded echo upstream cannot take a thousand
connections from the gateway's pools at once).  ``storm`` opens ``n`` connections at
once from one asyncio loop, sends one request on each and counts the answers by status
(or by the error that ended the connection).  Used by tests/runtime/test_storm.py at reduced
scale and by scripts/storm.py at full scale.
"""

from __future__ import annotations

import asyncio
import collections
import resource
import subprocess
import sys
import time

_UPSTREAM = r"""
import asyncio, os, socket, sys, uvloop
DELAY = float(sys.argv[1]) / 1000
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"

class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.buf = b""
    def data_received(self, data):
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            if DELAY:
                asyncio.get_running_loop().call_later(DELAY, self.t.write, RESP * n)
            else:
                self.t.write(RESP * n)

async def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    srv = await asyncio.get_running_loop().create_server(P, sock=s, backlog=4096)
    print(s.getsockname()[1], flush=True)
    await srv.serve_forever()

import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
uvloop.run(main())
"""


class FastUpstream:
    def __init__(self, delay_ms: float = 0) -> None:
        self.delay_ms = delay_ms    # each answer waits this long (a slower service)
        self.proc = None
        self.port = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FastUpstream":
        self.proc = subprocess.Popen([sys.executable, "-c", _UPSTREAM, str(self.delay_ms)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError("fast upstream did not start")
        self.port = int(line)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)


def raise_own_nofile(n: int) -> None:
    """Room for ``n`` client sockets in this process (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256 if hard == resource.RLIM_INFINITY else min(n + 256, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _one(host: str, port: int, path: str, timeout: float, out: collections.Counter, details: list) -> None:
    w = None
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        w.write(f"GET {path} HTTP/1.1\r\nHost: storm\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        body = await asyncio.wait_for(r.readexactly(length), timeout) if length else b""
        out[status] += 1
        if status != 200 and len(details) < 5:
            details.append(body.decode("latin-1"))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        out[type(e).__name__] += 1
        if len(details) < 5:
            details.append(repr(e))
    finally:
        if w is not None:
            w.close()


def storm(host: str, port: int, n: int, *, path: str = "/storm", timeout: float = 30.0):
    """Open ``n`` connections at once, one request each: (Counter of outcomes, details, seconds)."""
    raise_own_nofile(n)
    out: collections.Counter = collections.Counter()
    details: list = []

    async def main():
        await asyncio.gather(*(_one(host, port, path, timeout, out, details) for _ in range(n)))

    t0 = time.monotonic()
    asyncio.run(main())
    return out, details, time.monotonic() - t0


def pss_kib(pid: int) -> int:
    """Proportional set size of a process (``/proc/PID/smaps_rollup``), KiB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []
