"""The supervisor's records of its children (L8): one ``Child`` per forked process (a
worker or the control process: its channel, boot and heartbeat state, why it was killed),
one ``Slot`` per worker position (the pid serving it, respawn backoff, boot failures,
retirement on TTOU), and how an exit status reads in the log.  The arbiter owns and
changes them; nothing here forks, signals or reads a channel.
"""

from __future__ import annotations

import os
import signal
import time

from fastgw.supervisor import ipc


def heartbeat_timeout() -> float:
    """``FASTGW_HEARTBEAT_TIMEOUT`` (seconds, default 10): testing and tuning only."""
    try:
        return max(0.5, float(os.environ.get("FASTGW_HEARTBEAT_TIMEOUT", "10")))
    except ValueError:
        return 10.0


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Child:
    __slots__ = ("kind", "slot", "pid", "chan", "started", "ready", "last_beat", "boot_error", "killed")

    def __init__(self, kind: str, slot: int, pid: int, chan: ipc.Channel) -> None:
        self.kind = kind            # "worker" | "control"
        self.slot = slot
        self.pid = pid
        self.chan = chan
        self.started = time.monotonic()
        self.ready = False
        self.last_beat = self.started
        self.boot_error = ""
        self.killed = ""            # why the supervisor killed or replaced it, if it did


class Slot:
    __slots__ = ("pid", "fails", "respawn_at", "boot_failures", "retiring")

    def __init__(self) -> None:
        self.pid = 0
        self.fails = 0
        self.respawn_at = 0.0
        self.boot_failures = 0
        self.retiring = False
