"""Machine instructions per proxied exchange, counted by valgrind (deterministic).

Wall-clock micro-benchmarks on a shared 2-core VM move by tens of percent between runs;
an instruction count does not.  This runs one whole in-process exchange (request bytes
into the downstream protocol, response bytes into the upstream protocol, fake
transports, the real engine, middlewares, access log and metrics) N times under
``valgrind --tool=callgrind`` for N=1 and N=1+K, and prints the difference / K: the
instructions one exchange costs, without start-up.

    python -m bench.micro.instructions                    # bare, policy and newconn
    python -m bench.micro.instructions --routes bare -k 4000
    python -m bench.micro.instructions --update-baseline  # after an intended change

Each count is compared with ``bench/micro/instructions-baseline.json`` for the running
interpreter build (``bench.micro.baseline``): more than the file's tolerance above it is
a missed target, and the command exits 1 naming it.

Routes: ``bare`` (request id + access log + metrics, a request with User-Agent and
Accept), ``tracing`` (bare with ``monitoring.tracing`` on at sample ratio 0: a new trace
id per request, not sampled), ``traced`` (the same at ratio 1: every span recorded and
queued for export), ``wrk`` (the same route with the exchange of bench's small-50: wrk's
request, Host only, and nginx's 100 B answer), ``mixed`` and ``cond`` (bare on a config
that also has routes with ``match`` conditions, a request for a literal route and one for
a conditional route), ``polwrk`` (bench's policy exchange: small-50's request plus the
token and Origin, nginx's answer; ``polwrk`` / ``wrk`` is the instruction side of the
policy-chain CPU target), ``policy`` (JWT auth + per-user and per-IP rate
limits + CORS + security headers, as bench's policy), ``newconn`` (bare, with a new
client connection per request), ``transform`` (bare on a route that strips its prefix
and sets two request headers, one with ``$request_id``), ``cachehit`` (bare with ``cache:
true``, every exchange a hit of the response cache: no upstream bytes), ``cachemiss`` (the
same route, a response that says ``no-store``: the cost of a caching route's lookup and
decision on a miss), ``cachestore`` (the same route, every exchange a miss that stores:
a new query string each time, a response with ``max-age``, ``ETag`` and ``Date``), ``sessions`` (policy with a session token: ``jti``,
``sid``), ``sessions-rev`` (the same with the shared revocation table on, empty) and
``sessions-rev100k`` (with 100,000 revocations in it, none of them this token's: issue
27's bound is <= 2 % over ``sessions``), ``rr4`` and ``lr4`` (bare on a service of 4
instances, round_robin and least_request: instances that differ by base path only, so
one warm pooled connection serves them all; the cost of the balancer's pick).  Kernel work
(syscalls) is not counted: see ``python -m bench`` for the whole picture.
Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import uvloop
import yaml

ROUTES = ("bare", "wrk", "policy", "newconn", "mixed", "cond", "tracing", "traced", "transform",
          "cachehit", "cachemiss", "cachestore", "sessions", "sessions-rev", "sessions-rev100k", "rr4", "lr4",
          "pyfloor", "pol-none", "pol-sec", "pol-cors", "pol-jwt", "pol-rl", "polwrk")
# "pol-*": the policy route's request (token, Origin) on the bare route plus one feature of
# the chain (none, security headers, CORS, JWT + RBAC, the two rate limits), so each
# feature's cost is its count minus pol-none's.  "polwrk": bench's policy exchange exactly
# (small-50's request plus the token and Origin, nginx's 100 B answer), so polwrk / wrk is
# the instruction side of the target "policy CPU <= 1.30 x small-50's"
DEFAULT_ROUTES = ROUTES[:4]   # the others on demand (--routes)
_TRACING = '  tracing: {sample_ratio: %s, otlp_endpoint: "http://127.0.0.1:9/v1/traces"}\n'
# "mixed": the bare exchange on a config that also has routes with match conditions (a
# header regex, a cookie, any/not, a version) on other paths: it must cost what bare costs
# (the match cache keeps unconditional answers).  "cond": a request that one of them takes.
MIXED_ROUTES = """
      - path: "/items/*"
        match: {headers: {X-Version: {regex: "^2\\\\."}}, cookies: {beta: "1"}, not: {query: {legacy: "*"}}}
      - path: "/items/*"
        match: {any: [{headers: {X-Beta: "*"}}, {version: "2"}]}
      - path: "/items/*"
"""
COND_REQ = (b"GET /items/1 HTTP/1.1\r\nHost: 127.0.0.1:18090\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
            b"X-Version: 2.1\r\nCookie: beta=1\r\n\r\n")
# "transform": the bare exchange on a route that strips its prefix and sets two request
# headers (one constant, one variable): what a transform costs over bare
TRANSFORM_ROUTE = """      - path: "/api/*"
        transform: {request: {strip_prefix: true, headers: {set: {X-Gateway: fastgw, X-Req: "$request_id"}}}}
"""
TRANSFORM_REQ = b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1:18090\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
WRK_REQ = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"
NGINX_RESP = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 14:26:03 GMT\r\n"
              b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
              + b"x" * 100)


def _floor():
    """``wrk``'s exchange through the bench's feature-less Python proxy (``bench.floor``):
    the instructions any uvloop + httptools proxy spends, against which ``wrk`` is read."""
    from bench.floor import _Client, _Upstream
    from bench.micro.inproc import Transport

    loop = uvloop.new_event_loop()
    client = _Client(loop, ("127.0.0.1", 9))
    client.transport = Transport()
    up = client.up = _Upstream(client)
    up.transport = Transport()

    def one():
        client.data_received(WRK_REQ)
        up.data_received(NGINX_RESP)
    return one


def _policy_cfg(route: str) -> dict:
    from bench import fastgw_config

    cfg = fastgw_config.policy(9, Path("/dev/null"), 50)
    if not route.startswith("pol-"):
        return cfg
    keep = route[4:]
    r = cfg["services"]["bench"]["routes"][0]
    if keep != "jwt":
        r.pop("auth"), r.pop("roles"), cfg.pop("auth")
        cfg["rate_limit"].pop("authenticated")
    if keep != "rl":
        r.pop("rate_limit"), cfg.pop("rate_limit")
    if keep != "cors":
        cfg.pop("cors")
    if keep != "sec":
        cfg.pop("security_headers")
    return cfg


def _world(route: str):
    """(one-exchange callable) on a fresh in-process gateway."""
    if route == "pyfloor":
        return _floor()
    from bench import fastgw_config
    from bench.micro.inproc import CFG, REQ, RESP, Transport, gateway
    from fastgw.http.protocol import DownstreamProtocol

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    if route == "polwrk":
        text = yaml.safe_dump(_policy_cfg("policy"))
        req = WRK_REQ[:-2] + (b"Authorization: Bearer " + fastgw_config.token().encode() +
                              b"\r\nOrigin: " + fastgw_config.ORIGIN.encode() + b"\r\n\r\n")
    elif route == "policy" or route.startswith("sessions") or route.startswith("pol-"):
        text = yaml.safe_dump(_policy_cfg(route))
        tok = fastgw_config.token() if not route.startswith("sessions") else _session_token()
        req = (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:18090\r\nUser-Agent: wrk\r\n"
               b"Authorization: Bearer " + tok.encode() +
               b"\r\nOrigin: " + fastgw_config.ORIGIN.encode() + b"\r\n\r\n")
    elif route == "wrk":
        text, req = CFG, WRK_REQ
    elif route in ("mixed", "cond"):
        text = CFG.replace("gateway: {", "gateway: {versioning: {header: API-Version}, ")
        text = text.replace('        methods: ["GET", "HEAD", "POST"]\n', '        methods: ["GET", "HEAD", "POST"]\n' + MIXED_ROUTES)
        req = REQ if route == "mixed" else COND_REQ
    elif route == "transform":
        text = CFG.replace("    routes:\n", "    routes:\n" + TRANSFORM_ROUTE)
        req = TRANSFORM_REQ
    elif route in ("rr4", "lr4"):
        insts = ", ".join(f'{{url: "http://127.0.0.1:9/{c}", weight: {w}}}' for c, w in zip("abcd", (3, 1, 1, 1)))
        lb = "    load_balancing: least_request\n" if route == "lr4" else ""   # (rr4: the default)
        text = CFG.replace('    url: "http://127.0.0.1:9"\n', f"    instances: [{insts}]\n{lb}")
        req = REQ
    elif route in ("tracing", "traced"):
        text, req = CFG + _TRACING % (0 if route == "tracing" else 1), REQ
    elif route in ("cachehit", "cachemiss", "cachestore"):
        text = CFG.replace('        methods: ["GET", "HEAD", "POST"]\n', '        methods: ["GET", "HEAD", "POST"]\n        cache: true\n')
        req = REQ
    else:
        text = CFG
        req = REQ if route == "bare" else REQ.replace(b"Accept: */*\r\n", b"Connection: close\r\n")
    resp = NGINX_RESP if route in ("wrk", "polwrk") else RESP
    if route in ("cachehit", "cachemiss", "cachestore"):
        cc = b"no-store" if route == "cachemiss" else b"max-age=31536000"  # (the Date is in the past)
        if route == "cachestore":
            cc += b'\r\nETag: "v1"'
        resp = RESP.replace(b"Connection: keep-alive\r\n", b"Cache-Control: " + cc + b"\r\nConnection: keep-alive\r\n")
    _app, engine, info, up, _ut = gateway(text, loop)
    if route == "cachehit":
        down = DownstreamProtocol(engine, info, loop)
        down.connection_made(Transport())
        down.data_received(req)  # the miss that stores
        up.data_received(resp)

        def hit():
            down.data_received(req)
        return hit
    if route == "cachestore":
        # a new key per exchange (a miss that stores); the memory limit is far above
        # what k exchanges store, so nothing is evicted
        down = DownstreamProtocol(engine, info, loop)
        down.connection_made(Transport())
        pre, post = req.split(b" HTTP/1.1", 1)
        n = [0]

        def store():
            n[0] += 1
            down.data_received(b"%s?n=%d HTTP/1.1%s" % (pre, n[0], post))
            up.data_received(resp)
        return store
    if route in ("sessions-rev", "sessions-rev100k"):
        _revocations(_app, 100_000 if route.endswith("100k") else 0)
    if route == "newconn":
        def one():
            down = DownstreamProtocol(engine, info, loop)
            down.connection_made(Transport())
            down.data_received(req)
            up.data_received(resp)
            down.connection_lost(None)
        return one
    down = DownstreamProtocol(engine, info, loop)
    dt = Transport()
    down.connection_made(dt)

    def one():
        down.data_received(req)
        up.data_received(resp)
    return one


def _session_token() -> str:
    import time

    import jwt

    from bench import fastgw_config

    now = int(time.time())
    claims = {"sub": "bench-user", "roles": ["viewer"], "iat": now, "exp": now + 86400,
              "jti": "0b5f7c1e-2d3a-4c8b-9e6f-1a2b3c4d5e6f", "sid": "sess-4f3e2d1c0b9a"}
    return jwt.encode(claims, fastgw_config.JWT_SECRET, algorithm="HS256")


_KEEP = []


def _revocations(app, n: int) -> None:
    """Turn the shared revocation table on for the app's auth middlewares, with ``n``
    revocations (jti, sid and sub, none matching the bench token).  The request path reads
    only the worker's mirror (and the table's sequence cell), so the entries go straight
    into the mirror: 100,000 table inserts under callgrind would take minutes and change
    nothing per exchange."""
    import time

    from fastgw.shm import Region
    from fastgw.shm.revocation import Mirror

    region = Region.create(1, metrics_series=8, table_slots=64, health_slots=1,
                           revocation_slots=1024, name="bench-revocation")
    _KEEP.append(region)
    t, exp, now = region.revocation, time.time() + 86400, time.time()
    mirror = Mirror(t)
    mirror.sync()
    for i in range(n):
        mirror._add(i % 3 + 1, b"revoked-%d" % i, exp, now)
    mirror.any = n > 0
    for r in app.routes:
        for mw in r.chain.mws:
            if hasattr(mw, "_revoked"):
                mw._revoked = mirror.revoked


def _run(route: str, n: int) -> None:
    one = _world(route)
    for _ in range(n):
        one()


def _count(valgrind: str, route: str, n: int) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")  # dict layouts move counts by hundreds otherwise
    out = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-m", "bench.micro.instructions", "--run", route, str(n)],
        capture_output=True, text=True, env=env, check=True).stderr
    m = re.search(r"Collected : (\d+)", out)
    if m is None:
        raise SystemExit(f"no callgrind total in valgrind's output:\n{out[-2000:]}")
    return int(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro.instructions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", default=",".join(DEFAULT_ROUTES), help="comma-separated: " + ", ".join(ROUTES))
    ap.add_argument("-k", type=int, default=2000, help="exchanges counted (default 2000)")
    ap.add_argument("--valgrind", default=shutil.which("valgrind"), help="valgrind binary")
    ap.add_argument("--update-baseline", action="store_true",
                    help="record these counts as this interpreter build's baseline (bench/micro/instructions-baseline.json)")
    ap.add_argument("--run", nargs=2, metavar=("ROUTE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.run:
        _run(a.run[0], int(a.run[1]))
        return 0
    if not a.valgrind:
        print("valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    from bench.micro import baseline

    key = baseline.build_key()
    doc = baseline.load()
    print(f"interpreter build: {key}")
    counts, missed = {}, []
    for route in a.routes.split(","):
        if route not in ROUTES:
            ap.error(f"unknown route {route!r}")
        base = _count(a.valgrind, route, 1)
        more = _count(a.valgrind, route, 1 + a.k)
        counts[route] = per = (more - base) / a.k
        line, miss = baseline.verdict(route, per, doc, key)
        print(f"{route:8s} {per:10,.0f} instructions per exchange; {line}", flush=True)
        if miss:
            missed.append(route)
    if a.update_baseline:
        baseline.update(counts, key)
        print(f"baseline updated for {key}: {baseline.FILE}")
        return 0
    for route in missed:
        print(f"missed target: {route} costs more instructions per exchange than its baseline allows")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
