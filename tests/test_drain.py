"""TERM with real processes: graceful drain per gateway.drain.{delay,timeout}."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

import pytest

from tests.supervisor_helpers import EchoUpstream, Gateway, admin, config, get, ready_workers, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def up():
    with EchoUpstream() as u:
        yield u


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_term_drains_a_slow_request_then_exits_0(up):
    with Gateway(config(up, delay="1s", timeout="5s"), workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        idle = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)   # a keep-alive connection the LB holds
        idle.request("GET", "/before")
        r = idle.getresponse()
        r.read()
        assert r.status == 200
        slow = {}

        def slow_request():
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            c.request("GET", "/delay/2000")
            resp = c.getresponse()
            slow["status"], slow["body"], slow["connection"] = resp.status, resp.read(), resp.getheader("connection")
            slow["t"] = time.monotonic()

        t = threading.Thread(target=slow_request, daemon=True)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        # readiness fails at once, on both listeners
        assert wait_for(lambda: admin(gw, "/readyz", timeout=1)[0] == 503, timeout=0.5, interval=0.02)
        assert get(gw.port, "/healthz", timeout=2)[0] == 503        # a new connection during drain.delay
        # the held keep-alive connection is still answered during the delay
        idle.request("GET", "/during-delay")
        r = idle.getresponse()
        r.read()
        assert r.status == 200
        assert time.monotonic() - t0 < 0.9, "the checks above took longer than drain.delay"
        # after drain.delay: new connections are refused
        time.sleep(max(0.0, t0 + 1.3 - time.monotonic()))
        assert wait_for(lambda: _refused(gw.port), timeout=1.0, interval=0.05), "still accepting after drain.delay"
        t.join(10)
        assert slow.get("status") == 200, slow
        assert slow["connection"] == "close"                       # answered, then closed
        assert gw.proc.wait(8) == 0
        assert slow["t"] - t0 > 1.0
        err = "\n".join(gw.stderr_lines)
        assert "draining" in err
        idle.close()


def test_second_term_is_a_fast_exit(up):
    with Gateway(config(up, delay="5s", timeout="30s"), workers=1) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 1)
        gw.signal(signal.SIGTERM)
        assert wait_for(lambda: admin(gw, "/readyz", timeout=1)[0] == 503, timeout=2)
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.proc.wait(5) == 0
        assert time.monotonic() - t0 < 4
