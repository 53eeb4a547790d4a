"""The one exception the config loader raises (L1)."""

from __future__ import annotations

from typing import Iterable


class ConfigError(Exception):
    """An invalid config: ``errors`` holds every problem found, each ``"<path>: <message>"``."""

    def __init__(self, errors: Iterable[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))
