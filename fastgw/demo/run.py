"""``scripts/demo``: three demo upstreams + the gateway on config/gateway.yaml.

Starts svg-parser, cmms-service and database-infra (JSON echo services) on 127.0.0.1,
runs ``fastgw -c config/gateway.yaml``, mints demo tokens with the configured secret and
prints curl lines that show routing, authentication, role checks and rate limiting.
Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from fastgw.demo.echo import EchoServer

SERVICES = (("svg-parser", "SVG_PARSER_PORT", 8101), ("cmms-service", "CMMS_PORT", 8102),
            ("database-infra", "DATABASE_INFRA_PORT", 8103))


def mint(secret: str, sub: str, roles: list[str], ttl: int = 3600) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": sub, "roles": roles, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


def show_sessions(base: str, refresh_key: str) -> list[str]:
    """A refresh and a logout against the running gateway: the lines to print."""
    import json
    import urllib.error
    import urllib.request

    from fastgw.auth.sessions import issue_refresh

    def post(path, body=None, bearer=None):
        req = urllib.request.Request(base + path, method="POST", data=json.dumps(body).encode() if body else b"",
                                     headers={"Content-Type": "application/json"})
        if bearer:
            req.add_header("Authorization", "Bearer " + bearer)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(path, bearer):
        req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + bearer})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    first = issue_refresh(refresh_key, sub="carol", sid="demo-" + os.urandom(4).hex(),
                          jti=os.urandom(8).hex(), ttl=7 * 86400, now=time.time(), roles=["viewer"])
    st, body = post("/auth/refresh", {"refresh_token": first})
    if st != 200:
        return [f"  sessions: refresh answered {st} {body[:200]!r}"]
    pair = json.loads(body)
    access = pair["access_token"]
    out = [f"  POST /auth/refresh with the login service's refresh token -> {st}, a new pair "
           f"(expires_in {pair['expires_in']}); GET /api/v1/cmms/work-orders with it -> "
           f"{get('/api/v1/cmms/work-orders', access)}"]
    st2, _ = post("/auth/refresh", {"refresh_token": first})
    out.append(f"  the same refresh token again within reuse_grace -> {st2} (the same pair)")
    st3, _ = post("/auth/logout", bearer=access)
    out.append(f"  POST /auth/logout with the access token -> {st3}; the access token now -> "
               f"{get('/api/v1/cmms/work-orders', access)}, the refresh token -> "
               f"{post('/auth/refresh', {'refresh_token': pair['refresh_token']})[0]}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the fastgw demo")
    ap.add_argument("-c", "--config", default="config/gateway.yaml")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    # TERM (e.g. from a process manager) stops everything like Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    env = dict(os.environ)
    # the example config's own default secret (HS256 wants at least 32 bytes)
    env.setdefault("JWT_SECRET", "dev-secret-change-me-not-for-production")
    servers = []
    for name, var, default in SERVICES:
        port = int(env.setdefault(var, str(default)))
        srv = EchoServer("127.0.0.1", port, name).start()
        servers.append(srv)
        print(f"demo upstream {name} on {srv.addr}")
    gw_port = env.setdefault("FASTGW_PORT", "8080")
    env.setdefault("FASTGW_METRICS_PORT", "9090")
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "-c", a.config, "--workers", str(a.workers)],
                            env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        for line in proc.stdout:
            print(line, end="")
            if "listening on" in line and "admin" not in line:
                break
        else:
            print("fastgw did not start", file=sys.stderr)
            return 1
        secret = env["JWT_SECRET"]
        env.setdefault("REFRESH_KEY", "dev-refresh-key-change-me-not-for-production")
        sessions = show_sessions(f"http://127.0.0.1:{gw_port}", env["REFRESH_KEY"])
        ttl = 3600
        admin = mint(secret, "alice", ["admin"], ttl)
        viewer = mint(secret, "bob", ["viewer"], ttl)
        expires = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + ttl))
        base = f"http://127.0.0.1:{gw_port}"
        print(f"""
fastgw is running on {base} (metrics: http://127.0.0.1:{env['FASTGW_METRICS_PORT']}/metrics). Try:

  # demo tokens, valid for 1 hour (until {expires}); after that the gateway answers 401
  # "token expired". Mint new ones with the same secret, e.g.:
  #   JWT_SECRET=... python -m fastgw.auth.mint --sub alice --roles admin --ttl 1h
  export ALICE_JWT={admin}
  export VIEWER_JWT={viewer}

  # routing to a public health route of each service
  curl -s {base}/api/v1/svg/health
  # a protected route without a token: 401 with WWW-Authenticate
  curl -si {base}/api/v1/svg/drawings
  # with a token: 200, and the upstream sees X-User-Id / X-User-Roles
  curl -s -H "Authorization: Bearer $ALICE_JWT" {base}/api/v1/cmms/work-orders
  # a viewer may read but not delete: 403
  curl -si -X DELETE -H "Authorization: Bearer $VIEWER_JWT" {base}/api/v1/cmms/work-orders/7
  # rate limit: database-infra allows 20 req/s with a burst of 50; 120 requests at once -> some 429
  seq 1 120 | xargs -P 16 -I{{}} curl -s -o /dev/null -w '%{{http_code}}\\n' -H "Authorization: Bearer $VIEWER_JWT" {base}/api/v1/database/tables | sort | uniq -c
  curl -si -H "Authorization: Bearer $VIEWER_JWT" {base}/api/v1/database/tables | head -12   # 429 with Retry-After and RateLimit fields
  # unknown path: 404 problem+json
  curl -s {base}/nope
  # sessions (docs/auth.md): a refresh and a logout, just made against the gateway:
{chr(10).join(sessions)}
  # the admin API (loopback and read-only until ADMIN_TOKEN is set; docs/operations.md)
  curl -s http://127.0.0.1:{env.get('FASTGW_ADMIN_PORT', '9091')}/admin/workers

Access log lines appear below. Ctrl-C stops everything.
""", flush=True)
        for line in proc.stdout:
            print(line, end="")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for s in servers:
            s.stop()


if __name__ == "__main__":
    raise SystemExit(main())
