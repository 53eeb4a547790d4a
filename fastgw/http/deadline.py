"""One timer per connection, rescheduled by deadline (L2; STYLE.md item 8).

A ``Deadline`` belongs to one connection (the client protocol and the upstream client
each own one).  It holds the current deadline and what it is for (``kind``, a small int
the owner defines; 0 means none), and one event-loop timer armed at most ``horizon``
seconds ahead: the owner sets ``horizon`` to the shortest timeout it ever asks for, so
a new deadline is never earlier than the armed timer and moving it costs two stores,
not a timer.  When the timer fires before the deadline it re-arms itself; when the
deadline has passed it calls ``fire(kind)`` once.

The owner's hot paths may read ``kind`` and store ``at`` directly (``if d.kind ==
T_BODY: d.at = now + t``): that is the two-store move this helper exists for.  A hot
path may also make the move for a new ``kind`` without calling ``set``, when a timer is
armed no later than the new deadline (``d.timer is not None and d.timer_at <= at``):
that timer fires first and re-arms itself, exactly as ``set`` would have left it.
"""

from __future__ import annotations

NONE = 0


class Deadline:
    __slots__ = ("loop", "fire", "horizon", "timer", "timer_at", "at", "kind")

    def __init__(self, loop, fire, horizon: float) -> None:
        self.loop = loop
        self.fire = fire          # callable(kind) when a deadline passes
        self.horizon = horizon    # the timer is armed at most this far ahead
        self.timer = None
        self.timer_at = 0.0
        self.at = 0.0
        self.kind = NONE

    def set(self, kind: int, seconds: float, now: float | None = None) -> None:
        """The deadline is ``seconds`` from now (``now`` if the caller has read the clock)."""
        if now is None:
            now = self.loop.time()
        at = now + seconds
        self.at = at
        self.kind = kind
        if self.timer is None:
            t = min(at, now + self.horizon)
            self.timer = self.loop.call_at(t, self._on_timer)
            self.timer_at = t
        elif self.timer_at > at:  # only a timeout shorter than the horizon gets here
            self.timer.cancel()
            self.timer = self.loop.call_at(at, self._on_timer)
            self.timer_at = at

    def cancel(self) -> None:
        """No deadline any more and no timer (the connection is closed)."""
        self.kind = NONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        kind = self.kind
        if kind == NONE:
            return
        now = self.loop.time()
        if now < self.at:
            t = min(self.at, now + self.horizon)
            self.timer = self.loop.call_at(t, self._on_timer)
            self.timer_at = t
            return
        self.kind = NONE
        self.fire(kind)
