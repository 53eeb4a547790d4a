"""Timing tests run alone, even when the suite runs in parallel (pytest-xdist).

A test marked ``@pytest.mark.timing`` (or a module with ``pytestmark = pytest.mark.timing``)
asserts a latency, a deadline or a count within a time window: a busy sibling worker
could make it fail.  Every test of an xdist run takes a lock shared between the workers
of that run: ordinary tests take it shared (they run side by side), a timing test takes
it exclusive (it waits until the other worker's current test ends, and the other worker
waits until it ends).  A turnstile lock in front gives the timing test priority: once it
waits, no new ordinary test starts.

The lock is taken around the whole test protocol (setup with its module-wide fixtures,
call, teardown), outside pytest-timeout's clock: waiting for the other worker is not the
test's time.  Without xdist (``-p no:xdist`` or no ``-n``) the guard does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile

import pytest


@contextlib.contextmanager
def guard(exclusive: bool):
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        yield
        return
    base = os.path.join(tempfile.gettempdir(), f"fastgw-tests-{run}")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "turnstile"), "a") as turn, open(os.path.join(base, "main"), "a") as main:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(main, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(turn, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(turn, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    with guard(item.get_closest_marker("timing") is not None):
        yield
