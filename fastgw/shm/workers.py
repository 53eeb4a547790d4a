"""Worker slots: who runs in each slot, since when, on which config, how busy (L2).

Who writes what:

- Slot ``i`` belongs to the worker running in it, from fork until the supervisor reaps
  it.  Only that worker writes the slot's cells (``WorkerSlot``: boot, heartbeat, state,
  config generation, requests served).
- Between reaping a worker and forking its replacement the supervisor owns slot ``i``:
  ``retire(i)`` adds the slot's requests to the retired accumulator and zeroes the slot.
  Call it only after ``waitpid`` returned for the slot's pid.
- The retired accumulator (requests served by dead workers, number of workers retired)
  is written by the supervisor only.

Readers: the supervisor (heartbeats, to find a hung worker) and the control process
(``/admin/workers``, ``/readyz``).  A reader may see one field of a slot updated and the
next not yet; every field is a single aligned 8-byte cell, so no field is ever torn.

Each slot is one 64-byte cache line: workers never write the same line.  Clocks:
``started_ns`` is wall-clock (for display), ``heartbeat_ns`` is ``time.monotonic_ns()``
(CLOCK_MONOTONIC is one clock for every process on the host).
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from fastgw.shm.layout import ALIGN

# slot states
EMPTY, BOOTING, READY, DRAINING = 0, 1, 2, 3
STATE_NAMES = ("empty", "booting", "ready", "draining")

# cell numbers inside a slot (8 cells of 8 bytes = one cache line)
_PID, _STARTED, _HEARTBEAT, _GENERATION, _STATE, _REQUESTS = range(6)
_CELLS = ALIGN // 8
# cells of the header line; _SEQ is odd while the supervisor retires a slot (a seqlock
# with one writer, so readers retry instead of seeing a request counted twice)
_RETIRED_REQUESTS, _RETIRED_WORKERS, _SEQ = 0, 1, 2


class WorkerInfo(NamedTuple):
    slot: int
    pid: int
    started_ns: int
    heartbeat_ns: int
    generation: int
    state: int
    requests: int

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state] if 0 <= self.state < len(STATE_NAMES) else f"unknown({self.state})"


def size(max_workers: int) -> int:
    """Bytes the part needs: a header line plus one line per slot."""
    return ALIGN * (1 + max_workers)


class WorkerSlot:
    """The writer handle a worker holds for its own slot (one writer: that worker)."""

    __slots__ = ("_q", "_b", "index")

    def __init__(self, q: memoryview, base: int, index: int) -> None:
        self._q = q
        self._b = base
        self.index = index

    def boot(self, generation: int = 0, pid: int | None = None) -> None:
        """Claim the slot: called first thing in a freshly forked worker."""
        q, b = self._q, self._b
        q[b + _REQUESTS] = 0
        q[b + _GENERATION] = generation
        q[b + _STARTED] = time.time_ns()
        q[b + _HEARTBEAT] = time.monotonic_ns()
        q[b + _PID] = os.getpid() if pid is None else pid
        q[b + _STATE] = BOOTING

    def heartbeat(self, now_ns: int | None = None) -> None:
        """Prove liveness; called from the worker's tick."""
        self._q[self._b + _HEARTBEAT] = time.monotonic_ns() if now_ns is None else now_ns

    def set_state(self, state: int) -> None:
        self._q[self._b + _STATE] = state

    def set_generation(self, generation: int) -> None:
        """The config generation this worker now serves (after a reload swap)."""
        self._q[self._b + _GENERATION] = generation

    def served(self, n: int = 1) -> None:
        """Count requests answered (one memory write)."""
        self._q[self._b + _REQUESTS] += n


class WorkerTable:
    """All slots, read by the supervisor and the control process."""

    __slots__ = ("_q", "_base", "max_workers")

    def __init__(self, q: memoryview, offset: int, max_workers: int) -> None:
        self._q = q
        self._base = offset // 8
        self.max_workers = max_workers

    def _slot_base(self, i: int) -> int:
        if not 0 <= i < self.max_workers:
            raise IndexError(f"worker slot {i} out of range 0..{self.max_workers - 1}")
        return self._base + _CELLS * (1 + i)

    def slot(self, i: int) -> WorkerSlot:
        """The writer handle for slot ``i``; only the worker in that slot may use it."""
        return WorkerSlot(self._q, self._slot_base(i), i)

    def read(self, i: int) -> WorkerInfo:
        b = self._slot_base(i)
        return WorkerInfo(i, *self._q[b:b + _REQUESTS + 1].tolist())

    def read_all(self) -> list[WorkerInfo]:
        """Every slot that is not empty."""
        return [w for w in map(self.read, range(self.max_workers)) if w.pid]

    def retire(self, i: int) -> WorkerInfo:
        """Supervisor, after reaping slot ``i``'s worker: fold its requests into the
        retired accumulator, then zero the slot for the replacement.  Returns what the
        slot held."""
        info = self.read(i)
        q, h = self._q, self._base
        b = self._slot_base(i)
        q[h + _SEQ] += 1
        q[h + _RETIRED_REQUESTS] += info.requests
        q[h + _RETIRED_WORKERS] += 1
        for c in range(_CELLS):
            q[b + c] = 0
        q[h + _SEQ] += 1
        return info

    @property
    def retired_requests(self) -> int:
        return self._q[self._base + _RETIRED_REQUESTS]

    @property
    def retired_workers(self) -> int:
        """How many workers were retired (a restart count)."""
        return self._q[self._base + _RETIRED_WORKERS]

    def total_requests(self) -> int:
        """Requests served by live and retired workers: monotonic across respawns, as long
        as the supervisor retires a slot before its replacement boots."""
        q, h = self._q, self._base
        for _ in range(1000):
            seq = q[h + _SEQ]
            total = q[h + _RETIRED_REQUESTS]
            for i in range(self.max_workers):
                total += q[self._slot_base(i) + _REQUESTS]
            if not seq & 1 and q[h + _SEQ] == seq:
                break
        return total  # best effort if the supervisor died inside retire()
