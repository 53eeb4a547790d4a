"""Pool identity and reload (issue #17 items 1 and 2), with real processes.

Pools are keyed by scheme, host, port and TLS settings; the base path and Host header
belong to each service's instance.  A HUP that changes a base path or a TLS setting is
applied under keep-alive load without a failed request.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import time

import pytest

from fastgw.config.services import UpstreamTlsConfig
from fastgw.upstream.peer import peer_key
from tests.support.config import HEAD
from tests.support.gateway import Gateway
from tests.support.procs import (KeepAliveLoad, generation_everywhere, hup, metrics_text, ready_workers, rewrite,
                                 series)
from tests.support.upstream import EchoUpstream, FakeUpstream
from tests.support.waiting import wait_for
from tests.support.certs import self_signed

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------- pure
def test_pool_key_holds_tls_settings_not_the_base_path(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    tls = UpstreamTlsConfig()
    base = peer_key("https://h:8443/a", tls)
    assert peer_key("https://h:8443/b", tls) == base                        # base path: same pool
    assert peer_key("https://h:8443/a", UpstreamTlsConfig(verify=False)) != base
    assert peer_key("https://h:8443/a", UpstreamTlsConfig(ca_file=str(ca))) != base
    assert peer_key("https://h:8443/a", UpstreamTlsConfig(server_name="other")) != base
    assert peer_key("https://h:8444/a", tls) != base and peer_key("http://h:8443/a", tls) != base
    with_ca = peer_key("https://h/a", UpstreamTlsConfig(ca_file=str(ca)))
    ca.write_text("a renewed bundle, same name")                             # new content: new identity
    assert peer_key("https://h/a", UpstreamTlsConfig(ca_file=str(ca))) != with_ca
    # plain http ignores the TLS section entirely
    assert peer_key("http://h/a", UpstreamTlsConfig(verify=False)) == peer_key("http://h/b", tls)


# ---------------------------------------------------------------------- two services, one host:port
TWO = HEAD + """  alpha:
    url: "http://{UP}/alpha"
    routes:
      - path: "/a/*"
        methods: ["GET"]
  beta:
    url: "http://{UP}/beta/"
    routes:
      - path: "/b/*"
        methods: ["GET"]
  weighted:
    instances:
      - {url: "http://{UP}/one"}
      - {url: "http://{UP}/two"}
    routes:
      - path: "/w/*"
        methods: ["GET"]
monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging: {level: info, access_log: {enabled: false}}
"""


def _path(gw, target: str) -> str:
    st, _, body = gw.request("GET", target)
    assert st == 200, body
    return json.loads(body)["path"]


def test_two_services_on_one_host_port_keep_their_base_paths():
    with EchoUpstream() as up, Gateway(TWO, workers=1, upstream=up) as gw:
        for _ in range(3):                     # interleaved, over the one shared pool
            assert _path(gw, "/a/x") == "/alpha/a/x"
            assert _path(gw, "/b/y") == "/beta/b/y"
        assert {_path(gw, "/w/z") for _ in range(4)} == {"/one/w/z", "/two/w/z"}
        # one identity, one pool: the three services share its connections
        created = series(metrics_text(gw), "fastgw_upstream_connections_total").get('{event="created"}', 0)
        assert created <= 2, created


def test_hup_changing_a_base_path_applies_under_load():
    with EchoUpstream() as up, Gateway(TWO, workers=2, upstream=up) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        with KeepAliveLoad("127.0.0.1", gw.port, conns=16, path="/a/load") as load:
            assert wait_for(lambda: load.ok > 50)
            rewrite(gw, TWO.replace("{UP}", up.addr).replace("/alpha", "/gamma"))
            hup(gw)
            assert wait_for(lambda: generation_everywhere(gw, 1, 2))
            n = len(up.requests)
            assert wait_for(lambda: len(up.requests) > n + 50)
            time.sleep(0.2)
        assert load.failed == 0, load.errors[:5]
        assert _path(gw, "/a/x") == "/gamma/a/x"
        assert all(r["path"].startswith("/gamma/") for r in up.requests[-20:])
        assert _path(gw, "/b/x") == "/beta/b/x"


# ---------------------------------------------------------------------- TLS settings on reload
def tls_echo(cert, key, client_ca=None) -> FakeUpstream:
    """The shared fake upstream in echo mode, over TLS (mTLS: only clients ``client_ca`` signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(client_ca))
    return FakeUpstream("echo", name="tls-echo", tls=ctx)


TLS = HEAD + """  secure:
    url: "https://127.0.0.1:{PORT}/base"
    tls: {TLS}
    routes:
      - path: "/*"
        methods: ["GET"]
monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging: {level: info, access_log: {enabled: false}}
"""


def _tls_cfg(port: int, tls: str) -> str:
    return TLS.replace("{PORT}", str(port)).replace("{TLS}", tls)


def test_hup_changing_tls_verify_and_ca_file_applies_under_load(tmp_path):
    cert, key, _ = self_signed(tmp_path, cn="localhost", name="up")
    other, _k, _ = self_signed(tmp_path, cn="localhost", name="other")      # same name, another key
    srv = tls_echo(cert, key).__enter__()
    try:
        ca_a = tmp_path / "ca-a.pem"
        ca_b = tmp_path / "ca-b.pem"
        shutil.copy(cert, ca_a)
        shutil.copy(cert, ca_b)
        steps = [
            f'{{verify: true, ca_file: "{ca_b}", server_name: localhost}}',     # ca_file changes
            '{verify: false}',                                                  # verify changes
        ]
        with Gateway(_tls_cfg(srv.port, f'{{verify: true, ca_file: "{ca_a}", server_name: localhost}}'),
                     workers=2) as gw:
            assert wait_for(lambda: len(ready_workers(gw)) == 2)
            with KeepAliveLoad("127.0.0.1", gw.port, conns=8, path="/load") as load:
                for gen, tls in enumerate(steps, start=1):
                    assert wait_for(lambda: load.ok > 30 * gen)
                    accepted = srv.conns
                    rewrite(gw, _tls_cfg(srv.port, tls))
                    hup(gw)
                    assert wait_for(lambda: generation_everywhere(gw, gen, 2))
                    # a new identity: new pools, new TLS connections to the upstream
                    assert wait_for(lambda: srv.conns > accepted), f"step {gen}: no new connection"
                    ok = load.ok
                    assert wait_for(lambda: load.ok > ok + 30)
            assert load.failed == 0, load.errors[:5]
            closed = series(metrics_text(gw), "fastgw_upstream_connections_total").get('{event="closed"}', 0)
            assert closed >= 1                  # the old pools closed their connections
            # the CA file is really used: a bundle that does not hold the upstream's cert fails
            rewrite(gw, _tls_cfg(srv.port, f'{{verify: true, ca_file: "{other}", server_name: localhost}}'))
            hup(gw)
            assert wait_for(lambda: generation_everywhere(gw, 3, 2))
            st, _, body = gw.request("GET", "/x")
            assert st == 502 and b"CERTIFICATE_VERIFY_FAILED" in body, body
            # a CA file that does not exist: the supervisor refuses the reload, nothing changes
            missing = tmp_path / "missing.pem"
            assert not os.path.exists(missing)
            rewrite(gw, _tls_cfg(srv.port, f'{{verify: true, ca_file: "{missing}"}}'))
            hup(gw)
            assert wait_for(lambda: series(metrics_text(gw), "fastgw_config_reloads_total")
                            .get('{result="failed"}') == 1)
            # (the log line reaches the harness's reader thread a moment after the counter)
            assert wait_for(lambda: any(f"services.secure.tls: cannot load {missing}" in x for x in gw.stderr_lines))
            assert generation_everywhere(gw, 3, 2)
    finally:
        srv.stop()


def test_client_certificate_settings_are_checked_and_part_of_the_identity(tmp_path):
    from fastgw.config import ConfigError, load_config_text
    text = """
services:
  s:
    url: "https://h:1"
    tls: {TLS}
    routes: [{path: "/*"}]
"""
    with pytest.raises(ConfigError) as e:
        load_config_text(text.replace("{TLS}", '{key_file: "k.pem"}'))
    assert any(x.startswith("services.s.tls.key_file: set cert_file too") for x in e.value.errors), e.value.errors
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    cfg, _ = load_config_text(text.replace("{TLS}", f'{{cert_file: "{cert}"}}'))
    assert cfg.services["s"].tls.cert_file == str(cert)
    assert peer_key("https://h:1", cfg.services["s"].tls) != peer_key("https://h:1", UpstreamTlsConfig())


def test_client_certificate_is_presented_to_the_upstream(tmp_path):
    cert, key, _ = self_signed(tmp_path, cn="localhost", name="up")
    ccert, ckey, _ = self_signed(tmp_path, cn="client", name="client")
    srv = tls_echo(cert, key, client_ca=ccert).__enter__()   # mTLS: only the client certificate gets in
    try:
        port = srv.port
        with_cert = f'{{ca_file: "{cert}", server_name: localhost, cert_file: "{ccert}", key_file: "{ckey}"}}'
        with Gateway(_tls_cfg(port, with_cert), workers=1) as gw:
            st, _, body = gw.request("GET", "/mtls")
            assert st == 200 and json.loads(body)["path"] == "/base/mtls", body
            rewrite(gw, _tls_cfg(port, f'{{ca_file: "{cert}", server_name: localhost}}'))
            hup(gw)
            assert wait_for(lambda: generation_everywhere(gw, 1, 1))
            st, _, body = gw.request("GET", "/mtls")
            assert st == 502, body                # no client certificate: the upstream refuses
    finally:
        srv.stop()
