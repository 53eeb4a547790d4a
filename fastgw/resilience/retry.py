"""The retry policy of a route and its service's retry budget (L3).

``RetryPolicy`` is compiled once per route from ``services.<name>.retries`` and
``.retry`` (and the route's ``retry_non_idempotent``); the proxy asks it two questions
when an attempt failed (``pipeline/proxy.py``):

- ``condition(kind)`` / ``statuses``: does ``retry.on`` cover this failure?
- ``budget.allow(x, now)``: does the budget allow exchange ``x`` one more retry now?

The budget is Envoy's: retries in flight at most ``budget_percent`` of the service's
*active* requests, with a floor: while fewer than ``min_retries_per_second`` retries were
granted in the current second, a retry is allowed whatever the ratio (with few requests
in flight, 20 % of them would allow hardly one retry at a time).  Past it, a failed attempt is
answered as it is (and counted in ``fastgw_upstream_retry_budget_exhausted_total``).

Counted per worker, one budget per service shared by its routes (and per config
snapshot: a request keeps its route's budget to its end):

- ``active``: this service's requests in flight on this worker, on routes with retries:
  +1 at the first attempt (``Proxy.forward``), -1 where every exchange ends (the logging
  phase, ``Engine.finish`` -> ``done``).  Routes without retries count nothing.
- ``retrying``: those of them in a retry now; an exchange holds one such place from its
  first granted retry to its end (its second retry replaces its first: it is checked
  against the others).

Why per worker and not in shared memory: the live count changes twice per request, and
a shared cell written by every worker per request is a cross-process cache line bounced
per request (and a lock or atomics Python does not have).  The kernel spreads
connections evenly over the workers (SO_REUSEPORT), so a percentage of each worker's
active requests is that percentage of the host's; the floor is per worker (N workers
allow up to N x ``min_retries_per_second``).
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
    __slots__ = ("percent", "floor", "active", "retrying", "second", "granted")

    def __init__(self, percent: float, floor: int) -> None:
        self.percent = percent
        self.floor = floor
        self.active = 0      # the service's requests in flight (routes with retries)
        self.retrying = 0    # of them, those in a retry
        self.second = 0      # int(now) of ``granted``
        self.granted = 0     # retries granted in that second (the floor)

    def allow(self, x, now: float) -> bool:
        """May exchange ``x`` (one of ``active``) start a retry now?  Granted: ``x`` holds
        a place in ``retrying`` until ``done(x)``."""
        others = self.retrying - 1 if x.retrying else self.retrying
        s = int(now)
        if s != self.second:
            self.second, self.granted = s, 0
        if others * 100.0 < self.percent * self.active or self.granted < self.floor:
            self.granted += 1
            if not x.retrying:
                x.retrying = True
                self.retrying += 1
            return True
        return False

    def done(self, x) -> None:
        """Exchange ``x`` ended (the logging phase): it is no longer active, nor retrying."""
        self.active -= 1
        if x.retrying:
            self.retrying -= 1


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
