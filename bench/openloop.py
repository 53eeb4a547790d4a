"""A fixed-rate (open-loop) HTTP/1.1 load generator: ``python -m bench.openloop``.

Why: under a closed-loop generator such as wrk, p99 only restates throughput (a slow
answer delays the next request, so the queue it causes is never measured).  Here
requests are due on a fixed schedule whatever the server does, and latency counts from
the moment a request was due, so queueing inside the proxy shows up in p99 (the
coordinated-omission correction of wrk2).

Rules:
  1. The schedule is a 1 ms tick: request i is due at the first tick at or after
     ``t0 + i / rate``; every request due is written at that tick.  Latency = time the
     response completed - time the request was due.  A tick that fires late (the
     generator or its CPU busy) makes the late requests' latency longer, never hidden.
  2. One request in flight per connection, no pipelining.  A request due when no
     connection is idle opens a new one (up to ``--max-connections``); past that it
     waits in a queue, and that wait is part of its latency.
  3. The generator says when it could not keep the schedule (``behind_s``, the worst
     tick lag): at such a rate its p99 measures the generator, not the server, and
     the run is flagged.
  4. Written in Python with uvloop and httptools, so it is CPU-bound at a few tens of
     thousands of requests/s on one core; the harness picks the rate (half of nginx's
     saturation, capped, see session.py) and pins it with the load side.
Output: one JSON line with counts, achieved rate and latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time

import httptools

TICK = 0.001


class Conn(asyncio.Protocol):
    __slots__ = ("gen", "transport", "parser", "due", "status")

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.status = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.gen.connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.errors += 1
            self.transport.close()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        self.gen.completed(self)

    def connection_lost(self, exc) -> None:
        self.gen.lost(self)


class Generator:
    def __init__(self, host: str, port: int, request: bytes, rate: float, max_conns: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.rate, self.max_conns = rate, max_conns
        self.idle: list[Conn] = []
        self.busy: set[Conn] = set()
        self.queue: collections.deque[float] = collections.deque()
        self.opening = 0
        self.conns = 0
        self.latencies: list[float] = []
        self.sent = self.done = self.errors = self.non2xx = self.connects = 0
        self.unanswered = 0
        self.behind = 0.0
        self.loop = asyncio.get_running_loop()

    # -- connections -------------------------------------------------------------
    def open(self) -> None:
        self.opening += 1
        self.connects += 1
        task = self.loop.create_task(self.loop.create_connection(lambda: Conn(self), self.host, self.port))
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task) -> None:
        self.opening -= 1
        if task.exception() is not None:
            self.errors += 1

    def connected(self, conn: Conn) -> None:
        self.conns += 1
        self.release(conn)

    def lost(self, conn: Conn) -> None:
        self.conns -= 1
        if conn in self.busy:
            self.busy.discard(conn)
            self.errors += 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    # -- requests ----------------------------------------------------------------
    def send(self, conn: Conn, due: float) -> None:
        conn.due = due
        self.busy.add(conn)
        self.sent += 1
        conn.transport.write(self.request)

    def release(self, conn: Conn) -> None:
        if self.queue:
            self.send(conn, self.queue.popleft())
        else:
            self.idle.append(conn)

    def completed(self, conn: Conn) -> None:
        self.busy.discard(conn)
        self.done += 1
        self.latencies.append(time.monotonic() - conn.due)
        if not 200 <= conn.status < 300:
            self.non2xx += 1
        self.release(conn)

    def dispatch(self, due: float) -> None:
        if self.idle:
            self.send(self.idle.pop(), due)
            return
        self.queue.append(due)
        if self.conns + self.opening < self.max_conns:
            self.open()

    # -- schedule (rule 1) ----------------------------------------------------------
    async def run(self, duration: float, initial: int) -> float:
        for _ in range(initial):
            self.open()
        while self.opening:
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        total = int(duration * self.rate)
        i = 0
        tick = 0
        while i < total:
            tick += 1
            tick_t = t0 + tick * TICK
            now = time.monotonic()
            if now < tick_t:
                await asyncio.sleep(tick_t - now)
                now = time.monotonic()
            self.behind = max(self.behind, now - tick_t)
            # every request whose ideal time is <= this tick is due at this tick
            upto = min(total, int((tick_t - t0) * self.rate) + 1)
            while i < upto:
                self.dispatch(tick_t)
                i += 1
        deadline = time.monotonic() + 5.0
        while (self.busy or self.queue) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - t0
        self.unanswered = len(self.busy) + len(self.queue)
        return elapsed


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/small")
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64, help="connections opened up front")
    ap.add_argument("--max-connections", type=int, default=1024)
    ap.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    head = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
    head += "".join(f"{h}\r\n" for h in args.header)
    request = (head + "\r\n").encode()

    async def go() -> dict:
        gen = Generator(args.host, args.port, request, args.rate, args.max_connections)
        elapsed = await gen.run(args.duration, min(args.connections, args.max_connections))
        lat = sorted(gen.latencies)
        out = {
            "requests": gen.done,
            "sent": gen.sent,
            "duration_s": elapsed,
            "offered_rate": args.rate,
            "achieved_rate": gen.done / elapsed if elapsed else 0.0,
            "errors": gen.errors,  # connect failures, connections lost mid-request, bad responses
            "unanswered": gen.unanswered,  # still waiting 5 s after the schedule ended
            "non2xx": gen.non2xx,
            "connections_opened": gen.connects,
            "behind_s": gen.behind,
            "latency_ms": {
                "p50": percentile(lat, 50) * 1e3,
                "p90": percentile(lat, 90) * 1e3,
                "p99": percentile(lat, 99) * 1e3,
                "p999": percentile(lat, 99.9) * 1e3,
                "max": (lat[-1] if lat else 0.0) * 1e3,
            },
        }
        for conn in list(gen.idle) + list(gen.busy):
            conn.transport.close()
        return out

    print("BENCH_JSON " + json.dumps(asyncio.run(go())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
