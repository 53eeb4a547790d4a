"""Schema of the ``auth`` section (owned by the auth middleware work; see issue 5)."""

from __future__ import annotations

from fastgw.config.base import Base, Duration, Secret


class AuthConfig(Base):
    jwt_secret: Secret | None = None
    token_expiry: Duration | None = None
    refresh_token_expiry: Duration | None = None
    roles: list[str] = []
