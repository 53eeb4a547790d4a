"""Access log middleware: one JSON line per request (orjson), in the logging phase.

Fields follow DESIGN.md (Envoy's spirit, snake_case).  Lines go into the worker's
``LogBuffer`` and are written on the tick, whole.  The health path is not logged unless
``monitoring.logging.access_log.log_health``.
"""

from __future__ import annotations

import orjson

from fastgw.clock import monotonic, wall
from fastgw.pipeline.middleware import Middleware

_dumps = orjson.dumps


class AccessLog(Middleware):
    name = "access_log"

    def __init__(self, cfg, deps, buf) -> None:
        super().__init__(cfg, deps)
        self.buf = buf

    def logging(self, ctx, error) -> None:
        route = ctx.route
        flags = ctx.flags
        if error is not None and error.kind not in flags:
            flags = flags + [error.kind]
        ud = ctx.upstream_duration
        ua = ctx.ua
        rec = {
            "ts": wall(),
            "request_id": ctx.request_id,
            "client_ip": ctx.client_ip,
            "method": ctx.method,
            "authority": ctx.host,
            "path": ctx.path,
            "status": ctx.status,
            "bytes_received": ctx.bytes_received,
            "bytes_sent": ctx.bytes_sent,
            "duration_s": monotonic() - ctx.start,
            "upstream": ctx.upstream,
            "upstream_status": ctx.upstream_status or None,
            "upstream_duration_s": ud,
            "route": route.name if route is not None else None,
            "user": ctx.user,
            "user_agent": ua.decode("latin-1") if ua else None,
            "response_flags": flags,
        }
        tp = ctx.notes.get("trace_id")
        if tp is not None:
            rec["trace_id"] = tp
        self.buf.write(_dumps(rec))


def build(root_cfg, service_cfg, route_cfg, deps):
    if deps is None:
        return None
    buf = deps.state.get("access_log_buffer")
    if buf is None:
        return None
    key = "access_log"
    shared = deps.state.get(key)
    if shared is None:
        shared = deps.state[key] = AccessLog(root_cfg, deps, buf)
    return shared
