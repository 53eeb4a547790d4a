"""Schema of the ``monitoring`` section: listeners, health checks, breaker, logging (L1).

Two listeners with two jobs: the probe/metrics listener (``/livez``, ``/readyz``,
``/metrics``; no secrets) binds ``metrics_host:metrics_port``, and the admin API
(``/admin/*``, bearer token ``admin.token``) binds ``admin.host:admin.port`` when the
``admin`` block is set.  Port 0 picks a free port, printed at start.  Logging has three
streams: the gateway's own log (``logging.output``, default stderr, ``format`` json or
text), the access log (one JSON line per request, ``access_log.output``, default stdout;
null = the same as ``logging.output``) and the audit log (auth and admin decisions,
reloads and signals, ``audit.output``).  An output is ``stdout``, ``stderr`` or a file
path (reopened on USR1).

Rules kept here: the level is one of debug/info/warning/error (case-insensitive, stored
lower-case); an empty admin token (``${ADMIN_TOKEN:-}`` unset) means no token.
``tracing`` (off when absent) is in ``config/tracing.py``.  ``circuit_breaker`` is the
default breaker of every service (``circuit_breaker_of`` applies a service's own).
"""

from __future__ import annotations

from typing import Annotated, Iterator, Literal

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration, Secret, Size
from fastgw.config.resilience import percent
from fastgw.config.tracing import TracingConfig

Output = Annotated[str, Check(v.non_empty)]  # "stdout" | "stderr" | a file path


def _ratio(x):
    return None if x is None else percent(x)


class CircuitBreakerConfig(Base):
    """A service's circuit breaker (``monitoring.circuit_breaker``: every service's
    default; ``services.<name>.circuit_breaker`` overrides it, ``false`` turns it off).
    Semantics in docs/resilience.md; the state is shared by the workers (``shm.breaker``)."""

    failure_threshold: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]  # consecutive failed exchanges that open it
    timeout: PositiveDuration  # how long it stays open before trial requests (and each trial window)
    half_open_requests: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1  # trials per window, all workers together
    # also open when, over the last ``window`` (all workers together), at least
    # ``min_requests`` outcomes were counted and this share of them failed (None: off)
    failure_ratio: Annotated[str | int | float | None, Check(_ratio)] = None
    min_requests: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20
    window: PositiveDuration = Duration(10)

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.failure_ratio is not None and self.failure_ratio <= 0:
            yield "failure_ratio", "must be above 0% (leave it out to count only consecutive failures)"
        if not 1 <= self.window <= 600:
            yield "window", f"must be within 1s-10m, got {self.window:g}s"


def circuit_breaker_of(monitoring, service) -> CircuitBreakerConfig | None:
    """The breaker in effect for ``service`` (a ServiceConfig): its own, none when it
    says ``false``, else the ``monitoring`` default (None: no breaker)."""
    own = getattr(service, "circuit_breaker", None)
    if own is False:
        return None
    if isinstance(own, CircuitBreakerConfig):
        return own
    return monitoring.circuit_breaker


class AccessLogConfig(Base):
    enabled: bool = True
    output: Output | None = "stdout"  # None = logging.output
    log_health: bool = False  # log requests to gateway.health_path
    # optional fields for `fastgw replay` (opt-in: a query string or header may hold secrets)
    query: bool = False  # log the raw query string as `query`
    headers: list[Annotated[str, Check(v.header_name_lower)]] = []  # log these request headers as `headers`


class AuditLogConfig(Base):
    enabled: bool = True
    output: Output = "stdout"


class LoggingConfig(Base):
    level: Annotated[str, Check(v.log_level)] = "info"
    format: Literal["json", "text"] = "json"
    output: Output = "stderr"
    access_log: AccessLogConfig = msgspec.field(default_factory=AccessLogConfig)
    audit: AuditLogConfig = msgspec.field(default_factory=AuditLogConfig)


class AdminConfig(Base):
    """The admin API listener (``/admin/*``)."""

    host: Annotated[str, Check(v.non_empty)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9091
    token: Secret | None = None  # None or "": answers only on loopback, refuses writes
    max_body: Size = Size(64 * 1024)  # request bodies (JSON) of the admin API


class MonitoringConfig(Base):
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9090
    metrics_host: Annotated[str, Check(v.non_empty)] = "127.0.0.1"
    health_check_interval: PositiveDuration = Duration(30)
    circuit_breaker: CircuitBreakerConfig | None = None
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    admin: AdminConfig | None = None  # None = no admin API listener
    tracing: TracingConfig | None = None  # W3C Trace Context + OTLP export (config/tracing.py)
