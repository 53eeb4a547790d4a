"""Who the gateway connects to (``Peer``) and how one service addresses it (``Instance``) (L3).

Two questions that used to share one object, and must not:

- **Pool identity** (``Peer``): everything that makes two connections interchangeable:
  scheme, host, port and the TLS settings (SNI name, verify, CA file, client
  certificate).  Pools are keyed by ``Peer.key``; two services that reach the same
  host:port with the same TLS settings share one pool and its warm connections.  A file
  named in the TLS settings enters the key with its size and modification time, so a
  renewed CA bundle or client certificate under the same name is a new identity on the
  next reload, like a new name.
- **Instance** (``Instance``): one service's view of a pooled peer: the base path from the
  instance URL (with ``url:``, the service's), the Host header, the label in logs and
  metrics, the weight.  It rides on each request's head and never enters the pool key:
  two services on one host:port with different base paths each keep their own path.

Rule: nothing per-service goes on ``Peer``; nothing connection-level goes on ``Instance``.
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import urlsplit


def _file_id(path: str | None):
    """A file named in the TLS settings, as part of a key: (path, size, mtime) or None."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1)       # missing: the context build reports it
    return (path, st.st_size, st.st_mtime_ns)


def tls_context(tls_cfg) -> ssl.SSLContext:
    """The client TLS context of ``services.<name>.tls`` (verify, CA file, client cert)."""
    ctx = ssl.create_default_context(cafile=getattr(tls_cfg, "ca_file", None))
    if not getattr(tls_cfg, "verify", True):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    cert = getattr(tls_cfg, "cert_file", None)
    if cert:
        ctx.load_cert_chain(cert, getattr(tls_cfg, "key_file", None))
    return ctx


class Peer:
    """One pool identity: where to connect and with which TLS settings."""

    __slots__ = ("scheme", "host", "port", "tls", "server_name", "key", "label")

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                 server_name: str | None = None, key: tuple | None = None) -> None:
        self.scheme = "https" if tls is not None else "http"
        self.host = host
        self.port = port
        self.tls = tls
        self.server_name = server_name or host
        self.key = key if key is not None else (self.scheme, host, port, self.server_name if tls else None)
        hh = host if ":" not in host else f"[{host}]"
        self.label = f"{hh}:{port}"


def peer_key(url: str, tls_cfg) -> tuple:
    """The pool identity of an instance URL under a service's TLS settings (no I/O but stat)."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    port = u.port or (443 if scheme == "https" else 80)
    if scheme != "https":
        return (scheme, u.hostname, port, None)
    return (scheme, u.hostname, port, getattr(tls_cfg, "server_name", None) or u.hostname,
            bool(getattr(tls_cfg, "verify", True)), _file_id(getattr(tls_cfg, "ca_file", None)),
            _file_id(getattr(tls_cfg, "cert_file", None)), _file_id(getattr(tls_cfg, "key_file", None)))


def make_peer(url: str, tls_cfg, key: tuple | None = None) -> Peer:
    """A ``Peer`` for an instance URL (builds the TLS context for ``https://``)."""
    u = urlsplit(url)
    https = u.scheme.lower() == "https"
    port = u.port or (443 if https else 80)
    return Peer(u.hostname, port, tls=tls_context(tls_cfg) if https else None,
                server_name=getattr(tls_cfg, "server_name", None),
                key=key if key is not None else peer_key(url, tls_cfg))


class Instance:
    """One service's instance: its pool and how requests to it are addressed."""

    __slots__ = ("pool", "base_path", "host_header", "label", "weight",
                 # failover (fastgw.resilience): the health-table slot (-1: none), this
                 # worker's consecutive failures and its shm row, the service's name
                 "slot", "fails", "row", "service", "url",
                 # balancing (upstream.balance): this worker's attempts started and
                 # ended (in flight = requests - done), the effective weight (slow
                 # start), the sticky cookie token
                 "requests", "done", "eff", "affinity",
                 # ``requests`` already added to fastgw_upstream_instance_requests_total
                 # (obs.metrics publish_instances, on the tick)
                 "counted")

    def __init__(self, pool, url: str, weight: int = 1) -> None:
        u = urlsplit(url)
        peer = pool.peer
        self.pool = pool
        self.base_path = (u.path or "").rstrip("/").encode("ascii")
        default_port = 443 if peer.tls is not None else 80
        hh = peer.host if ":" not in peer.host else f"[{peer.host}]"
        self.host_header = (hh if peer.port == default_port else f"{hh}:{peer.port}").encode("ascii")
        self.label = peer.label
        self.weight = weight
        self.slot = -1
        self.fails = 0
        self.row = None
        self.service = ""
        self.url = url
        self.requests = 0
        self.done = 0
        self.eff = float(weight)
        self.affinity = b""
        self.counted = 0
