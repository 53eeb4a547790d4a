"""Readiness waits for the first JWKS fetch, on both listeners, through the real gateway."""

from __future__ import annotations

import json
import time
import urllib.request

from tests.support.config import ECHO_HEAD
from tests.support.wire import closed_port
from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream



def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_readiness_is_503_while_the_jwks_cannot_be_fetched():
    dead = closed_port()  # nothing listens here: the JWKS fetch fails
    with EchoUpstream() as up:
        cfg = ECHO_HEAD.replace("{UP}", up.addr) + f"""      - path: "/*"
        auth: true
auth:
  jwks:
    - url: "http://127.0.0.1:{dead}/jwks.json"
      allow_http: true
      timeout: 500ms
monitoring: {{metrics_port: 0, logging: {{level: info}}}}
"""
        with Gateway(cfg, workers=2) as gw:
            admin = gw.wait_admin()
            time.sleep(2.5)  # a tick or two after boot
            assert _status(f"http://127.0.0.1:{gw.port}/healthz") == 503
            assert _status(f"http://127.0.0.1:{admin}/readyz") == 503
            # and the operational log says why (once per worker, not once per tick)
            waiting = [x for x in gw.stderr_lines if "waiting for the first JWKS fetch (auth.jwks)" in x]
            assert len(waiting) == 2, gw.stderr_lines
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/livez", timeout=3) as r:
                assert r.status == 200
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=3)
            except urllib.error.HTTPError as e:
                reasons = json.loads(e.read())["reasons"]
                assert any("workers ready" in r for r in reasons)
