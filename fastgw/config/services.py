"""Schema of ``services.<name>``: an upstream service and its routes (L1).

A service is reached at one ``url``, at a list of weighted ``instances``, or at the
instances DNS ``discovery`` finds (exactly one of the three; ``config.discovery``).  ``timeout`` is the time until the response head arrives (None: the
gateway's ``timeout``); ``read_timeout`` bounds each idle gap while the body streams;
``connect_timeout`` bounds the TCP (and TLS) connect.  ``pool`` sizes the keep-alive pool
kept per instance; ``tls`` applies to ``https://`` instances only.

Rules kept here:
- URLs are ``http://`` or ``https://`` host[:port][/base-path], no credentials, query or
  fragment; one scheme per service;
- at least one instance has a weight above 0;
- ``circuit_breaker`` is an object or ``false`` (``true`` would say nothing).
"""

from __future__ import annotations

from typing import Annotated, Iterator, Literal

import msgspec

from fastgw.config import validators as v
from fastgw.config.balance import HashKey, LoadBalancing, StickyConfig, check_service as _check_balance
from fastgw.config.base import Base, Check, Duration, PositiveDuration
from fastgw.config.cache import CacheRouteConfig
from fastgw.config.compression import CompressionConfig
from fastgw.config.monitoring import CircuitBreakerConfig
from fastgw.config.discovery import DiscoveryConfig
from fastgw.config.transform import TransformConfig
from fastgw.config.ratelimit import RateLimitRule
from fastgw.config.resilience import HealthCheckConfig, OutlierConfig, Percent, RetryConfig
from fastgw.config.routes import RouteConfig

Url = Annotated[str, Check(v.http_url)]


class InstanceConfig(Base):
    url: Url
    weight: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 1  # 0 = receives no traffic


class PoolConfig(Base):
    """Keep-alive pool, per upstream instance, per worker."""

    max_idle: Annotated[int, msgspec.Meta(ge=0)] = 64  # never more than max_connections in effect
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024  # open + connecting
    idle_timeout: PositiveDuration = Duration(60)
    # queued requests when full; then 503.  None = gateway.max_connections: every client
    # connection of the worker may wait for this pool, so a storm queues instead of failing
    max_waiters: Annotated[int, msgspec.Meta(ge=0)] | None = None
    wait_timeout: PositiveDuration = Duration(5)  # longest wait in that queue; then 503


class UpstreamTlsConfig(Base):
    """Client TLS towards ``https://`` instances."""

    verify: bool = True
    ca_file: Annotated[str, Check(v.non_empty)] | None = None  # None = the system store
    server_name: Annotated[str, Check(v.hostname)] | None = None  # SNI/verified name; None = URL host
    cert_file: Annotated[str, Check(v.non_empty)] | None = None  # client certificate (PEM), for mTLS
    key_file: Annotated[str, Check(v.non_empty)] | None = None  # its key; None = in cert_file

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.key_file is not None and self.cert_file is None:
            yield "key_file", "set cert_file too: a client key without its certificate is unused"


class RedirectRewrite(Base):
    """One ``redirect_rewrite`` rule: a value starting with ``from`` gets ``to`` instead."""

    from_: Annotated[str, Check(v.non_empty)] = msgspec.field(name="from")
    to: str


class ServiceConfig(Base):
    name: str | None = None  # display name only; the key under ``services`` is the id
    url: Url | None = None
    instances: list[InstanceConfig] = []
    discovery: DiscoveryConfig | None = None  # instances from DNS, resolved by the control process
    health: Annotated[str, Check(v.url_or_path)] | None = None  # URL, or path on each instance
    timeout: PositiveDuration | None = None  # until the response head; None = gateway.timeout
    connect_timeout: PositiveDuration = Duration(5)
    read_timeout: PositiveDuration = Duration(60)
    health_check: HealthCheckConfig = msgspec.field(default_factory=HealthCheckConfig)  # with ``health``
    outlier_detection: OutlierConfig = msgspec.field(default_factory=OutlierConfig)
    panic_threshold: Percent = 50  # below this share of usable instances, use them all
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0  # extra attempts (config.resilience, docs/resilience.md)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    # load balancing (config.balance, fastgw.upstream.balance, docs/resilience.md)
    load_balancing: LoadBalancing = "round_robin"
    hash_key: HashKey | None = None          # ring_hash/maglev: ip | user | path | header:NAME | cookie:NAME
    sticky: StickyConfig | None = None       # affinity cookie (middleware.sticky)
    slow_start: PositiveDuration | None = None  # ramp a new or recovered instance's weight up
    preserve_host: bool = True  # forward the client's Host (False: the instance's host[:port])
    # with preserve_host false: Location/Content-Location/Refresh pointing at the instance's
    # origin are rewritten to the client's ("auto"), not at all ("off"), or by these prefixes;
    # (YAML 1.1 reads a bare off as false: false means "off", true "auto")
    redirect_rewrite: Literal["auto", "off"] | bool | list[RedirectRewrite] = "auto"
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    tls: UpstreamTlsConfig = msgspec.field(default_factory=UpstreamTlsConfig)
    rate_limit: RateLimitRule | None = None
    # None = monitoring.circuit_breaker; false = no breaker for this service (config.monitoring)
    circuit_breaker: CircuitBreakerConfig | bool | None = None
    compression: CompressionConfig | bool | None = None  # None = the top-level compression
    transform: TransformConfig | None = None  # its routes' defaults, merged per item (config.transform)
    cache: CacheRouteConfig | bool | None = None  # response cache (config.cache); None = the service's / off
    routes: list[RouteConfig] = []

    def upstreams(self) -> list[InstanceConfig]:
        """The instances to send to: ``instances``, or ``url`` as a single instance (none
        with ``discovery``: those are found at run time)."""
        if self.instances:
            return self.instances
        return [InstanceConfig(url=self.url)] if self.url else []

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.discovery is not None:
            if self.url is not None or self.instances:
                yield "discovery", "set exactly one of url, instances or discovery"
            return
        if self.url is not None and self.instances:
            yield "url", "set either url or instances, not both"
        elif self.url is None and not self.instances:
            yield "url", "missing: set url, instances with at least one url, or discovery"
        elif self.instances and not any(i.weight > 0 for i in self.instances):
            yield "instances", "every instance has weight 0: nothing could receive traffic"
        if self.circuit_breaker is True:
            yield "circuit_breaker", ("true is not a breaker: give {failure_threshold, timeout} (or leave it out "
                                      "for monitoring.circuit_breaker), or false to turn it off")
        schemes = {u.url.split(":", 1)[0].lower() for u in self.upstreams()}
        if len(schemes) > 1:
            yield "instances", "mixes http:// and https:// instances; use one scheme per service"
        yield from _check_balance(self)
