"""Kept for test files written against the old layout: a re-export of ``tests.support``.

New tests import from ``tests.support.<module>`` directly.
"""

from tests.support import DATA, ROOT  # noqa: F401
from tests.support.config import ACCESS_LOG_BLOCK, CORE_CONFIG, core_config  # noqa: F401
from tests.support.gateway import MINIMAL, Gateway, flushed_access_lines, raw_exchange  # noqa: F401
from tests.support.memory import RssSampler  # noqa: F401
from tests.support.upstream import EchoUpstream, RawUpstream  # noqa: F401
from tests.support.waiting import wait_for  # noqa: F401
from tests.support.wire import (Client, closed_port, exchange, one_response, parse_head,  # noqa: F401
                                parse_responses, problem_of)
