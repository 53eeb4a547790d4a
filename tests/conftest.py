"""Fixtures only: what they build lives in ``tests/support``.

``pytest_runtest_protocol`` (from tests/support/serial.py): a ``timing``-marked test runs
alone under xdist.
``raw_up`` is a module-wide RawUpstream (tests/support/upstream.py; a module that needs
no other upstream uses it rather than starting its own); ``core_gw`` a gateway
on the proxy-core config over it (tests/support/config.py).
"""

from __future__ import annotations

import pytest

from tests.support.config import core_config
from tests.support.gateway import Gateway
from tests.support.serial import pytest_runtest_protocol  # noqa: F401  (the timing guard)
from tests.support.upstream import RawUpstream


@pytest.fixture(scope="module")
def raw_up():
    with RawUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def core_gw(raw_up):
    with Gateway(core_config(raw_up)) as gw:
        yield gw
