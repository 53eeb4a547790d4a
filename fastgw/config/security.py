"""Schemas of the edge security middlewares: cors, security_headers, ip_filter, validate (issue 7)."""

from __future__ import annotations

from fastgw.config.base import Base


class CorsConfig(Base):
    allow_origins: list[str] = []


class SecurityHeadersConfig(Base):
    enabled: bool = True


class IpFilterConfig(Base):
    allow: list[str] = []
    deny: list[str] = []


class ValidateConfig(Base):
    content_types: list[str] = []
