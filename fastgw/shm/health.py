"""Health table: one state byte and a last-change time per upstream instance (L2).

Who writes what: the control process only (it runs the active health checks); workers
read ``states[i]`` on the hot path when they pick an upstream, and poll ``generation``
on their tick to notice that something changed.

Instance indices are assigned from the config snapshot in the same order in every
process; a reload that renumbers instances bumps the config generation, and the
control process rewrites the table for the new numbering.

Write order in ``set``: the timestamp, then the state byte, then the generation, so a
reader that sees a new generation also sees the states it announces (x86-64 keeps stores
in program order; each cell is written with one aligned store).
"""

from __future__ import annotations

import time

from fastgw.shm.layout import ALIGN, align

UNKNOWN, HEALTHY, UNHEALTHY = 0, 1, 2
STATE_NAMES = ("unknown", "healthy", "unhealthy")


def size(slots: int) -> int:
    """A header line (generation), then ``slots`` timestamps, then ``slots`` state bytes."""
    return ALIGN + align(8 * slots) + align(slots)


class HealthTable:
    __slots__ = ("_q", "_gen", "_ts", "states", "slots")

    def __init__(self, mm, q: memoryview, offset: int, slots: int) -> None:
        self._q = q
        self._gen = offset // 8
        self._ts = (offset + ALIGN) // 8
        sb = offset + ALIGN + align(8 * slots)
        # the hot-path read: ``table.states[i]`` is one byte load
        self.states = memoryview(mm)[sb:sb + slots]
        self.slots = slots

    def set(self, i: int, state: int, now_ns: int | None = None) -> bool:
        """Control process: record instance ``i``'s state; returns True if it changed."""
        if self.states[i] == state:
            return False
        self._q[self._ts + i] = time.time_ns() if now_ns is None else now_ns
        self.states[i] = state
        self._q[self._gen] += 1
        return True

    def state(self, i: int) -> int:
        return self.states[i]

    def changed_at(self, i: int) -> int:
        """Wall-clock ns of instance ``i``'s last state change (0: never)."""
        return self._q[self._ts + i]

    @property
    def generation(self) -> int:
        """Bumped on every change; workers compare it on their tick."""
        return self._q[self._gen]

    def release(self) -> None:
        self.states.release()
