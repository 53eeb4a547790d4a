"""Broadcast counters: generations that one process bumps and every worker polls (L2).

Who writes what:

- ``config_generation``: the supervisor, after it validated a reloaded config (HUP); a
  worker whose own generation is lower swaps in the new snapshot on its next tick.
- ``purge_generation``: the control process, when the admin API purges the response
  cache; a worker that sees it move clears its cache on its next tick.

Each counter is one aligned 8-byte cell in its own cache line, with exactly one writer,
so a bump is a plain read-add-store and a poll is one load.
"""

from __future__ import annotations

from fastgw.shm.layout import ALIGN

NAMES = ("config_generation", "purge_generation")
_LINE = ALIGN // 8


def size() -> int:
    return ALIGN * len(NAMES)


class Broadcast:
    __slots__ = ("_q", "_cfg", "_purge")

    def __init__(self, q: memoryview, offset: int) -> None:
        self._q = q
        self._cfg = offset // 8
        self._purge = self._cfg + _LINE

    @property
    def config_generation(self) -> int:
        return self._q[self._cfg]

    def set_config_generation(self, generation: int) -> None:
        """Supervisor only."""
        self._q[self._cfg] = generation

    def bump_config_generation(self) -> int:
        """Supervisor only; returns the new generation."""
        self._q[self._cfg] += 1
        return self._q[self._cfg]

    @property
    def purge_generation(self) -> int:
        return self._q[self._purge]

    def bump_purge_generation(self) -> int:
        """Control process only; returns the new generation."""
        self._q[self._purge] += 1
        return self._q[self._purge]
