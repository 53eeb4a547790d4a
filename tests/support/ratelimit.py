"""Shared helpers for the rate-limit tests (no tests of its own besides a self-check).

- ``Chain``: the real middlewares of one route (``ratelimit_ip``, ``auth``, ``ratelimit``,
  built from a YAML config through the loader) driven like the engine drives them:
  request filters in order until one answers, then the response filters of those that ran
  in reverse (on the local reply, or on a 200 "upstream" head).  The limiter's clock is a
  ``FakeClock`` the test advances by hand.
- ``token()``: an HS256 JWT (pyjwt) for the ``auth: {jwt_secret}`` of ``AUTH_BLOCK``.
- ``RedisServer``: a real ``redis-server`` on a free loopback port, no persistence;
  ``kill()``/``stop()``/``pause()`` for failure tests; always stopped on exit.
- ``hammer()``: N keep-alive client threads sending GETs until a deadline, recording the
  send/receive time and status of every request (bounded in time and requests).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import jwt
import pytest
import yaml

from fastgw.config.loader import load_config_data
from fastgw.http.messages import ResponseHead
from fastgw.middleware import auth as auth_mw
from fastgw.middleware import ratelimit as rl_mw
from fastgw.middleware import ratelimit_ip as rlip_mw
from fastgw.obs.metrics import Metrics
from fastgw.http.messages import parse_block
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from fastgw.pipeline.deps import Deps
from tests.support.wire import closed_port

# the start of an in-process chain's config: one route "all" (GET /*); a test appends
# the route's own keys (8-space indented) and its top-level sections
ALL_ROUTE = """
gateway:
  trusted_proxies: []
services:
  api:
    url: "http://127.0.0.1:9"
    routes:
      - path: "/*"
        name: all
        methods: ["GET"]
"""
SECRET = "ratelimit-test-secret-" + "s" * 40

AUTH_BLOCK = f"""
auth:
  jwt_secret: "{SECRET}"
  roles: [admin, editor, viewer]
"""


def token(sub: str = "alice", roles=(), *, secret: str = SECRET, ttl: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "roles": list(roles), "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


def load(text: str):
    cfg, _warnings = load_config_data(yaml.safe_load(text), env={})
    return cfg


class FakeClock:
    """Monotonic ns, advanced by hand."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.ns = int(start_s * 1e9)

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(round(seconds * 1e9))


class Result:
    def __init__(self, status: int, headers: list, body: bytes, ctx: Ctx) -> None:
        self.status = status
        self.headers = {n.lower().decode(): v.decode() for n, v in headers}
        self.body = body
        self.ctx = ctx

    def __repr__(self) -> str:
        return f"Result({self.status}, {self.headers})"


class Chain:
    """The rate-limit and auth middlewares of route ``route`` of a config."""

    def __init__(self, text: str, route: str, *, deps: Deps | None = None, clock: FakeClock | None = None) -> None:
        self.cfg = cfg = load(text) if isinstance(text, str) else text
        self.deps = deps or Deps(cfg, metrics=Metrics())
        self.clock = clock or FakeClock()
        svc, rc = None, None
        for s in cfg.services.values():
            for r in s.routes:
                if r.name == route:
                    svc, rc = s, r
        assert rc is not None, f"no route {route!r}"
        self.mws = [m for m in (b(cfg, svc, rc, self.deps) for b in (rlip_mw.build, auth_mw.build, rl_mw.build))
                    if m is not None]
        from fastgw.ratelimit.limiter import STATE_KEY
        self.limiter = self.deps.state.get(STATE_KEY)
        if self.limiter is not None:
            self.limiter.clock = self.clock

    @property
    def names(self) -> list[str]:
        return [f"{m.name}:{type(m).__name__}" for m in self.mws]

    def request(self, ip: str = "198.51.100.7", *, token: str | None = None, headers=(), user=None,
                roles=()) -> Result:
        hs = [(b"host", b"gw")] + [(k.encode(), v.encode()) for k, v in headers]
        if token is not None:
            hs.append((b"authorization", b"Bearer " + token.encode()))
        ctx = Ctx(Request.build("GET", b"/", hs, peer_ip=ip))
        ctx.request_id = "rid"
        ran = []
        reply = None
        for m in self.mws:
            if m.name == "auth" and user is not None:   # identity without a token (unit tests)
                ctx.user, ctx.roles = user, frozenset(roles)
                ran.append(m)
                continue
            r = m.request_filter(ctx)
            if inspect.iscoroutine(r):
                r = _run(r)
            ran.append(m)
            if r is not None:
                reply = r
                break
        if reply is not None:
            for m in reversed(ran):
                m.response_filter(ctx, reply)
            return Result(reply.status, reply.headers + parse_block(ctx.resp_lines), reply.body, ctx)
        head = ResponseHead(200, b"OK", [])
        for m in reversed(ran):
            m.response_filter(ctx, head)
        return Result(200, head.headers + parse_block(ctx.resp_lines), b"", ctx)

    def statuses(self, n: int, **kw) -> list[int]:
        return [self.request(**kw).status for _ in range(n)]

    def metric(self, limit: str, result: str) -> float:
        self.deps.metrics.publish()         # (the worker tick: allowed decisions are accumulated)
        snap = self.deps.metrics.store.snapshot()
        return snap.get(f'fastgw_ratelimit_decisions_total{{limit="{limit}",result="{result}"}}', 0)


_LOOP = None


def _run(coro):
    """Drive an async hook like the engine does: eagerly, outside any task, until it first
    waits; then finish it in a task."""
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
    loop = _LOOP

    def first_step(box):
        try:
            box.append(("wait", coro.send(None)))
        except StopIteration as stop:
            box.append(("done", stop.value))

    async def resume(waiting):
        while True:
            try:
                await waiting
            except BaseException as e:
                try:
                    waiting = coro.throw(e)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                waiting = coro.send(None)
            except StopIteration as stop:
                return stop.value

    box: list = []
    loop.call_soon(first_step, box)          # a plain callback on the running loop, as in the engine
    loop.run_until_complete(asyncio.sleep(0))
    while not box:
        loop.run_until_complete(asyncio.sleep(0))
    kind, v = box[0]
    return v if kind == "done" else loop.run_until_complete(resume(v))


# -- redis ----------------------------------------------------------------------------
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"



class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or closed_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        if not os.path.exists(REDIS_SERVER):
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def command(self, *args: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
            return s.recv(65536)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        self.kill()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- load over real sockets -------------------------------------------------------------
def _read_response(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, rest) of one Content-Length framed response."""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            raise ConnectionError("closed")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(rest) < n:
        d = sock.recv(65536)
        if not d:
            raise ConnectionError("closed")
        rest += d
    return status, head, rest[n:]


def hammer(port: int, path: str, *, clients: int, seconds: float, headers: dict | None = None,
           max_requests: int = 200_000, pace: float = 0.0) -> dict:
    """``clients`` threads, each on its own keep-alive connection (reconnecting after an
    error), sending GETs until ``seconds`` pass.  Returns ``ok``/``limited``/``other``
    counts, ``errors`` (requests whose answer was lost: they may have been counted by the
    gateway), and ``first_send``, ``last_send``, ``first_recv``, ``last_recv`` (monotonic
    seconds, over all requests)."""
    hs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    req = f"GET {path} HTTP/1.1\r\nHost: gw\r\n{hs}\r\n".encode()
    lock = threading.Lock()
    out = {"ok": 0, "limited": 0, "other": 0, "errors": 0, "sent": 0,
           "first_send": None, "last_send": 0.0, "first_recv": None, "last_recv": 0.0}
    deadline = time.monotonic() + seconds
    budget = [max_requests]

    def worker() -> None:
        sock, buf = None, b""
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    buf = b""
                t0 = time.monotonic()
                sock.sendall(req)
                st, _head, buf = _read_response(sock, buf)
                t1 = time.monotonic()
            except (OSError, ConnectionError, ValueError, IndexError):
                with lock:
                    out["errors"] += 1
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.01)
                continue
            with lock:
                out["sent"] += 1
                k = "ok" if st == 200 else "limited" if st == 429 else "other"
                out[k] += 1
                if out["first_send"] is None or t0 < out["first_send"]:
                    out["first_send"] = t0
                if out["first_recv"] is None or t1 < out["first_recv"]:
                    out["first_recv"] = t1
                out["last_send"] = max(out["last_send"], t0)
                out["last_recv"] = max(out["last_recv"], t1)
            if pace:
                time.sleep(pace)
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return out


def gcra_reference(times_ns: list[int], rate: float, burst: int) -> list[bool]:
    """GCRA by the book, integer ns (the same rounding of T as the table)."""
    T = int(1e9 / rate + 0.5)
    tau = burst * T
    tat = 0
    out = []
    for now in times_ns:
        new = max(tat, now) + T
        ok = new - now <= tau
        if ok:
            tat = new
        out.append(ok)
    return out
