"""Listener TLS: served with stdlib ssl on uvloop, certificate reloaded on HUP; a renewed
pair that does not load is refused by the supervisor and the old one keeps serving."""

from __future__ import annotations

import os
import shutil
import socket
import ssl

import pytest

from tests.support.config import ECHO_GET_ALL
from tests.support.gateway import Gateway
from tests.support.procs import generation_everywhere, hup, metrics_text, ready_workers, series
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for
from tests.support.certs import self_signed

pytestmark = pytest.mark.timeout(60)

CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: []
  tls: {cert_file: "{TMP}/cert.pem", key_file: "{TMP}/key.pem"}
""" + ECHO_GET_ALL + """monitoring:
  metrics_port: 0
  admin: {port: 0}
  logging:
    level: info
    access_log: {enabled: false}
"""


def _served_cn(port: int) -> tuple[str, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
            s.sendall(b"GET /tls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.rfc4514_string(), out


def test_tls_certificate_reloaded_on_hup(tmp_path):
    a_cert, a_key, _ = self_signed(tmp_path, cn="a.test", name="a")
    b_cert, b_key, _ = self_signed(tmp_path, cn="b.test", name="b")
    with EchoUpstream() as up:
        gw = Gateway(CONFIG, workers=2, upstream=up)
        shutil.copy(a_cert, os.path.join(gw.tmp.name, "cert.pem"))
        shutil.copy(a_key, os.path.join(gw.tmp.name, "key.pem"))
        with gw:
            assert wait_for(lambda: len(ready_workers(gw)) == 2)
            cn, out = _served_cn(gw.port)
            assert cn == "CN=a.test" and out.startswith(b"HTTP/1.1 200")
            # a renewal that does not match its key is refused by the supervisor
            shutil.copy(b_cert, os.path.join(gw.tmp.name, "cert.pem"))
            hup(gw)
            assert wait_for(lambda: series(metrics_text(gw), "fastgw_config_reloads_total")
                            .get('{result="failed"}') == 1)
            assert wait_for(lambda: any("reload refused: gateway.tls" in x for x in gw.stderr_lines), timeout=2)
            assert _served_cn(gw.port)[0] == "CN=a.test"
            # the matching key arrives: the new certificate is served by every worker
            shutil.copy(b_key, os.path.join(gw.tmp.name, "key.pem"))
            hup(gw)
            assert wait_for(lambda: generation_everywhere(gw, 1, 2))
            # the config file is identical: the renewed files alone make this a reload, and the summary says so
            assert wait_for(lambda: any("reload: files: ~gateway.tls.cert_file ~gateway.tls.key_file" in x
                                        for x in gw.stderr_lines), timeout=2)
            assert {_served_cn(gw.port)[0] for _ in range(6)} == {"CN=b.test"}
