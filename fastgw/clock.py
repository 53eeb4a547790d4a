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

_date_header: bytes = b""
_date_second: int = -1
# ``date_header()``'s value as a module attribute, for a hot path that reads it as
# ``clock.date_line`` without a call (b"" until the first tick; never import the name)
date_line: bytes = b""


def tick(now: float | None = None) -> None:
    """Refresh the cached Date header; called by the worker tick (and lazily on first use)."""
    global _date_header, _date_second, date_line
    if now is None:
        now = time.time()
    sec = int(now)
    if sec != _date_second:
        _date_second = sec
        _date_header = date_line = b"date: " + formatdate(sec, usegmt=True).encode("ascii") + b"\r\n"


def date_header() -> bytes:
    """``date: <IMF-fixdate>\\r\\n``, as of the last tick."""
    if _date_second < 0:
        tick()
    return _date_header
