"""The config tools as an operator runs them: ``--check`` (did-you-mean, FILE:LINE:COLUMN,
grouped warnings), ``--print-config`` round trip through ``--check``, ``fastgw diff`` exit
codes; plus the pure parts (the change summary, the operational log's formatter)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from fastgw.config import load_config_text
from fastgw.config.diff import diff, referenced_files
from fastgw.obs import oplog

from tests.support import ROOT  # noqa: E402


def fastgw(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastgw", *args], capture_output=True, text=True, timeout=30,
                          cwd=ROOT, env=e)


BAD = """gateway:
  port: 8080
services:
  a:
    url: "http://127.0.0.1:1"
    routes:
      - path: /a
        ratelimit: {requests_per_second: 1, burst: 1}
        methods: [GET, FETCH]
"""


def test_check_did_you_mean_and_line_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    p = fastgw("--check", "-c", str(f))
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert lines[0] == f"fastgw: {f}: invalid config (2 errors):"
    assert lines[1:] == [
        f"  {f}:8:9: services.a.routes[0].ratelimit: unknown field; did you mean `rate_limit`?",
        f"  {f}:9:24: services.a.routes[0].methods[1]: unknown method 'FETCH'"]


def test_bundled_config_check_groups_warnings():
    p = fastgw("--check", "-c", "config/gateway.yaml")
    assert p.returncode == 0, p.stderr
    warnings = p.stderr.splitlines()
    n = len(warnings)
    suffix = f" ({n} warning{'' if n == 1 else 's'})" if n else ""   # (none left once every row is enforced)
    assert p.stdout.strip() == f"fastgw: config/gateway.yaml: config OK{suffix}"
    msgs = [w.split(": ", 2)[-1] for w in warnings]
    assert len(msgs) == len(set(msgs)) and len(warnings) <= 4     # one line per kind, not one per service
    # retries, health and health_check_interval are enforced (#19): no warning for them
    assert not any(".retries" in w or ".health" in w or "health_check_interval" in w for w in warnings), warnings


def test_check_groups_one_warning_over_its_paths(tmp_path):
    src = tmp_path / "gw.yaml"
    src.write_text("""
services:
  a: {instances: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2"}], tls: {verify: false}, routes: [{path: /a}]}
  b: {instances: [{url: "http://127.0.0.1:3"}, {url: "http://127.0.0.1:4"}], tls: {verify: false}, routes: [{path: /b}]}
""")
    p = fastgw("--check", "-c", str(src))
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines()[0].startswith("warning: services.a.tls, services.b.tls: ignored")


def test_print_config_round_trips_through_check(tmp_path):
    src = tmp_path / "gw.yaml"
    src.write_text("""
services:
  a: {url: "http://127.0.0.1:1", routes: [{path: /a}]}
auth:
  jwt_secret: "${MY_JWT_SECRET:-a-default-secret-of-32-bytes-or-more}"
  keys: [{kid: k1, secret: "literal-secret-of-at-least-32-bytes!!"}]
monitoring: {metrics_port: 0, admin: {port: 0, token: "${ADMIN_TOKEN}"}}
""")
    p = fastgw("--print-config", "-c", str(src), env={"ADMIN_TOKEN": "tok"})
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "literal-secret" not in out and "a-default-secret" not in out and "tok\n" not in out
    assert "jwt_secret: ${MY_JWT_SECRET}" in out and "token: ${ADMIN_TOKEN}" in out
    assert "secret: ${FASTGW_SECRET_AUTH_KEYS_0_SECRET}" in out
    assert "#   FASTGW_SECRET_AUTH_KEYS_0_SECRET: auth.keys[0].secret" in out
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert fastgw("--check", "-c", str(printed)).returncode == 1          # the variables are not set yet
    env = {"MY_JWT_SECRET": "x" * 32, "ADMIN_TOKEN": "tok", "FASTGW_SECRET_AUTH_KEYS_0_SECRET": "y" * 32}
    p = fastgw("--check", "-c", str(printed), env=env)
    assert p.returncode == 0, p.stderr


def test_diff_exit_codes(tmp_path):
    a, b, bad = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "bad.yaml"
    a.write_text('services:\n  a: {url: "http://127.0.0.1:1", routes: [{path: /a, name: ra}]}\n')
    b.write_text('gateway: {port: 9000}\nservices:\n  a: {url: "http://127.0.0.1:1", timeout: 5s, '
                 'routes: [{path: /a, name: ra}, {path: /b, name: rb}]}\n')
    bad.write_text("services: [\n")
    p = fastgw("diff", str(a), str(a))
    assert (p.returncode, p.stdout) == (0, "no changes\n")
    p = fastgw("diff", str(a), str(b))
    assert p.returncode == 1
    assert p.stdout.splitlines() == [
        "services: ~a(timeout)", "routes: +a/rb", "settings: ~gateway.port",
        "restart needed: gateway.port: cannot change on reload (8080 -> 9000; the listening sockets are bound "
        "at start): restart the gateway"]
    p = fastgw("diff", str(a), str(bad))
    assert p.returncode == 2 and "invalid YAML" in p.stderr


def _load(text):
    return load_config_text(text)[0]


def test_summary_groups_and_files(tmp_path):
    pem = tmp_path / "k1.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\n")
    old = _load("""
services:
  a: {url: "http://x:1", routes: [{path: /a, name: ra}]}
  b: {url: "http://x:2", routes: [{path: /b}]}
auth: {jwt_secret: "0123456789abcdef0123456789abcdef", keys: [{kid: k1, file: PEM}]}
rate_limit: {default: {requests_per_second: 1, burst: 1}}
""".replace("PEM", str(pem)))
    new = _load("""
services:
  a: {url: "http://x:1", routes: [{path: /a2, name: ra}]}
  c: {url: "http://x:2", routes: [{path: /b}]}
auth: {jwt_secret: "0123456789abcdef0123456789abcdeX", keys: [{kid: k1, file: PEM}]}
rate_limit: {default: {requests_per_second: 2, burst: 1}}
""".replace("PEM", str(pem)))
    assert not diff(old, old)
    s = diff(old, new, {"auth.keys[0].file": "h1"}, {"auth.keys[0].file": "h2"})
    assert s.lines() == ["services: +c -b", "routes: +c/c-0 -b/b-0 ~a/ra", "limits: ~rate_limit.default",
                         "auth keys: ~auth.jwt_secret", "files: ~auth.keys[0].file"]
    assert "0123456789" not in json.dumps(s.to_doc())       # secrets never reach a summary
    assert referenced_files(old) == {"auth.keys[0].file": str(pem)}


def test_operational_log_json_and_reopen(tmp_path):
    path = str(tmp_path / "op.log")
    lg = logging.getLogger("fastgw")
    saved = lg.handlers[:], lg.level
    try:
        oplog.configure("info", "json", path)
        h = lg.handlers[0]
        oplog.configure("info", "json", path)                   # same settings: the same handler
        assert lg.handlers == [h]
        lg.info("one %s", "line")
        os.rename(path, path + ".1")
        oplog.reopen()
        lg.warning("two")
        oplog.configure("info", "text", path)
        lg.error("three")
        first = [json.loads(x) for x in open(path + ".1")]
        assert [(r["level"], r["msg"], r["pid"]) for r in first] == [("info", "one line", os.getpid())]
        second = open(path).read().splitlines()
        assert json.loads(second[0])["msg"] == "two"
        assert second[1].endswith(f"fastgw[{os.getpid()}] ERROR three")
    finally:
        oplog._handler.close()
        oplog._handler = oplog._current = None
        lg.handlers[:], lg.level = saved[0], saved[1]


def test_replay_against_an_old_config(tmp_path):
    import io

    from fastgw.tools import replay
    old, new, log = tmp_path / "old.yaml", tmp_path / "new.yaml", tmp_path / "access.log"
    old.write_text('services:\n  a: {url: "http://x:1", routes: [{path: "/a/*", name: ra, methods: [GET, POST]}, '
                   '{path: /b, name: rb}]}\n')
    new.write_text('services:\n  a: {url: "http://x:1", routes: [{path: "/a/*", name: ra, methods: [GET], auth: true}]}\n'
                   'auth: {jwt_secret: "0123456789abcdef0123456789abcdef"}\n')
    recs = [("GET", "/a/1"), ("POST", "/a/2"), ("GET", "/b"), ("GET", "/a/%2e%2e/b")]
    log.write_text("".join(json.dumps({"method": m, "path": p, "authority": "h", "status": 200}) + "\n"
                           for m, p in recs) + "garbage\n")
    out = io.StringIO()
    assert replay.run(str(new), str(log), str(old), out=out) == 1
    text = out.getvalue()
    assert text.splitlines()[0] == ("replay: 4 requests, 4 decisions would change, 0 undecidable (need headers or "
                                    "query the access log does not hold), 1 line skipped (not access records)")
    assert "  GET /a/1: auth_required False -> True (1 request)" in text
    assert "  POST /a/2: method_allowed True -> False (1 request)" in text
    assert "  GET /b: route rb -> (none) (2 requests)" not in text and "  GET /b: route rb -> (none) (1 request)" in text
    assert "  GET /a/%2e%2e/b: route rb -> (none) (1 request)" in text       # normalised like the gateway does
    assert replay.run(str(old), str(log), str(old), out=io.StringIO()) == 0


def test_reload_refuses_an_operational_log_it_cannot_open(tmp_path):
    from fastgw.supervisor.reload import check_log_output
    ok = _load(f'services: {{}}\nmonitoring: {{logging: {{output: "{tmp_path}/op.log"}}}}\n')
    bad = _load(f'services: {{}}\nmonitoring: {{logging: {{output: "{tmp_path}/missing/op.log"}}}}\n')
    assert check_log_output(ok) == [] and check_log_output(_load("services: {}\n")) == []
    assert check_log_output(bad) == [
        f"monitoring.logging.output: cannot open {tmp_path}/missing/op.log: No such file or directory"]
