"""Shared setup of fastgw's micro-benchmarks (``bench/micro/test_micro_*.py``).

They run apart from the test suite, one process, with pytest-benchmark:

    python -m pytest bench/micro -p no:xdist --benchmark-autosave
    python -m pytest bench/micro -p no:xdist --benchmark-compare --benchmark-compare-fail=mean:15%

Rules kept here, so that each benchmark file only measures:
  1. No xdist: pytest-benchmark measures nothing useful across worker processes, and a
     run with ``-n`` is refused with the command to use instead.
  2. Saved runs and baselines live in ``bench/micro/.benchmarks`` (not in the current
     directory), so ``--benchmark-compare`` finds them wherever pytest is started.
  3. The process is pinned to the last CPU it may use (``FASTGW_MICRO_CPU`` overrides,
     ``FASTGW_MICRO_CPU=none`` disables), so the scheduler does not migrate it mid-run;
     the CPU is printed in the header.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

STORAGE = Path(__file__).parent / ".benchmarks"


def _pin() -> str:
    choice = os.environ.get("FASTGW_MICRO_CPU", "")
    if choice == "none":
        return "not pinned (FASTGW_MICRO_CPU=none)"
    cpus = sorted(os.sched_getaffinity(0))
    cpu = int(choice) if choice else cpus[-1]
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None):  # rule 1
        raise pytest.UsageError("bench/micro runs without xdist: add -p no:xdist (and no -n)")
    storage = getattr(config.option, "benchmark_storage", None)
    if storage is not None and storage.rstrip("/") in ("file://./.benchmarks", "./.benchmarks"):  # rule 2
        config.option.benchmark_storage = f"file://{STORAGE}"
    config._fastgw_micro_pin = _pin()  # rule 3


def pytest_report_header(config: pytest.Config) -> str:
    return f"fastgw micro-benchmarks: {getattr(config, '_fastgw_micro_pin', 'not pinned')}, baselines in {STORAGE}"
