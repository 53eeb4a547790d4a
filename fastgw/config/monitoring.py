"""Schema of the ``monitoring`` section: admin listener, health checks, breaker, logging (L1).

The admin listener (``/livez``, ``/readyz``, ``/metrics``, ``/admin/*``) binds
``metrics_host:metrics_port``; port 0 picks a free port, printed at start.  Logging has
three streams: the gateway's own log (``logging.output``), the access log (one JSON line
per request, ``access_log.output``, default: the same as ``logging.output``) and the audit
log (auth and admin decisions, ``audit.output``).  An output is ``stdout``, ``stderr`` or a
file path (reopened on USR1).

Rules kept here: the level is one of debug/info/warning/error (case-insensitive, stored
lower-case); the only format is ``json``.  ``tracing`` (off when absent) is in
``config/tracing.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration
from fastgw.config.tracing import TracingConfig

Output = Annotated[str, Check(v.non_empty)]  # "stdout" | "stderr" | a file path


class CircuitBreakerConfig(Base):
    failure_threshold: Annotated[int, msgspec.Meta(ge=1)]  # consecutive failures that open it
    timeout: PositiveDuration  # how long it stays open before a trial request


class AccessLogConfig(Base):
    enabled: bool = True
    output: Output | None = None  # None = logging.output
    log_health: bool = False  # log requests to gateway.health_path


class AuditLogConfig(Base):
    enabled: bool = True
    output: Output = "stdout"


class LoggingConfig(Base):
    level: Annotated[str, Check(v.log_level)] = "info"
    format: Literal["json"] = "json"
    output: Output = "stdout"
    access_log: AccessLogConfig = msgspec.field(default_factory=AccessLogConfig)
    audit: AuditLogConfig = msgspec.field(default_factory=AuditLogConfig)


class MonitoringConfig(Base):
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9090
    metrics_host: Annotated[str, Check(v.non_empty)] = "127.0.0.1"
    health_check_interval: PositiveDuration = Duration(30)
    circuit_breaker: CircuitBreakerConfig | None = None
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    tracing: TracingConfig | None = None  # W3C Trace Context + OTLP export (config/tracing.py)
