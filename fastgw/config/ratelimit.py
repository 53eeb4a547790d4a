"""Schema of rate limits: the global ``rate_limit`` section and per service/route rules (issue 6)."""

from __future__ import annotations

from typing import Literal

from fastgw.config.base import Base


class RateLimitRule(Base):
    requests_per_second: float
    burst: int
    key: str | list[str] = "total"
    backend: Literal["memory", "redis"] = "memory"
