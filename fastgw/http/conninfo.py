"""What a client connection is configured with (L2): the per-listener settings the
client protocol reads (``ConnInfo``, built once per config by the worker), the reasons
reading may be paused (a bit mask: ``http.protocol`` rule 3) and the kinds of its one
deadline (rule 4).  Kept apart from the protocol so the lingering close
(``http.linger``) and the engine can name them without importing the protocol.
"""

from __future__ import annotations

# reasons to pause reading (bit mask)
PAUSE_BACKLOG = 1    # pipelined requests queued behind the one in flight
PAUSE_UPSTREAM = 2   # upstream is not accepting the request body fast enough
PAUSE_WAIT = 4       # body arriving before the upstream connection is ready

# deadline kinds
T_NONE, T_IDLE, T_HEAD, T_BODY, T_SEND, T_LINGER = 0, 1, 2, 3, 4, 5


class ConnInfo:
    """Per-listener settings the protocol needs (built once per config)."""

    __slots__ = ("max_request_line", "max_header_size", "max_headers_size", "max_headers",
                 "t_head", "t_body", "t_idle", "t_send", "t_min", "tls",
                 "body_total", "body_rate", "body_grace", "t_linger", "linger_size", "heads")

    def __init__(self, limits, timeouts, tls: bool = False) -> None:
        self.max_request_line = int(limits.max_request_line)
        self.max_header_size = int(limits.max_header_size)
        self.max_headers_size = int(limits.max_headers_size)
        self.max_headers = int(limits.max_headers)
        self.t_head = float(timeouts.request_header)
        self.t_body = float(timeouts.request_body)
        self.t_idle = float(timeouts.keepalive)
        self.t_send = float(timeouts.send)
        total = timeouts.request_body_total
        self.body_total = float(total) if total is not None else float("inf")
        rate = timeouts.request_body_min_rate
        self.body_rate = float(rate) if rate else 0.0  # bytes/s; 0 = off
        self.body_grace = float(timeouts.request_body_min_rate_grace)
        self.t_linger = float(timeouts.lingering_time)
        self.linger_size = int(timeouts.lingering_size)
        # (the lingering deadline is not in the horizon: Deadline.set re-arms for a shorter
        # one, and a 5 s horizon would wake every idle connection every 5 s)
        self.t_min = min(self.t_head, self.t_body, self.t_idle, self.t_send, self.body_total)
        self.tls = tls
        # verdicts on whole request heads for these limits (``http.fasthead``, rule 6)
        self.heads = {}
