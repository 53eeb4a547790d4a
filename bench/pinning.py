"""Which CPUs the proxy under test gets, and which the load side gets.

Rules:
  1. The proxy under test (nginx as a proxy, or fastgw) runs on its own CPU(s); the load
     side -- wrk or the open-loop generator, the upstream nginx and this harness -- shares
     the remaining CPU(s).  On a 2-core machine: proxy on CPU 1, load on CPU 0.
  2. A proxy with W workers gets W CPUs of its own when the machine has W+1 or more;
     otherwise it shares all CPUs with the load side and the layout says so (N-worker
     figures on a 2-core machine are reported, never enforced).
  3. Pinning is done with ``taskset -c LIST`` in front of the command, so the printed
     command lines reproduce the run by hand; ``verify()`` reads Cpus_allowed_list back
     from /proc for every process of a tree to prove the pinning held.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass


def cpu_list(cpus: tuple[int, ...]) -> str:
    """Render CPUs as taskset does: ``0``, ``1-3``, ``0,2``."""
    out: list[str] = []
    cpus = tuple(sorted(cpus))
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True)
class Layout:
    load: tuple[int, ...]  # load generator + upstream + harness
    proxy: tuple[int, ...]  # proxy under test
    shared: bool  # proxy and load overlap (too few CPUs)
    enabled: bool  # taskset available and more than one CPU

    def prefix(self, role: str) -> list[str]:
        """``taskset -c LIST`` for role 'proxy' or 'load' ([] when pinning is off)."""
        if not self.enabled:
            return []
        cpus = self.proxy if role == "proxy" else self.load
        return ["taskset", "-c", cpu_list(cpus)]

    def describe(self, workers: int) -> str:
        if not self.enabled:
            return "no pinning (single CPU or taskset missing): numbers are not comparable to pinned runs"
        text = (
            f"proxy under test ({workers} worker{'s' if workers > 1 else ''}) on CPU {cpu_list(self.proxy)}"
            f" (taskset -c {cpu_list(self.proxy)}); load generator, upstream nginx and harness on"
            f" CPU {cpu_list(self.load)} (taskset -c {cpu_list(self.load)})"
        )
        if self.shared:
            text += "; too few CPUs for one per worker, so the proxy shares CPUs with the load side"
        return text


# Taken at import, before the harness pins itself to the load CPUs.
_INITIAL_CPUS = tuple(sorted(os.sched_getaffinity(0)))


def available_cpus() -> tuple[int, ...]:
    """The CPUs this process could use when the bench started."""
    return _INITIAL_CPUS


def layout(workers: int, cpus: tuple[int, ...] | None = None) -> Layout:
    """The layout for a proxy with ``workers`` workers on this machine (rules 1-2)."""
    cpus = cpus if cpus is not None else available_cpus()
    enabled = len(cpus) > 1 and shutil.which("taskset") is not None
    if not enabled:
        return Layout(load=cpus, proxy=cpus, shared=True, enabled=False)
    load = cpus[:1]
    rest = cpus[1:]
    if workers <= len(rest):
        return Layout(load=load, proxy=rest[:workers], shared=False, enabled=True)
    return Layout(load=load, proxy=cpus, shared=True, enabled=True)


def allowed_cpus(pid: int) -> str | None:
    """Cpus_allowed_list of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def verify(pids: list[int], expected: tuple[int, ...]) -> list[str]:
    """Problems found: processes of the tree not pinned to ``expected``."""
    want = cpu_list(expected)
    problems = []
    for pid in pids:
        got = allowed_cpus(pid)
        if got is not None and got != want:
            problems.append(f"pid {pid} allowed on CPU {got}, expected {want}")
    return problems
