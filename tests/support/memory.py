"""Memory of the gateway's processes: RSS of its workers, sampled while a test runs."""

from __future__ import annotations

import threading

from tests.support.gateway import Gateway


# ---------------------------------------------------------------------- memory
def worker_pids(pid: int) -> list[int]:
    """The gateway's worker processes: its children if it forked, else itself."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    return kids or [pid]


def vmrss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def gateway_rss_kb(gw: Gateway) -> int:
    return sum(vmrss_kb(p) for p in worker_pids(gw.proc.pid))


class RssSampler:
    """Samples the gateway's RSS every 20 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.base = gateway_rss_kb(gw)
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, gateway_rss_kb(self.gw))
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(2)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 1024
