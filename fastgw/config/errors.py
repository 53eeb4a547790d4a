"""The one exception the config loader raises (L1)."""

from __future__ import annotations

from typing import Iterable


class ConfigError(Exception):
    """An invalid config: ``errors`` holds every problem found, each ``"<path>: <message>"``;
    ``where`` the ``(line, column)`` of each in the file, when known."""

    def __init__(self, errors: Iterable[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        self.where: list[tuple[int, int] | None] = [None] * len(self.errors)  # (line, column) per error
        super().__init__("\n".join(self.errors))
