"""Schema of the ``gateway`` section: the data listener and its protection (L1).

Owns the listener address, per-worker connection cap, trusted proxies, request limits,
downstream timeouts, drain timing, PROXY protocol and listener TLS.  ``gateway.timeout``
is also the default upstream ``timeout`` for services that set none.

Rules kept here:
- every timeout is > 0 (a zero timeout would fire at once); ``drain.delay`` may be 0;
- CIDR lists are validated with ``ipaddress`` and stored as written;
- PROXY protocol needs somewhere to trust it from (``trusted_cidrs`` or
  ``gateway.trusted_proxies``); an empty list would refuse every connection.
"""

from __future__ import annotations

from typing import Annotated, Iterator

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration, Size
from fastgw.config.transform import TransformConfig
from fastgw.config.versioning import VersioningConfig

Cidr = Annotated[str, Check(v.cidr)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class LimitsConfig(Base):
    """Size limits of a request (431/414 for heads, 413 for bodies)."""

    max_request_line: Size = Size(8 * 1024)
    max_header_size: Size = Size(8 * 1024)  # one header line
    max_headers_size: Size = Size(32 * 1024)  # the whole head
    max_headers: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    max_body_size: Size = Size(1024 * 1024)

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.max_header_size > self.max_headers_size:
            yield "max_header_size", (
                f"is larger than max_headers_size ({self.max_header_size} > {self.max_headers_size} bytes)"
            )
        for f in ("max_request_line", "max_header_size", "max_headers_size"):
            if getattr(self, f) < 256:
                yield f, f"must be at least 256 bytes, got {getattr(self, f)}"


def _positive_size(v: int) -> int:
    if v <= 0:
        raise ValueError("must be above 0 (or null: off)")
    return v


class TimeoutsConfig(Base):
    """Downstream (client side) timeouts."""

    request_header: PositiveDuration = Duration(60)  # whole request head (slowloris)
    request_body: PositiveDuration = Duration(60)  # idle gap while reading a body
    keepalive: PositiveDuration = Duration(75)  # idle keep-alive; above a cloud LB's 60 s
    send: PositiveDuration = Duration(60)  # client not reading our response
    # a request body's whole time, and its least average rate (bytes/s) once
    # request_body_min_rate_grace has passed; None = off.  Either one -> 408, upstream aborted
    request_body_total: PositiveDuration | None = Duration(300)
    request_body_min_rate: Annotated[Size, Check(_positive_size)] | None = Size(1024)
    request_body_min_rate_grace: PositiveDuration = Duration(10)
    # lingering close after an early answer (the request not read to its end): read and
    # discard for at most this long and this many bytes, so the client can read the answer
    lingering_time: PositiveDuration = Duration(5)
    lingering_size: Size = Size(8 * 1024 * 1024)


class DrainConfig(Base):
    """Graceful stop on TERM: keep serving ``delay``, then finish in-flight by ``timeout``."""

    delay: Duration = Duration(5)
    timeout: PositiveDuration = Duration(30)


class ProxyProtocolConfig(Base):
    """PROXY protocol v1/v2 on the data listener."""

    enabled: bool = False
    trusted_cidrs: list[Cidr] | None = None  # None = gateway.trusted_proxies

    def effective_cidrs(self, trusted_proxies: list[str]) -> list[str]:
        """The CIDRs PROXY headers are accepted from (``trusted_cidrs``, else ``trusted_proxies``)."""
        return trusted_proxies if self.trusted_cidrs is None else self.trusted_cidrs


class ListenerTlsConfig(Base):
    """TLS on the data listener; paths are relative to the working directory."""

    cert_file: Annotated[str, Check(v.non_empty)]
    key_file: Annotated[str, Check(v.non_empty)]  # a path, not the key itself


class GatewayConfig(Base):
    host: Annotated[str, Check(v.non_empty)] = "0.0.0.0"
    port: Port = 8080
    timeout: PositiveDuration = Duration(30)
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1000  # per worker
    workers: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None  # None = CPU count
    trusted_proxies: list[Cidr] = []
    health_path: Annotated[str, Check(v.simple_path)] = "/healthz"
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    drain: DrainConfig = msgspec.field(default_factory=DrainConfig)
    proxy_protocol: ProxyProtocolConfig = msgspec.field(default_factory=ProxyProtocolConfig)
    tls: ListenerTlsConfig | None = None
    request_id_header: Annotated[str, Check(v.header_name)] = "X-Request-ID"
    server_header: Annotated[str, Check(v.header_value)] | None = None  # None = no Server header
    # upstream instance slots in shared memory (health and ejection state); restart-only
    max_upstream_instances: Annotated[int, msgspec.Meta(ge=1, le=65_536)] = 1024
    versioning: VersioningConfig | None = None  # how a request names its API version (config.versioning)
    transform: TransformConfig | None = None  # every route's defaults, merged per item (config.transform)
    # Host sent upstream for an HTTP/1.0 request without Host; None = the local address the
    # client connected to (host:port)
    default_host: Annotated[str, Check(v.host_port)] | None = None
    # believe an incoming X-Forwarded-Host, and only from a gateway.trusted_proxies peer
    trust_forwarded_host: bool = False

    def _check(self) -> Iterator[tuple[str, str]]:
        pp = self.proxy_protocol
        if pp.enabled and not pp.effective_cidrs(self.trusted_proxies):
            yield "proxy_protocol.enabled", (
                "PROXY protocol needs trusted sources: set proxy_protocol.trusted_cidrs or gateway.trusted_proxies"
            )

