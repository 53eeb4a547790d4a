"""DNS discovery with real processes: a gateway with 2 workers, real upstreams on loopback,
and a DNS server the test starts (``tests.support.dns``), never the machine's resolver.

"Both workers" is shown with many client connections: the kernel spreads connections
over the two workers' SO_REUSEPORT sockets, so 12 connections all landing on one worker
has a chance of 2^-11; every one of them must reach the new instance.
"""

from __future__ import annotations

import http.client
import json
import time

from fastgw.demo.echo import EchoServer

from tests.support.dns import DnsServer
from tests.support.gateway import Gateway
from tests.support.procs import admin, generation_everywhere, hup, metrics_text, rewrite, series
from tests.support.waiting import wait_for

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: []
services:
  app:
    discovery: {DISCOVERY}
    routes:
      - path: "/*"
        name: main
monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging: {level: info, access_log: {enabled: false}}
"""


def _config(discovery: str) -> str:
    return CONFIG.replace("{DISCOVERY}", discovery)


def _echo(host: str, port: int, name: str) -> EchoServer:
    srv = EchoServer(host, port, name).start()
    srv.socket.listen(256)
    return srv


def _who(conn: http.client.HTTPConnection, path: str = "/x") -> tuple[int, str]:
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    return r.status, json.loads(body)["service"] if r.status == 200 else ""


def _names(gw: Gateway, n: int) -> list[str]:
    out = []
    for _ in range(n):
        st, _h, body = gw.request("GET", "/x", timeout=5)
        out.append(json.loads(body)["service"] if st == 200 else str(st))
    return out


def _failures(gw: Gateway) -> float:
    return series(metrics_text(gw), "fastgw_discovery_failures_total").get('{service="app"}', 0.0)


def test_a_records_change_reaches_both_workers_and_failure_keeps_the_last_set():
    one = _echo("127.0.0.1", 0, "one")
    port = one.server_address[1]
    two = _echo("127.0.0.2", port, "two")
    try:
        with DnsServer(ttl=1) as dns:
            disc = (f'{{type: dns, name: "svc.test:{port}", refresh: 200ms, min_ttl: 50ms, timeout: 300ms, '
                    f'resolvers: ["{dns.addr}"]}}')
            with Gateway(_config(disc), workers=2) as gw:
                # no record yet: no instance, 503, readiness unaffected, failures counted
                assert wait_for(lambda: _failures(gw) >= 1, 5)
                st, _h, body = gw.request("GET", "/x")
                assert st == 503 and b"no healthy instance" in body, (st, body)
                assert admin(gw, "/readyz")[0] == 200
                dns.a["svc.test"] = ["127.0.0.1"]
                assert wait_for(lambda: _names(gw, 4) == ["one"] * 4, 5)
                # a second address: every connection (both workers) reaches it, no reload
                conns = [gw.conn(5) for _ in range(12)]
                for c in conns:
                    assert _who(c) == (200, "one")
                dns.a["svc.test"] = ["127.0.0.1", "127.0.0.2"]
                t0 = time.monotonic()
                seen = [set() for _ in conns]
                while not all("two" in s for s in seen) and time.monotonic() - t0 < 5:
                    for c, s in zip(conns, seen):
                        for _ in range(2):  # back to back: round-robin gives one of each
                            st, who = _who(c)
                            assert st == 200
                            s.add(who)
                    time.sleep(0.05)
                assert all(s == {"one", "two"} for s in seen), seen
                doc = json.loads(admin(gw, "/admin/upstreams")[2])["services"]["app"]
                assert sorted(i["url"] for i in doc["instances"]) == [
                    f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"]
                assert {i["source"] for i in doc["instances"]} == {"dns"}
                assert doc["discovery"]["resolved"] is True
                # the DNS server fails: the last good set stays, the failures are counted
                before = _failures(gw)
                dns.mode = "servfail"
                assert wait_for(lambda: _failures(gw) >= before + 2, 5)
                assert set(_names(gw, 8)) == {"one", "two"}
                assert any("lookup failed" in line and "keeping the last good set of 2" in line
                           for line in gw.stderr_lines), gw.stderr_lines[-10:]
                # back: an address removed reaches the workers too
                dns.mode = "ok"
                dns.a["svc.test"] = ["127.0.0.2"]
                assert wait_for(lambda: set(_names(gw, 6)) == {"two"}, 5)
                for c in conns:
                    c.close()
                assert not any("Traceback" in line for line in gw.stderr_lines), gw.stderr_lines[-20:]
    finally:
        one.stop()
        two.stop()


def test_srv_records_ports_weights_and_priority():
    ups = [_echo("127.0.0.1", 0, n) for n in ("light", "heavy", "backup")]
    light, heavy, backup = (u.server_address[1] for u in ups)
    try:
        with DnsServer(ttl=1) as dns:
            dns.a["a.test"] = ["127.0.0.1"]
            dns.srv["_http._tcp.svc.test"] = [(10, 1, light, "a.test"), (10, 3, heavy, "a.test"),
                                             (20, 50, backup, "a.test")]
            disc = (f'{{type: dns_srv, name: "_http._tcp.svc.test", refresh: 200ms, min_ttl: 50ms, '
                    f'timeout: 300ms, resolvers: ["{dns.addr}"]}}')
            with Gateway(_config(disc), workers=2) as gw:
                conns = [gw.conn(5) for _ in range(8)]
                # each worker picks the set up on its own tick (1 s)
                assert wait_for(lambda: all(_who(c)[0] == 200 for c in conns), 5)
                names = []
                for _ in range(25):
                    for c in conns:
                        st, who = _who(c)
                        assert st == 200
                        names.append(who)
                share = names.count("heavy") / len(names)
                assert "backup" not in names            # a higher priority is not used
                assert 0.65 <= share <= 0.85, share      # weights 1:3
                for c in conns:
                    c.close()
                # the lower priority's records go away: the backup's port takes over
                dns.srv["_http._tcp.svc.test"] = [(20, 50, backup, "a.test")]
                assert wait_for(lambda: set(_names(gw, 6)) == {"backup"}, 5)
                # a reload builds the service from the published set (no 503 gap)
                rewrite(gw, _config(disc).replace("name: main", "name: main\n        timeout: 9s"))
                dns.mode = "drop"       # and does not need DNS to answer
                hup(gw)
                assert wait_for(lambda: generation_everywhere(gw, 1, 2), 8)
                assert set(_names(gw, 6)) == {"backup"}
    finally:
        for u in ups:
            u.stop()
