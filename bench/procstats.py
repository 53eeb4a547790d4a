"""CPU time and memory of a process tree, read from /proc.

Rules:
  1. A tree is a root pid and all its live descendants, found by scanning the ppid field
     of /proc/*/stat; a proxy's supervisor, workers and control process are all counted.
  2. CPU time of a tree = sum over its live processes of utime + stime + cutime + cstime
     (the c* fields hold the time of children already reaped, so a worker that exited
     during the run still counts once and never twice).  Reported in seconds.
  3. Memory is USS (Private_Clean + Private_Dirty) and PSS from /proc/PID/smaps_rollup,
     summed over the tree.  RSS is never used: after fork it counts shared pages once
     per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rindex(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def tree(root: int) -> list[int]:
    """The root and all its live descendants (rule 1)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in out or not os.path.exists(f"/proc/{pid}"):
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass(frozen=True)
class Cpu:
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)


def cpu(pids: list[int]) -> Cpu:
    """CPU seconds of the given processes, reaped children included (rule 2)."""
    user = system = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is None:
            continue
        # fields 14-17 (utime, stime, cutime, cstime) are rest[11:15]
        user += int(f[11]) + int(f[13])
        system += int(f[12]) + int(f[14])
    return Cpu(user / _TICK, system / _TICK)


@dataclass(frozen=True)
class Mem:
    uss: int  # bytes
    pss: int

    def __sub__(self, other: Mem) -> Mem:
        return Mem(self.uss - other.uss, self.pss - other.pss)


def mem(pids: list[int]) -> Mem:
    """USS and PSS in bytes, summed over the processes (rule 3)."""
    uss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("Private_Clean", "Private_Dirty"):
                        uss += int(value.split()[0]) * 1024
                    elif key == "Pss":
                        pss += int(value.split()[0]) * 1024
        except (OSError, ValueError):
            continue
    return Mem(uss, pss)


def cpu_busy(cpus: tuple[int, ...]) -> float:
    """Seconds the given CPUs spent busy (not idle or iowait) since boot, from /proc/stat.

    Busy time on the proxy's CPUs minus the proxy's own CPU time is what other
    processes took from it during a run: the noisy-neighbour check of runner.py.
    """
    busy = 0
    want = {f"cpu{c}" for c in cpus}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in want:
                values = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
                busy += sum(values) - values[3] - values[4]
    return busy / _TICK
