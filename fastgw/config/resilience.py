"""Schema of a service's failover settings (L1): ``health_check``, ``outlier_detection``,
``panic_threshold`` and ``retry`` (with the service's ``retries`` count).  The mechanisms
are in ``fastgw.resilience``; docs/resilience.md says how they interact.

Rules kept here:
- ``expected_status`` is ``"200-399"``, ``"200"`` or a comma list of both, inside 100-599;
- ``panic_threshold`` is a percentage, written ``50%`` or ``50`` (0 turns panic mode off);
- ``retry.on`` names conditions from ``RETRY_ON``.
"""

from __future__ import annotations

from typing import Annotated, Iterator

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration, Size

RETRY_ON = ("connect-failure", "reset", "timeout", "502", "503", "504")
DEFAULT_RETRY_ON = ["connect-failure", "reset", "502", "503", "504"]


def status_ranges(s: str) -> str:
    """``"200-399"`` | ``"200"`` | ``"200,204,300-399"``: every status within 100-599."""
    parse_status_ranges(s)
    return s


def parse_status_ranges(s) -> tuple[tuple[int, int], ...]:
    if isinstance(s, int):
        s = str(s)
    out = []
    for part in s.split(","):
        part = part.strip()
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"expected status codes like '200-399' or '200,204', got {s!r}") from None
        if not (100 <= a <= b <= 599):
            raise ValueError(f"status range {part!r} must lie within 100-599, low to high")
        out.append((a, b))
    return tuple(out)


def percent(x) -> float:
    """``50%`` | ``50`` | ``12.5%`` -> 50.0; within 0-100."""
    if isinstance(x, bool):
        raise ValueError(f"expected a percentage like '50%', got {x!r}")
    if isinstance(x, str):
        t = x.strip().removesuffix("%").strip()
        try:
            x = float(t)
        except ValueError:
            raise ValueError(f"expected a percentage like '50%', got {x!r}") from None
    if not 0 <= x <= 100:
        raise ValueError(f"a percentage must be within 0-100, got {x:g}")
    return float(x)


def _retry_on(x: str | int) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        x = str(x)   # YAML reads the documented `on: [..., 502, 503, 504]` as numbers
    if x not in RETRY_ON:
        raise ValueError(f"unknown retry condition {x!r}: use {', '.join(RETRY_ON)}")
    return x


Percent = Annotated[str | int | float, Check(percent)]


class HealthCheckConfig(Base):
    """Active health checks (run by the control process, once per gateway host)."""

    interval: PositiveDuration | None = None  # None = monitoring.health_check_interval
    timeout: PositiveDuration = Duration(1)   # connect and read, each
    healthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    expected_status: Annotated[str, Check(status_ranges)] = "200-399"
    headers: dict[Annotated[str, Check(v.header_name)], Annotated[str, Check(v.header_value)]] = {}


class OutlierConfig(Base):
    """Passive ejection from the failures real requests see."""

    enabled: bool = True
    consecutive_failures: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 5
    base_ejection_time: PositiveDuration = Duration(30)
    max_ejection_time: PositiveDuration = Duration(300)  # cap of base x times ejected
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50


class BackoffConfig(Base):
    base: PositiveDuration = Duration(0.025)
    max: PositiveDuration = Duration(0.25)


class RetryConfig(Base):
    """How the service's ``retries`` extra attempts are made."""

    on: list[Annotated[str | int, Check(_retry_on)]] = msgspec.field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    per_try_timeout: PositiveDuration | None = None  # None = the route's timeout
    backoff: BackoffConfig = msgspec.field(default_factory=BackoffConfig)
    budget_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 20.0
    min_retries_per_second: Annotated[int, msgspec.Meta(ge=0)] = 10
    max_body: Size = Size(64 * 1024)

    def _check(self) -> Iterator[tuple[str, str]]:
        if self.backoff.max < self.backoff.base:
            yield "backoff.max", f"is below backoff.base ({self.backoff.max:g}s < {self.backoff.base:g}s)"
