"""Circuit breaker with real processes (issue #20 item 2): the gateway with 2 workers, real
HTTP upstreams (``tests.support.breaker.SwitchUpstream``: switchable status, counts every
request it gets), clients on several keep-alive connections.

- an upstream answering 503 opens the breaker after ``failure_threshold`` failures summed
  over both workers; clients then get a fast 503 problem+json with ``Retry-After`` and the
  upstream sees nothing until ``timeout``; then exactly ``half_open_requests`` trials per
  ``timeout`` window reach it, over both workers together; once it answers 200, a trial
  closes the breaker;
- gateway-made answers (401 from auth) never count, neither as failures nor as successes;
- a service's own breaker overrides the default, ``false`` turns it off;
- ``failure_ratio``: a service that fails every other request (never twice in a row)
  opens its breaker once the window over both workers holds ``min_requests`` outcomes;
  one that fails a quarter, under the ratio, keeps it closed;
- the state is in ``/admin/upstreams`` and ``/metrics``;
- with the response cache's ``stale_if_error``, an expired entry answers instead of the
  open circuit's 503.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest

from tests.support.breaker import SwitchUpstream, burst
from tests.support.gateway import Gateway
from tests.support.procs import admin, generation_everywhere, hup, metrics_text, promtool_check, rewrite, series
from tests.support.waiting import wait_for

SECRET = "breaker-test-secret-" + "x" * 44
TIMEOUT = 0.4       # the default breaker's timeout (s)

CONFIG = """
gateway: {host: 127.0.0.1, port: 0, timeout: 5s}
auth: {jwt_secret: "SECRET"}
services:
  app:
    url: "URL_APP"
    routes: [{path: "/app/*", name: app}]
  gated:
    url: "URL_GATED"
    circuit_breaker: {failure_threshold: 3, timeout: 30s}
    routes: [{path: "/gated/*", name: gated, auth: true}]
  tight:
    url: "URL_TIGHT"
    circuit_breaker: {failure_threshold: 1, timeout: 30s}
    routes: [{path: "/tight/*", name: tight}]
  cached:
    url: "URL_CACHED"
    cache: {stale_if_error: 60s}
    circuit_breaker: {failure_threshold: 2, timeout: 30s}
    routes: [{path: "/cached/*", name: cached}]
  plain:
    url: "URL_PLAIN"
    circuit_breaker: false
    routes: [{path: "/plain/*", name: plain}]
  ratio:
    url: "URL_RATIO"
    circuit_breaker: {failure_threshold: 100, timeout: 30s, failure_ratio: 40%, min_requests: 10, window: 10s}
    routes: [{path: "/ratio/*", name: ratio}]
  steady:
    url: "URL_STEADY"
    circuit_breaker: {failure_threshold: 100, timeout: 30s, failure_ratio: 40%, min_requests: 10, window: 10s}
    routes: [{path: "/steady/*", name: steady}]
monitoring:
  metrics_port: 0
  admin: {port: 0}
  circuit_breaker: {failure_threshold: 3, timeout: 400ms, half_open_requests: 2}
  logging: {level: info, access_log: {enabled: false}}
"""


@pytest.fixture(scope="module")
def world():
    ups = {k: SwitchUpstream(503) for k in ("app", "gated", "tight", "cached", "plain", "ratio", "steady")}
    ups["ratio"].cycle = [200, 503]              # half of its answers fail, never two in a row
    ups["steady"].cycle = [200, 200, 200, 503]   # a quarter
    ups["app"].delay = 0.05     # trials of one window overlap at the upstream
    for u in ups.values():
        u.__enter__()
    text = CONFIG.replace("SECRET", SECRET)
    for k, u in ups.items():
        text = text.replace(f"URL_{k.upper()}", u.url)
    try:
        with Gateway(text, workers=2) as gw:
            gw.text = text
            yield gw, ups
    finally:
        for u in ups.values():
            u.__exit__()


def breaker_doc(gw, service: str):
    st, _, body = admin(gw, "/admin/upstreams")
    assert st == 200, body
    return json.loads(body)["services"][service]["circuit_breaker"]


def get(gw, path: str, headers=None):
    return gw.request("GET", path, headers=headers)


def _json(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {}


def clusters(times: list[float], gap: float) -> list[list[float]]:
    out: list[list[float]] = []
    for t in sorted(times):
        if out and t - out[-1][-1] < gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


@pytest.mark.timing
def test_opens_refuses_fast_admits_exact_trials_per_window_and_closes(world):
    gw, ups = world
    up = ups["app"]
    # three failures, each on a new connection (the kernel spreads them over both workers)
    for _ in range(3):
        assert get(gw, "/app/x")[0] == 503
    t_open = time.monotonic()   # about when it opened: in the third exchange's logging phase,
    # just after its answer left (so wait for it before the next request)
    assert wait_for(lambda: breaker_doc(gw, "app")["state"] == "open", 2.0)
    assert up.hits == 3
    st, hd, body = get(gw, "/app/x")
    doc = json.loads(body)
    assert st == 503 and hd["content-type"] == "application/problem+json", (st, hd, body)
    assert hd["retry-after"] == "1" and doc["status"] == 503 and "circuit breaker" in doc["detail"]
    cb = breaker_doc(gw, "app")
    assert cb["state"] == "open" and cb["times_opened"] == 1 and 0 < cb["retry_in_s"] <= TIMEOUT, cb
    assert series(metrics_text(gw), "fastgw_circuit_breaker_state")['{service="app"}'] == 1
    # hammer it from 8 connections for 1.5 s: fast 503s; the upstream only sees the trials
    answers = burst(gw.host, gw.port, "/app/x", conns=8, seconds=1.5)
    trials = [t for t in up.times if t > t_open]
    assert all(s == 503 for s, _ in answers) and len(answers) > 100, len(answers)
    assert all(h.get("retry-after") in ("1",) for s, h in answers if h.get("content-type") == "application/problem+json")
    assert not [t for t in trials if t < t_open + TIMEOUT - 0.1], "a request reached the upstream while open"
    windows = clusters(trials, gap=0.2)
    # each window: exactly half_open_requests (2) trials over both workers, the next window
    # one timeout after the trials failed
    assert len(windows) >= 2 and all(len(w) == 2 for w in windows), [[round(t - t_open, 3) for t in w] for w in windows]
    starts = [w[0] for w in windows]
    assert all(b - a >= TIMEOUT for a, b in zip(starts, starts[1:])), starts
    # the upstream recovers: the next window's trial closes the breaker
    up.status = 200
    assert wait_for(lambda: get(gw, "/app/x")[0] == 200, 3.0, interval=0.05)
    assert wait_for(lambda: breaker_doc(gw, "app")["state"] == "closed", 2.0)
    assert all(s == 200 for s, _ in burst(gw.host, gw.port, "/app/x", conns=4, seconds=0.2))
    text = metrics_text(gw)
    assert series(text, "fastgw_circuit_breaker_state")['{service="app"}'] == 0
    moves = series(text, "fastgw_circuit_breaker_transitions_total")
    assert moves['{service="app",to="closed"}'] == 1 and moves['{service="app",to="open"}'] == 1 + len(windows) \
        and moves['{service="app",to="half_open"}'] >= len(windows), moves
    promtool_check(text)
    logs = sorted((r for r in map(_json, gw.stdout_lines) if r.get("event") == "circuit_breaker"),
                  key=lambda r: r["ts"])      # the audit log (stdout), each worker's flushed on its tick
    assert [r["to"] for r in logs][:3] == ["open", "half_open", "open"] and {r["worker"] for r in logs} <= {0, 1}
    assert any("closed -> open (3 consecutive failures" in x for x in gw.stderr_lines)


def test_gateway_made_answers_never_count(world):
    gw, ups = world
    tok = {"Authorization": "Bearer " + jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, SECRET, "HS256")}
    assert [get(gw, "/gated/x", tok)[0] for _ in range(2)] == [503, 503]     # the upstream's
    assert {get(gw, "/gated/x")[0] for _ in range(12)} == {401}             # refused by auth
    cb = breaker_doc(gw, "gated")
    assert (cb["state"], cb["consecutive_failures"]) == ("closed", 2), cb   # neither a failure nor a success
    assert get(gw, "/gated/x", tok)[0] == 503 and ups["gated"].hits == 3
    assert wait_for(lambda: breaker_doc(gw, "gated")["state"] == "open", 2.0)
    st, hd, _ = get(gw, "/gated/x", tok)
    assert st == 503 and hd["retry-after"] == "30" and ups["gated"].hits == 3
    assert breaker_doc(gw, "gated")["state"] == "open"


def test_a_service_override_and_false_and_a_reload_keeps_the_state(world):
    gw, ups = world
    assert get(gw, "/tight/x")[0] == 503                                    # failure_threshold 1
    assert wait_for(lambda: breaker_doc(gw, "tight")["state"] == "open", 2.0)
    st, hd, _ = get(gw, "/tight/x")
    assert st == 503 and "retry-after" in hd and ups["tight"].hits == 1
    # a reload that changes the breaker's settings keeps its state (the slot is the service's)
    rewrite(gw, gw.text.replace("failure_threshold: 1, timeout: 30s", "failure_threshold: 1, timeout: 20s"))
    hup(gw)
    assert wait_for(lambda: generation_everywhere(gw, 1, 2), 10.0)
    cb = breaker_doc(gw, "tight")
    assert (cb["state"], cb["timeout_s"], cb["times_opened"]) == ("open", 20.0, 1), cb
    st, hd, _ = get(gw, "/tight/x")
    assert st == 503 and 20 < int(hd["retry-after"]) <= 30 and ups["tight"].hits == 1
    assert [get(gw, "/plain/x")[0] for _ in range(8)] == [503] * 8 and ups["plain"].hits == 8
    assert breaker_doc(gw, "plain") is None and breaker_doc(gw, "tight")["failure_threshold"] == 1
    assert '{service="plain"}' not in series(metrics_text(gw), "fastgw_circuit_breaker_state")


def test_an_open_circuit_lets_the_cache_serve_stale_if_error(world):
    gw, ups = world
    up = ups["cached"]
    c = gw.conn()     # one keep-alive connection: one worker, whose cache holds the entry

    def on_conn(path):
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    up.status, up.headers = 200, {"Cache-Control": "max-age=1"}
    st, hd, _ = on_conn("/cached/page")
    assert st == 200 and "stored" in hd["cache-status"], hd
    stored = time.monotonic()
    up.status, up.headers = 503, {}
    assert [on_conn("/cached/other")[0] for _ in range(2)] == [503, 503]
    assert wait_for(lambda: breaker_doc(gw, "cached")["state"] == "open", 2.0)
    st, hd, body = on_conn("/cached/other")
    assert st == 503 and hd["content-type"] == "application/problem+json"      # open, nothing cached
    time.sleep(max(0.0, stored + 1.1 - time.monotonic()))                    # the entry expired
    st, hd, body = on_conn("/cached/page")
    c.close()
    assert (st, body) == (200, b"status 200") and "stale-if-error" in hd["cache-status"], (st, hd)
    assert up.hits == 3 and breaker_doc(gw, "cached")["state"] == "open"


def test_a_failure_ratio_over_both_workers_opens_a_service_that_never_fails_twice_in_a_row(world):
    gw, ups = world
    # new connections: the kernel spreads them over both workers, each counting its share
    answers = [get(gw, "/ratio/x") for _ in range(40)]
    refused = [k for k, (st, hd, _) in enumerate(answers) if hd.get("content-type") == "application/problem+json"]
    assert refused, [a[0] for a in answers]
    first = refused[0]
    assert 10 <= first <= 12, first              # min_requests (then the next failure)
    assert all(st == 503 for st, _, _ in answers[first:])
    assert ups["ratio"].hits == first            # nothing reached the service once it opened
    assert [st for st, _, _ in answers[:first]].count(503) >= first // 2 - 1
    cb = breaker_doc(gw, "ratio")
    assert cb["state"] == "open" and cb["times_opened"] == 1 and cb["failure_ratio"] == 40.0, cb
    assert wait_for(lambda: any("ratio: closed -> open (40% or more of the outcomes in 10s failed" in x
                                for x in gw.stderr_lines), 2.0)
    # under the ratio: every request reaches the service, the breaker stays closed
    steady = [get(gw, "/steady/x")[0] for _ in range(40)]
    assert steady.count(503) == 10 and ups["steady"].hits == 40
    cb = breaker_doc(gw, "steady")
    assert cb["state"] == "closed" and cb["window_failures"] == 10 and cb["window_requests"] == 40, cb
