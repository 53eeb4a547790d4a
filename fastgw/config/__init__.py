"""Configuration: schema (frozen msgspec Structs, one module per section) and loader (L1).

Public API::

    config, warnings = load_config("config/gateway.yaml")      # raises ConfigError
    config, warnings = load_config_text(yaml_text, source="<string>")
    config, warnings = load_config_data(plain_dict)
    to_printable(config)   # builtins with secrets as "***" (for --print-config)
    json_schema()          # JSON Schema of the file, for editors

``ConfigError.errors`` lists every problem as ``"<path>: <message>"``.  See docs/config.md.
"""

from fastgw.config.base import Duration, Secret, Size
from fastgw.config.errors import ConfigError
from fastgw.config.gateway import (
    DrainConfig,
    GatewayConfig,
    LimitsConfig,
    ListenerTlsConfig,
    ProxyProtocolConfig,
    TimeoutsConfig,
)
from fastgw.config.loader import load_config, load_config_data, load_config_text, parse_yaml
from fastgw.config.monitoring import (
    AccessLogConfig,
    AuditLogConfig,
    CircuitBreakerConfig,
    LoggingConfig,
    MonitoringConfig,
)
from fastgw.config.pending import NOT_ENFORCED
from fastgw.config.ratelimit_section import RateLimitHeadersConfig, RateLimitSection, RedisConfig
from fastgw.config.redact import to_printable
from fastgw.config.root import Config
from fastgw.config.routes import MatchConfig, RouteConfig
from fastgw.config.schema import json_schema
from fastgw.config.services import InstanceConfig, PoolConfig, ServiceConfig, UpstreamTlsConfig

__all__ = [
    "AccessLogConfig", "AuditLogConfig", "CircuitBreakerConfig", "Config", "ConfigError", "DrainConfig",
    "Duration", "GatewayConfig", "InstanceConfig", "LimitsConfig", "ListenerTlsConfig", "LoggingConfig",
    "MatchConfig", "MonitoringConfig", "NOT_ENFORCED", "PoolConfig", "ProxyProtocolConfig",
    "RateLimitHeadersConfig", "RateLimitSection", "RedisConfig", "RouteConfig", "Secret", "ServiceConfig",
    "Size", "TimeoutsConfig", "UpstreamTlsConfig", "json_schema", "load_config", "load_config_data",
    "load_config_text", "parse_yaml", "to_printable",
]
