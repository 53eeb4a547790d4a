"""The retry policy of a route and its service's retry budget (L3).

``RetryPolicy`` is compiled once per route from ``services.<name>.retries`` and
``.retry`` (and the route's ``retry_non_idempotent``); the proxy asks it two questions
when an attempt failed (``pipeline/proxy.py``):

- ``on_error(kind)`` / ``on_status(status)``: does ``retry.on`` cover this failure?
- ``allow(now)``: does the budget allow one more retry now?

The budget is Envoy's idea over a one-second window per worker: retries in the window at
most ``budget_percent`` of the requests (of this window, or of the one before when that is
more: the first requests of a window are not a fair base), but always at least
``min_retries_per_second``; past it, a failed attempt is answered as it is (and counted
in ``fastgw_upstream_retry_budget_exhausted_total``).  One budget per service per worker,
shared by the service's routes.
"""

from __future__ import annotations

import random

from fastgw.config.resilience import RETRY_ON

# error kinds -> the retry.on condition they are
ERROR_COND = {
    "upstream_refused": "connect-failure", "upstream_unreachable": "connect-failure",
    "upstream_tls": "connect-failure", "upstream_connect_timeout": "connect-failure",
    "upstream_reset": "reset",
    "upstream_timeout": "timeout",
}
CONNECT_FAILURE = "connect-failure"


class Budget:
    __slots__ = ("percent", "floor", "window", "requests", "prev", "retries")

    def __init__(self, percent: float, floor: int) -> None:
        self.percent = percent
        self.floor = floor
        self.window = 0      # int(now): the current one-second window
        self.requests = 0    # requests (first attempts) counted since the window began
        self.prev = 0        # requests of the window before (the hot path counts without a clock)
        self.retries = 0     # retries granted in the window

    def allow(self, now: float) -> bool:
        w = int(now)
        if w != self.window:
            self.prev = self.requests if w == self.window + 1 else 0
            self.window, self.requests, self.retries = w, 0, 0
        base = self.requests if self.requests > self.prev else self.prev
        if self.retries < self.floor or self.retries < base * self.percent / 100.0:
            self.retries += 1
            return True
        return False


class RetryPolicy:
    __slots__ = ("retries", "on", "statuses", "non_idempotent", "per_try", "base", "cap", "max_body",
                 "budget")

    def __init__(self, svc, rc, budget: Budget) -> None:
        r = svc.retry
        self.retries = svc.retries
        self.on = frozenset(c for c in r.on if c in RETRY_ON and not c.isdigit())
        self.statuses = frozenset(int(c) for c in r.on if c.isdigit())
        self.non_idempotent = bool(getattr(rc, "retry_non_idempotent", False))
        self.per_try = float(r.per_try_timeout) if r.per_try_timeout is not None else None
        self.base = float(r.backoff.base)
        self.cap = float(r.backoff.max)
        self.max_body = int(r.max_body)
        self.budget = budget

    def condition(self, kind: str) -> str | None:
        """The ``retry.on`` condition error ``kind`` is, if the policy retries it."""
        c = ERROR_COND.get(kind)
        return c if c in self.on else None

    def backoff(self, n: int) -> float:
        """Delay before retry ``n`` (1-based): full jitter over base x 2^(n-1), capped."""
        return random.uniform(0, min(self.cap, self.base * (1 << (n - 1))))
