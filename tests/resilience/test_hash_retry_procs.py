"""A consistent-hashing service's retry, with real processes: the gateway with 2 workers,
three real upstreams (``tests.support.breaker.SwitchUpstream``, which count what reaches
them), new client connections (the kernel spreads them over both workers).

When the key's instance answers 503, every retry of that key goes to the same next
instance on the ring, from both workers (not a round-robin pick among the others), and a
request without the key still has its retry answered.
"""

from __future__ import annotations

from tests.support.breaker import SwitchUpstream
from tests.support.gateway import Gateway

CONFIG = """
gateway: {host: 127.0.0.1, port: 0, timeout: 5s}
services:
  shards:
    instances: [{url: "U0"}, {url: "U1"}, {url: "U2"}]
    load_balancing: ring_hash
    hash_key: "header:X-Key"
    retries: 1
    retry: {on: [503], backoff: {base: 1ms, max: 2ms}, min_retries_per_second: 1000}
    routes: [{path: "/s/*", name: shards}]
monitoring:
  metrics_port: 0
  logging: {level: warning, access_log: {enabled: false}}
"""


def test_a_keys_retries_all_go_to_the_next_instance_on_the_ring():
    ups = [SwitchUpstream(200).__enter__() for _ in range(3)]
    try:
        text = CONFIG
        for k, u in enumerate(ups):
            text = text.replace(f"U{k}", u.url)
        with Gateway(text, workers=2) as gw:
            def hits():
                return [u.hits for u in ups]

            for key in ("alice", "bob", "carol", "dave"):
                before = hits()
                assert gw.request("GET", "/s/x", headers={"X-Key": key})[0] == 200
                owner = next(k for k, (a, b) in enumerate(zip(before, hits())) if b > a)
                ups[owner].status = 503
                before = hits()
                for _ in range(12):
                    assert gw.request("GET", "/s/x", headers={"X-Key": key})[0] == 200
                got = [b - a for a, b in zip(before, hits())]
                others = [got[k] for k in range(3) if k != owner]
                # (outlier detection may eject the failing owner after a few 503s: then the
                # first pick walks on the same way)
                assert got[owner] >= 1 and sorted(others) == [0, 12], (key, owner, got)
                ups[owner].status = 200
            # without the key: retries still find an instance that answers
            ups[0].status = 503
            assert all(gw.request("GET", "/s/x")[0] == 200 for _ in range(6))
    finally:
        for u in ups:
            u.__exit__()
