"""The root of the config file: one ``Config`` holding every section (L1).

``services`` is required (it may be empty); every other section has a default or is
optional.  A missing optional section (``auth``, ``rate_limit``, ``cors``,
``security_headers``, ``ip_filter``) means the feature is off everywhere, except where a
route turns it on (which ``crosscheck`` may refuse, e.g. ``auth: true`` without ``auth``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from fastgw.config import validators as v
from fastgw.config.auth import AuthConfig
from fastgw.config.base import Base, Check
from fastgw.config.cache import CacheConfig
from fastgw.config.compression import CompressionConfig
from fastgw.config.gateway import GatewayConfig
from fastgw.config.monitoring import MonitoringConfig
from fastgw.config.ratelimit_section import RateLimitSection
from fastgw.config.security import CorsConfig, IpFilterConfig, SecurityHeadersConfig
from fastgw.config.services import ServiceConfig

ServiceName = Annotated[str, Check(v.name)]


class Config(Base, kw_only=True):
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    services: dict[ServiceName, ServiceConfig]
    auth: AuthConfig | None = None
    rate_limit: RateLimitSection | None = None
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)
    cors: CorsConfig | None = None
    security_headers: SecurityHeadersConfig | None = None
    ip_filter: IpFilterConfig | None = None
    compression: CompressionConfig | bool | None = None  # the gateway default (services/routes override)
    cache: CacheConfig | None = None  # response cache: per-worker memory, warming, route defaults
