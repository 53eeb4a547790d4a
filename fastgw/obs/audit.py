"""Audit records written by the supervisor and the admin API (L4); the workers write theirs
(auth decisions, circuit-breaker transitions) through ``deps.audit``.

The audit log (``monitoring.logging.audit``) is one stream of JSON lines: auth decisions
(written by the workers), admin API calls and writes (the control process), signals and
reloads (the supervisor).  Every record has ``ts`` (epoch seconds) and ``event``; the rest
depends on the event:

==================  ===============================================================
``signal``          ``signal`` (HUP, TERM, ...), ``pid`` of the supervisor
``reload``          ``source`` (``signal`` | ``admin``), ``result`` (reloaded,
                    unchanged, refused), ``generation``, ``changes`` or ``errors``
``admin_request``   ``client_ip``, ``method``, ``path``, ``status``
``admin_write``     the same plus ``body`` (the decoded request body) and ``result``
``circuit_breaker`` ``service``, ``from``, ``to``, ``worker``, ``request_id`` (the
                    request that made the transition), ``open_for_s`` (written by
                    the worker, ``middleware.breaker``)
==================  ===============================================================

``AuditLog.write`` flushes at once: the supervisor has no tick, and these records are
rare.  ``None`` output (audit disabled) makes every write a no-op.
"""

from __future__ import annotations

import time

import orjson

from fastgw.obs.logbuf import LogBuffer


class AuditLog:
    def __init__(self, target: str | None) -> None:
        self.target = target
        self.buf = LogBuffer(target) if target else None

    @classmethod
    def of(cls, cfg) -> "AuditLog":
        a = cfg.monitoring.logging.audit
        return cls(a.output if a.enabled else None)

    def write(self, event: str, **fields) -> None:
        if self.buf is not None:
            self.buf.write(orjson.dumps({"ts": round(time.time(), 6), "event": event, **fields}))
            self.buf.flush()

    def reopen(self) -> None:
        if self.buf is not None:
            self.buf.reopen()

    def close(self) -> None:
        if self.buf is not None:
            self.buf.close()
            self.buf = None
