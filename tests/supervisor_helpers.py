"""Kept for test files written against the old layout: a re-export of ``tests.support.procs``
(and of the gateway runner, echo upstream and ``wait_for`` it used to re-export).

New tests import from ``tests.support.<module>`` directly.
"""

from tests.support.gateway import MINIMAL, Gateway  # noqa: F401
from tests.support.procs import *  # noqa: F401,F403
from tests.support.procs import CONFIG, PROMTOOL, config, promtool_check  # noqa: F401
from tests.support.upstream import EchoUpstream  # noqa: F401
from tests.support.waiting import wait_for  # noqa: F401
