"""The one poll-until-true of the suite."""

from __future__ import annotations

import http.client
import time


def wait_for(pred, timeout: float = 5.0, interval: float = 0.05):
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except (OSError, http.client.HTTPException, ValueError):
            v = None
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
