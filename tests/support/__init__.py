"""What the tests share: the gateway runner, the fake upstreams, wire clients, config
texts, waiting, certificates, and the helpers of the auth/rate-limit/supervisor rooms.

No test module imports another test module: what two tests share lives here.
"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
DATA = os.path.join(ROOT, "tests", "data")
