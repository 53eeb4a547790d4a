"""What middlewares may use besides their config (L4): handed to every constructor.

Fields are filled by the runtime after fork; a middleware must not assume the event loop
exists in ``__init__`` unless ``deps.loop`` is set (it is in workers, not in ``--check``).
"""

from __future__ import annotations


class Deps:
    __slots__ = ("config", "loop", "shm", "metrics", "audit", "log", "worker_id", "client", "state")

    def __init__(self, config=None, *, loop=None, shm=None, metrics=None, audit=None, log=None,
                 worker_id: int = 0, client=None) -> None:
        self.config = config        # the root Config
        self.loop = loop            # asyncio loop, or None outside a worker
        self.shm = shm              # shared-memory region (fastgw.shm) or None (single process)
        self.metrics = metrics      # fastgw.obs.metrics registry for this worker
        self.audit = audit          # callable(dict) writing one audit-log line
        self.log = log              # logging.Logger for operational messages
        self.worker_id = worker_id
        self.client = client        # async HTTP client for the gateway's own fetches (JWKS)
        self.state = {}             # long-lived per-worker state shared across reloads, by key
