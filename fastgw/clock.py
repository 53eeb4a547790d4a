"""Time for the hot path (L0).

``monotonic()`` is the clock for deadlines and durations.  The HTTP ``Date`` header and
the wall-clock timestamp used in logs are refreshed once a second by the worker tick
(``tick()``), never computed per request (STYLE.md item 6).
"""

from __future__ import annotations

import time
from email.utils import formatdate

monotonic = time.monotonic
wall = time.time

# the cached Date line: ``date_header()``, or ``clock.date_line`` read as a module
# attribute by a hot path that avoids the call (b"" until the first tick; never import
# the name: the tick rebinds it)
date_line: bytes = b""
_date_second: int = -1


def tick(now: float | None = None) -> None:
    """Refresh the cached Date header; called by the worker tick (and lazily on first use)."""
    global _date_second, date_line
    if now is None:
        now = time.time()
    sec = int(now)
    if sec != _date_second:
        _date_second = sec
        date_line = b"date: " + formatdate(sec, usegmt=True).encode("ascii") + b"\r\n"


def date_header() -> bytes:
    """``date: <IMF-fixdate>\\r\\n``, as of the last tick."""
    if _date_second < 0:
        tick()
    return date_line
