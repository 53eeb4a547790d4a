"""Traffic mirroring (issue 26 item 3) with real processes: copies reach a recording shadow
without credentials, the client's status and latency do not change when the shadow is
slow or down, the in-flight bound holds, sampling by percent, results in metrics."""

from __future__ import annotations

import json
import time

import pytest

from fastgw.config import ConfigError, load_config_text
from tests.support.waiting import wait_for
from tests.support.wire import closed_port, exchange, parse_responses
from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream, FakeUpstream, never_answer
from tests.support.procs import metrics_text, series

pytestmark = pytest.mark.timing  # asserts latencies and counts in time windows

CONFIG = """
gateway: {host: 127.0.0.1, port: 0}
services:
  main:
    url: "http://{MAIN}"
    routes:
      - {path: "/m/*", methods: [GET, POST], mirror: {service: shadow, methods: [GET, POST]}}
      - {path: "/keep/*", mirror: {service: shadow, keep_credentials: true}}
      - {path: "/getonly/*", methods: [GET, POST], mirror: {service: shadow}}
      - {path: "/half/*", mirror: {service: shadow, percent: 50}}
      - {path: "/slow/*", mirror: {service: slow, timeout: 2s, max_in_flight: 4}}
      - {path: "/down/*", mirror: {service: down}}
      - {path: "/plain/*"}
  shadow:
    url: "http://{SHADOW}/shadow"
  slow:
    url: "http://{SLOW}"
  down:
    url: "http://127.0.0.1:{DOWN}"
monitoring: {metrics_port: 0, logging: {level: warning}}
"""


@pytest.fixture(scope="module")
def env():
    with EchoUpstream("main") as main, EchoUpstream("shadow") as shadow, FakeUpstream(handler=never_answer) as slow:
        text = (CONFIG.replace("{MAIN}", main.addr).replace("{SHADOW}", shadow.addr)
                .replace("{SLOW}", slow.addr).replace("{DOWN}", str(closed_port())))
        with Gateway(text) as gw:
            yield gw, main, shadow, slow


def _mirror_counts(gw) -> dict:
    return series(metrics_text(gw), "fastgw_mirror_requests_total")


def test_copy_reaches_the_shadow_without_credentials_and_with_the_body(env):
    gw, _main, shadow, _slow = env
    n = len(shadow.requests)
    st, _hd, body = gw.request("POST", "/m/x?a=1", body=b"hello", headers={
        "Authorization": "Bearer t", "Cookie": "s=1", "X-Custom": "v", "Content-Type": "text/plain"})
    assert st == 200 and json.loads(body)["service"] == "main"
    assert wait_for(lambda: len(shadow.requests) == n + 1, timeout=10)
    copy = shadow.requests[-1]
    assert copy["method"] == "POST" and copy["path"] == "/shadow/m/x" and copy["query"] == "a=1"
    assert copy["body_size"] == 5
    assert "authorization" not in copy["headers"] and "cookie" not in copy["headers"]
    assert copy["headers"]["x-custom"] == "v" and copy["headers"]["x-forwarded-for"] == "127.0.0.1"
    gw.request("GET", "/keep/x", headers={"Authorization": "Bearer t", "Cookie": "s=1"})
    assert wait_for(lambda: len(shadow.requests) == n + 2, timeout=10)
    assert shadow.requests[-1]["headers"]["authorization"] == "Bearer t"
    assert shadow.requests[-1]["headers"]["cookie"] == "s=1"
    assert gw.request("POST", "/getonly/x", body=b"")[0] == 200       # POST: not an idempotent default
    assert gw.request("GET", "/getonly/x")[0] == 200
    assert wait_for(lambda: len(shadow.requests) == n + 3, timeout=10)
    time.sleep(0.2)
    assert len(shadow.requests) == n + 3 and shadow.requests[-1]["method"] == "GET"


def test_percent_samples_copies(env):
    gw, _main, shadow, _slow = env
    n = len(shadow.requests)
    raw = b"GET /half/x HTTP/1.1\r\nHost: gw\r\n\r\n" * 399 + b"GET /half/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    data, _ = exchange(gw.port, raw, timeout=20)
    assert [st for st, _h, _b in parse_responses(data)] == [200] * 400
    assert wait_for(lambda: (len(shadow.requests) - n) > 0 and
                    _mirror_counts(gw).get('{route="main-3",result="2xx"}', 0) == len(shadow.requests) - n, timeout=10)
    # sampled = copies sent + copies dropped at max_in_flight (400 pipelined requests can
    # outrun the shadow on a busy machine: a dropped copy was still sampled)
    c = _mirror_counts(gw)
    sampled = c.get('{route="main-3",result="2xx"}', 0) + c.get('{route="main-3",result="dropped"}', 0)
    assert 0.35 <= sampled / 400 <= 0.65, c


def _timed(gw, path: str, n: int) -> list[tuple[int, float]]:
    """(status, seconds) of ``n`` sequential requests on one keep-alive connection."""
    c = gw.conn()
    out = []
    try:
        for i in range(n):
            t = time.monotonic()
            c.request("GET", f"{path}/{i}")
            r = c.getresponse()
            r.read()
            out.append((r.status, time.monotonic() - t))
    finally:
        c.close()
    return out


def _not_delayed(got) -> None:
    # a client that waited for its copy would wait for the shadow's 2 s deadline (slow) or
    # its error; robust to a loaded machine: the median is far below it and no request reaches it
    assert [s for s, _ in got] == [200] * len(got)
    ds = sorted(d for _, d in got)
    assert ds[len(ds) // 2] < 0.5 and ds[-1] < 2.0, ds


def test_a_hanging_shadow_changes_nothing_and_in_flight_is_bounded(env):
    gw, *_ = env
    raw = b"GET /slow/x HTTP/1.1\r\nHost: gw\r\n\r\n" * 19 + b"GET /slow/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    data, _ = exchange(gw.port, raw, timeout=20)
    assert [st for st, _h, _b in parse_responses(data)] == [200] * 20
    # 4 copies (max_in_flight) hang until their 2 s deadline, the 16 others are dropped
    assert wait_for(lambda: _mirror_counts(gw).get('{route="main-4",result="timeout"}', 0) == 4, timeout=10)
    assert _mirror_counts(gw).get('{route="main-4",result="dropped"}', 0) == 16
    _not_delayed(_timed(gw, "/slow", 6))


def test_a_dead_shadow_changes_nothing(env):
    gw, *_ = env
    _not_delayed(_timed(gw, "/down", 20))
    assert wait_for(lambda: _mirror_counts(gw).get('{route="main-5",result="error"}', 0) == 20, timeout=10)


@pytest.mark.parametrize("mirror, want", [
    ("{service: nope}", "services.main.routes[0].mirror.service: no service named 'nope'"),
    ("{service: main}", "services.main.routes[0].mirror.service: is the route's own service: mirror to a shadow service"),
    ("{service: tls}", "services.main.routes[0].mirror.service: 'tls' needs an http:// URL (a mirror does not speak TLS yet)"),
    ("{service: shadow, percent: 0}", "services.main.routes[0].mirror.percent: must be greater than 0, got 0"),
    ("{service: shadow, methods: [FETCH]}", "services.main.routes[0].mirror.methods[0]:"),
])
def test_invalid_mirror_is_refused_with_paths(mirror, want):
    text = ("services:\n  main:\n    url: http://127.0.0.1:9\n    routes:\n      - {path: /s, mirror: " + mirror + "}\n"
            "  shadow:\n    url: http://127.0.0.1:9\n  tls:\n    url: https://127.0.0.1:9\n")
    with pytest.raises(ConfigError) as ei:
        load_config_text(text)
    assert any(e.startswith(want) for e in ei.value.errors), ei.value.errors
