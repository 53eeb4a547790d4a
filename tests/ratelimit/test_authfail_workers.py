"""The failed-authentication guard across two real workers (fastgw/middleware/ratelimit_ip.py).

The guard peeks an address's failed-authentication budget only when the mark of the
budget's table stripe says one there can be refilling (``RateTable.take_marked``); the
mark is shared memory, so failures charged by one worker must stop the address in every
worker.  One keep-alive connection spends the budget (every failure charged by the worker
that owns that connection); then new connections, which the kernel spreads over both
workers (SO_REUSEPORT), must all get 429 before any token check, a valid token included,
and both workers must have answered some of them.
"""

from __future__ import annotations

import json

from tests.support.config import ECHO_HEAD
from tests.support.gateway import Gateway
from tests.support.procs import ready_workers, workers
from tests.support.ratelimit import AUTH_BLOCK, token
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for
from tests.support.wire import Client, exchange, one_response

BURST = 3
CONFIG = ECHO_HEAD + """      - path: "/guarded/*"
        name: guarded
        methods: ["GET"]
        auth: true
rate_limit:
  default: {requests_per_second: 0.05, burst: %d}
""" % BURST + AUTH_BLOCK + """
monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging:
    level: warning
"""


def _request(tok: str, close: bool) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"GET /guarded/x HTTP/1.1\r\nHost: gw\r\n{conn}Authorization: Bearer {tok}\r\n\r\n".encode()


def test_failures_charged_by_one_worker_stop_the_address_in_the_other():
    bad = token("mallory", secret="not-the-gateway-secret-" + "q" * 30)
    with EchoUpstream() as up, Gateway(CONFIG, upstream=up, workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2, timeout=15), "2 workers did not come up"
        # a fresh address: the budget's stripe has no mark yet, so the peek is skipped
        st, _h, _b = one_response(exchange(gw.port, _request(token("dave"), True))[0])
        assert st == 200
        before = {w["slot"]: w["requests"] for w in workers(gw)["workers"]}
        with Client(gw.port) as c:          # one connection: one worker charges every failure
            got = []
            for _ in range(BURST + 1):
                c.send(_request(bad, False))
                got.append(c.response()[0])
        assert got == [401] * BURST + [429]
        statuses, bodies = [], []
        for i in range(24):                 # new connections: both workers
            st, _h, body = one_response(exchange(gw.port, _request(bad if i % 2 else token("dave"), True))[0])
            statuses.append(st)
            bodies.append(body)
        assert statuses == [429] * 24
        assert all(json.loads(b)["violated-policies"] == ["auth_failures"] for b in bodies)

        def both_served() -> bool:
            after = {w["slot"]: w["requests"] for w in workers(gw)["workers"]}
            return sum(after.values()) - sum(before.values()) >= BURST + 1 + 24 and \
                all(after[s] > before[s] for s in before)
        assert wait_for(both_served, timeout=5, interval=0.2), "the new connections did not reach both workers"
